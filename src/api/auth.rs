//! The Auth service: enabling authentication, logging in, and managing
//! users and roles (etcd v3's Auth API).
//!
//! Changes become [`AuthChange`] events. Passwords are hashed here, on the
//! node that receives them, with a random salt; the log carries only the
//! PHC string. Authenticate verifies a password against the stored hash
//! (bounded by the gate's semaphore) and issues a token signed with the
//! cluster's key.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_raft::event::{Access, AuthChange, Bytes, Event, Permission, PermissionTarget};

use super::access::Need;
use super::header;
use crate::node::credentials::{self, PASSWORD_BYTES_MAX};
use crate::node::{Consistency, Error, Node};

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn change(&self, change: AuthChange) -> Result<Option<pb::ResponseHeader>, Error> {
        let name = change.name();
        let resp = self.node.propose(Event::Auth(change)).await?;
        tracing::info!(change = name, "auth changed");
        Ok(header(&self.node, resp.revision))
    }

    /// A password's PHC hash, or `None` with `no_password`.
    async fn hash(&self, password: String, no_password: bool) -> Result<Option<String>, Error> {
        if no_password {
            if !password.is_empty() {
                return Err(self
                    .node
                    .invalid("bad_password", "give a password or no_password, not both"));
            }
            return Ok(None);
        }
        if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
            return Err(self.node.invalid("bad_password", format!(
                    "a password must be 1..={PASSWORD_BYTES_MAX} bytes (or set no_password for a user identified by a client certificate)"
                )));
        }
        let hashed = self
            .node
            .auth
            .password_work(move || credentials::hash_password(&password))
            .await?;
        hashed.map(Some).map_err(Error::Internal)
    }

    fn target(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        collection: String,
    ) -> Result<PermissionTarget, Error> {
        if !collection.is_empty() {
            if !key.is_empty() || !range_end.is_empty() {
                return Err(self.node.invalid(
                    "bad_permission",
                    "a permission is on a key range or on a collection, not both",
                ));
            }
            return Ok(PermissionTarget::Collection(collection));
        }
        self.node.check_key(&key, "permission key")?;
        self.node.check_len(
            range_end.len(),
            self.node.limits.key_bytes_max,
            "permission range_end",
            "key_bytes_max",
        )?;
        Ok(PermissionTarget::Keys {
            key: Bytes::from(key),
            range_end: Bytes::from(range_end),
        })
    }

    /// The auth state after a linearizable read barrier (so that a user or
    /// role just changed anywhere is seen).
    async fn fresh_state(&self) -> Result<Arc<utopia_storage::auth::AuthState>, Error> {
        self.node.read_barrier(Consistency::Linearizable).await?;
        self.node.auth.state(&self.node.reader)
    }

    fn header(&self) -> Result<Option<pb::ResponseHeader>, Error> {
        Ok(header(&self.node, self.node.current_revision()?))
    }
}

fn access_from_pb(t: i32) -> Option<Access> {
    match pb::permission::Type::try_from(t).ok()? {
        pb::permission::Type::Read => Some(Access::Read),
        pb::permission::Type::Write => Some(Access::Write),
        pb::permission::Type::Readwrite => Some(Access::ReadWrite),
    }
}

fn permission_to_pb(p: &Permission) -> pb::Permission {
    let perm_type = match p.access {
        Access::Read => pb::permission::Type::Read,
        Access::Write => pb::permission::Type::Write,
        Access::ReadWrite => pb::permission::Type::Readwrite,
    } as i32;
    match &p.target {
        PermissionTarget::Keys { key, range_end } => pb::Permission {
            perm_type,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            collection: String::new(),
        },
        PermissionTarget::Collection(c) => pb::Permission {
            perm_type,
            key: Vec::new(),
            range_end: Vec::new(),
            collection: c.clone(),
        },
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let signing_key = credentials::new_signing_key().map_err(Error::Internal)?;
        let header = self.change(AuthChange::Enable { signing_key }).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let header = self.change(AuthChange::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.node.authorize(&req, Need::Anyone)?;
        let state = self.node.auth.state(&self.node.reader)?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header()?,
            enabled: state.enabled(),
            auth_revision: state.meta.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        self.node.authorize(&req, Need::Anyone)?;
        let r = req.into_inner();
        if r.name.len() > utopia_storage::auth::NAME_BYTES_MAX
            || r.password.len() > PASSWORD_BYTES_MAX
        {
            return Err(self
                .node
                .invalid("too_large", "user name or password too long")
                .into());
        }
        let state = self.fresh_state().await?;
        if !state.enabled() {
            return Err(Error::FailedPrecondition(
                "authentication is not enabled (utopia auth enable)".into(),
            )
            .into());
        }
        let user = state.users.get(&r.name);
        // Verified against a decoy when there is no such user or it has no
        // password, so that a failure takes as long either way.
        let hash = user
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| credentials::decoy_hash().to_string());
        let password = r.password;
        let ok = self
            .node
            .auth
            .password_work(move || credentials::verify_password(&hash, &password))
            .await?;
        let user = match user {
            Some(u) if ok && u.password_hash.is_some() => u,
            _ => {
                tracing::warn!(user = %r.name, "authentication failed");
                return Err(self
                    .node
                    .auth_failure(Error::Unauthenticated {
                        reason: "bad_password",
                        message: "authentication failed: invalid user name or password".into(),
                    })
                    .into());
            }
        };
        let expires_at_ms = crate::now_ms() + self.node.auth.token_ttl_s * 1000;
        let token = credentials::issue_token(
            &state.meta.signing_key,
            &user.name,
            user.password_revision,
            expires_at_ms,
        )
        .ok_or_else(|| Error::Internal("the stored token-signing key is unusable".into()))?;
        self.node.metrics.auth_tokens_issued.inc();
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.header()?,
            token,
            expires_at_ms,
        }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        if let Err(e) = utopia_storage::auth::check_name("user", &r.name) {
            return Err(self.node.invalid("bad_name", e).into());
        }
        let password_hash = self.hash(r.password, r.no_password).await?;
        let header = self
            .change(AuthChange::UserAdd {
                name: r.name,
                password_hash,
            })
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        self.node
            .authorize(&req, Need::SelfOrRoot(&req.get_ref().name))?;
        let name = req.into_inner().name;
        let state = self.fresh_state().await?;
        let Some(u) = state.users.get(&name) else {
            return Err(Error::NotFound(format!("user {name:?} not found")).into());
        };
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header()?,
            roles: u.roles.clone(),
            has_password: u.password_hash.is_some(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let state = self.fresh_state().await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header()?,
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let name = req.into_inner().name;
        let header = self.change(AuthChange::UserDelete { name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        let password_hash = self.hash(r.password, r.no_password).await?;
        let header = self
            .change(AuthChange::UserChangePassword {
                name: r.name,
                password_hash,
            })
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        let header = self
            .change(AuthChange::UserGrantRole {
                user: r.user,
                role: r.role,
            })
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        let header = self
            .change(AuthChange::UserRevokeRole {
                user: r.user,
                role: r.role,
            })
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let name = req.into_inner().name;
        if let Err(e) = utopia_storage::auth::check_name("role", &name) {
            return Err(self.node.invalid("bad_name", e).into());
        }
        let header = self.change(AuthChange::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let role = req.into_inner().role;
        let state = self.fresh_state().await?;
        let perm = if role == utopia_storage::auth::ROOT {
            Vec::new()
        } else {
            let Some(r) = state.roles.get(&role) else {
                return Err(Error::NotFound(format!("role {role:?} not found")).into());
            };
            r.permissions.iter().map(permission_to_pb).collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header()?,
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let state = self.fresh_state().await?;
        let mut roles: Vec<String> = state.roles.keys().cloned().collect();
        roles.push(utopia_storage::auth::ROOT.to_string());
        roles.sort();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header()?,
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let name = req.into_inner().role;
        let header = self.change(AuthChange::RoleDelete { name }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        let Some(p) = r.perm else {
            return Err(self
                .node
                .invalid("bad_permission", "perm is missing")
                .into());
        };
        let access = access_from_pb(p.perm_type).ok_or_else(|| {
            self.node.invalid(
                "bad_permission",
                format!("unknown permission type {}", p.perm_type),
            )
        })?;
        let target = self.target(p.key, p.range_end, p.collection)?;
        let header = self
            .change(AuthChange::RoleGrantPermission {
                role: r.name,
                permission: Permission { access, target },
            })
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        let target = self.target(r.key, r.range_end, r.collection)?;
        let header = self
            .change(AuthChange::RoleRevokePermission {
                role: r.role,
                target,
            })
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

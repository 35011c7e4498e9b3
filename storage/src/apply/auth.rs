//! Applying authentication and role changes.
//!
//! Every check here is made from the event and the stored state alone, so
//! every replica accepts or refuses a change alike: enabling auth needs a
//! user `root` holding the role `root`; while auth is on, root can be
//! neither deleted nor stripped of the root role; names and counts are
//! bounded by the constants in [`crate::auth`]. Passwords arrive hashed and
//! the signing key arrives drawn: nothing here hashes or draws.

use utopia_raft::event::{AuthChange, Outcome, PermissionTarget, Rejection};

use super::{Applier, StateRead};
use crate::auth::{
    check_name, describe_target, AuthMeta, RoleRecord, UserRecord, PASSWORD_HASH_BYTES_MAX,
    PERMISSIONS_PER_ROLE_MAX, ROLES_MAX, ROLES_PER_USER_MAX, ROOT, SIGNING_KEY_BYTES, USERS_MAX,
};
use crate::codec::{decode as dec, encode as enc};
use crate::keys::{self, Cf};
use crate::StoreError;

fn invalid(msg: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection::Invalid(msg.into()))
}

fn not_found(msg: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection::NotFound(msg.into()))
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    fn auth_meta(&self) -> Result<AuthMeta, StoreError> {
        Ok(self
            .get_dec(Cf::Auth, keys::auth::META)?
            .unwrap_or_default())
    }

    fn auth_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get_dec(Cf::Auth, &keys::auth::user_key(name))
    }

    fn auth_role(&self, name: &str) -> Result<Option<RoleRecord>, StoreError> {
        self.get_dec(Cf::Auth, &keys::auth::role_key(name))
    }

    fn put_user(&mut self, user: &UserRecord) {
        self.put(Cf::Auth, keys::auth::user_key(&user.name), enc(user));
    }

    fn put_role(&mut self, role: &RoleRecord) {
        self.put(Cf::Auth, keys::auth::role_key(&role.name), enc(role));
    }

    /// Entries under one prefix of `Cf::Auth`, at most `max + 1` (enough
    /// to tell that a bound is reached).
    fn auth_scan(&self, prefix: u8, max: usize) -> Result<super::Pairs, StoreError> {
        self.scan(Cf::Auth, &[prefix], Some(&[prefix + 1]), max + 1)
    }

    /// Applies one auth change. A change that is applied bumps the auth
    /// revision; a refused one writes nothing.
    pub(super) fn apply_auth(&mut self, change: &AuthChange) -> Result<Outcome, StoreError> {
        let mut meta = self.auth_meta()?;
        let next_revision = meta.revision + 1;
        let outcome = match change {
            AuthChange::Enable { signing_key } => {
                if signing_key.len() != SIGNING_KEY_BYTES {
                    return Ok(invalid(format!(
                        "the token-signing key must be {SIGNING_KEY_BYTES} bytes, got {}",
                        signing_key.len()
                    )));
                }
                let root_ready = self
                    .auth_user(ROOT)?
                    .is_some_and(|u| u.roles.iter().any(|r| r == ROOT));
                if !root_ready {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(
                        "authentication can be enabled only when a user \"root\" with the role \"root\" exists (utopia user add root; utopia user grant-role root root)".into(),
                    )));
                }
                if !meta.enabled {
                    meta.enabled = true;
                    // Kept while auth stays on: re-enabling must not void
                    // the tokens already issued.
                    meta.signing_key = signing_key.to_vec();
                }
                Outcome::Done
            }
            AuthChange::Disable => {
                meta.enabled = false;
                Outcome::Done
            }
            AuthChange::UserAdd {
                name,
                password_hash,
            } => {
                if let Err(e) = check_name("user", name) {
                    return Ok(invalid(e));
                }
                if let Some(o) = check_hash(password_hash) {
                    return Ok(o);
                }
                if self.auth_user(name)?.is_some() {
                    return Ok(Outcome::Rejected(Rejection::AlreadyExists(format!(
                        "user {name:?}"
                    ))));
                }
                if self.auth_scan(keys::auth::USER_PREFIX, USERS_MAX)?.len() >= USERS_MAX {
                    return Ok(invalid(format!(
                        "there are already {USERS_MAX} users, the most there may be"
                    )));
                }
                self.put_user(&UserRecord {
                    name: name.clone(),
                    password_hash: password_hash.clone(),
                    roles: Vec::new(),
                    password_revision: next_revision,
                });
                Outcome::Done
            }
            AuthChange::UserDelete { name } => {
                if self.auth_user(name)?.is_none() {
                    return Ok(not_found(format!("user {name:?}")));
                }
                if meta.enabled && name == ROOT {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(
                        "the user root cannot be deleted while authentication is enabled".into(),
                    )));
                }
                self.delete(Cf::Auth, keys::auth::user_key(name));
                Outcome::Done
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                if let Some(o) = check_hash(password_hash) {
                    return Ok(o);
                }
                let Some(mut user) = self.auth_user(name)? else {
                    return Ok(not_found(format!("user {name:?}")));
                };
                user.password_hash = password_hash.clone();
                user.password_revision = next_revision;
                self.put_user(&user);
                Outcome::Done
            }
            AuthChange::UserGrantRole { user, role } => {
                let Some(mut u) = self.auth_user(user)? else {
                    return Ok(not_found(format!("user {user:?}")));
                };
                if role != ROOT && self.auth_role(role)?.is_none() {
                    return Ok(not_found(format!("role {role:?}")));
                }
                match u.roles.binary_search(role) {
                    Ok(_) => return Ok(Outcome::Done),
                    Err(_) if u.roles.len() >= ROLES_PER_USER_MAX => {
                        return Ok(invalid(format!(
                            "user {user:?} already has {ROLES_PER_USER_MAX} roles, the most one user may have"
                        )))
                    }
                    Err(pos) => u.roles.insert(pos, role.clone()),
                }
                self.put_user(&u);
                Outcome::Done
            }
            AuthChange::UserRevokeRole { user, role } => {
                let Some(mut u) = self.auth_user(user)? else {
                    return Ok(not_found(format!("user {user:?}")));
                };
                let Ok(pos) = u.roles.binary_search(role) else {
                    return Ok(not_found(format!("role {role:?} of user {user:?}")));
                };
                if meta.enabled && user == ROOT && role == ROOT {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(
                        "the role root cannot be revoked from the user root while authentication is enabled".into(),
                    )));
                }
                u.roles.remove(pos);
                self.put_user(&u);
                Outcome::Done
            }
            AuthChange::RoleAdd { name } => {
                if let Err(e) = check_name("role", name) {
                    return Ok(invalid(e));
                }
                if name == ROOT || self.auth_role(name)?.is_some() {
                    return Ok(Outcome::Rejected(Rejection::AlreadyExists(format!(
                        "role {name:?}"
                    ))));
                }
                if self.auth_scan(keys::auth::ROLE_PREFIX, ROLES_MAX)?.len() >= ROLES_MAX {
                    return Ok(invalid(format!(
                        "there are already {ROLES_MAX} roles, the most there may be"
                    )));
                }
                self.put_role(&RoleRecord {
                    name: name.clone(),
                    permissions: Vec::new(),
                });
                Outcome::Done
            }
            AuthChange::RoleDelete { name } => {
                if name == ROOT {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(
                        "the role root is built in and cannot be deleted".into(),
                    )));
                }
                if self.auth_role(name)?.is_none() {
                    return Ok(not_found(format!("role {name:?}")));
                }
                self.delete(Cf::Auth, keys::auth::role_key(name));
                // As etcd does: the role leaves every user that held it.
                for (k, v) in self.auth_scan(keys::auth::USER_PREFIX, USERS_MAX)? {
                    let mut u: UserRecord = dec(Cf::Auth, &k, &v)?;
                    if let Ok(pos) = u.roles.binary_search(name) {
                        u.roles.remove(pos);
                        self.put_user(&u);
                    }
                }
                Outcome::Done
            }
            AuthChange::RoleGrantPermission { role, permission } => {
                if role == ROOT {
                    return Ok(invalid("the role root already has every permission"));
                }
                if let Err(e) = check_target(&permission.target) {
                    return Ok(invalid(e));
                }
                let Some(mut r) = self.auth_role(role)? else {
                    return Ok(not_found(format!("role {role:?}")));
                };
                match r
                    .permissions
                    .binary_search_by(|p| p.target.cmp(&permission.target))
                {
                    Ok(pos) => r.permissions[pos].access = permission.access,
                    Err(_) if r.permissions.len() >= PERMISSIONS_PER_ROLE_MAX => {
                        return Ok(invalid(format!(
                            "role {role:?} already has {PERMISSIONS_PER_ROLE_MAX} permissions, the most one role may have"
                        )))
                    }
                    Err(pos) => r.permissions.insert(pos, permission.clone()),
                }
                self.put_role(&r);
                Outcome::Done
            }
            AuthChange::RoleRevokePermission { role, target } => {
                let Some(mut r) = self.auth_role(role)? else {
                    return Ok(not_found(format!("role {role:?}")));
                };
                let Ok(pos) = r.permissions.binary_search_by(|p| p.target.cmp(target)) else {
                    return Ok(not_found(format!(
                        "permission on {} in role {role:?}",
                        describe_target(target)
                    )));
                };
                r.permissions.remove(pos);
                self.put_role(&r);
                Outcome::Done
            }
        };
        meta.revision = next_revision;
        self.put(Cf::Auth, keys::auth::META.to_vec(), enc(&meta));
        Ok(outcome)
    }
}

/// A PHC string of bounded length; `None` (no password) is fine.
fn check_hash(hash: &Option<String>) -> Option<Outcome> {
    let h = hash.as_ref()?;
    if h.is_empty() || h.len() > PASSWORD_HASH_BYTES_MAX || !h.starts_with('$') {
        return Some(invalid(format!(
            "a password hash must be a PHC string of 1..={PASSWORD_HASH_BYTES_MAX} bytes"
        )));
    }
    None
}

/// A permission's target: a non-empty key of bounded length, or a known
/// collection.
fn check_target(target: &PermissionTarget) -> Result<(), String> {
    match target {
        PermissionTarget::Keys { key, range_end } => {
            // Generous against the largest key the API accepts (key_bytes_max
            // is a node setting; this bound must not depend on one).
            const KEY_BYTES_MAX: usize = 64 * 1024;
            if key.is_empty() || key.len() > KEY_BYTES_MAX || range_end.len() > KEY_BYTES_MAX {
                return Err(format!(
                    "a permission's key must be 1..={KEY_BYTES_MAX} bytes and its range end at most {KEY_BYTES_MAX}"
                ));
            }
            Ok(())
        }
        PermissionTarget::Collection(name) => {
            if crate::keys::Collection::parse(name).is_none() {
                let known: Vec<&str> = crate::keys::Collection::ALL
                    .iter()
                    .map(|c| c.name())
                    .collect();
                return Err(format!(
                    "unknown collection {name:?}; expected one of: {}",
                    known.join(", ")
                ));
            }
            Ok(())
        }
    }
}

/// For tests: a permission on keys.
#[cfg(test)]
pub(crate) fn key_permission(
    access: utopia_raft::event::Access,
    key: &str,
    range_end: &str,
) -> utopia_raft::event::Permission {
    utopia_raft::event::Permission {
        access,
        target: PermissionTarget::Keys {
            key: key.as_bytes().to_vec().into(),
            range_end: range_end.as_bytes().to_vec().into(),
        },
    }
}

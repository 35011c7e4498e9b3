//! `utopia auth|user|role ...`: authentication and roles, in etcdctl's
//! shapes, and the `--user NAME[:PASSWORD]` credentials.

use std::io::IsTerminal;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::{self, Printer};
use super::CliError;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Turn authentication on. Needs a user `root` with the role `root`
    /// (utopia user add root; utopia user grant-role root root).
    Enable,
    /// Turn authentication off (root only).
    Disable,
    /// Whether authentication is on.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: NAME:PASSWORD, or NAME to be asked for the password.
    Add {
        #[arg(value_name = "NAME[:PASSWORD]")]
        user: String,
        /// A user without a password, identified only by a client
        /// certificate whose common name is NAME.
        #[arg(long)]
        no_password: bool,
    },
    /// Show a user's roles.
    Get { name: String },
    /// List the users.
    List,
    /// Delete a user.
    Delete { name: String },
    /// Change a user's password: NAME:PASSWORD, or NAME to be asked.
    Passwd {
        #[arg(value_name = "NAME[:PASSWORD]")]
        user: String,
        /// Remove the password (certificate only).
        #[arg(long)]
        no_password: bool,
    },
    /// Give a user a role.
    GrantRole { name: String, role: String },
    /// Take a role from a user.
    RevokeRole { name: String, role: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermArg {
    Read,
    Write,
    Readwrite,
}

impl PermArg {
    fn to_proto(self) -> i32 {
        (match self {
            PermArg::Read => pb::permission::Type::Read,
            PermArg::Write => pb::permission::Type::Write,
            PermArg::Readwrite => pb::permission::Type::Readwrite,
        }) as i32
    }
}

/// What a permission is on: KEY \[RANGE_END\] (or --prefix / --from-key), or
/// --collection NAME.
#[derive(Debug, Args)]
pub struct PermTarget {
    /// The key (the prefix with --prefix, the first key with --from-key).
    #[arg(required_unless_present = "collection")]
    pub key: Option<String>,
    /// The end of the range, exclusive.
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Every key >= KEY.
    #[arg(long)]
    pub from_key: bool,
    /// A document collection (devices, zones, fellows, db_servers,
    /// xml_configs, stats) instead of keys.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["key", "prefix", "from_key"])]
    pub collection: Option<String>,
}

impl PermTarget {
    /// (key, range_end, collection).
    fn parts(&self) -> Result<(Vec<u8>, Vec<u8>, String), CliError> {
        if let Some(c) = &self.collection {
            return Ok((Vec::new(), Vec::new(), c.clone()));
        }
        let key = self.key.clone().unwrap_or_default().into_bytes();
        let end =
            super::txn::range_end(&key, self.range_end.as_deref(), self.prefix, self.from_key)
                .map_err(CliError::Usage)?;
        Ok((key, end, String::new()))
    }
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role.
    Add { role: String },
    /// Show a role's permissions.
    Get { role: String },
    /// List the roles.
    List,
    /// Delete a role (it leaves every user that had it).
    Delete { role: String },
    /// Grant a permission: ROLE read|write|readwrite KEY \[RANGE_END\]
    /// [--prefix | --from-key], or ROLE TYPE --collection NAME.
    GrantPermission {
        role: String,
        #[arg(value_enum)]
        perm: PermArg,
        #[command(flatten)]
        target: PermTarget,
    },
    /// Revoke the permission on KEY \[RANGE_END\] \[--prefix | --from-key\], or
    /// on --collection NAME.
    RevokePermission {
        role: String,
        #[command(flatten)]
        target: PermTarget,
    },
}

/// `NAME[:PASSWORD]`: the name and the password, asked for on the
/// terminal (without echo) when it is not given. Not on a terminal, a
/// missing password is a usage error.
pub fn credentials(spec: &str, flag: &str) -> Result<(String, String), CliError> {
    if let Some((name, password)) = spec.split_once(':') {
        if name.is_empty() {
            return Err(CliError::Usage(format!("{flag}: the user name is empty")));
        }
        return Ok((name.to_string(), password.to_string()));
    }
    if spec.is_empty() {
        return Err(CliError::Usage(format!("{flag}: the user name is empty")));
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{flag}: no password for user {spec:?}; give NAME:PASSWORD, or run on a terminal to be asked for it"
        )));
    }
    let password = rpassword::prompt_password(format!("Password of {spec}: "))
        .map_err(|e| CliError::Usage(format!("{flag}: read the password: {e}")))?;
    Ok((spec.to_string(), password))
}

fn done(out: &mut Printer, message: &str) -> Result<(), CliError> {
    let written = if out.json {
        out.json_line(&serde_json::json!({ "ok": true, "message": message }))
    } else {
        out.line(message)
    };
    written.map_err(CliError::Io)
}

/// A list of names: `{field: [names...]}` in JSON, one name a line in text.
fn names(out: &mut Printer, field: &str, names: &[String]) -> Result<(), CliError> {
    if out.json {
        out.json_line(&serde_json::json!({ field: names }))?;
    } else {
        for name in names {
            out.line(name)?;
        }
    }
    Ok(())
}

pub async fn auth(
    client: &mut Client,
    out: &mut Printer,
    cmd: AuthCommand,
) -> Result<(), CliError> {
    match cmd {
        AuthCommand::Enable => {
            client
                .call(|ch| async move { client::auth(ch).auth_enable(pb::AuthEnableRequest {}).await })
                .await?;
            done(out, "Authentication Enabled")
        }
        AuthCommand::Disable => {
            client
                .call(|ch| async move {
                    client::auth(ch)
                        .auth_disable(pb::AuthDisableRequest {})
                        .await
                })
                .await?;
            done(out, "Authentication Disabled")
        }
        AuthCommand::Status => {
            let r =
                client
                    .call(|ch| async move {
                        client::auth(ch).auth_status(pb::AuthStatusRequest {}).await
                    })
                    .await?;
            if out.json {
                out.json_line(&serde_json::json!({
                    "enabled": r.enabled,
                    "auth_revision": r.auth_revision,
                }))?;
            } else {
                out.line(format!("Authentication Status: {}", r.enabled))?;
                out.line(format!("AuthRevision: {}", r.auth_revision))?;
            }
            Ok(())
        }
    }
}

pub async fn user(
    client: &mut Client,
    out: &mut Printer,
    cmd: UserCommand,
) -> Result<(), CliError> {
    match cmd {
        UserCommand::Add { user, no_password } => {
            let (name, password) = if no_password {
                (user, String::new())
            } else {
                credentials(&user, "user add")?
            };
            let req = pb::AuthUserAddRequest {
                name: name.clone(),
                password,
                no_password,
            };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).user_add(req).await }
                })
                .await?;
            done(out, &format!("User {name} created"))
        }
        UserCommand::Get { name } => {
            let req = pb::AuthUserGetRequest { name: name.clone() };
            let r = client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).user_get(req).await }
                })
                .await?;
            if out.json {
                out.json_line(&serde_json::json!({
                    "name": name,
                    "roles": r.roles,
                    "has_password": r.has_password,
                }))?;
            } else {
                out.line(format!("User: {name}"))?;
                out.line(format!("Roles: {}", r.roles.join(" ")))?;
            }
            Ok(())
        }
        UserCommand::List => {
            let r =
                client
                    .call(|ch| async move {
                        client::auth(ch).user_list(pb::AuthUserListRequest {}).await
                    })
                    .await?;
            names(out, "users", &r.users)
        }
        UserCommand::Delete { name } => {
            let req = pb::AuthUserDeleteRequest { name: name.clone() };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).user_delete(req).await }
                })
                .await?;
            done(out, &format!("User {name} deleted"))
        }
        UserCommand::Passwd { user, no_password } => {
            let (name, password) = if no_password {
                (user, String::new())
            } else {
                credentials(&user, "user passwd")?
            };
            let req = pb::AuthUserChangePasswordRequest {
                name: name.clone(),
                password,
                no_password,
            };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).user_change_password(req).await }
                })
                .await?;
            done(out, &format!("Password of user {name} changed"))
        }
        UserCommand::GrantRole { name, role } => {
            let req = pb::AuthUserGrantRoleRequest {
                user: name.clone(),
                role: role.clone(),
            };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).user_grant_role(req).await }
                })
                .await?;
            done(out, &format!("Role {role} is granted to user {name}"))
        }
        UserCommand::RevokeRole { name, role } => {
            let req = pb::AuthUserRevokeRoleRequest {
                user: name.clone(),
                role: role.clone(),
            };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).user_revoke_role(req).await }
                })
                .await?;
            done(out, &format!("Role {role} is revoked from user {name}"))
        }
    }
}

#[derive(Serialize)]
struct PermissionJson {
    #[serde(rename = "type")]
    kind: &'static str,
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    range_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end_base64: Option<String>,
    collection: Option<String>,
}

fn perm_type_name(t: i32) -> &'static str {
    match pb::permission::Type::try_from(t) {
        Ok(pb::permission::Type::Read) => "read",
        Ok(pb::permission::Type::Write) => "write",
        Ok(pb::permission::Type::Readwrite) => "readwrite",
        Err(_) => "unknown",
    }
}

fn permission_json(p: &pb::Permission) -> PermissionJson {
    let kind = perm_type_name(p.perm_type);
    if !p.collection.is_empty() {
        return PermissionJson {
            kind,
            key: None,
            key_base64: None,
            range_end: None,
            range_end_base64: None,
            collection: Some(p.collection.clone()),
        };
    }
    let (key, key_base64) = output::bytes_fields(&p.key);
    let (range_end, range_end_base64) = output::bytes_fields(&p.range_end);
    PermissionJson {
        kind,
        key,
        key_base64,
        range_end,
        range_end_base64,
        collection: None,
    }
}

/// `readwrite [app/, app0)`, `read key k`, `read [a, <end>)`, `write collection devices`.
fn permission_text(p: &pb::Permission) -> String {
    let kind = perm_type_name(p.perm_type);
    if !p.collection.is_empty() {
        return format!("{kind} collection {}", p.collection);
    }
    let key = String::from_utf8_lossy(&p.key);
    if p.range_end.is_empty() {
        format!("{kind} key {key}")
    } else if p.range_end == [0] {
        format!("{kind} [{key}, <end>)")
    } else {
        format!("{kind} [{key}, {})", String::from_utf8_lossy(&p.range_end))
    }
}

pub async fn role(
    client: &mut Client,
    out: &mut Printer,
    cmd: RoleCommand,
) -> Result<(), CliError> {
    match cmd {
        RoleCommand::Add { role } => {
            let req = pb::AuthRoleAddRequest { name: role.clone() };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).role_add(req).await }
                })
                .await?;
            done(out, &format!("Role {role} created"))
        }
        RoleCommand::Get { role } => {
            let req = pb::AuthRoleGetRequest { role: role.clone() };
            let r = client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).role_get(req).await }
                })
                .await?;
            if out.json {
                let perms: Vec<PermissionJson> = r.perm.iter().map(permission_json).collect();
                out.json_line(&serde_json::json!({ "role": role, "permissions": perms }))?;
            } else {
                out.line(format!("Role {role}"))?;
                for p in &r.perm {
                    out.line(permission_text(p))?;
                }
            }
            Ok(())
        }
        RoleCommand::List => {
            let r =
                client
                    .call(|ch| async move {
                        client::auth(ch).role_list(pb::AuthRoleListRequest {}).await
                    })
                    .await?;
            names(out, "roles", &r.roles)
        }
        RoleCommand::Delete { role } => {
            let req = pb::AuthRoleDeleteRequest { role: role.clone() };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).role_delete(req).await }
                })
                .await?;
            done(out, &format!("Role {role} deleted"))
        }
        RoleCommand::GrantPermission { role, perm, target } => {
            let (key, range_end, collection) = target.parts()?;
            let req = pb::AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(pb::Permission {
                    perm_type: perm.to_proto(),
                    key,
                    range_end,
                    collection,
                }),
            };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).role_grant_permission(req).await }
                })
                .await?;
            done(out, &format!("Role {role} updated"))
        }
        RoleCommand::RevokePermission { role, target } => {
            let (key, range_end, collection) = target.parts()?;
            let req = pb::AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key,
                range_end,
                collection,
            };
            client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::auth(ch).role_revoke_permission(req).await }
                })
                .await?;
            done(out, &format!("Permission of role {role} revoked"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_split_at_the_first_colon() {
        assert_eq!(
            credentials("alice:pa:ss", "--user").unwrap(),
            ("alice".to_string(), "pa:ss".to_string())
        );
        assert_eq!(
            credentials("alice:", "--user").unwrap(),
            ("alice".to_string(), String::new())
        );
        assert!(matches!(
            credentials(":pw", "--user"),
            Err(CliError::Usage(_))
        ));
    }
}

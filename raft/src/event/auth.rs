//! Events that change authentication and roles (etcd v3's auth model).
//!
//! Passwords arrive here already hashed: the node that receives the
//! request hashes the password with a random salt and puts the PHC string
//! in the event, so applying it never hashes and every replica stores the
//! same bytes. Likewise the token-signing key is drawn at random by the
//! node that receives `auth enable` and carried in the event.

use serde::{Deserialize, Serialize};

use super::Bytes;

/// One change to users, roles or the enabled flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AuthChange {
    /// Turn authentication on; needs a user `root` with the role `root`.
    /// `signing_key` (32 random bytes) keys the MAC of every token issued
    /// from now on, on every member.
    Enable {
        signing_key: Bytes,
    },
    Disable,
    /// A new user. `password_hash` is a PHC string; `None`: a user without
    /// a password, who can only be identified by a client certificate.
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    /// Adds a permission to a role, or changes the access of the one the
    /// role already has on the same target.
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        target: PermissionTarget,
    },
}

impl AuthChange {
    /// Short name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            AuthChange::Enable { .. } => "auth_enable",
            AuthChange::Disable => "auth_disable",
            AuthChange::UserAdd { .. } => "user_add",
            AuthChange::UserDelete { .. } => "user_delete",
            AuthChange::UserChangePassword { .. } => "user_change_password",
            AuthChange::UserGrantRole { .. } => "user_grant_role",
            AuthChange::UserRevokeRole { .. } => "user_revoke_role",
            AuthChange::RoleAdd { .. } => "role_add",
            AuthChange::RoleDelete { .. } => "role_delete",
            AuthChange::RoleGrantPermission { .. } => "role_grant_permission",
            AuthChange::RoleRevokePermission { .. } => "role_revoke_permission",
        }
    }
}

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    /// Whether holding `self` grants `wanted` (`ReadWrite` grants both).
    pub fn grants(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }

    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        }
    }
}

/// What a permission is on: a key range in etcd's convention (empty
/// `range_end`: the key alone; `[0]`: every key from `key` on; otherwise
/// `[key, range_end)`), or a document collection by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionTarget {
    Keys { key: Bytes, range_end: Bytes },
    Collection(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub access: Access,
    pub target: PermissionTarget,
}

#[cfg(test)]
mod tests {
    use super::super::{decode_request, encode, Event, Request};
    use super::*;

    #[test]
    fn auth_events_round_trip_through_cbor() {
        let changes = vec![
            AuthChange::Enable {
                signing_key: Bytes::from(vec![1u8; 32]),
            },
            AuthChange::Disable,
            AuthChange::UserAdd {
                name: "alice".into(),
                password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            },
            AuthChange::UserAdd {
                name: "device-7".into(),
                password_hash: None,
            },
            AuthChange::RoleGrantPermission {
                role: "app".into(),
                permission: Permission {
                    access: Access::ReadWrite,
                    target: PermissionTarget::Keys {
                        key: Bytes::from_static(b"app/"),
                        range_end: Bytes::from_static(b"app0"),
                    },
                },
            },
            AuthChange::RoleRevokePermission {
                role: "app".into(),
                target: PermissionTarget::Collection("devices".into()),
            },
        ];
        for change in changes {
            let req = Request::new(1, Event::Auth(change));
            assert_eq!(decode_request(&encode(&req).unwrap()).unwrap(), req);
        }
    }

    #[test]
    fn readwrite_grants_both() {
        assert!(Access::ReadWrite.grants(Access::Read));
        assert!(Access::ReadWrite.grants(Access::Write));
        assert!(Access::Read.grants(Access::Read));
        assert!(!Access::Read.grants(Access::Write));
        assert!(!Access::Write.grants(Access::Read));
    }
}

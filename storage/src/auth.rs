//! Authentication and roles as stored: users, roles, the enabled flag and
//! the token-signing key, in [`Cf::Auth`], and the
//! pure decisions made from them (who is root, whether a user's roles cover
//! a key range or a collection).
//!
//! The model is etcd v3's: a user has roles, a role has permissions (read,
//! write or readwrite) on key ranges or, here, on document collections. The
//! role `root` is built in and grants everything; authentication can be
//! enabled only while a user `root` holds it. Every bound below is part of
//! the replicated behaviour (the applier refuses what exceeds it), so they
//! are constants, the same on every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utopia_raft::event::{Access, Permission, PermissionTarget};

use crate::apply::{range_bounds, StateRead};
use crate::keys::{self, Cf};
use crate::StoreError;

/// The built-in role that grants everything, and the user that must hold
/// it before authentication can be enabled.
pub const ROOT: &str = "root";
/// Longest user or role name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Most users.
pub const USERS_MAX: usize = 1000;
/// Most roles (besides `root`).
pub const ROLES_MAX: usize = 1000;
/// Most roles one user holds.
pub const ROLES_PER_USER_MAX: usize = 64;
/// Most permissions in one role.
pub const PERMISSIONS_PER_ROLE_MAX: usize = 256;
/// Longest PHC password hash string, in bytes.
pub const PASSWORD_HASH_BYTES_MAX: usize = 512;
/// Length of the token-signing key (a blake3 key).
pub const SIGNING_KEY_BYTES: usize = 32;

/// Whether authentication is on, with what key tokens are signed, and how
/// many auth changes have been applied (`revision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuthMeta {
    pub enabled: bool,
    #[serde(with = "serde_bytes")]
    pub signing_key: Vec<u8>,
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// PHC string (argon2id); `None`: no password, identified only by a
    /// client certificate.
    pub password_hash: Option<String>,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
    /// The auth revision at which the password was last set (or the user
    /// created). Tokens carry it, so a new password, or a user deleted and
    /// added again, invalidates every token issued before.
    pub password_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub name: String,
    /// Sorted by target, one per target.
    pub permissions: Vec<Permission>,
}

/// The whole auth state, as one node holds it in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthState {
    pub meta: AuthMeta,
    pub users: BTreeMap<String, UserRecord>,
    pub roles: BTreeMap<String, RoleRecord>,
}

/// A key range as half-open bounds: `None` end is "to the last key".
type Interval = (Vec<u8>, Option<Vec<u8>>);

impl AuthState {
    /// Reads the whole auth state (bounded: [`USERS_MAX`] users and
    /// [`ROLES_MAX`] roles).
    pub fn load<S: StateRead + ?Sized>(state: &S) -> Result<AuthState, StoreError> {
        use crate::codec::decode;
        let meta = match state.get(Cf::Auth, keys::auth::META)? {
            Some(v) => decode(Cf::Auth, keys::auth::META, &v)?,
            None => AuthMeta::default(),
        };
        let mut users = BTreeMap::new();
        let p = keys::auth::USER_PREFIX;
        for item in state.scan(Cf::Auth, &[p], Some(&[p + 1])) {
            let (k, v) = item?;
            let u: UserRecord = decode(Cf::Auth, &k, &v)?;
            users.insert(u.name.clone(), u);
        }
        let mut roles = BTreeMap::new();
        let p = keys::auth::ROLE_PREFIX;
        for item in state.scan(Cf::Auth, &[p], Some(&[p + 1])) {
            let (k, v) = item?;
            let r: RoleRecord = decode(Cf::Auth, &k, &v)?;
            roles.insert(r.name.clone(), r);
        }
        Ok(AuthState { meta, users, roles })
    }

    pub fn enabled(&self) -> bool {
        self.meta.enabled
    }

    /// Whether `user` holds the root role.
    pub fn is_root(&self, user: &UserRecord) -> bool {
        user.roles.iter().any(|r| r == ROOT)
    }

    /// The permissions of `user`'s roles (root's excepted: it has all).
    fn permissions<'a>(&'a self, user: &'a UserRecord) -> impl Iterator<Item = &'a Permission> {
        user.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
    }

    /// Whether `user` may access every key in etcd's range `key`,
    /// `range_end`: the ranges its roles grant `access` on, together,
    /// cover the whole requested range.
    pub fn permits_keys(
        &self,
        user: &UserRecord,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> bool {
        if self.is_root(user) {
            return true;
        }
        let granted: Vec<Interval> = self
            .permissions(user)
            .filter(|p| p.access.grants(access))
            .filter_map(|p| match &p.target {
                PermissionTarget::Keys { key, range_end } => Some(range_bounds(key, range_end)),
                PermissionTarget::Collection(_) => None,
            })
            .collect();
        let (start, end) = range_bounds(key, range_end);
        covers(granted, &start, end.as_deref())
    }

    /// Whether `user` may access the document collection `name`.
    pub fn permits_collection(&self, user: &UserRecord, access: Access, name: &str) -> bool {
        self.is_root(user)
            || self.permissions(user).any(|p| {
                p.access.grants(access)
                    && matches!(&p.target, PermissionTarget::Collection(c) if c == name)
            })
    }
}

/// Whether the union of `granted` covers `[start, end)` (`None`: to the
/// last key). Walks the intervals by start, extending how far the covered
/// prefix of the request reaches; a gap before the request's end is a no.
fn covers(mut granted: Vec<Interval>, start: &[u8], end: Option<&[u8]>) -> bool {
    if end.is_some_and(|e| e <= start) {
        // An empty range asks for no key.
        return true;
    }
    granted.sort();
    let mut reached = start.to_vec();
    for (s, e) in granted {
        if s.as_slice() > reached.as_slice() {
            return false;
        }
        match e {
            None => return true,
            Some(e) if e > reached => {
                reached = e;
                if end.is_some_and(|want| reached.as_slice() >= want) {
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    false
}

/// A user or role name: 1..=NAME_BYTES_MAX bytes, no control characters.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "{what} name must be 1..={NAME_BYTES_MAX} bytes, got {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} name {name:?} contains control characters"));
    }
    Ok(())
}

/// A target for messages: `keys [a, b)` or `collection devices`.
pub fn describe_target(target: &PermissionTarget) -> String {
    match target {
        PermissionTarget::Keys { key, range_end } => {
            let k = crate::printable_key(key);
            if range_end.is_empty() {
                format!("key {k:?}")
            } else if range_end[..] == [0] {
                format!("keys from {k:?} on")
            } else {
                format!("keys [{k:?}, {:?})", crate::printable_key(range_end))
            }
        }
        PermissionTarget::Collection(c) => format!("collection {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utopia_raft::event::Bytes;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.as_bytes().to_vec())
    }

    fn keys(access: Access, key: &str, range_end: &[u8]) -> Permission {
        Permission {
            access,
            target: PermissionTarget::Keys {
                key: b(key),
                range_end: Bytes::from(range_end.to_vec()),
            },
        }
    }

    fn state(perms: Vec<Permission>) -> (AuthState, UserRecord) {
        let mut s = AuthState::default();
        s.roles.insert(
            "r".into(),
            RoleRecord {
                name: "r".into(),
                permissions: perms,
            },
        );
        let user = UserRecord {
            name: "u".into(),
            password_hash: None,
            roles: vec!["r".into()],
            password_revision: 0,
        };
        (s, user)
    }

    #[test]
    fn key_ranges_must_be_covered_whole() {
        let (s, u) = state(vec![
            keys(Access::ReadWrite, "app/", b"app0"),
            keys(Access::Read, "b", b"d"),
            keys(Access::Read, "d", b"f"),
            keys(Access::Write, "w", b""),
            keys(Access::Read, "z", b"\0"),
        ]);
        let check = |access, key: &str, end: &[u8], want: bool| {
            assert_eq!(
                s.permits_keys(&u, access, key.as_bytes(), end),
                want,
                "{access:?} {key:?} {end:?}"
            );
        };
        check(Access::Read, "app/x", b"", true);
        check(Access::Write, "app/x", b"", true);
        check(Access::Read, "app/", b"app0", true);
        check(Access::Read, "app/a", b"app/b", true);
        check(Access::Read, "app", b"", false);
        check(Access::Read, "app/", b"\0", false);
        check(Access::Read, "apq", b"", false);
        // Two adjacent grants cover the range together.
        check(Access::Read, "b", b"f", true);
        check(Access::Read, "c", b"e", true);
        check(Access::Read, "c", b"g", false);
        check(Access::Write, "c", b"", false);
        // A single key.
        check(Access::Write, "w", b"", true);
        check(Access::Read, "w", b"", false);
        check(Access::Write, "w", b"w\0", true);
        check(Access::Write, "w", b"x", false);
        // From a key to the end.
        check(Access::Read, "zz", b"\0", true);
        check(Access::Read, "z", b"", true);
        check(Access::Read, "y", b"\0", false);
        // An empty range asks for nothing.
        check(Access::Write, "q", b"a", true);
    }

    #[test]
    fn collections_and_root() {
        let (mut s, mut u) = state(vec![Permission {
            access: Access::Read,
            target: PermissionTarget::Collection("devices".into()),
        }]);
        assert!(s.permits_collection(&u, Access::Read, "devices"));
        assert!(!s.permits_collection(&u, Access::Write, "devices"));
        assert!(!s.permits_collection(&u, Access::Read, "zones"));
        assert!(!s.permits_keys(&u, Access::Read, b"devices", b""));
        u.roles.push(ROOT.into());
        s.meta.enabled = true;
        assert!(s.is_root(&u));
        assert!(s.permits_collection(&u, Access::Write, "zones"));
        assert!(s.permits_keys(&u, Access::Write, b"\0", b"\0"));
    }

    #[test]
    fn names_are_bounded() {
        assert!(check_name("user", "alice").is_ok());
        assert!(check_name("user", "").is_err());
        assert!(check_name("user", &"x".repeat(NAME_BYTES_MAX + 1)).is_err());
        assert!(check_name("role", "a\nb").is_err());
    }
}

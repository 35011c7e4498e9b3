//! Authentication and roles: what enabling needs, users, roles and
//! their permissions as the applier records them.

use super::*;
use crate::auth::AuthState;
use utopia_raft::event::{Access, AuthChange, Permission, PermissionTarget};

fn auth(s: &mut MemState, change: AuthChange) -> Outcome {
    s.apply(Event::Auth(change)).outcome
}

fn add_user(s: &mut MemState, name: &str) -> Outcome {
    auth(
        s,
        AuthChange::UserAdd {
            name: name.into(),
            password_hash: Some("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        },
    )
}

fn grant(s: &mut MemState, user: &str, role: &str) -> Outcome {
    auth(
        s,
        AuthChange::UserGrantRole {
            user: user.into(),
            role: role.into(),
        },
    )
}

fn enable(s: &mut MemState) -> Outcome {
    auth(
        s,
        AuthChange::Enable {
            signing_key: Bytes::from(vec![7u8; 32]),
        },
    )
}

fn rejected(o: &Outcome) -> bool {
    matches!(o, Outcome::Rejected(_))
}

#[test]
fn enabling_needs_root_with_the_root_role() {
    let mut s = MemState::default();
    assert!(matches!(
        enable(&mut s),
        Outcome::Rejected(Rejection::FailedPrecondition(_))
    ));
    assert_eq!(add_user(&mut s, "root"), Outcome::Done);
    assert!(rejected(&enable(&mut s)), "root without the root role");
    assert_eq!(grant(&mut s, "root", "root"), Outcome::Done);
    assert_eq!(enable(&mut s), Outcome::Done);
    let st = AuthState::load(&s).unwrap();
    assert!(st.enabled());
    assert_eq!(st.meta.signing_key, vec![7u8; 32]);

    // While enabled, root stays root.
    assert!(matches!(
        auth(
            &mut s,
            AuthChange::UserDelete {
                name: "root".into()
            }
        ),
        Outcome::Rejected(Rejection::FailedPrecondition(_))
    ));
    assert!(rejected(&auth(
        &mut s,
        AuthChange::UserRevokeRole {
            user: "root".into(),
            role: "root".into()
        }
    )));
    // Enabling again keeps the key, so issued tokens stay valid.
    auth(
        &mut s,
        AuthChange::Enable {
            signing_key: Bytes::from(vec![9u8; 32]),
        },
    );
    assert_eq!(AuthState::load(&s).unwrap().meta.signing_key, vec![7u8; 32]);
    assert_eq!(auth(&mut s, AuthChange::Disable), Outcome::Done);
    assert_eq!(
        auth(
            &mut s,
            AuthChange::UserDelete {
                name: "root".into()
            }
        ),
        Outcome::Done
    );
    // A bad key is refused alike on every replica.
    assert!(rejected(&auth(
        &mut s,
        AuthChange::Enable {
            signing_key: Bytes::from(vec![1u8; 3]),
        }
    )));
}

#[test]
fn users_roles_and_permissions() {
    let mut s = MemState::default();
    assert_eq!(add_user(&mut s, "alice"), Outcome::Done);
    assert!(matches!(
        add_user(&mut s, "alice"),
        Outcome::Rejected(Rejection::AlreadyExists(_))
    ));
    assert!(rejected(&add_user(&mut s, "")));
    assert!(matches!(
        grant(&mut s, "alice", "app"),
        Outcome::Rejected(Rejection::NotFound(_))
    ));
    assert_eq!(
        auth(&mut s, AuthChange::RoleAdd { name: "app".into() }),
        Outcome::Done
    );
    assert!(rejected(&auth(
        &mut s,
        AuthChange::RoleAdd {
            name: "root".into()
        }
    )));
    let perm = crate::apply::auth::key_permission(Access::Read, "app/", "app0");
    let grant_perm = |s: &mut MemState, p: Permission| {
        auth(
            s,
            AuthChange::RoleGrantPermission {
                role: "app".into(),
                permission: p,
            },
        )
    };
    assert_eq!(grant_perm(&mut s, perm.clone()), Outcome::Done);
    // The same target again changes the access, not the count.
    let rw = crate::apply::auth::key_permission(Access::ReadWrite, "app/", "app0");
    assert_eq!(grant_perm(&mut s, rw), Outcome::Done);
    let bad = Permission {
        access: Access::Read,
        target: PermissionTarget::Collection("nope".into()),
    };
    assert!(rejected(&grant_perm(&mut s, bad)));
    assert_eq!(grant(&mut s, "alice", "app"), Outcome::Done);
    let st = AuthState::load(&s).unwrap();
    assert_eq!(st.roles["app"].permissions.len(), 1);
    assert_eq!(st.roles["app"].permissions[0].access, Access::ReadWrite);
    let alice = &st.users["alice"];
    assert!(st.permits_keys(alice, Access::Write, b"app/x", b""));
    assert!(!st.permits_keys(alice, Access::Write, b"other", b""));

    // A new password moves the revision tokens are checked against.
    let before = alice.password_revision;
    auth(
        &mut s,
        AuthChange::UserChangePassword {
            name: "alice".into(),
            password_hash: None,
        },
    );
    let st = AuthState::load(&s).unwrap();
    assert!(st.users["alice"].password_revision > before);
    assert_eq!(st.users["alice"].password_hash, None);

    // Deleting a role takes it from its users.
    assert_eq!(
        auth(&mut s, AuthChange::RoleDelete { name: "app".into() }),
        Outcome::Done
    );
    let st = AuthState::load(&s).unwrap();
    assert!(st.users["alice"].roles.is_empty());
    assert!(st.roles.is_empty());
    // A refused change writes nothing, not even the revision.
    let rev = st.meta.revision;
    assert!(rejected(&auth(
        &mut s,
        AuthChange::RoleDelete { name: "app".into() }
    )));
    assert_eq!(AuthState::load(&s).unwrap().meta.revision, rev);
}

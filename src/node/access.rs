//! Who is calling and what they may do: the authentication gate and the
//! one check every request passes first, [`Node::authorize`].
//!
//! While authentication is off (the default) everything is allowed, as it
//! always was. Once it is on, a request names its user with a token from
//! `Auth.Authenticate` (see [`super::credentials`]), or, on a server that
//! requires client certificates and when no token is sent, with its
//! certificate's subject common name. The user's roles are read from the
//! auth state at every request, so a grant or a revoke takes effect at
//! once; the state is cached in memory and reloaded only when an auth event
//! was applied (the store's auth generation moved).
//!
//! How a request carries its token and certificate is the edge's business:
//! it hands them over through [`Presented`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;
use utopia_raft::event::{Access, Bytes, PermissionTarget};
use utopia_storage::auth::{describe_target, AuthState, UserRecord};
use utopia_storage::Reader;

use super::credentials::{verify_token, TokenError};
use super::{Error, Node};

/// Password hashes and verifications running at once. Each argon2id run
/// takes 19 MiB and tens of milliseconds of one core: more in parallel
/// would only take the cores from the requests that hold tokens.
const PASSWORD_CHECKS_IN_FLIGHT_MAX: usize = 2;
/// Password checks waiting for a slot; beyond that a request is refused
/// (resource exhausted) instead of queueing without bound.
const PASSWORD_CHECKS_WAITING_MAX: usize = 64;

/// What a request needs to be allowed.
pub enum Need<'a> {
    /// Nothing: open to everyone (Authenticate, AuthStatus, Status).
    Anyone,
    /// Any authenticated user.
    User,
    /// The root role: membership, compaction, auth administration.
    Root,
    /// `access` on every key of etcd's range `key`, `range_end`.
    Keys(Access, &'a [u8], &'a [u8]),
    /// Every part of a transaction, in order: read on every compare and
    /// range, write on every put and delete, in both branches.
    Txn(Vec<(Access, &'a [u8], &'a [u8])>),
    /// `access` on a document collection.
    Collection(Access, &'a str),
    /// `access` on every key attached to a lease (a missing lease needs
    /// nothing: the request then finds no lease).
    LeaseKeys(Access, i64),
    /// The user named, or root.
    SelfOrRoot(&'a str),
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: everything is allowed.
    Unrestricted,
    /// Authentication is on and the request names no user.
    Anonymous,
    User {
        name: String,
        root: bool,
    },
}

impl Caller {
    /// Whether the caller may see what reveals the host (the data
    /// directory): with authentication off, or the root role.
    pub fn sees_host_details(&self) -> bool {
        matches!(self, Caller::Unrestricted | Caller::User { root: true, .. })
    }
}

/// What a request presents to say who sends it, however it travelled.
pub trait Presented {
    /// The token it carries, if any: `Err` when it is not text.
    fn token(&self) -> Option<Result<&str, TokenError>>;
    /// The subject common name of its client certificate, if it has one
    /// (asked only when the listener requires client certificates and no
    /// token was sent).
    fn certificate_user(&self) -> Option<String>;
}

/// The node's authentication state and limits.
pub struct AuthGate {
    /// Lifetime of the tokens this node issues (`auth.token_ttl_s`).
    pub token_ttl_s: u64,
    /// The listener requires client certificates: their common name
    /// identifies a request that carries no token.
    pub client_cert_required: bool,
    cached: RwLock<(u64, Arc<AuthState>)>,
    password_checks: Semaphore,
    password_checks_waiting: AtomicUsize,
}

impl AuthGate {
    pub fn new(token_ttl_s: u64, client_cert_required: bool) -> Self {
        Self {
            token_ttl_s,
            client_cert_required,
            // Generation 0 is never current: the first request loads.
            cached: RwLock::new((0, Arc::default())),
            password_checks: Semaphore::new(PASSWORD_CHECKS_IN_FLIGHT_MAX),
            password_checks_waiting: AtomicUsize::new(0),
        }
    }

    /// The current auth state: the cached copy, or a fresh one when an
    /// auth change was applied since it was read.
    pub fn state(&self, reader: &Reader) -> Result<Arc<AuthState>, Error> {
        // The generation first: the state read after it is at least as new.
        let generation = reader.auth_generation();
        if let Ok(c) = self.cached.read() {
            if c.0 == generation {
                return Ok(c.1.clone());
            }
        }
        let state = Arc::new(reader.auth_state()?);
        if let Ok(mut c) = self.cached.write() {
            if c.0 < generation {
                *c = (generation, state.clone());
            }
        }
        Ok(state)
    }

    /// Runs `f` (an argon2 hash or verification) on a blocking thread, at
    /// most `PASSWORD_CHECKS_IN_FLIGHT_MAX` at once.
    pub async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        if self.password_checks_waiting.fetch_add(1, Ordering::AcqRel)
            >= PASSWORD_CHECKS_WAITING_MAX
        {
            self.password_checks_waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ResourceExhausted(format!(
                "too many password checks waiting ({PASSWORD_CHECKS_WAITING_MAX}); retry later"
            )));
        }
        let permit = self.password_checks.acquire().await;
        self.password_checks_waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| Error::Unavailable("shutting down".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("password check failed to run: {e}")))
    }
}

fn describe_keys(key: &[u8], range_end: &[u8]) -> String {
    describe_target(&PermissionTarget::Keys {
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(range_end),
    })
}

impl Node {
    /// Counts an authentication failure under `reason` and returns the
    /// error.
    pub fn auth_failure(&self, e: Error) -> Error {
        let reason = match &e {
            Error::Unauthenticated { reason, .. } => reason,
            Error::PermissionDenied(_) => "permission_denied",
            _ => "other",
        };
        self.metrics
            .auth_failures
            .get_or_create(&crate::metrics::Reason { reason })
            .inc();
        e
    }

    fn unauthenticated(&self, reason: &'static str, message: impl Into<String>) -> Error {
        self.auth_failure(Error::Unauthenticated {
            reason,
            message: message.into(),
        })
    }

    /// Who sent a request and whether `need` allows it. The one check each
    /// request passes first: unauthenticated without a valid identity
    /// (auth on); permission denied, naming the user and what was needed,
    /// when the user's roles do not allow it.
    pub fn authorize<P: Presented + ?Sized>(
        &self,
        presented: &P,
        need: Need<'_>,
    ) -> Result<Caller, Error> {
        let state = self.auth.state(&self.reader)?;
        if !state.enabled() {
            return Ok(Caller::Unrestricted);
        }
        let user = match self.identify(&state, presented) {
            Ok(Some(user)) => user,
            Ok(None) | Err(_) if matches!(need, Need::Anyone) => return Ok(Caller::Anonymous),
            Ok(None) => {
                return Err(self.unauthenticated(
                    "no_credentials",
                    "authentication is enabled and the request names no user: send a token from Auth.Authenticate in the `token` metadata (utopia --user NAME[:PASSWORD])",
                ))
            }
            Err(e) => return Err(e),
        };
        let root = state.is_root(user);
        let caller = Caller::User {
            name: user.name.clone(),
            root,
        };
        if root {
            return Ok(caller);
        }
        let denied = |what: String| {
            Err(self.auth_failure(Error::PermissionDenied(format!(
                "user {:?} may not {what}",
                user.name
            ))))
        };
        match need {
            Need::Anyone | Need::User => Ok(caller),
            Need::Root => denied("do this: it needs the root role".into()),
            Need::SelfOrRoot(name) if name == user.name => Ok(caller),
            Need::SelfOrRoot(name) => denied(format!(
                "read or change user {name:?}: it needs the root role"
            )),
            Need::Keys(access, key, range_end) => {
                if state.permits_keys(user, access, key, range_end) {
                    Ok(caller)
                } else {
                    denied(format!(
                        "{} {}: it needs {} permission on them",
                        verb(access),
                        describe_keys(key, range_end),
                        access.name()
                    ))
                }
            }
            Need::Collection(access, name) => {
                if state.permits_collection(user, access, name) {
                    Ok(caller)
                } else {
                    denied(format!(
                        "{} collection {name}: it needs {} permission on it",
                        verb(access),
                        access.name()
                    ))
                }
            }
            Need::Txn(parts) => match parts
                .into_iter()
                .find(|(a, k, e)| !state.permits_keys(user, *a, k, e))
            {
                None => Ok(caller),
                Some((access, key, range_end)) => denied(format!(
                    "{} {} in this transaction: it needs {} permission on them",
                    verb(access),
                    describe_keys(key, range_end),
                    access.name()
                )),
            },
            Need::LeaseKeys(access, id) => {
                // Every attached key must be permitted: all of them are read
                // (names only, no values).
                let keys = match self.reader.lease(id, usize::MAX)? {
                    Some((_, keys, _)) => keys,
                    None => return Ok(caller),
                };
                match keys
                    .iter()
                    .find(|k| !state.permits_keys(user, access, k, &[]))
                {
                    None => Ok(caller),
                    Some(k) => denied(format!(
                        "{} {} attached to lease {id}: it needs {} permission on every key of the lease",
                        verb(access),
                        describe_keys(k, &[]),
                        access.name()
                    )),
                }
            }
        }
    }

    /// The user a request names: by token, else by client certificate.
    /// `Ok(None)`: no credentials at all.
    fn identify<'s, P: Presented + ?Sized>(
        &self,
        state: &'s AuthState,
        presented: &P,
    ) -> Result<Option<&'s UserRecord>, Error> {
        if let Some(token) = presented.token() {
            let token = token.map_err(|e| self.unauthenticated(e.reason(), e.to_string()))?;
            let (name, revision) = verify_token(&state.meta.signing_key, token, crate::now_ms())
                .map_err(|e| self.unauthenticated(e.reason(), e.to_string()))?;
            return match state.users.get(&name) {
                Some(u) if u.password_revision == revision => Ok(Some(u)),
                _ => Err(self.unauthenticated(
                    "stale_token",
                    format!(
                        "the token of user {name:?} is no longer valid (the user was deleted or its password changed); authenticate again"
                    ),
                )),
            };
        }
        if self.auth.client_cert_required {
            if let Some(name) = presented.certificate_user() {
                return match state.users.get(&name) {
                    Some(u) => Ok(Some(u)),
                    None => Err(self.unauthenticated(
                        "unknown_certificate_user",
                        format!(
                            "the client certificate names user {name:?} (its common name), who does not exist"
                        ),
                    )),
                };
            }
        }
        Ok(None)
    }
}

fn verb(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Write => "write",
        Access::ReadWrite => "read and write",
    }
}

//! Who is calling and what they may do: tokens, client certificates,
//! password hashing, and the one check every handler makes at its top,
//! [`Node::authorize`].
//!
//! While authentication is off (the default) everything is allowed, as it
//! always was. Once it is on, a request names its user with a token from
//! `Auth.Authenticate` in the `token` metadata entry (as etcd's clients
//! do), or, on a server that requires client certificates and when no
//! token is sent, with its certificate's subject common name. The user's
//! roles are read from the auth state at every request, so a grant or a
//! revoke takes effect at once; the state is cached in memory and reloaded
//! only when an auth event was applied (the store's auth generation moved).
//!
//! Tokens are stateless so that they work on every member: user, the
//! user's password revision, expiry, and a keyed blake3 MAC with the
//! cluster's signing key (drawn when auth was enabled and replicated in
//! that event). A new password, a deleted user, or a restart of auth with
//! a new key voids the tokens issued before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::Status;
use utopia_proto::v1 as pb;
use utopia_raft::event::{Access, Bytes, PermissionTarget};
use utopia_storage::auth::{describe_target, AuthState, UserRecord};
use utopia_storage::Reader;

use super::{status, Node};

/// The metadata entry a request carries its token in (etcd's name).
pub const TOKEN_METADATA_KEY: &str = "token";
/// Longest token accepted, in bytes (a real one is about 120 plus twice the
/// user name's length).
const TOKEN_BYTES_MAX: usize = 1024;
/// Longest password accepted, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Password hashes and verifications running at once. Each argon2id run
/// takes 19 MiB and tens of milliseconds of one core: more in parallel
/// would only take the cores from the requests that hold tokens.
const PASSWORD_CHECKS_IN_FLIGHT_MAX: usize = 2;
/// Password checks waiting for a slot; beyond that a request is refused
/// with RESOURCE_EXHAUSTED instead of queueing without bound.
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
    /// Read on every compare and range, write on every put and delete, in
    /// both branches.
    Txn(&'a pb::TxnRequest),
    /// `access` on a document collection.
    Collection(Access, &'a str),
    /// `access` on every key attached to a lease (a missing lease needs
    /// nothing: the handler answers NOT_FOUND).
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
    pub fn state(&self, reader: &Reader) -> Result<Arc<AuthState>, Status> {
        // The generation first: the state read after it is at least as new.
        let generation = reader.auth_generation();
        if let Ok(c) = self.cached.read() {
            if c.0 == generation {
                return Ok(c.1.clone());
            }
        }
        let state = Arc::new(reader.auth_state().map_err(status::from_store)?);
        if let Ok(mut c) = self.cached.write() {
            if c.0 < generation {
                *c = (generation, state.clone());
            }
        }
        Ok(state)
    }

    /// Runs `f` (an argon2 hash or verification) on a blocking thread, at
    /// most [`PASSWORD_CHECKS_IN_FLIGHT_MAX`] at once.
    pub async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        if self.password_checks_waiting.fetch_add(1, Ordering::AcqRel)
            >= PASSWORD_CHECKS_WAITING_MAX
        {
            self.password_checks_waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "too many password checks waiting ({PASSWORD_CHECKS_WAITING_MAX}); retry later"
            )));
        }
        let permit = self.password_checks.acquire().await;
        self.password_checks_waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| Status::unavailable("shutting down"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Status::internal(format!("password check failed to run: {e}")))
    }
}

// ------------------------------------------------------------------ passwords

// Passwords are hashed with argon2id (RustCrypto's `argon2`, PHC strings,
// the crate's default parameters: 19 MiB, 2 passes, 1 lane, OWASP's
// recommendation). bcrypt would truncate passwords at 72 bytes and is not
// memory-hard; scrypt is memory-hard but argon2id is the Password Hashing
// Competition's winner and RFC 9106's recommendation, and resists GPU and
// side-channel attacks better. The PHC string records the parameters, so
// they can be raised later without invalidating stored hashes.

/// Bytes from the operating system's random generator.
fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| format!("draw random bytes: {e}"))?;
    Ok(out)
}

/// Hashes `password` with a fresh random salt (16 bytes), as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| format!("encode the salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a password nobody has, verified against when the user does
/// not exist, so that a failed login takes as long either way.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("utopia decoy password").unwrap_or_default())
}

/// Random bytes to sign tokens with.
pub fn new_signing_key() -> Result<Bytes, String> {
    let key = random_bytes::<{ utopia_storage::auth::SIGNING_KEY_BYTES }>()?;
    Ok(Bytes::from(key.to_vec()))
}

// ------------------------------------------------------------------ tokens

const TOKEN_VERSION: &str = "utopia1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn token_mac(key: &[u8], body: &str) -> Option<blake3::Hash> {
    let key: [u8; 32] = key.try_into().ok()?;
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(b"utopia token\n");
    h.update(body.as_bytes());
    Some(h.finalize())
}

/// A token for `user` (at password revision `password_revision`) that
/// expires at `expires_at_ms`: `utopia1.NAME_HEX.REVISION.EXPIRY.MAC_HEX`.
pub fn issue_token(
    key: &[u8],
    user: &str,
    password_revision: u64,
    expires_at_ms: u64,
) -> Option<String> {
    let body = format!(
        "{TOKEN_VERSION}.{}.{password_revision}.{expires_at_ms}",
        hex(user.as_bytes())
    );
    let mac = token_mac(key, &body)?;
    Some(format!("{body}.{}", mac.to_hex()))
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match (issued before auth was re-enabled, or forged)")]
    BadSignature,
    #[error("the token expired {0} ms ago; authenticate again")]
    Expired(u64),
}

impl TokenError {
    fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::BadSignature => "bad_token_signature",
            TokenError::Expired(_) => "expired_token",
        }
    }
}

/// Checks a token's MAC and expiry; returns the user and the password
/// revision it was issued at.
pub fn verify_token(key: &[u8], token: &str, now_ms: u64) -> Result<(String, u64), TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed);
    }
    let (body, mac_hex) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut parts = body.split('.');
    let (Some(TOKEN_VERSION), Some(name), Some(rev), Some(exp), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let mac = blake3::Hash::from_hex(mac_hex).map_err(|_| TokenError::Malformed)?;
    // blake3::Hash compares in constant time.
    if token_mac(key, body) != Some(mac) {
        return Err(TokenError::BadSignature);
    }
    let name = unhex(name)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(TokenError::Malformed)?;
    let rev: u64 = rev.parse().map_err(|_| TokenError::Malformed)?;
    let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    if now_ms >= exp {
        return Err(TokenError::Expired(now_ms - exp));
    }
    Ok((name, rev))
}

/// The subject common name of the first (leaf) client certificate, when
/// it is a text string.
fn certificate_user<T>(req: &tonic::Request<T>) -> Option<String> {
    use x509_cert::der::asn1::ObjectIdentifier;
    use x509_cert::der::{Decode, Tag, Tagged};
    // id-at-commonName (RFC 4519).
    const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let certs = req.peer_certs()?;
    let cert = x509_cert::Certificate::from_der(certs.first()?.as_ref()).ok()?;
    let cn = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)?;
    match cn.value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(cn.value.value())
                .ok()
                .map(str::to_string)
        }
        _ => None,
    }
}

// ------------------------------------------------------------------ checks

fn describe_keys(key: &[u8], range_end: &[u8]) -> String {
    describe_target(&PermissionTarget::Keys {
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(range_end),
    })
}

impl Node {
    /// Counts an authentication failure by reason and returns the status.
    pub fn auth_failure(&self, reason: &str, status: Status) -> Status {
        self.counters
            .add(&format!("auth_failures_total{{reason=\"{reason}\"}}"), 1);
        status
    }

    /// Who sent `req` and whether `need` allows it. The one check each
    /// handler makes at its top: UNAUTHENTICATED without a valid identity
    /// (auth on), PERMISSION_DENIED, naming the user and what was needed,
    /// when the user's roles do not allow it.
    pub fn authorize<T>(&self, req: &tonic::Request<T>, need: Need<'_>) -> Result<Caller, Status> {
        let state = self.auth.state(&self.reader)?;
        if !state.enabled() {
            return Ok(Caller::Unrestricted);
        }
        let user = match self.identify(&state, req) {
            Ok(Some(user)) => user,
            Ok(None) | Err(_) if matches!(need, Need::Anyone) => return Ok(Caller::Anonymous),
            Ok(None) => {
                return Err(self.auth_failure(
                    "no_credentials",
                    Status::unauthenticated(
                        "authentication is enabled and the request names no user: send a token from Auth.Authenticate in the `token` metadata (utopia --user NAME[:PASSWORD])",
                    ),
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
            Err(self.auth_failure(
                "permission_denied",
                Status::permission_denied(format!("user {:?} may not {what}", user.name)),
            ))
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
            Need::Txn(t) => match txn_denial(&state, user, t) {
                None => Ok(caller),
                Some((access, key, range_end)) => denied(format!(
                    "{} {} in this transaction: it needs {} permission on them",
                    verb(access),
                    describe_keys(&key, &range_end),
                    access.name()
                )),
            },
            Need::LeaseKeys(access, id) => {
                // Every attached key must be permitted: all of them are read
                // (names only, no values).
                let keys = match self
                    .reader
                    .lease(id, usize::MAX)
                    .map_err(status::from_store)?
                {
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
    fn identify<'s, T>(
        &self,
        state: &'s AuthState,
        req: &tonic::Request<T>,
    ) -> Result<Option<&'s UserRecord>, Status> {
        if let Some(token) = token_of(req.metadata()) {
            let token = token.map_err(|e| {
                self.auth_failure(e.reason(), Status::unauthenticated(e.to_string()))
            })?;
            let (name, revision) = verify_token(&state.meta.signing_key, token, crate::now_ms())
                .map_err(|e| {
                    self.auth_failure(e.reason(), Status::unauthenticated(e.to_string()))
                })?;
            return match state.users.get(&name) {
                Some(u) if u.password_revision == revision => Ok(Some(u)),
                _ => Err(self.auth_failure(
                    "stale_token",
                    Status::unauthenticated(format!(
                        "the token of user {name:?} is no longer valid (the user was deleted or its password changed); authenticate again"
                    )),
                )),
            };
        }
        if self.auth.client_cert_required {
            if let Some(name) = certificate_user(req) {
                return match state.users.get(&name) {
                    Some(u) => Ok(Some(u)),
                    None => Err(self.auth_failure(
                        "unknown_certificate_user",
                        Status::unauthenticated(format!(
                            "the client certificate names user {name:?} (its common name), who does not exist"
                        )),
                    )),
                };
            }
        }
        Ok(None)
    }
}

/// The token in the metadata, if any: `Err` when it is not ASCII.
fn token_of(md: &MetadataMap) -> Option<Result<&str, TokenError>> {
    md.get(TOKEN_METADATA_KEY)
        .map(|v| v.to_str().map_err(|_| TokenError::Malformed))
}

fn verb(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Write => "write",
        Access::ReadWrite => "read and write",
    }
}

/// The first part of a transaction the user may not do: its access, key
/// and range end.
fn txn_denial(
    state: &AuthState,
    user: &UserRecord,
    t: &pb::TxnRequest,
) -> Option<(Access, Vec<u8>, Vec<u8>)> {
    use pb::request_op::Request as Op;
    let mut needs: Vec<(Access, &[u8], &[u8])> = t
        .compare
        .iter()
        .map(|c| (Access::Read, c.key.as_slice(), c.range_end.as_slice()))
        .collect();
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => needs.push((Access::Read, &r.key[..], &r.range_end[..])),
            Some(Op::RequestPut(p)) => needs.push((Access::Write, &p.key[..], &[][..])),
            Some(Op::RequestDeleteRange(d)) => {
                needs.push((Access::Write, &d.key[..], &d.range_end[..]))
            }
            None => {}
        }
    }
    needs
        .into_iter()
        .find(|(a, k, e)| !state.permits_keys(user, *a, k, e))
        .map(|(a, k, e)| (a, k.to_vec(), e.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [3u8; 32];

    #[test]
    fn tokens_round_trip_and_expire() {
        let t = issue_token(&KEY, "alice.x", 7, 10_000).unwrap();
        assert_eq!(verify_token(&KEY, &t, 9_999), Ok(("alice.x".into(), 7)));
        assert_eq!(verify_token(&KEY, &t, 10_000), Err(TokenError::Expired(0)));
        assert_eq!(
            verify_token(&[4u8; 32], &t, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn forged_and_garbled_tokens_are_refused() {
        let t = issue_token(&KEY, "bob", 1, 10_000).unwrap();
        // Someone else's name, a later expiry, or another revision under
        // the same MAC.
        let other = t.replacen(&hex(b"bob"), &hex(b"root"), 1);
        assert_eq!(verify_token(&KEY, &other, 0), Err(TokenError::BadSignature));
        let later = t.replacen(".10000.", ".99999.", 1);
        assert_eq!(verify_token(&KEY, &later, 0), Err(TokenError::BadSignature));
        for bad in [
            "",
            "garbage",
            "utopia1.zz.1.2.00",
            "utopia2.626f62.1.10000.00",
            &"x".repeat(TOKEN_BYTES_MAX + 1),
            &format!("{t}.extra"),
        ] {
            assert!(verify_token(&KEY, bad, 0).is_err(), "{bad:?}");
        }
        // A key of the wrong length signs nothing.
        assert!(issue_token(&[1u8; 3], "bob", 1, 1).is_none());
    }

    #[test]
    fn passwords_hash_with_a_salt_and_verify() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert_ne!(a, b, "random salts");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert!(verify_password(&a, "s3cret"));
        assert!(!verify_password(&a, "s3cret "));
        assert!(!verify_password("not a hash", "s3cret"));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(b"\x00a\xff")), Some(b"\x00a\xff".to_vec()));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}

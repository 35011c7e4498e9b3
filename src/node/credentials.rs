//! Credentials: passwords hashed with argon2id, and the stateless tokens a
//! member issues after a password check.
//!
//! Tokens are stateless so that they work on every member: user, the
//! user's password revision, expiry, and a keyed blake3 MAC with the
//! cluster's signing key (drawn when auth was enabled and replicated in
//! that event). A new password, a deleted user, or a restart of auth with
//! a new key voids the tokens issued before.

use utopia_raft::event::Bytes;

/// Longest token accepted, in bytes (a real one is about 120 plus twice the
/// user name's length).
const TOKEN_BYTES_MAX: usize = 1024;
/// Longest password accepted, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 1024;

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
    /// The label it is counted under in `auth_failures_total`.
    pub fn reason(&self) -> &'static str {
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

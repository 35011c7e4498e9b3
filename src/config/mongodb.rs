//! The `mongodb` group of `utopiad.conf`: the MongoDB mirror (cargo
//! feature `mongodb`, `src/adapters/mongo/`). The settings exist in every
//! build; `enabled = true` in a build without the feature is refused by
//! [`super::Settings::validate`]. Which servers are mirrored into is not
//! a setting: it is the `db_servers` collection (`utopia db add`).

use serde::{de, Deserialize, Deserializer, Serialize};

use super::limits::DURATION_MS_MAX;
use super::rules::{In, Positive};

/// Most documents one bulk write may carry.
pub const BATCH_DOCS_MAX_LIMIT: u64 = 100_000;
/// Largest `batch_bytes_max`: 32 MiB, under MongoDB's 48 MB message.
pub const BATCH_BYTES_MAX_LIMIT: u64 = 32 * 1024 * 1024;
/// Longest `uri_options`.
pub const URI_OPTIONS_BYTES_MAX: usize = 1024;

/// Everything under `mongodb = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoSettings {
    /// Run the mirror on this member while it leads.
    pub enabled: bool,
    /// The database the collections are written into.
    #[serde(deserialize_with = "database_name")]
    pub database: String,
    /// Also mirror the key-value pairs (collection `kv`).
    pub mirror_kv: bool,
    /// Most documents in one bulk write.
    #[serde(deserialize_with = "In::<1, BATCH_DOCS_MAX_LIMIT>::de")]
    pub batch_docs_max: u64,
    /// Most document bytes in one bulk write (a larger document goes
    /// alone).
    #[serde(deserialize_with = "In::<1024, BATCH_BYTES_MAX_LIMIT>::de")]
    pub batch_bytes_max: u64,
    /// Documents read back and compared after each batch (accepted XML
    /// configurations always), and audited per idle round.
    #[serde(deserialize_with = "In::<0, 10_000>::de")]
    pub verify_sample_docs: u64,
    /// Write-and-verify attempts of one batch before the server is marked
    /// problematic.
    #[serde(deserialize_with = "In::<1, 100>::de")]
    pub verify_attempts_max: u32,
    /// Wait after a failed write or verification, in milliseconds;
    /// doubles per attempt up to [`RETRY_BACKOFF_MS_CAP`].
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub retry_backoff_ms: u64,
    /// How often a caught-up mirror looks for new entries, in milliseconds.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub poll_interval_ms: u64,
    /// Connect, server selection and socket timeout, in milliseconds.
    #[serde(deserialize_with = "In::<100, 600_000>::de")]
    pub timeout_ms: u64,
    /// Extra options appended to the connection string
    /// (`mongodb://HOST:PORT/?directConnection=true&...`), e.g.
    /// `tls=true`.
    #[serde(deserialize_with = "uri_options")]
    pub uri_options: String,
}

/// The longest wait between two attempts.
pub const RETRY_BACKOFF_MS_CAP: u64 = 30_000;

impl Default for MongoSettings {
    fn default() -> Self {
        MongoSettings {
            enabled: false,
            database: "utopia".to_string(),
            mirror_kv: false,
            batch_docs_max: 500,
            batch_bytes_max: 8 * 1024 * 1024,
            verify_sample_docs: 16,
            verify_attempts_max: 3,
            retry_backoff_ms: 500,
            poll_interval_ms: 200,
            timeout_ms: 10_000,
            uri_options: String::new(),
        }
    }
}

/// A MongoDB database name: 1..=63 bytes, none of `/\. "$` or NUL.
fn database_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() || name.len() > 63 {
        return Err(de::Error::custom(format_args!(
            "a MongoDB database name is 1 to 63 bytes, found {}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| "/\\. \"$\0".contains(*c)) {
        return Err(de::Error::custom(format_args!(
            "{name:?}: a MongoDB database name may not contain {c:?}"
        )));
    }
    Ok(name)
}

/// Connection string options: `name=value` pairs joined by `&`, bounded.
fn uri_options<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() > URI_OPTIONS_BYTES_MAX {
        return Err(de::Error::custom(format_args!(
            "at most {URI_OPTIONS_BYTES_MAX} bytes, found {}",
            text.len()
        )));
    }
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let ok = part
            .split_once('=')
            .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty());
        if !ok || part.contains(['/', '?', '@', '#', ' ']) {
            return Err(de::Error::custom(format_args!(
                "{part:?} is not a connection string option NAME=VALUE"
            )));
        }
    }
    Ok(text)
}

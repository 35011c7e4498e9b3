//! The `configs` group of `utopiad.conf`: XML configuration sync (seed
//! 000) — the directory a member watches and writes accepted files into,
//! its weight in agreements, and the bounds of reading, voting and writing.

use std::path::PathBuf;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::limits::DURATION_MS_MAX;
use super::rules::{In, Positive};

/// Largest `file_bytes_max`: 64 MiB.
pub const FILE_BYTES_MAX_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest agreement window: 10 minutes.
pub const AGREEMENT_WINDOW_MS_MAX: u64 = 600_000;
/// The weight bounds, in thousandths (0.001 to 1000).
pub const WEIGHT_MILLI_MIN: u32 = 1;
pub const WEIGHT_MILLI_MAX: u32 = 1_000_000;

/// Everything under `configs = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigsSettings {
    /// The directory of configuration files this member watches and writes
    /// accepted versions into. Empty: none (votes come only from `utopia
    /// config upload`, and accepted files are not written here).
    pub dir: PathBuf,
    /// How often the directory is scanned in full, besides change
    /// notifications, in milliseconds.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub scan_interval_ms: u64,
    /// How long votes for one version are collected after the first, in
    /// milliseconds.
    #[serde(deserialize_with = "In::<0, AGREEMENT_WINDOW_MS_MAX>::de")]
    pub agreement_window_ms: u64,
    /// This member's configuration weight (0.001 to 1000): of competing
    /// contents for one version, the one whose voters weigh most wins.
    #[serde(
        rename = "weight",
        deserialize_with = "weight_milli",
        serialize_with = "weight_text"
    )]
    pub weight_milli: u32,
    /// The largest configuration file read, in bytes.
    #[serde(deserialize_with = "Positive::<FILE_BYTES_MAX_LIMIT>::de")]
    pub file_bytes_max: u64,
    /// Attempts to write and verify an accepted file before this member
    /// marks itself failing for its class.
    #[serde(deserialize_with = "In::<1, 100>::de")]
    pub write_attempts_max: u32,
    /// Wait after the first failed attempt, in milliseconds; doubles per
    /// attempt.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub write_backoff_ms: u64,
    /// Refuse device data and commands of classes with no accepted
    /// configuration (false: such classes stay untyped). Replicated by the
    /// leader, so every member applies the same rule.
    pub require_class: bool,
}

impl Default for ConfigsSettings {
    fn default() -> Self {
        ConfigsSettings {
            dir: PathBuf::new(),
            scan_interval_ms: 5_000,
            agreement_window_ms: 2_000,
            weight_milli: 1_000,
            // A version's document holds the file, and competing contents
            // while it is undecided: well inside `document_bytes_max`.
            file_bytes_max: 256 * 1024,
            write_attempts_max: 5,
            write_backoff_ms: 100,
            require_class: false,
        }
    }
}

/// A weight from 0.001 to 1000 (an integer or a float), in thousandths.
fn weight_milli<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let w = f64::deserialize(d)?;
    let milli = (w * 1000.0).round();
    if !w.is_finite() || milli < f64::from(WEIGHT_MILLI_MIN) || milli > f64::from(WEIGHT_MILLI_MAX)
    {
        return Err(de::Error::custom(format_args!(
            "must be between 0.001 and 1000, found {w}"
        )));
    }
    // In range, so the conversion is exact.
    Ok(milli as u32)
}

fn weight_text<S: Serializer>(milli: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(f64::from(*milli) / 1000.0)
}

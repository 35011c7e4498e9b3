//! The `backups` group of `utopiad.conf`: backups the leader takes on a
//! schedule.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::rules::In;

/// Longest interval between scheduled backups: a week.
pub const INTERVAL_S_MAX: u64 = 7 * 86_400;

/// Everything under `backups = { ... }`. Off while `interval_s` is 0.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Seconds between backups (0: none are taken).
    #[serde(deserialize_with = "In::<0, INTERVAL_S_MAX>::de")]
    pub interval_s: u64,
    /// Where they are written (empty: `<data_dir>/backups`).
    pub dir: PathBuf,
    /// How many are kept; older ones are removed after each new one.
    #[serde(deserialize_with = "In::<1, 10_000>::de")]
    pub retention_count: u32,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            interval_s: 0,
            dir: PathBuf::new(),
            retention_count: 7,
        }
    }
}

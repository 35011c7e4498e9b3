//! Scheduled backups (`backups` in `utopiad.conf`): while this member
//! leads, every `interval_s` it writes a backup of its state machine
//! ([`utopia_storage::backup`]) as
//! `utopia-<cluster id>-r<revision>-<UTC time>.utopia`, checked before it
//! gets its name, and removes the oldest beyond `retention_count`.
//! Failures are logged and counted; the next interval tries again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use utopia_storage::backup::{self, Producer};

use super::Node;

const PREFIX: &str = "utopia-";
const SUFFIX: &str = ".utopia";

/// Runs until the server stops it.
pub async fn run(node: Arc<Node>, dir: PathBuf) {
    let interval = Duration::from_secs(node.backups.interval_s);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if node.raft.status().leader != Some(node.raft.id()) {
            continue;
        }
        let (n, d) = (node.clone(), dir.clone());
        let taken = tokio::task::spawn_blocking(move || take(&n, &d)).await;
        match taken {
            Ok(Ok(file)) => {
                node.metrics.backups_taken.inc();
                tracing::info!(file = %file.display(), "backup taken");
            }
            Ok(Err(e)) => {
                node.metrics.backups_failed.inc();
                tracing::warn!(dir = %dir.display(), error = %e, "scheduled backup failed");
            }
            Err(e) => {
                node.metrics.backups_failed.inc();
                tracing::error!(error = %e, "scheduled backup task failed");
            }
        }
    }
}

/// Takes one backup into `dir` and prunes the old ones; the new file.
fn take(node: &Node, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let now = crate::now_ms();
    let cluster_id = node.peers.cluster().get();
    let mut stream = node
        .reader
        .backup(Producer {
            cluster_id,
            node_id: node.raft.id(),
            created_ms: now,
            utopia_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .map_err(|e| e.to_string())?;
    let revision = stream.manifest().revision;
    let file = dir.join(file_name(cluster_id, revision, now));
    let status = backup::write_file(&mut stream, &file).map_err(|e| e.to_string())?;
    node.metrics
        .backup_last_revision
        .set(status.manifest.revision.max(0));
    node.metrics
        .backup_last_bytes
        .set(i64::try_from(status.bytes).unwrap_or(i64::MAX));
    prune(dir, node.backups.retention_count as usize);
    Ok(file)
}

/// `utopia-<cluster>-r<revision>-<YYYYMMDDTHHMMSSZ>.utopia`; names sort
/// by revision, then time.
fn file_name(cluster_id: u64, revision: i64, at_ms: u64) -> String {
    format!(
        "{PREFIX}{cluster_id:016x}-r{revision:012}-{}{SUFFIX}",
        utc_stamp(at_ms)
    )
}

/// Removes the oldest backups in `dir` (by name) beyond `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        if let Err(e) = std::fs::remove_file(dir.join(name)) {
            tracing::warn!(file = name, error = %e, "remove an old backup");
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` of a time in ms since the epoch (UTC).
fn utc_stamp(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(utc_stamp(1_709_251_199_000), "20240229T235959Z");
        // 2026-12-01T16:08:34Z.
        assert_eq!(utc_stamp(1_796_141_314_000), "20261201T160834Z");
    }

    #[test]
    fn names_sort_by_revision_and_pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for (rev, at) in [(9, 3_000), (10, 1_000), (100, 2_000)] {
            std::fs::write(dir.path().join(file_name(1, rev, at)), b"x").unwrap();
        }
        std::fs::write(dir.path().join("other.utopia"), b"x").unwrap();
        prune(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "other.utopia",
                &file_name(1, 10, 1_000),
                &file_name(1, 100, 2_000)
            ]
        );
    }
}

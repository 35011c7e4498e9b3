//! `utopia snapshot save|status|restore`: backups of a member's state
//! ([`utopia_storage::backup`]). `save` streams one from a server
//! (Maintenance.Snapshot); `status` and `restore` need no server.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use utopia_proto::v1 as pb;
use utopia_storage::backup::{self, BackupError};
use utopia_storage::NodeIdentity;

use super::client::{self, Client};
use super::output::Printer;
use super::CliError;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent backup of a member's state (from the first
    /// endpoint that answers) into FILE: written to FILE.part, synced,
    /// checked, then renamed. Root only when auth is on.
    Save {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Check a backup file end to end and show what it holds (revision,
    /// log position, keys, documents per collection, size, checksum); needs
    /// no server. Exit 1 for a damaged, truncated or newer-format file.
    Status {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Prepare a member of a new cluster from a backup; needs no server.
    /// Run it for every member, with the same --initial-cluster, then start
    /// each with its --data-dir and --node-id.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The new member's data directory (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The new member's node id.
    #[arg(long, value_name = "N")]
    pub node_id: u64,
    /// The new cluster's members by peer address, ID=HOST:PORT,... (empty:
    /// a one-member cluster of this node).
    #[arg(long, value_name = "MEMBERS", default_value = "")]
    pub initial_cluster: String,
    /// Replace a data directory that is not empty.
    #[arg(long)]
    pub force: bool,
}

pub async fn save(client: &mut Client, out: &mut Printer, file: &Path) -> Result<(), CliError> {
    let part = backup::part_path(file);
    let result = save_to(client, &part).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    let (received, revision) = result?;
    let status = backup::publish(&part, file).map_err(invalid)?;
    if out.json {
        out.json_line(&status)?;
    } else {
        out.line(format!(
            "saved {}: revision {revision}, log index {}, {received} bytes, blake3 {}",
            file.display(),
            status.manifest.last_log_index,
            status.blake3
        ))?;
    }
    Ok(())
}

/// Streams a backup into `part`, synced; the bytes and revision.
async fn save_to(client: &mut Client, part: &Path) -> Result<(u64, i64), CliError> {
    let mut stream = client
        .call(|ch| async move {
            client::maintenance(ch)
                .snapshot(pb::SnapshotRequest {})
                .await
        })
        .await?;
    let mut out =
        std::fs::File::create(part).map_err(|e| io(format!("create {}", part.display()), e))?;
    let bar = progress(None);
    let (mut received, mut revision) = (0u64, 0i64);
    while let Some(msg) = stream.message().await.map_err(CliError::Rpc)? {
        if received == 0 {
            revision = msg.revision;
        }
        out.write_all(&msg.blob)
            .map_err(|e| io(format!("write {}", part.display()), e))?;
        received += msg.blob.len() as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    out.sync_all()
        .map_err(|e| io(format!("sync {}", part.display()), e))?;
    Ok((received, revision))
}

/// `status`'s answer with `--output json` is [`BackupStatus`].
pub fn status(out: &mut Printer, file: &Path) -> Result<(), CliError> {
    let s = backup::inspect(file).map_err(invalid)?;
    if out.json {
        return Ok(out.json_line(&s)?);
    }
    let m = &s.manifest;
    let documents: Vec<String> = s
        .documents
        .iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    for line in [
        format!("file:           {}", file.display()),
        "checksum:       ok".to_string(),
        format!("blake3:         {}", s.blake3),
        format!("size:           {} bytes", s.bytes),
        format!("format:         {}", m.format),
        format!("cluster id:     {:016x}", m.cluster_id),
        format!(
            "taken from:     node {} (utopia {})",
            m.node_id, m.utopia_version
        ),
        format!("taken at:       {} ms since the epoch", m.created_ms),
        format!(
            "revision:       {} (compacted up to {})",
            m.revision, m.compact_revision
        ),
        format!(
            "log position:   index {}, term {}",
            m.last_log_index, m.last_log_term
        ),
        format!("records:        {}", s.records),
        format!("keys:           {}", s.keys),
        format!("leases:         {}", s.leases),
        format!("documents:      {}", documents.join(" ")),
    ] {
        out.line(line)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct RestoredJson {
    data_dir: String,
    node_id: u64,
    cluster_id: String,
    revision: i64,
    records: u64,
}

pub fn restore(out: &mut Printer, a: &RestoreArgs) -> Result<(), CliError> {
    let members = crate::config::parse_initial_cluster(&a.initial_cluster)
        .map_err(|e| CliError::Usage(format!("--initial-cluster: {e}")))?;
    if !members.is_empty() && !members.contains_key(&a.node_id) {
        return Err(CliError::Usage(format!(
            "--node-id {} is not in --initial-cluster",
            a.node_id
        )));
    }
    // Checked before the directory is touched.
    let status = backup::inspect(&a.file).map_err(invalid)?;
    prepare_dir(&a.data_dir, a.force)?;
    let store = utopia_storage::open(&a.data_dir)
        .map_err(|e| CliError::Invalid(format!("open {}: {e}", a.data_dir.display())))?;
    let bar = progress(Some(status.bytes));
    let restored = backup::restore(&a.file, &store.db, |n| bar.set_position(n)).map_err(invalid)?;
    bar.finish_and_clear();
    let cluster_id = restored_cluster_id(&status.blake3, a.node_id, &members);
    store
        .db
        .set_identity(&NodeIdentity {
            node_id: a.node_id,
            initial_cluster: members,
            cluster_id,
        })
        .map_err(|e| CliError::Invalid(format!("record the member's identity: {e}")))?;
    drop(store);
    if out.json {
        return Ok(out.json_line(&RestoredJson {
            data_dir: a.data_dir.display().to_string(),
            node_id: a.node_id,
            cluster_id: format!("{cluster_id:016x}"),
            revision: restored.manifest.revision,
            records: restored.records,
        })?);
    }
    Ok(out.line(format!(
        "restored revision {} ({} records) into {} as node {} of new cluster {cluster_id:016x}; \
         start it with: utopiad --data-dir {} --node-id {}",
        restored.manifest.revision,
        restored.records,
        a.data_dir.display(),
        a.node_id,
        a.data_dir.display(),
        a.node_id
    ))?)
}

/// The new cluster's id: the same for every member restored from the same
/// backup with the same members, and unlike the source cluster's.
fn restored_cluster_id(backup_hash: &str, node_id: u64, members: &BTreeMap<u64, String>) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"utopia restored cluster id v1\0");
    h.update(backup_hash.as_bytes());
    if members.is_empty() {
        h.update(format!("\0{node_id}").as_bytes());
    }
    for (id, addr) in members {
        h.update(format!("\0{id}={addr}").as_bytes());
    }
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes")).max(1)
}

/// Refuses a data directory that holds anything, unless `force` (which
/// removes it).
fn prepare_dir(dir: &Path, force: bool) -> Result<(), CliError> {
    let used = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(format!("read {}", dir.display()), e)),
    };
    if used && !force {
        return Err(CliError::Usage(format!(
            "data directory {} is not empty; give --force to replace it",
            dir.display()
        )));
    }
    if used {
        std::fs::remove_dir_all(dir).map_err(|e| io(format!("remove {}", dir.display()), e))?;
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal (bytes, rate, and with a
/// known total its ETA); hidden otherwise.
fn progress(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::new(n),
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn invalid(e: BackupError) -> CliError {
    match e {
        BackupError::Io(m) => CliError::Usage(m),
        other => CliError::Invalid(other.to_string()),
    }
}

fn io(what: String, e: std::io::Error) -> CliError {
    CliError::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

//! Installing a snapshot from the leader: kept durably, verified, then
//! written over the cleared state machine in bounded batches, with a
//! marker that a crash part way through leaves behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;
use utopia_raft::SnapshotData;

use super::{decode_meta, CurrentSnapshot, StateMachine};
use crate::apply::StateRead;
use crate::codec;
use crate::keys::{meta, mirror_feed, Cf};
use crate::snapshot::{SnapshotMeta, SnapshotReader};
use crate::StoreError;

impl StateMachine {
    /// The file a snapshot being installed is kept in until the install is
    /// complete.
    pub(super) fn installing_path(&self) -> PathBuf {
        self.snapshot_dir.join(INSTALLING_FILE)
    }

    /// Installs a snapshot in bounded memory: the state machine is cleared
    /// with range deletions, then the records are written in batches of at
    /// most [`INSTALL_BATCH_BYTES`], then the applied log id and membership.
    ///
    /// A crash in between leaves a partly written state machine, marked as
    /// such ([`meta::INSTALLING`]) and never read: the snapshot's file is
    /// kept until the install is complete, and after a restart the state
    /// machine reports nothing applied and offers that file as its current
    /// snapshot, which Raft installs again before anything else. The file's
    /// checksum is verified before anything is cleared.
    pub(super) fn install(
        &self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), StoreError> {
        let path = self.installing_path();
        self.keep_snapshot_file(data, &path)?;
        let label = path.as_path();
        verify(&path, meta)?;

        self.db.set_installing(true);
        self.keys().clear();
        self.docs().clear();
        let mut batch = WriteBatch::default();
        for cf in Cf::STATE_MACHINE {
            self.clear_cf(&mut batch, cf)?;
        }
        batch.put_cf(
            self.db.cf(Cf::SmMeta),
            meta::INSTALLING,
            codec::encode(meta),
        );
        self.write_synced(batch)?;

        let file = std::fs::File::open(&path)
            .map_err(|e| StoreError::Io(format!("open {}: {e}", path.display())))?;
        let mut reader = SnapshotReader::open(file, label)?;
        let mut batch = WriteBatch::default();
        let mut records = 0u64;
        while let Some((cf_name, k, v)) = reader.next_entry()? {
            let cf = Cf::from_name(&cf_name)
                .filter(|cf| Cf::STATE_MACHINE.contains(cf))
                .ok_or_else(|| {
                    StoreError::Io(format!("snapshot names unknown column family {cf_name:?}"))
                })?;
            batch.put_cf(self.db.cf(cf), &k, &v);
            records += 1;
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                self.db
                    .db
                    .write(std::mem::take(&mut batch))
                    .map_err(StoreError::from)?;
            }
        }
        batch.put_cf(
            self.db.cf(Cf::SmMeta),
            meta::APPLIED,
            codec::encode(&meta.last_log_id),
        );
        batch.put_cf(
            self.db.cf(Cf::SmMeta),
            meta::MEMBERSHIP,
            codec::encode(&meta.last_membership),
        );
        batch.delete_cf(self.db.cf(Cf::SmMeta), meta::INSTALLING);
        // The mirror feed knows nothing of what the snapshot brought: it
        // starts again after it (a mirror further behind copies whole). A
        // member without the feed has none to restart.
        let feed_start = meta.last_log_id.map_or(0, |l| l.index() + 1);
        if self.mirror_feed_start.is_some() {
            self.clear_cf(&mut batch, Cf::MirrorFeed)?;
            batch.put_cf(
                self.db.cf(Cf::MirrorFeed),
                mirror_feed::START,
                feed_start.to_be_bytes(),
            );
        }
        // Synced: it makes the install's batches before it durable too (they
        // went through the WAL, unlike applied batches).
        self.write_synced(batch)?;
        if let Some(start) = &self.mirror_feed_start {
            start.store(feed_start, Ordering::Release);
        }
        self.db.set_installing(false);
        self.auth_generation.fetch_add(1, Ordering::AcqRel);
        self.alarms_generation.fetch_add(1, Ordering::AcqRel);
        let _ = std::fs::remove_file(&path);
        // Nothing is applied between the write and this view: installing
        // and applying both run on openraft's state-machine task.
        if let Some(snap) = CurrentSnapshot::of(self.db.view())? {
            *self.current() = Some(snap);
        }
        tracing::info!(
            last_log_index = meta.last_log_id.map_or(0, |l| l.index()),
            records,
            "installed snapshot"
        );
        Ok(())
    }

    /// Puts the snapshot's bytes at `path`, durably: a received file is
    /// renamed there, any other stream is copied.
    fn keep_snapshot_file(&self, mut data: SnapshotData, path: &Path) -> Result<(), StoreError> {
        let io = |what: &str, e: std::io::Error| {
            StoreError::Io(format!("{what} {}: {e}", path.display()))
        };
        match data.file().map(Path::to_path_buf) {
            Some(file) if file == path => {}
            Some(file) => {
                std::fs::rename(&file, path).map_err(|e| io("move the snapshot to", e))?
            }
            None => {
                let mut out = std::fs::File::create(path).map_err(|e| io("create", e))?;
                std::io::copy(&mut data, &mut out).map_err(|e| io("write", e))?;
                out.sync_all().map_err(|e| io("sync", e))?;
            }
        }
        std::fs::File::open(&self.snapshot_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))
    }

    /// Adds to `batch` the deletion of every key of `cf`, as one range.
    fn clear_cf(&self, batch: &mut WriteBatch, cf: Cf) -> Result<(), StoreError> {
        let mut it = self.db.db.raw_iterator_cf(self.db.cf(cf));
        it.seek_to_last();
        it.status()?;
        if let Some(last) = it.key() {
            let mut end = last.to_vec();
            end.push(0);
            batch.delete_range_cf(self.db.cf(cf), Vec::<u8>::new(), end);
        }
        Ok(())
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.db.write_opt(batch, &opts)?)
    }

    /// The snapshot whose install a crash cut short, if one was.
    pub(super) fn interrupted_install(&self) -> Result<Option<SnapshotMeta>, StoreError> {
        decode_meta(meta::INSTALLING, self.db.get(Cf::SmMeta, meta::INSTALLING)?)
    }
}

/// Reads the whole snapshot at `path` once, checking its checksum and that
/// it holds the state `meta` says, before anything of it is installed.
fn verify(path: &Path, meta: &SnapshotMeta) -> Result<(), StoreError> {
    let file = std::fs::File::open(path)
        .map_err(|e| StoreError::Io(format!("open {}: {e}", path.display())))?;
    let mut reader = SnapshotReader::open(file, path)?;
    if reader.meta.last_log_id != meta.last_log_id {
        return Err(StoreError::Io(format!(
            "snapshot holds the state at {:?}, but was sent as the state at {:?}",
            reader.meta.last_log_id, meta.last_log_id
        )));
    }
    while reader.next_entry()?.is_some() {}
    Ok(())
}

/// The file name, in the snapshot directory, of a snapshot being installed.
const INSTALLING_FILE: &str = "installing.snapshot";

/// Largest write batch while installing a snapshot: memory stays bounded
/// whatever the size of the store.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

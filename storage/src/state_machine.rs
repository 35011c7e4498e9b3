//! The state machine: openraft's `RaftStateMachine` on RocksDB.
//!
//! A batch of committed entries is applied by one [`Applier`] and written in
//! one RocksDB write batch together with the applied log id and membership,
//! so the applied position and the state it describes never disagree. After
//! the write, the batch's key changes are broadcast to watchers, and only
//! then are the clients answered.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use rocksdb::WriteBatch;
use tokio::sync::broadcast;
use utopia_raft::event;
use utopia_raft::openraft_api::{
    EntryPayload, EntryResponder, LogIdOf, OptionalSend, RaftEntry, RaftSnapshotBuilder,
    RaftStateMachine, SnapshotOf, StoredMembershipOf,
};
use utopia_raft::{Response, TypeConfig};

use crate::apply::IngestEffects;
use crate::apply::{Applier, StateRead};
use crate::keys::{self, meta, Cf};
use crate::read::WatchBatch;
use crate::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use crate::{Db, StoreError};

/// Batches of changes buffered for slow watchers before they must catch up
/// from disk.
pub const WATCH_BROADCAST_BATCHES_MAX: usize = 1024;
/// Applied batches' ingest effects buffered for the MQTT bridges; one that
/// falls further behind resynchronises from the store.
pub const INGEST_BROADCAST_BATCHES_MAX: usize = 4096;

#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    snapshot_dir: PathBuf,
    changes: broadcast::Sender<Arc<WatchBatch>>,
    ingest: broadcast::Sender<Arc<IngestEffects>>,
}

/// The feeds a state machine publishes to: key changes for watchers, and
/// ingest effects for the MQTT bridges.
pub(crate) type Feeds = (
    broadcast::Sender<Arc<WatchBatch>>,
    broadcast::Sender<Arc<IngestEffects>>,
);

type Applied = (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>);

impl StateMachine {
    pub(crate) fn new(db: Db, snapshot_dir: PathBuf) -> Result<(Self, Feeds), StoreError> {
        let (changes, _) = broadcast::channel(WATCH_BROADCAST_BATCHES_MAX);
        let (ingest, _) = broadcast::channel(INGEST_BROADCAST_BATCHES_MAX);
        // Leftovers of a snapshot that was being written when the process
        // died are never valid; remove them.
        if let Ok(dir) = std::fs::read_dir(&snapshot_dir) {
            for entry in dir.flatten() {
                if entry.path().extension().is_some_and(|e| e == "tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok((
            Self {
                db,
                snapshot_dir,
                changes: changes.clone(),
                ingest: ingest.clone(),
            },
            (changes, ingest),
        ))
    }

    fn read_applied(&self) -> Result<Applied, StoreError> {
        let read = |key: &[u8]| self.db.get(Cf::SmMeta, key);
        let applied = decode_meta(meta::APPLIED, read(meta::APPLIED)?)?.flatten();
        let membership =
            decode_meta(meta::MEMBERSHIP, read(meta::MEMBERSHIP)?)?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn snapshot_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let (term, index) = meta
            .last_log_id
            .as_ref()
            .map_or((0, 0), |l| (l.committed_leader_id().term, l.index()));
        self.snapshot_dir
            .join(format!("snapshot-{term:020}-{index:020}.snap"))
    }

    /// The newest snapshot file, if any.
    fn latest_snapshot_file(&self) -> Option<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.snapshot_dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .collect();
        files.sort();
        files.pop()
    }

    fn remove_snapshots_except(&self, keep: &std::path::Path) {
        if let Ok(dir) = std::fs::read_dir(&self.snapshot_dir) {
            for entry in dir.flatten() {
                let p = entry.path();
                if p != keep && p.extension().is_some_and(|e| e == "snap") {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    fn build(&self) -> Result<(SnapshotMeta, PathBuf), StoreError> {
        let started = std::time::Instant::now();
        let snap = self.db.db.snapshot();
        let read = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(snap.get_cf(self.db.cf(Cf::SmMeta), key)?)
        };
        let last_log_id = decode_meta(meta::APPLIED, read(meta::APPLIED)?)?.flatten();
        let last_membership =
            decode_meta(meta::MEMBERSHIP, read(meta::MEMBERSHIP)?)?.unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let path = self.snapshot_path(&meta);
        let mut w = SnapshotWriter::create(path, &meta)?;
        // The change feed below the compacted revision is deleted: start
        // there rather than step over its tombstones one by one.
        let compacted: i64 =
            decode_meta(meta::COMPACT_REVISION, read(meta::COMPACT_REVISION)?)?.unwrap_or(0);
        let changes_from = keys::change_key(compacted, 0);
        for cf in Cf::STATE_MACHINE {
            let mode = if cf == Cf::KvChanges {
                rocksdb::IteratorMode::From(&changes_from, rocksdb::Direction::Forward)
            } else {
                rocksdb::IteratorMode::Start
            };
            for item in snap.iterator_cf(self.db.cf(cf), mode) {
                let (k, v) = item?;
                w.entry(cf.name(), &k, &v)?;
            }
        }
        let records = w.records();
        let path = w.finish()?;
        self.remove_snapshots_except(&path);
        tracing::info!(
            snapshot = %path.display(),
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built snapshot"
        );
        Ok((meta, path))
    }

    fn install(&self, meta: &SnapshotMeta, file: std::fs::File) -> Result<(), StoreError> {
        let path = self.snapshot_path(meta);
        let mut reader = SnapshotReader::open(file, &path)?;
        // One write batch replaces the whole state machine, so a crash
        // leaves either the old state or the new one.
        let mut batch = WriteBatch::default();
        for cf in Cf::STATE_MACHINE {
            for item in self
                .db
                .db
                .iterator_cf(self.db.cf(cf), rocksdb::IteratorMode::Start)
            {
                let (k, _) = item?;
                batch.delete_cf(self.db.cf(cf), k);
            }
        }
        let mut copy = SnapshotWriter::create(path.clone(), meta)?;
        while let Some((cf_name, k, v)) = reader.next_entry()? {
            let cf = Cf::from_name(&cf_name)
                .filter(|cf| Cf::STATE_MACHINE.contains(cf))
                .ok_or_else(|| {
                    StoreError::Io(format!("snapshot names unknown column family {cf_name:?}"))
                })?;
            batch.put_cf(self.db.cf(cf), &k, &v);
            copy.entry(&cf_name, &k, &v)?;
        }
        let enc_err = |e: event::CodecError| StoreError::Io(e.to_string());
        batch.put_cf(
            self.db.cf(Cf::SmMeta),
            meta::APPLIED,
            event::encode(&meta.last_log_id).map_err(enc_err)?,
        );
        batch.put_cf(
            self.db.cf(Cf::SmMeta),
            meta::MEMBERSHIP,
            event::encode(&meta.last_membership).map_err(enc_err)?,
        );
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.db.write_opt(batch, &opts)?;
        let path = copy.finish()?;
        self.remove_snapshots_except(&path);
        tracing::info!(snapshot = %path.display(), "installed snapshot");
        Ok(())
    }
}

/// Decodes a state-machine meta value read from `key`, if it was there.
fn decode_meta<T: serde::de::DeserializeOwned>(
    key: &[u8],
    raw: Option<Vec<u8>>,
) -> Result<Option<T>, StoreError> {
    raw.map(|b| event::decode(&b).map_err(|e| StoreError::corrupt(Cf::SmMeta, key, e.to_string())))
        .transpose()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = std::fs::File;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, std::fs::File>, io::Error> {
        let sm = self.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || sm.build())
            .await
            .map_err(io::Error::other)??;
        let file = std::fs::File::open(&path)?;
        Ok(SnapshotOf::<TypeConfig, std::fs::File> {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = std::fs::File;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Applied, io::Error> {
        Ok(self.read_applied()?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut applier = Applier::new(&self.db);
        let mut last_applied = None;
        let mut last_membership = None;
        let mut replies: Vec<(_, Response)> = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            last_applied = Some(entry.log_id());
            let response = match &entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => applier.apply(req)?,
                EntryPayload::Membership(m) => {
                    last_membership = Some(StoredMembershipOf::<TypeConfig>::new(
                        Some(entry.log_id()),
                        m.clone(),
                    ));
                    Response::default()
                }
            };
            if let Some(r) = responder {
                replies.push((r, response));
            }
        }
        let (writes, changes, effects) = applier.finish_with_effects();
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in writes {
            match value {
                Some(v) => batch.put_cf(self.db.cf(cf), key, v),
                None => batch.delete_cf(self.db.cf(cf), key),
            }
        }
        if let Some(applied) = &last_applied {
            batch.put_cf(
                self.db.cf(Cf::SmMeta),
                meta::APPLIED,
                event::encode(&Some(*applied)).map_err(io::Error::other)?,
            );
        }
        if let Some(m) = &last_membership {
            batch.put_cf(
                self.db.cf(Cf::SmMeta),
                meta::MEMBERSHIP,
                event::encode(m).map_err(io::Error::other)?,
            );
        }
        // Not synced: the entries are already durable in the log, which
        // shares this WAL; a crash loses at most a suffix that Raft re-applies.
        self.db.db.write(batch).map_err(StoreError::from)?;
        if !changes.is_empty() {
            let revision = changes.last().map_or(0, |c| c.0);
            // No receivers is fine: nobody is watching.
            let _ = self
                .changes
                .send(Arc::new(WatchBatch { revision, changes }));
        }
        if effects != IngestEffects::default() {
            let _ = self.ingest.send(Arc::new(effects));
        }
        for (responder, response) in replies {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: std::fs::File,
    ) -> Result<(), io::Error> {
        let sm = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || sm.install(&meta, snapshot))
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, std::fs::File>>, io::Error> {
        let Some(path) = self.latest_snapshot_file() else {
            return Ok(None);
        };
        let file = std::fs::File::open(&path)?;
        let meta = SnapshotReader::open(file.try_clone()?, &path)?.meta;
        let file = std::fs::File::open(&path)?;
        Ok(Some(SnapshotOf::<TypeConfig, std::fs::File> {
            meta,
            snapshot: file,
        }))
    }
}

//! The state machine: openraft's `RaftStateMachine` on RocksDB.
//!
//! A batch of committed entries is applied by one [`Applier`] and written in
//! one RocksDB write batch together with the applied log id and membership,
//! so the applied position and the state it describes never disagree. After
//! the write, the batch's key changes are broadcast to watchers, and only
//! then are the clients answered. Installing a snapshot from the leader is
//! in `install.rs`.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use rocksdb::WriteBatch;
use tokio::sync::broadcast;
use utopia_raft::openraft_api::{
    EntryPayload, EntryResponder, LogIdOf, OptionalSend, RaftEntry, RaftSnapshotBuilder,
    RaftStateMachine, SnapshotOf, StoredMembershipOf,
};
use utopia_raft::{Response, SnapshotData, TypeConfig};

use crate::apply::IngestEffects;
use crate::apply::{Applier, CarriedDocs, StateRead};
use crate::codec;
use crate::db::DbView;
use crate::key_cache::{CachedState, KeyCache};
use crate::keys::{self, meta, mirror_feed, Cf};
use crate::read::WatchBatch;
use crate::snapshot::{SnapshotEncoder, SnapshotMeta};
use crate::{Db, OpenOptions, StoreError};

mod install;

/// Batches of changes buffered for slow watchers before they must catch up
/// from disk.
pub const WATCH_BROADCAST_BATCHES_MAX: usize = 1024;
/// Applied batches' ingest effects buffered for the MQTT bridges; one that
/// falls further behind resynchronises from the store.
pub const INGEST_BROADCAST_BATCHES_MAX: usize = 4096;

#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    /// Where a snapshot being installed is kept until it is complete.
    snapshot_dir: PathBuf,
    /// The newest snapshot: its metadata and the view it reads from.
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    changes: broadcast::Sender<Arc<WatchBatch>>,
    ingest: broadcast::Sender<Arc<IngestEffects>>,
    /// Bumped after every write that changes `Cf::Auth`, so that the API's
    /// cached auth state knows to reload.
    auth_generation: Arc<AtomicU64>,
    /// Bumped after every write of the alarms record, so that the readers'
    /// cached alarms know to reload.
    alarms_generation: Arc<AtomicU64>,
    /// The mirror feed's start ([`mirror_feed::START`]) when this member
    /// keeps the feed, cached so that applying never reads it; `None`: no
    /// feed is written.
    mirror_feed_start: Option<Arc<AtomicU64>>,
    /// The current keys' revisions and leases, as of the last batch
    /// written ([`crate::key_cache`]). Only applying and installing a
    /// snapshot touch it, both on openraft's state-machine task.
    keys: Arc<Mutex<KeyCache>>,
    /// Device, zone and stats documents as the last batch written left
    /// them, decoded, with the quotas and the first active alarm
    /// ([`CarriedDocs`]); touched as `keys` is.
    docs: Arc<Mutex<CarriedDocs>>,
}

#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    view: Arc<DbView>,
    /// Where its change feed starts (see [`SnapshotEncoder`]).
    changes_from: Vec<u8>,
}

impl CurrentSnapshot {
    /// The snapshot that `view` holds, or `None` if nothing was applied
    /// before it was taken.
    fn of(view: DbView) -> Result<Option<Self>, StoreError> {
        let read = |key: &[u8]| view.get(Cf::SmMeta, key);
        let (Some(last_log_id), last_membership) = read_applied(read)? else {
            return Ok(None);
        };
        let compacted: i64 =
            decode_meta(meta::COMPACT_REVISION, read(meta::COMPACT_REVISION)?)?.unwrap_or(0);
        Ok(Some(Self {
            meta: SnapshotMeta {
                last_log_id: Some(last_log_id),
                last_membership,
            },
            view: Arc::new(view),
            changes_from: keys::change_key(compacted, 0).to_vec(),
        }))
    }

    fn data(&self) -> SnapshotOf<TypeConfig, SnapshotData> {
        SnapshotOf::<TypeConfig, SnapshotData> {
            meta: self.meta.clone(),
            snapshot: SnapshotData::new(SnapshotEncoder::new(
                self.view.clone(),
                self.meta.clone(),
                self.changes_from.clone(),
            )),
        }
    }
}

/// The snapshot stream of `view` and its metadata, or `None` if nothing was
/// applied before the view was taken (for backups).
pub(crate) fn snapshot_of_view(
    view: DbView,
) -> Result<Option<(SnapshotMeta, SnapshotEncoder)>, StoreError> {
    Ok(CurrentSnapshot::of(view)?.map(|c| {
        let encoder = SnapshotEncoder::new(c.view, c.meta.clone(), c.changes_from);
        (c.meta, encoder)
    }))
}

/// The feeds a state machine publishes to: key changes for watchers, and
/// ingest effects for the MQTT bridges.
pub(crate) type Feeds = (
    broadcast::Sender<Arc<WatchBatch>>,
    broadcast::Sender<Arc<IngestEffects>>,
);

type Applied = (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>);

impl StateMachine {
    pub(crate) fn new(
        db: Db,
        snapshot_dir: PathBuf,
        options: &OpenOptions,
    ) -> Result<(Self, Feeds), StoreError> {
        let (changes, _) = broadcast::channel(WATCH_BROADCAST_BATCHES_MAX);
        let (ingest, _) = broadcast::channel(INGEST_BROADCAST_BATCHES_MAX);
        // Snapshots are views of the database, not files: snapshot files
        // left by earlier versions, and temporary files of a write that was
        // cut short, are never read again.
        if let Ok(dir) = std::fs::read_dir(&snapshot_dir) {
            for entry in dir.flatten() {
                if entry
                    .path()
                    .extension()
                    .is_some_and(|e| e == "tmp" || e == "snap")
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        // A crash cut a snapshot install short: until it is installed again,
        // the state machine is not to be read.
        if db.get(Cf::SmMeta, meta::INSTALLING)?.is_some() {
            db.set_installing(true);
        }
        let mirror_feed_start = if options.mirror_feed {
            Some(Arc::new(AtomicU64::new(Self::init_mirror_feed(&db)?)))
        } else {
            Self::drop_mirror_feed(&db)?;
            None
        };
        Ok((
            Self {
                db,
                snapshot_dir,
                current: Arc::new(Mutex::new(None)),
                changes: changes.clone(),
                ingest: ingest.clone(),
                // Starts above the readers' "never loaded" 0.
                auth_generation: Arc::new(AtomicU64::new(1)),
                alarms_generation: Arc::new(AtomicU64::new(1)),
                mirror_feed_start,
                keys: Arc::new(Mutex::new(KeyCache::new(options.key_cache_bytes_max))),
                docs: Arc::default(),
            },
            (changes, ingest),
        ))
    }

    /// The counter [`crate::Reader::auth_generation`] reads.
    pub(crate) fn auth_generation(&self) -> Arc<AtomicU64> {
        self.auth_generation.clone()
    }

    /// The counter the readers' cached alarms are keyed by.
    pub(crate) fn alarms_generation(&self) -> Arc<AtomicU64> {
        self.alarms_generation.clone()
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        // A panic while noting a batch could leave it half updated: a
        // poisoned cache starts again empty.
        self.keys.lock().unwrap_or_else(|p| {
            let mut keys = p.into_inner();
            keys.clear();
            keys
        })
    }

    fn docs(&self) -> std::sync::MutexGuard<'_, CarriedDocs> {
        // A panic while a batch was taken out leaves nothing half updated
        // (the batch holds them meanwhile), but start again empty anyway.
        self.docs.lock().unwrap_or_else(|p| {
            let mut docs = p.into_inner();
            docs.clear();
            docs
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<CurrentSnapshot>> {
        // Nothing panics while holding the lock; a poisoned one still holds
        // a whole value.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `snap` the current snapshot unless a newer one already is (a
    /// snapshot installed from the leader while this one was being built).
    fn set_current(&self, snap: CurrentSnapshot) {
        let mut current = self.current();
        if current
            .as_ref()
            .is_none_or(|c| c.meta.last_log_id <= snap.meta.last_log_id)
        {
            *current = Some(snap);
        }
    }
}

/// The applied log id and membership, read through `read` (the live
/// database or a view of it).
fn read_applied(
    read: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Applied, StoreError> {
    let applied = decode_meta(meta::APPLIED, read(meta::APPLIED)?)?.flatten();
    let membership = decode_meta(meta::MEMBERSHIP, read(meta::MEMBERSHIP)?)?.unwrap_or_default();
    Ok((applied, membership))
}

/// Decodes a state-machine meta value read from `key`, if it was there.
fn decode_meta<T: serde::de::DeserializeOwned>(
    key: &[u8],
    raw: Option<Vec<u8>>,
) -> Result<Option<T>, StoreError> {
    raw.map(|b| codec::decode(Cf::SmMeta, key, &b)).transpose()
}

/// Builds a snapshot from a view taken when openraft asked for the builder,
/// between two applied batches.
pub struct SnapshotBuilder {
    sm: StateMachine,
    view: Option<DbView>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let view = self
            .view
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let Some(snap) = CurrentSnapshot::of(view)? else {
            // Nothing applied yet: an empty state machine.
            return Ok(SnapshotOf::<TypeConfig, SnapshotData> {
                meta: SnapshotMeta::default(),
                snapshot: SnapshotData::new(std::io::empty()),
            });
        };
        tracing::info!(
            last_log_index = snap.meta.last_log_id.map_or(0, |l| l.index()),
            "took snapshot"
        );
        let data = snap.data();
        self.sm.set_current(snap);
        self.sm.db.metrics().built();
        Ok(data)
    }
}

/// Committed entries applied together in one write.
#[derive(Default)]
struct Chunk {
    entries: Vec<EntryResponder<TypeConfig>>,
    /// Events in them (an ingest batch counts its items).
    work: usize,
}

/// Events applied in one write, at most (a chunk ends at the first entry
/// that reaches it).
const APPLY_CHUNK_WORK_MAX: usize = 1024;

/// Events a chunk may hold and still be applied without leaving the
/// runtime's thread (a round of puts from a few hundred clients).
const APPLY_IN_PLACE_WORK_MAX: usize = 512;

/// Log indexes the mirror feed ([`keys::mirror_feed`]) covers behind the
/// applied one; older entries are trimmed, and a mirror further behind
/// copies the collections whole instead.
pub const MIRROR_FEED_LOG_INDEXES_KEPT: u64 = 50_000;
/// The feed is trimmed when the applied index crosses a multiple of this.
const MIRROR_FEED_TRIM_EVERY: u64 = 1024;

/// A write's bytes in a RocksDB write batch beyond its key and value, at
/// most: its type, column family and two lengths.
const BATCH_RECORD_OVERHEAD_BYTES: usize = 16;

/// The bytes a write batch of `writes` takes, about: reserved at once, as a
/// batch grown by doubling copies itself each time (1.2% of all samples
/// under puts).
fn batch_bytes(writes: &crate::apply::Writes, feed: bool) -> usize {
    let records: usize = writes
        .iter()
        .map(|(_, key, value)| {
            let record =
                BATCH_RECORD_OVERHEAD_BYTES + key.len() + value.as_ref().map_or(0, Vec::len);
            // The mirror feed's record of it: the key after the index and
            // target, the time as its value.
            let feed_record = if feed {
                BATCH_RECORD_OVERHEAD_BYTES + key.len() + 32
            } else {
                0
            };
            record + feed_record
        })
        .sum();
    // The batch's header, the applied log id and a membership.
    records + 512
}

impl StateMachine {
    /// Applies a chunk on this thread. A large one is synchronous CPU and
    /// RocksDB work for tens of milliseconds: a multi-threaded runtime is
    /// told to move its other tasks (Raft's core, heartbeats, RPCs)
    /// elsewhere meanwhile. A small one is cheaper to run in place.
    fn apply_off_runtime(&mut self, chunk: Chunk) -> Result<(), io::Error> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread && chunk.work >= APPLY_IN_PLACE_WORK_MAX {
            tokio::task::block_in_place(|| self.apply_chunk(chunk))
        } else {
            self.apply_chunk(chunk)
        }
    }

    fn apply_chunk(&mut self, chunk: Chunk) -> Result<(), io::Error> {
        let started = std::time::Instant::now();
        let mut keys = self.keys();
        let state = CachedState::new(&self.db, &keys);
        // Taken out: a batch that is not written leaves none behind.
        let carried = std::mem::take(&mut *self.docs());
        let mut applier = Applier::new(&state).carrying(carried);
        let mut last_applied = None;
        let mut last_membership = None;
        let mut replies: Vec<(_, Response)> = Vec::new();
        let mut last_at_ms = 0;
        for (entry, responder) in chunk.entries {
            last_applied = Some(entry.log_id());
            let response = match &entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => {
                    let leader = entry.log_id().leader_id;
                    last_at_ms = req.at_ms;
                    applier.apply_entry(leader.term, leader.node_id, req)?
                }
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
        let (writes, changes, effects, carried) = applier.finish_carrying();
        let auth_changed = writes.touches(Cf::Auth);
        let alarms_changed = writes.contains(Cf::SmMeta, meta::ALARMS);
        // The mirror feed, if this member keeps one, records the batch's
        // writes under its last index.
        let feed_index = self
            .mirror_feed_start
            .as_ref()
            .and(last_applied.as_ref().map(|l| l.index()));
        let mut batch = WriteBatch::with_capacity_bytes(batch_bytes(&writes, feed_index.is_some()));
        for ((cf, key), value) in writes {
            if let (Some(index), Some(target)) = (feed_index, mirror_feed::Target::of_cf(cf)) {
                batch.put_cf(
                    self.db.cf(Cf::MirrorFeed),
                    mirror_feed::change_key(index, target, &key),
                    last_at_ms.to_be_bytes(),
                );
            }
            match value {
                Some(v) => batch.put_cf(self.db.cf(cf), key, v),
                None => batch.delete_cf(self.db.cf(cf), key),
            }
        }
        let feed_start = match (&self.mirror_feed_start, feed_index) {
            (Some(start), Some(index)) => {
                self.trim_mirror_feed(&mut batch, start.load(Ordering::Acquire), index)
            }
            _ => None,
        };
        if let Some(applied) = &last_applied {
            batch.put_cf(
                self.db.cf(Cf::SmMeta),
                meta::APPLIED,
                codec::encode(&Some(*applied)),
            );
        }
        if let Some(m) = &last_membership {
            batch.put_cf(self.db.cf(Cf::SmMeta), meta::MEMBERSHIP, codec::encode(m));
        }
        // Without the WAL: the entries are already durable in the log, so
        // the batch need not be written twice. A crash loses what was
        // applied since the last flush (flushes write every column family
        // at once, see `db.rs`), and Raft applies those entries again from
        // the log, which keeps them until they are flushed (`purge`).
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        self.db
            .db
            .write_opt(batch, &opts)
            .map_err(StoreError::from)?;
        *self.docs() = carried;
        self.db.metrics().apply.observe(started.elapsed());
        let (hits, misses) = state.lookups();
        keys.note(&changes);
        self.db.metrics().key_cache(hits, misses, keys.bytes());
        drop(keys);
        if let (Some(start), Some(moved)) = (&self.mirror_feed_start, feed_start) {
            start.store(moved, Ordering::Release);
        }
        if auth_changed {
            // Before the replies: a client told its change is applied is
            // checked against it on this node from then on.
            self.auth_generation.fetch_add(1, Ordering::AcqRel);
        }
        if alarms_changed {
            // Before the replies, as above: a client told its disarm is
            // applied is not refused by this node's cached alarms.
            self.alarms_generation.fetch_add(1, Ordering::AcqRel);
        }
        if !changes.is_empty() {
            let revision = changes.last().map_or(0, |c| c.revision);
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
}

impl StateMachine {
    /// Makes sure the mirror feed says from which index it is complete,
    /// and returns that index: a data directory without a trusted start
    /// (new, written by a build without the feed, or last opened with the
    /// feed off) is complete only after what it has applied.
    fn init_mirror_feed(db: &Db) -> Result<u64, StoreError> {
        let start = read_mirror_feed_start(db)?;
        if start != mirror_feed::START_OFF {
            return Ok(start);
        }
        let (applied, _) = read_applied(|k| db.get(Cf::SmMeta, k))?;
        let start = applied.map_or(0, |l| l.index() + 1);
        Self::reset_mirror_feed(db, start)?;
        Ok(start)
    }

    /// A member opened without the feed: drops whatever feed an earlier
    /// start kept and marks it [`mirror_feed::START_OFF`], so that no
    /// mirror resumes from it, and turning the feed on again starts it
    /// after what is applied then.
    fn drop_mirror_feed(db: &Db) -> Result<(), StoreError> {
        let off = mirror_feed::START_OFF.to_be_bytes();
        if db.get(Cf::MirrorFeed, mirror_feed::START)?.as_deref() == Some(off.as_slice()) {
            return Ok(());
        }
        Self::reset_mirror_feed(db, mirror_feed::START_OFF)
    }

    /// Deletes every entry of the feed and sets its start, in one write.
    fn reset_mirror_feed(db: &Db, start: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            db.cf(Cf::MirrorFeed),
            [mirror_feed::CHANGE_PREFIX],
            [mirror_feed::CHANGE_PREFIX + 1],
        );
        batch.put_cf(
            db.cf(Cf::MirrorFeed),
            mirror_feed::START,
            start.to_be_bytes(),
        );
        db.db.write(batch).map_err(StoreError::from)
    }

    /// When `index` crosses a multiple of [`MIRROR_FEED_TRIM_EVERY`], drops
    /// the feed's entries more than [`MIRROR_FEED_LOG_INDEXES_KEPT`] behind
    /// it and moves its start from `start`; returns the new start, if it
    /// moved (to be cached once the batch is written).
    fn trim_mirror_feed(&self, batch: &mut WriteBatch, start: u64, index: u64) -> Option<u64> {
        let keep_from = index.checked_sub(MIRROR_FEED_LOG_INDEXES_KEPT)?;
        if keep_from < start.saturating_add(MIRROR_FEED_TRIM_EVERY) {
            return None;
        }
        batch.delete_range_cf(
            self.db.cf(Cf::MirrorFeed),
            mirror_feed::index_start(0),
            mirror_feed::index_start(keep_from),
        );
        batch.put_cf(
            self.db.cf(Cf::MirrorFeed),
            mirror_feed::START,
            keep_from.to_be_bytes(),
        );
        Some(keep_from)
    }
}

/// The lowest log index from which the mirror feed holds every write
/// ([`mirror_feed::START_OFF`]: none, the member keeps no feed, or has
/// never been opened).
pub(crate) fn read_mirror_feed_start(db: &Db) -> Result<u64, StoreError> {
    match db.get(Cf::MirrorFeed, mirror_feed::START)? {
        None => Ok(mirror_feed::START_OFF),
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StoreError::corrupt(Cf::MirrorFeed, mirror_feed::START, "not a u64 index")
            }),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<Applied, io::Error> {
        if self.interrupted_install()?.is_some() {
            // Partly written: nothing is applied until the snapshot that
            // was being installed is installed again (the current snapshot
            // below).
            return Ok((None, Default::default()));
        }
        Ok(read_applied(|key| self.db.get(Cf::SmMeta, key))?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        // Committed entries are applied in chunks of bounded work, each its
        // own atomic write: a large backlog (a follower catching up on
        // ingest batches) neither builds one huge write nor holds a runtime
        // thread for seconds.
        let mut chunk = Chunk::default();
        while let Some((entry, responder)) = entries.try_next().await? {
            chunk.work += match &entry.payload {
                EntryPayload::Normal(req) => req.event.work_units(),
                _ => 1,
            };
            chunk.entries.push((entry, responder));
            if chunk.work >= APPLY_CHUNK_WORK_MAX {
                self.apply_off_runtime(std::mem::take(&mut chunk))?;
                tokio::task::yield_now().await;
            }
        }
        if !chunk.entries.is_empty() {
            self.apply_off_runtime(chunk)?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            sm: self.clone(),
            view: Some(self.db.view()),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let sm = self.clone();
        let meta = meta.clone();
        let db = sm.db.clone();
        tokio::task::spawn_blocking(move || sm.install(&meta, snapshot))
            .await
            .map_err(io::Error::other)??;
        db.metrics().installed();
        Ok(())
    }

    /// The newest snapshot; after a restart, one of the state as it was
    /// recovered, which is as good a snapshot as any: the state machine is
    /// durable, and what it holds is a prefix of the log.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        if let Some(meta) = self.interrupted_install()? {
            // A crash cut an install short: the snapshot is still in its
            // file, and Raft installs it again from there at start.
            self.db.set_installing(true);
            let path = self.installing_path();
            tracing::warn!(
                last_log_index = meta.last_log_id.map_or(0, |l| l.index()),
                file = %path.display(),
                "a snapshot install was cut short; installing it again"
            );
            return Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
                meta,
                snapshot: SnapshotData::from_file(path)?,
            }));
        }
        let mut current = self.current();
        if current.is_none() {
            *current = CurrentSnapshot::of(self.db.view())?;
        }
        Ok(current.as_ref().map(CurrentSnapshot::data))
    }
}

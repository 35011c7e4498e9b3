//! Reads for the API: key ranges (now or at a past revision), the change
//! feed for watches, leases and the replicated metadata here; documents
//! (`read/documents.rs`), the MQTT ingest and command state
//! (`read/ingest.rs`) and the MongoDB mirror's feed (`read/mirror.rs`) in
//! their own modules.
//!
//! Reads go straight to RocksDB; whether they are linearizable is decided by
//! the caller (a Raft read barrier before the read), not here.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::broadcast;
use utopia_raft::event::{Bytes, KeyValue, Quotas, RangeResult, TxnOp};

use crate::apply::{
    range_bounds, AlarmRecord, AlarmState, FeedChange, HistoryRecord, IngestEffects, LeaseRecord,
    StateRead,
};
use crate::codec;
use crate::keys::{self, meta, Cf};
use crate::{Db, StoreError};

mod documents;
mod ingest;
mod mirror;

pub use documents::DocPage;
pub use mirror::{FeedRead, MirrorValue};

/// Bytes one key-value pair or document adds to a response beyond its
/// key and value (field tags, lengths, revisions, the document's
/// collection and id framing): an estimate on the safe side, so that a
/// page of them stays under the byte bound it is built for.
pub const RESPONSE_ITEM_OVERHEAD_BYTES: usize = 64;

/// A key's record without its value: what a keys-only range decodes (the
/// CBOR value is skipped, never copied out).
#[derive(Deserialize)]
struct KeyMeta {
    key: Bytes,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    #[serde(default)]
    lease: i64,
}

impl KeyMeta {
    fn into_kv(self) -> KeyValue {
        KeyValue {
            key: self.key,
            value: Bytes::new(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// Whether a history record is a deletion, without decoding its pair.
#[derive(Deserialize)]
struct HistoryDeleted {
    deleted: bool,
}

/// A range response being filled: pairs until the count or byte bound,
/// then only the count.
struct RangePage {
    kvs: Vec<KeyValue>,
    count: i64,
    bytes: usize,
    /// 0: no count bound.
    limit: usize,
    bytes_max: usize,
    keys_only: bool,
    count_only: bool,
    /// A pair was left out: every later one is too, so that a page is a
    /// prefix of the range and the next page starts after its last key.
    full: bool,
}

impl RangePage {
    fn wants_more(&mut self) -> bool {
        if self.limit != 0 && self.kvs.len() >= self.limit {
            self.full = true;
        }
        !self.count_only && !self.full
    }

    /// Takes `kv` into the page unless it would pass the byte bound (the
    /// first pair is always taken, so that paging makes progress).
    fn offer(&mut self, mut kv: KeyValue) {
        if self.keys_only {
            kv.value = Bytes::new();
        }
        let size = kv.key.len() + kv.value.len() + RESPONSE_ITEM_OVERHEAD_BYTES;
        if !self.kvs.is_empty() && self.bytes.saturating_add(size) > self.bytes_max {
            self.full = true;
            return;
        }
        self.bytes += size;
        self.kvs.push(kv);
    }
}

/// Key changes applied together, in revision order (and within a revision,
/// in feed order): every change of a revision is in the same batch.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    /// The highest revision in `changes`.
    pub revision: i64,
    pub changes: Vec<FeedChange>,
}

/// Why a read at a revision cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("required revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("required revision {requested} is a future revision (current {current})")]
    Future { requested: i64, current: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<keys::KeyError> for ReadError {
    fn from(e: keys::KeyError) -> Self {
        ReadError::Store(e.into())
    }
}

/// A lease, the keys attached to it (as many as were asked for), and
/// whether more are attached.
pub type LeaseInfo = (LeaseRecord, Vec<Vec<u8>>, bool);

#[derive(Clone)]
pub struct Reader {
    db: Db,
    changes: broadcast::Sender<Arc<WatchBatch>>,
    ingest: broadcast::Sender<Arc<IngestEffects>>,
    /// Moves whenever the auth state changes (see [`Reader::auth_generation`]).
    auth_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Moves whenever the alarms record is written; `alarms` holds the
    /// record as read at a generation.
    alarms_generation: Arc<std::sync::atomic::AtomicU64>,
    alarms: Arc<std::sync::Mutex<CachedAlarms>>,
}

/// The alarms record as read when the alarms generation was `generation`
/// (0: never read).
#[derive(Default)]
struct CachedAlarms {
    generation: u64,
    state: AlarmState,
}

impl Reader {
    /// A backup of the state machine as it is now (see [`crate::backup`]).
    pub fn backup(
        &self,
        producer: crate::backup::Producer,
    ) -> Result<crate::backup::BackupStream, crate::backup::BackupError> {
        crate::backup::backup(&self.db, producer)
    }

    pub(crate) fn new(
        db: Db,
        changes: broadcast::Sender<Arc<WatchBatch>>,
        ingest: broadcast::Sender<Arc<IngestEffects>>,
    ) -> Self {
        Self {
            db,
            changes,
            ingest,
            auth_generation: Arc::default(),
            alarms_generation: Arc::default(),
            alarms: Arc::default(),
        }
    }

    /// Shares the state machine's alarms generation counter: alarms are
    /// then read from the store only after it moves. Without it they are
    /// read every time.
    pub(crate) fn with_alarms_generation(
        mut self,
        generation: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        self.alarms_generation = generation;
        self
    }

    /// Shares the state machine's auth generation counter.
    pub(crate) fn with_auth_generation(
        mut self,
        generation: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        self.auth_generation = generation;
        self
    }

    /// A number that changes after every write to the auth state (an
    /// applied auth event, an installed snapshot). Read it before
    /// [`Reader::auth_state`]: a state read after seeing generation `g` is
    /// at least as new as `g`, so a cache keyed by it is never stale for
    /// longer than one apply.
    pub fn auth_generation(&self) -> u64 {
        self.auth_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Users, roles and whether authentication is on.
    pub fn auth_state(&self) -> Result<crate::auth::AuthState, StoreError> {
        crate::auth::AuthState::load(&self.db)
    }

    /// Receives what every applied batch did to MQTT ingest and commands.
    pub fn subscribe_ingest(&self) -> broadcast::Receiver<Arc<IngestEffects>> {
        self.ingest.subscribe()
    }

    fn meta_i64(&self, key: &[u8]) -> Result<i64, StoreError> {
        match self.db.get(Cf::SmMeta, key)? {
            Some(b) => codec::decode(Cf::SmMeta, key, &b),
            None => Ok(0),
        }
    }

    /// The quotas applied.
    pub fn quotas(&self) -> Result<Quotas, StoreError> {
        match self.db.get(Cf::SmMeta, meta::QUOTAS)? {
            Some(b) => codec::decode(Cf::SmMeta, meta::QUOTAS, &b),
            None => Ok(Quotas::default()),
        }
    }

    /// The active alarms, by member then kind.
    pub fn alarms(&self) -> Result<Vec<AlarmRecord>, StoreError> {
        Ok(self.alarm_state()?.alarms)
    }

    /// The active alarms and how many disarms have been applied. Every
    /// proposal that adds data checks them: they are read from the store
    /// once per change of the alarms record, not per call.
    pub fn alarm_state(&self) -> Result<AlarmState, StoreError> {
        // Loaded before the read: a state read after seeing generation `g`
        // is at least as new as `g`.
        let generation = self
            .alarms_generation
            .load(std::sync::atomic::Ordering::Acquire);
        {
            let cached = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
            if generation != 0 && cached.generation == generation {
                return Ok(cached.state.clone());
            }
        }
        let state: AlarmState = match self.db.get(Cf::SmMeta, meta::ALARMS)? {
            Some(b) => codec::decode(Cf::SmMeta, meta::ALARMS, &b)?,
            None => AlarmState::default(),
        };
        let mut cached = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
        if cached.generation <= generation {
            *cached = CachedAlarms {
                generation,
                state: state.clone(),
            };
        }
        Ok(state)
    }

    /// Bytes the state machine takes on disk (its column families' table
    /// files and memtables; not the Raft log), what `limits.db_bytes_max`
    /// bounds.
    pub fn state_machine_bytes(&self) -> u64 {
        self.db.state_machine_bytes()
    }

    /// Flushes the state machine's memtables and compacts its column
    /// families, so that what deletes and history compaction freed leaves
    /// the disk; returns [`Reader::state_machine_bytes`] after. Blocking,
    /// and heavy on a large database.
    pub fn compact_state_machine(&self) -> Result<u64, StoreError> {
        self.db.compact_state_machine()?;
        Ok(self.db.state_machine_bytes())
    }

    /// The current revision alone (what every response header carries).
    pub fn revision(&self) -> Result<i64, StoreError> {
        self.meta_i64(meta::REVISION)
    }

    /// The current revision and the compacted revision.
    pub fn revisions(&self) -> Result<(i64, i64), StoreError> {
        Ok((
            self.meta_i64(meta::REVISION)?,
            self.meta_i64(meta::COMPACT_REVISION)?,
        ))
    }

    /// What the storage layer counted (log fsyncs, snapshots).
    pub fn storage_metrics(&self) -> std::sync::Arc<crate::io_metrics::StorageMetrics> {
        self.db.metrics().clone()
    }

    /// Bytes the Raft log takes (table files and memtables).
    pub fn log_bytes(&self) -> u64 {
        self.db.log_bytes()
    }

    pub fn db_size_bytes(&self) -> u64 {
        self.db.size_bytes()
    }

    /// Bytes each column family's memtables hold.
    pub fn memtable_bytes(&self) -> Vec<(Cf, u64)> {
        self.db.memtable_bytes()
    }

    /// Bytes RocksDB's block cache holds.
    pub fn block_cache_bytes(&self) -> u64 {
        self.db.block_cache_bytes()
    }

    /// True while this node installs a snapshot: its state machine is then
    /// partly written, and local (serializable) reads must wait.
    pub fn installing_snapshot(&self) -> bool {
        self.db.installing()
    }

    /// Keys in the range at `revision` (0: now), at most `limit` of them
    /// (0: no limit) and, past the first, at most `bytes_max` bytes of
    /// keys and values (each pair counted with
    /// [`RESPONSE_ITEM_OVERHEAD_BYTES`]); `more` says pairs were left out.
    /// `count` is every key in the range: counted from the keys alone,
    /// without decoding (or holding) a value. `keys_only` and
    /// `count_only` do not decode values either.
    #[allow(clippy::too_many_arguments)]
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        limit: usize,
        bytes_max: usize,
        revision: i64,
        keys_only: bool,
        count_only: bool,
    ) -> Result<RangeResult, ReadError> {
        let (start, end) = range_bounds(key, range_end);
        let mut out = RangePage {
            kvs: Vec::new(),
            count: 0,
            bytes: 0,
            limit,
            bytes_max,
            keys_only,
            count_only,
            full: false,
        };
        // A read of now needs neither revision (most reads are).
        let (current, compacted) = if revision == 0 {
            (0, 0)
        } else {
            self.revisions()?
        };
        if revision == 0 || revision == current {
            let take = |out: &mut RangePage, k: &[u8], v: &[u8]| -> Result<(), StoreError> {
                out.count += 1;
                if out.wants_more() {
                    let kv = if keys_only {
                        codec::decode::<KeyMeta>(Cf::Kv, k, v)?.into_kv()
                    } else {
                        codec::decode(Cf::Kv, k, v)?
                    };
                    out.offer(kv);
                }
                Ok(())
            };
            if range_end.is_empty() {
                // One key: a point read (the current keys have a bloom
                // filter), not an iterator.
                if let Some(v) = self.db.get(Cf::Kv, key)? {
                    take(&mut out, key, &v)?;
                }
            } else {
                let mut it = self.db.raw_range(Cf::Kv, &start, end.as_deref());
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    take(&mut out, k, v)?;
                    it.next();
                }
                it.status().map_err(StoreError::from)?;
            }
        } else {
            if revision > current {
                return Err(ReadError::Future {
                    requested: revision,
                    current,
                });
            }
            if revision < compacted {
                return Err(ReadError::Compacted {
                    requested: revision,
                    compacted,
                });
            }
            let hstart = keys::escaped(&start);
            let hend = end.as_deref().map(keys::escaped);
            // History is ordered by key, then revision: the key's state at
            // `revision` is its last record at or below it. Only whether
            // that record is a deletion is decoded on the way; the record
            // itself is read again when it goes into the page.
            let mut pending: Option<(Vec<u8>, bool)> = None;
            let mut pending_user_key: Vec<u8> = Vec::new();
            let mut it = self.db.raw_range(Cf::KvHistory, &hstart, hend.as_deref());
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let (user_key, rev) = keys::parse_history_key(k)?;
                if user_key != pending_user_key {
                    if let Some(p) = pending.take() {
                        self.offer_history(&mut out, p)?;
                    }
                    pending_user_key = user_key;
                }
                if rev <= revision {
                    let deleted = codec::decode::<HistoryDeleted>(Cf::KvHistory, k, v)?.deleted;
                    pending = Some((k.to_vec(), deleted));
                }
                it.next();
            }
            it.status().map_err(StoreError::from)?;
            if let Some(p) = pending.take() {
                self.offer_history(&mut out, p)?;
            }
        }
        let more = !count_only && (out.kvs.len() as i64) < out.count;
        Ok(RangeResult {
            kvs: out.kvs,
            more,
            count: out.count,
        })
    }

    /// Counts a key's state at a past revision (its history record at
    /// `history_key`, and whether that is a deletion), and puts it in the
    /// page if there is room.
    fn offer_history(
        &self,
        out: &mut RangePage,
        (history_key, deleted): (Vec<u8>, bool),
    ) -> Result<(), StoreError> {
        if deleted {
            return Ok(());
        }
        out.count += 1;
        if !out.wants_more() {
            return Ok(());
        }
        let Some(bytes) = self.db.get(Cf::KvHistory, &history_key)? else {
            return Err(StoreError::corrupt(
                Cf::KvHistory,
                &history_key,
                "history record vanished while reading",
            ));
        };
        let rec: HistoryRecord = codec::decode(Cf::KvHistory, &history_key, &bytes)?;
        out.offer(rec.kv);
        Ok(())
    }

    /// The bytes `txn` would read or touch in the current state, both
    /// branches counted in full; `None` once past `bytes_max` (the work
    /// stops there). See [`crate::apply::Applier::txn_bytes`].
    pub fn txn_bytes(&self, txn: &TxnOp, bytes_max: u64) -> Result<Option<u64>, StoreError> {
        crate::apply::Applier::new(&self.db).txn_bytes(txn, bytes_max)
    }

    /// A key's last state strictly before `revision`, if it existed then.
    pub fn prev_kv(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>, StoreError> {
        let start = keys::history_key(key, 0);
        let end = keys::history_key(key, revision);
        let mut last = None;
        for item in self.db.scan(Cf::KvHistory, &start, Some(&end)) {
            let (k, v) = item?;
            last = Some(codec::decode::<HistoryRecord>(Cf::KvHistory, &k, &v)?);
        }
        Ok(last.filter(|r| !r.deleted).map(|r| r.kv))
    }

    /// Receives every batch of key changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchBatch>> {
        self.changes.subscribe()
    }

    /// Changes from the feed position (`from`, `from_sub`) on (revision
    /// `from` starting at its change `from_sub`, then every later
    /// revision), in order, at most `max` of them and about `bytes_max`
    /// bytes of keys and values (one change always, whatever its size). A
    /// revision that changed more is read in several calls: resume at the
    /// position after the last change returned. Fails if `from` has been
    /// compacted.
    pub fn changes_from(
        &self,
        from: i64,
        from_sub: u32,
        max: usize,
        bytes_max: usize,
    ) -> Result<Vec<FeedChange>, ReadError> {
        let (_, compacted) = self.revisions()?;
        if from < compacted {
            return Err(ReadError::Compacted {
                requested: from,
                compacted,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self
            .db
            .scan(Cf::KvChanges, &keys::change_key(from, from_sub), None)
        {
            if out.len() >= max || (!out.is_empty() && bytes >= bytes_max) {
                break;
            }
            let (k, v) = item?;
            bytes = bytes.saturating_add(k.len() + v.len());
            let (revision, sub) = keys::parse_change_key(&k)?;
            out.push(FeedChange {
                revision,
                sub,
                change: codec::decode(Cf::KvChanges, &k, &v)?,
            });
        }
        Ok(out)
    }

    /// Events (and ingest items) rejected because their content could not
    /// be applied, cluster-wide (replicated state).
    pub fn events_rejected(&self) -> Result<u64, StoreError> {
        match self.db.get(Cf::SmMeta, meta::EVENTS_REJECTED)? {
            Some(b) => codec::decode(Cf::SmMeta, meta::EVENTS_REJECTED, &b),
            None => Ok(0),
        }
    }

    /// A lease and its attached keys, at most about `keys_bytes_max` bytes
    /// of them (one key always).
    pub fn lease(&self, id: i64, keys_bytes_max: usize) -> Result<Option<LeaseInfo>, StoreError> {
        let key = keys::lease_id_key(id);
        let Some(b) = self.db.get(Cf::Leases, &key)? else {
            return Ok(None);
        };
        let lease: LeaseRecord = codec::decode(Cf::Leases, &key, &b)?;
        let end = keys::prefix_end(&key);
        let mut attached = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for item in self.db.scan(Cf::LeaseKeys, &key, end.as_deref()) {
            let (k, _) = item?;
            if !attached.is_empty() && bytes >= keys_bytes_max {
                more = true;
                break;
            }
            bytes = bytes.saturating_add(k.len());
            attached.push(keys::parse_lease_key(&k)?.1.to_vec());
        }
        Ok(Some((lease, attached, more)))
    }

    /// Leases whose deadline is at or before `now_ms`, oldest first, at most
    /// `max`.
    pub fn expired_leases(&self, now_ms: u64, max: usize) -> Result<Vec<i64>, StoreError> {
        let end = keys::deadline_key(now_ms.saturating_add(1), 0);
        let mut out = Vec::new();
        for item in self.db.scan(Cf::LeaseDeadlines, &[], Some(&end)) {
            if out.len() >= max {
                break;
            }
            let (k, _) = item?;
            out.push(keys::parse_deadline_key(&k)?.1);
        }
        Ok(out)
    }

    pub fn lease_exists(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.db.get(Cf::Leases, &keys::lease_id_key(id))?.is_some())
    }
}

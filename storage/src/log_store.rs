//! The Raft log on RocksDB.
//!
//! Appends are written to RocksDB without a sync and handed to a flusher
//! thread; the flusher syncs the WAL once for every append queued behind it
//! and only then tells Raft the entries are durable. Under load one fsync
//! covers many appends (group commit); an append is never reported durable
//! before its fsync has returned.
//!
//! The newest appended entries are also kept in memory ([`Recent`]): Raft
//! reads every entry back soon after appending it (to replicate it to each
//! follower and to apply it), and serving those reads from memory saves a
//! RocksDB iteration and a CBOR decode per entry per reader. Their
//! encodings are kept beside them, for replication to send as they are
//! ([`EncodedEntries`]). A follower stores the encodings its leader sent
//! (`received`).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use rocksdb::WriteBatch;
use utopia_raft::event;
use utopia_raft::openraft_api::{
    EntryOf, IOFlushed, LogIdOf, LogState, RaftEntry, RaftLogReader, RaftLogStorage, VoteOf,
};
use utopia_raft::{EncodedEntries, TypeConfig};

use crate::keys::{self, raft_meta, Cf};
use crate::{Db, StoreError};

mod received;

type Entry = EntryOf<TypeConfig>;

/// Appends waiting for their fsync, at most. `append` waits when the queue
/// is full, which holds Raft back instead of growing memory.
const FLUSH_QUEUE_MAX: usize = 4096;

/// An entry's bytes in a RocksDB write batch beyond its encoding, at most:
/// its key, type, column family and two lengths.
const LOG_RECORD_OVERHEAD_BYTES: usize = 8 + 16;

/// The newest entries kept in memory, at most this many ...
const RECENT_ENTRIES_MAX: usize = 8192;
/// ... and at most this many encoded bytes (each entry is held decoded
/// as well, about as large again).
const RECENT_BYTES_MAX: usize = 16 << 20;

/// The encoded bytes of entries the leader sends a follower in one
/// `AppendEntries`, at most (one entry is always sent, whatever its size).
/// openraft bounds a batch by entry count alone; 300 entries of 1 MiB
/// values would exceed what a peer accepts in one message, and a follower
/// that far behind could then never catch up from the log.
pub const REPLICATION_BATCH_BYTES_MAX: usize = 4 << 20;

/// The newest entries of the log, in index order with no gap. When not
/// empty, its last entry is the log's last entry: every append, truncation
/// and purge updates it (under the same lock as the write to RocksDB for
/// the first two; a purge is at once for reads, see [`Purges`]).
#[derive(Default)]
struct Recent {
    /// Each entry with its encoding (what the log stores).
    entries: VecDeque<(Entry, Vec<u8>)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn push(&mut self, entry: Entry, encoded: Vec<u8>) {
        let follows = match self.entries.back() {
            None => true,
            Some((last, _)) => last.index() + 1 == entry.index(),
        };
        if !follows {
            self.clear();
        }
        self.bytes += encoded.len();
        self.entries.push_back((entry, encoded));
        while self.entries.len() > RECENT_ENTRIES_MAX || self.bytes > RECENT_BYTES_MAX {
            match self.entries.pop_front() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    /// Drops the entries from index `from` on.
    fn truncate_from(&mut self, from: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.index() >= from) {
            if let Some((_, b)) = self.entries.pop_back() {
                self.bytes -= b.len();
            }
        }
    }

    /// Drops the entries up to index `upto` included.
    fn purge_upto(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.index() <= upto) {
            if let Some((_, b)) = self.entries.pop_front() {
                self.bytes -= b.len();
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries in `[start, end)` if the cache holds every one of them
    /// that exists, i.e. when `start` is at or after its first entry; of
    /// those, the longest prefix within `bytes_max` encoded bytes (and
    /// always the first).
    fn get(&self, start: u64, end: Bound<u64>, bytes_max: usize) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        let mut budget = Budget::new(bytes_max);
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take_while(|(e, b)| in_range(e.index(), end) && budget.take(b.len()))
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    /// Appends the encodings of `entries` to `out` if it holds each of
    /// them under its log id (see [`EncodedEntries`]).
    fn append_encoded(&self, entries: &[Entry], out: &mut Vec<u8>) -> bool {
        let Some(first) = self.first_index() else {
            return false;
        };
        for e in entries {
            let held = e
                .index()
                .checked_sub(first)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.entries.get(i));
            match held {
                Some((entry, bytes)) if entry.log_id() == e.log_id() => {
                    out.extend_from_slice(bytes)
                }
                _ => return false,
            }
        }
        true
    }
}

fn in_range(index: u64, end: Bound<u64>) -> bool {
    match end {
        Bound::Included(x) => index <= x,
        Bound::Excluded(x) => index < x,
        Bound::Unbounded => true,
    }
}

/// Bytes left for a batch of entries; the first entry always fits.
struct Budget {
    left: usize,
    taken: bool,
}

impl Budget {
    fn new(bytes_max: usize) -> Budget {
        Budget {
            left: bytes_max,
            taken: false,
        }
    }

    /// Whether an entry of `size` bytes still fits, counting it if so.
    fn take(&mut self, size: usize) -> bool {
        if self.taken && size > self.left {
            return false;
        }
        self.left = self.left.saturating_sub(size);
        self.taken = true;
        true
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    flusher: Arc<tokio::sync::mpsc::Sender<IOFlushed<TypeConfig>>>,
    recent: Arc<Mutex<Recent>>,
    /// Encodings received from the leader for entries not yet appended.
    received: Arc<Mutex<received::Received>>,
    /// Purges Raft asked for whose entries are still in RocksDB: see
    /// [`Purges`].
    purges: Arc<Purges>,
}

/// The log is purged in two steps. When Raft purges, the entries are gone
/// at once for every read (and from [`RaftLogStorage::get_log_state`]).
/// They leave RocksDB later, on the purger thread, after a flush of every
/// column family: applied batches skip the WAL, so until that flush a crash
/// makes Raft apply those entries again. The flush (tens of megabytes of
/// memtables) takes too long for Raft's core to wait on.
struct Purges {
    /// The last purged log id, as Raft knows it; `None`: never purged in
    /// this process (RocksDB's record holds).
    logical: Mutex<Option<LogIdOf<TypeConfig>>>,
    /// The newest purge not yet carried out in RocksDB.
    pending: Mutex<Option<LogIdOf<TypeConfig>>>,
    /// Wakes the purger thread (one wake-up queued is enough).
    wake: tokio::sync::mpsc::Sender<()>,
}

impl Purges {
    fn logical(&self) -> Option<LogIdOf<TypeConfig>> {
        *lock(&self.logical)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every value kept under these locks is whole after each statement.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LogStore {
    pub(crate) fn new(db: Db) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(FLUSH_QUEUE_MAX);
        // The flusher holds the database only while it syncs, so dropping
        // the last store handle closes the database at once.
        let flush_db = db.downgrade();
        std::thread::Builder::new()
            .name("utopia-log-flush".into())
            .spawn(move || flush_loop(flush_db, rx))
            .expect("spawn the log flusher thread");
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        let purges = Arc::new(Purges {
            logical: Mutex::new(None),
            pending: Mutex::new(None),
            wake,
        });
        let (purge_db, pending) = (db.downgrade(), Arc::downgrade(&purges));
        std::thread::Builder::new()
            .name("utopia-log-purge".into())
            .spawn(move || purge_loop(purge_db, pending, woken))
            .expect("spawn the log purger thread");
        Self {
            db,
            flusher: Arc::new(tx),
            recent: Arc::default(),
            received: Arc::default(),
            purges,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        lock(&self.recent)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.db.db.get_cf(self.db.cf(Cf::RaftMeta), key)? {
            None => Ok(None),
            Some(bytes) => event::decode(&bytes)
                .map(Some)
                .map_err(|e| StoreError::corrupt(Cf::RaftMeta, key, e.to_string())),
        }
    }

    fn put_meta_synced<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = event::encode(value).map_err(|e| StoreError::Io(e.to_string()))?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        let started = std::time::Instant::now();
        self.db
            .db
            .put_cf_opt(self.db.cf(Cf::RaftMeta), key, bytes, &opts)?;
        self.db.metrics().log_fsync.observe(started.elapsed());
        Ok(())
    }

    fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<Entry, StoreError> {
        let entry: Entry = event::decode(bytes)
            .map_err(|e| StoreError::corrupt(Cf::RaftLog, key, e.to_string()))?;
        if keys::parse_log_key(key)? != entry.index() {
            return Err(StoreError::corrupt(
                Cf::RaftLog,
                key,
                format!("holds entry {}", entry.index()),
            ));
        }
        Ok(entry)
    }
}

fn flush_loop(db: crate::db::WeakDb, mut rx: tokio::sync::mpsc::Receiver<IOFlushed<TypeConfig>>) {
    let mut waiting = Vec::with_capacity(FLUSH_QUEUE_MAX);
    while let Some(first) = rx.blocking_recv() {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = match db.upgrade() {
            Some(db) => {
                let started = std::time::Instant::now();
                let r = db.sync_wal();
                db.metrics().log_fsync.observe(started.elapsed());
                r
            }
            None => Err(StoreError::Io("the database is closed".into())),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "sync the raft log");
        }
        for callback in waiting.drain(..) {
            callback.io_completed(result.clone().map_err(io::Error::from));
        }
    }
}

/// Carries out the purges Raft asked for: flushes every column family (the
/// state machine that applied the entries becomes durable), then deletes
/// the entries and records the purge. Ends when the store is dropped.
fn purge_loop(
    db: crate::db::WeakDb,
    purges: std::sync::Weak<Purges>,
    mut woken: tokio::sync::mpsc::Receiver<()>,
) {
    while woken.blocking_recv().is_some() {
        let (Some(db), Some(purges)) = (db.upgrade(), purges.upgrade()) else {
            return;
        };
        let Some(log_id) = lock(&purges.pending).take() else {
            continue;
        };
        if let Err(e) = purge_now(&db, log_id) {
            // The entries stay until the next purge, which covers them.
            tracing::error!(error = %e, upto = log_id.index(), "purge the raft log");
        }
    }
}

fn purge_now(db: &Db, log_id: LogIdOf<TypeConfig>) -> Result<(), StoreError> {
    db.flush_all()?;
    let bytes = event::encode(&log_id).map_err(|e| StoreError::Io(e.to_string()))?;
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(Cf::RaftMeta), raft_meta::LAST_PURGED, bytes);
    batch.delete_range_cf(
        db.cf(Cf::RaftLog),
        keys::log_key(0),
        keys::log_key(log_id.index() + 1),
    );
    db.db.write(batch)?;
    Ok(())
}

impl LogStore {
    /// The entries in `range`, at most `bytes_max` encoded bytes of them
    /// (and always the first that exists).
    fn entries_within<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Purged entries may still be in RocksDB (see `Purges`).
        let start = match self.purges.logical() {
            Some(purged) => start.max(purged.index() + 1),
            None => start,
        };
        let end = range.end_bound().cloned();
        if let Some(entries) = self.recent().get(start, end, bytes_max) {
            return Ok(entries);
        }
        let mut out = Vec::new();
        let mut budget = Budget::new(bytes_max);
        let it = self.db.db.iterator_cf(
            self.db.cf(Cf::RaftLog),
            rocksdb::IteratorMode::From(&keys::log_key(start), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(StoreError::from)?;
            let index = keys::parse_log_key(&k).map_err(StoreError::from)?;
            if !in_range(index, end) || !budget.take(v.len()) {
                break;
            }
            out.push(Self::decode_entry(&k, &v)?);
        }
        Ok(out)
    }
}

impl EncodedEntries for LogStore {
    fn append_encoded(&self, entries: &[Entry], out: &mut Vec<u8>) -> bool {
        self.recent().append_encoded(entries, out)
    }

    fn received(&self, encodings: Vec<(Entry, Vec<u8>)>) {
        lock(&self.received).hold(encodings);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.entries_within(range, usize::MAX)
    }

    /// What the leader sends a follower in one `AppendEntries`: bounded by
    /// [`REPLICATION_BATCH_BYTES_MAX`] as well as openraft's entry count.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.entries_within(start..end, REPLICATION_BATCH_BYTES_MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.get_meta(raft_meta::VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last = self
            .db
            .db
            .iterator_cf(self.db.cf(Cf::RaftLog), rocksdb::IteratorMode::End)
            .next();
        let last_log_id = match last {
            None => None,
            Some(item) => {
                let (k, v) = item.map_err(StoreError::from)?;
                Some(Self::decode_entry(&k, &v)?.log_id())
            }
        };
        let stored: Option<LogIdOf<TypeConfig>> = self.get_meta(raft_meta::LAST_PURGED)?;
        let last_purged_log_id = stored.max(self.purges.logical());
        let last_log_id = last_log_id.max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let store = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || store.put_meta_synced(raft_meta::VOTE, &vote))
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    // The committed log id is not stored (openraft's default): every
    // applied batch records its last log id with the state it wrote, and a
    // restarted node applies the entries after it again once it learns the
    // commit index from a leader (or commits them as one). Storing it cost
    // a RocksDB write on every node at every commit.

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut appended = Vec::new();
        {
            let mut received = lock(&self.received);
            for entry in entries {
                let bytes = match received.take(&entry) {
                    Some(bytes) => bytes,
                    None => event::encode(&entry).map_err(|e| io::Error::other(e.to_string()))?,
                };
                appended.push((entry, bytes));
            }
        }
        // Reserved at once: a batch grown by doubling copies itself.
        let reserve = appended
            .iter()
            .map(|(_, bytes)| LOG_RECORD_OVERHEAD_BYTES + bytes.len())
            .sum::<usize>();
        let mut batch = WriteBatch::with_capacity_bytes(reserve + 64);
        let cf = self.db.cf(Cf::RaftLog);
        for (entry, bytes) in &appended {
            batch.put_cf(cf, keys::log_key(entry.index()), bytes);
        }
        {
            let mut recent = self.recent();
            // Written (readable) now; durable once the flusher's sync returns.
            self.db.db.write(batch).map_err(StoreError::from)?;
            for (entry, bytes) in appended {
                recent.push(entry, bytes);
            }
        }
        self.flusher
            .send(callback)
            .await
            .map_err(|_| io::Error::other("the log flusher has stopped"))?;
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let mut recent = self.recent();
        recent.truncate_from(from);
        self.db
            .db
            .delete_range_cf(
                self.db.cf(Cf::RaftLog),
                keys::log_key(from),
                keys::log_key(u64::MAX),
            )
            .map_err(|e| {
                // Unknown what is left in RocksDB: read from it from now on.
                recent.clear();
                StoreError::from(e)
            })?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        // Gone for every read now; out of RocksDB once a flush makes the
        // state that applied them durable (`Purges`, `purge_loop`).
        self.recent().purge_upto(log_id.index());
        {
            let mut logical = lock(&self.purges.logical);
            *logical = (*logical).max(Some(log_id));
        }
        {
            let mut pending = lock(&self.purges.pending);
            *pending = (*pending).max(Some(log_id));
        }
        // Full: a wake-up is already queued, and it takes the newest.
        let _ = self.purges.wake.try_send(());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Entry {
        let leader = openraft::vote::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        Entry::new_blank(LogIdOf::<TypeConfig>::new(leader, index))
    }

    fn indexes(r: &Recent, start: u64, end: Bound<u64>) -> Option<Vec<u64>> {
        r.get(start, end, usize::MAX)
            .map(|v| v.iter().map(RaftEntry::index).collect())
    }

    #[test]
    fn recent_entries_serve_reads_at_or_after_their_first() {
        let mut r = Recent::default();
        assert_eq!(indexes(&r, 0, Bound::Unbounded), None);
        for i in 5..10 {
            r.push(entry(i), vec![0; 10]);
        }
        assert_eq!(
            indexes(&r, 4, Bound::Unbounded),
            None,
            "4 is only in RocksDB"
        );
        assert_eq!(indexes(&r, 5, Bound::Excluded(7)), Some(vec![5, 6]));
        assert_eq!(indexes(&r, 8, Bound::Included(20)), Some(vec![8, 9]));
        assert_eq!(indexes(&r, 12, Bound::Unbounded), Some(vec![]));

        r.truncate_from(8);
        assert_eq!(indexes(&r, 5, Bound::Unbounded), Some(vec![5, 6, 7]));
        assert_eq!(r.bytes, 30);
        r.purge_upto(5);
        assert_eq!(indexes(&r, 5, Bound::Unbounded), None);
        assert_eq!(indexes(&r, 6, Bound::Unbounded), Some(vec![6, 7]));

        // A gap (never expected) starts over rather than serve a hole.
        r.push(entry(20), vec![0; 10]);
        assert_eq!(indexes(&r, 6, Bound::Unbounded), None);
        assert_eq!(indexes(&r, 20, Bound::Unbounded), Some(vec![20]));
        r.truncate_from(0);
        assert_eq!((r.entries.len(), r.bytes), (0, 0));
    }

    #[test]
    fn recent_entries_lend_their_encodings_only_under_their_own_log_ids() {
        let mut r = Recent::default();
        let encoded = |i: u64| event::encode(&entry(i)).unwrap();
        for i in 5..10 {
            r.push(entry(i), encoded(i));
        }
        let mut out = Vec::new();
        let wanted: Vec<Entry> = (6..9).map(entry).collect();
        assert!(r.append_encoded(&wanted, &mut out));
        assert_eq!(out, [encoded(6), encoded(7), encoded(8)].concat());
        // Before the first held, after the last, or the same index written
        // in another term: not held.
        for missing in [entry(4), entry(10)] {
            assert!(!r.append_encoded(&[missing], &mut Vec::new()));
        }
        let leader = openraft::vote::leader_id_adv::LeaderId {
            term: 2,
            node_id: 1,
        };
        let other_term = Entry::new_blank(LogIdOf::<TypeConfig>::new(leader, 7));
        assert!(!r.append_encoded(&[entry(6), other_term], &mut Vec::new()));
        // What was truncated or purged is not held either.
        r.truncate_from(8);
        assert!(!r.append_encoded(&[entry(8)], &mut Vec::new()));
        r.purge_upto(6);
        assert!(!r.append_encoded(&[entry(6)], &mut Vec::new()));
        assert!(r.append_encoded(&[entry(7)], &mut Vec::new()));
    }

    #[test]
    fn recent_entries_are_bounded() {
        let mut r = Recent::default();
        for i in 0..(RECENT_ENTRIES_MAX as u64 + 10) {
            r.push(entry(i), vec![0; 1]);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES_MAX);
        assert_eq!(r.first_index(), Some(10));
        r.push(
            entry(RECENT_ENTRIES_MAX as u64 + 10),
            vec![0; RECENT_BYTES_MAX],
        );
        assert_eq!(r.entries.len(), 1, "{} bytes", r.bytes);
    }
}

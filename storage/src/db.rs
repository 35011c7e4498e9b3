//! Opening the RocksDB database and reading it for the applier.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, DB};

use crate::apply::{ScanIter, StateRead};
use crate::keys::Cf;
use crate::{LogStore, Reader, StateMachine, StoreError};

/// The shared database handle.
#[derive(Clone)]
pub struct Db {
    pub(crate) db: Arc<DB>,
    /// A snapshot is being installed: the state machine is partly written
    /// and local reads are refused.
    installing: Arc<std::sync::atomic::AtomicBool>,
    /// What this database's log and state machine count for the metrics.
    metrics: Arc<crate::io_metrics::StorageMetrics>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.db.path()).finish()
    }
}

/// RocksDB's properties for a column family's table files and memtables,
/// in bytes.
const SST_FILES_BYTES: &str = "rocksdb.total-sst-files-size";
const MEMTABLES_BYTES: &str = "rocksdb.cur-size-all-mem-tables";

impl Db {
    pub(crate) fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        cf_handle(&self.db, cf)
    }

    /// True while a snapshot is being installed (the state machine is then
    /// partly written, and not to be read).
    pub fn installing(&self) -> bool {
        self.installing.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_installing(&self, on: bool) {
        self.installing
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// The storage figures of this database (every handle shares them).
    pub fn metrics(&self) -> &Arc<crate::io_metrics::StorageMetrics> {
        &self.metrics
    }

    /// A RocksDB integer property of `cf` (0 when RocksDB has none).
    fn property(&self, cf: Cf, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Bytes `cf` takes: its table files and its memtables.
    fn cf_bytes(&self, cf: Cf) -> u64 {
        self.property(cf, SST_FILES_BYTES) + self.property(cf, MEMTABLES_BYTES)
    }

    /// Bytes the Raft log takes: its table files and its memtables.
    pub fn log_bytes(&self) -> u64 {
        self.cf_bytes(Cf::RaftLog)
    }

    /// Bytes each column family's memtables hold in memory (the one being
    /// written and those not yet flushed to a table file).
    pub fn memtable_bytes(&self) -> Vec<(Cf, u64)> {
        Cf::ALL
            .iter()
            .map(|cf| (*cf, self.property(*cf, MEMTABLES_BYTES)))
            .collect()
    }

    /// Bytes the block cache (shared by every column family) holds.
    pub fn block_cache_bytes(&self) -> u64 {
        self.property(Cf::Kv, "rocksdb.block-cache-usage")
    }

    /// Syncs the WAL: everything written before the call is durable after it.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(StoreError::from)
    }

    /// Writes every column family's memtables to table files, all at once,
    /// and waits: everything written before the call, with the WAL or
    /// without, survives a crash after it. Blocking.
    ///
    /// Never flush one column family alone: applied batches skip the WAL,
    /// so it would be ahead of the others after a crash, and applying the
    /// entries after the last flushed batch again would apply some of them
    /// twice to it. RocksDB's own flushes take every column family
    /// (`atomic_flush`).
    pub fn flush_all(&self) -> Result<(), StoreError> {
        let cfs: Vec<_> = Cf::ALL.iter().map(|cf| self.cf(*cf)).collect();
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &opts)?;
        Ok(())
    }

    /// Approximate bytes on disk for the whole database.
    pub fn size_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|cf| self.property(*cf, SST_FILES_BYTES))
            .sum()
    }

    /// Bytes the state machine's column families take: their table files
    /// (every version still held, as on disk) and their memtables.
    pub fn state_machine_bytes(&self) -> u64 {
        Cf::STATE_MACHINE.iter().map(|cf| self.cf_bytes(*cf)).sum()
    }

    /// Flushes the state machine's memtables to table files and compacts
    /// every one of its column families fully, dropping deleted and
    /// superseded records no view still needs. Blocking.
    pub fn compact_state_machine(&self) -> Result<(), StoreError> {
        let mut opts = rocksdb::CompactOptions::default();
        // The last level too: that is where most deleted data sits.
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        // All at once: a column family flushed alone would be ahead of the
        // others after a crash (see `flush_all`).
        self.flush_all()?;
        for cf in Cf::STATE_MACHINE {
            self.db
                .compact_range_cf_opt(self.cf(cf), None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// A raw iterator over `cf` from `start` up to `end` (exclusive; `None`:
    /// to the last key), positioned at `start`. Keys and values are read
    /// in place, not copied: a caller that only counts keys, or decodes a
    /// value and drops it, holds one entry at a time.
    pub(crate) fn raw_range(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> rocksdb::DBRawIteratorWithThreadMode<'_, DB> {
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), opts);
        it.seek(start);
        it
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The identity recorded when this data directory was first used.
    pub fn identity(&self) -> Result<Option<NodeIdentity>, StoreError> {
        let key = crate::keys::raft_meta::IDENTITY;
        match self.db.get_cf(self.cf(Cf::RaftMeta), key)? {
            None => Ok(None),
            Some(b) => utopia_raft::event::decode(&b)
                .map(Some)
                .map_err(|e| StoreError::corrupt(Cf::RaftMeta, key, e.to_string())),
        }
    }

    /// Records the data directory's identity (synced).
    pub fn set_identity(&self, identity: &NodeIdentity) -> Result<(), StoreError> {
        let bytes =
            utopia_raft::event::encode(identity).map_err(|e| StoreError::Io(e.to_string()))?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(
            self.cf(Cf::RaftMeta),
            crate::keys::raft_meta::IDENTITY,
            bytes,
            &opts,
        )?;
        Ok(())
    }

    /// A consistent view of the whole database as it is now. Taking one
    /// costs nothing; while it is held, compaction keeps the versions it
    /// sees.
    pub(crate) fn view(&self) -> DbView {
        DbView::new(self.db.clone(), |db| db.snapshot())
    }

    /// A handle that does not keep the database open.
    pub(crate) fn downgrade(&self) -> WeakDb {
        WeakDb {
            db: Arc::downgrade(&self.db),
            installing: self.installing.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

type RocksSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot together with the database handle it borrows, so
    /// that it can be kept past the call that took it.
    pub(crate) struct DbView {
        owner: Arc<DB>,
        #[covariant]
        dependent: RocksSnapshot,
    }
);

impl DbView {
    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = cf_handle(self.borrow_owner(), cf);
        Ok(self.borrow_dependent().get_cf(handle, key)?)
    }

    /// An iterator over `cf` in this view, not yet positioned.
    pub(crate) fn raw_iterator(&self, cf: Cf) -> rocksdb::DBRawIteratorWithThreadMode<'_, DB> {
        let handle = cf_handle(self.borrow_owner(), cf);
        self.borrow_dependent().raw_iterator_cf(handle)
    }
}

fn cf_handle(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    // Every column family in `Cf::ALL` is created in `open`.
    db.cf_handle(cf.name())
        .expect("column family created at open")
}

/// A database handle that lets the database close when every [`Db`] is
/// gone, for background threads that must not outlive their owner.
pub(crate) struct WeakDb {
    db: std::sync::Weak<DB>,
    installing: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<crate::io_metrics::StorageMetrics>,
}

impl WeakDb {
    pub(crate) fn upgrade(&self) -> Option<Db> {
        self.db.upgrade().map(|db| Db {
            db,
            installing: self.installing.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

impl StateRead for Db {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn scan<'a>(&'a self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'a> {
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let it = self.db.iterator_cf_opt(
            self.cf(cf),
            opts,
            IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        Box::new(it.map(|r| {
            r.map(|(k, v)| (k.into_vec(), v.into_vec()))
                .map_err(StoreError::from)
        }))
    }
}

/// Which node a data directory belongs to, recorded on first start so that
/// a restart with another node id or another initial cluster is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    pub node_id: u64,
    /// The `--initial-cluster` it was created with (empty: a one-member
    /// cluster, or a node that joined).
    pub initial_cluster: std::collections::BTreeMap<u64, String>,
    /// The cluster this node belongs to (0: not known yet, a node waiting
    /// to be added; absent in directories written before cluster ids).
    #[serde(default)]
    pub cluster_id: u64,
}

/// The three views of one opened data directory.
pub struct OpenedStore {
    pub db: Db,
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    pub reader: Reader,
}

/// Options shared by every open of a data directory.
fn db_options(options: &OpenOptions) -> Options {
    let mut opts = Options::default();
    opts.set_db_write_buffer_size(
        usize::try_from(options.memtable_bytes_max).unwrap_or(usize::MAX),
    );
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Recover to the last consistent point of the WAL after a crash. The
    // WAL holds the log (and snapshot installs); the state machine comes
    // back from its last flush, and Raft applies the rest from the log.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    // Applied batches are written without the WAL (the log they come from
    // is one): every flush writes all column families' memtables at once,
    // so a crash leaves the state machine at one applied batch, never
    // some column families ahead of others.
    opts.set_atomic_flush(true);
    opts.set_max_background_jobs(2);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(4);
    opts
}

/// Per column family: LZ4 like the rest, blocks from the shared cache, and
/// bloom filters where keys that are not there are looked up, so that such
/// a lookup touches no data block:
/// - the current key-value state, read on every put (to carry versions and
///   leases forward) whatever the key: filters on its tables and its
///   memtables;
/// - the MQTT ingest state, where a redelivered message looks its digest up
///   and the digest is usually not there: filters on its tables only. Its
///   memtables take a dedupe record per message and are searched only for
///   redeliveries, so a filter there would cost every message a hash and
///   spare a few lookups;
/// - the state machine's metadata, where every applied batch looks up the
///   alarms (and device values the quotas), which are usually not there:
///   without a filter each such lookup searched a data block of every
///   table file (about a percent of the cluster's CPU under puts).
fn cf_options(cf: Cf, cache: &rocksdb::Cache) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    if matches!(cf, Cf::Kv | Cf::Ingest | Cf::SmMeta) {
        table.set_bloom_filter(10.0, false);
    }
    if cf == Cf::Kv {
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
    }
    opts.set_block_based_table_factory(&table);
    opts
}

/// The memtables' memory budget when none is given: see
/// [`OpenOptions::memtable_bytes_max`].
pub const MEMTABLE_BYTES_MAX_DEFAULT: u64 = 104 << 20;

/// The block cache's size when none is given: see
/// [`OpenOptions::block_cache_bytes_max`].
pub const BLOCK_CACHE_BYTES_MAX_DEFAULT: u64 = 32 << 20;

/// Node-local choices made where a data directory is opened. None of them
/// changes what apply writes to the replicated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Keep the mirror feed ([`crate::keys::mirror_feed`]) that the MongoDB
    /// mirror reads: on only on members with `mongodb.enabled`.
    pub mirror_feed: bool,
    /// Memory the memtables of all column families may take together;
    /// past it RocksDB flushes them all (`atomic_flush`). Without a budget
    /// each column family written to holds up to two 64 MiB memtables: a
    /// put writes four of them (the log, the current key, its history, the
    /// change feed), so memtables alone would reach hundreds of MiB.
    pub memtable_bytes_max: u64,
    /// Uncompressed table blocks cached in memory, shared by every column
    /// family. Blocks it does not hold are read from the table files
    /// (usually in the kernel's page cache) and decompressed again.
    pub block_cache_bytes_max: u64,
    /// Memory the applier's cache of current keys' revisions and leases
    /// may take ([`crate::key_cache`]): a put of a key it holds reads
    /// nothing from the store. 0 keeps no cache.
    pub key_cache_bytes_max: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            mirror_feed: false,
            memtable_bytes_max: MEMTABLE_BYTES_MAX_DEFAULT,
            block_cache_bytes_max: BLOCK_CACHE_BYTES_MAX_DEFAULT,
            key_cache_bytes_max: crate::key_cache::KEY_CACHE_BYTES_MAX_DEFAULT,
        }
    }
}

/// Opens (creating if needed) the database in `dir`, without the mirror
/// feed.
pub fn open(dir: &Path) -> Result<OpenedStore, StoreError> {
    open_with(dir, OpenOptions::default())
}

/// Opens (creating if needed) the database in `dir` with `options`.
pub fn open_with(dir: &Path, options: OpenOptions) -> Result<OpenedStore, StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Io(format!("create data directory {}: {e}", dir.display())))?;
    let db_dir = dir.join("db");
    let cache = rocksdb::Cache::new_lru_cache(
        usize::try_from(options.block_cache_bytes_max).unwrap_or(usize::MAX),
    );
    let cfs = Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)));
    let db = DB::open_cf_descriptors(&db_options(&options), &db_dir, cfs)
        .map_err(|e| StoreError::Rocks(format!("open rocksdb at {}: {e}", db_dir.display())))?;
    let db = Db {
        db: Arc::new(db),
        installing: Arc::default(),
        metrics: Arc::default(),
    };
    let snapshot_dir = dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir).map_err(|e| {
        StoreError::Io(format!(
            "create snapshot directory {}: {e}",
            snapshot_dir.display()
        ))
    })?;
    let (state_machine, (changes, ingest)) = StateMachine::new(db.clone(), snapshot_dir, &options)?;
    let reader = Reader::new(db.clone(), changes, ingest)
        .with_auth_generation(state_machine.auth_generation())
        .with_alarms_generation(state_machine.alarms_generation());
    let log_store = LogStore::new(db.clone());
    Ok(OpenedStore {
        db,
        log_store,
        state_machine,
        reader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memtables(db: &Db) -> u64 {
        db.memtable_bytes().iter().map(|(_, n)| n).sum()
    }

    /// Writes 40 MiB into one column family, whose own memtable would hold
    /// 64 MiB: with a 16 MiB budget for all memtables the writes are
    /// flushed to table files and the memtables stay near the budget. Near:
    /// the budget is checked before each write, a memtable grows in 8 MiB
    /// blocks, and the current keys' memtable bloom filter takes 3.2 MiB,
    /// so up to twice the budget; without it they hold about 44 MiB.
    #[test]
    fn the_memtable_budget_bounds_what_memtables_hold() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 16 << 20;
        let store = open_with(
            dir.path(),
            OpenOptions {
                memtable_bytes_max: budget,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let db = store.db;
        // Values that do not compress, so that the table files hold them.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut value = vec![0u8; 4096];
        for batch in 0..40u32 {
            let mut b = rocksdb::WriteBatch::default();
            for i in 0..256u32 {
                for chunk in value.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes());
                }
                let key = [batch.to_be_bytes(), i.to_be_bytes()].concat();
                b.put_cf(db.cf(Cf::Kv), key, &value);
            }
            db.db.write(b).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Flushes run in the background: the memtables written past the
        // budget are released once their table files are written.
        while memtables(&db) > 2 * budget {
            assert!(
                std::time::Instant::now() < deadline,
                "memtables hold {} bytes with a budget of {budget}",
                memtables(&db)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(db.size_bytes() > 16 << 20, "flushed to table files");
    }
}

//! The Raft log on RocksDB.
//!
//! Appends are written to RocksDB without a sync and handed to a flusher
//! thread; the flusher syncs the WAL once for every append queued behind it
//! and only then tells Raft the entries are durable. Under load one fsync
//! covers many appends (group commit); an append is never reported durable
//! before its fsync has returned.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use rocksdb::WriteBatch;
use utopia_raft::event;
use utopia_raft::openraft_api::{
    EntryOf, IOFlushed, LogIdOf, LogState, RaftEntry, RaftLogReader, RaftLogStorage, VoteOf,
};
use utopia_raft::TypeConfig;

use crate::keys::{self, raft_meta, Cf};
use crate::{Db, StoreError};

type Entry = EntryOf<TypeConfig>;

/// Appends waiting for their fsync, at most. `append` waits when the queue
/// is full, which holds Raft back instead of growing memory.
const FLUSH_QUEUE_MAX: usize = 4096;

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    flusher: Arc<tokio::sync::mpsc::Sender<IOFlushed<TypeConfig>>>,
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
        Self {
            db,
            flusher: Arc::new(tx),
        }
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
        self.db
            .db
            .put_cf_opt(self.db.cf(Cf::RaftMeta), key, bytes, &opts)?;
        Ok(())
    }

    fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<Entry, StoreError> {
        let entry: Entry = event::decode(bytes)
            .map_err(|e| StoreError::corrupt(Cf::RaftLog, key, e.to_string()))?;
        if keys::parse_u64_key(key) != Some(entry.index()) {
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
            Some(db) => db.sync_wal(),
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(x) => *x,
            std::ops::Bound::Excluded(x) => x.saturating_add(1),
            std::ops::Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let it = self.db.db.iterator_cf(
            self.db.cf(Cf::RaftLog),
            rocksdb::IteratorMode::From(&keys::u64_key(start), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(StoreError::from)?;
            let index = keys::parse_u64_key(&k)
                .ok_or_else(|| StoreError::corrupt(Cf::RaftLog, &k, "bad index"))?;
            if !range.contains(&index) {
                break;
            }
            out.push(Self::decode_entry(&k, &v)?);
        }
        Ok(out)
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
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> =
            self.get_meta(raft_meta::LAST_PURGED)?;
        let last_log_id = last_log_id.or(last_purged_log_id);
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

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Not synced: a lost committed id is recomputed by Raft; it only
        // lets a restarted node apply sooner.
        let bytes = event::encode(&committed).map_err(|e| io::Error::other(e.to_string()))?;
        self.db
            .db
            .put_cf(self.db.cf(Cf::RaftMeta), raft_meta::COMMITTED, bytes)
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<TypeConfig>>>(raft_meta::COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(Cf::RaftLog);
        for entry in entries {
            let bytes = event::encode(&entry).map_err(|e| io::Error::other(e.to_string()))?;
            batch.put_cf(cf, keys::u64_key(entry.index()), bytes);
        }
        // Written (readable) now; durable once the flusher's sync returns.
        self.db.db.write(batch).map_err(StoreError::from)?;
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
        self.db
            .db
            .delete_range_cf(
                self.db.cf(Cf::RaftLog),
                keys::u64_key(from),
                keys::u64_key(u64::MAX),
            )
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = event::encode(&log_id).map_err(|e| io::Error::other(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(Cf::RaftMeta), raft_meta::LAST_PURGED, bytes);
        batch.delete_range_cf(
            self.db.cf(Cf::RaftLog),
            keys::u64_key(0),
            keys::u64_key(log_id.index() + 1),
        );
        self.db.db.write(batch).map_err(StoreError::from)?;
        Ok(())
    }
}

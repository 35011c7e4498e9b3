//! Reads for the API: key ranges (now or at a past revision), the change
//! feed for watches, leases and documents.
//!
//! Reads go straight to RocksDB; whether they are linearizable is decided by
//! the caller (a Raft read barrier before the read), not here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::broadcast;
use utopia_raft::event::{self, Bytes, KeyValue, RangeResult};

use crate::apply::{
    range_bounds, ChangeRecord, CommandRecord, HistoryRecord, IngestEffects, IngestOwners,
    IngestTotals, LeaseRecord, StateRead,
};

/// The part of a dedupe record reads need.
#[derive(Deserialize)]
struct DedupeSeen {
    committed_ms: u64,
}
use crate::keys::{self, meta, Cf, Collection, DeviceIndex};
use crate::{Db, StoreError};

/// Key changes applied together, in revision order.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    /// The highest revision in `changes`.
    pub revision: i64,
    pub changes: Vec<(i64, ChangeRecord)>,
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

/// A lease and the keys attached to it.
pub type LeaseInfo = (LeaseRecord, Vec<Vec<u8>>);

/// One page of documents.
#[derive(Debug, Clone, Default)]
pub struct DocPage {
    /// (id, JSON text).
    pub documents: Vec<(String, String)>,
    /// Resume after this token; `None` at the end.
    pub next_page_token: Option<String>,
}

#[derive(Clone)]
pub struct Reader {
    db: Db,
    changes: broadcast::Sender<Arc<WatchBatch>>,
    ingest: broadcast::Sender<Arc<IngestEffects>>,
    /// Moves whenever the auth state changes (see [`Reader::auth_generation`]).
    auth_generation: Arc<std::sync::atomic::AtomicU64>,
}

fn dec<T: serde::de::DeserializeOwned>(cf: Cf, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    event::decode(bytes).map_err(|e| StoreError::corrupt(cf, key, e.to_string()))
}

impl Reader {
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
        }
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

    /// The members that own topics now.
    pub fn ingest_owners(&self) -> Result<IngestOwners, StoreError> {
        match self.db.get(Cf::Ingest, keys::ingest::OWNERS)? {
            Some(b) => dec(Cf::Ingest, keys::ingest::OWNERS, &b),
            None => Ok(IngestOwners::default()),
        }
    }

    /// Cluster-wide ingest counts.
    pub fn ingest_totals(&self) -> Result<IngestTotals, StoreError> {
        match self.db.get(Cf::Ingest, keys::ingest::TOTALS)? {
            Some(b) => dec(Cf::Ingest, keys::ingest::TOTALS, &b),
            None => Ok(IngestTotals::default()),
        }
    }

    /// The weight each member asked for in topic ownership.
    pub fn ingest_weights(&self) -> Result<BTreeMap<u64, u32>, StoreError> {
        let start = [keys::ingest::WEIGHT_PREFIX];
        let end = [keys::ingest::WEIGHT_PREFIX + 1];
        let mut out = BTreeMap::new();
        for item in self.db.scan(Cf::Ingest, &start, Some(&end)) {
            let (k, v) = item?;
            let node = keys::parse_u64_key(&k[1..])
                .ok_or_else(|| StoreError::corrupt(Cf::Ingest, &k, "bad weight key"))?;
            out.insert(node, dec(Cf::Ingest, &k, &v)?);
        }
        Ok(out)
    }

    /// Whether a message with this digest was committed at or after
    /// `since_ms` (and is still remembered).
    pub fn ingest_committed_since(&self, digest: &[u8], since_ms: u64) -> Result<bool, StoreError> {
        let key = keys::ingest::dedupe_key(digest);
        Ok(match self.db.get(Cf::Ingest, &key)? {
            Some(b) => {
                let rec: DedupeSeen = dec(Cf::Ingest, &key, &b)?;
                rec.committed_ms >= since_ms
            }
            None => false,
        })
    }

    /// A command by id.
    pub fn command(&self, id: u64) -> Result<Option<CommandRecord>, StoreError> {
        let key = keys::commands::record_key(id);
        match self.db.get(Cf::Commands, &key)? {
            Some(b) => Ok(Some(dec(Cf::Commands, &key, &b)?)),
            None => Ok(None),
        }
    }

    /// Pending commands in id order, at most `max`.
    pub fn pending_commands(&self, max: usize) -> Result<Vec<CommandRecord>, StoreError> {
        let start = [keys::commands::PENDING_PREFIX];
        let end = [keys::commands::PENDING_PREFIX + 1];
        let mut out = Vec::new();
        for item in self.db.scan(Cf::Commands, &start, Some(&end)) {
            if out.len() >= max {
                break;
            }
            let (k, _) = item?;
            let id = keys::parse_u64_key(&k[1..])
                .ok_or_else(|| StoreError::corrupt(Cf::Commands, &k, "bad pending key"))?;
            if let Some(c) = self.command(id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn meta_i64(&self, key: &[u8]) -> Result<i64, StoreError> {
        match self.db.get(Cf::SmMeta, key)? {
            Some(b) => dec(Cf::SmMeta, key, &b),
            None => Ok(0),
        }
    }

    /// The current revision and the compacted revision.
    pub fn revisions(&self) -> Result<(i64, i64), StoreError> {
        Ok((
            self.meta_i64(meta::REVISION)?,
            self.meta_i64(meta::COMPACT_REVISION)?,
        ))
    }

    pub fn db_size_bytes(&self) -> u64 {
        self.db.size_bytes()
    }

    /// Keys in the range at `revision` (0: now), at most `limit` of them
    /// (0: no limit).
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        limit: usize,
        revision: i64,
        keys_only: bool,
        count_only: bool,
    ) -> Result<RangeResult, ReadError> {
        let (current, compacted) = self.revisions()?;
        let (start, end) = range_bounds(key, range_end);
        let mut kvs = Vec::new();
        let mut count = 0i64;
        let mut keep = |mut kv: KeyValue| {
            count += 1;
            if !count_only && (limit == 0 || kvs.len() < limit) {
                if keys_only {
                    kv.value = Bytes::new();
                }
                kvs.push(kv);
            }
        };
        if revision == 0 || revision == current {
            for item in self.db.scan(Cf::Kv, &start, end.as_deref()) {
                let (k, v) = item?;
                keep(dec(Cf::Kv, &k, &v)?);
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
            // `revision` is its last record at or below it.
            let mut pending: Option<HistoryRecord> = None;
            let mut pending_key: Vec<u8> = Vec::new();
            for item in self.db.scan(Cf::KvHistory, &hstart, hend.as_deref()) {
                let (k, v) = item?;
                let (user_key, rev) = keys::parse_history_key(&k)
                    .ok_or_else(|| StoreError::corrupt(Cf::KvHistory, &k, "bad key"))?;
                if user_key != pending_key {
                    if let Some(rec) = pending.take() {
                        if !rec.deleted {
                            keep(rec.kv);
                        }
                    }
                    pending_key = user_key;
                }
                if rev <= revision {
                    pending = Some(dec(Cf::KvHistory, &k, &v)?);
                }
            }
            if let Some(rec) = pending.take() {
                if !rec.deleted {
                    keep(rec.kv);
                }
            }
        }
        let more = !count_only && (kvs.len() as i64) < count;
        Ok(RangeResult { kvs, more, count })
    }

    /// A key's last state strictly before `revision`, if it existed then.
    pub fn prev_kv(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>, StoreError> {
        let start = keys::history_key(key, 0);
        let end = keys::history_key(key, revision);
        let mut last = None;
        for item in self.db.scan(Cf::KvHistory, &start, Some(&end)) {
            let (k, v) = item?;
            last = Some(dec::<HistoryRecord>(Cf::KvHistory, &k, &v)?);
        }
        Ok(last.filter(|r| !r.deleted).map(|r| r.kv))
    }

    /// Receives every batch of key changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchBatch>> {
        self.changes.subscribe()
    }

    /// Changes with revision >= `from`, in order, at most `max` of them.
    /// Fails if `from` has been compacted.
    pub fn changes_from(
        &self,
        from: i64,
        max: usize,
    ) -> Result<Vec<(i64, ChangeRecord)>, ReadError> {
        let (_, compacted) = self.revisions()?;
        if from < compacted {
            return Err(ReadError::Compacted {
                requested: from,
                compacted,
            });
        }
        let mut out = Vec::new();
        for item in self
            .db
            .scan(Cf::KvChanges, &keys::change_key(from, 0), None)
        {
            if out.len() >= max {
                break;
            }
            let (k, v) = item?;
            let (rev, _) = keys::parse_change_key(&k)
                .ok_or_else(|| StoreError::corrupt(Cf::KvChanges, &k, "bad key"))?;
            out.push((rev, dec(Cf::KvChanges, &k, &v)?));
        }
        Ok(out)
    }

    /// A lease and the keys attached to it.
    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>, StoreError> {
        let key = keys::u64_key(id as u64);
        let Some(b) = self.db.get(Cf::Leases, &key)? else {
            return Ok(None);
        };
        let lease: LeaseRecord = dec(Cf::Leases, &key, &b)?;
        let end = keys::prefix_end(&key);
        let mut attached = Vec::new();
        for item in self.db.scan(Cf::LeaseKeys, &key, end.as_deref()) {
            let (k, _) = item?;
            attached.push(k[8..].to_vec());
        }
        Ok(Some((lease, attached)))
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
            let id = keys::parse_u64_key(k.get(8..).unwrap_or_default())
                .ok_or_else(|| StoreError::corrupt(Cf::LeaseDeadlines, &k, "bad key"))?;
            out.push(id as i64);
        }
        Ok(out)
    }

    pub fn lease_exists(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get(Cf::Leases, &keys::u64_key(id as u64))?
            .is_some())
    }

    pub fn get_document(
        &self,
        collection: Collection,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let cf = collection.cf();
        match self.db.get(cf, id.as_bytes())? {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| StoreError::corrupt(cf, id.as_bytes(), "not UTF-8")),
        }
    }

    /// Lists documents in id order, optionally only devices matching an
    /// index, starting after `page_token`.
    pub fn list_documents(
        &self,
        collection: Collection,
        filter: Option<(DeviceIndex, &str)>,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<DocPage, StoreError> {
        let limit = limit.max(1);
        let after = |id: &str| {
            let mut k = id.as_bytes().to_vec();
            k.push(0);
            k
        };
        let mut page = DocPage::default();
        let mut last_id = None;
        match filter {
            None => {
                let cf = collection.cf();
                let start = page_token.map(after).unwrap_or_default();
                for item in self.db.scan(cf, &start, None) {
                    let (k, v) = item?;
                    if page.documents.len() == limit {
                        page.next_page_token = last_id.take();
                        break;
                    }
                    let id = String::from_utf8(k)
                        .map_err(|e| StoreError::corrupt(cf, e.as_bytes(), "id not UTF-8"))?;
                    let json = String::from_utf8(v)
                        .map_err(|_| StoreError::corrupt(cf, id.as_bytes(), "not UTF-8"))?;
                    last_id = Some(id.clone());
                    page.documents.push((id, json));
                }
            }
            Some((index, value)) => {
                let prefix = keys::device_index_prefix(index, value);
                let mut start = prefix.clone();
                if let Some(t) = page_token {
                    start.extend_from_slice(&after(t));
                }
                let end = keys::prefix_end(&prefix);
                for item in self.db.scan(Cf::DeviceIndex, &start, end.as_deref()) {
                    let (k, _) = item?;
                    if page.documents.len() == limit {
                        page.next_page_token = last_id.take();
                        break;
                    }
                    let id = String::from_utf8(k[prefix.len()..].to_vec())
                        .map_err(|_| StoreError::corrupt(Cf::DeviceIndex, &k, "id not UTF-8"))?;
                    let Some(json) = self.get_document(Collection::Devices, &id)? else {
                        return Err(StoreError::corrupt(
                            Cf::DeviceIndex,
                            &k,
                            "indexes a missing device",
                        ));
                    };
                    last_id = Some(id.clone());
                    page.documents.push((id, json));
                }
            }
        }
        Ok(page)
    }
}

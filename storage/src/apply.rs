//! Applying events: event + current state → writes.
//!
//! This module is pure. It reads through [`StateRead`] and records every
//! write in an [`Applier`]'s overlay, which later reads in the same batch
//! see; it never touches RocksDB or the clock. The state machine commits the
//! overlay in one atomic write batch together with the applied log id, and
//! the unit tests below run it against an in-memory map.
//!
//! Determinism is the contract: the same events applied to the same state
//! produce the same bytes on every replica. Maps are `BTreeMap`s, JSON objects
//! are ordered, and time comes from the event (`Request::at_ms`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utopia_raft::event::{
    self, Bytes, Compare, CompareOp, CompareTarget, ConfigVersion, DeleteOp, DeviceData, Event,
    FellowState, KeyValue, Outcome, PutOp, RangeOp, RangeResult, Rejection, Request, Response,
    StatCounter, StepResult, TxnOp, TxnStep,
};

use crate::keys::{self, meta, Cf, DeviceIndex};
use crate::StoreError;

mod auth;
pub mod ingest;
pub use ingest::{CommandRecord, CommandState, IngestEffects, IngestOwners, IngestTotals};

/// Read access to the state the events are applied to.
pub trait StateRead {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries of `cf` with `start <= key < end` (no end: to the last key),
    /// in key order.
    fn scan<'a>(&'a self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'a>;
}

pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// Key-value pairs of one column family, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One change to the key space, as the watch stream reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub deleted: bool,
    /// For a delete: the key, `mod_revision` = the delete's revision, the
    /// rest zero.
    pub kv: KeyValue,
    /// The revision of the key's history record this change supersedes
    /// (its previous `mod_revision`), if it existed. Compaction deletes that
    /// record by key instead of searching the history for it. Absent in
    /// records written before it was kept: such a record's predecessor
    /// stays in the history (unreachable, since reads below the compacted
    /// revision are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_revision: Option<i64>,
}

/// A key's state at one revision, in `kv_history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub deleted: bool,
    pub kv: KeyValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl_s: i64,
    pub granted_ms: u64,
}

impl LeaseRecord {
    pub fn deadline_ms(&self) -> u64 {
        self.granted_ms
            .saturating_add((self.ttl_s.max(0) as u64).saturating_mul(1000))
    }
}

/// Limits the applier enforces on events that would otherwise grow without
/// bound. They are part of the replicated behaviour: every replica must use
/// the same values.
#[derive(Debug, Clone, Copy)]
pub struct ApplyLimits {
    /// Days of per-day statistics kept in a stats document.
    pub stat_days_max: usize,
}

impl Default for ApplyLimits {
    fn default() -> Self {
        Self { stat_days_max: 366 }
    }
}

/// Applies a batch of events over a base state, collecting the writes.
pub struct Applier<'a, S: StateRead + ?Sized> {
    base: &'a S,
    overlay: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    /// Device and zone documents written in this batch, decoded: an ingest
    /// batch updates each device many times, and each document is parsed
    /// once and encoded once (into the overlay, when the batch finishes).
    /// Nothing in the applier reads these column families but through
    /// [`Applier::get_doc`].
    docs: BTreeMap<Cf, HashMap<String, Map<String, Value>>>,
    changes: Vec<(i64, ChangeRecord)>,
    limits: ApplyLimits,
    effects: IngestEffects,
}

/// The writes an applier produced: `None` deletes the key.
pub type Writes = BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>;

fn dec<T: serde::de::DeserializeOwned>(cf: Cf, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    event::decode(bytes).map_err(|e| StoreError::corrupt(cf, key, e.to_string()))
}

/// A document as stored: JSON, keys in order.
fn doc_bytes(doc: Map<String, Value>) -> Vec<u8> {
    // Serializing a JSON value into a Vec cannot fail.
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
}

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own plain data types into a Vec cannot fail.
    event::encode(value).unwrap_or_default()
}

/// The key bounds etcd's range convention describes: an empty `range_end`
/// is the key alone, `[0]` is every key from `key` on, anything else is
/// `[key, range_end)`.
pub(crate) fn range_bounds(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        (key.to_vec(), Some(end))
    } else if range_end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(range_end.to_vec()))
    }
}

impl<'a, S: StateRead + ?Sized> Applier<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Self::with_limits(base, ApplyLimits::default())
    }

    pub fn with_limits(base: &'a S, limits: ApplyLimits) -> Self {
        Self {
            base,
            overlay: BTreeMap::new(),
            docs: BTreeMap::new(),
            changes: Vec::new(),
            limits,
            effects: IngestEffects::default(),
        }
    }

    /// The writes and the key changes (by revision, in order) of everything
    /// applied so far.
    pub fn finish(self) -> (Writes, Vec<(i64, ChangeRecord)>) {
        let (writes, changes, _) = self.finish_with_effects();
        (writes, changes)
    }

    /// Like [`Applier::finish`], with what the events did to MQTT ingest
    /// and device commands.
    pub fn finish_with_effects(mut self) -> (Writes, Vec<(i64, ChangeRecord)>, IngestEffects) {
        for (cf, docs) in std::mem::take(&mut self.docs) {
            for (id, doc) in docs {
                self.overlay
                    .insert((cf, id.into_bytes()), Some(doc_bytes(doc)));
            }
        }
        (self.overlay, self.changes, self.effects)
    }

    // ------------------------------------------------------------ state access

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(&(cf, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(cf, key),
        }
    }

    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert((cf, key), Some(value));
    }

    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.overlay.insert((cf, key), None);
    }

    fn get_dec<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(cf, key)?.map(|b| dec(cf, key, &b)).transpose()
    }

    fn get_i64(&self, key: &[u8]) -> Result<i64, StoreError> {
        Ok(self.get_dec::<i64>(Cf::SmMeta, key)?.unwrap_or(0))
    }

    /// Entries of `cf` in `[start, end)`, base merged with the overlay, up to
    /// `limit` entries (0: no limit).
    pub fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .overlay
            .range((cf, start.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && end.is_none_or(|e| k.as_slice() < e))
            .map(|((_, k), v)| (k, v))
            .collect();
        let mut out = Vec::new();
        let mut pi = pending.into_iter().peekable();
        let mut base = self.base.scan(cf, start, end).peekable();
        loop {
            if limit != 0 && out.len() >= limit {
                break;
            }
            let next_base = match base.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => {
                    if let Some(Err(e)) = base.next() {
                        return Err(e);
                    }
                    unreachable!("peeked an error")
                }
                None => None,
            };
            let next_pending = pi.peek().map(|(k, _)| (*k).clone());
            match (next_base, next_pending) {
                (None, None) => break,
                (Some(bk), Some(pk)) if pk <= bk => {
                    if pk == bk {
                        base.next();
                    }
                    let (k, v) = pi.next().expect("peeked");
                    if let Some(v) = v {
                        out.push((k.clone(), v.clone()));
                    }
                }
                (None, Some(_)) => {
                    let (k, v) = pi.next().expect("peeked");
                    if let Some(v) = v {
                        out.push((k.clone(), v.clone()));
                    }
                }
                (Some(_), _) => {
                    if let Some(Ok(kv)) = base.next() {
                        out.push(kv);
                    }
                }
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ entry point

    /// Applies one event.
    pub fn apply(&mut self, req: &Request) -> Result<Response, StoreError> {
        // An event from a newer build cannot be applied faithfully: stop
        // rather than diverge from the replicas that understand it.
        if req.version > event::EVENT_VERSION {
            return Err(StoreError::Io(format!(
                "event version {} is newer than this build applies ({}); upgrade this node",
                req.version,
                event::EVENT_VERSION
            )));
        }
        let outcome = match &req.event {
            Event::Put(op) => self.apply_single(req, TxnStep::Put(op.clone()))?,
            Event::Delete(op) => self.apply_single(req, TxnStep::Delete(op.clone()))?,
            Event::Txn(txn) => self.apply_txn(req, txn)?,
            Event::Compact { revision } => self.apply_compact(*revision)?,
            Event::LeaseGrant { id, ttl_s } => self.apply_lease_grant(req.at_ms, *id, *ttl_s)?,
            Event::LeaseRevoke { id } => self.apply_lease_revoke(*id, None)?,
            Event::LeaseExpired { id } => self.apply_lease_revoke(*id, Some(req.at_ms))?,
            Event::DeviceDataUpdated(d) => self.apply_device_data(req.at_ms, d)?,
            Event::DeviceRegistered {
                host,
                zone,
                class,
                device_id,
            } => {
                let id = self
                    .register_device(req.at_ms, host, zone, class, device_id, true)?
                    .0;
                Outcome::Device { id }
            }
            Event::FellowStateChanged(f) => self.apply_fellow(req.at_ms, f)?,
            Event::DbServerRegistered { host, port, kind } => {
                self.apply_db_server(req.at_ms, host, *port, kind, None)?
            }
            Event::DbServerProblematic {
                host,
                port,
                kind,
                reason,
            } => self.apply_db_server(req.at_ms, host, *port, kind, Some(reason))?,
            Event::ConfigProposed(c) => self.apply_config_proposed(req.at_ms, c)?,
            Event::ConfigAccepted {
                name,
                version,
                hash,
            } => self.apply_config_decision(req.at_ms, name, *version, hash, None)?,
            Event::ConfigRejected {
                name,
                version,
                hash,
                reason,
            } => self.apply_config_decision(req.at_ms, name, *version, hash, Some(reason))?,
            Event::StatIncremented {
                id,
                kind,
                counter,
                by,
            } => self.apply_stat(req.at_ms, id, kind, *counter, *by)?,
            Event::IngestWeight { node_id, weight } => {
                self.apply_ingest_weight(*node_id, *weight)?
            }
            Event::IngestOwnersChanged {
                epoch,
                members,
                dedupe_window_ms,
            } => self.apply_owners_changed(*epoch, members, *dedupe_window_ms)?,
            Event::IngestBatch {
                epoch,
                proposer,
                items,
            } => self.apply_ingest_batch(req.at_ms, *epoch, *proposer, items)?,
            Event::CommandIssued {
                device,
                post_type,
                json,
                attempts_max,
            } => self.apply_command_issued(req.at_ms, device, post_type, json, *attempts_max)?,
            Event::CommandAttempted { id, attempt } => {
                self.apply_command_attempted(req.at_ms, *id, *attempt)?
            }
            Event::CommandFailed { id, reason } => {
                self.apply_command_failed(req.at_ms, *id, reason)?
            }
            Event::Auth(change) => self.apply_auth(change)?,
        };
        Ok(Response {
            revision: self.get_i64(meta::REVISION)?,
            outcome,
        })
    }

    // ------------------------------------------------------------ key-value

    fn apply_single(&mut self, _req: &Request, step: TxnStep) -> Result<Outcome, StoreError> {
        if let Some(rej) = self.check_steps(std::slice::from_ref(&step))? {
            return Ok(Outcome::Rejected(rej));
        }
        let rev = self.get_i64(meta::REVISION)?;
        let (mut results, wrote) = self.run_steps(rev + 1, std::slice::from_ref(&step))?;
        if wrote {
            self.put(Cf::SmMeta, meta::REVISION.to_vec(), enc(&(rev + 1)));
        }
        Ok(match results.pop() {
            Some(StepResult::Put { prev }) => Outcome::Put { prev },
            Some(StepResult::Delete { deleted, prev }) => Outcome::Delete { deleted, prev },
            _ => Outcome::Done,
        })
    }

    fn apply_txn(&mut self, _req: &Request, txn: &TxnOp) -> Result<Outcome, StoreError> {
        let mut succeeded = true;
        for cmp in &txn.compares {
            if !self.compare(cmp)? {
                succeeded = false;
                break;
            }
        }
        let steps = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        if let Some(rej) = self.check_steps(steps)? {
            return Ok(Outcome::Rejected(rej));
        }
        let rev = self.get_i64(meta::REVISION)?;
        let (results, wrote) = self.run_steps(rev + 1, steps)?;
        if wrote {
            self.put(Cf::SmMeta, meta::REVISION.to_vec(), enc(&(rev + 1)));
        }
        Ok(Outcome::Txn { succeeded, results })
    }

    /// Checks what must hold before any step of a write runs, so that a
    /// rejected request writes nothing: leases exist, no key is written
    /// twice in one revision.
    fn check_steps(&self, steps: &[TxnStep]) -> Result<Option<Rejection>, StoreError> {
        let mut put_keys = std::collections::BTreeSet::new();
        for step in steps {
            if let TxnStep::Put(p) = step {
                if p.lease != 0
                    && self
                        .get(Cf::Leases, &keys::u64_key(p.lease as u64))?
                        .is_none()
                {
                    return Ok(Some(Rejection::LeaseNotFound(p.lease)));
                }
                if !put_keys.insert(p.key.to_vec()) {
                    return Ok(Some(Rejection::DuplicateKey(
                        String::from_utf8_lossy(&p.key).into_owned(),
                    )));
                }
            }
        }
        for step in steps {
            if let TxnStep::Delete(d) = step {
                let (start, end) = range_bounds(&d.key, &d.range_end);
                if let Some(k) = put_keys
                    .iter()
                    .find(|k| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                {
                    return Ok(Some(Rejection::DuplicateKey(
                        String::from_utf8_lossy(k).into_owned(),
                    )));
                }
            }
        }
        Ok(None)
    }

    fn run_steps(
        &mut self,
        rev: i64,
        steps: &[TxnStep],
    ) -> Result<(Vec<StepResult>, bool), StoreError> {
        let mut results = Vec::with_capacity(steps.len());
        let mut sub = 0u32;
        for step in steps {
            results.push(match step {
                TxnStep::Range(r) => StepResult::Range(self.range_current(r)?),
                TxnStep::Put(p) => self.put_key(rev, &mut sub, p)?,
                TxnStep::Delete(d) => self.delete_range(rev, &mut sub, d)?,
            });
        }
        Ok((results, sub > 0))
    }

    fn current(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.get_dec(Cf::Kv, key)
    }

    fn record_change(
        &mut self,
        rev: i64,
        sub: &mut u32,
        deleted: bool,
        kv: KeyValue,
        prev_revision: Option<i64>,
    ) {
        let hist = HistoryRecord {
            deleted,
            kv: kv.clone(),
        };
        self.put(Cf::KvHistory, keys::history_key(&kv.key, rev), enc(&hist));
        let change = ChangeRecord {
            deleted,
            kv,
            prev_revision,
        };
        self.put(
            Cf::KvChanges,
            keys::change_key(rev, *sub).to_vec(),
            enc(&change),
        );
        self.changes.push((rev, change));
        *sub += 1;
    }

    fn put_key(&mut self, rev: i64, sub: &mut u32, op: &PutOp) -> Result<StepResult, StoreError> {
        let prev = self.current(&op.key)?;
        let kv = KeyValue {
            key: op.key.clone(),
            value: op.value.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: op.lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != op.lease {
                self.delete(Cf::LeaseKeys, keys::lease_key(p.lease, &p.key));
            }
        }
        if op.lease != 0 {
            self.put(
                Cf::LeaseKeys,
                keys::lease_key(op.lease, &op.key),
                Vec::new(),
            );
        }
        self.put(Cf::Kv, op.key.to_vec(), enc(&kv));
        let prev_revision = prev.as_ref().map(|p| p.mod_revision);
        self.record_change(rev, sub, false, kv, prev_revision);
        Ok(StepResult::Put {
            prev: if op.prev_kv { prev } else { None },
        })
    }

    fn delete_keys(&mut self, rev: i64, sub: &mut u32, victims: Vec<KeyValue>) {
        for kv in &victims {
            if kv.lease != 0 {
                self.delete(Cf::LeaseKeys, keys::lease_key(kv.lease, &kv.key));
            }
            self.delete(Cf::Kv, kv.key.to_vec());
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev,
                ..Default::default()
            };
            self.record_change(rev, sub, true, tomb, Some(kv.mod_revision));
        }
    }

    fn delete_range(
        &mut self,
        rev: i64,
        sub: &mut u32,
        op: &DeleteOp,
    ) -> Result<StepResult, StoreError> {
        let (start, end) = range_bounds(&op.key, &op.range_end);
        let victims = self
            .scan(Cf::Kv, &start, end.as_deref(), 0)?
            .into_iter()
            .map(|(k, v)| dec::<KeyValue>(Cf::Kv, &k, &v))
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = victims.len() as i64;
        let prev = if op.prev_kv {
            victims.clone()
        } else {
            Vec::new()
        };
        self.delete_keys(rev, sub, victims);
        Ok(StepResult::Delete { deleted, prev })
    }

    fn range_current(&self, op: &RangeOp) -> Result<RangeResult, StoreError> {
        let (start, end) = range_bounds(&op.key, &op.range_end);
        let all = self.scan(Cf::Kv, &start, end.as_deref(), 0)?;
        let count = all.len() as i64;
        let limit = if op.limit > 0 {
            op.limit as usize
        } else {
            usize::MAX
        };
        let mut kvs = Vec::new();
        if !op.count_only {
            for (k, v) in all.iter().take(limit) {
                let mut kv: KeyValue = dec(Cf::Kv, k, v)?;
                if op.keys_only {
                    kv.value = Bytes::new();
                }
                kvs.push(kv);
            }
        }
        Ok(RangeResult {
            more: (count as usize) > limit,
            count,
            kvs,
        })
    }

    fn compare(&self, cmp: &Compare) -> Result<bool, StoreError> {
        let (start, end) = range_bounds(&cmp.key, &cmp.range_end);
        let targets: Vec<Option<KeyValue>> = if cmp.range_end.is_empty() {
            vec![self.current(&cmp.key)?]
        } else {
            let found = self.scan(Cf::Kv, &start, end.as_deref(), 0)?;
            if found.is_empty() {
                return Ok(false);
            }
            found
                .iter()
                .map(|(k, v)| dec(Cf::Kv, k, v).map(Some))
                .collect::<Result<_, _>>()?
        };
        for kv in targets {
            let ord = match (&cmp.target, &kv) {
                (CompareTarget::Value(want), Some(kv)) => kv.value[..].cmp(&want[..]),
                // A missing key has no value: every value comparison fails.
                (CompareTarget::Value(_), None) => return Ok(false),
                (CompareTarget::Version(n), kv) => kv.as_ref().map_or(0, |k| k.version).cmp(n),
                (CompareTarget::CreateRevision(n), kv) => {
                    kv.as_ref().map_or(0, |k| k.create_revision).cmp(n)
                }
                (CompareTarget::ModRevision(n), kv) => {
                    kv.as_ref().map_or(0, |k| k.mod_revision).cmp(n)
                }
                (CompareTarget::Lease(n), kv) => kv.as_ref().map_or(0, |k| k.lease).cmp(n),
            };
            let ok = match cmp.op {
                CompareOp::Equal => ord.is_eq(),
                CompareOp::NotEqual => ord.is_ne(),
                CompareOp::Greater => ord.is_gt(),
                CompareOp::Less => ord.is_lt(),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn apply_compact(&mut self, revision: i64) -> Result<Outcome, StoreError> {
        let compacted = self.get_i64(meta::COMPACT_REVISION)?;
        let current = self.get_i64(meta::REVISION)?;
        if revision <= compacted {
            return Ok(Outcome::Rejected(Rejection::Compacted {
                requested: revision,
                compacted,
            }));
        }
        if revision > current {
            return Ok(Outcome::Rejected(Rejection::FutureRevision {
                requested: revision,
                current,
            }));
        }
        // What stays in the history is each key's newest state at or below
        // `revision` (unless it is a deletion) and everything above it.
        // Every change at or below `revision` drops the record it superseded
        // (by key: no history search per change); every change below
        // `revision` also leaves the change feed, and a deletion's own
        // record goes with it (at `revision` the key is absent, or a later
        // change covers it).
        let changes = self.scan(
            Cf::KvChanges,
            &keys::change_key(compacted, 0),
            Some(&keys::change_key(revision + 1, 0)),
            0,
        )?;
        for (ck, cv) in changes {
            let (rev, _) = keys::parse_change_key(&ck)
                .ok_or_else(|| StoreError::corrupt(Cf::KvChanges, &ck, "bad change key"))?;
            let change: ChangeRecord = dec(Cf::KvChanges, &ck, &cv)?;
            if let Some(prev) = change.prev_revision {
                self.delete(Cf::KvHistory, keys::history_key(&change.kv.key, prev));
            }
            if rev == revision {
                continue;
            }
            self.delete(Cf::KvChanges, ck);
            if change.deleted {
                self.delete(Cf::KvHistory, keys::history_key(&change.kv.key, rev));
            }
        }
        self.put(Cf::SmMeta, meta::COMPACT_REVISION.to_vec(), enc(&revision));
        Ok(Outcome::Done)
    }

    // ------------------------------------------------------------ leases

    fn apply_lease_grant(
        &mut self,
        at_ms: u64,
        id: i64,
        ttl_s: i64,
    ) -> Result<Outcome, StoreError> {
        if id <= 0 || ttl_s <= 0 {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "lease id and ttl must be positive (id {id}, ttl {ttl_s}s)"
            ))));
        }
        let key = keys::u64_key(id as u64);
        if self.get(Cf::Leases, &key)?.is_some() {
            return Ok(Outcome::Rejected(Rejection::LeaseExists(id)));
        }
        let lease = LeaseRecord {
            id,
            ttl_s,
            granted_ms: at_ms,
        };
        self.put(
            Cf::LeaseDeadlines,
            keys::deadline_key(lease.deadline_ms(), id).to_vec(),
            Vec::new(),
        );
        self.put(Cf::Leases, key.to_vec(), enc(&lease));
        Ok(Outcome::Lease { id, ttl_s })
    }

    /// Revokes a lease and deletes its keys in one revision. With
    /// `expired_at_ms`, only if the lease's deadline has passed by then: a
    /// stale expiry proposal is rejected rather than cutting a lease short.
    fn apply_lease_revoke(
        &mut self,
        id: i64,
        expired_at_ms: Option<u64>,
    ) -> Result<Outcome, StoreError> {
        let key = keys::u64_key(id as u64);
        let Some(lease) = self.get_dec::<LeaseRecord>(Cf::Leases, &key)? else {
            return Ok(Outcome::Rejected(Rejection::LeaseNotFound(id)));
        };
        if let Some(at) = expired_at_ms {
            if at < lease.deadline_ms() {
                return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                    "lease {id} expires at {} ms, not yet at {at} ms",
                    lease.deadline_ms()
                ))));
            }
        }
        let prefix = keys::u64_key(id as u64);
        let end = keys::prefix_end(&prefix);
        let attached = self.scan(Cf::LeaseKeys, &prefix, end.as_deref(), 0)?;
        let mut victims = Vec::with_capacity(attached.len());
        for (lk, _) in attached {
            let user_key = &lk[8..];
            if let Some(kv) = self.current(user_key)? {
                victims.push(kv);
            }
            self.delete(Cf::LeaseKeys, lk);
        }
        if !victims.is_empty() {
            let rev = self.get_i64(meta::REVISION)? + 1;
            let mut sub = 0;
            self.delete_keys(rev, &mut sub, victims);
            self.put(Cf::SmMeta, meta::REVISION.to_vec(), enc(&rev));
        }
        self.delete(
            Cf::LeaseDeadlines,
            keys::deadline_key(lease.deadline_ms(), id).to_vec(),
        );
        self.delete(Cf::Leases, key.to_vec());
        Ok(Outcome::Done)
    }

    // ------------------------------------------------------------ documents

    /// The column families whose documents are kept decoded for the batch.
    fn doc_cached(cf: Cf) -> bool {
        matches!(cf, Cf::Devices | Cf::Zones)
    }

    fn get_doc(&self, cf: Cf, id: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        if let Some(doc) = self.docs.get(&cf).and_then(|d| d.get(id)) {
            return Ok(Some(doc.clone()));
        }
        match self.get(cf, id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => Ok(Some(m)),
                Ok(_) => Err(StoreError::corrupt(
                    cf,
                    id.as_bytes(),
                    "document is not a JSON object",
                )),
                Err(e) => Err(StoreError::corrupt(cf, id.as_bytes(), e.to_string())),
            },
        }
    }

    fn put_doc(&mut self, cf: Cf, id: &str, doc: Map<String, Value>) {
        if Self::doc_cached(cf) {
            self.docs.entry(cf).or_default().insert(id.to_string(), doc);
            return;
        }
        self.put(cf, id.as_bytes().to_vec(), doc_bytes(doc));
    }

    /// Registers a device in a zone if it is new there. Returns the device id
    /// and its document, which is written here only with `write_doc` (a
    /// caller that changes it further writes it once itself).
    fn register_device(
        &mut self,
        at_ms: u64,
        host: &str,
        zone: &str,
        class: &str,
        device_id: &str,
        write_doc: bool,
    ) -> Result<(String, Map<String, Value>), StoreError> {
        let id = device_doc_id(host, class, device_id);
        let mut doc = match self.get_doc(Cf::Devices, &id)? {
            Some(doc) => doc,
            None => {
                let mut doc = Map::new();
                doc.insert("id".into(), json!(id));
                doc.insert("host".into(), json!(host));
                doc.insert("class".into(), json!(class));
                doc.insert("device_id".into(), json!(device_id));
                doc.insert("zone".into(), Value::Null);
                doc.insert("data".into(), json!({}));
                doc.insert("last".into(), json!({}));
                doc.insert("commands".into(), json!({}));
                doc.insert("stats".into(), json!(format!("device/{id}")));
                doc.insert("first_seen_ms".into(), json!(at_ms));
                self.put(
                    Cf::DeviceIndex,
                    keys::device_index_key(DeviceIndex::Class, class, &id),
                    Vec::new(),
                );
                self.put(
                    Cf::DeviceIndex,
                    keys::device_index_key(DeviceIndex::Host, host, &id),
                    Vec::new(),
                );
                doc
            }
        };
        let old_zone = doc.get("zone").and_then(Value::as_str).map(str::to_string);
        if old_zone.as_deref() != Some(zone) {
            if let Some(old) = &old_zone {
                self.delete(
                    Cf::DeviceIndex,
                    keys::device_index_key(DeviceIndex::Zone, old, &id),
                );
                self.zone_membership(old, &id, false)?;
            }
            self.put(
                Cf::DeviceIndex,
                keys::device_index_key(DeviceIndex::Zone, zone, &id),
                Vec::new(),
            );
            self.zone_membership(zone, &id, true)?;
            doc.insert("zone".into(), json!(zone));
            doc.insert(
                "topic_focus".into(),
                json!(format!("/{host}/{zone}/{class}/{device_id}")),
            );
        }
        doc.insert("last_seen_ms".into(), json!(at_ms));
        if write_doc {
            self.put_doc(Cf::Devices, &id, doc.clone());
        }
        Ok((id, doc))
    }

    fn zone_membership(
        &mut self,
        zone: &str,
        device: &str,
        present: bool,
    ) -> Result<(), StoreError> {
        let mut doc = self.get_doc(Cf::Zones, zone)?.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("zone".into(), json!(zone));
            m.insert("devices".into(), json!([]));
            m
        });
        let mut devices: Vec<String> = doc
            .get("devices")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match (
            devices.binary_search_by(|d| d.as_str().cmp(device)),
            present,
        ) {
            (Err(pos), true) => devices.insert(pos, device.to_string()),
            (Ok(pos), false) => {
                devices.remove(pos);
            }
            _ => return Ok(()),
        }
        doc.insert("device_count".into(), json!(devices.len()));
        doc.insert("devices".into(), json!(devices));
        self.put_doc(Cf::Zones, zone, doc);
        Ok(())
    }

    fn apply_device_data(&mut self, at_ms: u64, d: &DeviceData) -> Result<Outcome, StoreError> {
        let value: Value = match serde_json::from_str(&d.json) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                    "device value is not JSON: {e}"
                ))))
            }
        };
        if d.post_type.is_empty() {
            return Ok(Outcome::Rejected(Rejection::Invalid(
                "empty post_type".into(),
            )));
        }
        let (id, mut doc) =
            self.register_device(at_ms, &d.host, &d.zone, &d.class, &d.device_id, false)?;
        let data = doc.entry("data").or_insert_with(|| json!({}));
        set_path(
            data,
            std::iter::once(d.post_type.as_str()).chain(d.path.iter().map(String::as_str)),
            value.clone(),
        );
        let last = doc.entry("last").or_insert_with(|| json!({}));
        if !last.is_object() {
            *last = json!({});
        }
        if let Value::Object(m) = last {
            m.insert(
                d.post_type.clone(),
                json!({ "path": d.path, "value": value, "at_ms": at_ms }),
            );
        }
        self.put_doc(Cf::Devices, &id, doc);
        Ok(Outcome::Device { id })
    }

    fn apply_fellow(&mut self, at_ms: u64, f: &FellowState) -> Result<Outcome, StoreError> {
        let id = f.node_id.to_string();
        let mut doc = self.get_doc(Cf::Fellows, &id)?.unwrap_or_default();
        doc.insert("id".into(), json!(f.node_id));
        doc.insert("host".into(), json!(f.host));
        doc.insert("addr".into(), json!(f.addr));
        doc.insert("active".into(), json!(f.active));
        doc.insert(
            "state".into(),
            serde_json::to_value(f.role).unwrap_or(Value::Null),
        );
        doc.insert("weight".into(), json!(f.weight));
        if f.active {
            doc.insert("last_active_ms".into(), json!(at_ms));
        }
        doc.insert("stats".into(), json!(format!("fellow/{id}")));
        self.put_doc(Cf::Fellows, &id, doc);
        Ok(Outcome::Done)
    }

    fn apply_db_server(
        &mut self,
        at_ms: u64,
        host: &str,
        port: u16,
        kind: &str,
        problem: Option<&String>,
    ) -> Result<Outcome, StoreError> {
        let id = format!("{host}:{port}:{kind}");
        let mut doc = self.get_doc(Cf::DbServers, &id)?.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("id".into(), json!(id));
            m.insert("host".into(), json!(host));
            m.insert("port".into(), json!(port));
            m.insert("type".into(), json!(kind));
            m.insert("first_seen_ms".into(), json!(at_ms));
            m
        });
        match problem {
            None => {
                doc.insert("state".into(), json!("ok"));
                doc.remove("reason");
            }
            Some(reason) => {
                doc.insert("state".into(), json!("problematic"));
                doc.insert("reason".into(), json!(reason));
            }
        }
        doc.insert("updated_ms".into(), json!(at_ms));
        self.put_doc(Cf::DbServers, &id, doc);
        Ok(Outcome::Done)
    }

    fn apply_config_proposed(
        &mut self,
        at_ms: u64,
        c: &ConfigVersion,
    ) -> Result<Outcome, StoreError> {
        let id = format!("{}@{}", c.name, c.version);
        if let Some(existing) = self.get_doc(Cf::XmlConfigs, &id)? {
            // Competing proposals for one name and version: the higher
            // weight wins, then the smaller hash, so every replica agrees.
            let w = existing.get("weight").and_then(Value::as_u64).unwrap_or(0);
            let h = existing.get("hash").and_then(Value::as_str).unwrap_or("");
            let state = existing.get("state").and_then(Value::as_str).unwrap_or("");
            let wins =
                (c.weight as u64, std::cmp::Reverse(c.hash.as_str())) > (w, std::cmp::Reverse(h));
            if state != "proposed" || !wins {
                return Ok(Outcome::Done);
            }
        }
        let mut doc = Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("name".into(), json!(c.name));
        doc.insert("type".into(), json!(c.kind));
        doc.insert("version".into(), json!(c.version));
        doc.insert("hash".into(), json!(c.hash));
        doc.insert("xml".into(), json!(c.xml));
        doc.insert("proposer".into(), json!(c.proposer));
        doc.insert("weight".into(), json!(c.weight));
        doc.insert("state".into(), json!("proposed"));
        doc.insert("proposed_ms".into(), json!(at_ms));
        self.put_doc(Cf::XmlConfigs, &id, doc);
        Ok(Outcome::Done)
    }

    fn apply_config_decision(
        &mut self,
        at_ms: u64,
        name: &str,
        version: u64,
        hash: &str,
        rejected: Option<&String>,
    ) -> Result<Outcome, StoreError> {
        let id = format!("{name}@{version}");
        let Some(mut doc) = self.get_doc(Cf::XmlConfigs, &id)? else {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "no configuration {id} was proposed"
            ))));
        };
        if doc.get("hash").and_then(Value::as_str) != Some(hash) {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "configuration {id} has another hash"
            ))));
        }
        match rejected {
            Some(reason) => {
                doc.insert("state".into(), json!("rejected"));
                doc.insert("reason".into(), json!(reason));
            }
            None => {
                // Earlier accepted versions of the same name are superseded.
                let prefix = format!("{name}@");
                let end = keys::prefix_end(prefix.as_bytes());
                for (k, v) in self.scan(Cf::XmlConfigs, prefix.as_bytes(), end.as_deref(), 0)? {
                    let Ok(Value::Object(mut other)) = serde_json::from_slice::<Value>(&v) else {
                        return Err(StoreError::corrupt(
                            Cf::XmlConfigs,
                            &k,
                            "document is not a JSON object",
                        ));
                    };
                    let other_version = other.get("version").and_then(Value::as_u64).unwrap_or(0);
                    if other_version < version
                        && other.get("state").and_then(Value::as_str) == Some("accepted")
                    {
                        other.insert("state".into(), json!("superseded"));
                        other.insert("decided_ms".into(), json!(at_ms));
                        self.put(Cf::XmlConfigs, k, doc_bytes(other));
                    }
                }
                doc.insert("state".into(), json!("accepted"));
            }
        }
        doc.insert("decided_ms".into(), json!(at_ms));
        self.put_doc(Cf::XmlConfigs, &id, doc);
        Ok(Outcome::Done)
    }

    fn apply_stat(
        &mut self,
        at_ms: u64,
        id: &str,
        kind: &str,
        counter: StatCounter,
        by: u64,
    ) -> Result<Outcome, StoreError> {
        let doc_id = format!("{kind}/{id}");
        let mut stats: StatsDoc = match self.get_doc(Cf::Stats, &doc_id)? {
            Some(m) => serde_json::from_value(Value::Object(m))
                .map_err(|e| StoreError::corrupt(Cf::Stats, doc_id.as_bytes(), e.to_string()))?,
            None => StatsDoc {
                id: id.to_string(),
                kind: kind.to_string(),
                ..Default::default()
            },
        };
        let day = at_ms / 86_400_000;
        match stats.days.last_mut() {
            Some(last) if last.day == day => last.bump(counter, by),
            _ => {
                let mut d = StatDay {
                    day,
                    attempts: 0,
                    failures: 0,
                };
                d.bump(counter, by);
                stats.days.push(d);
                let excess = stats.days.len().saturating_sub(self.limits.stat_days_max);
                stats.days.drain(..excess);
            }
        }
        stats.used_ms = at_ms;
        stats.recompute(day);
        let value = serde_json::to_value(&stats).unwrap_or(Value::Null);
        if let Value::Object(m) = value {
            self.put_doc(Cf::Stats, &doc_id, m);
        }
        Ok(Outcome::Done)
    }
}

/// A device's document id: `${host}/${class}/${id}`.
pub fn device_doc_id(host: &str, class: &str, device_id: &str) -> String {
    format!("{host}/{class}/{device_id}")
}

/// Stores `value` at `path` inside `root`, turning anything in the way into
/// an object.
fn set_path<'p>(root: &mut Value, path: impl Iterator<Item = &'p str>, value: Value) {
    let mut node = root;
    for segment in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            unreachable!("made an object above")
        };
        node = map.entry(segment.to_string()).or_insert(Value::Null);
    }
    *node = value;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StatDay {
    day: u64,
    attempts: u64,
    failures: u64,
}

impl StatDay {
    fn bump(&mut self, counter: StatCounter, by: u64) {
        match counter {
            StatCounter::Attempts => self.attempts = self.attempts.saturating_add(by),
            StatCounter::Failures => self.failures = self.failures.saturating_add(by),
        }
    }
}

/// The stats document: per-day counts, and the aggregates seed 000 asks for
/// derived from them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StatsDoc {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    used_ms: u64,
    today_attempts: u64,
    today_failures: u64,
    daily_attempts: f64,
    daily_failures: f64,
    weekly_attempts: u64,
    weekly_failures: u64,
    monthly_attempts: u64,
    monthly_failures: u64,
    yearly_attempts: u64,
    yearly_failures: u64,
    days: Vec<StatDay>,
}

impl StatsDoc {
    fn recompute(&mut self, today: u64) {
        let sum = |window: u64| {
            self.days
                .iter()
                .filter(|d| d.day + window > today)
                .fold((0u64, 0u64), |acc, d| {
                    (
                        acc.0.saturating_add(d.attempts),
                        acc.1.saturating_add(d.failures),
                    )
                })
        };
        let (ta, tf) = sum(1);
        let (wa, wf) = sum(7);
        let (ma, mf) = sum(30);
        let (ya, yf) = sum(365);
        let n = self.days.len().max(1) as f64;
        let (all_a, all_f) = sum(u64::MAX / 2);
        self.today_attempts = ta;
        self.today_failures = tf;
        self.weekly_attempts = wa;
        self.weekly_failures = wf;
        self.monthly_attempts = ma;
        self.monthly_failures = mf;
        self.yearly_attempts = ya;
        self.yearly_failures = yf;
        self.daily_attempts = all_a as f64 / n;
        self.daily_failures = all_f as f64 / n;
    }
}

#[cfg(test)]
mod tests;

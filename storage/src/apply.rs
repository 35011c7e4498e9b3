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
//!
//! # Errors: reject the event, or stop the node
//!
//! Applying an event fails in one of two ways ([`ApplyError`]):
//!
//! - **Content**: what the event carries, or a document it touches, cannot
//!   be applied: JSON nested deeper than [`bounds::JSON_DEPTH_MAX`], a path
//!   longer than [`bounds::DOCUMENT_PATH_SEGMENTS_MAX`], a document that
//!   would grow past the event's document size limit, a stored JSON
//!   document that does not decode (written by an older build without these
//!   bounds). Every replica holds the same state and the same event, so
//!   every replica reaches the same error: the event is rejected alike
//!   everywhere. Exactly that event's writes are rolled back (the overlay,
//!   the decoded documents, the key changes and the ingest effects), it
//!   answers [`Outcome::Rejected`], it is counted in `sm_meta`
//!   ([`keys::meta::EVENTS_REJECTED`]) and logged, and applying goes on with
//!   the next event. Within an ingest batch, the same holds per item: the
//!   item is rolled back and counted as dropped, its neighbours apply.
//! - **Store**: RocksDB failed, or one of utopia's own CBOR records does not
//!   decode. Bit rot is caught by RocksDB's block checksums (a RocksDB error,
//!   which may differ between replicas), and a CBOR record the applier wrote
//!   itself that no longer decodes is a bug or a damaged store, not user
//!   data: rejecting events over it could fork this replica from the
//!   others, so the node stops instead. An event from a newer build stops
//!   the node for the same reason.

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

pub mod alarm;
pub mod bounds;
pub mod ingest;
pub mod quota;
pub use alarm::{AlarmRecord, AlarmState};
pub use ingest::{CommandRecord, CommandState, IngestEffects, IngestOwners, IngestTotals};

/// Why applying an event failed; see the module documentation.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// The event's content (or a document it touches) cannot be applied:
    /// reject the event on every replica alike.
    Content(String),
    /// Storage failed: stop the node.
    Store(StoreError),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

impl From<keys::KeyError> for ApplyError {
    fn from(e: keys::KeyError) -> Self {
        ApplyError::Store(e.into())
    }
}

fn content<T>(reason: impl Into<String>) -> Result<T, ApplyError> {
    Err(ApplyError::Content(reason.into()))
}

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
    changes: Vec<FeedChange>,
    limits: ApplyLimits,
    effects: IngestEffects,
    /// What the current event replaced, newest last, so that a rejected
    /// event (or ingest item) can be rolled back to a [`Savepoint`].
    undo: Undo,
    /// Whether the current event's writes go into `undo`: key-value and
    /// lease events never fail on their content, and skip the cost.
    journal: bool,
    /// The largest document the current event may leave behind.
    document_bytes_max: u64,
}

/// One change in the key-value change feed: its revision, its index within
/// the revision (the feed's key is `revision ++ sub`) and the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedChange {
    pub revision: i64,
    pub sub: u32,
    pub change: ChangeRecord,
}

/// What an overlay entry held before a write: `None` if it had no entry.
type OverlayBefore = ((Cf, Vec<u8>), Option<Option<Vec<u8>>>);
/// What the decoded-document cache held before a write.
type DocBefore = (Cf, String, Option<Map<String, Value>>);

/// The previous values of what the current event wrote.
#[derive(Default)]
struct Undo {
    overlay: Vec<OverlayBefore>,
    docs: Vec<DocBefore>,
}

/// Where to roll back to: lengths of the undo logs and the outputs.
struct Savepoint {
    overlay: usize,
    docs: usize,
    changes: usize,
    committed: usize,
    owners_changed: bool,
    commands_changed: bool,
}

/// The writes an applier produced: `None` deletes the key.
pub type Writes = BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>;

fn dec<T: serde::de::DeserializeOwned>(cf: Cf, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    event::decode(bytes).map_err(|e| StoreError::corrupt(cf, key, e.to_string()))
}

/// A document as stored: JSON, keys in order. Documents are at most
/// [`bounds::DOCUMENT_NESTING_MAX`] deep, so encoding (which recurses) is
/// bounded.
fn doc_bytes(doc: Map<String, Value>) -> Vec<u8> {
    // Serializing a JSON value into a Vec cannot fail.
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
}

/// Decodes a stored JSON document. One that does not decode (or is not an
/// object) was written that way by every replica: a content error.
fn doc_decode(cf: Cf, id: &[u8], bytes: &[u8]) -> Result<Map<String, Value>, ApplyError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => content(format!(
            "document {}/{} is not a JSON object",
            cf.name(),
            crate::printable_key(id)
        )),
        Err(e) => content(format!(
            "document {}/{} cannot be decoded: {e}",
            cf.name(),
            crate::printable_key(id)
        )),
    }
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

/// The byte bound of a transaction logged before the bound travelled in
/// the event, and of a single put or delete: the largest
/// `limits.txn_bytes_max` accepts, so that whatever a proposer allowed,
/// applying stays within it.
pub const APPLY_BYTES_MAX: u64 = 64 << 20;

/// Bytes each pair read or key touched counts beyond its own (its framing
/// in a response, its tombstone records for a delete).
pub const TOUCHED_ITEM_OVERHEAD_BYTES: u64 = 64;

/// A transaction's bound in bytes, as applied.
fn txn_bytes_max(txn: &TxnOp) -> u64 {
    match txn.bytes_max {
        0 => APPLY_BYTES_MAX,
        n => n.min(APPLY_BYTES_MAX),
    }
}

/// What a request may still read or touch, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct ByteBudget {
    max: u64,
    left: u64,
}

impl ByteBudget {
    pub fn new(max: u64) -> Self {
        Self { max, left: max }
    }

    /// Takes `n` bytes; false, taking nothing, when fewer are left.
    fn take(&mut self, n: u64) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    fn used(&self) -> u64 {
        self.max - self.left
    }
}

/// Whether one key's state (`None`: absent) satisfies a compare.
fn compare_one(cmp: &Compare, kv: Option<&KeyValue>) -> bool {
    let ord = match (&cmp.target, kv) {
        (CompareTarget::Value(want), Some(kv)) => kv.value[..].cmp(&want[..]),
        // A missing key has no value: every value comparison fails.
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Version(n), kv) => kv.map_or(0, |k| k.version).cmp(n),
        (CompareTarget::CreateRevision(n), kv) => kv.map_or(0, |k| k.create_revision).cmp(n),
        (CompareTarget::ModRevision(n), kv) => kv.map_or(0, |k| k.mod_revision).cmp(n),
        (CompareTarget::Lease(n), kv) => kv.map_or(0, |k| k.lease).cmp(n),
    };
    match cmp.op {
        CompareOp::Equal => ord.is_eq(),
        CompareOp::NotEqual => ord.is_ne(),
        CompareOp::Greater => ord.is_gt(),
        CompareOp::Less => ord.is_lt(),
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
            undo: Undo::default(),
            journal: true,
            document_bytes_max: bounds::DOCUMENT_BYTES_MAX,
        }
    }

    /// The writes and the key changes (by revision, in order) of everything
    /// applied so far.
    pub fn finish(self) -> (Writes, Vec<FeedChange>) {
        let (writes, changes, _) = self.finish_with_effects();
        (writes, changes)
    }

    /// Like [`Applier::finish`], with what the events did to MQTT ingest
    /// and device commands.
    pub fn finish_with_effects(mut self) -> (Writes, Vec<FeedChange>, IngestEffects) {
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
        self.write(cf, key, Some(value));
    }

    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.write(cf, key, None);
    }

    /// Every write goes through here, recording what it replaced.
    fn write(&mut self, cf: Cf, key: Vec<u8>, value: Option<Vec<u8>>) {
        if !self.journal {
            self.overlay.insert((cf, key), value);
            return;
        }
        let old = self.overlay.insert((cf, key.clone()), value);
        self.undo.overlay.push(((cf, key), old));
    }

    /// Whether applying `event` can fail on its content (and so must be
    /// able to roll back): everything that writes documents.
    fn may_be_rejected(event: &Event) -> bool {
        !matches!(
            event,
            Event::Put(_)
                | Event::Delete(_)
                | Event::Txn(_)
                | Event::Compact { .. }
                | Event::LeaseGrant { .. }
                | Event::LeaseRevoke { .. }
                | Event::LeaseExpired { .. }
                | Event::IngestWeight { .. }
                | Event::IngestOwnersChanged { .. }
        )
    }

    // ------------------------------------------------------------ rollback

    fn savepoint(&self) -> Savepoint {
        Savepoint {
            overlay: self.undo.overlay.len(),
            docs: self.undo.docs.len(),
            changes: self.changes.len(),
            committed: self.effects.committed.len(),
            owners_changed: self.effects.owners_changed,
            commands_changed: self.effects.commands_changed,
        }
    }

    /// Undoes everything written since `sp`, newest first.
    fn rollback(&mut self, sp: Savepoint) {
        while self.undo.overlay.len() > sp.overlay {
            let Some((key, old)) = self.undo.overlay.pop() else {
                break;
            };
            match old {
                Some(v) => self.overlay.insert(key, v),
                None => self.overlay.remove(&key),
            };
        }
        while self.undo.docs.len() > sp.docs {
            let Some((cf, id, old)) = self.undo.docs.pop() else {
                break;
            };
            let docs = self.docs.entry(cf).or_default();
            match old {
                Some(doc) => docs.insert(id, doc),
                None => docs.remove(&id),
            };
        }
        self.changes.truncate(sp.changes);
        self.effects.committed.truncate(sp.committed);
        self.effects.owners_changed = sp.owners_changed;
        self.effects.commands_changed = sp.commands_changed;
    }

    /// Counts (in replicated state) and logs an event or ingest item
    /// rejected for its content. The log shows the first and then every
    /// power of two, so that a flood cannot drown it.
    fn count_rejected(&mut self, req: &Request, reason: &str) -> Result<(), StoreError> {
        let n = self
            .get_dec::<u64>(Cf::SmMeta, meta::EVENTS_REJECTED)?
            .unwrap_or(0)
            .saturating_add(1);
        self.put(Cf::SmMeta, meta::EVENTS_REJECTED.to_vec(), enc(&n));
        if n.is_power_of_two() {
            tracing::warn!(event = %req, rejected_total = n, reason, "event rejected: its content cannot be applied");
        } else {
            tracing::debug!(event = %req, rejected_total = n, reason, "event rejected: its content cannot be applied");
        }
        Ok(())
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
        let mut out = Vec::new();
        self.scan_each(cf, start, end, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(limit == 0 || out.len() < limit)
        })?;
        Ok(out)
    }

    /// Visits the entries of `cf` in `[start, end)`, base merged with the
    /// overlay, in key order, one at a time (nothing is collected), until
    /// `visit` returns false.
    pub fn scan_each(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut pending = self
            .overlay
            .range((cf, start.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && end.is_none_or(|e| k.as_slice() < e))
            .map(|((_, k), v)| (k, v))
            .peekable();
        let mut base = self.base.scan(cf, start, end).peekable();
        loop {
            // Which comes next: the base's entry, the overlay's, or the
            // overlay's in place of the base's (same key).
            let order = match (base.peek(), pending.peek()) {
                (Some(Err(_)), _) => match base.next() {
                    Some(Err(e)) => return Err(e),
                    _ => unreachable!("peeked an error"),
                },
                (None, None) => return Ok(()),
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(Ok(_)), None) => std::cmp::Ordering::Greater,
                (Some(Ok((bk, _))), Some((pk, _))) => pk.as_slice().cmp(bk.as_slice()),
            };
            let go_on = if order.is_gt() {
                match base.next() {
                    Some(Ok((k, v))) => visit(&k, &v)?,
                    _ => unreachable!("peeked an entry"),
                }
            } else {
                if order.is_eq() {
                    base.next();
                }
                match pending.next() {
                    Some((k, Some(v))) => visit(k, v)?,
                    // Deleted in this batch.
                    Some((_, None)) => true,
                    None => unreachable!("peeked an entry"),
                }
            };
            if !go_on {
                return Ok(());
            }
        }
    }

    // ------------------------------------------------------------ entry point

    /// Applies one event. An event whose content cannot be applied is
    /// rolled back and answers [`Outcome::Rejected`]; only a storage error
    /// (or an event from a newer build) is an `Err`, and stops the node.
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
        self.document_bytes_max = req
            .document_bytes_max
            .map_or(bounds::DOCUMENT_BYTES_MAX, |n| {
                n.min(bounds::DOCUMENT_BYTES_MAX)
            });
        if let Some(rejection) = self.refused_by_alarm(&req.event)? {
            return Ok(Response {
                revision: self.get_i64(meta::REVISION)?,
                outcome: Outcome::Rejected(rejection),
            });
        }
        self.journal = Self::may_be_rejected(&req.event);
        let sp = self.savepoint();
        let outcome = match self.apply_event(req) {
            Ok(outcome) => outcome,
            Err(ApplyError::Store(e)) => return Err(e),
            Err(ApplyError::Content(reason)) if !self.journal => {
                // Its writes cannot be rolled back: a bug, not user data.
                return Err(StoreError::Io(format!(
                    "{req} failed on its content, which it cannot: {reason}"
                )));
            }
            Err(ApplyError::Content(reason)) => {
                self.rollback(sp);
                self.count_rejected(req, &reason)?;
                Outcome::Rejected(Rejection::Invalid(reason))
            }
        };
        // Applied or rejected, this event is settled: nothing rolls it
        // back any more.
        self.undo.overlay.clear();
        self.undo.docs.clear();
        Ok(Response {
            revision: self.get_i64(meta::REVISION)?,
            outcome,
        })
    }

    fn apply_event(&mut self, req: &Request) -> Result<Outcome, ApplyError> {
        Ok(match &req.event {
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
            } => match self.register_device(req.at_ms, host, zone, class, device_id, true)? {
                Ok((id, _)) => Outcome::Device { id },
                Err(rejection) => Outcome::Rejected(rejection),
            },
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
            } => self.apply_ingest_batch(req, *epoch, *proposer, items)?,
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
            Event::ClientAddressPublished { node_id, addr } => {
                self.apply_client_address(*node_id, addr)?
            }
            Event::AlarmRaised {
                node_id,
                alarm,
                disarms,
            } => self.apply_alarm_raised(req.at_ms, *node_id, *alarm, *disarms)?,
            Event::QuotasChanged(q) => self.apply_quotas_changed(q)?,
            Event::AlarmDisarmed { node_id, alarm } => {
                self.apply_alarm_disarmed(*node_id, *alarm)?
            }
        })
    }

    // ------------------------------------------------------------ key-value

    fn apply_single(&mut self, _req: &Request, step: TxnStep) -> Result<Outcome, ApplyError> {
        if let Some(rej) = self.check_steps(std::slice::from_ref(&step))? {
            return Ok(Outcome::Rejected(rej));
        }
        let mut budget = ByteBudget::new(APPLY_BYTES_MAX);
        if !self.charge_step(&step, &mut budget, false)? {
            return Ok(Outcome::Rejected(Rejection::TooLarge {
                bytes_max: APPLY_BYTES_MAX,
            }));
        }
        let rev = self.get_i64(meta::REVISION)?;
        let (mut results, wrote) =
            self.run_steps(rev + 1, std::slice::from_ref(&step), &mut budget)?;
        if wrote {
            self.put(Cf::SmMeta, meta::REVISION.to_vec(), enc(&(rev + 1)));
        }
        Ok(match results.pop() {
            Some(StepResult::Put { prev }) => Outcome::Put { prev },
            Some(StepResult::Delete { deleted, prev }) => Outcome::Delete { deleted, prev },
            _ => Outcome::Done,
        })
    }

    /// Applies a transaction within its byte bound (`TxnOp::bytes_max`):
    /// compares and the chosen branch's deletes and `prev_kv` reads are
    /// counted before anything is written, and a transaction over the
    /// bound is rejected whole; ranges then take what is left and stop
    /// there (`more`). The proposer refuses a transaction it estimates to
    /// be over the bound, so this is the guard for a state that grew
    /// between the estimate and the commit, or a proposer that did not
    /// check: whatever reaches the log, applying it stays bounded, and the
    /// same on every replica.
    fn apply_txn(&mut self, _req: &Request, txn: &TxnOp) -> Result<Outcome, ApplyError> {
        let bytes_max = txn_bytes_max(txn);
        let too_large = Outcome::Rejected(Rejection::TooLarge { bytes_max });
        let mut budget = ByteBudget::new(bytes_max);
        let mut succeeded = true;
        for cmp in &txn.compares {
            match self.compare(cmp, &mut budget)? {
                Some(true) => {}
                Some(false) => {
                    succeeded = false;
                    break;
                }
                None => return Ok(too_large),
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
        for step in steps {
            if !self.charge_step(step, &mut budget, false)? {
                return Ok(too_large);
            }
        }
        let rev = self.get_i64(meta::REVISION)?;
        let (results, wrote) = self.run_steps(rev + 1, steps, &mut budget)?;
        if wrote {
            self.put(Cf::SmMeta, meta::REVISION.to_vec(), enc(&(rev + 1)));
        }
        Ok(Outcome::Txn { succeeded, results })
    }

    /// The bytes `txn` would read or touch in the current state, counting
    /// both branches in full (the larger of the two) and stopping once
    /// past `bytes_max`: `None` then. What a proposer checks before
    /// proposing; the applier applies the same bound when it commits.
    pub fn txn_bytes(&self, txn: &TxnOp, bytes_max: u64) -> Result<Option<u64>, StoreError> {
        let mut budget = ByteBudget::new(bytes_max);
        for cmp in &txn.compares {
            if self.compare(cmp, &mut budget)?.is_none() {
                return Ok(None);
            }
        }
        let mut largest = 0;
        for steps in [&txn.success, &txn.failure] {
            let mut branch = budget;
            for step in steps {
                if !self.charge_step(step, &mut branch, true)? {
                    return Ok(None);
                }
            }
            largest = largest.max(branch.used());
        }
        Ok(Some(largest))
    }

    /// Counts into `budget` what `step` reads or touches now: a delete its
    /// keys (and their pairs with `prev_kv`), a put its key and value (and
    /// the previous pair with `prev_kv`), and with `ranges` a range its
    /// pairs (its keys with `keys_only`, nothing with `count_only`), up to
    /// its count limit. Sizes are of the stored records, not decoded.
    /// False, as soon as it is known, when `budget` cannot hold it all.
    fn charge_step(
        &self,
        step: &TxnStep,
        budget: &mut ByteBudget,
        ranges: bool,
    ) -> Result<bool, StoreError> {
        match step {
            TxnStep::Range(r) => {
                if !ranges || r.count_only {
                    return Ok(true);
                }
                let (start, end) = range_bounds(&r.key, &r.range_end);
                let limit = usize::try_from(r.limit).unwrap_or(0);
                let (mut seen, mut fits) = (0usize, true);
                self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
                    seen += 1;
                    let size = if r.keys_only {
                        k.len()
                    } else {
                        k.len() + v.len()
                    };
                    fits = budget.take(size as u64 + TOUCHED_ITEM_OVERHEAD_BYTES);
                    Ok(fits && (limit == 0 || seen < limit))
                })?;
                Ok(fits)
            }
            TxnStep::Put(p) => {
                let mut size = (p.key.len() + p.value.len()) as u64;
                if p.prev_kv {
                    size += self.get(Cf::Kv, &p.key)?.map_or(0, |v| v.len() as u64);
                }
                Ok(budget.take(size + TOUCHED_ITEM_OVERHEAD_BYTES))
            }
            TxnStep::Delete(d) => {
                let (start, end) = range_bounds(&d.key, &d.range_end);
                let mut fits = true;
                self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
                    let size = if d.prev_kv {
                        k.len() + v.len()
                    } else {
                        k.len()
                    };
                    fits = budget.take(size as u64 + TOUCHED_ITEM_OVERHEAD_BYTES);
                    Ok(fits)
                })?;
                Ok(fits)
            }
        }
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
                        .get(Cf::Leases, &keys::lease_id_key(p.lease))?
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

    /// Runs the steps at revision `rev`; ranges take their pairs out of
    /// `budget` (what the checks before left of it).
    fn run_steps(
        &mut self,
        rev: i64,
        steps: &[TxnStep],
        budget: &mut ByteBudget,
    ) -> Result<(Vec<StepResult>, bool), StoreError> {
        let mut results = Vec::with_capacity(steps.len());
        let mut sub = 0u32;
        for step in steps {
            results.push(match step {
                TxnStep::Range(r) => StepResult::Range(self.range_current(r, budget)?),
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
        self.changes.push(FeedChange {
            revision: rev,
            sub: *sub,
            change,
        });
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
        // Without prev_kv a deleted pair's value is not needed: only its
        // key, lease and revision are held (the checks before counted the
        // keys against the request's bound).
        let mut victims = Vec::new();
        self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
            let mut kv: KeyValue = dec(Cf::Kv, k, v)?;
            if !op.prev_kv {
                kv.value = Bytes::new();
            }
            victims.push(kv);
            Ok(true)
        })?;
        let deleted = victims.len() as i64;
        let prev = if op.prev_kv {
            victims.clone()
        } else {
            Vec::new()
        };
        self.delete_keys(rev, sub, victims);
        Ok(StepResult::Delete { deleted, prev })
    }

    /// A range inside a transaction: every key in it is counted (from the
    /// keys, without decoding), and pairs are taken while `budget` holds
    /// them and the count limit allows; `more` when some were left out.
    fn range_current(
        &self,
        op: &RangeOp,
        budget: &mut ByteBudget,
    ) -> Result<RangeResult, StoreError> {
        let (start, end) = range_bounds(&op.key, &op.range_end);
        let limit = if op.limit > 0 {
            op.limit as usize
        } else {
            usize::MAX
        };
        let mut kvs = Vec::new();
        let mut count = 0i64;
        let mut full = op.count_only;
        self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
            count += 1;
            if full || kvs.len() >= limit {
                full = true;
                return Ok(true);
            }
            let size = if op.keys_only {
                k.len()
            } else {
                k.len() + v.len()
            };
            if !budget.take(size as u64 + TOUCHED_ITEM_OVERHEAD_BYTES) {
                full = true;
                return Ok(true);
            }
            let mut kv: KeyValue = dec(Cf::Kv, k, v)?;
            if op.keys_only {
                kv.value = Bytes::new();
            }
            kvs.push(kv);
            Ok(true)
        })?;
        Ok(RangeResult {
            more: !op.count_only && (kvs.len() as i64) < count,
            count,
            kvs,
        })
    }

    /// Evaluates a compare, counting the pairs it reads into `budget`:
    /// `None` when they do not fit.
    fn compare(&self, cmp: &Compare, budget: &mut ByteBudget) -> Result<Option<bool>, StoreError> {
        if cmp.range_end.is_empty() {
            let current = match self.get(Cf::Kv, &cmp.key)? {
                Some(v) => {
                    if !budget.take((cmp.key.len() + v.len()) as u64 + TOUCHED_ITEM_OVERHEAD_BYTES)
                    {
                        return Ok(None);
                    }
                    Some(dec::<KeyValue>(Cf::Kv, &cmp.key, &v)?)
                }
                None => None,
            };
            return Ok(Some(compare_one(cmp, current.as_ref())));
        }
        let (start, end) = range_bounds(&cmp.key, &cmp.range_end);
        // A range compare holds when the range is not empty and every pair
        // in it matches.
        let (mut any, mut holds, mut fits) = (false, true, true);
        self.scan_each(Cf::Kv, &start, end.as_deref(), |k, v| {
            if !budget.take((k.len() + v.len()) as u64 + TOUCHED_ITEM_OVERHEAD_BYTES) {
                fits = false;
                return Ok(false);
            }
            any = true;
            let kv: KeyValue = dec(Cf::Kv, k, v)?;
            holds = compare_one(cmp, Some(&kv));
            Ok(holds)
        })?;
        if !fits {
            return Ok(None);
        }
        Ok(Some(any && holds))
    }

    fn apply_compact(&mut self, revision: i64) -> Result<Outcome, ApplyError> {
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
        // Change records carry values: each is decoded and dropped in turn,
        // and only the keys to delete are kept.
        let mut doomed = Vec::new();
        self.scan_each(
            Cf::KvChanges,
            &keys::change_key(compacted, 0),
            Some(&keys::change_key(revision + 1, 0)),
            |ck, cv| {
                let (rev, _) = keys::parse_change_key(ck)?;
                let change: ChangeRecord = dec(Cf::KvChanges, ck, cv)?;
                if let Some(prev) = change.prev_revision {
                    doomed.push((Cf::KvHistory, keys::history_key(&change.kv.key, prev)));
                }
                if rev != revision {
                    doomed.push((Cf::KvChanges, ck.to_vec()));
                    if change.deleted {
                        doomed.push((Cf::KvHistory, keys::history_key(&change.kv.key, rev)));
                    }
                }
                Ok(true)
            },
        )?;
        for (cf, key) in doomed {
            self.delete(cf, key);
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
    ) -> Result<Outcome, ApplyError> {
        if id <= 0 || ttl_s <= 0 {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "lease id and ttl must be positive (id {id}, ttl {ttl_s}s)"
            ))));
        }
        let key = keys::lease_id_key(id);
        if self.get(Cf::Leases, &key)?.is_some() {
            return Ok(Outcome::Rejected(Rejection::LeaseExists(id)));
        }
        if let Some(why) = self.lease_refusal()? {
            return Ok(Outcome::Rejected(Rejection::Quota(why)));
        }
        self.count_lease(true)?;
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
    ) -> Result<Outcome, ApplyError> {
        let key = keys::lease_id_key(id);
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
        let prefix = keys::lease_id_key(id);
        let end = keys::prefix_end(&prefix);
        let attached = self.scan(Cf::LeaseKeys, &prefix, end.as_deref(), 0)?;
        let mut victims = Vec::with_capacity(attached.len());
        for (lk, _) in attached {
            let (_, user_key) = keys::parse_lease_key(&lk)?;
            // Only the key, lease and revision are needed to delete it.
            if let Some(mut kv) = self.current(user_key)? {
                kv.value = Bytes::new();
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
        self.count_lease(false)?;
        self.delete(Cf::Leases, key.to_vec());
        Ok(Outcome::Done)
    }

    // ------------------------------------------------------------ documents

    /// The column families whose documents are kept decoded for the batch.
    fn doc_cached(cf: Cf) -> bool {
        matches!(cf, Cf::Devices | Cf::Zones)
    }

    fn get_doc(&self, cf: Cf, id: &str) -> Result<Option<Map<String, Value>>, ApplyError> {
        if let Some(doc) = self.docs.get(&cf).and_then(|d| d.get(id)) {
            return Ok(Some(doc.clone()));
        }
        match self.get(cf, id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => doc_decode(cf, id.as_bytes(), &bytes).map(Some),
        }
    }

    /// Writes a document, unless it is larger than the event may leave a
    /// document: then the event is rejected.
    fn put_doc(&mut self, cf: Cf, id: &str, doc: Map<String, Value>) -> Result<(), ApplyError> {
        let too_large = |bytes: u64, max: u64| {
            content(format!(
                "document {}/{id} would be {bytes} bytes; the limit is {max} bytes (document_bytes_max)",
                cf.name()
            ))
        };
        if Self::doc_cached(cf) {
            let bytes = bounds::json_encoded_bytes(&doc);
            if bytes > self.document_bytes_max {
                return too_large(bytes, self.document_bytes_max);
            }
            let old = self.docs.entry(cf).or_default().insert(id.to_string(), doc);
            if self.journal {
                self.undo.docs.push((cf, id.to_string(), old));
            }
            return Ok(());
        }
        let bytes = doc_bytes(doc);
        if bytes.len() as u64 > self.document_bytes_max {
            return too_large(bytes.len() as u64, self.document_bytes_max);
        }
        self.put(cf, id.as_bytes().to_vec(), bytes);
        Ok(())
    }

    /// Registers a device in a zone if it is new there. Returns the device id
    /// and its document, which is written here only with `write_doc` (a
    /// caller that changes it further writes it once itself); or, for a
    /// new device of a host at its quota, why it is refused (nothing is
    /// written then).
    fn register_device(
        &mut self,
        at_ms: u64,
        host: &str,
        zone: &str,
        class: &str,
        device_id: &str,
        write_doc: bool,
    ) -> Result<Result<Registered, Rejection>, ApplyError> {
        let id = device_doc_id(host, class, device_id);
        let mut doc = match self.get_doc(Cf::Devices, &id)? {
            Some(doc) => doc,
            None => {
                if let Some(why) = self.device_refusal(host)? {
                    return Ok(Err(Rejection::Quota(why)));
                }
                self.count_new_device(host)?;
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
                self.zone_membership(old, false)?;
            }
            self.put(
                Cf::DeviceIndex,
                keys::device_index_key(DeviceIndex::Zone, zone, &id),
                Vec::new(),
            );
            self.zone_membership(zone, true)?;
            doc.insert("zone".into(), json!(zone));
            doc.insert(
                "topic_focus".into(),
                json!(format!("/{host}/{zone}/{class}/{device_id}")),
            );
        }
        doc.insert("last_seen_ms".into(), json!(at_ms));
        if write_doc {
            self.put_doc(Cf::Devices, &id, doc.clone())?;
        }
        Ok(Ok((id, doc)))
    }

    /// Counts a device in or out of a zone's document. The document keeps
    /// only the count: which devices are in the zone is the zone index
    /// (`Cf::DeviceIndex`), which readers serve the list from, so a new
    /// device rewrites a document of constant size rather than the whole
    /// list. Called only when the device's zone changes.
    fn zone_membership(&mut self, zone: &str, present: bool) -> Result<(), ApplyError> {
        let mut doc = self.get_doc(Cf::Zones, zone)?.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("zone".into(), json!(zone));
            m
        });
        // Documents stored before the list moved to the index carry it (and
        // its count): the list goes, the count stays.
        doc.remove("devices");
        let count = doc.get("device_count").and_then(Value::as_u64).unwrap_or(0);
        let count = if present {
            count + 1
        } else {
            count.saturating_sub(1)
        };
        doc.insert("device_count".into(), json!(count));
        self.put_doc(Cf::Zones, zone, doc)?;
        Ok(())
    }

    fn apply_device_data(&mut self, at_ms: u64, d: &DeviceData) -> Result<Outcome, ApplyError> {
        // The entrances check these first; a committed entry may still come
        // from an older build or a forwarded proposal.
        bounds::check_path_segments(d.path.len())
            .or_else(|e| content(format!("device path: {e}")))?;
        bounds::check_json_depth(&d.json, bounds::JSON_DEPTH_MAX)
            .or_else(|e| content(format!("device value: {e}")))?;
        let value: Value = match serde_json::from_str(&d.json) {
            Ok(v) => v,
            Err(e) => return content(format!("device value is not JSON: {e}")),
        };
        if d.post_type.is_empty() {
            return content("empty post_type");
        }
        let (id, mut doc) =
            match self.register_device(at_ms, &d.host, &d.zone, &d.class, &d.device_id, false)? {
                Ok(registered) => registered,
                Err(rejection) => return Ok(Outcome::Rejected(rejection)),
            };
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
        self.put_doc(Cf::Devices, &id, doc)?;
        Ok(Outcome::Device { id })
    }

    fn apply_fellow(&mut self, at_ms: u64, f: &FellowState) -> Result<Outcome, ApplyError> {
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
        self.put_doc(Cf::Fellows, &id, doc)?;
        Ok(Outcome::Done)
    }

    /// Records the address clients reach member `node_id` at, in its
    /// fellows document (the leader's fellow updates keep it).
    fn apply_client_address(&mut self, node_id: u64, addr: &str) -> Result<Outcome, ApplyError> {
        let id = node_id.to_string();
        let mut doc = self.get_doc(Cf::Fellows, &id)?.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("id".into(), json!(node_id));
            m
        });
        doc.insert("client_addr".into(), json!(addr));
        self.put_doc(Cf::Fellows, &id, doc)?;
        Ok(Outcome::Done)
    }

    fn apply_db_server(
        &mut self,
        at_ms: u64,
        host: &str,
        port: u16,
        kind: &str,
        problem: Option<&String>,
    ) -> Result<Outcome, ApplyError> {
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
        self.put_doc(Cf::DbServers, &id, doc)?;
        Ok(Outcome::Done)
    }

    fn apply_config_proposed(
        &mut self,
        at_ms: u64,
        c: &ConfigVersion,
    ) -> Result<Outcome, ApplyError> {
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
        self.put_doc(Cf::XmlConfigs, &id, doc)?;
        Ok(Outcome::Done)
    }

    fn apply_config_decision(
        &mut self,
        at_ms: u64,
        name: &str,
        version: u64,
        hash: &str,
        rejected: Option<&String>,
    ) -> Result<Outcome, ApplyError> {
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
                    let mut other = doc_decode(Cf::XmlConfigs, &k, &v)?;
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
        self.put_doc(Cf::XmlConfigs, &id, doc)?;
        Ok(Outcome::Done)
    }

    fn apply_stat(
        &mut self,
        at_ms: u64,
        id: &str,
        kind: &str,
        counter: StatCounter,
        by: u64,
    ) -> Result<Outcome, ApplyError> {
        let doc_id = format!("{kind}/{id}");
        let mut stats: StatsDoc = match self.get_doc(Cf::Stats, &doc_id)? {
            Some(m) => match serde_json::from_value(Value::Object(m)) {
                Ok(stats) => stats,
                Err(e) => {
                    return content(format!(
                        "document stats/{doc_id} is not a stats document: {e}"
                    ))
                }
            },
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
            self.put_doc(Cf::Stats, &doc_id, m)?;
        }
        Ok(Outcome::Done)
    }
}

/// A registered device: its document id and its document.
type Registered = (String, Map<String, Value>);

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

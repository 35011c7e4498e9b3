//! Applying events: event + current state → writes.
//!
//! This module is pure. It reads through [`StateRead`] and records every
//! write in an [`Applier`]'s overlay, which later reads in the same batch
//! see; it never touches RocksDB or the clock. The state machine commits the
//! overlay in one atomic write batch together with the applied log id, and
//! the unit tests (`apply/tests/`) run it against an in-memory map.
//!
//! Determinism is the contract: the same events applied to the same state
//! produce the same bytes on every replica. Maps are `BTreeMap`s, documents
//! are stored with their keys sorted ([`crate::documents`]), and time comes
//! from the event (`Request::at_ms`).
//!
//! # Layout
//!
//! This file holds the [`Applier`]: its overlay and state access, the
//! entry point [`Applier::apply`] and the dispatch of each event to its
//! domain. Each domain is a module that adds its events' `apply_*` methods:
//!
//! - `kv`: puts, deletes and transactions within their byte
//!   bounds, the key history and the change feed; `compact`: compaction;
//!   `lease`: leases and their keys;
//! - `devices`: devices, zones and the device indexes; `documents`: how
//!   documents are read and written in a batch, fellows, database servers
//!   and XML configurations; `stats`; `commands`: device commands;
//!   [`ingest`]: MQTT ingest batches, owners and dedupe;
//! - `class_rules`: device data and commands typed by their class's
//!   accepted configuration; `xmlconf_ingest`: members that fail to hold
//!   a class's accepted file (`xmlconf_sync`), excluded from owning its
//!   devices;
//! - [`alarm`], [`quota`]: what is refused while an alarm is active or a
//!   quota is reached; [`bounds`]: the fixed limits on document content;
//!   `journal`: the undo journal behind the content-error rule below.
//!
//! A new domain is one more module: its `apply_*` methods, its arm in
//! `apply_event`, and its events in `may_be_rejected` unless they can
//! never fail on their content.
//!
//! # Errors: reject the event, or stop the node
//!
//! Applying an event fails in one of two ways (`ApplyError`):
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

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use utopia_raft::event::{self, Event, Outcome, Quotas, Rejection, Request, Response, TxnStep};

use crate::codec;
use crate::keys::{self, meta, Cf};
use crate::StoreError;

// One module per domain (see the layout above).
pub mod alarm;
mod auth;
pub mod bounds;
mod class_rules;
mod commands;
mod compact;
mod devices;
mod documents;
pub mod ingest;
mod journal;
mod json_path;
mod kv;
mod lease;
pub mod quota;
mod stats;
mod writes;
pub mod xmlconf;
mod xmlconf_ingest;
pub mod xmlconf_sync;

pub use alarm::{AlarmRecord, AlarmState};
pub use class_rules::device_class;
pub use commands::{CommandRecord, CommandState};
pub use devices::device_doc_id;
pub use ingest::{IngestEffects, IngestOwners, IngestTotals};
pub(crate) use kv::range_bounds;
pub use kv::{
    ByteBudget, ChangeRecord, FeedChange, HistoryRecord, APPLY_BYTES_MAX,
    TOUCHED_ITEM_OVERHEAD_BYTES,
};
pub use lease::LeaseRecord;
pub use stats::{STATS_COMMAND_BYTES_MAX, STATS_USED_MAX};

pub use documents::CarriedDocs;
use documents::DocCache;
use journal::Undo;
pub use writes::Writes;

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

    /// A current key's revisions and lease, when they are known without
    /// reading the key (see [`crate::key_cache`]); `None` says nothing
    /// about whether the key exists.
    fn key_facts(&self, _key: &[u8]) -> Option<crate::key_cache::KeyFacts> {
        None
    }
}

pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// Key-value pairs of one column family, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Applies a batch of events over a base state, collecting the writes.
pub struct Applier<'a, S: StateRead + ?Sized> {
    base: &'a S,
    overlay: Writes,
    /// Device, zone and stats documents written in this batch, decoded.
    docs: DocCache,
    /// The same, as the batches before left them ([`CarriedDocs`]).
    carried: CarriedDocs,
    changes: Vec<FeedChange>,
    effects: IngestEffects,
    /// What the current event replaced, newest last, so that a rejected
    /// event (or ingest item) can be rolled back to a [`Savepoint`].
    undo: Undo,
    /// Whether the current event's writes go into `undo`: key-value and
    /// lease events never fail on their content, and skip the cost.
    journal: bool,
    /// The largest document the current event may leave behind.
    document_bytes_max: u64,
    /// Class records read in this batch (see `class_rules`): emptied by
    /// every write of one and every rollback.
    classes: HashMap<String, Option<Arc<ingest::ClassRulesRecord>>>,
    /// The term of the last entry counted in stats (`meta::STATS_TERM`),
    /// once read in this batch or carried from the one before. Written
    /// only where it is set, outside any rollback.
    stats_term: Option<u64>,
    /// The quotas (`meta::QUOTAS`), once read in this batch or carried
    /// from the one before: every device value checks one. Emptied by
    /// every write of them and every rollback.
    quotas: Cell<Option<Quotas>>,
    /// The first active alarm (`meta::ALARMS`; `Some(None)`: none), once
    /// read in this batch or carried from the one before: every event
    /// that adds data checks it. Emptied by every write of the alarms and
    /// every rollback.
    first_alarm: Cell<Option<Option<(u64, event::AlarmKind)>>>,
}

impl<'a, S: StateRead + ?Sized> Applier<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Self {
            base,
            overlay: Writes::default(),
            docs: DocCache::default(),
            carried: CarriedDocs::default(),
            changes: Vec::new(),
            effects: IngestEffects::default(),
            undo: Undo::default(),
            journal: true,
            document_bytes_max: bounds::DOCUMENT_BYTES_MAX,
            classes: HashMap::new(),
            stats_term: None,
            quotas: Cell::new(None),
            first_alarm: Cell::new(None),
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
    pub fn finish_with_effects(self) -> (Writes, Vec<FeedChange>, IngestEffects) {
        let (writes, changes, effects, _) = self.finish_carrying();
        (writes, changes, effects)
    }

    /// An applier that starts from the documents earlier batches left
    /// decoded (see [`CarriedDocs`]).
    pub fn carrying(mut self, carried: CarriedDocs) -> Self {
        self.stats_term = carried.stats_term;
        self.quotas.set(carried.quotas);
        self.first_alarm.set(carried.first_alarm);
        self.carried = carried;
        self
    }

    /// Like [`Applier::finish_with_effects`], with the documents the next
    /// batch may start from once these writes are written.
    pub fn finish_carrying(mut self) -> (Writes, Vec<FeedChange>, IngestEffects, CarriedDocs) {
        let carried = self.write_docs();
        (self.overlay, self.changes, self.effects, carried)
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(cf, key) {
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
        if cf == Cf::Ingest && key.first() == Some(&keys::ingest::CLASS_PREFIX) {
            self.classes.clear();
        }
        if cf == Cf::SmMeta && key == meta::QUOTAS {
            self.quotas.set(None);
        }
        if cf == Cf::SmMeta && key == meta::ALARMS {
            self.first_alarm.set(None);
        }
        if !self.journal {
            self.overlay.insert(cf, key, value);
            return;
        }
        let old = self.overlay.insert(cf, key.clone(), value);
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

    fn get_dec<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(cf, key)?
            .map(|b| codec::decode(cf, key, &b))
            .transpose()
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
            .range_from(cf, start)
            .take_while(|(k, _)| end.is_none_or(|e| k.as_slice() < e))
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

    /// Applies one log entry's event, written by member `leader` in
    /// `term`, and counts it in that member's stats (`stats`): what the
    /// state machine calls, where [`Applier::apply`] knows no log.
    pub fn apply_entry(
        &mut self,
        term: u64,
        leader: u64,
        req: &Request,
    ) -> Result<Response, StoreError> {
        let response = self.apply(req)?;
        // The event is settled: its count is not part of it.
        self.journal = false;
        match self.count_entry(term, leader, req, &response.outcome) {
            Ok(()) => {}
            Err(ApplyError::Store(e)) => return Err(e),
            // A stats document that does not decode is the same on every
            // replica: the count is left out alike everywhere.
            Err(ApplyError::Content(reason)) => {
                tracing::debug!(leader, reason, "count a proposal in its leader's stats");
            }
        }
        Ok(response)
    }

    fn apply_event(&mut self, req: &Request) -> Result<Outcome, ApplyError> {
        Ok(match &*req.event {
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
            Event::DbServerRemoved { host, port, kind } => {
                self.apply_db_server_removed(host, *port, kind)?
            }
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
            Event::ConfigVote(v) => self.apply_config_vote(req.at_ms, v)?,
            Event::ConfigDecide { name, version } => {
                self.apply_config_decide(req.at_ms, name, *version)?
            }
            Event::ConfigFileRejected {
                node,
                file,
                hash,
                reason,
            } => self.apply_config_file_rejected(req.at_ms, *node, file, hash, reason)?,
            Event::ConfigSyncState {
                node,
                name,
                version,
                failing,
                reason,
            } => {
                match self
                    .apply_config_sync_state(req.at_ms, *node, name, *version, *failing, reason)?
                {
                    Outcome::Done => self.apply_class_exclusion(*node, name, *failing)?,
                    refused => refused,
                }
            }
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
            Event::Auth(change) => self.apply_auth(change)?,
        })
    }
}

#[cfg(test)]
mod tests;

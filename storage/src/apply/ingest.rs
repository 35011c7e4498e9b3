//! Applying MQTT ingest: members' weights, the owners of each epoch, and
//! batches of messages (fenced by epoch and owner, deduplicated by digest
//! within the window), whose items become device events and command
//! replies.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use utopia_raft::event::{
    Bytes, ClassRules, IngestBody, IngestItem, IngestMember, Outcome, Rejection, Request,
};

use super::devices::{DataApplied, DeviceTally};
use super::stats::{Counter, StatDelta};
use super::{content, Applier, ApplyError, StateRead};
use crate::codec;
use crate::keys::{self, Cf};
use crate::StoreError;

/// Expired dedupe records removed per applied batch, at most.
const DEDUPE_EXPIRED_PER_BATCH_MAX: usize = 512;

/// The members that own topics, and since when (`epoch`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IngestOwners {
    pub epoch: u64,
    pub members: Vec<IngestMember>,
    pub dedupe_window_ms: u64,
    /// Per device class, the members that could not write and verify its
    /// accepted configuration ([`Event::ConfigSyncState`]): they own none
    /// of its devices while another member can. Sorted, no duplicates.
    ///
    /// [`Event::ConfigSyncState`]: utopia_raft::event::Event::ConfigSyncState
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub excluded: BTreeMap<String, Vec<u64>>,
}

impl IngestOwners {
    /// The member that owns the device `device_doc_id`: rendezvous hashing
    /// over the members, leaving out those excluded for the device's class,
    /// unless that would leave no member able to own it (then all members
    /// take part, as before the exclusion).
    pub fn owner(&self, device_doc_id: &str) -> Option<u64> {
        let excluded = super::device_class(device_doc_id)
            .and_then(|class| self.excluded.get(class))
            .filter(|nodes| !nodes.is_empty());
        if let Some(excluded) = excluded {
            let kept: Vec<IngestMember> = self
                .members
                .iter()
                .filter(|m| !excluded.contains(&m.node_id))
                .cloned()
                .collect();
            if let Some(owner) = crate::ingest::owner_of(device_doc_id, &kept) {
                return Some(owner);
            }
        }
        crate::ingest::owner_of(device_doc_id, &self.members)
    }
}

// Shows `excluded` only when it is set, like the stored form: the
// records of builds before it read and show the same.
impl fmt::Debug for IngestOwners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("IngestOwners");
        d.field("epoch", &self.epoch)
            .field("members", &self.members)
            .field("dedupe_window_ms", &self.dedupe_window_ms);
        if !self.excluded.is_empty() {
            d.field("excluded", &self.excluded);
        }
        d.finish()
    }
}

/// The accepted configuration of a device class (under
/// [`keys::ingest::class_key`]): written when a version of the class is
/// accepted, read by ingest for every device message and command of the
/// class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRulesRecord {
    pub version: u64,
    /// blake3 of the accepted file, hex.
    pub hash: String,
    pub rules: ClassRules,
}

/// Cluster-wide ingest counts, kept in the log's state so that every node
/// reports the same figures.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IngestTotals {
    /// Items that became device events.
    pub applied: u64,
    /// Redelivered copies of committed messages, suppressed.
    pub suppressed: u64,
    /// Items refused by their owner (rate limits), and items whose content
    /// could not be applied (rolled back; also counted in
    /// `sm_meta/events_rejected`).
    pub dropped: u64,
    /// Batches refused because their epoch was stale.
    pub stale_batches: u64,
    /// Device replies to commands that were unknown or already settled.
    pub replies_ignored: u64,
    /// Items of new devices refused by the devices-per-host quota (also
    /// counted in `dropped`).
    #[serde(default)]
    pub over_quota: u64,
    /// Device data refused by its class's accepted configuration (an
    /// undeclared post type, a value of the wrong type or out of range), or
    /// for a class without one under `configs.require_class`. Items in a
    /// batch are also counted in `dropped`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub class_refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

// Shows `class_refused` only when it is set, like the stored form.
impl fmt::Debug for IngestTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("IngestTotals");
        d.field("applied", &self.applied)
            .field("suppressed", &self.suppressed)
            .field("dropped", &self.dropped)
            .field("stale_batches", &self.stale_batches)
            .field("replies_ignored", &self.replies_ignored)
            .field("over_quota", &self.over_quota);
        if self.class_refused != 0 {
            d.field("class_refused", &self.class_refused);
        }
        d.finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DedupeRecord {
    committed_ms: u64,
}

/// What a batch did to the ingest state, for the node's MQTT bridges:
/// every digest in the log (applied, suppressed or dropped) can be
/// acknowledged to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestEffects {
    pub committed: Vec<[u8; 16]>,
    pub owners_changed: bool,
    pub commands_changed: bool,
}

/// What one ingest item came to.
enum ItemOutcome {
    Applied,
    Dropped,
    /// Device data for a new device past its host's quota: dropped.
    OverQuota,
    /// Device data its class refuses: dropped.
    ClassRefused,
    /// A reply to a command that is unknown or already settled.
    Ignored,
}

fn digest16(b: &Bytes) -> Option<keys::ingest::Digest> {
    b[..].try_into().ok()
}

/// The document id an item belongs to (and whose owner proposes it).
pub fn item_device(body: &IngestBody) -> String {
    match body {
        IngestBody::Data(d) => super::device_doc_id(&d.host, &d.class, &d.device_id),
        IngestBody::Reply {
            host,
            class,
            device_id,
            ..
        } => super::device_doc_id(host, class, device_id),
        IngestBody::Dropped { device, .. } => device.clone(),
    }
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub fn ingest_owners(&self) -> Result<IngestOwners, StoreError> {
        Ok(self
            .get_dec(Cf::Ingest, keys::ingest::OWNERS)?
            .unwrap_or_default())
    }

    pub(super) fn ingest_totals(&self) -> Result<IngestTotals, StoreError> {
        Ok(self
            .get_dec(Cf::Ingest, keys::ingest::TOTALS)?
            .unwrap_or_default())
    }

    pub(super) fn apply_ingest_weight(
        &mut self,
        node: u64,
        weight: u32,
    ) -> Result<Outcome, ApplyError> {
        self.put(
            Cf::Ingest,
            keys::ingest::weight_key(node).to_vec(),
            codec::encode(&weight),
        );
        Ok(Outcome::Done)
    }

    pub(super) fn apply_owners_changed(
        &mut self,
        epoch: u64,
        members: &[IngestMember],
        dedupe_window_ms: u64,
    ) -> Result<Outcome, ApplyError> {
        let current = self.ingest_owners()?;
        if epoch != current.epoch + 1 {
            return Ok(Outcome::Rejected(Rejection::StaleEpoch {
                proposed: epoch,
                current: current.epoch,
            }));
        }
        let owners = IngestOwners {
            epoch,
            members: members.to_vec(),
            dedupe_window_ms,
            // Set by the members' configuration sync, not by membership.
            excluded: current.excluded,
        };
        self.put(
            Cf::Ingest,
            keys::ingest::OWNERS.to_vec(),
            codec::encode(&owners),
        );
        self.effects.owners_changed = true;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_ingest_batch(
        &mut self,
        req: &Request,
        epoch: u64,
        proposer: u64,
        items: &[IngestItem],
    ) -> Result<Outcome, ApplyError> {
        let at_ms = req.at_ms;
        let owners = self.ingest_owners()?;
        let mut totals = self.ingest_totals()?;
        if epoch != owners.epoch {
            totals.stale_batches += 1;
            self.put(
                Cf::Ingest,
                keys::ingest::TOTALS.to_vec(),
                codec::encode(&totals),
            );
            return Ok(Outcome::Rejected(Rejection::StaleEpoch {
                proposed: epoch,
                current: owners.epoch,
            }));
        }
        self.expire_dedupe(at_ms.saturating_sub(owners.dedupe_window_ms))?;
        let (mut applied, mut suppressed, mut dropped) = (0u32, 0u32, 0u32);
        // Each device's messages, counted into its stats once per batch.
        let mut tallies: BTreeMap<String, DeviceTally> = BTreeMap::new();
        // Whether the proposer owns each device of the batch, computed once
        // per device (a batch carries many messages of fewer devices).
        let mut owned: HashMap<String, bool> = HashMap::new();
        // Every message of the batch is committed at the same time.
        let record = codec::encode(&DedupeRecord {
            committed_ms: at_ms,
        });
        for item in items {
            // A malformed batch is rejected whole: the items before the bad
            // one are rolled back with it.
            let Some(digest) = digest16(&item.digest) else {
                return content("ingest digest must be 16 bytes");
            };
            let device = item_device(&item.body);
            let proposer_owns = match owned.get(&device) {
                Some(owns) => *owns,
                None => {
                    let owns = owners.owner(&device) == Some(proposer);
                    owned.insert(device.clone(), owns);
                    owns
                }
            };
            if !proposer_owns {
                return content(format!(
                    "node {proposer} does not own device {device:?} in epoch {epoch}"
                ));
            }
            let dedupe_key = keys::ingest::dedupe_key(&digest).to_vec();
            self.effects.committed.push(digest);
            // Only a redelivered copy asks whether its digest was committed
            // within the window. A fresh message's record replaces any
            // earlier one of the same digest unread: the earlier record's
            // expiry key stays behind until it expires, and `expire_dedupe`
            // then drops the key alone, as the record names a later time.
            if item.redelivered {
                let seen: Option<DedupeRecord> = self.get_dec(Cf::Ingest, &dedupe_key)?;
                if let Some(old) = seen {
                    if at_ms.saturating_sub(old.committed_ms) <= owners.dedupe_window_ms {
                        suppressed += 1;
                        continue;
                    }
                    self.delete(
                        Cf::Ingest,
                        keys::ingest::expiry_key(old.committed_ms, &digest).to_vec(),
                    );
                }
            }
            self.put(Cf::Ingest, dedupe_key, record.clone());
            self.put(
                Cf::Ingest,
                keys::ingest::expiry_key(at_ms, &digest).to_vec(),
                Vec::new(),
            );
            // An item whose content cannot be applied is rolled back alone
            // and counted; it stays committed (acknowledged to the broker),
            // and the items beside it apply.
            let sp = self.savepoint();
            let result = match &item.body {
                IngestBody::Data(d) => self.device_data(at_ms, d).map(|o| match o {
                    DataApplied::Stored(_) => ItemOutcome::Applied,
                    DataApplied::Refused(Rejection::Quota(_)) => ItemOutcome::OverQuota,
                    DataApplied::Refused(_) => ItemOutcome::Dropped,
                    DataApplied::ClassRefused(_) => ItemOutcome::ClassRefused,
                }),
                IngestBody::Reply {
                    host,
                    class,
                    device_id,
                    command_id,
                    json,
                    ..
                } => {
                    let device = super::device_doc_id(host, class, device_id);
                    self.settle_command(at_ms, *command_id, &device, Ok(json))
                        .map(|settled| {
                            if settled {
                                ItemOutcome::Applied
                            } else {
                                ItemOutcome::Ignored
                            }
                        })
                }
                IngestBody::Dropped { .. } => Ok(ItemOutcome::Dropped),
            };
            let rejected = matches!(
                result,
                Ok(ItemOutcome::Dropped | ItemOutcome::OverQuota | ItemOutcome::ClassRefused)
                    | Err(ApplyError::Content(_))
            );
            let tally = tallies.entry(device.clone()).or_default();
            match &item.body {
                IngestBody::Data(d) => tally.message(&d.post_type, rejected),
                IngestBody::Reply { command_id, .. } if !rejected => tally.reply(*command_id),
                IngestBody::Reply { .. } => tally.message("reply", true),
                IngestBody::Dropped { .. } => tally.message("", true),
            }
            match result {
                Ok(ItemOutcome::Applied) => applied += 1,
                Ok(ItemOutcome::Dropped) => dropped += 1,
                Ok(ItemOutcome::OverQuota) => {
                    totals.over_quota += 1;
                    dropped += 1;
                }
                Ok(ItemOutcome::ClassRefused) => {
                    totals.class_refused += 1;
                    dropped += 1;
                }
                Ok(ItemOutcome::Ignored) => totals.replies_ignored += 1,
                Err(ApplyError::Content(reason)) => {
                    self.rollback(sp);
                    self.count_rejected(req, &format!("ingest item for {device}: {reason}"))?;
                    dropped += 1;
                }
                Err(e) => return Err(e),
            }
        }
        for (device, tally) in &tallies {
            self.count_device_messages(at_ms, device, tally)?;
        }
        let mut delta = StatDelta::default();
        delta.add(Counter::MessagesIngested, u64::from(applied));
        if applied > 0 {
            delta.used("ingest");
        }
        self.count_stats(at_ms, "fellow", &proposer.to_string(), &delta)?;
        totals.applied += u64::from(applied);
        totals.suppressed += u64::from(suppressed);
        totals.dropped += u64::from(dropped);
        self.put(
            Cf::Ingest,
            keys::ingest::TOTALS.to_vec(),
            codec::encode(&totals),
        );
        Ok(Outcome::Ingested {
            applied,
            suppressed,
            rejected: dropped,
        })
    }

    /// Removes dedupe records committed before `cutoff_ms`, a bounded number
    /// per call.
    fn expire_dedupe(&mut self, cutoff_ms: u64) -> Result<(), StoreError> {
        let (start, _) = keys::tag_bounds(keys::ingest::EXPIRY_PREFIX);
        let end = keys::ingest::expiry_bound(cutoff_ms);
        let old = self.scan(Cf::Ingest, &start, Some(&end), DEDUPE_EXPIRED_PER_BATCH_MAX)?;
        for (key, _) in old {
            let (at, digest) = keys::ingest::parse_expiry_key(&key)?;
            let dedupe_key = keys::ingest::dedupe_key(&digest).to_vec();
            let rec: Option<DedupeRecord> = self.get_dec(Cf::Ingest, &dedupe_key)?;
            if rec.is_some_and(|r| r.committed_ms == at) {
                self.delete(Cf::Ingest, dedupe_key);
            }
            self.delete(Cf::Ingest, key);
        }
        Ok(())
    }
}

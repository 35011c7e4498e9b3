//! Applying MQTT ingest and device command events.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utopia_raft::event::{
    Bytes, IngestBody, IngestItem, IngestMember, Outcome, Rejection, Request, StatCounter,
};

use super::{bounds, content, enc, Applier, ApplyError, StateRead};
use crate::keys::{self, Cf};
use crate::StoreError;

/// Commands kept in a device document's `commands` map (newest ids win).
pub const DEVICE_COMMANDS_KEPT_MAX: usize = 32;
/// Expired dedupe records removed per applied batch, at most.
const DEDUPE_EXPIRED_PER_BATCH_MAX: usize = 512;

/// The members that own topics, and since when (`epoch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IngestOwners {
    pub epoch: u64,
    pub members: Vec<IngestMember>,
    pub dedupe_window_ms: u64,
}

/// Cluster-wide ingest counts, kept in the log's state so that every node
/// reports the same figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DedupeRecord {
    committed_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    Pending,
    Acknowledged,
    Failed,
}

/// A device command and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: u64,
    /// The device's document id.
    pub device: String,
    /// The device's topic focus, `/${host}/${zone}/${class}/${id}`, at issue.
    pub focus: String,
    pub post_type: String,
    pub json: String,
    pub state: CommandState,
    pub attempts: u32,
    pub attempts_max: u32,
    pub issued_ms: u64,
    pub last_attempt_ms: u64,
    pub settled_ms: u64,
    pub reply_json: Option<String>,
    pub reason: Option<String>,
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

    fn ingest_totals(&self) -> Result<IngestTotals, StoreError> {
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
            enc(&weight),
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
        };
        self.put(Cf::Ingest, keys::ingest::OWNERS.to_vec(), enc(&owners));
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
            self.put(Cf::Ingest, keys::ingest::TOTALS.to_vec(), enc(&totals));
            return Ok(Outcome::Rejected(Rejection::StaleEpoch {
                proposed: epoch,
                current: owners.epoch,
            }));
        }
        self.expire_dedupe(at_ms.saturating_sub(owners.dedupe_window_ms))?;
        let (mut applied, mut suppressed, mut dropped) = (0u32, 0u32, 0u32);
        for item in items {
            // A malformed batch is rejected whole: the items before the bad
            // one are rolled back with it.
            let Some(digest) = digest16(&item.digest) else {
                return content("ingest digest must be 16 bytes");
            };
            let device = item_device(&item.body);
            if crate::ingest::owner_of(&device, &owners.members) != Some(proposer) {
                return content(format!(
                    "node {proposer} does not own device {device:?} in epoch {epoch}"
                ));
            }
            let dedupe_key = keys::ingest::dedupe_key(&digest).to_vec();
            let seen: Option<DedupeRecord> = self.get_dec(Cf::Ingest, &dedupe_key)?;
            self.effects.committed.push(digest);
            if item.redelivered
                && seen.as_ref().is_some_and(|r| {
                    at_ms.saturating_sub(r.committed_ms) <= owners.dedupe_window_ms
                })
            {
                suppressed += 1;
                continue;
            }
            if let Some(old) = seen {
                self.delete(
                    Cf::Ingest,
                    keys::ingest::expiry_key(old.committed_ms, &digest).to_vec(),
                );
            }
            self.put(
                Cf::Ingest,
                dedupe_key,
                enc(&DedupeRecord {
                    committed_ms: at_ms,
                }),
            );
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
                IngestBody::Data(d) => self.apply_device_data(at_ms, d).map(|o| match o {
                    Outcome::Rejected(Rejection::Quota(_)) => ItemOutcome::OverQuota,
                    Outcome::Rejected(_) => ItemOutcome::Dropped,
                    _ => ItemOutcome::Applied,
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
            match result {
                Ok(ItemOutcome::Applied) => applied += 1,
                Ok(ItemOutcome::Dropped) => dropped += 1,
                Ok(ItemOutcome::OverQuota) => {
                    totals.over_quota += 1;
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
        totals.applied += u64::from(applied);
        totals.suppressed += u64::from(suppressed);
        totals.dropped += u64::from(dropped);
        self.put(Cf::Ingest, keys::ingest::TOTALS.to_vec(), enc(&totals));
        Ok(Outcome::Ingested {
            applied,
            suppressed,
            rejected: dropped,
        })
    }

    /// Removes dedupe records committed before `cutoff_ms`, a bounded number
    /// per call.
    fn expire_dedupe(&mut self, cutoff_ms: u64) -> Result<(), StoreError> {
        let start = [keys::ingest::EXPIRY_PREFIX];
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

    fn command(&self, id: u64) -> Result<Option<CommandRecord>, StoreError> {
        self.get_dec(Cf::Commands, &keys::commands::record_key(id))
    }

    fn put_command(&mut self, at_ms: u64, c: &CommandRecord) -> Result<(), ApplyError> {
        self.put(
            Cf::Commands,
            keys::commands::record_key(c.id).to_vec(),
            enc(c),
        );
        let pending = keys::commands::pending_key(c.id).to_vec();
        if c.state == CommandState::Pending {
            self.put(Cf::Commands, pending, Vec::new());
        } else {
            self.delete(Cf::Commands, pending);
        }
        self.effects.commands_changed = true;
        // The device document shows its latest commands.
        let Some(mut doc) = self.get_doc(Cf::Devices, &c.device)? else {
            return Ok(());
        };
        let commands = doc.entry("commands").or_insert_with(|| json!({}));
        if !commands.is_object() {
            *commands = json!({});
        }
        let reply = match c.reply_json.as_deref() {
            None => None,
            Some(j) => {
                bounds::check_json_depth(j, bounds::JSON_DEPTH_MAX)
                    .or_else(|e| content(format!("command reply: {e}")))?;
                serde_json::from_str::<Value>(j).ok()
            }
        };
        if let Value::Object(m) = commands {
            m.insert(
                c.id.to_string(),
                json!({
                    "post_type": c.post_type,
                    "state": c.state,
                    "attempts": c.attempts,
                    "issued_ms": c.issued_ms,
                    "last_attempt_ms": c.last_attempt_ms,
                    "settled_ms": c.settled_ms,
                    "reply": reply,
                    "reason": c.reason,
                }),
            );
            // Keys are decimal ids: keep the newest by numeric order.
            if m.len() > DEVICE_COMMANDS_KEPT_MAX {
                let mut ids: Vec<u64> = m.keys().filter_map(|k| k.parse().ok()).collect();
                ids.sort_unstable();
                for id in &ids[..ids.len() - DEVICE_COMMANDS_KEPT_MAX] {
                    m.remove(&id.to_string());
                }
            }
        }
        doc.insert("last_command_ms".into(), json!(at_ms));
        self.put_doc(Cf::Devices, &c.device, doc)?;
        Ok(())
    }

    pub(super) fn apply_command_issued(
        &mut self,
        at_ms: u64,
        device: &str,
        post_type: &str,
        json_text: &str,
        attempts_max: u32,
    ) -> Result<Outcome, ApplyError> {
        let Some(doc) = self.get_doc(Cf::Devices, device)? else {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "device {device:?}"
            ))));
        };
        bounds::check_json_depth(json_text, bounds::JSON_DEPTH_MAX)
            .or_else(|e| content(format!("command payload: {e}")))?;
        if serde_json::from_str::<Value>(json_text).is_err() {
            return Ok(Outcome::Rejected(Rejection::Invalid(
                "command payload is not JSON".into(),
            )));
        }
        if post_type.is_empty() || post_type.contains(['/', '+', '#', '\0']) {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "command post_type {post_type:?} must be one topic level"
            ))));
        }
        if let Some(why) = self.command_refusal(at_ms)? {
            return Ok(Outcome::Rejected(Rejection::Quota(why)));
        }
        let focus = doc
            .get("topic_focus")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let last: u64 = self
            .get_dec(Cf::Commands, keys::commands::LAST_ID)?
            .unwrap_or(0);
        let id = last + 1;
        self.put(Cf::Commands, keys::commands::LAST_ID.to_vec(), enc(&id));
        let record = CommandRecord {
            id,
            device: device.to_string(),
            focus,
            post_type: post_type.to_string(),
            json: json_text.to_string(),
            state: CommandState::Pending,
            attempts: 0,
            attempts_max: attempts_max.max(1),
            issued_ms: at_ms,
            last_attempt_ms: 0,
            settled_ms: 0,
            reply_json: None,
            reason: None,
        };
        self.count_command(id, None)?;
        self.put_command(at_ms, &record)?;
        Ok(Outcome::Command { id })
    }

    pub(super) fn apply_command_attempted(
        &mut self,
        at_ms: u64,
        id: u64,
        attempt: u32,
    ) -> Result<Outcome, ApplyError> {
        let Some(mut c) = self.command(id)? else {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "command {id}"
            ))));
        };
        if c.state != CommandState::Pending || attempt != c.attempts + 1 {
            // A late or repeated attempt record (after a handover): the
            // command's state already says more.
            return Ok(Outcome::Command { id });
        }
        c.attempts = attempt;
        c.last_attempt_ms = at_ms;
        self.put_command(at_ms, &c)?;
        self.apply_stat(at_ms, &c.device, "device", StatCounter::Attempts, 1)?;
        Ok(Outcome::Command { id })
    }

    pub(super) fn apply_command_failed(
        &mut self,
        at_ms: u64,
        id: u64,
        reason: &str,
    ) -> Result<Outcome, ApplyError> {
        let Some(c) = self.command(id)? else {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "command {id}"
            ))));
        };
        let device = c.device.clone();
        self.settle_command(at_ms, id, &device, Err(reason))?;
        Ok(Outcome::Command { id })
    }

    /// Settles a pending command with a reply (`Ok`) or a failure (`Err`).
    /// False when the command is unknown, for another device, or settled.
    fn settle_command(
        &mut self,
        at_ms: u64,
        id: u64,
        device: &str,
        result: Result<&str, &str>,
    ) -> Result<bool, ApplyError> {
        let Some(mut c) = self.command(id)? else {
            return Ok(false);
        };
        if c.device != device || c.state != CommandState::Pending {
            return Ok(false);
        }
        c.settled_ms = at_ms;
        match result {
            Ok(reply) => {
                c.state = CommandState::Acknowledged;
                c.reply_json = Some(reply.to_string());
            }
            Err(reason) => {
                c.state = CommandState::Failed;
                c.reason = Some(reason.to_string());
                self.apply_stat(at_ms, &c.device, "device", StatCounter::Failures, 1)?;
            }
        }
        self.count_command(id, Some(at_ms))?;
        self.put_command(at_ms, &c)?;
        Ok(true)
    }
}

//! Applying device commands: issued (given the next id), attempted,
//! settled by a device's reply or given up; each shown in its device's
//! document and counted in its stats.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utopia_raft::event::{Outcome, Rejection};

use super::class_rules::{self, ClassCheck};
use super::stats::{Counter, StatDelta};
use super::{bounds, content, Applier, ApplyError, StateRead};
use crate::codec;
use crate::documents::{self, Device, DeviceCommand};
use crate::keys::{self, Cf};
use crate::StoreError;

/// Commands kept in a device document's `commands` map (newest ids win).
pub const DEVICE_COMMANDS_KEPT_MAX: usize = 32;

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

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn command(&self, id: u64) -> Result<Option<CommandRecord>, StoreError> {
        self.get_dec(Cf::Commands, &keys::commands::record_key(id))
    }

    pub(super) fn put_command(&mut self, at_ms: u64, c: &CommandRecord) -> Result<(), ApplyError> {
        self.put(
            Cf::Commands,
            keys::commands::record_key(c.id).to_vec(),
            codec::encode(c),
        );
        let pending = keys::commands::pending_key(c.id).to_vec();
        if c.state == CommandState::Pending {
            self.put(Cf::Commands, pending, Vec::new());
        } else {
            self.delete(Cf::Commands, pending);
        }
        self.effects.commands_changed = true;
        // The device document shows its latest commands.
        let Some(mut doc) = self.get_doc::<Device>(&c.device)? else {
            return Ok(());
        };
        let reply = match c.reply_json.as_deref() {
            None => None,
            Some(j) => {
                bounds::check_json_depth(j, bounds::JSON_DEPTH_MAX)
                    .or_else(|e| content(format!("command reply: {e}")))?;
                serde_json::from_str::<Value>(j).ok()
            }
        };
        let shown = DeviceCommand {
            post_type: c.post_type.clone(),
            state: c.state,
            attempts: c.attempts,
            issued_ms: c.issued_ms,
            last_attempt_ms: c.last_attempt_ms,
            settled_ms: c.settled_ms,
            reply,
            reason: c.reason.clone(),
        };
        let m = &mut doc.commands;
        m.insert(c.id.to_string(), documents::entry(&shown));
        // Keys are decimal ids: keep the newest by numeric order.
        if m.len() > DEVICE_COMMANDS_KEPT_MAX {
            let mut ids: Vec<u64> = m.keys().filter_map(|k| k.parse().ok()).collect();
            ids.sort_unstable();
            for id in &ids[..ids.len() - DEVICE_COMMANDS_KEPT_MAX] {
                m.remove(&id.to_string());
            }
        }
        doc.last_command_ms = Some(at_ms);
        self.put_doc(&c.device, doc)?;
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
        let Some(doc) = self.get_doc::<Device>(device)? else {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "device {device:?}"
            ))));
        };
        bounds::check_json_depth(json_text, bounds::JSON_DEPTH_MAX)
            .or_else(|e| content(format!("command payload: {e}")))?;
        let Ok(payload) = serde_json::from_str::<Value>(json_text) else {
            return Ok(Outcome::Rejected(Rejection::Invalid(
                "command payload is not JSON".into(),
            )));
        };
        if post_type.is_empty() || post_type.contains(['/', '+', '#', '\0']) {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "command post_type {post_type:?} must be one topic level"
            ))));
        }
        let checked = match self.class_check(&doc.class)? {
            ClassCheck::Untyped => Ok(()),
            ClassCheck::Refused(reason) => Err(Rejection::FailedPrecondition(reason)),
            ClassCheck::Typed(record) => {
                class_rules::check_command(&doc.class, &record, post_type, &payload)
                    .map_err(Rejection::Invalid)
            }
        };
        if let Err(rejection) = checked {
            return Ok(Outcome::Rejected(rejection));
        }
        if let Some(why) = self.command_refusal(at_ms)? {
            return Ok(Outcome::Rejected(Rejection::Quota(why)));
        }
        let focus = doc.topic_focus;
        let last: u64 = self
            .get_dec(Cf::Commands, keys::commands::LAST_ID)?
            .unwrap_or(0);
        let id = last + 1;
        self.put(
            Cf::Commands,
            keys::commands::LAST_ID.to_vec(),
            codec::encode(&id),
        );
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
        let mut delta = StatDelta::default();
        delta
            .add(Counter::Commands, 1)
            .used(format!("command/{id}"));
        self.count_stats(at_ms, "device", &c.device, &delta)?;
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
    pub(super) fn settle_command(
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
                let mut delta = StatDelta::default();
                delta
                    .add(Counter::CommandsFailed, 1)
                    .used(format!("command/{id}/failed"));
                self.count_stats(at_ms, "device", &c.device, &delta)?;
            }
        }
        self.count_command(id, Some(at_ms))?;
        self.put_command(at_ms, &c)?;
        Ok(true)
    }
}

//! Applying [`Event::ConfigSyncState`]: whether a member holds the
//! accepted version of a configuration on its disk, and what ingest does
//! about a member that does not.
//!
//! A member that could not write and verify the accepted file of a device
//! class (after its bounded retries) ignores that class: it is listed in
//! the version's `failing`, its fellows document shows the warning, and it
//! is excluded from owning the class's devices ([`IngestOwners::excluded`],
//! a new owners epoch). Once it verifies the file it is cleared again.
//!
//! [`Event::ConfigSyncState`]: utopia_raft::event::Event::ConfigSyncState
//! [`IngestOwners::excluded`]: super::IngestOwners::excluded

use utopia_raft::event::{Outcome, Rejection};

use super::{Applier, ApplyError, StateRead};
use crate::codec;
use crate::documents::{ConfigFailing, ConfigState, Fellow, XmlConfig};
use crate::keys::{self, Cf};

/// Characters of a member's failure reason kept in the documents, at most.
pub const SYNC_REASON_CHARS_MAX: usize = 512;

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// `node` holds the accepted `name@version` on its disk (`failing:
    /// false`), or gave up writing and verifying it (`failing: true`).
    /// Refused unless that version is the accepted one.
    pub(super) fn apply_config_sync_state(
        &mut self,
        at_ms: u64,
        node: u64,
        name: &str,
        version: u64,
        failing: bool,
        reason: &str,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{name}@{version}");
        let Some(mut doc) = self.get_doc::<XmlConfig>(&id)? else {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "configuration {id}"
            ))));
        };
        if doc.state != ConfigState::Accepted {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "configuration {id} is {}, not accepted: only the accepted version is synced",
                state_name(doc.state)
            ))));
        }
        let reason = bounded(reason);

        // The version's list of failing members.
        let listed = doc.failing.iter().position(|f| f.node == node);
        let list_changed = match (failing, listed) {
            (true, Some(i)) => {
                let entry = &mut doc.failing[i];
                let changed = entry.reason != reason;
                entry.reason = reason.clone();
                changed
            }
            (true, None) => {
                doc.failing.push(ConfigFailing {
                    node,
                    reason: reason.clone(),
                    since_ms: at_ms,
                });
                doc.failing.sort_by_key(|f| f.node);
                true
            }
            (false, Some(i)) => {
                doc.failing.remove(i);
                true
            }
            (false, None) => false,
        };
        if list_changed {
            self.put_doc(&id, doc)?;
        }

        // The member's fellows document.
        let fellow_id = node.to_string();
        let fellow = self.get_doc::<Fellow>(&fellow_id)?;
        let shown = fellow
            .as_ref()
            .and_then(|f| f.config_failing.get(name))
            .cloned();
        let wanted = failing.then_some(reason);
        if shown != wanted {
            let mut fellow = fellow.unwrap_or_else(|| Fellow::new(node));
            match wanted {
                Some(reason) => fellow.config_failing.insert(name.to_string(), reason),
                None => fellow.config_failing.remove(name),
            };
            self.put_doc(&fellow_id, fellow)?;
        }

        // Device ownership: a change is a new owners epoch, so that
        // batches proposed under the old ownership are refused.
        let mut owners = self.ingest_owners()?;
        let excluded = owners.excluded.entry(name.to_string()).or_default();
        let at = excluded.binary_search(&node);
        let owners_changed = match (failing, at) {
            (true, Err(i)) => {
                excluded.insert(i, node);
                true
            }
            (false, Ok(i)) => {
                excluded.remove(i);
                true
            }
            _ => false,
        };
        if excluded.is_empty() {
            owners.excluded.remove(name);
        }
        if owners_changed {
            owners.epoch += 1;
            self.put(
                Cf::Ingest,
                keys::ingest::OWNERS.to_vec(),
                codec::encode(&owners),
            );
            self.effects.owners_changed = true;
        }
        Ok(Outcome::Done)
    }
}

fn state_name(state: ConfigState) -> &'static str {
    match state {
        ConfigState::Proposed => "proposed",
        ConfigState::Accepted => "accepted",
        ConfigState::Superseded => "superseded",
        ConfigState::Rejected => "rejected",
    }
}

/// `reason`, cut to [`SYNC_REASON_CHARS_MAX`] characters.
fn bounded(reason: &str) -> String {
    match reason.char_indices().nth(SYNC_REASON_CHARS_MAX) {
        None => reason.to_string(),
        Some((at, _)) => format!("{}...", &reason[..at]),
    }
}

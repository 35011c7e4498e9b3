//! Applying a member's configuration sync state (seed 000): whether it
//! holds the accepted version of a configuration on its disk. A failing
//! member is listed in the version's `failing` and, as the warning the
//! cluster sees, in its fellows document; a later success clears both.

use utopia_raft::event::{Outcome, Rejection};

use super::{Applier, ApplyError, StateRead};
use crate::documents::{ConfigFailing, ConfigState, Fellow, FellowConfigFailing, XmlConfig};

/// Failing members listed on one version, and failing configurations on
/// one fellows document, at most.
pub const FAILING_MAX: usize = 64;
/// Longest reason recorded; the rest is cut.
pub const SYNC_REASON_BYTES_MAX: usize = 1024;

fn cut(s: &str) -> String {
    let mut end = s.len().min(SYNC_REASON_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
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
                "{id} is not the accepted version of {name}"
            ))));
        }
        let reason = cut(reason);
        let fellow_id = node.to_string();
        let mut fellow = self
            .get_doc::<Fellow>(&fellow_id)?
            .unwrap_or_else(|| Fellow::new(node));
        if failing {
            let listed = doc.failing.len();
            match doc.failing.iter_mut().find(|f| f.node == node) {
                Some(f) => f.reason.clone_from(&reason),
                None if listed >= FAILING_MAX => {
                    return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                        "{id} already lists {FAILING_MAX} failing members"
                    ))));
                }
                None => doc.failing.push(ConfigFailing {
                    node,
                    reason: reason.clone(),
                    since_ms: at_ms,
                }),
            }
            let listed = fellow.config_failing.len();
            match fellow.config_failing.iter_mut().find(|f| f.name == name) {
                Some(f) if f.version == version => f.reason = reason,
                Some(f) => {
                    *f = FellowConfigFailing {
                        name: name.to_owned(),
                        version,
                        reason,
                        since_ms: at_ms,
                    }
                }
                None if listed >= FAILING_MAX => {
                    return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                        "member {node} already fails {FAILING_MAX} configurations"
                    ))));
                }
                None => fellow.config_failing.push(FellowConfigFailing {
                    name: name.to_owned(),
                    version,
                    reason,
                    since_ms: at_ms,
                }),
            }
        } else {
            doc.failing.retain(|f| f.node != node);
            // Holding the accepted version clears a warning about an older
            // one of the same name too.
            fellow.config_failing.retain(|f| f.name != name);
        }
        self.put_doc(&id, doc)?;
        self.put_doc(&fellow_id, fellow)?;
        Ok(Outcome::Done)
    }
}

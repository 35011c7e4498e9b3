//! The leader's part of agreement: once the window of an undecided
//! version is over, propose its decision ([`Event::ConfigDecide`]); the
//! applier counts the votes.

use std::sync::Arc;

use utopia_raft::event::Event;

use super::{read_applied, TICK};
use crate::node::Node;

/// Decisions proposed per tick, at most; the rest wait for the next tick.
const DECIDES_PER_TICK_MAX: usize = 16;
/// Wait before proposing a decision again after it failed, in milliseconds.
const DECIDE_RETRY_MS: u64 = 1000;

/// While this member leads, every [`TICK`]: reads the applied documents
/// when the applied state moved or a known window ended, and proposes a
/// decision for every version whose window is over.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was read last: at which applied index, and the next window end.
    let mut read_at: Option<u64> = None;
    let mut next_due: Option<u64> = None;
    loop {
        tick.tick().await;
        if !node.raft.is_leader() {
            read_at = None;
            continue;
        }
        let applied_index = node.raft.status().applied_index;
        let now = crate::now_ms();
        let window_over = next_due.is_some_and(|t| t <= now);
        if read_at == Some(applied_index) && !window_over {
            continue;
        }
        let applied = match read_applied(&node) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "config decider");
                continue;
            }
        };
        read_at = Some(applied_index);
        let (due, next) = applied.due(now, DECIDES_PER_TICK_MAX);
        next_due = next;
        for (name, version) in due {
            let event = Event::ConfigDecide {
                name: name.clone(),
                version,
            };
            match node.propose(event).await {
                Ok(_) => tracing::info!(name = %name, version, "configuration decided"),
                Err(e) => {
                    tracing::warn!(name = %name, version, error = %e, "decide a configuration");
                    // Again in a second (not every tick: a refusal may
                    // stand until the state changes).
                    let retry = now + DECIDE_RETRY_MS;
                    next_due = Some(next_due.map_or(retry, |t| t.min(retry)));
                }
            }
        }
    }
}

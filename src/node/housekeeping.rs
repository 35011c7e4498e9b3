//! The leader's upkeep, through the log so that every replica makes the
//! same change at the same revision: expiring leases, compacting old key
//! history, keeping the fellows collection and the replicated quotas in
//! step with the cluster. And, on every member, keeping its client address
//! published, so that followers can send clients on to the leader.
//!
//! Each loop runs until the server stops it (see [`super::Tasks`]).

use std::sync::Arc;
use std::time::Duration;

use utopia_raft::event::Event;

use super::compaction;
use super::Node;

/// Leases expired per reaper tick, at most; the rest wait for the next tick.
const LEASES_EXPIRED_PER_TICK_MAX: usize = 256;

/// How often a member checks that the cluster knows its client address.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a starting member waits for its client address to be recorded
/// before it says it is ready anyway, and how often it tries meanwhile.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(10);
pub const PUBLISH_RETRY: Duration = Duration::from_millis(100);

/// Keeps this member's client address in its fellows document, so that any
/// member can name the leader's client address to a client that asked a
/// follower. Reads locally every `PUBLISH_INTERVAL`; proposes (through
/// the leader) only when the document differs.
pub async fn publish_client_address(node: Arc<Node>, addr: String) {
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if node.raft.status().leader.is_some() {
            publish(&node, &addr).await;
        }
    }
}

/// True once this member's fellows document holds `addr` as its client
/// address; proposes it (through the leader) when it does not.
pub async fn publish(node: &Node, addr: &str) -> bool {
    let id = node.raft.id();
    if node.client_addr_of(id).as_deref() == Some(addr) {
        return true;
    }
    let event = Event::ClientAddressPublished {
        node_id: id,
        addr: addr.to_string(),
    };
    let req = utopia_raft::Request::new(crate::now_ms(), event);
    match node.raft.propose_anywhere(req, PUBLISH_INTERVAL * 5).await {
        Ok(_) => {
            tracing::info!(addr = %addr, "published this member's client address");
            // Applied on the leader; this member's copy may lag a moment.
            node.client_addr_of(id).as_deref() == Some(addr)
        }
        Err(e) => {
            tracing::debug!(error = %e, "publish this member's client address");
            false
        }
    }
}

/// While this node leads: expires leases and compacts old key history.
/// Both go through the log, so every replica makes the same change at the
/// same revision.
pub async fn run(node: Arc<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.raft.is_leader() {
            continue;
        }
        reap_leases(&node).await;
        compact_history(&node).await;
        sync_fellows(&node).await;
        sync_quotas(&node).await;
    }
}

/// A follower that has not acknowledged a heartbeat for this long is shown
/// as inactive in the fellows collection.
const FELLOW_INACTIVE_AFTER_MS: u64 = 3_000;
/// Fellows documents read per housekeeping tick, at most.
const FELLOWS_MAX: usize = 1000;
/// Active fellows' `last_active_ms` is refreshed at most this often.
const FELLOW_REFRESH_MS: u64 = 30_000;

/// Keeps the fellows collection in step with the cluster: while this node
/// leads, it proposes a FellowStateChanged event for every member whose
/// role, address or liveness differs from its document (and, for active
/// members, at least every `FELLOW_REFRESH_MS`), and marks removed members
/// inactive.
async fn sync_fellows(node: &Node) {
    use utopia_raft::event::{FellowRole, FellowState};
    use utopia_storage::documents::Fellow;
    let st = node.raft.status();
    let mut wanted: Vec<FellowState> = st
        .members
        .iter()
        .map(|(id, (addr, voter))| {
            let role = if st.leader == Some(*id) {
                FellowRole::Leader
            } else if *voter {
                FellowRole::Follower
            } else {
                FellowRole::Learner
            };
            let active = *id == st.id
                || st
                    .heartbeat_age_ms
                    .get(id)
                    .is_some_and(|age| *age < FELLOW_INACTIVE_AFTER_MS);
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .to_string();
            FellowState {
                node_id: *id,
                host,
                addr: addr.clone(),
                active,
                role,
                weight: 1,
            }
        })
        .collect();
    // One read of the collection: the documents to compare against, and
    // members that left (they stay in the collection, inactive).
    let current: std::collections::BTreeMap<u64, Fellow> =
        match node.reader.documents::<Fellow>(FELLOWS_MAX) {
            Ok(docs) => docs
                .into_iter()
                .filter_map(|doc| match doc {
                    Ok(f) => Some((f.id, f)),
                    Err(e) => {
                        // Left as it is; the rest are kept in step.
                        tracing::debug!(error = %e, "skip a fellows document");
                        None
                    }
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "read the fellows collection");
                return;
            }
        };
    for (id, doc) in &current {
        if st.members.contains_key(id) || doc.active == Some(false) {
            continue;
        }
        wanted.push(FellowState {
            node_id: *id,
            host: doc.host.clone().unwrap_or_default(),
            addr: doc.addr.clone().unwrap_or_default(),
            active: false,
            role: doc.state.unwrap_or(FellowRole::Follower),
            weight: doc.weight.unwrap_or(1),
        });
    }
    let now = crate::now_ms();
    for f in wanted {
        let unchanged = current.get(&f.node_id).is_some_and(|d| {
            d.addr.as_deref() == Some(f.addr.as_str())
                && d.active == Some(f.active)
                && d.state == Some(f.role)
                && d.weight == Some(f.weight)
                && (!f.active
                    || d.last_active_ms
                        .is_some_and(|t| now.saturating_sub(t) < FELLOW_REFRESH_MS))
        });
        if unchanged {
            continue;
        }
        let id = f.node_id;
        if let Err(e) = node.propose(Event::FellowStateChanged(f)).await {
            tracing::debug!(node = id, error = %e, "update fellow");
        }
    }
}

/// Makes the replicated quotas this node's `limits` (while it leads).
async fn sync_quotas(node: &Node) {
    let mut wanted = node.limits.quotas();
    wanted.require_class = node.configs.require_class;
    match node.reader.quotas() {
        Ok(current) if current == wanted => {}
        Ok(_) => match node.propose(Event::QuotasChanged(wanted)).await {
            Ok(_) => tracing::info!(quotas = ?wanted, "quotas set"),
            Err(e) => tracing::warn!(error = %e, "set the quotas"),
        },
        Err(e) => tracing::error!(error = %e, "read the quotas"),
    }
}

/// Proposes an expiry for every lease whose deadline has passed, at most
/// `LEASES_EXPIRED_PER_TICK_MAX` per call.
async fn reap_leases(node: &Node) {
    let expired = match node
        .reader
        .expired_leases(crate::now_ms(), LEASES_EXPIRED_PER_TICK_MAX)
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "read lease deadlines");
            return;
        }
    };
    for id in expired {
        match node.propose(Event::LeaseExpired { id }).await {
            Ok(_) => {
                node.metrics.leases_expired.inc();
                tracing::debug!(lease = id, "lease expired");
            }
            Err(e) => tracing::warn!(lease = id, error = %e, "expire lease"),
        }
    }
}

/// Compaction steps per housekeeping tick, at most (64,000 revisions: far
/// more than writes add between ticks); a larger backlog is compacted over
/// the next ticks, so that lease expiry is not held up behind it.
const COMPACT_STEPS_PER_TICK_MAX: usize = 64;

/// Keeps at most `history_revisions_max` revisions of key history, plus a
/// tenth so that compactions come in batches rather than one per write.
/// A batch is proposed in steps ([`compaction_steps`]), each waiting for
/// the one before.
async fn compact_history(node: &Node) {
    let kept = node.limits.history_revisions_max as i64;
    let (current, compacted) = match node.reader.revisions() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "read revisions");
            return;
        }
    };
    let mut done = None;
    for revision in compaction_steps(current, compacted, kept) {
        match node.propose(Event::Compact { revision }).await {
            Ok(_) => {
                node.metrics.compactions.inc();
                done = Some(revision);
            }
            Err(e) => {
                tracing::warn!(revision, error = %e, "compact key history");
                break;
            }
        }
    }
    if let Some(revision) = done {
        tracing::info!(revision, "compacted key history");
    }
}

/// The revisions to compact to, in order, when the history runs from
/// `compacted` to `current` and `kept` revisions are to stay: none until
/// the history is a tenth past `kept`, then [`compaction::steps`] towards
/// `current - kept`, at most `COMPACT_STEPS_PER_TICK_MAX` of them.
fn compaction_steps(current: i64, compacted: i64, kept: i64) -> Vec<i64> {
    if current - compacted <= kept + (kept / 10).max(1) {
        return Vec::new();
    }
    compaction::steps(compacted, current - kept)
        .take(COMPACT_STEPS_PER_TICK_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::compaction::COMPACT_STEP_REVISIONS_MAX;
    use super::*;

    #[test]
    fn compaction_waits_for_a_tenth_more_history_then_steps_to_what_is_kept() {
        assert!(compaction_steps(110_000, 0, 100_000).is_empty());
        assert_eq!(
            compaction_steps(110_001, 0, 100_000),
            (1..=10)
                .map(|i| i * 1_000)
                .chain([10_001])
                .collect::<Vec<_>>()
        );
        assert!(compaction_steps(152_500, 50_000, 100_000).is_empty());
        assert_eq!(
            compaction_steps(53_500, 50_000, 1_000),
            vec![51_000, 52_000, 52_500]
        );
        // Small histories: one step, and at least one revision past `kept`.
        assert!(compaction_steps(21, 0, 20).is_empty());
        assert_eq!(compaction_steps(60, 0, 20), vec![40]);
        assert_eq!(compaction_steps(3, 0, 1), vec![2]);
    }

    #[test]
    fn a_large_backlog_is_compacted_over_several_ticks() {
        let steps = compaction_steps(10_000_000, 0, 100);
        assert_eq!(steps.len(), COMPACT_STEPS_PER_TICK_MAX);
        assert_eq!(steps.first(), Some(&COMPACT_STEP_REVISIONS_MAX));
        assert_eq!(
            steps.last(),
            Some(&(COMPACT_STEPS_PER_TICK_MAX as i64 * COMPACT_STEP_REVISIONS_MAX))
        );
        assert!(steps
            .windows(2)
            .all(|w| w[1] - w[0] == COMPACT_STEP_REVISIONS_MAX));
    }
}

//! Database space: every node watches its own state machine's size against
//! `limits.db_bytes_max` and, past it, raises the NOSPACE alarm through the
//! log, so that every member agrees on it and it survives restarts (as
//! etcd's `--quota-backend-bytes` does). While an alarm is active, writes
//! that add data are refused, in the API before proposing and in apply;
//! reads, deletes, compaction, lease revokes and `utopia alarm disarm` go
//! on. After a disarm a member still over its limit raises it again.
//!
//! The size is what RocksDB holds for the state machine: table files (with
//! every version still held) and memtables; the Raft log is not counted,
//! as etcd does not count its WAL. Deleted data leaves the table files
//! only when RocksDB compacts them, and while the current Raft snapshot (a
//! view of the database) holds them; so before raising the alarm (and
//! again after each disarm) the node takes a snapshot, flushes and
//! compacts its state machine, and measures again.

use std::sync::Arc;
use std::time::Duration;

use utopia_raft::event::{AlarmKind, Event, Request};

use crate::node::Node;

/// How often a node measures its database.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long taking a snapshot before a compaction may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a forwarded alarm proposal may take before it is tried again.
const ALARM_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs on every node until the process ends.
pub async fn watch(node: Arc<Node>, db_bytes_max: u64) {
    let me = node.raft.id();
    let mut tick = tokio::time::interval(SPACE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The disarm count when this node last compacted while over its limit:
    // it compacts once per disarm (and once per crossing of the limit)
    // before raising, not at every attempt.
    let mut compacted_at: Option<u64> = None;
    // When this node last proposed its alarm: a follower may measure again
    // before it has applied its own alarm, and need not propose it twice.
    let mut proposed_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let state = match node.reader.alarm_state() {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(error = %e, "read the active alarms");
                continue;
            }
        };
        let mut used = node.reader.state_machine_bytes();
        node.metrics
            .db_space_used_bytes
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        let raised = state
            .alarms
            .iter()
            .any(|a| a.node_id == me && a.alarm == AlarmKind::NoSpace);
        if raised || used <= db_bytes_max {
            if !raised {
                compacted_at = None;
            }
            proposed_at = None;
            continue;
        }
        if proposed_at.is_some_and(|t| t.elapsed() < ALARM_PROPOSE_TIMEOUT) {
            continue;
        }
        if compacted_at != Some(state.disarms) {
            compacted_at = Some(state.disarms);
            tracing::info!(
                used_bytes = used,
                db_bytes_max,
                "database over its limit: compacting before raising NOSPACE"
            );
            // The current snapshot keeps the state it was taken at
            // readable: a new one lets go of what was deleted since.
            if let Err(e) = node.raft.snapshot_now(SNAPSHOT_TIMEOUT).await {
                tracing::warn!(error = %e, "take a snapshot before compacting");
            }
            let reader = node.reader.clone();
            match tokio::task::spawn_blocking(move || reader.compact_state_machine()).await {
                Ok(Ok(after)) => {
                    node.metrics.db_space_compactions.inc();
                    node.metrics
                        .db_space_used_bytes
                        .set(i64::try_from(after).unwrap_or(i64::MAX));
                    used = after;
                }
                Ok(Err(e)) => tracing::error!(error = %e, "compact the state machine"),
                Err(e) => tracing::error!(error = %e, "compact the state machine"),
            }
            if used <= db_bytes_max {
                continue;
            }
        }
        // Carries the disarms seen before measuring: if one is applied
        // first, this raise is ignored and the node measures again.
        let event = Event::AlarmRaised {
            node_id: me,
            alarm: AlarmKind::NoSpace,
            disarms: state.disarms,
        };
        match node
            .raft
            .propose_anywhere(Request::new(crate::now_ms(), event), ALARM_PROPOSE_TIMEOUT)
            .await
        {
            Ok(_) => {
                proposed_at = Some(tokio::time::Instant::now());
                node.metrics
                    .alarms_raised
                    .get_or_create(&crate::metrics::AlarmName {
                        alarm: AlarmKind::NoSpace.name(),
                    })
                    .inc();
                tracing::warn!(
                    used_bytes = used,
                    db_bytes_max,
                    "NOSPACE alarm raised: writes that add data are refused until `utopia alarm disarm`"
                );
            }
            // Tried again at the next tick (without compacting again).
            Err(e) => tracing::warn!(error = %e, "raise the NOSPACE alarm"),
        }
    }
}

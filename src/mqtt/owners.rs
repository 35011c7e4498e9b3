//! Topic ownership through the log: while a node leads, it keeps the
//! ingest owners (the members that take part, with their weights) in step
//! with which voters are alive, one `IngestOwnersChanged` event per change.
//! Each member announces its own weight (`IngestWeight`), 0 when it has no
//! device bridge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use utopia_raft::event::{Event, IngestMember, Request};

use crate::node::Node;

const TICK: Duration = Duration::from_millis(250);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the weight in the log is compared with the wanted one when
/// nothing has changed.
const RECHECK: Duration = Duration::from_secs(5);

/// Keeps this node's weight in the log equal to the wanted one: the
/// configured weight while its device bridges are connected, 0 while one is
/// not (so that its devices move to members that receive their messages).
pub async fn keep_weight(node: Arc<Node>, node_id: u64, mut wanted: watch::Receiver<u32>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let weight = *wanted.borrow_and_update();
        let current = match node.reader.ingest_weights() {
            Ok(w) => w.get(&node_id).copied(),
            Err(e) => {
                tracing::error!(error = %e, "read ingest weights");
                None
            }
        };
        if current == Some(weight) || (current.is_none() && weight == 0) {
            delay = Duration::from_millis(100);
            // Until the wanted weight changes, or a while (a restored
            // snapshot could hold another value).
            changed_or_elapsed(&mut wanted, RECHECK).await;
            continue;
        }
        let req = Request::new(crate::now_ms(), Event::IngestWeight { node_id, weight });
        match node.raft.propose_anywhere(req, PROPOSE_TIMEOUT).await {
            Ok(_) => {
                tracing::info!(weight, "announced topic ownership weight");
                continue;
            }
            Err(e) => tracing::debug!(error = %e, "announce topic ownership weight"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Waits until `rx` sees a new value or `interval` has passed. Once the
/// sender is gone (a node without device bridges drops it at start),
/// `changed` fails at once every time: then it waits out the interval,
/// instead of turning its caller into a busy loop.
async fn changed_or_elapsed<T>(rx: &mut watch::Receiver<T>, interval: Duration) {
    if let Ok(Err(_closed)) = tokio::time::timeout(interval, rx.changed()).await {
        tokio::time::sleep(interval).await;
    }
}

/// While this node leads, proposes a new owners epoch whenever the live
/// voters with a weight differ from the current owners.
pub async fn maintain(node: Arc<Node>, owner_timeout_ms: u64, dedupe_window_ms: u64) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        if !node.raft.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let st = node.raft.status();
        let (weights, owners) = match (node.reader.ingest_weights(), node.reader.ingest_owners()) {
            (Ok(w), Ok(o)) => (w, o),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "read ingest owners");
                continue;
            }
        };
        // A new leader has no heartbeat ages yet: until it has led for one
        // timeout, a member without one counts as alive.
        let settled = since.elapsed() >= Duration::from_millis(owner_timeout_ms);
        let alive = |id: &u64| {
            *id == st.id
                || match st.heartbeat_age_ms.get(id) {
                    Some(age) => *age < owner_timeout_ms,
                    None => !settled,
                }
        };
        let want: Vec<IngestMember> = st
            .members
            .iter()
            .filter(|(id, (_, voter))| *voter && alive(id))
            .filter_map(|(id, _)| {
                let weight = weights.get(id).copied().unwrap_or(0);
                (weight > 0).then_some(IngestMember {
                    node_id: *id,
                    weight,
                })
            })
            .collect();
        if want == owners.members && owners.dedupe_window_ms == dedupe_window_ms {
            continue;
        }
        if want.is_empty() && owners.epoch == 0 {
            continue;
        }
        let epoch = owners.epoch + 1;
        let members = want.clone();
        let req = Request::new(
            crate::now_ms(),
            Event::IngestOwnersChanged {
                epoch,
                members,
                dedupe_window_ms,
            },
        );
        match node.raft.propose(req).await {
            Ok(_) => tracing::info!(
                epoch,
                members = ?want.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                "topic owners changed"
            ),
            Err(e) => tracing::debug!(error = %e, "change topic owners"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_closed_watch_waits_out_the_interval() {
        let (tx, mut rx) = watch::channel(0u32);
        drop(tx);
        let start = tokio::time::Instant::now();
        changed_or_elapsed(&mut rx, RECHECK).await;
        assert!(
            start.elapsed() >= RECHECK,
            "returned after {:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_value_ends_the_wait_early() {
        let (tx, mut rx) = watch::channel(0u32);
        let start = tokio::time::Instant::now();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(7).unwrap();
            tx
        });
        changed_or_elapsed(&mut rx, RECHECK).await;
        assert_eq!(*rx.borrow(), 7);
        assert!(start.elapsed() < RECHECK, "waited {:?}", start.elapsed());
        drop(sender.await.unwrap());
    }
}

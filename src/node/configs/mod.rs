//! Configuration sync, the member side (seed 000, issue 15): every member
//! with a `configs.dir` watches it and votes for the valid files it finds,
//! records the files it refuses, and keeps the accepted version of every
//! configuration written there as `{name}.xml`; the leader decides the
//! versions whose agreement window is over.
//!
//! - [`core`]: the decisions, without I/O.
//! - [`disk`]: listing, bounded reads, the atomic verified write.
//! - [`sync`]: the member's task (watcher, scans, votes, writes).
//! - [`decide`]: the leader's task.

pub mod core;
pub mod decide;
pub mod disk;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use utopia_raft::event::{Event, Outcome, Rejection};
use utopia_raft::Request;
use utopia_storage::documents::XmlConfig;

use super::Node;

/// How often the member's and the leader's tasks look at the applied state.
pub const TICK: Duration = Duration::from_millis(200);
/// `xml_configs` documents read at once, at most (versions and refused
/// files together).
pub const DOCS_READ_MAX: usize = 4096;
/// How long a member waits for a proposal it forwards to the leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reason recorded for a refused file (the leader refuses a
/// forwarded reason above 1024 bytes).
pub const REASON_BYTES_MAX: usize = 1000;

/// Starts the leader's decider on every member, and the directory sync on
/// a member with a `configs.dir`.
pub fn start(node: &Arc<Node>) {
    node.tasks
        .spawn("config decider", decide::run(node.clone()));
    if !node.configs.dir.as_os_str().is_empty() {
        node.tasks.spawn("config sync", sync::run(node.clone()));
    }
}

/// The applied `xml_configs` documents (those that do not decode are
/// skipped and logged).
pub fn read_applied(node: &Node) -> Result<core::Applied, String> {
    let docs = node
        .reader
        .documents::<XmlConfig>(DOCS_READ_MAX)
        .map_err(|e| format!("read the xml_configs collection: {e}"))?;
    Ok(core::Applied::new(docs.into_iter().filter_map(
        |d| match d {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(error = %e, "skip an xml_configs document");
                None
            }
        },
    )))
}

/// Proposes `event` from this member (forwarded to the leader when this
/// member does not lead). `Ok(Err(_))`: the log refused it; `Err`: it did
/// not get through (no leader, timeout), so its outcome is unknown.
pub async fn propose(node: &Node, event: Event) -> Result<Result<(), Rejection>, String> {
    let name = event.name();
    let started = std::time::Instant::now();
    let req = Request::new(crate::now_ms(), event);
    match node.raft.propose_anywhere(req, PROPOSE_TIMEOUT).await {
        Ok(resp) => match resp.outcome {
            Outcome::Rejected(r) => {
                node.metrics.proposed(name, started, Ok(Some(r.reason())));
                Ok(Err(r))
            }
            _ => {
                node.metrics.proposed(name, started, Ok(None));
                Ok(Ok(()))
            }
        },
        Err(e) => {
            node.metrics
                .proposed(name, started, Err(crate::metrics::propose_failure(&e)));
            Err(e.to_string())
        }
    }
}

/// `reason` cut to [`REASON_BYTES_MAX`] bytes (at a character boundary).
pub fn bounded_reason(mut reason: String) -> String {
    if reason.len() > REASON_BYTES_MAX {
        let mut end = REASON_BYTES_MAX - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

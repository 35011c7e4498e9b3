//! Why a proposal, read barrier or membership change did not complete, and
//! how openraft's errors map onto it.

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};

use crate::TypeConfig;

/// Why a proposal or read barrier did not complete. Each variant calls for a
/// different action by the caller.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    /// Ask the leader instead (its id and address, when known).
    #[error("not the leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// A quorum could not be reached; retrying later may succeed.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The node has stopped (shutdown or a storage failure).
    #[error("raft node stopped: {0}")]
    Stopped(String),
    /// The proposal may or may not commit (its entry was appended, then
    /// leadership changed): retrying could apply it twice.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request conflicts with the cluster's state (for example another
    /// membership change is in progress); retry once that has settled.
    #[error("{0}")]
    Conflict(String),
    /// The request cannot succeed as given.
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(e @ ClientWriteError::LogEntryDiscarded(_)) => {
            ProposeError::OutcomeUnknown(e.to_string())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => {
                let at = |l: &Option<openraft::alias::LogIdOf<TypeConfig>>| {
                    l.as_ref()
                        .map_or_else(|| "none".to_string(), |l| l.index.to_string())
                };
                ProposeError::Conflict(format!(
                    "a membership change is already in progress (the membership at log index {} \
                     is not committed yet; the last committed one is at {}); \
                     retry once it completes",
                    at(&p.membership_log_id),
                    at(&p.committed)
                ))
            }
            ChangeMembershipError::UncommittedLeaderLog(_) => ProposeError::Conflict(
                "membership changes wait until a new leader has committed its first entry; \
                 retry shortly"
                    .to_string(),
            ),
            other => ProposeError::Invalid(other.to_string()),
        },
        RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
            ProposeError::Conflict(e.to_string())
        }
        RaftError::Fatal(e) => ProposeError::Stopped(e.to_string()),
    }
}

fn leader_hint(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; leader is node {id} at {addr}"),
        (Some(id), None) => format!("; leader is node {id}"),
        _ => "; no leader is known".to_string(),
    }
}

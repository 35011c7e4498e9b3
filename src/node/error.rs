//! What can go wrong in the application core, by what the caller should do
//! about it. The core never speaks gRPC: `api::status` turns these into
//! status codes, the MQTT and housekeeping loops log them.

use utopia_raft::event::Rejection;
use utopia_raft::ProposeError;
use utopia_storage::read::ReadError;
use utopia_storage::StoreError;

/// Why the core did not do what it was asked. Each variant calls for a
/// different action by the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This member does not lead: ask the leader, by the client address it
    /// published when one is known.
    #[error("not the leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// Nothing was done and nothing can be now (no quorum, a snapshot being
    /// installed, the server stopping): retry later or on another member.
    #[error("{0}")]
    Unavailable(String),
    /// A proposal that may or may not commit (leadership changed after it
    /// was appended, or the node stopped): retrying could apply it twice.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The request conflicts with the cluster's state (a membership change
    /// in progress); retry once that has settled.
    #[error("{0}")]
    Conflict(String),
    /// Refused by the state machine (alike on every replica), or before
    /// proposing for the same reason (an active alarm).
    #[error("{0}")]
    Rejected(Rejection),
    /// The request is not valid as given. `reason` is the label it is
    /// counted under in `requests_rejected_total`.
    #[error("{message}")]
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// A revision outside the history kept: compacted, or not written yet.
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow the request (authenticating while
    /// authentication is off).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No valid identity. `reason` is the label it is counted under in
    /// `auth_failures_total`.
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    /// The caller's roles do not allow the request.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bound was reached (proposals in flight, watchers, password checks):
    /// retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Reading or writing the local database failed.
    #[error("storage error: {0}")]
    Storage(StoreError),
    /// Something that should not happen (a task that failed to run, an
    /// outcome of the wrong kind).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An invalid request, counted under `reason`.
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            reason,
            message: message.into(),
        }
    }
}

fn leader_hint(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; leader is node {id} at {addr}"),
        (Some(id), None) => format!("; leader is node {id}"),
        _ => "; no leader is known".to_string(),
    }
}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Self {
        let message = e.to_string();
        match e {
            ProposeError::NotLeader {
                leader_id,
                leader_addr,
            } => Error::NotLeader {
                leader_id,
                leader_addr,
            },
            ProposeError::Unavailable(_) => Error::Unavailable(message),
            // A stopped node may have appended the proposal before it
            // stopped: its outcome is as unknown as after a lost leadership.
            ProposeError::Stopped(_) | ProposeError::OutcomeUnknown(_) => {
                Error::OutcomeUnknown(message)
            }
            ProposeError::Conflict(_) => Error::Conflict(message),
            // Only membership changes are refused this way.
            ProposeError::Invalid(_) => Error::invalid("bad_member", message),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Storage(e)
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Compacted { .. } | ReadError::Future { .. } => {
                Error::OutOfRange(e.to_string())
            }
            ReadError::Store(s) => Error::Storage(s),
        }
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        Error::Rejected(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_errors_keep_their_meaning_and_their_words() {
        let not_leader = Error::from(ProposeError::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("127.0.0.1:7702".into()),
        });
        assert_eq!(
            not_leader.to_string(),
            "not the leader; leader is node 2 at 127.0.0.1:7702"
        );
        let e = Error::from(ProposeError::NotLeader {
            leader_id: None,
            leader_addr: None,
        });
        assert_eq!(e.to_string(), "not the leader; no leader is known");
        let e = Error::from(ProposeError::Stopped("shut down".into()));
        assert!(matches!(e, Error::OutcomeUnknown(_)), "{e:?}");
        assert_eq!(e.to_string(), "raft node stopped: shut down");
        let e = Error::from(ProposeError::Unavailable("no quorum".into()));
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert_eq!(e.to_string(), "cluster unavailable: no quorum");
        let e = Error::from(ReadError::Compacted {
            requested: 1,
            compacted: 5,
        });
        assert!(matches!(e, Error::OutOfRange(_)), "{e:?}");
    }
}

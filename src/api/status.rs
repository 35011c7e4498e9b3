//! The one place where internal errors become gRPC statuses.
//!
//! Every status carries a message a person can act on; NOT_LEADER answers
//! also carry the leader's address in the `utopia-leader` metadata entry so
//! that clients can redirect.

use tonic::{Code, Status};
use utopia_raft::event::Rejection;
use utopia_raft::ProposeError;
use utopia_storage::read::ReadError;
use utopia_storage::StoreError;

pub const LEADER_METADATA_KEY: &str = "utopia-leader";

pub fn from_propose(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader {
            ref leader_addr, ..
        } => {
            let mut status = Status::unavailable(e.to_string());
            if let Some(addr) = leader_addr.as_deref().and_then(|a| a.parse().ok()) {
                status.metadata_mut().insert(LEADER_METADATA_KEY, addr);
            }
            status
        }
        ProposeError::Unavailable(_) => Status::unavailable(e.to_string()),
        // Not UNAVAILABLE: clients retry that on another server, and a
        // proposal that may already have committed must not be retried.
        ProposeError::Stopped(_) | ProposeError::OutcomeUnknown(_) => {
            Status::unknown(e.to_string())
        }
        ProposeError::Conflict(_) => Status::failed_precondition(e.to_string()),
        ProposeError::Invalid(_) => Status::invalid_argument(e.to_string()),
    }
}

pub fn from_rejection(r: Rejection) -> Status {
    let code = match r {
        Rejection::LeaseNotFound(_) | Rejection::NotFound(_) => Code::NotFound,
        Rejection::StaleEpoch { .. } => Code::Aborted,
        Rejection::LeaseExists(_) | Rejection::AlreadyExists(_) => Code::AlreadyExists,
        Rejection::FailedPrecondition(_) => Code::FailedPrecondition,
        Rejection::Compacted { .. } | Rejection::FutureRevision { .. } => Code::OutOfRange,
        Rejection::DuplicateKey(_) | Rejection::Invalid(_) => Code::InvalidArgument,
        // Retrying does not help: the request must be made smaller.
        Rejection::TooLarge { .. } => Code::InvalidArgument,
        // Like etcd's NOSPACE: nothing more fits until an operator acts.
        Rejection::Alarm { .. } | Rejection::Quota(_) => Code::ResourceExhausted,
    };
    Status::new(code, r.to_string())
}

pub fn from_read(e: ReadError) -> Status {
    match e {
        ReadError::Compacted { .. } | ReadError::Future { .. } => {
            Status::out_of_range(e.to_string())
        }
        ReadError::Store(s) => from_store(s),
    }
}

pub fn from_store(e: StoreError) -> Status {
    tracing::error!(error = %e, "storage error while serving a request");
    Status::internal(format!("storage error: {e}"))
}

pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

//! The one place where the core's errors become gRPC statuses.
//!
//! Every status carries a message a person can act on; NOT_LEADER answers
//! (UNAVAILABLE) also carry the leader's client address in the
//! `utopia-leader` metadata entry so that clients can redirect.

use tonic::{Code, Status};
use utopia_raft::event::Rejection;

use crate::node::Error;

pub const LEADER_METADATA_KEY: &str = "utopia-leader";

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::NotLeader { leader_addr, .. } => {
                let mut status = Status::unavailable(message);
                if let Some(addr) = leader_addr.as_deref().and_then(|a| a.parse().ok()) {
                    status.metadata_mut().insert(LEADER_METADATA_KEY, addr);
                }
                status
            }
            Error::Unavailable(_) => Status::unavailable(message),
            // Not UNAVAILABLE: clients retry that on another server, and a
            // proposal that may already have committed must not be retried.
            Error::OutcomeUnknown(_) => Status::unknown(message),
            Error::Conflict(_) | Error::FailedPrecondition(_) => {
                Status::failed_precondition(message)
            }
            Error::Rejected(r) => Status::new(rejection_code(&r), message),
            Error::Invalid { .. } => Status::invalid_argument(message),
            Error::OutOfRange(_) => Status::out_of_range(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::Unauthenticated { .. } => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Storage(s) => {
                // Logged here, where it is handled: the client only learns
                // that the server failed.
                tracing::error!(error = %s, "storage error while serving a request");
                Status::internal(message)
            }
            Error::Internal(_) => Status::internal(message),
        }
    }
}

fn rejection_code(r: &Rejection) -> Code {
    match r {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_gets_the_code_its_callers_act_on() {
        let not_leader = Status::from(Error::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("127.0.0.1:7702".into()),
        });
        assert_eq!(not_leader.code(), Code::Unavailable);
        assert_eq!(
            not_leader
                .metadata()
                .get(LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:7702")
        );
        assert!(not_leader.message().starts_with("not the leader"));
        let check = |e: Error, code: Code| assert_eq!(Status::from(e).code(), code);
        check(Error::OutcomeUnknown("x".into()), Code::Unknown);
        check(Error::Unavailable("x".into()), Code::Unavailable);
        check(Error::invalid("too_large", "x"), Code::InvalidArgument);
        check(Error::Rejected(Rejection::LeaseNotFound(1)), Code::NotFound);
        check(
            Error::Rejected(Rejection::Quota("x".into())),
            Code::ResourceExhausted,
        );
        check(
            Error::ResourceExhausted("x".into()),
            Code::ResourceExhausted,
        );
        check(
            Error::Unauthenticated {
                reason: "expired_token",
                message: "x".into(),
            },
            Code::Unauthenticated,
        );
        check(Error::PermissionDenied("x".into()), Code::PermissionDenied);
        check(Error::OutOfRange("x".into()), Code::OutOfRange);
    }
}

//! A member that is not the leader hands a proposal to the leader (MQTT
//! ingest, device commands, a member publishing its client address).
//!
//! The leader treats a forwarded proposal as it treats its own clients'
//! requests: before proposing, it runs the application's [`ForwardCheck`]
//! (which event kinds members may forward, sizes and bounds, a timestamp
//! near its own clock). A peer's credentials let it forward; they do not
//! let it put anything into the log.

use std::sync::Arc;
use std::time::Duration;

use utopia_proto::raft_v1::raft_transport_client::RaftTransportClient;

use super::GrpcNetwork;
use crate::{event, ProposeError, Request, Response};

/// Decides whether a proposal forwarded by a peer may be proposed; the
/// error says why not.
pub type ForwardCheck = Arc<dyn Fn(&Request) -> Result<(), String> + Send + Sync>;

impl GrpcNetwork {
    /// Hands `request` to the leader at `addr` and returns its result.
    pub(crate) async fn forward(
        &self,
        addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ProposeError> {
        let channel = self.channel(addr).map_err(ProposeError::Unavailable)?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(self.settings.message_bytes_max)
            .max_encoding_message_size(self.settings.message_bytes_max);
        let cbor = event::encode(request).map_err(|e| ProposeError::Invalid(e.to_string()))?;
        let reply = match tokio::time::timeout(timeout, client.propose(self.message(cbor))).await {
            Ok(Ok(reply)) => reply.into_inner(),
            // Not sent, or refused before proposing: safe to retry.
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                return Err(ProposeError::Unavailable(format!(
                    "forward to the leader at {addr}: {}",
                    s.message()
                )))
            }
            // Refused by the leader's checks: never proposed.
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) =>
            {
                return Err(ProposeError::Invalid(format!(
                    "the leader at {addr} refused the proposal: {}",
                    s.message()
                )))
            }
            Ok(Err(s)) => {
                return Err(ProposeError::OutcomeUnknown(format!(
                    "forward to the leader at {addr}: {}",
                    s.message()
                )))
            }
            Err(_) => {
                return Err(ProposeError::OutcomeUnknown(format!(
                    "forward to the leader at {addr}: no reply within {timeout:?}"
                )))
            }
        };
        let result: Result<Response, ProposeError> = event::decode(&reply.cbor)
            .map_err(|e| ProposeError::OutcomeUnknown(format!("leader's reply: {e}")))?;
        result
    }
}

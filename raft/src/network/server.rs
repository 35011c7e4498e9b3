//! The service peers call on the peer port: every call passes the
//! [`PeerGuard`] (certificate name with peer TLS, then the cluster id of
//! each message) before Raft or the state machine sees anything.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use openraft::base::BoxStream;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::storage::RaftStateMachine;
use openraft::Raft;
use tonic::Status;
use utopia_proto::raft_v1 as pb;

use super::encoded::EncodedEntries;
use super::forward::ForwardCheck;
use super::guard::{PeerGuard, Refusal};
use super::replication::StreamReply;
use super::snapshot::{self, Incoming};
use crate::event;
use crate::TypeConfig;

/// The server side of the transport: checks messages from peers and hands
/// them to the local Raft node.
pub struct TransportService<SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>> {
    raft: Raft<TypeConfig, SM>,
    guard: Arc<PeerGuard>,
    incoming: Incoming,
    forward_check: ForwardCheck,
    /// The log, given the encodings of the entries a leader sends.
    log: Arc<dyn EncodedEntries>,
}

impl<SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>> TransportService<SM> {
    pub(crate) fn new(
        raft: Raft<TypeConfig, SM>,
        guard: Arc<PeerGuard>,
        incoming_dir: std::path::PathBuf,
        snapshot_bytes_max: u64,
        forward_check: ForwardCheck,
        log: Arc<dyn EncodedEntries>,
    ) -> Self {
        snapshot::remove_leftovers(&incoming_dir);
        Self {
            raft,
            guard,
            incoming: Incoming {
                dir: incoming_dir,
                bytes_max: snapshot_bytes_max,
            },
            forward_check,
            log,
        }
    }

    /// The checks this service applies, and their counts.
    pub fn guard(&self) -> Arc<PeerGuard> {
        self.guard.clone()
    }

    fn reply<T: serde::Serialize>(
        &self,
        result: &T,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        let cbor = event::encode(result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::RaftMessage {
            cbor,
            cluster_id: self.guard.cluster().get(),
        }))
    }

    /// The message, once the caller and its cluster id pass the guard.
    fn checked<'r>(
        &self,
        req: &'r tonic::Request<pb::RaftMessage>,
    ) -> Result<&'r pb::RaftMessage, Status> {
        self.guard.check_caller(req)?;
        let m = req.get_ref();
        self.guard.check_cluster(m.cluster_id)?;
        Ok(m)
    }

    /// The caller and the message pass the guard; then the message decodes.
    fn admit<T: serde::de::DeserializeOwned>(
        &self,
        req: &tonic::Request<pb::RaftMessage>,
    ) -> Result<T, Status> {
        decode(&self.guard, self.checked(req)?)
    }
}

/// Entries and snapshots come only from a leader, whose vote is committed.
/// openraft takes an uncommitted vote as the leader's all the same (and
/// stops on an assertion in debug builds): refuse it here.
pub(super) fn check_leader_vote(
    guard: &PeerGuard,
    vote: &openraft::alias::VoteOf<TypeConfig>,
) -> Result<(), Status> {
    if vote.is_committed() {
        return Ok(());
    }
    Err(guard.refuse(
        Refusal::Malformed,
        Status::invalid_argument(format!(
            "entries or a snapshot under vote {vote}, which is not a leader's (not committed)"
        )),
    ))
}

fn decode<T: serde::de::DeserializeOwned>(
    guard: &PeerGuard,
    m: &pb::RaftMessage,
) -> Result<T, Status> {
    malformed(guard, event::decode(&m.cbor))
}

/// An AppendEntries request, decoded as `decode` does (see `received`);
/// its entries' encodings go to `log`, for their append to store.
fn decode_append(
    guard: &PeerGuard,
    log: &dyn EncodedEntries,
    m: &pb::RaftMessage,
) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    let (rpc, encodings) = malformed(guard, super::received::decode_append(&m.cbor))?;
    if !encodings.is_empty() {
        log.received(
            rpc.entries
                .iter()
                .zip(encodings)
                .map(|(entry, at)| (entry.clone(), m.cbor[at].to_vec()))
                .collect(),
        );
    }
    Ok(rpc)
}

/// A message that does not decode is refused (and counted) as malformed.
fn malformed<T>(guard: &PeerGuard, decoded: Result<T, event::CodecError>) -> Result<T, Status> {
    decoded.map_err(|e| {
        guard.refuse(
            Refusal::Malformed,
            Status::invalid_argument(format!("raft message: {e}")),
        )
    })
}

#[tonic::async_trait]
impl<SM> pb::raft_transport_server::RaftTransport for TransportService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>,
{
    async fn append_entries(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        let rpc = decode_append(&self.guard, &*self.log, self.checked(&req)?)?;
        check_leader_vote(&self.guard, &rpc.vote)?;
        self.reply(
            &self
                .raft
                .append_entries(rpc)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    type StreamAppendStream = BoxStream<'static, Result<pb::RaftMessage, Status>>;

    async fn stream_append(
        &self,
        req: tonic::Request<tonic::Streaming<pb::RaftMessage>>,
    ) -> Result<tonic::Response<Self::StreamAppendStream>, Status> {
        self.guard.check_caller(&req)?;
        // A message that does not pass the guard or does not decode ends the
        // requests; the replies to the requests before it are sent, then
        // the error.
        let bad = Arc::new(Mutex::new(None::<Status>));
        let bad_in = bad.clone();
        let guard = self.guard.clone();
        let log = self.log.clone();
        let requests = futures::stream::unfold(req.into_inner(), move |mut inbound| {
            let bad = bad_in.clone();
            let guard = guard.clone();
            let log = log.clone();
            async move {
                let m = inbound.message().await.ok()??;
                let admitted = guard
                    .check_cluster(m.cluster_id)
                    .and_then(|()| decode_append(&guard, &*log, &m))
                    .and_then(|rpc| check_leader_vote(&guard, &rpc.vote).map(|()| rpc));
                match admitted {
                    Ok(rpc) => Some((rpc, inbound)),
                    Err(status) => {
                        *bad.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
                        None
                    }
                }
            }
        });
        let cluster_id = self.guard.cluster().clone();
        let replies = self.raft.stream_append(requests).map(move |result| {
            let reply: StreamReply = result.map_err(|fatal| fatal.to_string());
            event::encode(&reply)
                .map(|cbor| pb::RaftMessage {
                    cbor,
                    cluster_id: cluster_id.get(),
                })
                .map_err(|e| Status::internal(e.to_string()))
        });
        let trailer = futures::stream::once(async move {
            bad.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        })
        .filter_map(|status| std::future::ready(status.map(Err)));
        Ok(tonic::Response::new(Box::pin(replies.chain(trailer))))
    }

    async fn vote(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.admit(&req)?;
        self.reply(&self.raft.vote(rpc).await.map_err(|e| e.to_string()))
    }

    async fn pre_vote(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.admit(&req)?;
        self.reply(&self.raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
    }

    async fn transfer_leader(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = self.admit(&req)?;
        self.reply(
            &self
                .raft
                .handle_transfer_leader(rpc)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    async fn propose(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        let request = super::received::decode_request(&self.checked(&req)?.cbor).map_err(|e| {
            self.guard.refuse(
                Refusal::Malformed,
                Status::invalid_argument(format!("forwarded request: {e}")),
            )
        })?;
        if let Err(why) = (self.forward_check)(&request) {
            return Err(self.guard.refuse(
                Refusal::Forwarded,
                Status::invalid_argument(format!(
                    "forwarded {} refused: {why}",
                    request.event.name()
                )),
            ));
        }
        let result: Result<crate::Response, crate::ProposeError> = self
            .raft
            .client_write(request)
            .await
            .map(|r| r.data)
            .map_err(crate::error::write_error);
        self.reply(&result)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<tonic::Response<pb::RaftMessage>, Status> {
        self.guard.check_caller(&req)?;
        let result =
            snapshot::receive(&self.guard, &self.raft, &self.incoming, req.into_inner()).await?;
        self.reply(&result)
    }
}

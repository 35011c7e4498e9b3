//! The calls a node makes to one peer: openraft's `RaftNetworkV2`.

use std::future::Future;

use futures::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, ReplicationClosed, StreamingError};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use tonic::transport::Channel;
use utopia_proto::raft_v1 as pb;
use utopia_proto::raft_v1::raft_transport_client::RaftTransportClient;

use super::replication::StreamItem;
use super::{network, status_error, unreachable, ClusterId, GrpcNetwork, TransportSettings};
use crate::event;
use crate::TypeConfig;

/// A client for one peer.
pub struct PeerClient {
    pub(super) target: u64,
    pub(super) addr: String,
    client: Result<RaftTransportClient<Channel>, String>,
    pub(super) settings: TransportSettings,
    cluster: ClusterId,
    snapshot_sends: std::sync::Arc<super::SnapshotSends>,
    pub(super) encoded: Option<std::sync::Arc<dyn super::EncodedEntries>>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        let client = self.channel(&node.addr).map(|ch| {
            RaftTransportClient::new(ch)
                .max_decoding_message_size(self.settings.message_bytes_max)
                .max_encoding_message_size(self.settings.message_bytes_max)
        });
        PeerClient {
            target,
            addr: node.addr.clone(),
            client,
            settings: self.settings.clone(),
            cluster: self.cluster.clone(),
            snapshot_sends: self.snapshot_sends.clone(),
            encoded: self.encoded.clone(),
        }
    }
}

impl PeerClient {
    pub(super) fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(unreachable(self.target, &self.addr, e)))
    }

    pub(super) fn status_error(&self, status: tonic::Status) -> RPCError<TypeConfig> {
        status_error(self.target, &self.addr, status)
    }

    /// The id of the cluster this node belongs to, as of now.
    pub(super) fn cluster_id(&self) -> u64 {
        self.cluster.get()
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, pb::RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftMessage>, tonic::Status>>,
    {
        let cbor = event::encode(req)
            .map_err(|e| RPCError::Network(network(self.target, &self.addr, e)))?;
        let message = pb::RaftMessage {
            cbor,
            cluster_id: self.cluster_id(),
        };
        let fut = call(self.client()?, message);
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(self.status_error(status)),
            Err(_) => {
                return Err(RPCError::Unreachable(unreachable(
                    self.target,
                    &self.addr,
                    format!("no reply within {:?}", option.hard_ttl()),
                )))
            }
        };
        let result: Result<Resp, String> = event::decode(&reply.cbor)
            .map_err(|e| RPCError::Network(network(self.target, &self.addr, e)))?;
        result.map_err(|e| {
            RPCError::Network(network(self.target, &self.addr, format!("remote: {e}")))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = crate::SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let ttl = self.settings.append_reply_timeout.max(option.hard_ttl());
        Box::pin(async move { self.open_stream(input, ttl).await })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, m| async move { c.vote(m).await })
            .await
    }

    /// A member that does not know `PreVote` (an older build, during a
    /// rolling upgrade) counts as granting it, so that elections still
    /// happen; the real vote decides.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let granted: Result<VoteResponse<TypeConfig>, String> =
            Ok(VoteResponse::new(rpc.vote, None, true));
        let granted = event::encode(&granted)
            .map_err(|e| RPCError::Network(network(self.target, &self.addr, e)))?;
        self.unary(&rpc, &option, |mut c, m| async move {
            let cluster_id = m.cluster_id;
            match c.pre_vote(m).await {
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    Ok(tonic::Response::new(pb::RaftMessage {
                        cbor: granted,
                        cluster_id,
                    }))
                }
                other => other,
            }
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, &option, |mut c, m| async move {
            c.transfer_leader(m).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::alias::VoteOf<TypeConfig>,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, crate::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let result = self.send_snapshot(vote, snapshot, cancel).await;
        let counter = match result {
            Ok(_) => &self.snapshot_sends.sent,
            Err(_) => &self.snapshot_sends.failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }
}

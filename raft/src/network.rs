//! The transport between Raft nodes.
//!
//! A single-node cluster never sends a Raft message, so [`NoPeers`] refuses
//! every send as unreachable. The gRPC transport for multi-node clusters
//! replaces it without changing the node handle.

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RaftNetworkV2};
use std::future::Future;

use crate::TypeConfig;

/// A network with no peers: every RPC fails as unreachable.
#[derive(Debug, Clone, Default)]
pub struct NoPeers<SD> {
    _snapshot: std::marker::PhantomData<fn() -> SD>,
}

impl<SD> NoPeers<SD> {
    pub fn new() -> Self {
        Self {
            _snapshot: std::marker::PhantomData,
        }
    }
}

fn unreachable(target: u64) -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error(format!(
        "node {target}: this server has no peer transport"
    )))
}

/// A client for one unreachable peer.
pub struct NoPeerClient<SD> {
    target: u64,
    _snapshot: std::marker::PhantomData<fn() -> SD>,
}

impl<SD: Send + 'static> RaftNetworkFactory<TypeConfig> for NoPeers<SD> {
    type Network = NoPeerClient<SD>;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        NoPeerClient {
            target,
            _snapshot: std::marker::PhantomData,
        }
    }
}

impl<SD: Send + 'static> RaftNetworkV2<TypeConfig> for NoPeerClient<SD> {
    type SnapshotData = SD;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(self.target)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(self.target)))
    }

    async fn full_snapshot(
        &mut self,
        _vote: openraft::alias::VoteOf<TypeConfig>,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, SD>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable(self.target)))
    }
}

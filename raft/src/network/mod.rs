//! The transport between Raft nodes: openraft's messages over gRPC, on the
//! peer port only.
//!
//! Messages are CBOR-encoded inside protobuf envelopes
//! (`utopia.raft.v1.RaftTransport`), and every one carries the cluster id
//! ([`ClusterId`]): a node refuses messages of another cluster before it
//! decodes them. One lazily connected tonic channel per peer address is
//! shared by every client openraft creates for that peer.
//!
//! - `client`: the calls a node makes to one peer (openraft's
//!   `RaftNetworkV2`).
//! - `replication`: AppendEntries on one long-lived stream per follower.
//! - `snapshot`: snapshots sent and received in bounded chunks.
//! - `server`: the service peers call, and what it checks first
//!   ([`PeerGuard`]).
//! - `forward`: a member hands a proposal to the leader, which checks it
//!   as it checks its own clients' requests.
//!
//! Connections to peers leave from this node's own peer listen IP when it
//! listens on a specific address ([`TransportSettings::source_ip`]): on a
//! multi-homed host peers then see the address they know the node by, and a
//! fault-injecting proxy can tell the nodes apart by their source address.
//! With [`TransportSettings::tls`], peers are reached over TLS and this
//! node presents its own certificate, which peers require.

mod client;
mod encoded;
#[cfg(test)]
mod fixtures;
mod forward;
mod guard;
mod received;
mod replication;
mod server;
mod snapshot;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, Unreachable};
use openraft::AnyError;
use tonic::transport::{Channel, Endpoint};

pub use client::PeerClient;
pub use encoded::EncodedEntries;
pub use forward::ForwardCheck;
pub use guard::{ClusterId, PeerGuard, Refusal};
pub use server::TransportService;

use crate::TypeConfig;

/// Settings of the transport.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub connect_timeout: Duration,
    pub snapshot_chunk_bytes: usize,
    /// Largest message either side accepts.
    pub message_bytes_max: usize,
    /// The local IP connections to peers are made from (the node's peer
    /// listen IP); `None` or an unspecified address (`0.0.0.0`, `::`)
    /// leaves the choice to the operating system.
    pub source_ip: Option<IpAddr>,
    /// TLS for connections to peers (`https`); `None`: plain text.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// How long a follower may take to answer an AppendEntries sent on a
    /// replication stream before the stream is dropped as broken. A
    /// follower's disk may pause a sync for a few hundred milliseconds
    /// under load; that is slow, not unreachable. `RaftNode::start` sets
    /// it to the election timeout.
    pub append_reply_timeout: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            snapshot_chunk_bytes: 1 << 20,
            message_bytes_max: 64 << 20,
            append_reply_timeout: Duration::from_secs(1),
            source_ip: None,
            tls: None,
        }
    }
}

impl TransportSettings {
    /// The local IP to connect to `peer` from: the configured source IP,
    /// unless it is unspecified, of the other address family, or on the
    /// other side of the loopback boundary (a node listening on 127.0.0.1
    /// cannot reach a peer on another host from that address, nor the
    /// reverse).
    pub fn source_ip_for(&self, peer: &str) -> Option<IpAddr> {
        let ip = self.source_ip.filter(|ip| !ip.is_unspecified())?;
        let peer: SocketAddr = peer.parse().ok()?;
        (ip.is_ipv4() == peer.is_ipv4() && ip.is_loopback() == peer.ip().is_loopback())
            .then_some(ip)
    }
}

/// Snapshots this node sent to followers, for the metrics.
#[derive(Debug, Default)]
pub struct SnapshotSends {
    /// Streamed whole and accepted by the follower.
    pub sent: std::sync::atomic::AtomicU64,
    /// Failed or cancelled.
    pub failed: std::sync::atomic::AtomicU64,
}

/// Creates clients for peers, sharing one channel per address.
#[derive(Clone)]
pub struct GrpcNetwork {
    settings: TransportSettings,
    cluster: ClusterId,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    pub(crate) snapshot_sends: Arc<SnapshotSends>,
    /// The log's encodings of its newest entries, which replication sends
    /// instead of encoding the entries again (see [`EncodedEntries`]).
    encoded: Option<Arc<dyn EncodedEntries>>,
}

impl GrpcNetwork {
    pub fn new(settings: TransportSettings, cluster: ClusterId) -> Self {
        Self {
            settings,
            cluster,
            channels: Arc::new(Mutex::new(HashMap::new())),
            snapshot_sends: Arc::default(),
            encoded: None,
        }
    }

    /// Replication takes the entries' encodings from `held` where it has
    /// them.
    pub fn with_encoded_entries(mut self, held: Arc<dyn EncodedEntries>) -> Self {
        self.encoded = Some(held);
        self
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "channel cache poisoned".to_string())?;
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let scheme = if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("peer address {addr:?}: {e}"))?
            .connect_timeout(self.settings.connect_timeout)
            .tcp_nodelay(true)
            .local_address(self.settings.source_ip_for(addr));
        if let Some(tls) = &self.settings.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS to peer {addr}: {e}"))?;
        }
        let ch = endpoint.connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A message for a peer: `cbor` with this node's cluster id.
    fn message(&self, cbor: Vec<u8>) -> utopia_proto::raft_v1::RaftMessage {
        utopia_proto::raft_v1::RaftMessage {
            cbor,
            cluster_id: self.cluster.get(),
        }
    }
}

fn unreachable(target: u64, addr: &str, e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error(format!("node {target} at {addr}: {e}")))
}

fn network(target: u64, addr: &str, e: impl std::fmt::Display) -> NetworkError<TypeConfig> {
    NetworkError::new(&AnyError::error(format!("node {target} at {addr}: {e}")))
}

fn status_error(target: u64, addr: &str, status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(unreachable(target, addr, status.message()))
        }
        _ => RPCError::Network(network(target, addr, status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_reached_from_the_listen_ip_where_that_can_work() {
        let with = |ip: &str| TransportSettings {
            source_ip: Some(ip.parse().unwrap()),
            ..Default::default()
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            with("127.0.0.11").source_ip_for("127.0.0.12:7700"),
            ip("127.0.0.11")
        );
        assert_eq!(
            with("10.0.0.1").source_ip_for("10.0.0.2:7700"),
            ip("10.0.0.1")
        );
        // Unspecified, another family, across the loopback boundary, or an
        // address that is not IP:PORT: the operating system chooses.
        assert_eq!(with("0.0.0.0").source_ip_for("10.0.0.2:7700"), None);
        assert_eq!(with("::").source_ip_for("[::1]:7700"), None);
        assert_eq!(with("127.0.0.1").source_ip_for("10.0.0.2:7700"), None);
        assert_eq!(with("10.0.0.1").source_ip_for("127.0.0.1:7700"), None);
        assert_eq!(with("10.0.0.1").source_ip_for("[fd00::2]:7700"), None);
        assert_eq!(with("10.0.0.1").source_ip_for("host:7700"), None);
        assert_eq!(
            TransportSettings::default().source_ip_for("127.0.0.1:1"),
            None
        );
    }
}

//! The transport between Raft nodes: openraft's messages over gRPC.
//!
//! Messages are CBOR-encoded inside protobuf envelopes
//! (`utopia.raft.v1.RaftTransport`). One lazily connected tonic channel per
//! peer address is shared by every client openraft creates for that peer.
//!
//! Replication to a follower is one long-lived `StreamAppend` stream: the
//! leader sends AppendEntries as entries arrive, up to
//! [`APPEND_IN_FLIGHT_MAX`] ahead of the follower's replies, so the next
//! entries travel while the follower syncs the previous ones, and each
//! message costs one HTTP/2 data frame instead of a whole call. A request
//! that only advances the commit index is dropped when openraft has the
//! next one ready, which carries that commit too ([`Requests`]).
//! Snapshots are streamed in chunks of at most `snapshot_chunk_bytes`, read
//! from the state machine as they are sent and never held whole in memory,
//! and written to a temporary file on the receiver before they are
//! installed.
//!
//! Connections to peers leave from this node's own listen IP when it listens
//! on a specific address ([`TransportSettings::source_ip`]): on a multi-homed
//! host peers then see the address they know the node by, and a
//! fault-injecting proxy can tell the nodes apart by their source address.
//! With [`TransportSettings::tls`], peers are reached over TLS and this
//! node presents its own certificate to peers that require one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};

use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, BasicNode, Raft, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};
use utopia_proto::raft_v1 as pb;
use utopia_proto::raft_v1::raft_transport_client::RaftTransportClient;

use crate::event;
use crate::TypeConfig;

/// Settings of the transport.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub connect_timeout: Duration,
    pub snapshot_chunk_bytes: usize,
    /// Largest message either side accepts.
    pub message_bytes_max: usize,
    /// The local IP connections to peers are made from (the node's listen
    /// IP); `None` or an unspecified address (`0.0.0.0`, `::`) leaves the
    /// choice to the operating system.
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

/// Creates clients for peers, sharing one channel per address.
#[derive(Clone)]
pub struct GrpcNetwork {
    settings: TransportSettings,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcNetwork {
    pub fn new(settings: TransportSettings) -> Self {
        Self {
            settings,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
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
}

impl GrpcNetwork {
    /// Hands `request` to the leader at `addr` and returns its result.
    pub(crate) async fn forward(
        &self,
        addr: &str,
        request: &crate::Request,
        timeout: Duration,
    ) -> Result<crate::Response, crate::ProposeError> {
        use crate::ProposeError;
        let channel = self.channel(addr).map_err(ProposeError::Unavailable)?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(self.settings.message_bytes_max)
            .max_encoding_message_size(self.settings.message_bytes_max);
        let cbor = event::encode(request).map_err(|e| ProposeError::Invalid(e.to_string()))?;
        let reply =
            match tokio::time::timeout(timeout, client.propose(pb::RaftMessage { cbor })).await {
                Ok(Ok(reply)) => reply.into_inner(),
                // Not sent, or refused before proposing: safe to retry.
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                    return Err(ProposeError::Unavailable(format!(
                        "forward to the leader at {addr}: {}",
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
        let result: Result<crate::Response, ProposeError> = event::decode(&reply.cbor)
            .map_err(|e| ProposeError::OutcomeUnknown(format!("leader's reply: {e}")))?;
        result
    }
}

/// A client for one peer.
pub struct PeerClient {
    target: u64,
    addr: String,
    client: Result<RaftTransportClient<Channel>, String>,
    settings: TransportSettings,
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

impl PeerClient {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(unreachable(self.target, &self.addr, e)))
    }

    fn status_error(&self, status: tonic::Status) -> RPCError<TypeConfig> {
        status_error(self.target, &self.addr, status)
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
        let fut = call(self.client()?, pb::RaftMessage { cbor });
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

/// AppendEntries requests on one replication stream sent and not yet
/// answered, at most. A request is taken from openraft only when one of
/// these slots is free, so entries that arrive while the follower is busy
/// go out together in the next request instead of one request each.
const APPEND_IN_FLIGHT_MAX: usize = 4;

/// openraft's requests for one stream, where a request that carries only a
/// new commit index (no entries) is replaced by the next request when
/// openraft has already made that one: it starts where the first does and
/// carries a commit index at least as new. Under a steady stream of writes
/// that saves a follower one wake-up, message and reply per write; nothing
/// is ever held back waiting for a replacement. openraft matches replies
/// to requests by log id, so a replaced request is answered by the reply to
/// its replacement.
struct Requests<S> {
    input: S,
    /// Taken from `input` as a possible replacement, but not one.
    held: Option<AppendEntriesRequest<TypeConfig>>,
    ended: bool,
}

impl<S> Requests<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    fn new(input: S) -> Self {
        Self {
            input,
            held: None,
            ended: false,
        }
    }

    async fn pull(&mut self) -> Option<AppendEntriesRequest<TypeConfig>> {
        if self.ended {
            return None;
        }
        let next = self.input.next().await;
        self.ended = next.is_none();
        next
    }

    async fn next(&mut self) -> Option<AppendEntriesRequest<TypeConfig>> {
        let mut req = match self.held.take() {
            Some(req) => req,
            None => self.pull().await?,
        };
        while req.entries.is_empty() {
            let Some(Some(next)) = self.pull().now_or_never() else {
                break;
            };
            let replaces = next.vote == req.vote
                && next.prev_log_id == req.prev_log_id
                && next.leader_commit >= req.leader_commit;
            if replaces {
                req = next;
            } else {
                self.held = Some(next);
                break;
            }
        }
        Some(req)
    }
}

/// The requests of one replication stream sent and not yet answered, by
/// the time each was sent, each holding one of the stream's slots.
struct InFlight {
    sent: Mutex<VecDeque<(Instant, tokio::sync::OwnedSemaphorePermit)>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Woken when a request is sent, so an idle wait for replies starts the
    /// new request's deadline.
    more: tokio::sync::Notify,
}

impl InFlight {
    fn new() -> Self {
        Self {
            sent: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(APPEND_IN_FLIGHT_MAX)),
            more: tokio::sync::Notify::new(),
        }
    }

    fn sent(&self, slot: tokio::sync::OwnedSemaphorePermit) {
        self.lock().push_back((Instant::now(), slot));
        self.more.notify_one();
    }

    fn oldest(&self) -> Option<Instant> {
        self.lock().front().map(|(sent, _)| *sent)
    }

    fn answered(&self) {
        self.lock().pop_front();
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, VecDeque<(Instant, tokio::sync::OwnedSemaphorePermit)>> {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one reply on a replication stream carries: the follower's result
/// for one request, or why its Raft node cannot answer at all.
type StreamReply = Result<StreamAppendResult<TypeConfig>, String>;

type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl PeerClient {
    /// Opens a `StreamAppend` stream to the peer: requests are encoded and
    /// sent as openraft yields them; each reply is matched to the oldest
    /// unanswered request. A request unanswered for `ttl` ends the stream
    /// with an error (openraft then starts a new one after its backoff).
    async fn open_stream<S>(
        &self,
        input: S,
        ttl: Duration,
    ) -> Result<BoxStream<'static, StreamItem>, RPCError<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let mut client = self.client()?;
        let (target, addr) = (self.target, self.addr.clone());
        let in_flight = Arc::new(InFlight::new());
        // openraft paces retries to a follower that keeps failing inside
        // the request stream, before it yields a request. Taking the first
        // request before connecting makes a refused connection wait out
        // that pace instead of being retried at once, over and over.
        let mut input = Requests::new(input);
        let Some(first) = take_request(&mut input, &in_flight, target).await else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let rest = futures::stream::unfold(
            (input, in_flight.clone()),
            move |(mut input, in_flight)| async move {
                let m = take_request(&mut input, &in_flight, target).await?;
                Some((m, (input, in_flight)))
            },
        );
        let requests = futures::stream::once(std::future::ready(first)).chain(rest);
        let opened = tokio::time::timeout(ttl, client.stream_append(requests)).await;
        let replies = match opened {
            Ok(Ok(replies)) => replies.into_inner(),
            Ok(Err(status)) => return Err(self.status_error(status)),
            Err(_) => {
                return Err(RPCError::Unreachable(unreachable(
                    target,
                    &addr,
                    format!("stream not opened within {ttl:?}"),
                )))
            }
        };
        let state = (replies, in_flight, target, addr);
        let out = futures::stream::unfold(Some(state), move |state| async move {
            let (mut replies, in_flight, target, addr) = state?;
            let item = loop {
                let next = match in_flight.oldest() {
                    Some(sent) => {
                        let due = tokio::time::Instant::from_std(sent + ttl);
                        match tokio::time::timeout_at(due, replies.message()).await {
                            Ok(next) => next,
                            Err(_) => {
                                break Err(RPCError::Unreachable(unreachable(
                                    target,
                                    &addr,
                                    format!("no reply within {ttl:?}"),
                                )))
                            }
                        }
                    }
                    None => tokio::select! {
                        next = replies.message() => next,
                        () = in_flight.more.notified() => continue,
                    },
                };
                break match next {
                    Ok(Some(m)) => {
                        in_flight.answered();
                        match event::decode::<StreamReply>(&m.cbor) {
                            Ok(Ok(result)) => Ok(result),
                            Ok(Err(e)) => Err(RPCError::Network(network(
                                target,
                                &addr,
                                format!("remote: {e}"),
                            ))),
                            Err(e) => Err(RPCError::Network(network(target, &addr, e))),
                        }
                    }
                    Ok(None) => return None,
                    Err(status) => Err(status_error(target, &addr, status)),
                };
            };
            let next = match &item {
                Ok(Ok(_)) => Some((replies, in_flight, target, addr)),
                _ => None,
            };
            Some((item, next))
        });
        Ok(Box::pin(out))
    }
}

/// The next request of a replication stream, encoded, once a slot is
/// free; `None` when openraft ends the stream (or, never expected, the
/// request does not encode).
async fn take_request<S>(
    input: &mut Requests<S>,
    in_flight: &InFlight,
    target: u64,
) -> Option<pb::RaftMessage>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let slot = in_flight.slots.clone().acquire_owned().await.ok()?;
    let req = input.next().await?;
    match event::encode(&req) {
        Ok(cbor) => {
            in_flight.sent(slot);
            Some(pb::RaftMessage { cbor })
        }
        Err(e) => {
            tracing::error!(target, "encode AppendEntries for the stream: {e}");
            None
        }
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
        let net_err = |e: String| StreamingError::Network(network(self.target, &self.addr, e));
        let mut client = self
            .client
            .clone()
            .map_err(|e| StreamingError::Unreachable(unreachable(self.target, &self.addr, e)))?;
        let vote_cbor = event::encode(&vote).map_err(|e| net_err(e.to_string()))?;
        let meta_cbor = event::encode(&snapshot.meta).map_err(|e| net_err(e.to_string()))?;
        let chunk_bytes = self.settings.snapshot_chunk_bytes.max(1);
        // Read the snapshot on a blocking thread, a bounded number of chunks ahead.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let mut data = snapshot.snapshot;
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let first = pb::SnapshotChunk {
                vote_cbor,
                meta_cbor,
                data: Vec::new(),
            };
            tx.blocking_send(first)
                .map_err(|_| "receiver closed".to_string())?;
            loop {
                let mut buf = vec![0u8; chunk_bytes];
                let n =
                    read_full(&mut data, &mut buf).map_err(|e| format!("read snapshot: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = pb::SnapshotChunk {
                    vote_cbor: Vec::new(),
                    meta_cbor: Vec::new(),
                    data: buf,
                };
                tx.blocking_send(chunk)
                    .map_err(|_| "receiver closed".to_string())?;
            }
        });
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            reply = send => reply,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(net_err(e)),
            Err(e) => return Err(net_err(e.to_string())),
        }
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable => {
                StreamingError::Unreachable(unreachable(self.target, &self.addr, s.message()))
            }
            _ => net_err(s.to_string()),
        })?;
        let result: Result<SnapshotResponse<TypeConfig>, String> =
            event::decode(&reply.into_inner().cbor).map_err(|e| net_err(e.to_string()))?;
        result.map_err(|e| net_err(format!("remote: {e}")))
    }
}

fn read_full(data: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = data.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// The server side of the transport: hands messages from peers to the
/// local Raft node.
pub struct TransportService<SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>> {
    raft: Raft<TypeConfig, SM>,
    /// Where incoming snapshots are written before they are installed.
    incoming_dir: PathBuf,
}

impl<SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>> TransportService<SM> {
    pub(crate) fn new(raft: Raft<TypeConfig, SM>, incoming_dir: PathBuf) -> Self {
        Self { raft, incoming_dir }
    }
}

fn reply<T: serde::Serialize>(
    result: Result<T, String>,
) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
    let cbor = event::encode(&result).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(pb::RaftMessage { cbor }))
}

fn decode_request<T: serde::de::DeserializeOwned>(m: &pb::RaftMessage) -> Result<T, tonic::Status> {
    event::decode(&m.cbor)
        .map_err(|e| tonic::Status::invalid_argument(format!("raft message: {e}")))
}

#[tonic::async_trait]
impl<SM> pb::raft_transport_server::RaftTransport for TransportService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>,
{
    async fn append_entries(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(req.get_ref())?;
        reply(
            self.raft
                .append_entries(rpc)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    type StreamAppendStream = BoxStream<'static, Result<pb::RaftMessage, tonic::Status>>;

    async fn stream_append(
        &self,
        req: tonic::Request<tonic::Streaming<pb::RaftMessage>>,
    ) -> Result<tonic::Response<Self::StreamAppendStream>, tonic::Status> {
        // A message that does not decode ends the requests; the replies to
        // the requests before it are sent, then the error.
        let bad = Arc::new(Mutex::new(None::<tonic::Status>));
        let bad_in = bad.clone();
        let requests = futures::stream::unfold(req.into_inner(), move |mut inbound| {
            let bad = bad_in.clone();
            async move {
                let m = inbound.message().await.ok()??;
                match decode_request::<AppendEntriesRequest<TypeConfig>>(&m) {
                    Ok(rpc) => Some((rpc, inbound)),
                    Err(status) => {
                        *bad.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
                        None
                    }
                }
            }
        });
        let replies = self.raft.stream_append(requests).map(|result| {
            let reply: StreamReply = result.map_err(|fatal| fatal.to_string());
            event::encode(&reply)
                .map(|cbor| pb::RaftMessage { cbor })
                .map_err(|e| tonic::Status::internal(e.to_string()))
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
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let rpc: VoteRequest<TypeConfig> = decode_request(req.get_ref())?;
        reply(self.raft.vote(rpc).await.map_err(|e| e.to_string()))
    }

    async fn transfer_leader(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode_request(req.get_ref())?;
        reply(
            self.raft
                .handle_transfer_leader(rpc)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    async fn propose(
        &self,
        req: tonic::Request<pb::RaftMessage>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        let request = event::decode_request(&req.get_ref().cbor)
            .map_err(|e| tonic::Status::invalid_argument(format!("forwarded request: {e}")))?;
        let result: Result<crate::Response, crate::ProposeError> = self
            .raft
            .client_write(request)
            .await
            .map(|r| r.data)
            .map_err(crate::node::write_error);
        let cbor = event::encode(&result).map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::RaftMessage { cbor }))
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
        use std::io::Write;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("empty snapshot stream"))?;
        let vote: openraft::alias::VoteOf<TypeConfig> = event::decode(&first.vote_cbor)
            .map_err(|e| tonic::Status::invalid_argument(format!("snapshot vote: {e}")))?;
        let meta: openraft::alias::SnapshotMetaOf<TypeConfig> = event::decode(&first.meta_cbor)
            .map_err(|e| tonic::Status::invalid_argument(format!("snapshot meta: {e}")))?;
        std::fs::create_dir_all(&self.incoming_dir).map_err(|e| {
            tonic::Status::internal(format!("create {}: {e}", self.incoming_dir.display()))
        })?;
        let path = self.incoming_dir.join("incoming.snap.tmp");
        let mut file = std::fs::File::create(&path)
            .map_err(|e| tonic::Status::internal(format!("create {}: {e}", path.display())))?;
        let write = |file: &mut std::fs::File, data: &[u8]| {
            file.write_all(data)
                .map_err(|e| tonic::Status::internal(format!("write {}: {e}", path.display())))
        };
        write(&mut file, &first.data)?;
        while let Some(chunk) = stream.message().await? {
            write(&mut file, &chunk.data)?;
        }
        file.sync_all()
            .map_err(|e| tonic::Status::internal(format!("sync {}: {e}", path.display())))?;
        drop(file);
        let file = std::fs::File::open(&path)
            .map_err(|e| tonic::Status::internal(format!("open {}: {e}", path.display())))?;
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, crate::SnapshotData> {
            meta,
            snapshot: crate::SnapshotData::new(file),
        };
        let result = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        reply(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;

    fn log_id(index: u64) -> openraft::alias::LogIdOf<TypeConfig> {
        let leader = openraft::vote::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        openraft::alias::LogIdOf::<TypeConfig>::new(leader, index)
    }

    /// A request after `prev` with entries `prev+1..=last`, committed up to `commit`.
    fn req(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::alias::VoteOf::<TypeConfig>::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries: (prev + 1..=last)
                .map(|i| openraft::alias::EntryOf::<TypeConfig>::new_blank(log_id(i)))
                .collect(),
        }
    }

    fn shape(r: &AppendEntriesRequest<TypeConfig>) -> (u64, usize, u64) {
        let index = |l: &Option<openraft::alias::LogIdOf<TypeConfig>>| l.map_or(0, |l| l.index());
        (
            index(&r.prev_log_id),
            r.entries.len(),
            index(&r.leader_commit),
        )
    }

    #[tokio::test]
    async fn a_commit_only_request_is_replaced_by_a_ready_successor_and_never_waits() {
        // Ready successor after the same entry: it replaces the commit-only one.
        let mut r = Requests::new(futures::stream::iter(vec![req(5, 5, 4), req(5, 7, 5)]));
        assert_eq!(r.next().await.as_ref().map(shape), Some((5, 2, 5)));
        assert!(r.next().await.is_none());

        // Nothing ready after it: sent as it is, at once.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut r = Requests::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        tx.send(req(5, 5, 4)).await.unwrap();
        let started = Instant::now();
        assert_eq!(r.next().await.as_ref().map(shape), Some((5, 0, 4)));
        assert!(started.elapsed() < Duration::from_secs(1));
        tx.send(req(5, 6, 5)).await.unwrap();
        assert_eq!(r.next().await.as_ref().map(shape), Some((5, 1, 5)));

        // A successor that starts elsewhere (a probe after a conflict) does
        // not replace it; both go, in order.
        let mut r = Requests::new(futures::stream::iter(vec![req(5, 5, 4), req(3, 3, 4)]));
        assert_eq!(r.next().await.as_ref().map(shape), Some((5, 0, 4)));
        assert_eq!(r.next().await.as_ref().map(shape), Some((3, 0, 4)));
        assert!(r.next().await.is_none());

        // Requests with entries are never replaced.
        let mut r = Requests::new(futures::stream::iter(vec![req(5, 6, 4), req(6, 6, 5)]));
        assert_eq!(r.next().await.as_ref().map(shape), Some((5, 1, 4)));
        assert_eq!(r.next().await.as_ref().map(shape), Some((6, 0, 5)));
        assert!(r.next().await.is_none());
    }

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

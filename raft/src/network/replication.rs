//! Replication to one follower over one long-lived `StreamAppend` stream.
//!
//! The leader sends AppendEntries as entries arrive, up to
//! [`APPEND_IN_FLIGHT_MAX`] ahead of the follower's replies, so the next
//! entries travel while the follower syncs the previous ones, and each
//! message costs one HTTP/2 data frame instead of a whole call. A request
//! that only advances the commit index is dropped when openraft has the
//! next one ready, which carries that commit too ([`Requests`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use openraft::base::BoxStream;
use openraft::error::RPCError;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use utopia_proto::raft_v1 as pb;

use super::client::PeerClient;
use super::{network, status_error, unreachable};
use crate::event;
use crate::TypeConfig;

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
pub(super) type StreamReply = Result<StreamAppendResult<TypeConfig>, String>;

pub(super) type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl PeerClient {
    /// Opens a `StreamAppend` stream to the peer: requests are encoded and
    /// sent as openraft yields them; each reply is matched to the oldest
    /// unanswered request. A request unanswered for `ttl` ends the stream
    /// with an error (openraft then starts a new one after its backoff).
    pub(super) async fn open_stream<S>(
        &self,
        input: S,
        ttl: Duration,
    ) -> Result<BoxStream<'static, StreamItem>, RPCError<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let mut client = self.client()?;
        let (target, addr) = (self.target, self.addr.clone());
        let cluster_id = self.cluster_id();
        let in_flight = Arc::new(InFlight::new());
        let encoded = self.encoded.clone();
        // openraft paces retries to a follower that keeps failing inside
        // the request stream, before it yields a request. Taking the first
        // request before connecting makes a refused connection wait out
        // that pace instead of being retried at once, over and over.
        let mut input = Requests::new(input);
        let Some(first) = take_request(&mut input, &in_flight, &encoded, target, cluster_id).await
        else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        // The rest are taken from openraft by a task of this stream's own,
        // never by the HTTP/2 body: openraft holds its replication state
        // locked while it makes a request, and a body parked on a full
        // flow-control window would keep it locked for good, so that no
        // later stream to this follower could start. The task is aborted
        // when the replies end or are dropped.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::RaftMessage>(1);
        let pump_in_flight = in_flight.clone();
        let pump = AbortOnDrop(tokio::spawn(async move {
            while let Some(m) =
                take_request(&mut input, &pump_in_flight, &encoded, target, cluster_id).await
            {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        }));
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            let m = rx.recv().await?;
            Some((m, rx))
        });
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
        let state = (replies, in_flight, target, addr, pump);
        let out = futures::stream::unfold(Some(state), move |state| async move {
            let (mut replies, in_flight, target, addr, pump) = state?;
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
                Ok(Ok(_)) => Some((replies, in_flight, target, addr, pump)),
                _ => None,
            };
            Some((item, next))
        });
        Ok(Box::pin(out))
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next request of a replication stream, encoded, once a slot is
/// free; `None` when openraft ends the stream (or, never expected, the
/// request does not encode).
async fn take_request<S>(
    input: &mut Requests<S>,
    in_flight: &InFlight,
    encoded: &Option<Arc<dyn super::EncodedEntries>>,
    target: u64,
    cluster_id: u64,
) -> Option<pb::RaftMessage>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let slot = in_flight.slots.clone().acquire_owned().await.ok()?;
    let req = input.next().await?;
    match super::encoded::encode_append(&req, encoded.as_deref()) {
        Ok(cbor) => {
            in_flight.sent(slot);
            Some(pb::RaftMessage { cbor, cluster_id })
        }
        Err(e) => {
            tracing::error!(target, "encode AppendEntries for the stream: {e}");
            None
        }
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

    /// A follower that takes the first request of a replication stream and
    /// then neither reads nor answers: a peer that stopped.
    struct Stalled;

    type Unary = Result<tonic::Response<pb::RaftMessage>, tonic::Status>;

    #[tonic::async_trait]
    impl pb::raft_transport_server::RaftTransport for Stalled {
        type StreamAppendStream = BoxStream<'static, Result<pb::RaftMessage, tonic::Status>>;

        async fn append_entries(&self, _: tonic::Request<pb::RaftMessage>) -> Unary {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn stream_append(
            &self,
            req: tonic::Request<tonic::Streaming<pb::RaftMessage>>,
        ) -> Result<tonic::Response<Self::StreamAppendStream>, tonic::Status> {
            let mut inbound = req.into_inner();
            let _first = inbound.message().await;
            let never = futures::stream::unfold(inbound, |inbound| async move {
                std::future::pending::<()>().await;
                drop(inbound);
                None
            });
            Ok(tonic::Response::new(Box::pin(never)))
        }

        async fn vote(&self, _: tonic::Request<pb::RaftMessage>) -> Unary {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn pre_vote(&self, _: tonic::Request<pb::RaftMessage>) -> Unary {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn transfer_leader(&self, _: tonic::Request<pb::RaftMessage>) -> Unary {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
        ) -> Unary {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn propose(&self, _: tonic::Request<pb::RaftMessage>) -> Unary {
            Err(tonic::Status::unimplemented("test"))
        }
    }

    /// Set when the value holding it is dropped.
    struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// openraft makes a stream's requests while holding that follower's
    /// replication state locked, and waits inside for entries to send. A
    /// stream that failed must let go of openraft's request stream at once,
    /// whatever the transport does with the request body; otherwise the
    /// next stream to that follower never starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_stream_lets_go_of_openraft_requests() {
        use openraft::network::RaftNetworkFactory;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_transport_server::RaftTransportServer::new(Stalled))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let mut network =
            super::super::GrpcNetwork::new(Default::default(), super::super::ClusterId::fixed(1));
        let node = openraft::BasicNode { addr: addr.clone() };
        let client = network.new_client(2, &node).await;

        // The first request, then a wait for entries that never come,
        // holding the flag the way openraft holds its lock.
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let input = futures::stream::once(std::future::ready(req(5, 6, 5))).chain(
            futures::stream::unfold(flag, |flag| async move {
                std::future::pending::<()>().await;
                drop(flag);
                None
            }),
        );
        let ttl = Duration::from_millis(300);
        let mut replies = client
            .open_stream(Box::pin(input), ttl)
            .await
            .expect("the stream opens");
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("the stream ends within its reply deadline");
        assert!(
            matches!(reply, Some(Err(RPCError::Unreachable(_)))),
            "{reply:?}"
        );
        drop(replies);

        let deadline = Instant::now() + Duration::from_secs(5);
        while !dropped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "openraft's request stream outlived the failed stream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

//! Bounds on the gRPC listeners, the client port and the peer port alike:
//! how many connections are open at once, TCP keep-alive on each, and how
//! long one unary request may take. (HTTP/2's own bounds, streams per connection
//! and keep-alive pings, are set on the server builder in
//! [`crate::server`].)
//!
//! Connections: the listener holds one semaphore permit per open
//! connection, and at `limits.connections_max` it stops accepting until one
//! closes (as Go's `netutil.LimitListener` does for etcd), so further
//! connections wait in the kernel's accept queue instead of costing
//! memory here. Each port has its own `limits.connections_max` permits.
//!
//! Shutdown ([`Shutdown`]): the server first lets connections drain (no new
//! streams, the open ones finish); those still open when its grace runs out
//! are closed through the port's `closed` token, which makes every read and write on
//! them fail at once. So stopping a port is bounded even while a client
//! holds a stream open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::Status;

use crate::node::Node;

/// An accepted connection and the permit it holds until it closes.
pub struct LimitedConn {
    stream: TcpStream,
    permit: Option<OwnedSemaphorePermit>,
    gauge: Arc<ConnectionGauge>,
    /// Ready once the server closes the connections still open at the end
    /// of its shutdown.
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Write coalescing on client connections.
    turn: WriteTurn,
}

impl LimitedConn {
    /// The error every read and write gets once the server closed the
    /// connection, if it has.
    fn closed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.closed.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection as it stopped",
            )
        })
    }
}

/// Write coalescing. The first write of a burst (the writes up to a
/// flush) waits one turn of the scheduler: it wakes its own task and
/// returns `Pending`, and tokio puts a task that woke itself at the back of
/// the run queue. The request tasks that one Raft batch finished therefore
/// all hand their responses to the HTTP/2 connection before it writes, and
/// the responses leave in one `writev` instead of one each (HTTP/2 holds
/// them in its own bounded write buffer meanwhile). The cost is one extra
/// poll of the connection task per burst.
///
/// Client connections without TLS coalesce. Peer connections do not: a
/// follower answers the leader's one replication stream, which has nothing
/// to coalesce with. Nor do TLS connections: the TLS layer above this one
/// takes the burst's first write into its own buffer when this one waits,
/// and sends it at the flush in the same poll, so waiting would only cost
/// the extra poll.
#[derive(Debug, Clone, Copy)]
struct WriteTurn {
    coalesce: bool,
    /// The burst under way has already waited its turn.
    waited: bool,
}

impl WriteTurn {
    fn new(coalesce: bool) -> Self {
        WriteTurn {
            coalesce,
            waited: false,
        }
    }

    /// Whether the write about to be made waits a turn first (its task is
    /// then already woken).
    fn wait(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.coalesce || self.waited {
            return false;
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        true
    }

    /// The burst is out: the next write starts a new one.
    fn flushed(&mut self) {
        self.waited = false;
    }
}

/// Which listener: each has its own connection bound and gauge.
#[derive(Debug, Clone, Copy)]
pub enum Port {
    /// `listen`: gauge `grpc_connections`.
    Client,
    /// `peer_listen`: gauge `peer_connections`.
    Peer,
}

impl Port {
    fn gauge(self, m: &crate::metrics::Metrics) -> &prometheus_client::metrics::gauge::Gauge {
        match self {
            Port::Client => &m.grpc_connections,
            Port::Peer => &m.peer_connections,
        }
    }

    fn waited(self, m: &crate::metrics::Metrics) -> &prometheus_client::metrics::counter::Counter {
        match self {
            Port::Client => &m.grpc_connections_waited,
            Port::Peer => &m.peer_connections_waited,
        }
    }
}

/// The open connections, published as the port's gauge.
struct ConnectionGauge {
    port: Port,
    node: Arc<Node>,
    permits: Arc<Semaphore>,
    connections_max: usize,
}

impl ConnectionGauge {
    fn publish(&self) {
        let open = self.connections_max - self.permits.available_permits();
        self.port
            .gauge(&self.node.metrics)
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }
}

impl Drop for LimitedConn {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.gauge.publish();
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        if self.turn.wait(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if flushed.is_ready() {
            self.turn.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.closed(cx) {
            return Poll::Ready(Err(e));
        }
        if self.turn.wait(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections `listener` accepts, at most `connections_max` open at
/// once; each is `TCP_NODELAY` (small replies must not wait for Nagle's
/// algorithm and the peer's delayed ACK) and has TCP keep-alive probes
/// after `tcp_keepalive` of silence, so that a vanished client's
/// connection (and its permit) is dropped. Open connections are the gauge
/// `grpc_connections`; accepts that had to wait for a permit are counted.
/// Cancelling `closed` closes every connection still open. With
/// `coalesce_writes` the responses a burst of finished requests writes
/// leave together (see `WriteTurn`).
pub fn incoming(
    listener: TcpListener,
    port: Port,
    connections_max: usize,
    tcp_keepalive: Duration,
    node: Arc<Node>,
    closed: CancellationToken,
    coalesce_writes: bool,
) -> impl Stream<Item = io::Result<LimitedConn>> {
    let permits = Arc::new(Semaphore::new(connections_max));
    let gauge = Arc::new(ConnectionGauge {
        port,
        node,
        permits,
        connections_max,
    });
    futures::stream::unfold(
        (listener, gauge, closed),
        move |(listener, gauge, closed)| async move {
            let permit = match gauge.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    gauge.port.waited(&gauge.node.metrics).inc();
                    // The semaphore is never closed.
                    gauge.permits.clone().acquire_owned().await.ok()?
                }
            };
            let accepted = listener.accept().await.and_then(|(stream, _)| {
                stream.set_nodelay(true)?;
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(tcp_keepalive)
                    .with_interval(tcp_keepalive);
                socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
                Ok(stream)
            });
            let item = accepted.map(|stream| LimitedConn {
                stream,
                permit: Some(permit),
                gauge: gauge.clone(),
                closed: Box::pin(closed.clone().cancelled_owned()),
                turn: WriteTurn::new(coalesce_writes),
            });
            gauge.publish();
            Some((item, (listener, gauge, closed)))
        },
    )
}

/// A port's two stages of stopping: `draining` (no new connections; the
/// open ones finish their streams), then `closed` (the connections still
/// open fail their reads and writes, so they end at once).
#[derive(Default)]
pub struct Shutdown {
    pub draining: CancellationToken,
    pub closed: CancellationToken,
}

/// How a port's server task ended.
pub type Served = Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>;

impl Shutdown {
    /// Waits for `server` to drain until `deadline`, then closes what is
    /// still open and waits for it to end.
    pub async fn stop(
        &self,
        mut server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
        deadline: tokio::time::Instant,
        port: &str,
    ) -> Served {
        self.draining.cancel();
        match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(served) => served,
            Err(_elapsed) => {
                tracing::info!(port, "closing the connections still open");
                self.closed.cancel();
                server.await
            }
        }
    }
}

/// A service whose every call must be answered within `timeout`, or it is
/// dropped and answered DEADLINE_EXCEEDED (a write may still commit, as
/// with any deadline). For unary services only: the deadline covers the
/// call until its response starts, which for a stream is only its start.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
    node: Arc<Node>,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, timeout: Duration, node: Arc<Node>) -> Self {
        Self {
            inner,
            timeout,
            node,
        }
    }
}

impl<S: NamedService> NamedService for Deadline<S> {
    const NAME: &'static str = S::NAME;
}

type ResponseFuture = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

impl<S, B> tonic::codegen::Service<http::Request<B>> for Deadline<S>
where
    S: tonic::codegen::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = self.inner.call(req);
        let timeout = self.timeout;
        let node = self.node.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(response) => response,
                Err(_) => {
                    node.metrics.requests_timed_out.inc();
                    Ok(Status::deadline_exceeded(format!(
                        "the request took longer than request_timeout_ms = {}; a write may \
                         still have committed",
                        timeout.as_millis()
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker counting into the returned `Wakes`.
    fn counting_waker() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes::default());
        (wakes.clone(), std::task::Waker::from(wakes))
    }

    #[test]
    fn a_coalescing_write_burst_waits_one_turn_and_wakes_its_task() {
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut turn = WriteTurn::new(true);

        assert!(turn.wait(&mut cx), "the burst's first write waits");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and its task is woken");
        assert!(!turn.wait(&mut cx), "the retried write goes out");
        assert!(!turn.wait(&mut cx), "so do the rest of the burst");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        turn.flushed();
        assert!(turn.wait(&mut cx), "the next burst waits again");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_write_without_coalescing_never_waits() {
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut turn = WriteTurn::new(false);
        for _ in 0..3 {
            assert!(!turn.wait(&mut cx));
            turn.flushed();
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }
}

//! Prometheus metrics (`metrics.listen`; off when empty), through the
//! `prometheus-client` crate, on `GET /metrics` in the text exposition
//! format.
//!
//! What is exported:
//! - gRPC per method: `utopia_grpc_requests_total{method,code}` and
//!   `utopia_grpc_request_duration_seconds{method}` (a layer on the client
//!   port; methods the server does not serve are counted as `other`);
//! - Raft: term, leader, whether this member leads, last log, applied,
//!   snapshot and purged index, and leader changes seen by this member;
//! - storage: revision, compacted revision, database size;
//! - cluster-wide ingest figures from the replicated state;
//! - every counter of `utopia status` (`Node::counters`), under its own
//!   name and labels with the `utopia_` prefix.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::node::Node;

/// Connections served at once, at most; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 16;
/// How long one scrape connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The metrics that accumulate between scrapes.
pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    leader_changes: Counter,
    /// The leader last seen, for `leader_changes`.
    last_leader: std::sync::Mutex<Option<u64>>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("utopia");
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC requests on the client port, by method and status code",
            requests.clone(),
        );
        let durations = Family::<MethodLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to the response headers of gRPC requests, by method",
            durations.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "raft_leader_changes",
            "Changes of the leader this member saw (an election won by any member)",
            leader_changes.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            leader_changes,
            last_leader: std::sync::Mutex::new(None),
        }
    }
}

impl Metrics {
    fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        // A method the server does not serve is anything a client made up:
        // one label for all of them, so that labels stay bounded.
        let method = if code == tonic::Code::Unimplemented {
            "other"
        } else {
            method
        };
        self.requests
            .get_or_create(&CallLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
        self.durations
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts leader changes: called with the leader this member knows
    /// now (by a watch every 100 ms, and at every scrape).
    pub fn saw_leader(&self, now: Option<u64>) {
        let Some(now) = now else {
            return;
        };
        let mut last = self
            .last_leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != Some(now) {
            self.leader_changes.inc();
            *last = Some(now);
        }
    }
}

/// Everything at this moment, in the text format.
pub fn render(node: &Node) -> String {
    let mut now = Registry::with_prefix("utopia");
    let st = node.raft.status();
    node.metrics.saw_leader(st.leader);
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        registry.register(name, help, g);
    };
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(&mut now, "raft_term", "Current Raft term", as_i64(st.term));
    gauge(
        &mut now,
        "raft_leader",
        "Node id of the leader this member knows (0: none)",
        as_i64(st.leader.unwrap_or(0)),
    );
    gauge(
        &mut now,
        "raft_is_leader",
        "1 while this member leads",
        i64::from(st.leader == Some(st.id)),
    );
    for (name, help, v) in [
        (
            "raft_last_log_index",
            "Last index in this member's log",
            st.last_log_index,
        ),
        (
            "raft_applied_index",
            "Last index applied to the state machine",
            st.applied_index,
        ),
        (
            "raft_snapshot_index",
            "Last index of the current snapshot",
            st.snapshot_index,
        ),
        (
            "raft_purged_index",
            "Last index purged from the log",
            st.purged_index,
        ),
    ] {
        gauge(&mut now, name, help, as_i64(v));
    }
    gauge(
        &mut now,
        "db_size_bytes",
        "Size of this member's database files",
        as_i64(node.reader.db_size_bytes()),
    );
    if let Ok((revision, compacted)) = node.reader.revisions() {
        gauge(&mut now, "revision", "Current key-value revision", revision);
        gauge(
            &mut now,
            "compact_revision",
            "Compacted revision",
            compacted,
        );
    }
    if let Ok(t) = node.reader.ingest_totals() {
        for (name, help, v) in [
            (
                "cluster_ingest_applied",
                "Ingested items that became device events (cluster-wide)",
                t.applied,
            ),
            (
                "cluster_ingest_suppressed",
                "Redelivered copies suppressed (cluster-wide)",
                t.suppressed,
            ),
            (
                "cluster_ingest_dropped",
                "Ingest items dropped (cluster-wide)",
                t.dropped,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            now.register(name, help, c);
        }
    }
    register_counters(&mut now, &node.counters.snapshot());

    let mut out = String::new();
    // Writing into a String does not fail.
    let _ = encode_registry(&mut out, &node.metrics.registry);
    let _ = encode_registry(&mut out, &now);
    let _ = encode_eof(&mut out);
    out
}

/// The node's counters (`name` or `name{k="v",...}`), one family per name:
/// names ending in `_total` as counters, the others as gauges.
fn register_counters(registry: &mut Registry, counters: &std::collections::BTreeMap<String, u64>) {
    type Labels = Vec<(String, String)>;
    let mut counter_families: std::collections::BTreeMap<String, Family<Labels, Counter>> =
        Default::default();
    let mut gauge_families: std::collections::BTreeMap<String, Family<Labels, Gauge<i64>>> =
        Default::default();
    for (key, value) in counters {
        let (name, labels) = split_labels(key);
        if !valid_name(name) {
            continue;
        }
        match name.strip_suffix("_total") {
            Some(base) => {
                counter_families
                    .entry(base.to_string())
                    .or_default()
                    .get_or_create(&labels)
                    .inc_by(*value);
            }
            None => {
                gauge_families
                    .entry(name.to_string())
                    .or_default()
                    .get_or_create(&labels)
                    .set(i64::try_from(*value).unwrap_or(i64::MAX));
            }
        }
    }
    for (name, family) in counter_families {
        registry.register(name.clone(), format!("{name} (utopia status)"), family);
    }
    for (name, family) in gauge_families {
        registry.register(name.clone(), format!("{name} (utopia status)"), family);
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// `name{a="x",b="y"}` into the name and its labels.
fn split_labels(key: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = key.split_once('{') else {
        return (key, Vec::new());
    };
    let inner = rest.strip_suffix('}').unwrap_or(rest);
    let labels = inner
        .split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    (name, labels)
}

/// Serves `GET /metrics` on `listener` until the server stops it.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept a metrics connection");
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(answer(&node, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn answer<B>(node: &Node, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) =
        if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(node),
            )
        } else {
            (
                404,
                "text/plain",
                "metrics are at GET /metrics\n".to_string(),
            )
        };
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Counts every gRPC request on the client port by method and code, and
/// its time to the response headers.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<Node>);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            node: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S, B, R> tower_service::Service<hyper::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<hyper::Request<B>, Response = hyper::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let start = Instant::now();
        let call = self.inner.call(req);
        let node = self.node.clone();
        Box::pin(async move {
            let response = call.await;
            let code = match &response {
                // Errors are answered with the status in the headers
                // (trailers-only); a success carries it in the trailers.
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Unknown,
            };
            node.metrics.observe(&method, code, start.elapsed());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counter_names_split_into_name_and_labels() {
        assert_eq!(split_labels("a_total"), ("a_total", vec![]));
        assert_eq!(
            split_labels("requests_rejected_total{reason=\"key_bytes\"}"),
            (
                "requests_rejected_total",
                vec![("reason".to_string(), "key_bytes".to_string())]
            )
        );
        let mut registry = Registry::default();
        register_counters(
            &mut registry,
            &[
                ("x_total{k=\"a\"}".to_string(), 3),
                ("x_total{k=\"b\"}".to_string(), 4),
                ("open_connections".to_string(), 2),
                ("bad name!".to_string(), 1),
            ]
            .into_iter()
            .collect(),
        );
        let mut out = String::new();
        encode_registry(&mut out, &registry).unwrap();
        assert!(out.contains("x_total{k=\"a\"} 3"), "{out}");
        assert!(out.contains("x_total{k=\"b\"} 4"), "{out}");
        assert!(out.contains("# TYPE open_connections gauge"), "{out}");
        assert!(!out.contains("bad"), "{out}");
    }
}

//! Serving the metrics: `GET /metrics` on its own port, and the layer on
//! the client port that counts every gRPC request by method and code.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::net::TcpListener;

use super::render;
use crate::node::Node;

/// Connections served at once, at most; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 16;
/// How long one scrape connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

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
        // The path's bytes are shared with the request: no copy.
        let uri = req.uri().clone();
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
            node.metrics.observe(uri.path(), code, start.elapsed());
            response
        })
    }
}

/// The most gRPC methods counted by name; more than the server serves.
pub(super) const METHOD_LABELS_MAX: usize = 256;

/// A gRPC code as its label: the code's name, as `Debug` writes it.
pub(super) fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "Ok",
        C::Cancelled => "Cancelled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// The methods' paths seen so far, as labels.
#[derive(Debug, Default)]
pub(super) struct MethodNames(std::sync::RwLock<std::collections::HashMap<String, &'static str>>);

impl MethodNames {
    /// The label of a method the server serves: its path, kept once for
    /// the life of the process, so that counting a request allocates
    /// nothing. The served methods are a fixed set, so this stays bounded
    /// (at most [`METHOD_LABELS_MAX`]; past that, `other`).
    pub(super) fn label(&self, path: &str) -> &'static str {
        let known = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .copied();
        if let Some(label) = known {
            return label;
        }
        let mut labels = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if labels.len() >= METHOD_LABELS_MAX {
            return "other";
        }
        if let Some(label) = labels.get(path) {
            return label;
        }
        let label: &'static str = Box::leak(path.to_string().into_boxed_str());
        labels.insert(path.to_string(), label);
        label
    }
}

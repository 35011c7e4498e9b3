//! Connecting to utopiad: the endpoint list, connect timeouts, failover and
//! per-request timeouts.
//!
//! Endpoints are tried in order. A request moves on to the next endpoint when
//! the connection cannot be made (within [`CONNECT_TIMEOUT`]) or the server
//! answers UNAVAILABLE (not the leader, shutting down). When an UNAVAILABLE
//! answer names the leader (`utopia-leader` metadata), the leader is tried
//! next. Every endpoint is tried at most once per pass. When a pass ends
//! with servers' UNAVAILABLE answers (an election under way), the request
//! is passed again after a growing pause (50 ms doubling to 800 ms) until
//! `--timeout` runs out; a pass that reaches no server at all, or loses a
//! connection with the request in flight, fails at once.
//!
//! With TLS settings (`--cacert`, and `--cert` / `--key` for servers that
//! require a client certificate) endpoints without a scheme are reached over
//! `https`, leader hints included.
//!
//! With credentials (`--user NAME:PASSWORD`) the client authenticates once,
//! before its first request, and sends the token in the `token` metadata of
//! every request after, to whichever endpoint it fails over to (tokens work
//! on every member). A token about to expire is renewed before the request
//! that would carry it. A server without authentication enabled answers
//! Authenticate with FAILED_PRECONDITION; the client then goes on without a
//! token, since such a server allows everything.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use utopia_proto::v1::{
    auth_client::AuthClient, documents_client::DocumentsClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
};

use super::CliError;

/// How long to wait for a TCP + HTTP/2 connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response accepted (big ranges and document pages).
pub const MAX_DECODING_MESSAGE_SIZE: usize = 64 << 20;
/// Metadata entry in which a follower names the leader's address.
pub const LEADER_METADATA_KEY: &str = "utopia-leader";
/// Metadata entry a request carries its token in (etcd's name).
pub const TOKEN_METADATA_KEY: &str = "token";
/// A token this close to its expiry is renewed before it is sent.
const TOKEN_RENEW_BEFORE_MS: u64 = 5_000;
/// The first pause before a request that no member could serve is sent
/// again; each pause after doubles, up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
/// The longest pause between passes of one request.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(800);

/// How one pass over the endpoints ended.
enum Pass<T> {
    /// A member answered.
    Answered(T),
    /// Every member reached answered UNAVAILABLE (`status`, the last such
    /// answer), or none was reached (`status` is `None`). `from_servers`:
    /// every such answer came from a server, none from a connection that
    /// broke after the request may have been sent.
    Unavailable {
        status: Option<Status>,
        from_servers: bool,
        connect_errors: Vec<String>,
    },
}

pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
    /// The endpoint that answered last, and its channel.
    current: Option<(String, Channel)>,
    tls: Option<ClientTlsConfig>,
    /// User name and password to authenticate with (`--user`).
    credentials: Option<(String, String)>,
    /// The token from Authenticate, and when it expires (ms since the epoch).
    token: Option<(AsciiMetadataValue, u64)>,
}

/// A connection to one endpoint and the token to send on it: what
/// [`Client::call`] hands its closure, and what the service constructors
/// below ([`kv`], [`watch`], ...) take.
#[derive(Clone)]
pub struct AuthChannel {
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

/// Adds the token, if any, to every request.
#[derive(Clone)]
pub struct TokenInterceptor(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(TOKEN_METADATA_KEY, t.clone());
        }
        Ok(req)
    }
}

/// A channel that sends the token.
pub type AuthedService = InterceptedService<Channel, TokenInterceptor>;

impl AuthChannel {
    fn service(self) -> AuthedService {
        InterceptedService::new(self.channel, TokenInterceptor(self.token))
    }
}

/// `HOST:PORT` → `http://HOST:PORT` (`https://` with `tls`); URIs with a
/// scheme are kept.
pub fn endpoint_uri(s: &str, tls: bool) -> String {
    let s = s.trim();
    if s.contains("://") {
        s.to_string()
    } else if tls {
        format!("https://{s}")
    } else {
        format!("http://{s}")
    }
}

impl Client {
    /// A client of `endpoints`; with `tls`, endpoints without a scheme are
    /// reached over https.
    pub fn new(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, CliError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| endpoint_uri(e, tls.is_some()))
            .collect();
        if endpoints.is_empty() {
            return Err(CliError::Usage("--endpoints is empty".into()));
        }
        Ok(Client {
            endpoints,
            timeout,
            current: None,
            tls,
            credentials: None,
            token: None,
        })
    }

    /// Authenticate as `user` with `password` before the first request.
    pub fn set_credentials(&mut self, user: String, password: String) {
        self.credentials = Some((user, password));
        self.token = None;
    }

    /// `channel` with this client's token (for the benchmark's own
    /// connections). Call after a request, which authenticates.
    pub fn with_token(&self, channel: Channel) -> AuthChannel {
        AuthChannel {
            channel,
            token: self.token.as_ref().map(|(t, _)| t.clone()),
        }
    }

    /// Authenticates if credentials were given and there is no token yet,
    /// or the one there is expires soon.
    async fn ensure_token(&mut self) -> Result<(), CliError> {
        let Some((name, password)) = self.credentials.clone() else {
            return Ok(());
        };
        let now = crate::now_ms();
        if self
            .token
            .as_ref()
            .is_some_and(|(_, exp)| *exp > now + TOKEN_RENEW_BEFORE_MS)
        {
            return Ok(());
        }
        self.token = None;
        let req = utopia_proto::v1::AuthenticateRequest { name, password };
        // Authenticate is served by the leader (it reads the users after a
        // read barrier); the request that follows still starts at the
        // endpoint it would have, a follower for a serializable read.
        let before = self.current.clone();
        let resp = self
            .call_unauthenticated(|ch| {
                let req = req.clone();
                async move { auth(ch).authenticate(req).await }
            })
            .await;
        self.current = before;
        match resp {
            Ok(r) => {
                let token = r.token.parse().map_err(|_| {
                    CliError::Rpc(Status::internal(
                        "the server sent a token that is not ASCII",
                    ))
                })?;
                self.token = Some((token, r.expires_at_ms));
                Ok(())
            }
            // Authentication is off: every request is allowed without one.
            Err(CliError::Rpc(s)) if s.code() == Code::FailedPrecondition => {
                self.credentials = None;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The endpoints as URIs, in order.
    pub fn endpoint_uris(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The TLS settings connections are made with.
    pub fn tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref()
    }

    /// Opens a new HTTP/2 connection to `uri` (over TLS for https).
    pub async fn open(&self, uri: &str) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| format!("bad endpoint: {}", crate::error_chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if uri.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| {
                "an https endpoint needs --cacert (the CA that signed the server's certificate)"
                    .to_string()
            })?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS: {}", crate::error_chain(&e)))?;
        }
        match tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_millis(500),
            endpoint.connect(),
        )
        .await
        {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(crate::error_chain(&e)),
            Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        }
    }

    /// Runs one RPC with failover: `f` gets a channel and returns the call's
    /// future (it is called again, with another channel, on failover). The
    /// call is bounded by `--timeout`; for a streaming call that covers
    /// getting the stream, not reading it.
    pub async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, CliError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.ensure_token().await?;
        self.call_unauthenticated(f).await
    }

    /// [`Client::call`] with whatever token the client holds, without
    /// authenticating first.
    ///
    /// When a whole pass over the endpoints ends with UNAVAILABLE answers
    /// from servers (an election under way, a leader named by a member that
    /// has not yet heard of the new one), the request is passed again after
    /// a pause, until `--timeout` runs out: a server answers UNAVAILABLE
    /// only for a request it did not propose, so sending it again is safe.
    /// A pass that reached no server at all, or lost a connection with the
    /// request in flight, fails at once.
    async fn call_unauthenticated<T, F, Fut>(&mut self, mut f: F) -> Result<T, CliError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut pause = RETRY_PAUSE_MIN;
        loop {
            let (status, from_servers, connect_errors) = match self.pass(&mut f, deadline).await? {
                Pass::Answered(resp) => return Ok(resp),
                Pass::Unavailable {
                    status,
                    from_servers,
                    connect_errors,
                } => (status, from_servers, connect_errors),
            };
            match status {
                Some(s) if from_servers && Instant::now() + pause < deadline => {
                    tracing::debug!(status = %s.message(), ?pause, "no member could serve the request; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                Some(mut s) if !connect_errors.is_empty() => {
                    let msg = format!(
                        "{}; also could not connect to {}",
                        s.message(),
                        connect_errors.join("; ")
                    );
                    s = Status::new(s.code(), msg);
                    return Err(CliError::Rpc(s));
                }
                Some(s) => return Err(CliError::Rpc(s)),
                None => {
                    return Err(CliError::Connect(format!(
                        "cannot connect to any endpoint ({})",
                        connect_errors.join("; ")
                    )))
                }
            }
        }
    }

    /// One pass of a request over the endpoints: the one that answered
    /// last, then each configured one, and a leader an answer names, each
    /// at most once. Each attempt waits for its answer until `deadline`.
    async fn pass<T, F, Fut>(&mut self, f: &mut F, deadline: Instant) -> Result<Pass<T>, CliError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let token = self.token.as_ref().map(|(t, _)| t.clone());
        let mut queue: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        if let Some((uri, _)) = &self.current {
            queue.push_back(uri.clone());
        }
        queue.extend(self.endpoints.iter().cloned());
        let mut tried: Vec<String> = Vec::new();
        let mut connect_errors: Vec<String> = Vec::new();
        let mut last_status: Option<Status> = None;
        let mut from_servers = true;
        // At most every configured endpoint plus one redirect target.
        let max_attempts = self.endpoints.len() + 1;
        while let Some(uri) = queue.pop_front() {
            if tried.contains(&uri) || tried.len() >= max_attempts {
                continue;
            }
            tried.push(uri.clone());
            let channel = match &self.current {
                Some((u, ch)) if *u == uri => ch.clone(),
                _ => match self.open(&uri).await {
                    Ok(ch) => {
                        self.current = Some((uri.clone(), ch.clone()));
                        ch
                    }
                    Err(e) => {
                        connect_errors.push(format!("{}: {e}", display_uri(&uri)));
                        continue;
                    }
                },
            };
            let ch = AuthChannel {
                channel,
                token: token.clone(),
            };
            match tokio::time::timeout_at(deadline.into(), f(ch)).await {
                Ok(Ok(resp)) => return Ok(Pass::Answered(resp.into_inner())),
                Ok(Err(status)) if status.code() == Code::Unavailable => {
                    if let Some(leader) = status
                        .metadata()
                        .get(LEADER_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                        .filter(|s| !s.is_empty())
                    {
                        queue.push_front(endpoint_uri(leader, self.tls.is_some()));
                    }
                    self.current = None;
                    // A status the connection made (a reset, a refused
                    // stream) has an error behind it; a server's has none.
                    from_servers &= std::error::Error::source(&status).is_none();
                    last_status = Some(status);
                }
                Ok(Err(status)) => return Err(CliError::Rpc(self.explain(status))),
                Err(_) => {
                    return Err(CliError::Rpc(Status::deadline_exceeded(format!(
                        "no answer from {} within {:?} (--timeout)",
                        display_uri(&uri),
                        self.timeout
                    ))))
                }
            }
        }
        Ok(Pass::Unavailable {
            status: last_status,
            from_servers,
            connect_errors,
        })
    }

    /// A status that the connection produced rather than the server (it has
    /// an error behind it: a refused TLS handshake, a reset) gets that
    /// error's causes in its message, and a hint at the likely TLS mismatch.
    fn explain(&self, status: Status) -> Status {
        let Some(cause) = std::error::Error::source(&status) else {
            return status;
        };
        let mut msg = status.message().to_string();
        let chain = crate::error_chain(cause);
        if !msg.contains(&chain) {
            msg = format!("{msg}: {chain}");
        }
        let hint = match &self.tls {
            None => " (if the server uses TLS, connect with --cacert)",
            Some(_) => {
                " (the server may require a client certificate signed by a CA it trusts: --cert and --key)"
            }
        };
        Status::new(status.code(), format!("{msg}{hint}"))
    }

    /// `n` separate connections to the first endpoint that accepts one (for
    /// the benchmark).
    pub async fn connect_many(&mut self, n: usize) -> Result<(String, Vec<Channel>), CliError> {
        let mut errors = Vec::new();
        for uri in self.endpoints.clone() {
            match self.open(&uri).await {
                Ok(first) => return self.open_more(&uri, first, n).await,
                Err(e) => errors.push(format!("{}: {e}", display_uri(&uri))),
            }
        }
        Err(CliError::Connect(format!(
            "cannot connect to any endpoint ({})",
            errors.join("; ")
        )))
    }

    /// `n` separate connections to `uri` (for the benchmark).
    pub async fn connect_many_to(
        &mut self,
        uri: &str,
        n: usize,
    ) -> Result<(String, Vec<Channel>), CliError> {
        let first = self.open(uri).await.map_err(|e| {
            CliError::Connect(format!("cannot connect to {}: {e}", display_uri(uri)))
        })?;
        self.open_more(uri, first, n).await
    }

    async fn open_more(
        &self,
        uri: &str,
        first: Channel,
        n: usize,
    ) -> Result<(String, Vec<Channel>), CliError> {
        let mut channels = vec![first];
        while channels.len() < n {
            let ch = self.open(uri).await.map_err(|e| {
                CliError::Connect(format!(
                    "cannot open connection {} to {}: {e}",
                    channels.len() + 1,
                    display_uri(uri)
                ))
            })?;
            channels.push(ch);
        }
        Ok((display_uri(uri).to_string(), channels))
    }

    /// The endpoint that answered the last request.
    pub fn current_endpoint(&self) -> Option<&str> {
        self.current.as_ref().map(|(u, _)| display_uri(u))
    }
}

fn display_uri(uri: &str) -> &str {
    uri.strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .unwrap_or(uri)
}

pub fn kv(ch: AuthChannel) -> KvClient<AuthedService> {
    KvClient::new(ch.service()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn watch(ch: AuthChannel) -> WatchClient<AuthedService> {
    WatchClient::new(ch.service()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn lease(ch: AuthChannel) -> LeaseClient<AuthedService> {
    LeaseClient::new(ch.service()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn documents(ch: AuthChannel) -> DocumentsClient<AuthedService> {
    DocumentsClient::new(ch.service()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn maintenance(ch: AuthChannel) -> MaintenanceClient<AuthedService> {
    MaintenanceClient::new(ch.service()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn cluster(ch: AuthChannel) -> utopia_proto::v1::cluster_client::ClusterClient<AuthedService> {
    utopia_proto::v1::cluster_client::ClusterClient::new(ch.service())
        .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn configs(ch: AuthChannel) -> utopia_proto::v1::configs_client::ConfigsClient<AuthedService> {
    utopia_proto::v1::configs_client::ConfigsClient::new(ch.service())
        .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

pub fn auth(ch: AuthChannel) -> AuthClient<AuthedService> {
    AuthClient::new(ch.service()).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uris() {
        assert_eq!(
            endpoint_uri("127.0.0.1:7700", false),
            "http://127.0.0.1:7700"
        );
        assert_eq!(endpoint_uri(" host:1 ", false), "http://host:1");
        assert_eq!(endpoint_uri("http://h:1", false), "http://h:1");
        assert_eq!(endpoint_uri("h:1", true), "https://h:1");
        assert_eq!(endpoint_uri("http://h:1", true), "http://h:1");
        assert_eq!(display_uri("http://h:1"), "h:1");
        assert_eq!(display_uri("https://h:1"), "h:1");
    }

    #[test]
    fn empty_endpoint_list_is_a_usage_error() {
        let e = Client::new(&[" ".to_string()], Duration::from_secs(1), None).err();
        assert!(matches!(e, Some(CliError::Usage(_))));
    }

    #[tokio::test]
    async fn fails_over_past_dead_endpoints() {
        // Both refuse; the error names both.
        let mut c = Client::new(
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let r = c
            .call(|ch| async move {
                maintenance(ch)
                    .status(utopia_proto::v1::StatusRequest {})
                    .await
            })
            .await;
        match r {
            Err(CliError::Connect(m)) => assert!(
                m.contains("127.0.0.1:1") && m.contains("127.0.0.1:2"),
                "{m}"
            ),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}

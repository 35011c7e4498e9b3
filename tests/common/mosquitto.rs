//! A real mosquitto broker for tests, and small MQTT clients to drive it.
//!
//! [`Mosquitto::start`] runs `mosquitto` (2.0.x, from the `mosquitto`
//! package) in a temporary directory with four loopback listeners on
//! ephemeral ports:
//!
//! - `plain`: MQTT over TCP, anonymous;
//! - `tls`: MQTT over TLS with a server certificate signed by a CA the
//!   harness makes with `openssl`; a client that trusts that CA connects
//!   without a certificate of its own;
//! - `mtls`: TLS that requires a client certificate signed by the same CA;
//! - `auth`: MQTT over TCP that only lets `alice` / `s3cret` in.
//!
//! The broker keeps no state across restarts (`persistence false`) and
//! queues without limit for slow subscribers, so load tests do not lose
//! QoS 1 messages in the broker. Its log is kept in the directory for
//! failure messages ([`Mosquitto::log`]). The process is SIGKILLed and
//! reaped when the handle drops.
//!
//! The clients ([`publish_all`], [`Subscriber`], [`try_connect`]) use
//! `rumqttc` with rustls (ring), connecting to an [`Endpoint`]: an address
//! plus what the listener asks for (CA, client certificate, credentials).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};

use super::{run_with_deadline, wait_for};

pub use rumqttc::QoS;

/// How long the broker may take to open its ports.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a client may take to connect, subscribe or finish publishing
/// before the helpers give up (a safety net, not a measurement).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);
/// Largest MQTT packet the test clients send or accept.
const PACKET_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A running mosquitto; see the module documentation.
pub struct Mosquitto {
    /// Anonymous MQTT over TCP.
    pub plain: SocketAddr,
    /// MQTT over TLS; the client needs only [`Mosquitto::ca_file`].
    pub tls: SocketAddr,
    /// MQTT over TLS with a required client certificate
    /// ([`Mosquitto::client_cert`] / [`Mosquitto::client_key`]).
    pub mtls: SocketAddr,
    /// MQTT over TCP with username/password ([`Mosquitto::username`] /
    /// [`Mosquitto::password`]); anonymous clients are refused.
    pub auth: SocketAddr,
    /// The broker's temporary directory: config, certificates, log.
    pub dir: PathBuf,
    /// The test CA's certificate (PEM): it signs the server and client
    /// certificates.
    pub ca_file: PathBuf,
    /// A client certificate signed by the CA (PEM), for `mtls`.
    pub client_cert: PathBuf,
    /// The client certificate's private key (PEM, PKCS#8).
    pub client_key: PathBuf,
    pub username: &'static str,
    pub password: &'static str,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    _temp: tempfile::TempDir,
}

impl Mosquitto {
    /// Makes the certificates and the config, starts the broker and waits
    /// until every listener accepts TCP connections. Panics (with the
    /// broker's log) if it does not start.
    pub fn start() -> Mosquitto {
        let temp = tempfile::Builder::new()
            .prefix("utopia-mosquitto-")
            .tempdir()
            .expect("create a temp dir for mosquitto");
        let dir = temp.path().to_path_buf();
        make_certificates(&dir);
        let username = "alice";
        let password = "s3cret";
        let passwd = dir.join("passwd");
        let out = run_with_deadline(
            {
                let mut c = Command::new("mosquitto_passwd");
                c.args(["-c", "-b"]).arg(&passwd).args([username, password]);
                c
            },
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = Mosquitto {
            plain: any_addr(),
            tls: any_addr(),
            mtls: any_addr(),
            auth: any_addr(),
            ca_file: dir.join("ca.crt"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            username,
            password,
            child: None,
            config: dir.join("mosquitto.conf"),
            log: dir.join("mosquitto.log"),
            dir,
            _temp: temp,
        };
        // A port that was free a moment ago can be taken by someone else
        // before mosquitto binds it: then try again with new ports.
        for attempt in 1..=5 {
            [m.plain, m.tls, m.mtls, m.auth] = free_addrs();
            m.write_config();
            match m.spawn() {
                Ok(()) => return m,
                Err(log) if attempt < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!("mosquitto did not start; its log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn write_config(&self) {
        let d = &self.dir;
        let tls = |addr: SocketAddr, require_certificate: bool| {
            format!(
                "listener {port} {ip}\n\
                 allow_anonymous true\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 require_certificate {require_certificate}\n\
                 use_identity_as_username false\n",
                port = addr.port(),
                ip = addr.ip(),
                ca = d.join("ca.crt").display(),
                cert = d.join("server.crt").display(),
                key = d.join("server.key").display(),
            )
        };
        let config = format!(
            "# utopia test broker\n\
             per_listener_settings true\n\
             persistence false\n\
             # As root, mosquitto would otherwise drop to the 'mosquitto' user\n\
             # and could not read the 0600 keys in the temp dir.\n\
             user root\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             # No per-client limits on queued and in-flight QoS 1/2\n\
             # messages: a slow test subscriber must not lose any.\n\
             max_queued_messages 0\n\
             max_queued_bytes 0\n\
             max_inflight_messages 0\n\
             \n\
             listener {plain_port} {plain_ip}\n\
             allow_anonymous true\n\
             \n\
             {tls}\n\
             {mtls}\n\
             listener {auth_port} {auth_ip}\n\
             allow_anonymous false\n\
             password_file {passwd}\n",
            plain_port = self.plain.port(),
            plain_ip = self.plain.ip(),
            tls = tls(self.tls, false),
            mtls = tls(self.mtls, true),
            auth_port = self.auth.port(),
            auth_ip = self.auth.ip(),
            passwd = d.join("passwd").display(),
        );
        std::fs::write(&self.config, config).expect("write mosquitto.conf");
    }

    /// Starts the process and waits for its ports; on failure returns the
    /// log.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "mosquitto is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open mosquitto.log");
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run mosquitto ({e}); install it: apt-get install mosquitto")
            });
        let addrs = [self.plain, self.tls, self.mtls, self.auth];
        let exited = wait_for(
            &format!(
                "mosquitto to listen on {addrs:?} (log: {})",
                self.log.display()
            ),
            START_DEADLINE,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Some(status));
                }
                addrs
                    .iter()
                    .all(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
                    .then_some(None)
            },
        );
        match exited {
            None => {
                self.child = Some(child);
                Ok(())
            }
            Some(status) => Err(format!("(mosquitto exited: {status})\n{}", self.log())),
        }
    }

    /// SIGKILL, and reap. The ports close; [`Mosquitto::restart`] reopens
    /// them.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed broker again on the same ports, with no sessions or
    /// retained messages (persistence is off).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!("mosquitto did not restart; its log:\n{log}");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's log so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pem(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The anonymous plain listener.
    pub fn plain_endpoint(&self) -> Endpoint {
        Endpoint::plain(self.plain)
    }

    /// The TLS listener, trusting the test CA, without a client certificate.
    pub fn tls_endpoint(&self) -> Endpoint {
        Endpoint::plain(self.tls).with_ca(Self::pem(&self.ca_file))
    }

    /// The client-certificate listener, with the test client certificate.
    pub fn mtls_endpoint(&self) -> Endpoint {
        Endpoint::plain(self.mtls)
            .with_ca(Self::pem(&self.ca_file))
            .with_client_cert(Self::pem(&self.client_cert), Self::pem(&self.client_key))
    }

    /// The password listener, as alice.
    pub fn auth_endpoint(&self) -> Endpoint {
        Endpoint::plain(self.auth).with_credentials(self.username, self.password)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn any_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Four distinct loopback addresses with ports that were free a moment ago
/// (bound together, so no two are the same).
fn free_addrs() -> [SocketAddr; 4] {
    let listeners = [(); 4]
        .map(|()| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"));
    listeners.map(|l| l.local_addr().expect("local address"))
}

/// A test CA, a server certificate for `localhost` / `127.0.0.1` and a
/// client certificate, all ECDSA P-256, written into `dir` as `ca.crt`,
/// `ca.key`, `server.crt`, `server.key`, `client.crt`, `client.key`.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("openssl.cnf"),
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         [dn]\n\
         CN = unused\n\
         [ca]\n\
         basicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost,IP:127.0.0.1\n\
         authorityKeyIdentifier = keyid\n\
         [client]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = clientAuth\n\
         authorityKeyIdentifier = keyid\n",
    )
    .expect("write openssl.cnf");
    // Arguments are split at whitespace: none contains any.
    let openssl = |args: &str| {
        let mut c = Command::new("openssl");
        c.args(args.split_whitespace()).current_dir(dir);
        let out = run_with_deadline(c, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 -config openssl.cnf -extensions ca {new_key} \
         -keyout ca.key -out ca.crt -days 3650 -subj /CN=utopia-test-ca"
    ));
    for (name, cn) in [("server", "localhost"), ("client", "utopia-test-client")] {
        openssl(&format!(
            "req -new -config openssl.cnf {new_key} \
             -keyout {name}.key -out {name}.csr -subj /CN={cn}"
        ));
        openssl(&format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
             -extfile openssl.cnf -extensions {name} -out {name}.crt"
        ));
    }
}

/// Where and how a test client connects.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// PEM CA certificate(s) to trust; `None`: plain TCP.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key (TLS only).
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
    pub credentials: Option<(String, String)>,
    /// Client id; `None`: a fresh unique one per connection.
    pub client_id: Option<String>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            ca: None,
            client_auth: None,
            credentials: None,
            client_id: None,
        }
    }

    pub fn with_ca(mut self, ca_pem: Vec<u8>) -> Endpoint {
        self.ca = Some(ca_pem);
        self
    }

    pub fn with_client_cert(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Endpoint {
        self.client_auth = Some((cert_pem, key_pem));
        self
    }

    pub fn with_credentials(mut self, username: &str, password: &str) -> Endpoint {
        self.credentials = Some((username.to_string(), password.to_string()));
        self
    }

    pub fn with_client_id(mut self, id: &str) -> Endpoint {
        self.client_id = Some(id.to_string());
        self
    }

    fn options(&self) -> MqttOptions {
        install_crypto_provider();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = self.client_id.clone().unwrap_or_else(|| {
            format!(
                "utopia-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        });
        let mut o = MqttOptions::new(id, self.addr.ip().to_string(), self.addr.port());
        o.set_max_packet_size(PACKET_BYTES_MAX, PACKET_BYTES_MAX);
        o.set_keep_alive(Duration::from_secs(30));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(ca) = &self.ca {
            o.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: self.client_auth.clone(),
            }));
        }
        o
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::plain(addr)
    }
}

/// rustls needs a process-wide crypto provider; the first caller installs
/// ring's (the error from a second install is ignored).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Polls `eventloop` until the broker's CONNACK: `Ok` if it accepted the
/// connection, else the error (refused, TLS failure, I/O).
async fn connected(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        match eventloop.poll().await? {
            Event::Incoming(Incoming::ConnAck(_)) => return Ok(()),
            _ => continue,
        }
    }
}

/// Connects (MQTT CONNECT → CONNACK) and disconnects. `Err` says why the
/// broker or the TLS layer refused.
pub async fn try_connect(endpoint: impl Into<Endpoint>) -> Result<(), String> {
    let (client, mut eventloop) = AsyncClient::new(endpoint.into().options(), 10);
    let result = tokio::time::timeout(CLIENT_DEADLINE, connected(&mut eventloop))
        .await
        .map_err(|_| format!("no CONNACK within {CLIENT_DEADLINE:?}"))?
        .map_err(|e| format!("{e}"));
    if result.is_ok() {
        let _ = client.disconnect().await;
        // Let the DISCONNECT go out; stops at the first error or after it.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    result
}

/// Publishes every `(topic, payload)` in order on one connection at `qos`
/// and returns, per message, whether the broker acknowledged it: PUBACK
/// for QoS 1, PUBCOMP for QoS 2, written to the socket for QoS 0. Stops at
/// the first connection error (the rest stay `false`) or after a generous
/// deadline.
pub async fn publish_all(
    endpoint: impl Into<Endpoint>,
    topic_payloads: &[(String, Vec<u8>)],
    qos: QoS,
) -> Vec<bool> {
    let mut acked = vec![false; topic_payloads.len()];
    if topic_payloads.is_empty() {
        return acked;
    }
    let (client, mut eventloop) = AsyncClient::new(endpoint.into().options(), 1024);
    let messages = topic_payloads.to_vec();
    let publisher = tokio::spawn(async move {
        for (topic, payload) in messages {
            if client.publish(topic, qos, false, payload).await.is_err() {
                break;
            }
        }
        client
    });
    // Outgoing publishes appear in request order: the n-th is message n.
    // Packet ids are reused once acknowledged, so map them as they go out.
    let mut sent = 0usize;
    let mut by_pkid: HashMap<u16, usize> = HashMap::new();
    let mut done = 0usize;
    let total = acked.len();
    let run = async {
        while done < total {
            let ev = match eventloop.poll().await {
                Ok(ev) => ev,
                Err(_) => break,
            };
            match ev {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if qos == QoS::AtMostOnce {
                        acked[sent] = true;
                        done += 1;
                    } else {
                        by_pkid.insert(pkid, sent);
                    }
                    sent += 1;
                }
                Event::Incoming(Incoming::PubAck(ack)) if qos == QoS::AtLeastOnce => {
                    if let Some(i) = by_pkid.remove(&ack.pkid) {
                        acked[i] = true;
                        done += 1;
                    }
                }
                Event::Incoming(Incoming::PubComp(comp)) if qos == QoS::ExactlyOnce => {
                    if let Some(i) = by_pkid.remove(&comp.pkid) {
                        acked[i] = true;
                        done += 1;
                    }
                }
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLIENT_DEADLINE, run).await;
    if done == total {
        // Every message went out, so the publisher has finished.
        if let Ok(client) = publisher.await {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    } else {
        // The publisher may be blocked on a full request queue that
        // nobody polls any more.
        publisher.abort();
    }
    acked
}

/// A message a [`Subscriber`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

/// A connection subscribed to one topic filter, collecting what arrives.
/// The connection ends at its first error (it does not reconnect); then
/// [`Subscriber::next`] returns `None` and [`Subscriber::error`] says why.
pub struct Subscriber {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Message>,
    error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects, subscribes to `filter` and returns once the broker has
    /// acknowledged the subscription (SUBACK): everything published after
    /// this returns is delivered. Panics if the connection or the
    /// subscription fails.
    pub async fn start(endpoint: impl Into<Endpoint>, filter: &str, qos: QoS) -> Subscriber {
        let endpoint = endpoint.into();
        let (client, mut eventloop) = AsyncClient::new(endpoint.options(), 1024);
        client
            .subscribe(filter, qos)
            .await
            .expect("queue the SUBSCRIBE");
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let task = tokio::spawn({
            let error = error.clone();
            async move {
                let mut subscribed_tx = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                            if let Some(s) = subscribed_tx.take() {
                                let _ = s.send(Ok(ack.return_codes));
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            let _ = tx.send(Message {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                qos: p.qos,
                                retain: p.retain,
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if let Some(s) = subscribed_tx.take() {
                                let _ = s.send(Err(e.to_string()));
                            }
                            *error.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    }
                }
            }
        });
        let codes = match tokio::time::timeout(CLIENT_DEADLINE, subscribed_rx).await {
            Ok(Ok(Ok(codes))) => codes,
            Ok(Ok(Err(e))) => panic!("subscribing to {filter:?} at {}: {e}", endpoint.addr),
            Ok(Err(_)) => panic!("the subscriber's event loop ended"),
            Err(_) => panic!("no SUBACK for {filter:?} within {CLIENT_DEADLINE:?}"),
        };
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "the broker refused the subscription to {filter:?}: {codes:?}"
        );
        Subscriber {
            client,
            rx,
            error,
            task,
        }
    }

    /// The next message, or `None` if none arrives within `deadline` or
    /// the connection ended.
    pub async fn next(&mut self, deadline: Duration) -> Option<Message> {
        tokio::time::timeout(deadline, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects messages until `n` have arrived, or `deadline` passes
    /// without the next one, or the connection ends.
    pub async fn collect(&mut self, n: usize, deadline: Duration) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(deadline).await {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Messages already received, without waiting.
    pub fn drain(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }

    /// Why the connection ended, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    /// The client, to publish on the same connection.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

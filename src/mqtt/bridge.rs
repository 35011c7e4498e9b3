//! One broker connection (rumqttc), MQTT 3.1.1 or 5: connects with the
//! bridge's TLS and credentials, subscribes, hands every message to the
//! ingest core, and acknowledges a message only when the core says so.
//!
//! Acknowledgements are manual: a QoS 1/2 message is acknowledged (PUBACK,
//! or PUBREC for QoS 2) only once it is in the committed log. Packet ids
//! belong to one connection, so an acknowledgement is sent only on the
//! connection the message arrived on ([`AckToken::generation`]); after a
//! reconnect the broker redelivers what was not acknowledged.
//!
//! A bridge is a task the node owns: when the server stops, it sends the
//! broker a DISCONNECT (a persistent session keeps what was not
//! acknowledged, for the next connection) and ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as m5;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::mqtt::{Bridge, Protocol};
use crate::node::Tasks;

/// Requests queued to one connection's event loop, at most.
const REQUEST_CHANNEL_MAX: usize = 10_000;
/// Largest MQTT packet accepted from the broker.
pub const PACKET_BYTES_MAX: usize = 1 << 20;
/// Reconnect backoff bounds.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// MQTT 5 session expiry for persistent sessions (seconds).
const SESSION_EXPIRY_S: u32 = 7 * 24 * 3600;
/// How long a stopping bridge waits for its DISCONNECT to go out.
const DISCONNECT_WAIT: Duration = Duration::from_millis(500);

/// What is needed to acknowledge one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckToken {
    pub bridge: usize,
    pub generation: u64,
    pkid: u16,
    qos: u8,
}

impl AckToken {
    /// The token of a QoS 1 or 2 message with packet id `pkid` that
    /// arrived on connection `generation` of `bridge`.
    pub fn new(bridge: usize, generation: u64, pkid: u16, qos: u8) -> Self {
        AckToken {
            bridge,
            generation,
            pkid,
            qos,
        }
    }

    pub fn pkid(&self) -> u16 {
        self.pkid
    }
}

/// A message from a broker.
#[derive(Debug)]
pub struct Incoming {
    pub bridge: usize,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// The broker marked it as a redelivery.
    pub dup: bool,
    /// None for QoS 0.
    pub ack: Option<AckToken>,
}

/// What a bridge tells the ingest core.
#[derive(Debug)]
pub enum BridgeEvent {
    Message(Incoming),
    /// A new connection: acknowledgements for older generations are void.
    Connected {
        bridge: usize,
        generation: u64,
    },
    Disconnected {
        bridge: usize,
        error: String,
    },
}

#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Queues the acknowledgement if the request queue has room.
    fn try_ack(&self, token: &AckToken) -> bool {
        match self {
            Client::V4(c) => c.try_ack(&ack_v4(token)).is_ok(),
            Client::V5(c) => c.try_ack(&ack_v5(token)).is_ok(),
        }
    }

    /// Queues the acknowledgement, waiting for room; false once the
    /// connection's event loop is gone.
    async fn ack(&self, token: &AckToken) -> bool {
        match self {
            Client::V4(c) => c.ack(&ack_v4(token)).await.is_ok(),
            Client::V5(c) => c.ack(&ack_v5(token)).await.is_ok(),
        }
    }
}

/// The PUBLISH rumqttc acknowledges for `token` (only its packet id and
/// QoS are read).
fn ack_v4(token: &AckToken) -> rumqttc::Publish {
    let mut p = rumqttc::Publish::new("", qos4(token.qos), Vec::new());
    p.pkid = token.pkid;
    p
}

fn ack_v5(token: &AckToken) -> m5::Publish {
    let mut p = m5::Publish::new("", qos5(token.qos), Vec::new(), None);
    p.pkid = token.pkid;
    p
}

/// The bridge's acknowledging task: sends the backlog in order, each when
/// the request queue has room, skipping those of an older connection
/// (the broker redelivers their messages).
async fn send_backlog(client: Client, backlog: Arc<AckBacklog>, generation: Arc<AtomicU64>) {
    loop {
        backlog.wake.notified().await;
        loop {
            let Some(token) = backlog.tokens().front().cloned() else {
                break;
            };
            if token.generation == generation.load(Ordering::Acquire) && !client.ack(&token).await {
                return;
            }
            backlog.tokens().pop_front();
        }
    }
}

/// The handle the rest of the server uses to acknowledge and publish.
#[derive(Clone)]
pub struct BridgeHandle {
    pub index: usize,
    pub name: String,
    client: Client,
    generation: Arc<AtomicU64>,
    /// Acknowledgements that found the request queue full, waiting for the
    /// bridge's one acknowledging task (`send_backlog`).
    backlog: Arc<AckBacklog>,
}

/// Acknowledgements waiting for room in a connection's request queue, in
/// the order they were made: one per message received and not yet
/// acknowledged. The event loop that drains the request queue is the one
/// that reads messages, so while it stalls no new ones arrive, and the
/// backlog stays within what the ingest core could hold
/// (`ingest.pending_messages_max`) plus the queue's 10,000.
#[derive(Default)]
struct AckBacklog {
    tokens: std::sync::Mutex<VecDeque<AckToken>>,
    wake: tokio::sync::Notify,
}

impl AckBacklog {
    fn tokens(&self) -> std::sync::MutexGuard<'_, VecDeque<AckToken>> {
        // The queue is consistent after any push or pop, so a panic
        // elsewhere while it was locked leaves nothing half done.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl BridgeHandle {
    /// Acknowledges a message if its connection is still the current one;
    /// false when it is not (the broker will redeliver it).
    ///
    /// The acknowledgement goes into the connection's request queue at
    /// once, or, when the queue is full or earlier ones already wait, into
    /// the bridge's backlog, which one task sends in order as room frees
    /// up. (A task per waiting acknowledgement made every send scan all the
    /// waiters: a burst of them cost time quadratic in their number.)
    pub fn ack(&self, token: &AckToken) -> bool {
        if token.generation != self.generation.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut backlog = self.backlog.tokens();
            if backlog.is_empty() && self.client.try_ack(token) {
                return true;
            }
            backlog.push_back(token.clone());
        }
        self.backlog.wake.notify_one();
        true
    }

    /// Publishes (for device commands); errors when the request queue is full.
    pub async fn publish(&self, topic: String, payload: Vec<u8>, qos: u8) -> anyhow::Result<()> {
        match &self.client {
            Client::V4(c) => c.publish(topic, qos4(qos), false, payload).await?,
            Client::V5(c) => c.publish(topic, qos5(qos), false, payload).await?,
        }
        Ok(())
    }
}

fn tls_config(b: &Bridge) -> anyhow::Result<Option<rumqttc::TlsConfiguration>> {
    let Some(tls) = &b.tls else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("bridge {:?}: read {}", b.name, p.display()))
    };
    let ca = read(&tls.ca_file)?;
    let client_auth = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    if tls.server_name.as_deref().is_some_and(|n| n != b.host) {
        tracing::warn!(bridge = %b.name, "tls.server_name differs from host; the broker's certificate is checked against host");
    }
    Ok(Some(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// Subscriptions a bridge makes: its own filters, plus the cluster topics
/// when it carries server traffic.
pub fn subscriptions(b: &Bridge, cluster_topics: &[String]) -> Vec<(String, u8)> {
    let mut subs: Vec<(String, u8)> = Vec::new();
    if b.role != crate::config::mqtt::BridgeRole::Cluster {
        subs.extend(b.subscriptions.iter().map(|s| (s.filter.clone(), s.qos)));
    }
    if b.role != crate::config::mqtt::BridgeRole::Devices {
        for t in cluster_topics {
            subs.push((t.clone(), 2));
            subs.push((format!("{t}/#"), 2));
        }
    }
    subs
}

/// Connects bridge `index` and runs it, as one of `tasks`, until the server
/// stops. Events go to `events`; a full channel slows the connection down
/// (backpressure) rather than dropping messages.
pub fn start(
    index: usize,
    b: &Bridge,
    node_id: u64,
    cluster_topics: &[String],
    events: mpsc::Sender<BridgeEvent>,
    tasks: &Arc<Tasks>,
) -> anyhow::Result<BridgeHandle> {
    super::install_crypto_provider();
    let client_id = format!("{}-{}-{}", b.client_id, node_id, b.name);
    let subs = subscriptions(b, cluster_topics);
    let tls = tls_config(b)?;
    let generation = Arc::new(AtomicU64::new(0));
    let name = b.name.clone();
    let link = Link {
        index,
        name: name.clone(),
        generation: generation.clone(),
        events,
        delay: RECONNECT_BACKOFF_MIN,
        subscriptions_empty: subs.is_empty(),
        up: false,
    };
    let client = match b.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, b.host.clone(), b.port);
            o.set_keep_alive(Duration::from_secs(b.keep_alive_s.max(5)))
                .set_clean_session(!b.persistent_session)
                .set_manual_acks(true)
                .set_max_packet_size(PACKET_BYTES_MAX, PACKET_BYTES_MAX)
                .set_request_channel_capacity(REQUEST_CHANNEL_MAX);
            if let (Some(u), Some(p)) = (&b.username, &b.password) {
                o.set_credentials(u.clone(), p.clone());
            }
            if let Some(t) = tls {
                o.set_transport(rumqttc::Transport::tls_with_config(t));
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, REQUEST_CHANNEL_MAX);
            let c = client.clone();
            tasks.spawn_graceful("mqtt bridge", move |stop| {
                run_v4(link, c, eventloop, subs, stop)
            });
            Client::V4(client)
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, b.host.clone(), b.port);
            o.set_keep_alive(Duration::from_secs(b.keep_alive_s.max(5)))
                .set_clean_start(!b.persistent_session)
                .set_manual_acks(true)
                .set_max_packet_size(Some(PACKET_BYTES_MAX as u32))
                .set_request_channel_capacity(REQUEST_CHANNEL_MAX);
            if b.persistent_session {
                o.set_session_expiry_interval(Some(SESSION_EXPIRY_S));
            }
            if let (Some(u), Some(p)) = (&b.username, &b.password) {
                o.set_credentials(u.clone(), p.clone());
            }
            if let Some(t) = tls {
                o.set_transport(rumqttc::Transport::tls_with_config(t));
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, REQUEST_CHANNEL_MAX);
            let c = client.clone();
            tasks.spawn_graceful("mqtt bridge", move |stop| {
                run_v5(link, c, eventloop, subs, stop)
            });
            Client::V5(client)
        }
    };
    let backlog = Arc::new(AckBacklog::default());
    tasks.spawn(
        "mqtt acks",
        send_backlog(client.clone(), backlog.clone(), generation.clone()),
    );
    Ok(BridgeHandle {
        index,
        name,
        client,
        generation,
        backlog,
    })
}

/// What both protocol versions' event loops share: turning packets into
/// [`BridgeEvent`]s, the connection generation, and reconnect backoff.
struct Link {
    index: usize,
    name: String,
    generation: Arc<AtomicU64>,
    events: mpsc::Sender<BridgeEvent>,
    delay: Duration,
    subscriptions_empty: bool,
    /// Between a CONNACK and the next connection error.
    up: bool,
}

impl Link {
    /// Hands a PUBLISH to the core; false once the core is gone.
    async fn message(&self, topic: String, payload: Bytes, qos: u8, dup: bool, pkid: u16) -> bool {
        let ack = (qos > 0).then(|| {
            AckToken::new(
                self.index,
                self.generation.load(Ordering::Acquire),
                pkid,
                qos,
            )
        });
        let msg = Incoming {
            bridge: self.index,
            topic,
            payload,
            qos,
            dup,
            ack,
        };
        self.events.send(BridgeEvent::Message(msg)).await.is_ok()
    }

    /// A CONNACK: a new generation, subscriptions when the broker kept no
    /// session (`subscribe`); false once the core is gone.
    async fn connected(
        &mut self,
        session_present: bool,
        subscribe: impl FnOnce() -> Result<(), String>,
    ) -> bool {
        self.delay = RECONNECT_BACKOFF_MIN;
        self.up = true;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(bridge = %self.name, session_present, "connected to the MQTT broker");
        if !session_present && !self.subscriptions_empty {
            if let Err(e) = subscribe() {
                tracing::error!(bridge = %self.name, error = %e, "subscribe");
            }
        }
        self.events
            .send(BridgeEvent::Connected {
                bridge: self.index,
                generation,
            })
            .await
            .is_ok()
    }

    /// A connection error: told to the core, then a growing pause before
    /// the event loop reconnects (cut short when the server stops).
    async fn failed(&mut self, error: String, stop: &CancellationToken) {
        self.up = false;
        tracing::warn!(bridge = %self.name, %error, "MQTT connection failed; reconnecting");
        let _ = self
            .events
            .send(BridgeEvent::Disconnected {
                bridge: self.index,
                error,
            })
            .await;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(self.delay) => {}
        }
        self.delay = (self.delay * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// A stopping bridge says goodbye with a DISCONNECT when it is connected.
/// A persistent session keeps the messages not yet acknowledged (not
/// committed yet, or their acknowledgement lost with the connection) for
/// the next connection, which gets them redelivered.
fn said_goodbye(link: &Link, sent: bool) {
    tracing::info!(bridge = %link.name, sent, "disconnected from the MQTT broker");
}

async fn run_v4(
    mut link: Link,
    client: rumqttc::AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    subs: Vec<(String, u8)>,
    stop: CancellationToken,
) {
    use rumqttc::{Event, Outgoing, Packet};
    loop {
        let polled = tokio::select! {
            () = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if !link
                    .message(p.topic, p.payload, p.qos as u8, p.dup, p.pkid)
                    .await
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let filters = subs
                    .iter()
                    .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos4(*q)));
                let subscribe = || {
                    client
                        .try_subscribe_many(filters)
                        .map_err(|e| e.to_string())
                };
                if !link.connected(ack.session_present, subscribe).await {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                for code in &s.return_codes {
                    if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                        tracing::error!(bridge = %link.name, "the broker refused a subscription");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => link.failed(e.to_string(), &stop).await,
        }
    }
    if link.up && client.try_disconnect().is_ok() {
        let sent = tokio::time::timeout(DISCONNECT_WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        said_goodbye(&link, sent.is_ok());
    }
}

async fn run_v5(
    mut link: Link,
    client: rumqttc::v5::AsyncClient,
    mut eventloop: rumqttc::v5::EventLoop,
    subs: Vec<(String, u8)>,
    stop: CancellationToken,
) {
    use m5::Packet;
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    loop {
        let polled = tokio::select! {
            () = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // The broker checks that topics are UTF-8; a lossy
                // conversion only guards against a broker that does not.
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if !link
                    .message(topic, p.payload, p.qos as u8, p.dup, p.pkid)
                    .await
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let filters = subs
                    .iter()
                    .map(|(f, q)| m5::Filter::new(f.clone(), qos5(*q)));
                let subscribe = || {
                    client
                        .try_subscribe_many(filters)
                        .map_err(|e| e.to_string())
                };
                if !link.connected(ack.session_present, subscribe).await {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => link.failed(e.to_string(), &stop).await,
        }
    }
    if link.up && client.try_disconnect().is_ok() {
        let sent = tokio::time::timeout(DISCONNECT_WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        said_goodbye(&link, sent.is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packet ids of the acknowledgements in the request queue, taken.
    fn taken(queue: &flume::Receiver<rumqttc::Request>) -> Vec<u16> {
        queue
            .drain()
            .map(|r| match r {
                rumqttc::Request::PubAck(a) => a.pkid,
                other => panic!("not an acknowledgement: {other:?}"),
            })
            .collect()
    }

    fn waiting(backlog: &AckBacklog) -> Vec<u16> {
        backlog.tokens().iter().map(AckToken::pkid).collect()
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn acknowledgements_past_a_full_request_queue_wait_in_order() {
        let (tx, queue) = flume::bounded(2);
        let client = Client::V4(rumqttc::AsyncClient::from_senders(tx));
        let generation = Arc::new(AtomicU64::new(1));
        let backlog = Arc::new(AckBacklog::default());
        let handle = BridgeHandle {
            index: 0,
            name: "devices".into(),
            client: client.clone(),
            generation: generation.clone(),
            backlog: backlog.clone(),
        };
        let ack = |pkid: u16, connection: u64| handle.ack(&AckToken::new(0, connection, pkid, 1));

        // Two fit in the queue; the rest wait, in order.
        for pkid in 1..=5 {
            assert!(ack(pkid, 1));
        }
        assert_eq!(waiting(&backlog), [3, 4, 5]);
        assert_eq!(taken(&queue), [1, 2]);
        // One made while others wait goes behind them, even with room.
        assert!(ack(6, 1));
        assert_eq!(waiting(&backlog), [3, 4, 5, 6]);
        assert!(queue.is_empty());
        // The acknowledging task sends them as room frees up, oldest first.
        let sender = tokio::spawn(send_backlog(client, backlog.clone(), generation.clone()));
        until("3 and 4 in the queue", || queue.len() == 2).await;
        assert_eq!(taken(&queue), [3, 4]);
        until("5 and 6 in the queue", || queue.len() == 2).await;
        assert_eq!(taken(&queue), [5, 6]);
        until("the backlog to empty", || waiting(&backlog).is_empty()).await;

        // After a reconnect, those of the old connection are refused, and
        // those still waiting are dropped: the broker redelivers them.
        for pkid in 7..=10 {
            assert!(ack(pkid, 1));
        }
        assert_eq!(waiting(&backlog), [9, 10]);
        generation.store(2, Ordering::Release);
        assert!(!ack(11, 1));
        assert!(ack(12, 2));
        assert_eq!(taken(&queue), [7, 8]);
        until("the backlog to empty", || waiting(&backlog).is_empty()).await;
        let sent = taken(&queue);
        assert!(!sent.contains(&10), "{sent:?}");
        assert!(sent.contains(&12), "{sent:?}");

        // The task ends with the connection's event loop.
        drop(queue);
        assert!(ack(13, 2));
        tokio::time::timeout(Duration::from_secs(10), sender)
            .await
            .expect("the acknowledging task ends")
            .unwrap();
    }
}

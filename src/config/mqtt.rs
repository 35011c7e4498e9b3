//! The `mqtt` group of `utopiad.conf`: broker bridges and ingest settings.

use std::path::PathBuf;

/// Everything under `mqtt = { ... }`. No bridges: MQTT ingest is off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MqttSettings {
    pub bridges: Vec<Bridge>,
    pub ingest: IngestSettings,
    pub commands: CommandSettings,
}

/// MQTT protocol version a bridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (`protocol = 4;`).
    #[default]
    V311,
    /// MQTT 5 (`protocol = 5;`).
    V5,
}

/// TLS to the broker: the CA that signs the broker's certificate, and
/// optionally this server's client certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeTls {
    /// Relative paths in the file are resolved against the directory of
    /// the file that names them (as `@include` paths are).
    pub ca_file: PathBuf,
    /// Set together with `key_file`, or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name the broker's certificate must carry; default: `host`.
    pub server_name: Option<String>,
}

/// One subscription: a topic filter and the QoS asked for (0, 1 or 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// A valid MQTT topic filter (`+` and `#` only as whole levels, `#`
    /// only last); unique within its bridge.
    pub filter: String,
    pub qos: u8,
}

/// What a bridge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BridgeRole {
    /// Device traffic: ingest from subscriptions, publish device commands.
    #[default]
    Devices,
    /// Server traffic: the cluster topics `/${cluster}/${host}` and
    /// `/${cluster}/${node id}`.
    Cluster,
    /// Both.
    All,
}

/// One broker connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    /// Short name for logs and counters; unique.
    pub name: String,
    pub role: BridgeRole,
    /// Broker host name or IP address.
    pub host: String,
    /// 1..=65535; in the file it defaults to 1883, or 8883 with `tls`.
    pub port: u16,
    pub protocol: Protocol,
    /// None: plain TCP.
    pub tls: Option<BridgeTls>,
    /// Set together with `password`, or neither.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Client id prefix; the node id and the bridge name are appended
    /// (`${client_id}-${node_id}-${name}`) so that every server and every
    /// bridge has its own session.
    pub client_id: String,
    /// MQTT keep-alive, 1..=65535 seconds.
    pub keep_alive_s: u64,
    /// Keep the session (subscriptions and unacknowledged messages) on the
    /// broker across reconnects (MQTT clean session = false).
    pub persistent_session: bool,
    /// In the file it defaults to `( { filter = "#"; qos = 1; } )`.
    pub subscriptions: Vec<Subscription>,
}

/// Ingest pipeline bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSettings {
    /// Largest payload accepted; larger ones are rejected and counted.
    pub payload_bytes_max: u64,
    /// Most messages in one Raft proposal.
    pub batch_messages_max: u64,
    /// How long a partial batch waits for more messages.
    pub batch_linger_ms: u64,
    /// Most received messages waiting to be committed on this node.
    pub pending_messages_max: u64,
    /// How long a committed message is remembered to suppress a redelivered
    /// copy of it.
    pub dedupe_window_ms: u64,
    /// A member silent for this long loses its topics to the others.
    pub owner_timeout_ms: u64,
    /// This node's share of topics relative to the others (manual weight),
    /// 1..=1000.
    pub weight: u32,
    /// Messages per second accepted from one device before the excess is
    /// rejected and counted.
    pub device_messages_per_s_max: u64,
}

/// Device command delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSettings {
    /// Publishes of one command before it is marked failed.
    pub attempts_max: u64,
    /// Wait for a reply after the first attempt; doubles per attempt.
    pub retry_initial_ms: u64,
    /// Longest wait between attempts; at least `retry_initial_ms`.
    pub retry_max_ms: u64,
    /// QoS of command publishes (0, 1 or 2).
    pub qos: u8,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            payload_bytes_max: 65_536,
            batch_messages_max: 256,
            batch_linger_ms: 2,
            pending_messages_max: 100_000,
            dedupe_window_ms: 300_000,
            owner_timeout_ms: 1_500,
            weight: 1,
            device_messages_per_s_max: 1_000,
        }
    }
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            attempts_max: 5,
            retry_initial_ms: 1_000,
            retry_max_ms: 30_000,
            qos: 1,
        }
    }
}

impl Bridge {
    /// A plain-TCP bridge to `host:port` with defaults for the rest.
    pub fn new(name: &str, host: &str, port: u16) -> Self {
        Bridge {
            name: name.to_string(),
            role: BridgeRole::Devices,
            host: host.to_string(),
            port,
            protocol: Protocol::V311,
            tls: None,
            username: None,
            password: None,
            client_id: "utopia".to_string(),
            keep_alive_s: 30,
            persistent_session: true,
            subscriptions: vec![Subscription {
                filter: "#".to_string(),
                qos: 1,
            }],
        }
    }
}

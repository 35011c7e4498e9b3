//! The `mqtt` group of `utopiad.conf`: broker bridges and ingest settings,
//! and the checks across a bridge's settings.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::de::Sources;
use super::limits::{COUNT_MAX, DURATION_MS_MAX};
use super::rules::{self, file_path, non_empty, In, Positive};
use super::ConfigError;

/// The largest payload a bridge takes: its MQTT packet limit.
const PAYLOAD_BYTES_MAX: u64 = crate::mqtt::bridge::PACKET_BYTES_MAX as u64;

/// Everything under `mqtt = { ... }`. No bridges: MQTT ingest is off.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    #[serde(deserialize_with = "bridges")]
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
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeTls {
    /// Relative paths in the file are resolved against the directory of
    /// the file that names them (as `@include` paths are). Required.
    #[serde(deserialize_with = "file_path")]
    pub ca_file: PathBuf,
    /// Set together with `key_file`, or neither.
    #[serde(deserialize_with = "file_path")]
    pub cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "file_path")]
    pub key_file: Option<PathBuf>,
    /// Name the broker's certificate must carry; default: `host`.
    #[serde(deserialize_with = "non_empty")]
    pub server_name: Option<String>,
}

/// One subscription: a topic filter and the QoS asked for (0, 1 or 2).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default = "Subscription::unset", deny_unknown_fields)]
pub struct Subscription {
    /// A valid MQTT topic filter (`+` and `#` only as whole levels, `#`
    /// only last); unique within its bridge. Required.
    #[serde(deserialize_with = "topic_filter")]
    pub filter: String,
    #[serde(deserialize_with = "In::<0, 2>::de")]
    pub qos: u8,
}

impl Subscription {
    /// What the file's settings are laid over: no filter (required) and
    /// QoS 1.
    fn unset() -> Self {
        Subscription {
            filter: String::new(),
            qos: 1,
        }
    }
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default = "Bridge::unset", deny_unknown_fields)]
pub struct Bridge {
    /// Short name for logs and counters; unique. Required.
    #[serde(deserialize_with = "non_empty")]
    pub name: String,
    pub role: BridgeRole,
    /// Broker host name or IP address. Required.
    #[serde(deserialize_with = "non_empty")]
    pub host: String,
    /// 1..=65535; in the file it defaults to 1883, or 8883 with `tls`.
    #[serde(deserialize_with = "In::<1, 65_535>::de")]
    pub port: u16,
    pub protocol: Protocol,
    /// None: plain TCP.
    pub tls: Option<BridgeTls>,
    /// Set together with `password`, or neither.
    #[serde(deserialize_with = "non_empty")]
    pub username: Option<String>,
    pub password: Option<String>,
    /// Client id prefix; the node id and the bridge name are appended
    /// (`${client_id}-${node_id}-${name}`) so that every server and every
    /// bridge has its own session.
    #[serde(deserialize_with = "client_id")]
    pub client_id: String,
    /// MQTT keep-alive, 1..=65535 seconds.
    #[serde(deserialize_with = "In::<1, 65_535>::de")]
    pub keep_alive_s: u64,
    /// Keep the session (subscriptions and unacknowledged messages) on the
    /// broker across reconnects (MQTT clean session = false).
    pub persistent_session: bool,
    /// In the file it defaults to `( { filter = "#"; qos = 1; } )`.
    pub subscriptions: Vec<Subscription>,
}

/// Ingest pipeline bounds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest payload accepted; larger ones are rejected and counted. A
    /// larger one never arrives: the bridges take MQTT packets up to
    /// 1 MiB (`crate::mqtt::bridge::PACKET_BYTES_MAX`).
    #[serde(deserialize_with = "Positive::<PAYLOAD_BYTES_MAX>::de")]
    pub payload_bytes_max: u64,
    /// Most messages in one Raft proposal.
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub batch_messages_max: u64,
    /// How long a partial batch waits for more messages.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub batch_linger_ms: u64,
    /// Most received messages waiting to be committed on this node.
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub pending_messages_max: u64,
    /// How long a committed message is remembered to suppress a redelivered
    /// copy of it.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub dedupe_window_ms: u64,
    /// A member silent for this long loses its topics to the others.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub owner_timeout_ms: u64,
    /// This node's share of topics relative to the others (manual weight),
    /// 1..=1000.
    #[serde(deserialize_with = "In::<1, 1000>::de")]
    pub weight: u32,
    /// Messages per second accepted from one device before the excess is
    /// rejected and counted.
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub device_messages_per_s_max: u64,
}

/// Device command delivery.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandSettings {
    /// Publishes of one command before it is marked failed.
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub attempts_max: u64,
    /// Wait for a reply after the first attempt; doubles per attempt.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub retry_initial_ms: u64,
    /// Longest wait between attempts; at least `retry_initial_ms`.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub retry_max_ms: u64,
    /// QoS of command publishes (0, 1 or 2).
    #[serde(deserialize_with = "In::<0, 2>::de")]
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

    /// What the file's settings are laid over: no name or host (both
    /// required), and port 0, never left so: a bridge without a port gets
    /// the default of its transport ([`bridges`]).
    fn unset() -> Self {
        Bridge::new("", "", 0)
    }

    /// The port when the file names none.
    fn default_port(&self) -> u16 {
        if self.tls.is_some() {
            8883
        } else {
            1883
        }
    }
}

/// `mqtt.bridges`: a bridge without a port gets the default of its
/// transport (a port in the file is never 0).
fn bridges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bridge>, D::Error> {
    let mut bridges = Vec::<Bridge>::deserialize(d)?;
    for b in &mut bridges {
        if b.port == 0 {
            b.port = b.default_port();
        }
    }
    Ok(bridges)
}

fn client_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id: String = non_empty(d)?;
    if id.contains('\0') {
        return Err(serde::de::Error::custom("must not contain NUL characters"));
    }
    Ok(id)
}

fn topic_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if let Err(e) = check_topic_filter(&s) {
        return Err(serde::de::Error::custom(format_args!(
            "invalid topic filter {s:?}: {e}"
        )));
    }
    Ok(s)
}

/// MQTT topic filter syntax (MQTT 3.1.1 §4.7, MQTT 5 §4.7): non-empty, at
/// most 65535 bytes, no NUL; `+` and `#` only as whole levels, `#` only as
/// the last one.
pub(crate) fn check_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("must not be empty");
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err("longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return Err("contains a NUL character");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("\"#\" must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("\"+\" must be a whole level");
        }
    }
    Ok(())
}

const ROLES: [(&str, BridgeRole); 3] = [
    ("devices", BridgeRole::Devices),
    ("cluster", BridgeRole::Cluster),
    ("all", BridgeRole::All),
];

impl<'de> Deserialize<'de> for BridgeRole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        rules::keyword(d, "bridge role", &ROLES)
    }
}

impl Serialize for BridgeRole {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let word = ROLES.iter().find(|(_, r)| r == self).map_or("", |(w, _)| w);
        s.serialize_str(word)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            4 => Ok(Protocol::V311),
            5 => Ok(Protocol::V5),
            other => Err(serde::de::Error::custom(format_args!(
                "unknown MQTT protocol level {other}; expected 4 (MQTT 3.1.1) or 5 (MQTT 5)"
            ))),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        })
    }
}

impl MqttSettings {
    /// The checks across settings of the `mqtt` group: what a bridge
    /// requires, what goes in pairs, what is unique, the retry order.
    pub(crate) fn validate(&self, sources: &Sources) -> Result<(), ConfigError> {
        for (i, b) in self.bridges.iter().enumerate() {
            let path = format!("mqtt.bridges[{i}]");
            b.validate(&path, sources)?;
            if let Some(first) = self.bridges[..i].iter().position(|o| o.name == b.name) {
                return Err(sources.setting_error(
                    &format!("{path}.name"),
                    format!(
                        "bridge name {:?} is already used by mqtt.bridges[{first}]",
                        b.name
                    ),
                ));
            }
        }
        let c = &self.commands;
        if c.retry_initial_ms > c.retry_max_ms {
            return Err(sources.error(
                &["mqtt.commands.retry_initial_ms", "mqtt.commands.retry_max_ms"],
                format!(
                    "mqtt.commands.retry_initial_ms ({}) must not be greater than mqtt.commands.retry_max_ms ({})",
                    c.retry_initial_ms, c.retry_max_ms
                ),
            ));
        }
        Ok(())
    }
}

impl Bridge {
    /// The checks across this bridge's settings; `path` is its own.
    fn validate(&self, path: &str, sources: &Sources) -> Result<(), ConfigError> {
        for (i, s) in self.subscriptions.iter().enumerate() {
            let sub = format!("{path}.subscriptions[{i}]");
            if s.filter.is_empty() {
                return Err(sources.setting_error(
                    &sub,
                    "missing \"filter\" (an MQTT topic filter such as \"devices/#\")",
                ));
            }
            if self.subscriptions[..i].iter().any(|o| o.filter == s.filter) {
                return Err(sources.setting_error(
                    &format!("{sub}.filter"),
                    format!(
                        "topic filter {:?} appears twice in {path}.subscriptions",
                        s.filter
                    ),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            let tls_path = format!("{path}.tls");
            if tls.ca_file.as_os_str().is_empty() {
                return Err(sources.setting_error(
                    &tls_path,
                    "missing \"ca_file\" (the CA certificate that signs the broker's certificate)",
                ));
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(sources.setting_error(
                        &format!("{tls_path}.cert_file"),
                        format!(
                            "a client certificate needs its key: set \"{tls_path}.key_file\" too"
                        ),
                    ));
                }
                (None, Some(_)) => {
                    return Err(sources.setting_error(
                        &format!("{tls_path}.key_file"),
                        format!(
                            "a client key needs its certificate: set \"{tls_path}.cert_file\" too"
                        ),
                    ));
                }
                _ => {}
            }
        }
        if self.name.is_empty() {
            return Err(
                sources.setting_error(path, "missing \"name\" (every bridge needs a unique name)")
            );
        }
        if self.host.is_empty() {
            return Err(sources.setting_error(
                path,
                "missing \"host\" (the broker's host name or IP address)",
            ));
        }
        match (&self.username, &self.password) {
            (Some(_), None) => Err(sources.setting_error(
                &format!("{path}.username"),
                format!("a username needs a password: set \"{path}.password\" too"),
            )),
            (None, Some(_)) => Err(sources.setting_error(
                &format!("{path}.password"),
                format!("a password needs a username: set \"{path}.username\" too"),
            )),
            _ => Ok(()),
        }
    }
}

//! `utopiad.conf`: the server's settings, read from a libconfig-syntax file.
//!
//! [`libconfig`] turns text into a tree of settings; this module decides what
//! they mean: which names exist, their types, defaults and valid ranges.
//! Every setting is optional (a missing one keeps its default), unknown names
//! are errors, and every error reads `file:line: message`, pointing at the
//! offending setting. [`reference`] is the documented example file, with
//! every setting at its default.

pub mod libconfig;
pub mod mqtt;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use utopia_storage::apply::bounds;

use self::libconfig::{ParseError, Setting, Span, Value};
use self::mqtt::{
    Bridge, BridgeRole, BridgeTls, CommandSettings, IngestSettings, MqttSettings, Protocol,
    Subscription,
};

/// Everything `utopiad` reads from its configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// This node's Raft id.
    pub node_id: u64,
    /// Where RocksDB and Raft state live.
    pub data_dir: PathBuf,
    /// gRPC listen address for clients, `HOST:PORT` (a valid [`SocketAddr`]).
    pub listen: String,
    /// The address clients reach this node at when it differs from
    /// `listen` (empty: `listen`); published to the other members, which
    /// name it to clients that must go to the leader.
    pub advertise: String,
    /// Listen address of the peer port (the Raft transport), `HOST:PORT`.
    pub peer_listen: String,
    /// The address the other members reach this node at when it differs
    /// from `peer_listen` (empty: `peer_listen`). Recorded as its member
    /// address when the node starts a one-member cluster.
    pub peer_advertise: String,
    /// Name of the cluster this node belongs to.
    pub cluster_name: String,
    /// The members a new cluster starts with, by node id; empty: a
    /// one-member cluster of this node.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Start a new data directory uninitialised and wait to be added to an
    /// existing cluster (set by `utopiad --join`).
    pub join: bool,
    pub limits: Limits,
    pub raft: RaftSettings,
    pub log: LogSettings,
    /// MQTT brokers to ingest device messages from (none: MQTT is off).
    pub mqtt: MqttSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
}

/// Authentication: how long the tokens this node issues last. (Whether
/// auth is on, users and roles are replicated state, not settings.)
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// Lifetime of a token from `Auth.Authenticate`, in seconds.
    pub token_ttl_s: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        // etcd's simple tokens last 5 minutes too. Tokens are stateless (a
        // MAC over user and expiry), so they cannot be revoked one by one:
        // a short life bounds what a leaked one is worth, and the CLI
        // authenticates afresh on each run anyway.
        AuthSettings { token_ttl_s: 300 }
    }
}

/// Longest token lifetime a node may be configured with: one day.
pub const TOKEN_TTL_S_MAX: u64 = 86_400;

/// TLS on the gRPC listener (clients and peers alike) and on connections
/// to peers. Empty paths are unset; with no `cert_file`, plain text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSettings {
    /// This node's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The private key of `cert_file` (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM): peers' certificates are checked against them,
    /// and clients' when `client_cert_required`.
    pub ca_file: PathBuf,
    /// Mutual TLS: refuse connections without a certificate signed by a CA
    /// of `ca_file`.
    pub client_cert_required: bool,
    /// CA certificates (PEM) that peers' certificates must chain to on the
    /// peer port (empty: `ca_file`). The peer port always requires one.
    pub peer_ca_file: PathBuf,
    /// DNS names or IP addresses, one of which a peer's certificate must
    /// carry as a subject alternative name (empty: any certificate from
    /// the peer CA is a peer).
    pub peer_allowed_names: Vec<String>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// The CA file peers' certificates are checked against.
    pub fn peer_ca(&self) -> &Path {
        if self.peer_ca_file.as_os_str().is_empty() {
            &self.ca_file
        } else {
            &self.peer_ca_file
        }
    }
}

/// Size and count limits on requests and server resources. All are > 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub key_bytes_max: u64,
    pub value_bytes_max: u64,
    /// Largest gRPC message.
    pub request_bytes_max: u64,
    pub txn_ops_max: u64,
    /// Most keys one range request returns.
    pub range_limit_max: u64,
    pub watchers_max: u64,
    pub proposals_in_flight_max: u64,
    pub history_revisions_max: u64,
    /// Deepest JSON (or CBOR) value accepted from a device, a report or a
    /// command: 1..=[`bounds::JSON_DEPTH_MAX`], the most the applier takes.
    pub json_depth_max: u64,
    /// Largest document an event this node proposes may leave behind,
    /// carried in the event (every replica applies the proposer's value).
    pub document_bytes_max: u64,
    /// Largest Range response or page of documents, in bytes (one pair or
    /// document always goes, whatever its size).
    pub response_bytes_max: u64,
    /// Most bytes one transaction (or delete) may read or touch.
    pub txn_bytes_max: u64,
    /// The state machine's size on disk past which this node raises the
    /// NOSPACE alarm.
    pub db_bytes_max: u64,
    /// Open gRPC connections on each port (client, peer); more wait to be
    /// accepted.
    pub connections_max: u64,
    /// Concurrent HTTP/2 streams (calls) on one connection.
    pub streams_per_connection_max: u64,
    /// HTTP/2 keep-alive: a PING after this long without one...
    pub keepalive_interval_ms: u64,
    /// ...and the connection closed if it is not answered within this.
    pub keepalive_timeout_ms: u64,
    /// TCP keep-alive probes after this long without traffic.
    pub tcp_keepalive_ms: u64,
    /// How long a unary request may take before DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    /// Devices registered under one host, at most.
    pub devices_per_host_max: u64,
    /// Active leases, at most.
    pub leases_max: u64,
    /// Device commands awaiting a reply, at most.
    pub commands_pending_max: u64,
    /// How long a settled device command's record is kept.
    pub command_retention_ms: u64,
}

/// Raft timing. `heartbeat_interval_ms < election_timeout_ms_min <
/// election_timeout_ms_max`; all are > 0.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_log_entries: u64,
    pub log_entries_kept_after_snapshot: u64,
    pub lease_check_interval_ms: u64,
    /// Largest snapshot this node accepts from a leader, in bytes.
    pub snapshot_bytes_max: u64,
    /// How far a proposal forwarded by another member may have been
    /// stamped from this node's clock, in milliseconds.
    pub forwarded_clock_skew_ms_max: u64,
}

/// Logging: a `tracing` filter (overridden by `RUST_LOG`) and an output format.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// Log line format: `"text"` or `"json"` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_id: 1,
            data_dir: PathBuf::from("./utopia-data"),
            listen: "127.0.0.1:7700".to_string(),
            advertise: String::new(),
            peer_listen: "127.0.0.1:7800".to_string(),
            peer_advertise: String::new(),
            cluster_name: "utopia".to_string(),
            initial_cluster: BTreeMap::new(),
            join: false,
            limits: Limits::default(),
            raft: RaftSettings::default(),
            log: LogSettings::default(),
            mqtt: MqttSettings::default(),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            value_bytes_max: 1_048_576,
            request_bytes_max: 4_194_304,
            txn_ops_max: 128,
            range_limit_max: 10_000,
            watchers_max: 1024,
            proposals_in_flight_max: 1024,
            history_revisions_max: 100_000,
            json_depth_max: 32,
            document_bytes_max: 1_048_576,
            response_bytes_max: 4 << 20,
            txn_bytes_max: 16 << 20,
            db_bytes_max: 8 << 30,
            connections_max: 1024,
            streams_per_connection_max: 256,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            tcp_keepalive_ms: 60_000,
            request_timeout_ms: 30_000,
            devices_per_host_max: 10_000,
            leases_max: 100_000,
            commands_pending_max: 10_000,
            command_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl Limits {
    /// The quotas every replica applies (proposed by the leader when they
    /// differ from the ones in the replicated state).
    pub fn quotas(&self) -> utopia_raft::event::Quotas {
        utopia_raft::event::Quotas {
            devices_per_host_max: self.devices_per_host_max,
            leases_max: self.leases_max,
            commands_pending_max: self.commands_pending_max,
            command_retention_ms: self.command_retention_ms,
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 400,
            election_timeout_ms_max: 800,
            snapshot_log_entries: 100_000,
            log_entries_kept_after_snapshot: 5000,
            lease_check_interval_ms: 250,
            snapshot_bytes_max: 64 << 30,
            forwarded_clock_skew_ms_max: 60_000,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info,openraft=warn".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// Why a configuration could not be loaded. Displays as `file:line: message`
/// (line 0: the file as a whole).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid libconfig syntax (or an include failed).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A setting is unknown, has the wrong type or an invalid value.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: u32,
        message: String,
    },
    /// The file could not be read.
    #[error("{}:0: cannot read config file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The line the error points at (0: the whole file).
    pub fn line(&self) -> u32 {
        match self {
            ConfigError::Parse(e) => e.line,
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Io { .. } => 0,
        }
    }
}

fn invalid(span: &Span, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: span.file.to_path_buf(),
        line: span.line,
        message,
    }
}

impl Settings {
    /// Reads and decodes the file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let bytes = libconfig::read_bounded(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        decode(&libconfig::parse_bytes(&bytes, path)?)
    }

    /// Decodes `text` as the contents of `file` (which names it in errors
    /// and anchors relative `@include`s).
    pub fn from_str(text: &str, file: &Path) -> Result<Settings, ConfigError> {
        decode(&libconfig::parse_str(text, file)?)
    }
}

const TOP: &[&str] = &[
    "node_id",
    "data_dir",
    "listen",
    "advertise",
    "peer_listen",
    "peer_advertise",
    "cluster_name",
    "initial_cluster",
    "limits",
    "raft",
    "log",
    "mqtt",
    "tls",
    "auth",
];
const LIMITS: &[&str] = &[
    "key_bytes_max",
    "value_bytes_max",
    "request_bytes_max",
    "txn_ops_max",
    "range_limit_max",
    "watchers_max",
    "proposals_in_flight_max",
    "history_revisions_max",
    "json_depth_max",
    "document_bytes_max",
    "response_bytes_max",
    "txn_bytes_max",
    "db_bytes_max",
    "connections_max",
    "streams_per_connection_max",
    "keepalive_interval_ms",
    "keepalive_timeout_ms",
    "tcp_keepalive_ms",
    "request_timeout_ms",
    "devices_per_host_max",
    "leases_max",
    "commands_pending_max",
    "command_retention_ms",
];
const RAFT: &[&str] = &[
    "heartbeat_interval_ms",
    "election_timeout_ms_min",
    "election_timeout_ms_max",
    "snapshot_log_entries",
    "log_entries_kept_after_snapshot",
    "lease_check_interval_ms",
    "snapshot_bytes_max",
    "forwarded_clock_skew_ms_max",
];
const LOG: &[&str] = &["level", "format"];
const MQTT: &[&str] = &["bridges", "ingest", "commands"];
const BRIDGE: &[&str] = &[
    "name",
    "role",
    "host",
    "port",
    "protocol",
    "tls",
    "username",
    "password",
    "client_id",
    "keep_alive_s",
    "persistent_session",
    "subscriptions",
];
const BRIDGE_TLS: &[&str] = &["ca_file", "cert_file", "key_file", "server_name"];
const SUBSCRIPTION: &[&str] = &["filter", "qos"];
const INGEST: &[&str] = &[
    "payload_bytes_max",
    "batch_messages_max",
    "batch_linger_ms",
    "pending_messages_max",
    "dedupe_window_ms",
    "owner_timeout_ms",
    "weight",
    "device_messages_per_s_max",
];
const COMMANDS: &[&str] = &["attempts_max", "retry_initial_ms", "retry_max_ms", "qos"];
const TLS: &[&str] = &[
    "cert_file",
    "key_file",
    "ca_file",
    "client_cert_required",
    "peer_ca_file",
    "peer_allowed_names",
];
const AUTH: &[&str] = &["token_ttl_s"];

/// A setting (or an element of a list) with its path for messages:
/// dotted names, and `[i]` for the i-th element of a list
/// (`limits.key_bytes_max`, `mqtt.bridges[0].port`).
struct Field<'a> {
    path: String,
    /// The setting's name; empty for a list element.
    name: &'a str,
    value: &'a Value,
    span: &'a Span,
}

impl<'a> Field<'a> {
    fn err(&self, what: impl std::fmt::Display) -> ConfigError {
        invalid(self.span, format!("setting \"{}\": {what}", self.path))
    }

    fn wrong_type(&self, expected: &str) -> ConfigError {
        self.err(format!(
            "expected {expected}, found {}",
            self.value.type_name()
        ))
    }

    fn int(&self) -> Result<u64, ConfigError> {
        match *self.value {
            Value::Int(i) => {
                u64::try_from(i).map_err(|_| self.err(format!("must not be negative, found {i}")))
            }
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn positive(&self) -> Result<u64, ConfigError> {
        let v = self.int()?;
        if v == 0 {
            return Err(self.err("must be greater than 0"));
        }
        Ok(v)
    }

    /// An integer in `1..=max`: the upper bound is what the code using the
    /// value holds.
    fn positive_in(&self, max: u64) -> Result<u64, ConfigError> {
        let v = self.positive()?;
        if v > max {
            return Err(self.err(format!("must be between 1 and {max}, found {v}")));
        }
        Ok(v)
    }

    fn string(&self) -> Result<&'a str, ConfigError> {
        match self.value {
            Value::Str(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn non_empty(&self) -> Result<String, ConfigError> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.err("must not be empty"));
        }
        Ok(s.to_string())
    }

    fn group(&self) -> Result<&'a [Setting], ConfigError> {
        match self.value {
            Value::Group(g) => Ok(g),
            _ => Err(self.wrong_type("a group")),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match *self.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong_type("a boolean (true or false)")),
        }
    }

    /// An integer in `min..=max`.
    fn int_in(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = self.int()?;
        if !(min..=max).contains(&v) {
            return Err(self.err(format!("must be between {min} and {max}, found {v}")));
        }
        Ok(v)
    }

    /// An `IP:PORT` address, or `""` for none; `example` shows the form.
    fn optional_addr(&self, example: &str) -> Result<String, ConfigError> {
        let s = self.string()?;
        if !s.is_empty() {
            if let Err(e) = s.parse::<SocketAddr>() {
                return Err(self.err(format!(
                    "invalid address {s:?} ({e}); expected IP:PORT such as {example}, or \"\""
                )));
            }
        }
        Ok(s.to_string())
    }

    /// The elements of a list, each with its path `{path}[i]`.
    fn list(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        match self.value {
            Value::List(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, (value, span))| Field {
                    path: format!("{}[{i}]", self.path),
                    name: "",
                    value,
                    span,
                })
                .collect()),
            _ => Err(self.wrong_type("a list")),
        }
    }

    /// A file name; a relative one is resolved against the directory of the
    /// file the setting is written in (as `@include` paths are).
    fn file_path(&self) -> Result<PathBuf, ConfigError> {
        let s = self.non_empty()?;
        let p = Path::new(&s);
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        Ok(match self.span.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        })
    }
}

/// Pairs each member of `settings` with its path, rejecting unknown names.
fn fields<'a>(
    settings: &'a [Setting],
    prefix: &str,
    known: &[&str],
) -> Result<Vec<Field<'a>>, ConfigError> {
    settings
        .iter()
        .map(|s| {
            let path = if prefix.is_empty() {
                s.name.clone()
            } else {
                format!("{prefix}.{}", s.name)
            };
            if !known.contains(&s.name.as_str()) {
                return Err(invalid(
                    &s.span,
                    format!(
                        "unknown setting \"{path}\"; expected one of: {}",
                        known.join(", ")
                    ),
                ));
            }
            Ok(Field {
                path,
                name: &s.name,
                value: &s.value,
                span: &s.span,
            })
        })
        .collect()
}

/// Parses `1=HOST:PORT,2=HOST:PORT,...`: the members a new cluster starts
/// with. An empty string is an empty map.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("member {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| format!("member {part:?}: node id: {e}"))?;
        let addr = addr.trim();
        addr.parse::<SocketAddr>()
            .map_err(|e| format!("member {part:?}: address {addr:?}: {e}"))?;
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("node id {id} appears twice"));
        }
    }
    Ok(members)
}

fn decode(tree: &[Setting]) -> Result<Settings, ConfigError> {
    let mut out = Settings::default();
    for f in fields(tree, "", TOP)? {
        match f.name {
            "node_id" => out.node_id = f.int()?,
            "data_dir" => out.data_dir = PathBuf::from(f.non_empty()?),
            "listen" => {
                let s = f.string()?;
                if let Err(e) = s.parse::<SocketAddr>() {
                    return Err(f.err(format!(
                        "invalid address {s:?} ({e}); expected IP:PORT such as 127.0.0.1:7700"
                    )));
                }
                out.listen = s.to_string();
            }
            "advertise" => out.advertise = f.optional_addr("192.0.2.10:7700")?,
            "peer_listen" => {
                let s = f.string()?;
                if let Err(e) = s.parse::<SocketAddr>() {
                    return Err(f.err(format!(
                        "invalid address {s:?} ({e}); expected IP:PORT such as 127.0.0.1:7800"
                    )));
                }
                out.peer_listen = s.to_string();
            }
            "peer_advertise" => out.peer_advertise = f.optional_addr("192.0.2.10:7800")?,
            "cluster_name" => out.cluster_name = f.non_empty()?,
            "initial_cluster" => {
                out.initial_cluster = parse_initial_cluster(f.string()?).map_err(|e| f.err(e))?
            }
            "limits" => decode_limits(f.group()?, &mut out.limits)?,
            "raft" => decode_raft(f.group()?, &mut out.raft)?,
            "log" => decode_log(f.group()?, &mut out.log)?,
            "mqtt" => decode_mqtt(f.group()?, &mut out.mqtt)?,
            "tls" => decode_tls(&f, &mut out.tls)?,
            "auth" => decode_auth(f.group()?, &mut out.auth)?,
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(out)
}

// Upper bounds of the numeric settings: each is what the code using the
// value holds, so that an absurd value is refused here (exit 2, with the
// setting's name) rather than panicking or wrapping later.

/// Counts: they become `u32` counters, `usize` lengths, semaphore permits
/// (at most `usize::MAX >> 3`) and channel sizes.
const COUNT_MAX: u64 = u32::MAX as u64;
/// Sizes of a gRPC message or a part of one: gRPC frames a message with a
/// 32-bit length.
const MESSAGE_BYTES_MAX: u64 = u32::MAX as u64;
/// Durations in milliseconds: a year, far inside what tokio's timer
/// (2^36 ms) and `Instant` arithmetic hold.
const DURATION_MS_MAX: u64 = 365 * 86_400_000;
/// Sizes of whole stores (a snapshot, the database): 1 PiB, far beyond any
/// disk a node has, far inside what a `u64` of bytes holds.
const STORE_BYTES_MAX: u64 = 1 << 50;
/// Smallest document limit: a device's document with nothing in it takes
/// a few hundred bytes.
const DOCUMENT_BYTES_MIN: u64 = 1024;

fn decode_limits(group: &[Setting], l: &mut Limits) -> Result<(), ConfigError> {
    for f in fields(group, "limits", LIMITS)? {
        if decode_byte_limits(&f, l)? {
            continue;
        }
        match f.name {
            "key_bytes_max" => l.key_bytes_max = f.positive_in(MESSAGE_BYTES_MAX)?,
            "value_bytes_max" => l.value_bytes_max = f.positive_in(MESSAGE_BYTES_MAX)?,
            "request_bytes_max" => l.request_bytes_max = f.positive_in(MESSAGE_BYTES_MAX)?,
            "txn_ops_max" => l.txn_ops_max = f.positive_in(COUNT_MAX)?,
            "range_limit_max" => l.range_limit_max = f.positive_in(COUNT_MAX)?,
            "watchers_max" => l.watchers_max = f.positive_in(COUNT_MAX)?,
            "proposals_in_flight_max" => l.proposals_in_flight_max = f.positive_in(COUNT_MAX)?,
            "history_revisions_max" => l.history_revisions_max = f.positive_in(COUNT_MAX)?,
            "json_depth_max" => {
                l.json_depth_max = f.positive_in(bounds::JSON_DEPTH_MAX as u64)?;
            }
            "document_bytes_max" => {
                l.document_bytes_max = f.int_in(DOCUMENT_BYTES_MIN, bounds::DOCUMENT_BYTES_MAX)?;
            }
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(())
}

/// The `limits` settings bounded in bytes, time or totals, each within a
/// range; false for any other setting.
fn decode_byte_limits(f: &Field<'_>, l: &mut Limits) -> Result<bool, ConfigError> {
    match f.name {
        // A page holds at least one pair; the encoder allows 64 MiB.
        "response_bytes_max" => l.response_bytes_max = f.int_in(4096, 64 << 20)?,
        // At most what the applier itself allows (APPLY_BYTES_MAX).
        "txn_bytes_max" => {
            l.txn_bytes_max = f.int_in(1 << 20, utopia_storage::apply::APPLY_BYTES_MAX)?
        }
        "db_bytes_max" => l.db_bytes_max = f.int_in(1 << 20, 1 << 50)?,
        "connections_max" => l.connections_max = f.int_in(1, 65_536)?,
        "streams_per_connection_max" => l.streams_per_connection_max = f.int_in(1, 10_000)?,
        "keepalive_interval_ms" => l.keepalive_interval_ms = f.int_in(1000, 3_600_000)?,
        "keepalive_timeout_ms" => l.keepalive_timeout_ms = f.int_in(1000, 600_000)?,
        "tcp_keepalive_ms" => l.tcp_keepalive_ms = f.int_in(1000, 7_200_000)?,
        "request_timeout_ms" => l.request_timeout_ms = f.int_in(100, 3_600_000)?,
        "devices_per_host_max" => l.devices_per_host_max = f.int_in(1, 100_000_000)?,
        "leases_max" => l.leases_max = f.int_in(1, 100_000_000)?,
        "commands_pending_max" => l.commands_pending_max = f.int_in(1, 100_000_000)?,
        // One minute to one year.
        "command_retention_ms" => {
            l.command_retention_ms = f.int_in(60_000, 366 * 24 * 3_600_000)?
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn decode_raft(group: &[Setting], r: &mut RaftSettings) -> Result<(), ConfigError> {
    let fs = fields(group, "raft", RAFT)?;
    let mut min_field = None;
    let mut max_field = None;
    let mut heartbeat_field = None;
    for f in &fs {
        let v = match f.name {
            "snapshot_log_entries" | "log_entries_kept_after_snapshot" => {
                f.positive_in(COUNT_MAX)?
            }
            "snapshot_bytes_max" => f.positive_in(STORE_BYTES_MAX)?,
            _ => f.positive_in(DURATION_MS_MAX)?,
        };
        match f.name {
            "heartbeat_interval_ms" => {
                r.heartbeat_interval_ms = v;
                heartbeat_field = Some(f);
            }
            "election_timeout_ms_min" => {
                r.election_timeout_ms_min = v;
                min_field = Some(f);
            }
            "election_timeout_ms_max" => {
                r.election_timeout_ms_max = v;
                max_field = Some(f);
            }
            "snapshot_log_entries" => r.snapshot_log_entries = v,
            "log_entries_kept_after_snapshot" => r.log_entries_kept_after_snapshot = v,
            "lease_check_interval_ms" => r.lease_check_interval_ms = v,
            "snapshot_bytes_max" => r.snapshot_bytes_max = v,
            "forwarded_clock_skew_ms_max" => r.forwarded_clock_skew_ms_max = v,
            _ => return Err(f.err("not handled")),
        }
    }
    if r.election_timeout_ms_min >= r.election_timeout_ms_max {
        let msg = format!(
            "raft.election_timeout_ms_min ({}) must be less than raft.election_timeout_ms_max ({})",
            r.election_timeout_ms_min, r.election_timeout_ms_max
        );
        if let Some(f) = min_field.or(max_field) {
            return Err(invalid(f.span, msg));
        }
    }
    if r.heartbeat_interval_ms >= r.election_timeout_ms_min {
        let msg = format!(
            "raft.heartbeat_interval_ms ({}) must be less than raft.election_timeout_ms_min ({})",
            r.heartbeat_interval_ms, r.election_timeout_ms_min
        );
        if let Some(f) = heartbeat_field.or(min_field) {
            return Err(invalid(f.span, msg));
        }
    }
    Ok(())
}

fn decode_log(group: &[Setting], l: &mut LogSettings) -> Result<(), ConfigError> {
    for f in fields(group, "log", LOG)? {
        match f.name {
            "level" => l.level = f.non_empty()?,
            "format" => {
                l.format = match f.string()? {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(f.err(format!(
                            "unknown log format {other:?}; expected \"text\" or \"json\""
                        )));
                    }
                }
            }
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(())
}

fn decode_mqtt(group: &[Setting], m: &mut MqttSettings) -> Result<(), ConfigError> {
    for f in fields(group, "mqtt", MQTT)? {
        match f.name {
            "bridges" => {
                let mut bridges: Vec<(Bridge, String)> = Vec::new();
                for item in f.list()? {
                    let (bridge, name_field) = decode_bridge(&item)?;
                    if let Some((_, first)) = bridges.iter().find(|(b, _)| b.name == bridge.name) {
                        return Err(name_field.err(format!(
                            "bridge name {:?} is already used by {first}",
                            bridge.name
                        )));
                    }
                    bridges.push((bridge, item.path.clone()));
                }
                m.bridges = bridges.into_iter().map(|(b, _)| b).collect();
            }
            "ingest" => decode_ingest(f.group()?, &mut m.ingest)?,
            "commands" => decode_commands(f.group()?, &mut m.commands)?,
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(())
}

/// One element of `mqtt.bridges`, and its `name` field (for the caller's
/// uniqueness check).
fn decode_bridge<'a>(item: &Field<'a>) -> Result<(Bridge, Field<'a>), ConfigError> {
    let fs = fields(item.group()?, &item.path, BRIDGE)?;
    let mut b = Bridge::new("", "", 0);
    let mut name = None;
    let mut host = false;
    let mut port = None;
    let mut username = None;
    let mut password = None;
    for f in fs {
        match f.name {
            "name" => {
                b.name = f.non_empty()?;
                name = Some(f);
            }
            "role" => {
                b.role = match f.string()? {
                    "devices" => BridgeRole::Devices,
                    "cluster" => BridgeRole::Cluster,
                    "all" => BridgeRole::All,
                    other => {
                        return Err(f.err(format!(
                            "unknown bridge role {other:?}; expected \"devices\", \"cluster\" or \"all\""
                        )));
                    }
                }
            }
            "host" => {
                b.host = f.non_empty()?;
                host = true;
            }
            "port" => port = Some(f.int_in(1, u16::MAX.into())? as u16),
            "protocol" => {
                b.protocol = match f.int()? {
                    4 => Protocol::V311,
                    5 => Protocol::V5,
                    other => {
                        return Err(f.err(format!(
                            "unknown MQTT protocol level {other}; expected 4 (MQTT 3.1.1) or 5 (MQTT 5)"
                        )));
                    }
                }
            }
            "tls" => b.tls = Some(decode_bridge_tls(&f)?),
            "username" => {
                b.username = Some(f.non_empty()?);
                username = Some(f);
            }
            "password" => {
                b.password = Some(f.string()?.to_string());
                password = Some(f);
            }
            "client_id" => {
                let id = f.non_empty()?;
                if id.contains('\0') {
                    return Err(f.err("must not contain NUL characters"));
                }
                b.client_id = id;
            }
            "keep_alive_s" => b.keep_alive_s = f.int_in(1, u16::MAX.into())?,
            "persistent_session" => b.persistent_session = f.boolean()?,
            "subscriptions" => {
                b.subscriptions.clear();
                for s in f.list()? {
                    let (sub, filter_field) = decode_subscription(&s)?;
                    if b.subscriptions.iter().any(|o| o.filter == sub.filter) {
                        return Err(filter_field.err(format!(
                            "topic filter {:?} appears twice in {}",
                            sub.filter, f.path
                        )));
                    }
                    b.subscriptions.push(sub);
                }
            }
            _ => return Err(f.err("not handled")),
        }
    }
    let Some(name) = name else {
        return Err(item.err("missing \"name\" (every bridge needs a unique name)"));
    };
    if !host {
        return Err(item.err("missing \"host\" (the broker's host name or IP address)"));
    }
    b.port = port.unwrap_or(if b.tls.is_some() { 8883 } else { 1883 });
    match (&username, &password) {
        (Some(u), None) => {
            return Err(u.err(format!(
                "a username needs a password: set \"{}.password\" too",
                item.path
            )));
        }
        (None, Some(p)) => {
            return Err(p.err(format!(
                "a password needs a username: set \"{}.username\" too",
                item.path
            )));
        }
        _ => {}
    }
    Ok((b, name))
}

fn decode_bridge_tls(group: &Field<'_>) -> Result<BridgeTls, ConfigError> {
    let mut ca_file = None;
    let mut cert = None;
    let mut key = None;
    let mut server_name = None;
    for f in fields(group.group()?, &group.path, BRIDGE_TLS)? {
        match f.name {
            "ca_file" => ca_file = Some(f.file_path()?),
            "cert_file" => cert = Some((f.file_path()?, f)),
            "key_file" => key = Some((f.file_path()?, f)),
            "server_name" => server_name = Some(f.non_empty()?),
            _ => return Err(f.err("not handled")),
        }
    }
    let Some(ca_file) = ca_file else {
        return Err(group
            .err("missing \"ca_file\" (the CA certificate that signs the broker's certificate)"));
    };
    let (cert_file, key_file) = match (cert, key) {
        (Some((c, _)), Some((k, _))) => (Some(c), Some(k)),
        (None, None) => (None, None),
        (Some((_, f)), None) => {
            return Err(f.err(format!(
                "a client certificate needs its key: set \"{}.key_file\" too",
                group.path
            )));
        }
        (None, Some((_, f))) => {
            return Err(f.err(format!(
                "a client key needs its certificate: set \"{}.cert_file\" too",
                group.path
            )));
        }
    };
    Ok(BridgeTls {
        ca_file,
        cert_file,
        key_file,
        server_name,
    })
}

/// One element of a bridge's `subscriptions`, and its `filter` field.
fn decode_subscription<'a>(item: &Field<'a>) -> Result<(Subscription, Field<'a>), ConfigError> {
    let mut filter = None;
    let mut qos = 1;
    for f in fields(item.group()?, &item.path, SUBSCRIPTION)? {
        match f.name {
            "filter" => {
                let s = f.string()?;
                if let Err(e) = check_topic_filter(s) {
                    return Err(f.err(format!("invalid topic filter {s:?}: {e}")));
                }
                filter = Some((s.to_string(), f));
            }
            "qos" => qos = f.int_in(0, 2)? as u8,
            _ => return Err(f.err("not handled")),
        }
    }
    let Some((filter, field)) = filter else {
        return Err(item.err("missing \"filter\" (an MQTT topic filter such as \"devices/#\")"));
    };
    Ok((Subscription { filter, qos }, field))
}

/// MQTT topic filter syntax (MQTT 3.1.1 §4.7, MQTT 5 §4.7): non-empty, at
/// most 65535 bytes, no NUL; `+` and `#` only as whole levels, `#` only as
/// the last one.
fn check_topic_filter(filter: &str) -> Result<(), &'static str> {
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

fn decode_ingest(group: &[Setting], i: &mut IngestSettings) -> Result<(), ConfigError> {
    for f in fields(group, "mqtt.ingest", INGEST)? {
        match f.name {
            // A larger payload never arrives: the bridges take MQTT packets
            // up to this size.
            "payload_bytes_max" => {
                i.payload_bytes_max = f.positive_in(crate::mqtt::bridge::PACKET_BYTES_MAX as u64)?
            }
            "batch_messages_max" => i.batch_messages_max = f.positive_in(COUNT_MAX)?,
            "batch_linger_ms" => i.batch_linger_ms = f.positive_in(DURATION_MS_MAX)?,
            "pending_messages_max" => i.pending_messages_max = f.positive_in(COUNT_MAX)?,
            "dedupe_window_ms" => i.dedupe_window_ms = f.positive_in(DURATION_MS_MAX)?,
            "owner_timeout_ms" => i.owner_timeout_ms = f.positive_in(DURATION_MS_MAX)?,
            "weight" => i.weight = f.int_in(1, 1000)? as u32,
            "device_messages_per_s_max" => {
                i.device_messages_per_s_max = f.positive_in(COUNT_MAX)?
            }
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(())
}

fn decode_commands(group: &[Setting], c: &mut CommandSettings) -> Result<(), ConfigError> {
    let fs = fields(group, "mqtt.commands", COMMANDS)?;
    let mut initial_field = None;
    let mut max_field = None;
    for f in &fs {
        match f.name {
            "attempts_max" => c.attempts_max = f.positive_in(COUNT_MAX)?,
            "retry_initial_ms" => {
                c.retry_initial_ms = f.positive_in(DURATION_MS_MAX)?;
                initial_field = Some(f);
            }
            "retry_max_ms" => {
                c.retry_max_ms = f.positive_in(DURATION_MS_MAX)?;
                max_field = Some(f);
            }
            "qos" => c.qos = f.int_in(0, 2)? as u8,
            _ => return Err(f.err("not handled")),
        }
    }
    if c.retry_initial_ms > c.retry_max_ms {
        let msg = format!(
            "mqtt.commands.retry_initial_ms ({}) must not be greater than mqtt.commands.retry_max_ms ({})",
            c.retry_initial_ms, c.retry_max_ms
        );
        if let Some(f) = initial_field.or(max_field) {
            return Err(invalid(f.span, msg));
        }
    }
    Ok(())
}

fn decode_tls(group: &Field, t: &mut TlsSettings) -> Result<(), ConfigError> {
    for f in fields(group.group()?, "tls", TLS)? {
        match f.name {
            "cert_file" => t.cert_file = PathBuf::from(f.string()?),
            "key_file" => t.key_file = PathBuf::from(f.string()?),
            "ca_file" => t.ca_file = PathBuf::from(f.string()?),
            "client_cert_required" => t.client_cert_required = f.boolean()?,
            "peer_ca_file" => t.peer_ca_file = PathBuf::from(f.string()?),
            "peer_allowed_names" => {
                t.peer_allowed_names.clear();
                for item in f.list()? {
                    let name = item.non_empty()?;
                    if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                        return Err(
                            item.err(format!("{name:?} is neither a DNS name nor an IP address"))
                        );
                    }
                    t.peer_allowed_names.push(name);
                }
            }
            _ => return Err(f.err("not handled")),
        }
    }
    let set = |p: &PathBuf| !p.as_os_str().is_empty();
    let problem = if set(&t.cert_file) != set(&t.key_file) {
        Some("tls.cert_file and tls.key_file are set together or not at all")
    } else if t.enabled() && !set(&t.ca_file) {
        Some("tls.ca_file is needed with tls.cert_file: peers' certificates are checked against it")
    } else if !t.enabled()
        && (set(&t.ca_file)
            || t.client_cert_required
            || set(&t.peer_ca_file)
            || !t.peer_allowed_names.is_empty())
    {
        Some("tls.ca_file, tls.client_cert_required, tls.peer_ca_file and tls.peer_allowed_names need tls.cert_file and tls.key_file")
    } else {
        None
    };
    match problem {
        Some(p) => Err(group.err(p)),
        None => Ok(()),
    }
}

fn decode_auth(group: &[Setting], a: &mut AuthSettings) -> Result<(), ConfigError> {
    for f in fields(group, "auth", AUTH)? {
        match f.name {
            "token_ttl_s" => a.token_ttl_s = f.int_in(1, TOKEN_TTL_S_MAX)?,
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(())
}

/// A commented `utopiad.conf` listing every setting at its default.
pub fn reference() -> &'static str {
    r##"# utopiad.conf -- configuration of the utopia server (libconfig syntax).
#
# Every setting is optional: a missing one keeps the default shown here.
# Unknown settings are errors. Syntax: `name = value;`, groups `{ ... }`,
# strings in double quotes, comments with #, // or /* */, and
# @include "other.conf" (relative to this file's directory).

# This node's Raft id (an integer >= 0).
node_id = 1;

# Directory for the node's data (RocksDB and Raft state).
data_dir = "./utopia-data";

# Client port: gRPC listen address for clients, IP:PORT.
listen = "127.0.0.1:7700";

# The address clients reach this node at, IP:PORT, when it is not the
# listen address (behind a proxy or NAT, or listening on 0.0.0.0). Empty:
# the listen address. Published to the other members, which name it to
# clients that must go to the leader.
advertise = "";

# Peer port: where the other members reach this node (the Raft
# transport), IP:PORT. Clients are never served here, and peers never on
# the client port. Without TLS, keep it on a network only the members can
# reach: whoever reaches it can act as a member.
peer_listen = "127.0.0.1:7800";

# The address the other members reach this node at, IP:PORT, when it is
# not peer_listen. Empty: peer_listen. Used when this node starts a
# one-member cluster; the members of a larger one are known by the peer
# addresses in initial_cluster or given to `utopia cluster add`.
peer_advertise = "";

# Name of the cluster this node belongs to.
cluster_name = "utopia";

# The members a new cluster starts with, by peer address:
# "ID=HOST:PORT,ID=HOST:PORT,...".
# Empty: a one-member cluster of this node. Read only when the data
# directory is new; a restarted node rejoins the cluster it belongs to.
initial_cluster = "";

# Request and resource limits (each greater than 0; byte sizes and counts
# at most 4294967295).
limits = {
  key_bytes_max = 4096;              # largest key, in bytes
  value_bytes_max = 1048576;         # largest value, in bytes (1 MiB)
  request_bytes_max = 4194304;       # largest gRPC message, in bytes (4 MiB)
  txn_ops_max = 128;                 # most operations in one transaction
  range_limit_max = 10000;           # most keys one range request returns
  watchers_max = 1024;               # most concurrent watchers
  proposals_in_flight_max = 1024;    # most Raft proposals awaiting commit
  history_revisions_max = 100000;    # key revisions kept for past reads and watches; older ones are compacted
  json_depth_max = 32;               # deepest JSON or CBOR value taken from a device, report or command (1..64)
  document_bytes_max = 1048576;      # largest document a write may leave behind (1 KiB..16 MiB): a document is read and rewritten whole on every update and served whole in one reply
  response_bytes_max = 4194304;      # largest Range response or document page, in bytes (4096..64 MiB); the rest is left for the next page (`more`)
  txn_bytes_max = 16777216;          # most bytes a transaction or delete may read or touch: ranges and range compares count their pairs, deletes their keys, prev_kv the old pairs (1 MiB..64 MiB)
  db_bytes_max = 8589934592;         # state machine size on disk (8 GiB) past which this node raises the NOSPACE alarm: writes that add data are refused until `utopia alarm disarm` (1 MiB..1 PiB)
  connections_max = 1024;            # open gRPC connections on each port (client, peer); more wait to be accepted (1..65536)
  streams_per_connection_max = 256;  # concurrent calls (HTTP/2 streams) on one connection (1..10000)
  keepalive_interval_ms = 30000;     # HTTP/2 PING after this long without one (1000..3600000)
  keepalive_timeout_ms = 10000;      # a connection whose PING is not answered within this is closed (1000..600000)
  tcp_keepalive_ms = 60000;          # TCP keep-alive probes after this long without traffic, then at this interval (1000..7200000)
  request_timeout_ms = 30000;        # a unary request (not Watch or membership changes) answered DEADLINE_EXCEEDED after this (100..3600000)
  devices_per_host_max = 10000;      # devices registered under one host; a new one past it is refused and its MQTT messages dropped and counted (the leader's value applies)
  leases_max = 100000;               # active leases; a grant past it is refused (the leader's value applies)
  commands_pending_max = 10000;      # device commands awaiting a reply; a new one past it is refused (the leader's value applies)
  command_retention_ms = 604800000;  # how long an acknowledged or failed command's record is kept (7 days; 60000..1 year; the leader's value applies)
};

# Raft timing, in milliseconds unless noted (each greater than 0; times at
# most 31536000000 ms, a year; counts at most 4294967295).
# heartbeat_interval_ms < election_timeout_ms_min < election_timeout_ms_max.
raft = {
  heartbeat_interval_ms = 100;       # leader heartbeat period
  election_timeout_ms_min = 400;     # shortest election timeout
  election_timeout_ms_max = 800;     # longest election timeout
  snapshot_log_entries = 100000;     # build a snapshot after this many log entries
  log_entries_kept_after_snapshot = 5000; # entries kept behind a snapshot for lagging peers
  lease_check_interval_ms = 250;     # how often expired leases are reaped
  snapshot_bytes_max = 68719476736;  # largest snapshot accepted from a leader, in bytes (64 GiB); a larger stream is refused before it fills the disk
  forwarded_clock_skew_ms_max = 60000; # a proposal another member forwards must be stamped within this of this node's clock
};

# Logging.
log = {
  level = "info,openraft=warn";      # tracing filter, e.g. "info" or "info,utopia=debug" (RUST_LOG overrides)
  format = "text";                   # "text" or "json"
};

# TLS on both ports (PEM files; relative paths are relative to the working
# directory). No cert_file: plain text on both. Every member of a cluster
# uses TLS or none does: a node reaches its peers over TLS, presenting its
# own certificate, when it has one. The peer port always requires a peer
# certificate (mutual TLS); the client port only with client_cert_required.
tls = {
  cert_file = "";                    # this node's certificate chain; its subject alternative names must cover the addresses clients and members know it by
  key_file = "";                     # the certificate's private key
  ca_file = "";                      # CA certificates that members' certificates (and, when required, clients') are checked against
  client_cert_required = false;      # mutual TLS on the client port: refuse clients without a certificate signed by a CA of ca_file
  peer_ca_file = "";                 # CA certificates peers' certificates must chain to; empty: ca_file (use a CA of its own, or peer_allowed_names, so that a client certificate is not a peer)
  peer_allowed_names = ( );          # DNS names or IP addresses, one of which a peer's certificate must carry as a subject alternative name; empty: any certificate from the peer CA
};

# Authentication (`utopia auth enable`; users and roles are kept in the
# replicated state, not here).
auth = {
  token_ttl_s = 300;                 # lifetime of a token from Authenticate, in seconds (1..86400)
};

# MQTT ingest: connections ("bridges") to MQTT brokers, how the messages
# they deliver are batched into the log, and how device commands are
# published. No bridges: MQTT ingest is off.
mqtt = {
  # Each bridge is a group in this list. An example: only name and host are
  # required; role, protocol, client_id, keep_alive_s, persistent_session and
  # subscriptions are shown at their defaults.
  #   {
  #     name = "devices";                # unique short name for logs and counters
  #     role = "devices";                # "devices" (ingest, commands), "cluster" (server topics) or "all"
  #     host = "broker.example.com";     # the broker's host name or IP address
  #     port = 8883;                     # 1..65535; default 1883, or 8883 with tls
  #     protocol = 4;                    # 4: MQTT 3.1.1, 5: MQTT 5
  #     tls = {                          # omit for plain TCP; relative paths are relative to this file
  #       ca_file = "ca.crt";            # CA certificate(s) the broker's certificate must chain to (PEM)
  #       cert_file = "client.crt";      # client certificate and its key (PEM): both or neither
  #       key_file = "client.key";
  #       server_name = "broker.example.com"; # name the broker's certificate must carry; default: host
  #     };
  #     username = "utopia";             # username and password: both or neither
  #     password = "secret";
  #     client_id = "utopia";            # node id and bridge name are appended: "utopia-1-devices"
  #     keep_alive_s = 30;               # 1..65535
  #     persistent_session = true;       # keep subscriptions and unacknowledged messages across reconnects
  #     subscriptions = (                # topic filters and QoS (0, 1 or 2)
  #       { filter = "#"; qos = 1; }
  #     );
  #   }
  bridges = ( );

  # Ingest bounds (each greater than 0; times at most 31536000000 ms, a
  # year; counts at most 4294967295; payloads at most 1048576 bytes, the
  # largest MQTT packet a bridge takes).
  ingest = {
    payload_bytes_max = 65536;       # largest payload accepted; larger ones are rejected and counted
    batch_messages_max = 256;        # most messages in one Raft proposal
    batch_linger_ms = 2;             # how long a partial batch waits for more messages
    pending_messages_max = 100000;   # most received messages awaiting commit on this node
    dedupe_window_ms = 300000;       # how long a committed message suppresses redelivered copies
    owner_timeout_ms = 1500;         # a member silent this long loses its topics to the others
    weight = 1;                      # this node's share of topics relative to the others (1..1000)
    device_messages_per_s_max = 1000; # messages per second from one device; the excess is rejected and counted
  };

  # Device commands. retry_initial_ms <= retry_max_ms (times at most
  # 31536000000 ms, a year; attempts_max at most 4294967295).
  commands = {
    attempts_max = 5;                # publishes of one command before it is marked failed
    retry_initial_ms = 1000;         # wait for a reply after the first attempt; doubles per attempt
    retry_max_ms = 30000;            # longest wait between attempts
    qos = 1;                         # QoS of command publishes (0, 1 or 2)
  };
};
"##
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> &'static Path {
        Path::new("utopiad.conf")
    }

    fn err(text: &str) -> (u32, String) {
        match Settings::from_str(text, file()) {
            Ok(s) => panic!("expected an error for {text:?}, got {s:?}"),
            Err(e) => {
                let shown = e.to_string();
                let prefix = format!("utopiad.conf:{}: ", e.line());
                assert!(shown.starts_with(&prefix), "{shown:?} lacks {prefix:?}");
                (e.line(), shown[prefix.len()..].to_string())
            }
        }
    }

    #[test]
    fn defaults() {
        let d = Settings::default();
        assert_eq!(d.node_id, 1);
        assert_eq!(d.data_dir, PathBuf::from("./utopia-data"));
        assert_eq!(d.listen, "127.0.0.1:7700");
        assert_eq!(d.cluster_name, "utopia");
        assert_eq!(d.limits.key_bytes_max, 4096);
        assert_eq!(d.limits.value_bytes_max, 1_048_576);
        assert_eq!(d.limits.request_bytes_max, 4_194_304);
        assert_eq!(d.limits.txn_ops_max, 128);
        assert_eq!(d.limits.range_limit_max, 10_000);
        assert_eq!(d.limits.watchers_max, 1024);
        assert_eq!(d.limits.proposals_in_flight_max, 1024);
        assert_eq!(d.raft.heartbeat_interval_ms, 100);
        assert_eq!(d.raft.election_timeout_ms_min, 400);
        assert_eq!(d.raft.election_timeout_ms_max, 800);
        assert_eq!(d.raft.snapshot_log_entries, 100_000);
        assert_eq!(d.raft.lease_check_interval_ms, 250);
        assert_eq!(d.log.level, "info,openraft=warn");
        assert_eq!(d.log.format, LogFormat::Text);
        assert!(d.mqtt.bridges.is_empty());
        assert_eq!(d.mqtt.ingest, IngestSettings::default());
        assert_eq!(d.mqtt.commands, CommandSettings::default());
        assert_eq!(Settings::from_str("", file()).unwrap(), d);
        assert_eq!(
            Settings::from_str(
                "mqtt = { bridges = ( ); ingest = { }; commands = { }; };",
                file()
            )
            .unwrap(),
            d
        );
        assert_eq!(
            Settings::from_str("# nothing\nlimits = {}; raft = {}; log = {};", file()).unwrap(),
            d
        );
    }

    #[test]
    fn reference_is_the_defaults() {
        assert_eq!(
            Settings::from_str(reference(), file()).unwrap(),
            Settings::default()
        );
        // It mentions every setting (the bridge's in its commented example).
        for name in TOP
            .iter()
            .chain(LIMITS)
            .chain(RAFT)
            .chain(LOG)
            .chain(MQTT)
            .chain(BRIDGE)
            .chain(BRIDGE_TLS)
            .chain(SUBSCRIPTION)
            .chain(INGEST)
            .chain(COMMANDS)
            .chain(TLS)
        {
            assert!(
                reference().contains(&format!("{name} = ")),
                "reference() lacks {name}"
            );
        }
    }

    #[test]
    fn full_file() {
        let text = r#"
node_id = 7;
data_dir = "/var/lib/utopia";
listen : "[::1]:9000";
advertise = "[2001:db8::1]:9000";
peer_listen = "[::1]:9100";
peer_advertise = "[2001:db8::1]:9100";
cluster_name = "fleet-" "eu";
limits = {
  key_bytes_max = 0x200;
  value_bytes_max = 2097152L;
  request_bytes_max = 8388608,
  txn_ops_max = 64
  range_limit_max = 500;
  watchers_max = 10;
  proposals_in_flight_max = 32;
  history_revisions_max = 500;
};
raft = {
  heartbeat_interval_ms = 50;
  election_timeout_ms_min = 300;
  election_timeout_ms_max = 600;
  snapshot_log_entries = 1000;
  log_entries_kept_after_snapshot = 10;
  lease_check_interval_ms = 100;
  snapshot_bytes_max = 1073741824;
  forwarded_clock_skew_ms_max = 5000;
};
log = { level = "debug,openraft=warn"; format = "json"; };
tls = {
  cert_file = "/etc/utopia/node.pem";
  key_file = "/etc/utopia/node.key";
  ca_file = "/etc/utopia/ca.pem";
  client_cert_required = true;
  peer_ca_file = "/etc/utopia/peers.pem";
  peer_allowed_names = ( "n1.utopia.internal", "10.0.0.2" );
};
auth = { token_ttl_s = 60; };
"#;
        let s = Settings::from_str(text, file()).unwrap();
        let want = Settings {
            node_id: 7,
            data_dir: PathBuf::from("/var/lib/utopia"),
            listen: "[::1]:9000".into(),
            advertise: "[2001:db8::1]:9000".into(),
            peer_listen: "[::1]:9100".into(),
            peer_advertise: "[2001:db8::1]:9100".into(),
            cluster_name: "fleet-eu".into(),
            initial_cluster: BTreeMap::new(),
            join: false,
            limits: Limits {
                key_bytes_max: 512,
                value_bytes_max: 2_097_152,
                request_bytes_max: 8_388_608,
                txn_ops_max: 64,
                range_limit_max: 500,
                watchers_max: 10,
                proposals_in_flight_max: 32,
                history_revisions_max: 500,
                json_depth_max: 32,
                document_bytes_max: 1_048_576,
                ..Limits::default()
            },
            raft: RaftSettings {
                heartbeat_interval_ms: 50,
                election_timeout_ms_min: 300,
                election_timeout_ms_max: 600,
                snapshot_log_entries: 1000,
                log_entries_kept_after_snapshot: 10,
                lease_check_interval_ms: 100,
                snapshot_bytes_max: 1 << 30,
                forwarded_clock_skew_ms_max: 5000,
            },
            log: LogSettings {
                level: "debug,openraft=warn".into(),
                format: LogFormat::Json,
            },
            mqtt: MqttSettings::default(),
            tls: TlsSettings {
                cert_file: PathBuf::from("/etc/utopia/node.pem"),
                key_file: PathBuf::from("/etc/utopia/node.key"),
                ca_file: PathBuf::from("/etc/utopia/ca.pem"),
                client_cert_required: true,
                peer_ca_file: PathBuf::from("/etc/utopia/peers.pem"),
                peer_allowed_names: vec!["n1.utopia.internal".into(), "10.0.0.2".into()],
            },
            auth: AuthSettings { token_ttl_s: 60 },
        };
        assert_eq!(s, want);
    }

    #[test]
    fn auth_token_ttl_is_bounded() {
        for (text, want) in [
            (
                "auth = { token_ttl_s = 0; };",
                "setting \"auth.token_ttl_s\": must be between 1 and 86400, found 0",
            ),
            (
                "auth = {\n token_ttl_s = 86401; };",
                "setting \"auth.token_ttl_s\": must be between 1 and 86400, found 86401",
            ),
            (
                "auth = { ttl = 5; };",
                "unknown setting \"auth.ttl\"; expected one of: token_ttl_s",
            ),
        ] {
            let (_, msg) = err(text);
            assert_eq!(msg, want, "{text}");
        }
        assert_eq!(err("auth = {\n token_ttl_s = 86401; };").0, 2);
    }

    /// The commented example bridge in [`reference`], uncommented.
    fn reference_example_bridge() -> String {
        let lines: Vec<&str> = reference()
            .lines()
            .skip_while(|l| *l != "  #   {")
            .take_while(|l| l.starts_with("  #"))
            .map(|l| &l[3..])
            .collect();
        assert!(lines.len() > 10, "no example bridge in reference()");
        format!("mqtt = {{ bridges = (\n{}\n); }};", lines.join("\n"))
    }

    #[test]
    fn reference_example_bridge_parses() {
        let text = reference_example_bridge();
        let s = Settings::from_str(&text, file()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let want = Bridge {
            name: "devices".into(),
            role: BridgeRole::Devices,
            host: "broker.example.com".into(),
            port: 8883,
            protocol: Protocol::V311,
            tls: Some(BridgeTls {
                ca_file: "ca.crt".into(),
                cert_file: Some("client.crt".into()),
                key_file: Some("client.key".into()),
                server_name: Some("broker.example.com".into()),
            }),
            username: Some("utopia".into()),
            password: Some("secret".into()),
            ..Bridge::new("devices", "broker.example.com", 8883)
        };
        assert_eq!(s.mqtt.bridges, vec![want]);
        // Apart from port and the optional parts, its values are the defaults.
        let minimal = Settings::from_str(
            "mqtt = { bridges = ( { name = \"devices\"; host = \"broker.example.com\"; } ); };",
            file(),
        )
        .unwrap();
        assert_eq!(
            minimal.mqtt.bridges,
            vec![Bridge::new("devices", "broker.example.com", 1883)]
        );
    }

    #[test]
    fn mqtt_full() {
        let text = r##"
mqtt = {
  bridges = (
    { name = "devices"; role = "devices"; host = "127.0.0.1"; port = 1883; protocol = 4;
      tls = { ca_file = "ca.crt"; cert_file = "client.crt"; key_file = "client.key"; server_name = "localhost"; };
      username = "alice"; password = "s3cret"; client_id = "utopia"; keep_alive_s = 30; persistent_session = true;
      subscriptions = ( { filter = "#"; qos = 1; } ); },
    { name = "servers"; role = "cluster"; host = "mqtt.internal"; protocol = 5;
      tls = { ca_file = "/etc/utopia/ca.pem"; };
      client_id = "node"; keep_alive_s = 5; persistent_session = false;
      subscriptions = ( { filter = "fleet/+/status"; qos = 0; }, { filter = "$share/g/cmd/#"; qos = 2; } ); },
    { name = "both"; role = "all"; host = "::1"; port = 11883; subscriptions = ( ); }
  );
  ingest = { payload_bytes_max = 1024; batch_messages_max = 16; batch_linger_ms = 5; pending_messages_max = 500;
             dedupe_window_ms = 60000; owner_timeout_ms = 900; weight = 1000; device_messages_per_s_max = 7; };
  commands = { attempts_max = 3; retry_initial_ms = 200; retry_max_ms = 200; qos = 2; };
};
"##;
        let dir = Path::new("/etc/utopia");
        let s = Settings::from_str(text, &dir.join("utopiad.conf")).unwrap();
        let want = MqttSettings {
            bridges: vec![
                Bridge {
                    tls: Some(BridgeTls {
                        ca_file: dir.join("ca.crt"),
                        cert_file: Some(dir.join("client.crt")),
                        key_file: Some(dir.join("client.key")),
                        server_name: Some("localhost".into()),
                    }),
                    username: Some("alice".into()),
                    password: Some("s3cret".into()),
                    ..Bridge::new("devices", "127.0.0.1", 1883)
                },
                Bridge {
                    role: BridgeRole::Cluster,
                    protocol: Protocol::V5,
                    tls: Some(BridgeTls {
                        ca_file: "/etc/utopia/ca.pem".into(),
                        cert_file: None,
                        key_file: None,
                        server_name: None,
                    }),
                    client_id: "node".into(),
                    keep_alive_s: 5,
                    persistent_session: false,
                    subscriptions: vec![
                        Subscription {
                            filter: "fleet/+/status".into(),
                            qos: 0,
                        },
                        Subscription {
                            filter: "$share/g/cmd/#".into(),
                            qos: 2,
                        },
                    ],
                    // The TLS default port.
                    ..Bridge::new("servers", "mqtt.internal", 8883)
                },
                Bridge {
                    role: BridgeRole::All,
                    subscriptions: vec![],
                    ..Bridge::new("both", "::1", 11883)
                },
            ],
            ingest: IngestSettings {
                payload_bytes_max: 1024,
                batch_messages_max: 16,
                batch_linger_ms: 5,
                pending_messages_max: 500,
                dedupe_window_ms: 60_000,
                owner_timeout_ms: 900,
                weight: 1000,
                device_messages_per_s_max: 7,
            },
            commands: CommandSettings {
                attempts_max: 3,
                retry_initial_ms: 200,
                retry_max_ms: 200,
                qos: 2,
            },
        };
        assert_eq!(s.mqtt, want);
        // Everything else keeps its default.
        assert_eq!(
            Settings {
                mqtt: MqttSettings::default(),
                ..s
            },
            Settings::default()
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#", "+", "a", "a/b", "/", "a/+/c", "a/#", "+/+", "/#", "a//b", "$SYS/#", "ä/ö",
        ] {
            assert_eq!(check_topic_filter(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "", "a#", "#/a", "a/#/b", "a/b#", "a+", "+a/b", "a/b+/c", "##", "a\0b",
        ] {
            assert!(check_topic_filter(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_filter(&"a".repeat(65_536)).is_err());
        assert_eq!(check_topic_filter(&"a".repeat(65_535)), Ok(()));
    }

    #[test]
    fn mqtt_errors() {
        // A valid bridge, as a group in a list, with `extra` settings
        // spliced in on its second line.
        let bridge = |extra: &str| {
            format!(
                "mqtt = {{\n  bridges = (\n    {{ name = \"b\"; host = \"h\";\n{extra}\n    }}\n  );\n}};"
            )
        };
        let cases: Vec<(String, u32, &str)> = vec![
            (
                "mqtt = { brokers = (); };".into(),
                1,
                "unknown setting \"mqtt.brokers\"; expected one of: bridges, ingest, commands",
            ),
            (
                "mqtt = ( );".into(),
                1,
                "setting \"mqtt\": expected a group, found a list",
            ),
            (
                "mqtt = {\n bridges = { };\n};".into(),
                2,
                "setting \"mqtt.bridges\": expected a list, found a group",
            ),
            (
                "mqtt = {\n bridges = (\n   5\n );\n};".into(),
                3,
                "setting \"mqtt.bridges[0]\": expected a group, found an integer",
            ),
            (
                "mqtt = { bridges = ( { host = \"h\"; } ); };".into(),
                1,
                "setting \"mqtt.bridges[0]\": missing \"name\"",
            ),
            (
                "mqtt = { bridges = (\n { name = \"a\"; host = \"h\"; },\n { name = \"b\"; } ); };".into(),
                3,
                "setting \"mqtt.bridges[1]\": missing \"host\"",
            ),
            (
                bridge("port = 0;"),
                4,
                "setting \"mqtt.bridges[0].port\": must be between 1 and 65535, found 0",
            ),
            (
                bridge("port = 65536;"),
                4,
                "setting \"mqtt.bridges[0].port\": must be between 1 and 65535, found 65536",
            ),
            (
                bridge("port = -1;"),
                4,
                "setting \"mqtt.bridges[0].port\": must not be negative, found -1",
            ),
            (
                bridge("port = \"1883\";"),
                4,
                "setting \"mqtt.bridges[0].port\": expected an integer, found a string",
            ),
            (
                bridge("protocol = 3;"),
                4,
                "setting \"mqtt.bridges[0].protocol\": unknown MQTT protocol level 3; expected 4 (MQTT 3.1.1) or 5 (MQTT 5)",
            ),
            (
                bridge("role = \"device\";"),
                4,
                "setting \"mqtt.bridges[0].role\": unknown bridge role \"device\"; expected \"devices\", \"cluster\" or \"all\"",
            ),
            (
                bridge("colour = 1;"),
                4,
                "unknown setting \"mqtt.bridges[0].colour\"; expected one of: name, role, host, port, protocol, tls, username, password, client_id, keep_alive_s, persistent_session, subscriptions",
            ),
            (
                bridge("name = \"\";"),
                4,
                "duplicate setting \"name\" (first set on line 3)",
            ),
            (
                "mqtt = { bridges = (\n { name = \"\"; host = \"h\"; } ); };".into(),
                2,
                "setting \"mqtt.bridges[0].name\": must not be empty",
            ),
            (
                "mqtt = { bridges = ( { name = \"a\"; host = \"h\"; },\n{ name = \"b\"; host = \"h\"; },\n\n { name = \"a\"; host = \"h2\"; } ); };".into(),
                4,
                "setting \"mqtt.bridges[2].name\": bridge name \"a\" is already used by mqtt.bridges[0]",
            ),
            (
                bridge("host = \"\";"),
                4,
                "duplicate setting \"host\"",
            ),
            (
                bridge("persistent_session = 1;"),
                4,
                "setting \"mqtt.bridges[0].persistent_session\": expected a boolean (true or false), found an integer",
            ),
            (
                bridge("keep_alive_s = 0;"),
                4,
                "setting \"mqtt.bridges[0].keep_alive_s\": must be between 1 and 65535, found 0",
            ),
            (
                bridge("client_id = \"\";"),
                4,
                "setting \"mqtt.bridges[0].client_id\": must not be empty",
            ),
            (
                bridge("  username = \"alice\";"),
                4,
                "setting \"mqtt.bridges[0].username\": a username needs a password: set \"mqtt.bridges[0].password\" too",
            ),
            (
                bridge("\n  password = \"s3cret\";"),
                5,
                "setting \"mqtt.bridges[0].password\": a password needs a username: set \"mqtt.bridges[0].username\" too",
            ),
            (
                bridge("username = \"\"; password = \"x\";"),
                4,
                "setting \"mqtt.bridges[0].username\": must not be empty",
            ),
            (
                bridge("tls = { cert_file = \"c.crt\"; key_file = \"c.key\"; };"),
                4,
                "setting \"mqtt.bridges[0].tls\": missing \"ca_file\"",
            ),
            (
                bridge("tls = {\n  ca_file = \"ca.crt\";\n  cert_file = \"c.crt\";\n};"),
                6,
                "setting \"mqtt.bridges[0].tls.cert_file\": a client certificate needs its key: set \"mqtt.bridges[0].tls.key_file\" too",
            ),
            (
                bridge("tls = { ca_file = \"ca.crt\";\n key_file = \"c.key\"; };"),
                5,
                "setting \"mqtt.bridges[0].tls.key_file\": a client key needs its certificate: set \"mqtt.bridges[0].tls.cert_file\" too",
            ),
            (
                bridge("tls = { ca_file = \"\"; };"),
                4,
                "setting \"mqtt.bridges[0].tls.ca_file\": must not be empty",
            ),
            (
                bridge("tls = { ca_file = \"ca.crt\"; verify = false; };"),
                4,
                "unknown setting \"mqtt.bridges[0].tls.verify\"; expected one of: ca_file, cert_file, key_file, server_name",
            ),
            (
                bridge("tls = \"ca.crt\";"),
                4,
                "setting \"mqtt.bridges[0].tls\": expected a group, found a string",
            ),
            (
                bridge("subscriptions = { filter = \"#\"; };"),
                4,
                "setting \"mqtt.bridges[0].subscriptions\": expected a list, found a group",
            ),
            (
                bridge("subscriptions = (\n  { filter = \"a\"; },\n  \"b\" );"),
                6,
                "setting \"mqtt.bridges[0].subscriptions[1]\": expected a group, found a string",
            ),
            (
                bridge("subscriptions = ( { qos = 1; } );"),
                4,
                "setting \"mqtt.bridges[0].subscriptions[0]\": missing \"filter\"",
            ),
            (
                bridge("subscriptions = (\n { filter = \"a/#/b\"; } );"),
                5,
                "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"a/#/b\": \"#\" must be a whole level and the last one",
            ),
            (
                bridge("subscriptions = ( { filter = \"a/b+\"; } );"),
                4,
                "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"a/b+\": \"+\" must be a whole level",
            ),
            (
                bridge("subscriptions = ( { filter = \"\"; } );"),
                4,
                "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"\": must not be empty",
            ),
            (
                bridge("subscriptions = ( { filter = \"a\\x00b\"; } );"),
                4,
                "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"a\\0b\": contains a NUL character",
            ),
            (
                bridge("subscriptions = ( { filter = \"a\"; qos = 3; } );"),
                4,
                "setting \"mqtt.bridges[0].subscriptions[0].qos\": must be between 0 and 2, found 3",
            ),
            (
                bridge("subscriptions = ( { filter = \"a\"; },\n { filter = \"a\"; qos = 0; } );"),
                5,
                "setting \"mqtt.bridges[0].subscriptions[1].filter\": topic filter \"a\" appears twice in mqtt.bridges[0].subscriptions",
            ),
            (
                bridge("subscriptions = ( { filter = \"a\"; topic = \"b\"; } );"),
                4,
                "unknown setting \"mqtt.bridges[0].subscriptions[0].topic\"; expected one of: filter, qos",
            ),
            (
                "mqtt = {\n ingest = { batch_linger_ms = 0; };\n};".into(),
                2,
                "setting \"mqtt.ingest.batch_linger_ms\": must be greater than 0",
            ),
            (
                "mqtt = { ingest = { weight = 0; }; };".into(),
                1,
                "setting \"mqtt.ingest.weight\": must be between 1 and 1000, found 0",
            ),
            (
                "mqtt = { ingest = { weight = 1001; }; };".into(),
                1,
                "setting \"mqtt.ingest.weight\": must be between 1 and 1000, found 1001",
            ),
            (
                "mqtt = { ingest = { payload_bytes_max = -1; }; };".into(),
                1,
                "setting \"mqtt.ingest.payload_bytes_max\": must not be negative, found -1",
            ),
            (
                "mqtt = { ingest = { linger = 1; }; };".into(),
                1,
                "unknown setting \"mqtt.ingest.linger\"; expected one of: payload_bytes_max, batch_messages_max",
            ),
            (
                "mqtt = { commands = { attempts_max = 0; }; };".into(),
                1,
                "setting \"mqtt.commands.attempts_max\": must be greater than 0",
            ),
            (
                "mqtt = { commands = { qos = 3; }; };".into(),
                1,
                "setting \"mqtt.commands.qos\": must be between 0 and 2, found 3",
            ),
            (
                "mqtt = { commands = {\n retry_max_ms = 999;\n}; };".into(),
                2,
                "mqtt.commands.retry_initial_ms (1000) must not be greater than mqtt.commands.retry_max_ms (999)",
            ),
            (
                "mqtt = { commands = {\n retry_max_ms = 10;\n retry_initial_ms = 20;\n}; };".into(),
                3,
                "mqtt.commands.retry_initial_ms (20) must not be greater than mqtt.commands.retry_max_ms (10)",
            ),
            (
                "mqtt = { commands = { retry_initial_ms = 0; }; };".into(),
                1,
                "setting \"mqtt.commands.retry_initial_ms\": must be greater than 0",
            ),
        ];
        for (text, line, message) in cases {
            let (got_line, got) = err(&text);
            assert_eq!(got_line, line, "line for {text:?}: {got}");
            assert!(
                got.starts_with(message),
                "for {text:?}\n  want {message:?}\n  got  {got:?}"
            );
        }
    }

    #[test]
    fn mqtt_tls_paths_resolve_against_the_file_that_names_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mqtt")).unwrap();
        std::fs::write(
            dir.path().join("mqtt/bridge.conf"),
            "{ name = \"b\"; host = \"h\";\n  tls = { ca_file = \"ca.crt\"; cert_file = \"../c.crt\"; key_file = \"/k/c.key\"; };\n}\n",
        )
        .unwrap();
        let main = dir.path().join("utopiad.conf");
        std::fs::write(
            &main,
            "mqtt = {\n  bridges = (\n    { name = \"a\"; host = \"h\"; tls = { ca_file = \"certs/ca.crt\"; }; },\n@include \"mqtt/bridge.conf\"\n  );\n};\n",
        )
        .unwrap();
        let s = Settings::load(&main).unwrap();
        let tls: Vec<&BridgeTls> = s
            .mqtt
            .bridges
            .iter()
            .map(|b| b.tls.as_ref().unwrap())
            .collect();
        assert_eq!(tls[0].ca_file, dir.path().join("certs/ca.crt"));
        assert_eq!(tls[1].ca_file, dir.path().join("mqtt/ca.crt"));
        assert_eq!(tls[1].cert_file, Some(dir.path().join("mqtt/../c.crt")));
        assert_eq!(tls[1].key_file, Some(PathBuf::from("/k/c.key")));

        // An error in the included bridge names the included file and line.
        std::fs::write(
            dir.path().join("mqtt/bridge.conf"),
            "{ name = \"b\"; host = \"h\";\n  port = 0; }\n",
        )
        .unwrap();
        assert_eq!(
            Settings::load(&main).unwrap_err().to_string(),
            format!(
                "{}:2: setting \"mqtt.bridges[1].port\": must be between 1 and 65535, found 0",
                dir.path().join("mqtt/bridge.conf").display()
            )
        );
    }

    #[test]
    fn byte_time_and_quota_limits_are_bounded() {
        for (text, name) in [
            (
                "limits = { response_bytes_max = 1; };",
                "response_bytes_max",
            ),
            ("limits = { txn_bytes_max = 1073741824; };", "txn_bytes_max"),
            ("limits = { db_bytes_max = 0; };", "db_bytes_max"),
            ("limits = { connections_max = 0; };", "connections_max"),
            (
                "limits = { streams_per_connection_max = 100000; };",
                "streams_per_connection_max",
            ),
            (
                "limits = { keepalive_interval_ms = 10; };",
                "keepalive_interval_ms",
            ),
            (
                "limits = { keepalive_timeout_ms = 10; };",
                "keepalive_timeout_ms",
            ),
            ("limits = { tcp_keepalive_ms = 10; };", "tcp_keepalive_ms"),
            (
                "limits = { request_timeout_ms = 99999999999; };",
                "request_timeout_ms",
            ),
            (
                "limits = { devices_per_host_max = 0; };",
                "devices_per_host_max",
            ),
            ("limits = { leases_max = 0; };", "leases_max"),
            (
                "limits = { commands_pending_max = 0; };",
                "commands_pending_max",
            ),
            (
                "limits = { command_retention_ms = 1; };",
                "command_retention_ms",
            ),
        ] {
            let (line, msg) = err(text);
            assert_eq!(line, 1, "{text}");
            assert!(
                msg.contains(&format!("limits.{name}")) && msg.contains("must be between"),
                "{text}: {msg}"
            );
        }
        let s = Settings::from_str(
            "limits = { db_bytes_max = 1048576; connections_max = 3; txn_bytes_max = 1048576; };",
            file(),
        )
        .unwrap();
        assert_eq!(
            (
                s.limits.db_bytes_max,
                s.limits.connections_max,
                s.limits.txn_bytes_max
            ),
            (1 << 20, 3, 1 << 20)
        );
        assert_eq!(
            s.limits.response_bytes_max,
            Limits::default().response_bytes_max
        );
    }

    #[test]
    fn partial_groups_keep_defaults() {
        let s = Settings::from_str(
            "limits = { txn_ops_max = 5; };\nraft = { election_timeout_ms_max = 900; };",
            file(),
        )
        .unwrap();
        assert_eq!(
            s.limits,
            Limits {
                txn_ops_max: 5,
                ..Limits::default()
            }
        );
        assert_eq!(
            s.raft,
            RaftSettings {
                election_timeout_ms_max: 900,
                ..RaftSettings::default()
            }
        );
    }

    #[test]
    fn errors() {
        let unknown_limits = "unknown setting \"limits.foo\"; expected one of: key_bytes_max, value_bytes_max, \
                              request_bytes_max, txn_ops_max, range_limit_max, watchers_max, proposals_in_flight_max, history_revisions_max, \
                              json_depth_max, document_bytes_max";
        for (text, line, message) in [
            // Syntax errors pass through.
            (
                "node_id = 1;\nlisten = \"x\" 5;",
                2,
                "expected ';' after setting \"listen\", found integer 5",
            ),
            (
                "node_id = 1;\n\ndata_dir = \"abc;\n",
                3,
                "unterminated string",
            ),
            (
                "node_id = 99999999999999999999;",
                1,
                "integer out of range: 99999999999999999999",
            ),
            (
                "node_id = 1;\nnode_id = 2;",
                2,
                "duplicate setting \"node_id\" (first set on line 1)",
            ),
            // Unknown settings.
            (
                "nodeid = 1;",
                1,
                "unknown setting \"nodeid\"; expected one of: node_id, data_dir, listen, advertise, peer_listen, peer_advertise, cluster_name, initial_cluster, limits, raft, log, mqtt, tls",
            ),
            (
                "limits = {\n  key_bytes_max = 1;\n  foo = 2;\n};",
                3,
                unknown_limits,
            ),
            (
                "raft = { bar = 1; };",
                1,
                "unknown setting \"raft.bar\"; expected one of: heartbeat_interval_ms, election_timeout_ms_min, election_timeout_ms_max, snapshot_log_entries, log_entries_kept_after_snapshot, lease_check_interval_ms",
            ),
            (
                "log = {\n colour = true; };",
                2,
                "unknown setting \"log.colour\"; expected one of: level, format",
            ),
            // Wrong types.
            (
                "node_id = \"1\";",
                1,
                "setting \"node_id\": expected an integer, found a string",
            ),
            (
                "\nnode_id = 1.0;",
                2,
                "setting \"node_id\": expected an integer, found a float",
            ),
            (
                "listen = 7700;",
                1,
                "setting \"listen\": expected a string, found an integer",
            ),
            (
                "data_dir = [\"a\"];",
                1,
                "setting \"data_dir\": expected a string, found an array",
            ),
            (
                "limits = 5;",
                1,
                "setting \"limits\": expected a group, found an integer",
            ),
            (
                "raft = (1);",
                1,
                "setting \"raft\": expected a group, found a list",
            ),
            (
                "limits = {\n txn_ops_max = true; };",
                2,
                "setting \"limits.txn_ops_max\": expected an integer, found a boolean",
            ),
            (
                "log = { format = { }; };",
                1,
                "setting \"log.format\": expected a string, found a group",
            ),
            // Bad values.
            (
                "node_id = -1;",
                1,
                "setting \"node_id\": must not be negative, found -1",
            ),
            (
                "node_id = 0xFFFFFFFF;",
                1,
                "setting \"node_id\": must not be negative, found -1",
            ),
            (
                "limits = {\n\n  watchers_max = 0; };",
                3,
                "setting \"limits.watchers_max\": must be greater than 0",
            ),
            (
                "limits = { key_bytes_max = -5; };",
                1,
                "setting \"limits.key_bytes_max\": must not be negative, found -5",
            ),
            (
                "raft = { snapshot_log_entries = 0; };",
                1,
                "setting \"raft.snapshot_log_entries\": must be greater than 0",
            ),
            (
                "raft = {\n  election_timeout_ms_min = 800;\n  election_timeout_ms_max = 800;\n};",
                2,
                "raft.election_timeout_ms_min (800) must be less than raft.election_timeout_ms_max (800)",
            ),
            (
                "raft = {\n  election_timeout_ms_max = 300;\n};",
                2,
                "raft.election_timeout_ms_min (400) must be less than raft.election_timeout_ms_max (300)",
            ),
            (
                "raft = {\n  heartbeat_interval_ms = 400;\n};",
                2,
                "raft.heartbeat_interval_ms (400) must be less than raft.election_timeout_ms_min (400)",
            ),
            (
                "listen = \"localhost:7700\";",
                1,
                "setting \"listen\": invalid address \"localhost:7700\" (invalid socket address syntax); expected IP:PORT such as 127.0.0.1:7700",
            ),
            (
                "\nlisten = \"127.0.0.1\";",
                2,
                "setting \"listen\": invalid address \"127.0.0.1\"",
            ),
            (
                "log = {\n  format = \"xml\";\n};",
                2,
                "setting \"log.format\": unknown log format \"xml\"; expected \"text\" or \"json\"",
            ),
            (
                "log = { format = \"JSON\"; };",
                1,
                "setting \"log.format\": unknown log format \"JSON\"",
            ),
            (
                "log = { level = \"\"; };",
                1,
                "setting \"log.level\": must not be empty",
            ),
            (
                "cluster_name = \"\";",
                1,
                "setting \"cluster_name\": must not be empty",
            ),
            (
                "advertise = \"node1:7700\";",
                1,
                "setting \"advertise\": invalid address \"node1:7700\"",
            ),
            (
                "data_dir = \"\";",
                1,
                "setting \"data_dir\": must not be empty",
            ),
            (
                "tls = {\n  certfile = \"a\"; };",
                2,
                "unknown setting \"tls.certfile\"; expected one of: cert_file, key_file, ca_file, client_cert_required",
            ),
            (
                "tls = { client_cert_required = 1; };",
                1,
                "setting \"tls.client_cert_required\": expected a boolean (true or false), found an integer",
            ),
            (
                "\ntls = { cert_file = \"a.pem\"; ca_file = \"ca.pem\"; };",
                2,
                "setting \"tls\": tls.cert_file and tls.key_file are set together or not at all",
            ),
            (
                "tls = { cert_file = \"a.pem\"; key_file = \"a.key\"; };",
                1,
                "setting \"tls\": tls.ca_file is needed with tls.cert_file",
            ),
            (
                "tls = { client_cert_required = true; };",
                1,
                "setting \"tls\": tls.ca_file, tls.client_cert_required, tls.peer_ca_file and tls.peer_allowed_names need tls.cert_file and tls.key_file",
            ),
        ] {
            let (got_line, got) = err(text);
            assert_eq!(got_line, line, "line for {text:?}: {got}");
            assert!(
                got.starts_with(message),
                "for {text:?}\n  want {message:?}\n  got  {got:?}"
            );
        }
    }

    #[test]
    fn load_and_includes() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("utopiad.conf");
        std::fs::write(
            dir.path().join("limits.conf"),
            "txn_ops_max = 9;\nwatchers_max = 0;\n",
        )
        .unwrap();
        std::fs::write(
            &main,
            "node_id = 3;\nlimits = {\n@include \"limits.conf\"\n};\n",
        )
        .unwrap();
        let e = Settings::load(&main).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: setting \"limits.watchers_max\": must be greater than 0",
                dir.path().join("limits.conf").display()
            )
        );
        std::fs::write(dir.path().join("limits.conf"), "txn_ops_max = 9;\n").unwrap();
        let s = Settings::load(&main).unwrap();
        assert_eq!((s.node_id, s.limits.txn_ops_max), (3, 9));

        let missing = dir.path().join("missing.conf");
        let e = Settings::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!(
                "{}:0: cannot read config file: ",
                missing.display()
            )),
            "{e}"
        );
        let e = Settings::load(dir.path()).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");

        std::fs::write(&main, b"node_id = 1;\ncluster_name = \"\xff\";\n").unwrap();
        let e = Settings::load(&main).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: file is not valid UTF-8", main.display())
        );
    }
}

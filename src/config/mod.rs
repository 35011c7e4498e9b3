//! `utopiad.conf`: the server's settings, read from a libconfig-syntax file.
//!
//! [`libconfig`] turns text into a tree of settings; [`de`] deserializes the
//! tree into [`Settings`] with `serde`, so each setting is declared once:
//! its field, its default (the type's `Default`), its file name (the field
//! name) and its range (`deserialize_with` on the field). Every setting is
//! optional (a missing one keeps its default), unknown names are errors,
//! and every error reads `file:line: message`, pointing at the offending
//! setting. The checks that relate several settings are in one place,
//! [`Settings::validate`], run after `utopiad`'s flags have overridden the
//! file. [`reference()`] is the documented example file, with every setting
//! at its default.
//!
//! Files: `limits.rs` (the `limits` and `raft` groups and the numeric
//! bounds), `mqtt.rs` (the `mqtt` group), `reference.rs` (the text),
//! `rules.rs` (ranges and other per-value rules), `de.rs` (the
//! deserializer), `libconfig.rs` (the syntax).

pub mod backups;
pub mod configs;
pub mod de;
pub mod libconfig;
pub mod limits;
pub mod mongodb;
pub mod mqtt;
mod reference;
pub mod rules;
#[cfg(test)]
mod tests;
pub mod zookeeper;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::backups::BackupSettings;
pub use self::configs::ConfigsSettings;
pub use self::de::{Origin, Sources};
use self::libconfig::ParseError;
pub use self::limits::{Limits, RaftSettings};
pub use self::mongodb::MongoSettings;
use self::mqtt::MqttSettings;
pub use self::reference::reference;
use self::rules::{non_empty, Addr, In};
pub use self::zookeeper::ZookeeperSettings;

/// Everything `utopiad` reads from its configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This node's Raft id.
    pub node_id: u64,
    /// Where RocksDB and Raft state live.
    #[serde(deserialize_with = "non_empty")]
    pub data_dir: PathBuf,
    /// gRPC listen address for clients, `HOST:PORT` (a valid [`SocketAddr`]).
    #[serde(deserialize_with = "Addr::<7700>::listen")]
    pub listen: String,
    /// The address clients reach this node at when it differs from
    /// `listen` (empty: `listen`); published to the other members, which
    /// name it to clients that must go to the leader.
    #[serde(deserialize_with = "Addr::<7700>::advertise")]
    pub advertise: String,
    /// Listen address of the peer port (the Raft transport), `HOST:PORT`.
    #[serde(deserialize_with = "Addr::<7800>::listen")]
    pub peer_listen: String,
    /// The address the other members reach this node at when it differs
    /// from `peer_listen` (empty: `peer_listen`). Recorded as its member
    /// address when the node starts a one-member cluster.
    #[serde(deserialize_with = "Addr::<7800>::advertise")]
    pub peer_advertise: String,
    /// Name of the cluster this node belongs to.
    #[serde(deserialize_with = "non_empty")]
    pub cluster_name: String,
    /// The members a new cluster starts with, by node id; empty: a
    /// one-member cluster of this node. In the file, the string
    /// `ID=HOST:PORT,...` ([`parse_initial_cluster`]).
    #[serde(
        deserialize_with = "initial_cluster",
        serialize_with = "initial_cluster_text"
    )]
    pub initial_cluster: BTreeMap<u64, String>,
    /// Start a new data directory uninitialised and wait to be added to an
    /// existing cluster (set by `utopiad --join`; not in the file).
    #[serde(skip)]
    pub join: bool,
    pub limits: Limits,
    pub raft: RaftSettings,
    pub log: LogSettings,
    /// MQTT brokers to ingest device messages from (none: MQTT is off).
    pub mqtt: MqttSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    /// XML configuration sync.
    pub configs: ConfigsSettings,
    /// Backups the leader takes on a schedule.
    pub backups: BackupSettings,
    pub metrics: MetricsSettings,
    /// The ZooKeeper adapter (the `zookeeper` feature; no hosts: off).
    pub zookeeper: ZookeeperSettings,
    /// The MongoDB mirror (cargo feature `mongodb`).
    pub mongodb: MongoSettings,
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served, IP:PORT (empty: no metrics
    /// endpoint).
    #[serde(deserialize_with = "Addr::<9464>::advertise")]
    pub listen: String,
}

/// Authentication: how long the tokens this node issues last. (Whether
/// auth is on, users and roles are replicated state, not settings.)
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Lifetime of a token from `Auth.Authenticate`, in seconds.
    #[serde(deserialize_with = "In::<1, TOKEN_TTL_S_MAX>::de")]
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
/// (Relative paths are relative to the working directory.)
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
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
    #[serde(deserialize_with = "peer_allowed_names")]
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

/// Logging: a `tracing` filter (overridden by `RUST_LOG`) and an output format.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    #[serde(deserialize_with = "non_empty")]
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

const LOG_FORMATS: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        rules::keyword(d, "log format", &LOG_FORMATS)
    }
}

impl Serialize for LogFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let word = LOG_FORMATS
            .iter()
            .find(|(_, f)| f == self)
            .map_or("", |(w, _)| w);
        s.serialize_str(word)
    }
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
            configs: ConfigsSettings::default(),
            backups: BackupSettings::default(),
            metrics: MetricsSettings::default(),
            zookeeper: ZookeeperSettings::default(),
            mongodb: MongoSettings::default(),
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
/// (line 0: the file as a whole), or `--flag: message` when a flag set the
/// value in question.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid libconfig syntax (or an include failed).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A setting is unknown, has the wrong type or an invalid value, or
    /// contradicts another.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: u32,
        message: String,
    },
    /// A value given by a command-line flag contradicts another setting.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    /// Settings contradict each other, none of them set in a file or by a
    /// flag.
    #[error("{message}")]
    Conflict { message: String },
    /// The file could not be read.
    #[error("{}:0: cannot read config file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The line the error points at (0: the whole file, or no file).
    pub fn line(&self) -> u32 {
        match self {
            ConfigError::Parse(e) => e.line,
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Flag { .. } | ConfigError::Conflict { .. } | ConfigError::Io { .. } => 0,
        }
    }
}

impl Settings {
    /// Reads, decodes and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let (settings, sources) = Settings::read(path)?;
        settings.validate(&sources)?;
        Ok(settings)
    }

    /// Decodes and validates `text` as the contents of `file` (which names
    /// it in errors and anchors relative `@include`s).
    pub fn from_str(text: &str, file: &Path) -> Result<Settings, ConfigError> {
        let (settings, sources) =
            de::from_tree::<Settings>(&libconfig::parse_str(text, file)?, file)?;
        settings.validate(&sources)?;
        Ok(settings)
    }

    /// Reads and decodes the file at `path`, each setting checked on its
    /// own, and tells where each came from. The caller may override
    /// settings (recording it in the [`Sources`]), then must call
    /// [`Settings::validate`].
    pub fn read(path: &Path) -> Result<(Settings, Sources), ConfigError> {
        let bytes = libconfig::read_bounded(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        de::from_tree(&libconfig::parse_bytes(&bytes, path)?, path)
    }

    /// Every check that relates several settings; an error points at the
    /// first of them that `sources` says was set (its file and line, or
    /// its flag).
    pub fn validate(&self, sources: &Sources) -> Result<(), ConfigError> {
        let r = &self.raft;
        if r.election_timeout_ms_min >= r.election_timeout_ms_max {
            return Err(sources.error(
                &["raft.election_timeout_ms_min", "raft.election_timeout_ms_max"],
                format!(
                    "raft.election_timeout_ms_min ({}) must be less than raft.election_timeout_ms_max ({})",
                    r.election_timeout_ms_min, r.election_timeout_ms_max
                ),
            ));
        }
        if r.heartbeat_interval_ms >= r.election_timeout_ms_min {
            return Err(sources.error(
                &["raft.heartbeat_interval_ms", "raft.election_timeout_ms_min"],
                format!(
                    "raft.heartbeat_interval_ms ({}) must be less than raft.election_timeout_ms_min ({})",
                    r.heartbeat_interval_ms, r.election_timeout_ms_min
                ),
            ));
        }
        self.mqtt.validate(sources)?;
        if self.mongodb.enabled && !cfg!(feature = "mongodb") {
            return Err(sources.error(
                &["mongodb.enabled", "mongodb"],
                "mongodb.enabled = true, but this utopiad was built without the cargo feature \
                 `mongodb`: build it with `cargo build --release --features mongodb`, or set \
                 mongodb.enabled = false"
                    .to_string(),
            ));
        }
        if let Some(problem) = self.tls.problem() {
            return Err(sources.setting_error("tls", problem));
        }
        if let Some(problem) = self
            .zookeeper
            .problem(cfg!(feature = "zookeeper"), &self.cluster_name)
        {
            return Err(sources.setting_error("zookeeper", problem));
        }
        // The initial cluster names this node's peer address too; two
        // different answers are a mistake.
        if let Some(own) = self.initial_cluster.get(&self.node_id) {
            if !self.peer_advertise.is_empty() && *own != self.peer_advertise {
                return Err(sources.error(
                    &["peer_advertise", "initial_cluster", "node_id"],
                    format!(
                        "peer advertise address {} differs from node {}'s address in the initial cluster ({own})",
                        self.peer_advertise, self.node_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl TlsSettings {
    /// What is wrong with this combination of TLS settings, if anything.
    fn problem(&self) -> Option<&'static str> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&self.cert_file) != set(&self.key_file) {
            Some("tls.cert_file and tls.key_file are set together or not at all")
        } else if self.enabled() && !set(&self.ca_file) {
            Some("tls.ca_file is needed with tls.cert_file: peers' certificates are checked against it")
        } else if !self.enabled()
            && (set(&self.ca_file)
                || self.client_cert_required
                || set(&self.peer_ca_file)
                || !self.peer_allowed_names.is_empty())
        {
            Some("tls.ca_file, tls.client_cert_required, tls.peer_ca_file and tls.peer_allowed_names need tls.cert_file and tls.key_file")
        } else {
            None
        }
    }
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

fn initial_cluster<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
    parse_initial_cluster(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// The initial cluster as the file writes it.
fn initial_cluster_text<S: Serializer>(
    members: &BTreeMap<u64, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let parts: Vec<String> = members.iter().map(|(id, a)| format!("{id}={a}")).collect();
    s.serialize_str(&parts.join(","))
}

/// `tls.peer_allowed_names`: each a DNS name or an IP address.
fn peer_allowed_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct PeerName(String);
    impl<'de> Deserialize<'de> for PeerName {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let name: String = non_empty(d)?;
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(serde::de::Error::custom(format_args!(
                    "{name:?} is neither a DNS name nor an IP address"
                )));
            }
            Ok(PeerName(name))
        }
    }
    let names = Vec::<PeerName>::deserialize(d)?;
    Ok(names.into_iter().map(|n| n.0).collect())
}

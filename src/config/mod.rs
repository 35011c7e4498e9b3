//! `utopiad.conf`: the server's settings, read from a libconfig-syntax file.
//!
//! [`libconfig`] turns text into a tree of settings; this module decides what
//! they mean: which names exist, their types, defaults and valid ranges.
//! Every setting is optional (a missing one keeps its default), unknown names
//! are errors, and every error reads `file:line: message`, pointing at the
//! offending setting. [`reference`] is the documented example file, with
//! every setting at its default.

pub mod libconfig;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use self::libconfig::{ParseError, Setting, Span, Value};

/// Everything `utopiad` reads from its configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// This node's Raft id.
    pub node_id: u64,
    /// Where RocksDB and Raft state live.
    pub data_dir: PathBuf,
    /// gRPC listen address, `HOST:PORT` (a valid [`SocketAddr`]).
    pub listen: String,
    /// The address peers and clients reach this node at when it differs
    /// from `listen` (empty: `listen`). Used when the node starts a
    /// one-member cluster.
    pub advertise: String,
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
    pub tls: TlsSettings,
}

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
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
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
            cluster_name: "utopia".to_string(),
            initial_cluster: BTreeMap::new(),
            join: false,
            limits: Limits::default(),
            raft: RaftSettings::default(),
            log: LogSettings::default(),
            tls: TlsSettings::default(),
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
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 400,
            election_timeout_ms_max: 800,
            snapshot_log_entries: 50_000,
            log_entries_kept_after_snapshot: 1000,
            lease_check_interval_ms: 250,
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
    "cluster_name",
    "initial_cluster",
    "limits",
    "raft",
    "log",
    "tls",
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
];
const RAFT: &[&str] = &[
    "heartbeat_interval_ms",
    "election_timeout_ms_min",
    "election_timeout_ms_max",
    "snapshot_log_entries",
    "log_entries_kept_after_snapshot",
    "lease_check_interval_ms",
];
const LOG: &[&str] = &["level", "format"];
const TLS: &[&str] = &["cert_file", "key_file", "ca_file", "client_cert_required"];

/// A setting with its dotted path (`limits.key_bytes_max`) for messages.
struct Field<'a> {
    path: String,
    setting: &'a Setting,
}

impl Field<'_> {
    fn err(&self, what: impl std::fmt::Display) -> ConfigError {
        invalid(
            &self.setting.span,
            format!("setting \"{}\": {what}", self.path),
        )
    }

    fn wrong_type(&self, expected: &str) -> ConfigError {
        self.err(format!(
            "expected {expected}, found {}",
            self.setting.value.type_name()
        ))
    }

    fn int(&self) -> Result<u64, ConfigError> {
        match self.setting.value {
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

    fn string(&self) -> Result<&str, ConfigError> {
        match &self.setting.value {
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

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.setting.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    fn group(&self) -> Result<&[Setting], ConfigError> {
        match &self.setting.value {
            Value::Group(g) => Ok(g),
            _ => Err(self.wrong_type("a group")),
        }
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
            Ok(Field { path, setting: s })
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
        match f.setting.name.as_str() {
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
            "advertise" => {
                let s = f.string()?;
                if !s.is_empty() {
                    if let Err(e) = s.parse::<SocketAddr>() {
                        return Err(f.err(format!(
                            "invalid address {s:?} ({e}); expected IP:PORT such as 192.0.2.10:7700, or \"\""
                        )));
                    }
                }
                out.advertise = s.to_string();
            }
            "cluster_name" => out.cluster_name = f.non_empty()?,
            "initial_cluster" => {
                out.initial_cluster = parse_initial_cluster(f.string()?).map_err(|e| f.err(e))?
            }
            "limits" => decode_limits(f.group()?, &mut out.limits)?,
            "raft" => decode_raft(f.group()?, &mut out.raft)?,
            "log" => decode_log(f.group()?, &mut out.log)?,
            "tls" => decode_tls(&f, &mut out.tls)?,
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(out)
}

fn decode_limits(group: &[Setting], l: &mut Limits) -> Result<(), ConfigError> {
    for f in fields(group, "limits", LIMITS)? {
        let v = f.positive()?;
        match f.setting.name.as_str() {
            "key_bytes_max" => l.key_bytes_max = v,
            "value_bytes_max" => l.value_bytes_max = v,
            "request_bytes_max" => l.request_bytes_max = v,
            "txn_ops_max" => l.txn_ops_max = v,
            "range_limit_max" => l.range_limit_max = v,
            "watchers_max" => l.watchers_max = v,
            "proposals_in_flight_max" => l.proposals_in_flight_max = v,
            "history_revisions_max" => l.history_revisions_max = v,
            _ => return Err(f.err("not handled")),
        }
    }
    Ok(())
}

fn decode_raft(group: &[Setting], r: &mut RaftSettings) -> Result<(), ConfigError> {
    let fs = fields(group, "raft", RAFT)?;
    let mut min_field = None;
    let mut max_field = None;
    let mut heartbeat_field = None;
    for f in &fs {
        let v = f.positive()?;
        match f.setting.name.as_str() {
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
            _ => return Err(f.err("not handled")),
        }
    }
    if r.election_timeout_ms_min >= r.election_timeout_ms_max {
        let msg = format!(
            "raft.election_timeout_ms_min ({}) must be less than raft.election_timeout_ms_max ({})",
            r.election_timeout_ms_min, r.election_timeout_ms_max
        );
        if let Some(f) = min_field.or(max_field) {
            return Err(invalid(&f.setting.span, msg));
        }
    }
    if r.heartbeat_interval_ms >= r.election_timeout_ms_min {
        let msg = format!(
            "raft.heartbeat_interval_ms ({}) must be less than raft.election_timeout_ms_min ({})",
            r.heartbeat_interval_ms, r.election_timeout_ms_min
        );
        if let Some(f) = heartbeat_field.or(min_field) {
            return Err(invalid(&f.setting.span, msg));
        }
    }
    Ok(())
}

fn decode_log(group: &[Setting], l: &mut LogSettings) -> Result<(), ConfigError> {
    for f in fields(group, "log", LOG)? {
        match f.setting.name.as_str() {
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

fn decode_tls(group: &Field, t: &mut TlsSettings) -> Result<(), ConfigError> {
    for f in fields(group.group()?, "tls", TLS)? {
        match f.setting.name.as_str() {
            "cert_file" => t.cert_file = PathBuf::from(f.string()?),
            "key_file" => t.key_file = PathBuf::from(f.string()?),
            "ca_file" => t.ca_file = PathBuf::from(f.string()?),
            "client_cert_required" => t.client_cert_required = f.boolean()?,
            _ => return Err(f.err("not handled")),
        }
    }
    let set = |p: &PathBuf| !p.as_os_str().is_empty();
    let problem = if set(&t.cert_file) != set(&t.key_file) {
        Some("tls.cert_file and tls.key_file are set together or not at all")
    } else if t.enabled() && !set(&t.ca_file) {
        Some("tls.ca_file is needed with tls.cert_file: peers' certificates are checked against it")
    } else if !t.enabled() && (set(&t.ca_file) || t.client_cert_required) {
        Some("tls.ca_file and tls.client_cert_required need tls.cert_file and tls.key_file")
    } else {
        None
    };
    match problem {
        Some(p) => Err(group.err(p)),
        None => Ok(()),
    }
}

/// A commented `utopiad.conf` listing every setting at its default.
pub fn reference() -> &'static str {
    r#"# utopiad.conf -- configuration of the utopia server (libconfig syntax).
#
# Every setting is optional: a missing one keeps the default shown here.
# Unknown settings are errors. Syntax: `name = value;`, groups `{ ... }`,
# strings in double quotes, comments with #, // or /* */, and
# @include "other.conf" (relative to this file's directory).

# This node's Raft id (an integer >= 0).
node_id = 1;

# Directory for the node's data (RocksDB and Raft state).
data_dir = "./utopia-data";

# gRPC listen address, IP:PORT.
listen = "127.0.0.1:7700";

# The address other members and clients reach this node at, IP:PORT, when
# it is not the listen address (behind a proxy or NAT, or listening on
# 0.0.0.0). Empty: the listen address. Used when this node starts a
# one-member cluster; the members of a larger one are known by the
# addresses in initial_cluster or given to `utopia cluster add`.
advertise = "";

# Name of the cluster this node belongs to.
cluster_name = "utopia";

# The members a new cluster starts with: "ID=HOST:PORT,ID=HOST:PORT,...".
# Empty: a one-member cluster of this node. Read only when the data
# directory is new; a restarted node rejoins the cluster it belongs to.
initial_cluster = "";

# Request and resource limits (each greater than 0).
limits = {
  key_bytes_max = 4096;              # largest key, in bytes
  value_bytes_max = 1048576;         # largest value, in bytes (1 MiB)
  request_bytes_max = 4194304;       # largest gRPC message, in bytes (4 MiB)
  txn_ops_max = 128;                 # most operations in one transaction
  range_limit_max = 10000;           # most keys one range request returns
  watchers_max = 1024;               # most concurrent watchers
  proposals_in_flight_max = 1024;    # most Raft proposals awaiting commit
  history_revisions_max = 100000;    # key revisions kept for past reads and watches; older ones are compacted
};

# Raft timing, in milliseconds unless noted.
# heartbeat_interval_ms < election_timeout_ms_min < election_timeout_ms_max.
raft = {
  heartbeat_interval_ms = 100;       # leader heartbeat period
  election_timeout_ms_min = 400;     # shortest election timeout
  election_timeout_ms_max = 800;     # longest election timeout
  snapshot_log_entries = 50000;      # build a snapshot after this many log entries
  log_entries_kept_after_snapshot = 1000; # entries kept behind a snapshot for lagging peers
  lease_check_interval_ms = 250;     # how often expired leases are reaped
};

# Logging.
log = {
  level = "info,openraft=warn";      # tracing filter, e.g. "info" or "info,utopia=debug" (RUST_LOG overrides)
  format = "text";                   # "text" or "json"
};

# TLS on the gRPC port, for clients and peers alike (PEM files; relative
# paths are relative to the working directory). No cert_file: plain text.
# Every member of a cluster uses TLS or none does: a node reaches its peers
# over TLS when it has a certificate itself.
tls = {
  cert_file = "";                    # this node's certificate chain; its subject alternative names must cover the address the members know it by
  key_file = "";                     # the certificate's private key
  ca_file = "";                      # CA certificates that peers' (and, when required, clients') certificates are checked against
  client_cert_required = false;      # mutual TLS: refuse connections without a certificate signed by a CA of ca_file
};
"#
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
        assert_eq!(d.raft.snapshot_log_entries, 50_000);
        assert_eq!(d.raft.lease_check_interval_ms, 250);
        assert_eq!(d.log.level, "info,openraft=warn");
        assert_eq!(d.log.format, LogFormat::Text);
        assert_eq!(Settings::from_str("", file()).unwrap(), d);
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
        // It mentions every setting.
        for name in TOP.iter().chain(LIMITS).chain(RAFT).chain(LOG).chain(TLS) {
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
};
log = { level = "debug,openraft=warn"; format = "json"; };
tls = {
  cert_file = "/etc/utopia/node.pem";
  key_file = "/etc/utopia/node.key";
  ca_file = "/etc/utopia/ca.pem";
  client_cert_required = true;
};
"#;
        let s = Settings::from_str(text, file()).unwrap();
        let want = Settings {
            node_id: 7,
            data_dir: PathBuf::from("/var/lib/utopia"),
            listen: "[::1]:9000".into(),
            advertise: "[2001:db8::1]:9000".into(),
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
            },
            raft: RaftSettings {
                heartbeat_interval_ms: 50,
                election_timeout_ms_min: 300,
                election_timeout_ms_max: 600,
                snapshot_log_entries: 1000,
                log_entries_kept_after_snapshot: 10,
                lease_check_interval_ms: 100,
            },
            log: LogSettings {
                level: "debug,openraft=warn".into(),
                format: LogFormat::Json,
            },
            tls: TlsSettings {
                cert_file: PathBuf::from("/etc/utopia/node.pem"),
                key_file: PathBuf::from("/etc/utopia/node.key"),
                ca_file: PathBuf::from("/etc/utopia/ca.pem"),
                client_cert_required: true,
            },
        };
        assert_eq!(s, want);
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
                              request_bytes_max, txn_ops_max, range_limit_max, watchers_max, proposals_in_flight_max, history_revisions_max";
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
                "unknown setting \"nodeid\"; expected one of: node_id, data_dir, listen, advertise, cluster_name, initial_cluster, limits, raft, log, tls",
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
                "setting \"tls.client_cert_required\": expected a boolean, found an integer",
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
                "setting \"tls\": tls.ca_file and tls.client_cert_required need tls.cert_file and tls.key_file",
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

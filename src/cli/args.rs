//! The command line's shape: every command, subcommand and flag of
//! `utopia` (clap derive), and the parsers of argument values.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::{alarm, auth, bench, config, snapshot, txn};

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 key/document/lease not found, cas compare failed,
`config validate` found an invalid file, or `config upload` was not accepted;
2 usage error; 3 server or connection error (gRPC code and message on
stderr).";

/// The `utopia` command line.
#[derive(Debug, Parser)]
#[command(
    name = "utopia",
    version,
    about = "Command-line client for utopiad, the replicated key-value and document store",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Servers to try, in order: HOST:PORT[,HOST:PORT...]. The next one is
    /// tried on a connection error or an UNAVAILABLE answer.
    #[arg(
        long,
        global = true,
        env = "UTOPIA_ENDPOINTS",
        default_value = "127.0.0.1:7700",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    /// Output format (json: one JSON object per line; each command's shape
    /// is fixed; xml: `config get` only, the file's exact bytes).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Per-request timeout in seconds (fractions allowed). A request no
    /// member can serve yet (during an election) is sent again within it.
    #[arg(long, global = true, default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Connect over TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, global = true, env = "UTOPIA_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,

    /// Client certificate (PEM), for servers that require one (with --key).
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        env = "UTOPIA_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM).
    // Its own id: commands have a positional argument named `key`.
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        env = "UTOPIA_KEY",
        value_name = "FILE"
    )]
    pub key: Option<std::path::PathBuf>,

    /// Authenticate as NAME (etcdctl's flag). Without :PASSWORD the password
    /// is asked for on the terminal. Empty: no user.
    #[arg(
        long = "user",
        id = "user_credentials",
        global = true,
        env = "UTOPIA_USER",
        value_name = "NAME[:PASSWORD]"
    )]
    pub user: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    /// `config get` only.
    Xml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Serializable,
}

impl ConsistencyArg {
    pub(super) fn to_proto(self) -> i32 {
        match self {
            ConsistencyArg::Linearizable => utopia_proto::v1::Consistency::Linearizable as i32,
            ConsistencyArg::Serializable => utopia_proto::v1::Consistency::Serializable as i32,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put a key (KV.Put). Prints OK.
    Put(PutArgs),
    /// Read a key or a range of keys (KV.Range).
    Get(GetArgs),
    /// Delete a key or a range of keys (KV.DeleteRange). Prints the number deleted.
    Del(DelArgs),
    /// Compare-and-swap on a key's version: put VALUE only if KEY is at version N.
    Cas(CasArgs),
    /// Run a transaction described by a JSON file.
    #[command(long_about = txn::FORMAT_HELP)]
    Txn(TxnArgs),
    /// Stream changes to a key or range.
    Watch(WatchArgs),
    /// Lease operations.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Discard history before revision REV.
    Compact(CompactArgs),
    /// Read documents (devices, zones, fellows, db_servers, xml_configs, stats).
    #[command(subcommand)]
    Doc(DocCommand),
    /// Statistics of a device, fellow or configuration (seed 000).
    #[command(subcommand)]
    Stats(StatsCommand),
    /// Device operations.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show the server's status (Maintenance.Status).
    Status,
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Database servers the leader mirrors into (db_servers): add, remove, list.
    #[command(subcommand)]
    Db(super::db::DbCommand),
    /// Alarms: list them, or disarm NOSPACE after freeing space.
    #[command(subcommand)]
    Alarm(alarm::AlarmCommand),
    /// Turn authentication on or off, or show whether it is on.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Users: add, get, list, delete, passwd, grant-role, revoke-role.
    #[command(subcommand)]
    User(auth::UserCommand),
    /// Roles: add, get, list, delete, grant-permission, revoke-permission.
    #[command(subcommand)]
    Role(auth::RoleCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// XML configuration files (device classes, schemas).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Backups: save one from a server, check one, restore one into a new
    /// member's data directory.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, and per member: id, address, role, matched and applied index.
    Status,
    /// Add a node: it joins as a learner and is promoted to voter once caught up.
    Add {
        /// The new node's id.
        id: u64,
        /// The new node's peer address, HOST:PORT (its `peer_listen`, or
        /// `peer_advertise`).
        addr: String,
        /// Keep it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead.
        id: u64,
    },
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// Attach the key to this lease (decimal or 0x-hex).
    #[arg(long, value_parser = parse_lease_id, default_value = "0")]
    pub lease: i64,
    /// Also print the previous key-value pair.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key (or the prefix with --prefix, the first key with --from-key).
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    pub key: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with_all = ["from", "from_key"])]
    pub prefix: bool,
    /// Range start (inclusive); without --to, every key >= FROM.
    #[arg(long, value_name = "KEY")]
    pub from: Option<String>,
    /// Range end (exclusive); needs --from.
    #[arg(long, value_name = "KEY", requires = "from", conflicts_with = "key")]
    pub to: Option<String>,
    /// Every key >= KEY.
    #[arg(long)]
    pub from_key: bool,
    /// At most N pairs (0: the server's maximum).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read at revision N (0: current).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Keys only, no values.
    #[arg(long)]
    pub keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    /// The key (or the prefix with --prefix).
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    pub key: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with = "from")]
    pub prefix: bool,
    /// Range start (inclusive); without --to, every key >= FROM.
    #[arg(long, value_name = "KEY")]
    pub from: Option<String>,
    /// Range end (exclusive); needs --from.
    #[arg(long, value_name = "KEY", requires = "from", conflicts_with = "key")]
    pub to: Option<String>,
    /// Also print the deleted pairs.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Debug, Args)]
pub struct CasArgs {
    pub key: String,
    /// The version KEY must be at (0: KEY must not exist).
    #[arg(long)]
    pub expect_version: i64,
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// Attach the key to this lease (decimal or 0x-hex).
    #[arg(long, value_parser = parse_lease_id, default_value = "0")]
    pub lease: i64,
}

#[derive(Debug, Args)]
pub struct TxnArgs {
    /// The transaction as JSON ("-": standard input). See `utopia txn --help`.
    #[arg(long, short = 'f')]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The key (or the prefix with --prefix).
    pub key: String,
    #[arg(long)]
    pub prefix: bool,
    /// Start at revision N (0: only changes from now on).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Include each event's previous key-value pair.
    #[arg(long)]
    pub prev_kv: bool,
    /// Exit after N events.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease with a TTL in seconds.
    Grant {
        ttl_seconds: i64,
        /// Ask for this lease id (0: the server picks).
        #[arg(long, value_parser = parse_lease_id, default_value = "0")]
        id: i64,
    },
    /// Revoke a lease (its keys are deleted).
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Show a lease's TTL and remaining time.
    Ttl {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    pub revision: i64,
}

#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Print one document.
    Get {
        collection: String,
        id: String,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
    /// List documents: one `ID<TAB>JSON` line each.
    List(DocListArgs),
}

#[derive(Debug, Subcommand)]
pub enum StatsCommand {
    /// Print the statistics of one (TYPE, ID): the stats document
    /// `TYPE/ID`, as `doc get stats TYPE/ID` prints it (exit 1 when there
    /// is none).
    Get {
        #[arg(value_enum, value_name = "TYPE")]
        kind: StatsKind,
        /// A device's `HOST/CLASS/ID`, a fellow's node id, or a
        /// configuration's name.
        id: String,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
}

/// The types statistics are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsKind {
    Device,
    Fellow,
    Config,
}

impl StatsKind {
    pub fn name(self) -> &'static str {
        match self {
            StatsKind::Device => "device",
            StatsKind::Fellow => "fellow",
            StatsKind::Config => "config",
        }
    }
}

#[derive(Debug, Args)]
pub struct DocListArgs {
    pub collection: String,
    /// Devices in this zone.
    #[arg(long, conflicts_with_all = ["class", "host"])]
    pub zone: Option<String>,
    /// Devices of this class.
    #[arg(long, conflicts_with = "host")]
    pub class: Option<String>,
    /// Devices on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Documents per page (0: the server's maximum).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Continue from a previous listing's next_page_token.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow page tokens to the end (at most --max-pages pages).
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pages: u64,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Report a device value (Documents.Report), like the MQTT message
    /// /HOST/ZONE/CLASS/ID/POST_TYPE/PATH...; prints the device's document id.
    Report(DeviceReportArgs),
    /// Send a command to a device over MQTT; prints the command id. The
    /// device document's `commands` map shows pending / acknowledged / failed.
    Cmd(DeviceCmdArgs),
}

#[derive(Debug, Args)]
pub struct DeviceCmdArgs {
    /// The device's document id, HOST/CLASS/ID.
    pub device: String,
    /// What the command is about; it goes to .../cmd/POST_TYPE.
    pub post_type: String,
    /// The payload as JSON (quote strings: '"on"').
    #[arg(allow_hyphen_values = true)]
    pub payload: String,
    /// Wait until the device acknowledges the command or it fails, at most
    /// this many seconds; exit 1 if it failed or is still pending.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DeviceReportArgs {
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub zone: String,
    #[arg(long)]
    pub class: String,
    /// The device id.
    #[arg(long = "id")]
    pub device_id: String,
    pub post_type: String,
    pub path: Vec<String>,
    /// The value as JSON (object, array, number, string, bool or null).
    #[arg(long, allow_hyphen_values = true)]
    pub json: String,
}

/// Seconds (fractions allowed, > 0) as a Duration.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 1e9) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A lease id in decimal or 0x-hex.
pub fn parse_lease_id(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16)
    } else {
        t.parse::<i64>()
    };
    match parsed {
        Ok(v) if v >= 0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a lease id (a non-negative decimal or 0x-hex 64-bit integer)"
        )),
    }
}

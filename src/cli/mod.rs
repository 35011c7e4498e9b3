//! The `utopia` command-line client: argument parsing (clap), dispatch to the
//! gRPC services, output formatting and exit codes. It owns nothing on the
//! server side; it talks to `utopiad` only through `utopia-proto`.
//!
//! Modules: [`client`] (endpoints, failover, timeouts), [`output`] (text and
//! JSON rendering), [`kv`] (put/get/del/cas/txn/compact), [`txn`] (the
//! transaction file format), [`watch`], [`admin`] (lease, documents, device
//! reports, status) and [`bench`] (`utopia bench put|get|mixed`, against
//! utopia or etcd).
//!
//! # Exit codes
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success (also `--help`, `--version`, Ctrl-C during `watch`, a closed stdout) |
//! | 1 | not found: `get KEY` of a single key (without `--count-only`) that does not exist (`key not found: KEY` on stderr; with `--output json` the empty response is still printed), any `NOT_FOUND` status (document, lease), or a failed `cas` compare |
//! | 2 | usage error: bad arguments (clap), a malformed `txn` file or `--json` value |
//! | 3 | server or connection error: `error: CODE: message` on stderr, e.g. `error: INVALID_ARGUMENT: value is 2000000 bytes; ...` |
//!
//! # `--output json`
//!
//! Every command prints exactly one JSON object on one line (`watch` prints
//! one per event; `doc list --all` prints one object for all pages). Field
//! order is fixed as listed here; new fields may be appended later, existing
//! ones are not renamed.
//!
//! Keys and values are bytes. In JSON a key or value that is valid UTF-8 is a
//! string in `key` / `value`; otherwise `key` / `value` is `null` and the bytes
//! are in `key_base64` / `value_base64` (standard alphabet, padded), fields
//! that appear only in that case.
//!
//! - header: `{"revision":i64,"member_id":u64,"raft_term":u64}`
//! - kv: `{"key","value","create_revision","mod_revision","version","lease"}`
//! - `put`: `{"header":header,"prev_kv":kv|null}`
//! - `get`: `{"header":header,"kvs":[kv...],"more":bool,"count":i64}`
//! - `del`: `{"header":header,"deleted":i64,"prev_kvs":[kv...]}`
//! - `cas`: `{"succeeded":bool,"header":header,"version":i64}` where `version`
//!   is the key's current version (after the put when it succeeded)
//! - `txn`: `{"header":header,"succeeded":bool,"responses":[{"put":put}|{"get":get}|{"del":del}...]}`
//! - `watch`: per event `{"type":"PUT"|"DELETE","revision":i64,"kv":kv,"prev_kv":kv|null}`
//! - `compact`: `{"header":header,"revision":i64}`
//! - `lease grant`: `{"id":i64,"ttl":i64}`; `lease revoke`: `{"id":i64,"revoked":true}`;
//!   `lease ttl`: `{"id":i64,"ttl":i64,"remaining_ms":i64,"keys":[string...],"keys_more":true}`
//!   (`keys_more` only when keys were left out)
//!   (`keys` only with `--keys`; non-UTF-8 bytes become U+FFFD)
//! - `doc get`: `{"collection","id","document":<the document>}`
//! - `doc list`: `{"documents":[{"collection","id","document"}...],"next_page_token":string}`
//! - `device report`: `{"device":string,"revision":i64}`
//! - `status`: `{"endpoint","version","member_id","leader","raft_term","raft_index",
//!   "raft_applied_index","raft_snapshot_index","raft_purged_index","role","revision",
//!   "compact_revision","data_dir","db_size_bytes","members":[{"id","addr","voter"}],
//!   "counters":{name:u64},"raft_membership_index"}` (counters sorted by name)
//! - `alarm list|disarm`: `{"alarms":[{"member_id":u64,"alarm":"NOSPACE"}...]}`
//!   (after a disarm: the alarms still active)
//! - `cluster status`: `{"leader","raft_term","members":[{"id","addr","voter","role",
//!   "matched_index","applied_index","raft_term"}],"membership_change_in_progress"}`
//! - `bench put|get|mixed`: `{"ops","errors","seconds","ops_per_second",
//!   "latency_ms":{"p50","p90","p99","p999","max"},"target":"utopia"|"etcd",
//!   "workload":"put"|"get"|"mixed","endpoint","clients","connections",
//!   "key_bytes","value_bytes","keys_space"}`, plus `"consistency"` for `get`
//!   and `mixed`, and `"read_percent"`, `"gets"` and `"puts"` (each
//!   `{"ops","errors","latency_ms"}`) for `mixed`
//! - `bench mqtt`: `{"publishers","qos","payload_bytes","raw":{"messages","seconds",
//!   "messages_per_second"}|null,"ingest":{...},"ratio","ingest_lag_ms":{name:f64},
//!   "batches","mean_batch_messages","publish_to_commit_ms":{"p50","p90","p99","p999","max"}|null}`
//!
//! # Text output
//!
//! Like etcdctl: `put` prints `OK`; `get` prints the key on one line and the
//! value on the next for each pair (`--keys-only`: keys only, `--count-only`:
//! the count); `del` prints the number deleted (then the deleted pairs with
//! `--prev-kv`); `watch` prints `PUT`/`DELETE`, then with `--prev-kv` the
//! previous key and value, then the key and the value (empty for a delete).

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod admin;
pub mod alarm;
pub mod bench;
pub mod bench_mqtt;
pub mod client;
pub mod cluster;
pub mod kv;
pub mod output;
pub mod txn;
pub mod watch;

use client::Client;
use output::Printer;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 key/document/lease not found or cas compare failed;
2 usage error; 3 server or connection error (gRPC code and message on stderr).";

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

    /// Output format (json: one JSON object per line; each command's shape is fixed).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Per-request timeout in seconds (fractions allowed).
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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Serializable,
}

impl ConsistencyArg {
    fn to_proto(self) -> i32 {
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
    /// Device operations.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show the server's status (Maintenance.Status).
    Status,
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Alarms: list them, or disarm NOSPACE after freeing space.
    #[command(subcommand)]
    Alarm(alarm::AlarmCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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

/// Why a command failed; decides the exit code and the message on stderr.
#[derive(Debug)]
pub enum CliError {
    /// Exit 2.
    Usage(String),
    /// Exit 1; the message is printed as is (e.g. `key not found: a`).
    NotFound(String),
    /// Exit 1 (cas compare failed).
    CompareFailed(String),
    /// Exit 3 (exit 1 for NOT_FOUND).
    Rpc(tonic::Status),
    /// Exit 3: no endpoint could be reached.
    Connect(String),
    /// Writing the output failed (a closed pipe exits 0 quietly).
    Io(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::NotFound(_) | CliError::CompareFailed(_) => 1,
            CliError::Rpc(s) if s.code() == tonic::Code::NotFound => 1,
            CliError::Rpc(_) | CliError::Connect(_) => 3,
            CliError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            CliError::Io(_) => 3,
        }
    }

    /// The line for stderr, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            CliError::Usage(m) => Some(format!("error: {m}")),
            CliError::NotFound(m) | CliError::CompareFailed(m) => Some(m.clone()),
            CliError::Rpc(s) => Some(format!("error: {}: {}", code_name(s.code()), s.message())),
            CliError::Connect(m) => Some(format!("error: UNAVAILABLE: {m}")),
            CliError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
            CliError::Io(e) => Some(format!("error: writing output: {e}")),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(s)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e)
    }
}

/// The canonical gRPC name of a status code, as in `INVALID_ARGUMENT`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
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

/// Runs the CLI with `args` (including the program name) and returns the
/// process exit code.
pub async fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            if let Some(m) = e.message() {
                eprintln!("{m}");
            }
            e.exit_code()
        }
    }
}

/// The TLS settings from `--cacert`, `--cert` and `--key`; `None` without
/// `--cacert`.
fn client_tls(cli: &Cli) -> Result<Option<tonic::transport::ClientTlsConfig>, CliError> {
    let cert = match (&cli.cert, &cli.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => {
            return Err(CliError::Usage(
                "--cert and --key are given together".into(),
            ))
        }
    };
    let Some(ca) = &cli.cacert else {
        if cert.is_some() {
            return Err(CliError::Usage(
                "--cert and --key need --cacert (the CA that signed the server's certificate)"
                    .into(),
            ));
        }
        return Ok(None);
    };
    crate::tls::load_client(ca, cert, ["--cacert", "--cert", "--key"])
        .map(Some)
        .map_err(CliError::Usage)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let mut out = Printer::new(cli.output == OutputFormat::Json);
    let tls = client_tls(&cli)?;
    let mut client = Client::new(&cli.endpoints, cli.timeout, tls)?;
    let result = dispatch(cli.command, &mut client, &mut out).await;
    // Flush what was printed even when the command failed afterwards.
    let flushed = out.flush();
    result?;
    flushed.map_err(CliError::Io)
}

async fn dispatch(cmd: Command, client: &mut Client, out: &mut Printer) -> Result<(), CliError> {
    match cmd {
        Command::Put(a) => kv::put(client, out, a).await,
        Command::Get(a) => kv::get(client, out, a).await,
        Command::Del(a) => kv::del(client, out, a).await,
        Command::Cas(a) => kv::cas(client, out, a).await,
        Command::Txn(a) => kv::txn(client, out, a).await,
        Command::Compact(a) => kv::compact(client, out, a).await,
        Command::Watch(a) => watch::watch(client, out, a).await,
        Command::Lease(c) => admin::lease(client, out, c).await,
        Command::Doc(c) => admin::doc(client, out, c).await,
        Command::Device(DeviceCommand::Report(a)) => admin::device_report(client, out, a).await,
        Command::Device(DeviceCommand::Cmd(a)) => admin::device_cmd(client, out, a).await,
        Command::Status => admin::status(client, out).await,
        Command::Cluster(c) => cluster::run(client, out, c).await,
        Command::Alarm(c) => alarm::run(client, out, c).await,
        Command::Bench(b) => bench::run(client, out, b).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("utopia").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_global_flags_anywhere() {
        let cli = parse(&[
            "get",
            "--output",
            "json",
            "k",
            "--endpoints",
            "a:1,b:2",
            "--timeout",
            "0.5",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        match cli.command {
            Command::Get(g) => assert_eq!(g.key.as_deref(), Some("k")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        let cases: &[(&[&str], i32)] = &[
            (&["get"], 2),                                // no key
            (&["get", "k", "--from", "a"], 2),            // key and --from
            (&["get", "--to", "b", "k"], 2),              // --to without --from
            (&["get", "--to", "b"], 2),                   // --to without --from
            (&["del", "k", "--to", "b"], 2),              // --to without --from
            (&["get", "k", "--prefix", "--from-key"], 2), // two selectors
            (&["put", "k"], 2),                           // no value
            (&["cas", "k", "v"], 2),                      // no --expect-version
            (&["lease", "grant"], 2),                     // no TTL
            (&["lease", "revoke", "0xzz"], 2),            // bad id
            (&["lease", "revoke", "-5"], 2),              // negative id
            (&["doc", "list", "devices", "--zone", "a", "--host", "b"], 2),
            (&["frobnicate"], 2),
            (&[], 2),
            (&["--timeout", "0", "status"], 2),
            (&["--output", "yaml", "status"], 2),
            (&["--help"], 0),
            (&["get", "--help"], 0),
            (&["txn", "--help"], 0),
            (&["--version"], 0),
        ];
        for (args, code) in cases {
            match parse(args) {
                Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
                Err(e) => assert_eq!(e.exit_code(), *code, "{args:?}: {e}"),
            }
        }
    }

    #[test]
    fn accepted_command_lines() {
        let ok: &[&[&str]] = &[
            &["put", "k", "v", "--lease", "0x1f", "--prev-kv"],
            &["put", "k", "-v"],
            &[
                "get",
                "k",
                "--prefix",
                "--limit",
                "3",
                "--rev",
                "2",
                "--keys-only",
            ],
            &["get", "--from", "a", "--to", "b"],
            &["get", "--from", "a"],
            &[
                "get",
                "a",
                "--from-key",
                "--count-only",
                "--consistency",
                "serializable",
            ],
            &["del", "k", "--prefix", "--prev-kv"],
            &["del", "--from", "a", "--to", "b"],
            &["cas", "k", "--expect-version", "0", "v"],
            &["txn", "--file", "t.json"],
            &[
                "watch",
                "k",
                "--prefix",
                "--rev",
                "5",
                "--prev-kv",
                "--count",
                "2",
            ],
            &["lease", "grant", "10"],
            &["lease", "ttl", "123", "--keys"],
            &["compact", "7"],
            &["doc", "get", "devices", "gw1/thermo/7"],
            &[
                "doc", "list", "devices", "--zone", "kitchen", "--all", "--limit", "10",
            ],
            &[
                "device", "report", "--host", "gw1", "--zone", "kitchen", "--class", "thermo",
                "--id", "7", "temp", "--json", "21.5",
            ],
            &[
                "device", "report", "--host", "h", "--zone", "z", "--class", "c", "--id", "1",
                "cfg", "a", "b", "--json", "-1",
            ],
            &["status"],
            &[
                "bench",
                "put",
                "--clients",
                "4",
                "--total",
                "100",
                "--value-bytes",
                "8",
                "--connections",
                "2",
            ],
            &[
                "bench",
                "get",
                "--target",
                "etcd",
                "--consistency",
                "serializable",
                "--fill",
                "--keys-space",
                "1000",
                "--key-bytes",
                "12",
            ],
            &["bench", "mixed", "--read-percent", "90", "--clients", "64"],
        ];
        for args in ok {
            if let Err(e) = parse(args) {
                panic!("{args:?} rejected: {e}");
            }
        }
    }

    #[test]
    fn lease_ids() {
        assert_eq!(parse_lease_id("0x1f"), Ok(31));
        assert_eq!(parse_lease_id("0X1F"), Ok(31));
        assert_eq!(parse_lease_id("42"), Ok(42));
        assert_eq!(parse_lease_id("0x7fffffffffffffff"), Ok(i64::MAX));
        assert!(parse_lease_id("0x8000000000000000").is_err());
        assert!(parse_lease_id("-1").is_err());
        assert!(parse_lease_id("ten").is_err());
    }

    #[test]
    fn exit_codes() {
        use tonic::{Code, Status};
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::NotFound("key not found: a".into()).exit_code(), 1);
        assert_eq!(CliError::CompareFailed("x".into()).exit_code(), 1);
        assert_eq!(
            CliError::Rpc(Status::new(Code::NotFound, "x")).exit_code(),
            1
        );
        assert_eq!(
            CliError::Rpc(Status::new(Code::InvalidArgument, "x")).exit_code(),
            3
        );
        assert_eq!(
            CliError::Rpc(Status::new(Code::Unavailable, "x")).exit_code(),
            3
        );
        assert_eq!(CliError::Connect("x".into()).exit_code(), 3);
        let pipe = CliError::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(pipe.exit_code(), 0);
        assert_eq!(pipe.message(), None);
        let e = CliError::Rpc(Status::new(
            Code::InvalidArgument,
            "value is 2000000 bytes; the limit is value_bytes_max = 1048576",
        ));
        assert_eq!(
            e.message().as_deref(),
            Some("error: INVALID_ARGUMENT: value is 2000000 bytes; the limit is value_bytes_max = 1048576")
        );
        assert_eq!(
            CliError::NotFound("key not found: a".into())
                .message()
                .as_deref(),
            Some("key not found: a")
        );
    }

    #[tokio::test]
    async fn main_with_args_returns_usage_code() {
        let args = ["utopia", "get"].map(OsString::from);
        assert_eq!(main_with_args(args).await, 2);
        let args = ["utopia", "--help"].map(OsString::from);
        assert_eq!(main_with_args(args).await, 0);
    }

    #[tokio::test]
    async fn unreachable_endpoint_exits_3() {
        // Port 1 on loopback refuses connections.
        let args = [
            "utopia",
            "--endpoints",
            "127.0.0.1:1",
            "--timeout",
            "2",
            "get",
            "k",
        ]
        .map(OsString::from);
        assert_eq!(main_with_args(args).await, 3);
    }
}

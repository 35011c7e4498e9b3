//! The `utopia` command-line client: argument parsing (clap), dispatch to the
//! gRPC services, output formatting and exit codes. It owns nothing on the
//! server side; it talks to `utopiad` only through `utopia-proto`.
//!
//! Modules: [`client`] (endpoints, failover, timeouts), [`output`] (text and
//! JSON rendering), [`kv`] (put/get/del/cas/txn/compact), [`txn`] (the
//! transaction file format), [`watch`], [`admin`] (lease, documents, device
//! reports, status), [`bench`](mod@bench) (`utopia bench put|get|mixed`, against
//! utopia or etcd) and [`config`] (`utopia config validate`, which needs no
//! server, and `config upload|list|get`).
//!
//! # Exit codes
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success (also `--help`, `--version`, Ctrl-C during `watch`, a closed stdout) |
//! | 1 | not found: `get KEY` of a single key (without `--count-only`) that does not exist (`key not found: KEY` on stderr; with `--output json` the empty response is still printed), any `NOT_FOUND` status (document, lease), or a failed `cas` compare; `config validate`: at least one file is invalid or unreadable (every file still gets its line; `error: N of M files invalid` on stderr); `config upload`: the file is invalid (`error: FILE:LINE:COL: reason`), the server refused it (`INVALID_ARGUMENT`) or the vote (`FAILED_PRECONDITION`), or another content won the version |
//! | 2 | usage error: bad arguments (clap, e.g. `config validate` without a FILE), a malformed `txn` file or `--json` value |
//! | 3 | server or connection error: `error: CODE: message` on stderr, e.g. `error: INVALID_ARGUMENT: value is 2000000 bytes; ...` (also `config upload` still undecided after `--timeout`: `DEADLINE_EXCEEDED`) |
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
//! - `stats get TYPE ID`: as `doc get stats TYPE/ID`
//! - `device report`: `{"device":string,"revision":i64}`
//! - `status`: `{"endpoint","version","member_id","leader","raft_term","raft_index",
//!   "raft_applied_index","raft_snapshot_index","raft_purged_index","role","revision",
//!   "compact_revision","data_dir","db_size_bytes","members":[{"id","addr","voter"}],
//!   "counters":{name:u64},"histograms":{name:{"count":u64,"sum","p50","p99"}},
//!   "raft_membership_index"}` (counters and histograms sorted by name; the
//!   metrics endpoint's figures without the `utopia_` prefix; seconds)
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
//! - `auth enable|disable`, `user add|delete|passwd|grant-role|revoke-role`,
//!   `role add|delete|grant-permission|revoke-permission`:
//!   `{"ok":true,"message":string}`
//! - `auth status`: `{"enabled":bool,"auth_revision":u64}`
//! - `user get`: `{"name","roles":[string...],"has_password":bool}`;
//!   `user list`: `{"users":[string...]}`; `role list`: `{"roles":[string...]}`
//! - `role get`: `{"role","permissions":[{"type":"read"|"write"|"readwrite",
//!   "key","range_end","collection"}...]}` (key and range_end null for a
//!   collection, collection null for keys; `key_base64` / `range_end_base64`
//!   for bytes that are not UTF-8)
//! - `bench mqtt`: `{"publishers","qos","payload_bytes","raw":{"messages","seconds",
//!   "messages_per_second"}|null,"ingest":{...},"ratio","ingest_lag_ms":{name:f64},
//!   "batches","mean_batch_messages","publish_to_commit_ms":{"p50","p90","p99","p999","max"}|null}`
//! - `config validate`: one object per file, every field always present:
//!   `{"file":string,"valid":bool,"type":"config"|"schema"|null,"name":string|null,
//!   "version":u32|null,"post_types":n|null,"commands":n|null,"line":u32|null,
//!   "column":u32|null,"reason":string|null}` (`type`, `name`, `version` for a
//!   valid file, `post_types` and `commands` for a valid configuration,
//!   `reason` with `line` and `column` when known for an invalid one)
//! - `config upload`: `{"name","type","version","hash","outcome","state",
//!   "decided_hash","decided_ms","decide_after_ms","reason"}` (`outcome`:
//!   `accepted`, `superseded`, `rejected`, or `proposed` with `--no-wait`)
//! - config: `{"id","name","type","version","hash","state","proposer",
//!   "votes":[{"node","weight","hash","at_ms","source"}],"failing":[{"node",
//!   "reason","since_ms"}],"proposed_ms","decided_ms","decide_after_ms",
//!   "file","reason"}` (`decided_ms`, `decide_after_ms`, `file`, `reason`
//!   null when not set)
//! - `config list`: `{"configs":[config...]}` (by name and version, rejected
//!   files last); `config get`: `{"config":config,"document":<the document>}`
//!   (`--output xml`: the file's exact bytes instead)
//!
//! # Text output
//!
//! Like etcdctl: `put` prints `OK`; `get` prints the key on one line and the
//! value on the next for each pair (`--keys-only`: keys only, `--count-only`:
//! the count); `del` prints the number deleted (then the deleted pairs with
//! `--prev-kv`); `watch` prints `PUT`/`DELETE`, then with `--prev-kv` the
//! previous key and value, then the key and the value (empty for a delete).
//! `config validate` prints one line per file: `FILE: valid (class C version
//! V, N post types)` (`FILE: valid (schema S version V)` for a schema file)
//! or `FILE:LINE:COL: reason` (`FILE:LINE: reason` or `FILE: reason` when
//! the position is not known). `config upload` prints the outcome
//! (`NAME@V accepted (hash H)`, `NAME@V superseded by hash H2 (this file's
//! hash is H)`); `config list` a table (NAME TYPE VERSION HASH STATE VOTES
//! FAILING, then why members fail and files were rejected); `config get`
//! one `field: value` line each.

use std::ffi::OsString;

use clap::Parser;

pub mod admin;
pub mod alarm;
mod args;
pub mod auth;
pub mod bench;
pub mod bench_mqtt;
pub mod client;
pub mod cluster;
pub mod config;
pub mod db;
mod error;
pub mod kv;
pub mod output;
pub mod snapshot;
pub mod txn;
pub mod watch;

pub use args::*;
pub use error::{code_name, CliError};

use client::Client;
use output::Printer;
use snapshot::SnapshotCommand;

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
    out.xml = cli.output == OutputFormat::Xml;
    if out.xml && !matches!(&cli.command, Command::Config(config::ConfigCommand::Get(_))) {
        return Err(CliError::Usage(
            "--output xml applies to `config get` only".into(),
        ));
    }
    // Commands that need no server.
    let local = match &cli.command {
        Command::Config(config::ConfigCommand::Validate(a)) => Some(config::validate(&mut out, a)),
        Command::Snapshot(SnapshotCommand::Status { file }) => {
            Some(snapshot::status(&mut out, file))
        }
        Command::Snapshot(SnapshotCommand::Restore(a)) => Some(snapshot::restore(&mut out, a)),
        _ => None,
    };
    if let Some(result) = local {
        let flushed = out.flush();
        result?;
        return flushed.map_err(CliError::Io);
    }
    let tls = client_tls(&cli)?;
    let mut client = Client::new(&cli.endpoints, cli.timeout, tls)?;
    // An empty one (UTOPIA_USER= ...) is none: a way to drop the variable.
    if let Some(spec) = cli.user.as_deref().filter(|s| !s.is_empty()) {
        let (name, password) = auth::credentials(spec, "--user")?;
        client.set_credentials(name, password);
    }
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
        Command::Stats(StatsCommand::Get {
            kind,
            id,
            consistency,
        }) => {
            let get = DocCommand::Get {
                collection: "stats".into(),
                id: format!("{}/{id}", kind.name()),
                consistency,
            };
            admin::doc(client, out, get).await
        }
        Command::Device(DeviceCommand::Report(a)) => admin::device_report(client, out, a).await,
        Command::Device(DeviceCommand::Cmd(a)) => admin::device_cmd(client, out, a).await,
        Command::Status => admin::status(client, out).await,
        Command::Cluster(c) => cluster::run(client, out, c).await,
        Command::Db(c) => db::run(client, out, c).await,
        Command::Alarm(c) => alarm::run(client, out, c).await,
        Command::Auth(c) => auth::auth(client, out, c).await,
        Command::User(c) => auth::user(client, out, c).await,
        Command::Role(c) => auth::role(client, out, c).await,
        Command::Bench(b) => bench::run(client, out, b).await,
        Command::Snapshot(SnapshotCommand::Save { file }) => {
            snapshot::save(client, out, &file).await
        }
        Command::Config(c) => config::run(client, out, c).await,
        // Handled in `run`, before any client exists.
        Command::Snapshot(SnapshotCommand::Status { file }) => snapshot::status(out, &file),
        Command::Snapshot(SnapshotCommand::Restore(a)) => snapshot::restore(out, &a),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            (&["stats", "get", "zone", "z"], 2),          // not a stats type
            (&["cas", "k", "v"], 2),                      // no --expect-version
            (&["lease", "grant"], 2),                     // no TTL
            (&["lease", "revoke", "0xzz"], 2),            // bad id
            (&["lease", "revoke", "-5"], 2),              // negative id
            (&["doc", "list", "devices", "--zone", "a", "--host", "b"], 2),
            (&["frobnicate"], 2),
            (&[], 2),
            (&["--timeout", "0", "status"], 2),
            (&["--output", "yaml", "status"], 2),
            (&["role", "grant-permission", "app", "readwrite"], 2), // no key
            (&["role", "grant-permission", "app", "all", "k"], 2),  // no such type
            (
                &[
                    "role",
                    "grant-permission",
                    "app",
                    "read",
                    "k",
                    "--collection",
                    "devices",
                ],
                2,
            ),
            (
                &["role", "revoke-permission", "app", "k", "z", "--prefix"],
                2,
            ),
            (&["user", "add"], 2),
            (&["config", "validate"], 2),                   // no file
            (&["config", "upload"], 2),                     // no file
            (&["config", "get"], 2),                        // no name
            (&["config", "get", "t", "--version", "0"], 2), // versions start at 1
            (&["config", "get", "t", "--version", "x"], 2),
            (&["config", "list", "extra"], 2),
            (&["config", "upload", "a.xml", "--no-wait", "x"], 2),
            (&["config", "validate", "a.xml", "--file-bytes-max", "0"], 2),
            (
                &[
                    "config",
                    "validate",
                    "a.xml",
                    "--file-bytes-max",
                    "67108865",
                ],
                2,
            ),
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
            &["stats", "get", "device", "gw1/thermo/7"],
            &[
                "stats",
                "get",
                "fellow",
                "2",
                "--consistency",
                "serializable",
            ],
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
            &["--user", "root:pw", "auth", "enable"],
            &["auth", "status", "--user", "alice"],
            &["user", "add", "alice:pw"],
            &["user", "add", "bob", "--no-password"],
            &["user", "passwd", "alice:new"],
            &["user", "grant-role", "alice", "app"],
            &["user", "revoke-role", "alice", "app"],
            &["user", "get", "alice"],
            &["user", "list"],
            &["role", "add", "app"],
            &[
                "role",
                "grant-permission",
                "app",
                "readwrite",
                "app/",
                "--prefix",
            ],
            &["role", "grant-permission", "app", "read", "a", "c"],
            &["role", "grant-permission", "app", "read", "a", "--from-key"],
            &[
                "role",
                "grant-permission",
                "app",
                "write",
                "--collection",
                "devices",
            ],
            &["role", "revoke-permission", "app", "app/", "--prefix"],
            &[
                "role",
                "revoke-permission",
                "app",
                "--collection",
                "devices",
            ],
            &["role", "get", "app"],
            &["role", "list"],
            &["role", "delete", "app"],
            &["config", "validate", "a.xml"],
            &["config", "upload", "a.xml"],
            &["config", "upload", "a.xml", "--no-wait", "--timeout", "30"],
            &["config", "upload", "a.xml", "--file-bytes-max", "4096"],
            &["config", "list"],
            &[
                "config",
                "list",
                "--output",
                "json",
                "--consistency",
                "serializable",
            ],
            &["config", "get", "thermostat"],
            &[
                "config",
                "get",
                "thermostat",
                "--version",
                "3",
                "--output",
                "xml",
            ],
            &["config", "get", "thermostat", "-o", "json"],
            &[
                "config",
                "validate",
                "a.xml",
                "b.xml",
                "--file-bytes-max",
                "4096",
            ],
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
            CliError::Invalid("1 of 2 files invalid".into()).exit_code(),
            1
        );
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
    async fn output_xml_is_for_config_get_only() {
        // Refused before any server is asked.
        for args in [
            &[
                "utopia",
                "--endpoints",
                "127.0.0.1:1",
                "-o",
                "xml",
                "status",
            ][..],
            &[
                "utopia",
                "--endpoints",
                "127.0.0.1:1",
                "-o",
                "xml",
                "config",
                "list",
            ],
            &["utopia", "-o", "xml", "config", "validate", "a.xml"],
        ] {
            let args = args.iter().map(OsString::from);
            assert_eq!(main_with_args(args).await, 2);
        }
        let cli = parse(&["config", "get", "t", "--version", "2", "-o", "xml"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Xml);
        match cli.command {
            Command::Config(config::ConfigCommand::Get(g)) => {
                assert_eq!((g.name.as_str(), g.version), ("t", Some(2)))
            }
            other => panic!("{other:?}"),
        }
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

//! `utopiad`: the utopia server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use utopia::config::{LogFormat, Settings, Sources};

/// jemalloc serves the whole process, RocksDB included: the server's work
/// is many short-lived allocations on a few threads, where glibc's malloc
/// spent a quarter of MQTT ingest's CPU (README, Performance).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// utopia server: an event-sourced, replicated key-value and document store.
///
/// With no arguments it starts a single-node server with data in
/// ./utopia-data, serving clients on 127.0.0.1:7700 and peers on
/// 127.0.0.1:7800.
#[derive(Parser, Debug)]
#[command(name = "utopiad", version)]
struct Args {
    /// Configuration file (libconfig syntax); flags override it. Without
    /// it, /etc/utopia/utopiad.conf is read when it exists (`--config
    /// /dev/null` reads none).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Client port: gRPC listen address, HOST:PORT (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The address clients reach this node at, HOST:PORT, when it is not
    /// the listen address (a proxy, NAT, or --listen 0.0.0.0:PORT).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Peer port: where the other members reach this node, HOST:PORT (port
    /// 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    peer_listen: Option<String>,
    /// The address the other members reach this node at, HOST:PORT, when it
    /// is not the peer listen address.
    #[arg(long, value_name = "ADDR")]
    peer_advertise: Option<String>,
    /// This node's id in the cluster.
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// The members a new cluster starts with, by peer address:
    /// ID=HOST:PORT,ID=HOST:PORT,... Read only when the data directory is new.
    #[arg(long, value_name = "MEMBERS")]
    initial_cluster: Option<String>,
    /// Join an existing cluster: start a new data directory without
    /// initialising it and wait for `utopia cluster add`.
    #[arg(long, conflicts_with = "initial_cluster")]
    join: bool,
}

/// How long the process waits, after the server stopped, for work left on
/// the runtime's blocking threads.
const RUNTIME_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The configuration file read when `--config` is not given, if it exists:
/// the machine's local configuration (seed 000).
const DEFAULT_CONFIG: &str = "/etc/utopia/utopiad.conf";

fn main() -> ExitCode {
    let args = Args::parse();
    let config = args.config.clone().or_else(|| {
        let path = PathBuf::from(DEFAULT_CONFIG);
        path.exists().then_some(path)
    });
    let (mut settings, mut sources) = match &config {
        Some(path) => match Settings::read(path) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("utopiad: {e}");
                return ExitCode::from(2);
            }
        },
        None => (Settings::default(), Sources::default()),
    };
    if let Some(d) = args.data_dir {
        settings.data_dir = d;
        sources.set_by_flag("data_dir", "--data-dir");
    }
    if let Some(n) = args.node_id {
        settings.node_id = n;
        sources.set_by_flag("node_id", "--node-id");
    }
    for (flag, path, value, setting, example) in [
        (
            "--listen",
            "listen",
            args.listen,
            &mut settings.listen,
            "127.0.0.1:7700",
        ),
        (
            "--advertise",
            "advertise",
            args.advertise,
            &mut settings.advertise,
            "192.0.2.10:7700",
        ),
        (
            "--peer-listen",
            "peer_listen",
            args.peer_listen,
            &mut settings.peer_listen,
            "127.0.0.1:7800",
        ),
        (
            "--peer-advertise",
            "peer_advertise",
            args.peer_advertise,
            &mut settings.peer_advertise,
            "192.0.2.10:7800",
        ),
    ] {
        if let Some(a) = value {
            if let Err(e) = a.parse::<std::net::SocketAddr>() {
                eprintln!("utopiad: {flag} {a:?}: {e}; expected HOST:PORT such as {example}");
                return ExitCode::from(2);
            }
            *setting = a;
            sources.set_by_flag(path, flag);
        }
    }
    settings.join = args.join;
    if let Some(members) = args.initial_cluster {
        match utopia::config::parse_initial_cluster(&members) {
            Ok(m) => {
                settings.initial_cluster = m;
                sources.set_by_flag("initial_cluster", "--initial-cluster");
            }
            Err(e) => {
                eprintln!("utopiad: --initial-cluster: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // Once, after the flags: the checks across settings, wherever each
    // came from.
    if let Err(e) = settings.validate(&sources) {
        eprintln!("utopiad: {e}");
        return ExitCode::from(2);
    }
    // Certificates are read before anything starts: a missing or unreadable
    // file is a configuration error like any other.
    let tls = match utopia::tls::load_server(&settings.tls) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("utopiad: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings);
    match &config {
        Some(path) => tracing::info!(file = %path.display(), "configuration read"),
        None => tracing::info!("no configuration file: embedded defaults and flags"),
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("utopiad: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = settings.data_dir.display().to_string();
    let node_id = settings.node_id;
    // Signals are caught from here on, even while the server starts.
    let shutdown = {
        let _runtime = runtime.enter();
        utopia::server::shutdown_signal()
    };
    let result = runtime.block_on(utopia::server::run(settings, tls, shutdown, |addr| {
        // One line, for people and for scripts that need the bound port.
        println!(
            "utopiad ready: node {node_id} listening on {}, peers on {}, data in {data_dir}",
            addr.client, addr.peer
        );
    }));
    // Whatever still runs on a blocking thread (a compaction, a password
    // hash) has a moment to finish; the process does not wait longer.
    runtime.shutdown_timeout(RUNTIME_STOP_WAIT);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("utopiad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    // Colours only for a person at a terminal, not in log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

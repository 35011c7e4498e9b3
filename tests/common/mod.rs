//! Test harness: real `utopiad` processes on ephemeral loopback ports in
//! temporary directories, driven by the real `utopia` binary and by a gRPC
//! client. Every process is killed when its handle drops; every wait has a
//! deadline.

#![allow(dead_code)]

pub mod files;
pub mod forge;
#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod mosquitto;
pub mod net;
pub mod scripts;
pub mod zookeeper;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const UTOPIAD: &str = env!("CARGO_BIN_EXE_utopiad");
pub const UTOPIA: &str = env!("CARGO_BIN_EXE_utopia");

/// How long a server may take to say it is ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct Server {
    child: Option<Child>,
    /// The address to listen on: `127.0.0.1:0` picks a new port each start.
    listen: String,
    /// The client port's address.
    pub addr: String,
    /// The peer port's address: fixed for the server's life, since the
    /// cluster's membership records it.
    pub peer_addr: String,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    stderr_log: PathBuf,
}

impl Server {
    /// Starts `utopiad` on a fresh port with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> Server {
        Self::start_at(data_dir, "127.0.0.1:0", extra_args)
    }

    /// Starts `utopiad` with its client port on `listen`, and its peer port
    /// on a free port of the same IP that it keeps across restarts (unless
    /// `extra_args` give `--peer-listen`).
    pub fn start_at(data_dir: &Path, listen: &str, extra_args: &[&str]) -> Server {
        let ip: std::net::IpAddr = listen
            .rsplit_once(':')
            .and_then(|(ip, _)| ip.parse().ok())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let peer_listen = net::free_addr_on(ip);
        Self::start_member(data_dir, listen, &peer_listen, extra_args)
    }

    /// Starts `utopiad` with its client port on `listen` and its peer port
    /// on `peer_listen` (a fixed address, as members need).
    pub fn start_member(
        data_dir: &Path,
        listen: &str,
        peer_listen: &str,
        extra_args: &[&str],
    ) -> Server {
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        if !extra_args.iter().any(|a| a == "--peer-listen") {
            extra_args.extend(["--peer-listen".to_string(), peer_listen.to_string()]);
        }
        let mut s = Server {
            child: None,
            listen: listen.to_string(),
            addr: String::new(),
            peer_addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            extra_args,
            stderr_log: data_dir.with_extension("stderr.log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        if let Some(parent) = self.stderr_log.parent() {
            std::fs::create_dir_all(parent).expect("create the server's directory");
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("open the server's stderr log");
        let mut child = Command::new(UTOPIAD)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen])
            .args(&self.extra_args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn utopiad");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // "utopiad ready: node N listening on ADDR, peers on ADDR, data in DIR"
            let after = |line: &str, what: &str| {
                line.split(what)
                    .nth(1)
                    .and_then(|rest| rest.split([',', ' ']).next())
                    .map(str::to_string)
            };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let (Some(addr), Some(peer)) =
                    (after(&line, "listening on "), after(&line, "peers on "))
                {
                    let _ = tx.send((addr, peer));
                }
            }
        });
        let (addr, peer_addr) = match rx.recv_timeout(READY_DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
                panic!("utopiad did not become ready within {READY_DEADLINE:?}; stderr:\n{log}");
            }
        };
        self.addr = addr;
        self.peer_addr = peer_addr;
        self.child = Some(child);
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running server.
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("server is running");
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig}");
    }

    /// CPU time (user and system) the running server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let child = self.child.as_ref().expect("server is running");
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .expect("read the server's /proc stat");
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields, in clock ticks (USER_HZ, 100 on Linux).
        let rest = stat.rsplit_once(')').expect("stat has a command name").1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// The running server's peak resident memory so far (`VmHWM`), in
    /// bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let child = self.child.as_ref().expect("server is running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .expect("read the server's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        wait_child(&mut child, Duration::from_secs(30)).expect("utopiad exits after SIGTERM")
    }

    /// Sends SIGTERM and returns at once; see [`Server::exited`].
    pub fn sigterm(&self) {
        let child = self.child.as_ref().expect("server is running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }

    /// The exit status once the process has exited (the server is then
    /// stopped and can be restarted); `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn stderr_log_path(&self) -> &Path {
        &self.stderr_log
    }

    /// Starts the server again on the same data directory (new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn();
    }

    /// Runs the `utopia` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.addr, args)
    }

    /// Runs the CLI and returns stdout, failing the test on a non-zero exit.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "utopia {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs the CLI with `--output json` and parses its stdout.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cli_ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("utopia {args:?} printed invalid JSON ({e}): {out}"))
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn cli(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(UTOPIA);
    cmd.args(["--endpoints", addr]).args(args);
    run_with_deadline(cmd, Duration::from_secs(60))
}

/// Runs a command to completion, killing it after `deadline`.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for command"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("command {cmd:?} did not finish within {deadline:?}");
        }
    }
}

fn wait_child(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns `Some`, or panics after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `n` nodes forming one cluster (ids 1..=n, data in
/// `dir/node{id}`), concurrently: each waits for a leader, which needs a
/// majority of them running. Returns the nodes and their client addresses
/// (fixed across restarts, as the peer addresses are).
pub fn start_cluster(dir: &Path, n: usize, extra_args: &[&str]) -> (Vec<Server>, Vec<String>) {
    start_cluster_each(dir, n, |_| {
        extra_args.iter().map(|s| s.to_string()).collect()
    })
}

/// Like [`start_cluster`], with arguments of each node's own (by id).
pub fn start_cluster_each(
    dir: &Path,
    n: usize,
    args_of: impl Fn(u64) -> Vec<String>,
) -> (Vec<Server>, Vec<String>) {
    let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
    let peers: Vec<String> = (0..n).map(|_| free_addr()).collect();
    let extra: Vec<Vec<String>> = (1..=n as u64).map(args_of).collect();
    let nodes = start_members(dir, &addrs, &peers, &peers, &extra);
    (nodes, addrs)
}

/// Like [`start_cluster`], with every node on its own loopback IP and its
/// peer port behind a proxy that can partition it from the others
/// ([`net::Net`]). The membership holds the proxies' addresses;
/// `Server::addr` and `Server::peer_addr` are the node's own.
pub fn start_partitionable_cluster(
    dir: &Path,
    n: usize,
    extra_args: &[&str],
) -> (Vec<Server>, net::Net) {
    let peer_listens: BTreeMap<u64, String> = (1..=n as u64)
        .map(|id| (id, net::free_addr_on(net::node_ip(id))))
        .collect();
    let network = net::Net::start(&peer_listens);
    let listens: Vec<String> = (1..=n as u64)
        .map(|id| net::free_addr_on(net::node_ip(id)))
        .collect();
    let peer_listens: Vec<String> = peer_listens.into_values().collect();
    let members: Vec<String> = network.addrs().values().cloned().collect();
    let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    let nodes = start_members(dir, &listens, &peer_listens, &members, &vec![extra; n]);
    (nodes, network)
}

/// Starts node `i + 1` with its client port on `listens[i]`, its peer port
/// on `peer_listens[i]` and the arguments `extra[i]`, all with the initial
/// cluster `{i + 1 = members[i]}`.
/// Starts nodes 1..=n with data in `dir/node{id}`, client ports
/// `listens`, peer ports `peer_listens`, and `--initial-cluster` naming
/// `members` (`1=members[0],2=...`); `extra` holds each node's own
/// arguments.
pub fn start_members(
    dir: &Path,
    listens: &[String],
    peer_listens: &[String],
    members: &[String],
    extra: &[Vec<String>],
) -> Vec<Server> {
    let ids: Vec<u64> = (1..=listens.len() as u64).collect();
    start_some_members(dir, &ids, listens, peer_listens, members, extra)
}

/// Like [`start_members`], only the members `ids` (each at index `id - 1`
/// of the lists), all at once.
pub fn start_some_members(
    dir: &Path,
    ids: &[u64],
    listens: &[String],
    peer_listens: &[String],
    members: &[String],
    extra: &[Vec<String>],
) -> Vec<Server> {
    let initial = initial_cluster(members);
    let handles: Vec<_> = ids
        .iter()
        .map(|&id| {
            let i = id as usize - 1;
            let data = dir.join(format!("node{id}"));
            let (addr, peer, initial, extra) = (
                listens[i].clone(),
                peer_listens[i].clone(),
                initial.clone(),
                extra[i].clone(),
            );
            std::thread::spawn(move || {
                let id = id.to_string();
                let mut args = vec!["--node-id", &id, "--initial-cluster", &initial];
                args.extend(extra.iter().map(String::as_str));
                Server::start_member(&data, &addr, &peer, &args)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("node started"))
        .collect()
}

/// The `--initial-cluster` value naming `members` by peer address, ids
/// from 1: `1=members[0],2=members[1],...`.
pub fn initial_cluster(members: &[String]) -> String {
    members
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// The id of the first running node that reports itself the leader.
pub fn leader_id(nodes: &[Server]) -> Option<u64> {
    // A member that says it leads, not one that names a leader: right
    // after a restart a member names the leader of the last term it saw,
    // itself included, before that member leads again.
    nodes.iter().filter(|n| n.is_running()).find_map(|n| {
        let out = n.cli(&["--output", "json", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        if v["role"] != "leader" {
            return None;
        }
        v["member_id"].as_u64().filter(|l| *l != 0)
    })
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    net::free_addr_on(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("utopia-test-")
        .tempdir()
        .expect("create a temp dir")
}

/// The counters `utopia status` on `addr` shows (none when the server does
/// not answer).
pub fn counters(addr: &str) -> serde_json::Map<String, serde_json::Value> {
    let out = cli(addr, &["--output", "json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["counters"].as_object().cloned().unwrap_or_default()
}

/// Counter `name` on `addr` (0 when absent or when the server does not
/// answer).
pub fn counter(addr: &str, name: &str) -> u64 {
    counters(addr)
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// A two-thread runtime for tests that drive gRPC clients or brokers from
/// synchronous test functions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

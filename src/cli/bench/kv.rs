//! `utopia bench put|get|mixed`: N concurrent clients issue M requests in
//! total over C HTTP/2 connections to the leader of a utopia cluster or, with
//! `--target etcd`, of an etcd cluster; each request's latency is recorded in
//! an HDR histogram. Prints throughput, latency percentiles and the error
//! count.
//!
//! The run stops after `--total` requests, after `--duration-max` seconds,
//! or on Ctrl-C, whichever comes first; the numbers cover what was done.
//! Keys are `--key-prefix` followed by a zero-padded pseudo-random number
//! below `--keys-space`, padded to `--key-bytes` bytes. `get` and `mixed`
//! with `--fill` first put every key of the key space once (not measured),
//! so that every read finds a value. Exits 3 when every request failed, 0
//! otherwise (errors are counted in the output).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::super::client::Client;
use super::super::output::Printer;
use super::super::{code_name, CliError, ConsistencyArg};
use super::cpu::{CpuReport, CpuSample};
use super::target::{self, Conn, Target};
use super::{
    digits, latency_ms, make_key, new_histogram, random_value, seed, summarize, BenchResult,
    LatencyMs, Rng, Stop, StopHandle,
};

/// Options every key-value benchmark takes.
#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// The system to drive: utopia, or etcd through its v3 gRPC API (the
    /// endpoints are then etcd's client URLs, HOST:PORT).
    #[arg(long, value_enum, default_value_t = Target::Utopia)]
    pub target: Target,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,
    /// HTTP/2 connections shared by the clients (1..=clients).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Requests in total.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub total: u64,
    /// Bytes per key, prefix included.
    #[arg(long, default_value_t = 16)]
    pub key_bytes: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Distinct keys to choose from.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys_space: u64,
    /// Key prefix.
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// Stop after this many seconds even if --total is not reached.
    #[arg(long, default_value_t = 300.0)]
    pub duration_max: f64,
    /// Server process ids (comma-separated, on this machine) whose CPU time
    /// over the measured phase is reported per 1,000 operations, summed,
    /// beside the load generator's own.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub kv: KvArgs,
    /// Attach every key to this lease (decimal or 0x-hex).
    #[arg(long, value_parser = super::super::parse_lease_id, default_value = "0")]
    pub lease: i64,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub kv: KvArgs,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Put every key of --keys-space once before measuring.
    #[arg(long)]
    pub fill: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub reads: GetArgs,
    /// Share of requests that are reads, in percent; the rest are puts.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Put,
    Get,
    Mixed,
}

/// What each request is.
#[derive(Debug, Clone, Copy)]
struct Mix {
    /// Reads per 100 requests.
    read_percent: u64,
    serializable: bool,
    lease: i64,
}

/// Checks the arguments; the error is a usage error.
pub fn validate(a: &KvArgs) -> Result<(), String> {
    if a.connections > a.clients {
        return Err(format!(
            "--connections {} must be at most --clients {}",
            a.connections, a.clients
        ));
    }
    if !(a.duration_max.is_finite() && a.duration_max > 0.0) {
        return Err("--duration-max must be a positive number of seconds".into());
    }
    let needed = a.key_prefix.len() + digits(a.keys_space - 1);
    if a.key_bytes < needed {
        return Err(format!(
            "--key-bytes {} is too small for --key-prefix {:?} and --keys-space {} (needs {needed})",
            a.key_bytes, a.key_prefix, a.keys_space
        ));
    }
    if a.value_bytes > 64 << 20 {
        return Err("--value-bytes must be at most 64 MiB".into());
    }
    Ok(())
}

/// Per kind of request in a mixed run.
#[derive(Debug, Serialize, PartialEq)]
pub struct OpResult {
    pub ops: u64,
    pub errors: u64,
    pub latency_ms: LatencyMs,
}

/// The JSON object `--output json` prints: the summary first (the fields
/// `bench put` always printed), then what was run.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub result: BenchResult,
    pub target: Target,
    pub workload: Workload,
    pub endpoint: String,
    pub clients: u64,
    pub connections: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub keys_space: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_percent: Option<u8>,
    /// CPU over the measured phase (the fill not included).
    pub cpu: CpuReport,
    /// Mixed runs: the reads and the puts apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gets: Option<OpResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub puts: Option<OpResult>,
}

fn consistency_name(c: ConsistencyArg) -> &'static str {
    match c {
        ConsistencyArg::Linearizable => "linearizable",
        ConsistencyArg::Serializable => "serializable",
    }
}

pub async fn put(client: &mut Client, out: &mut Printer, a: PutArgs) -> Result<(), CliError> {
    let mix = Mix {
        read_percent: 0,
        serializable: false,
        lease: a.lease,
    };
    bench(client, out, a.kv, Workload::Put, mix, false, None).await
}

pub async fn get(client: &mut Client, out: &mut Printer, a: GetArgs) -> Result<(), CliError> {
    reads(client, out, a, Workload::Get, 100).await
}

pub async fn mixed(client: &mut Client, out: &mut Printer, a: MixedArgs) -> Result<(), CliError> {
    reads(client, out, a.reads, Workload::Mixed, a.read_percent).await
}

/// A workload with reads: `read_percent` of its requests, puts the rest.
async fn reads(
    client: &mut Client,
    out: &mut Printer,
    a: GetArgs,
    workload: Workload,
    read_percent: u8,
) -> Result<(), CliError> {
    let mix = Mix {
        read_percent: read_percent.into(),
        serializable: a.consistency == ConsistencyArg::Serializable,
        lease: 0,
    };
    let c = Some(a.consistency);
    bench(client, out, a.kv, workload, mix, a.fill, c).await
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
}

struct TaskResult {
    all: Histogram<u64>,
    gets: Histogram<u64>,
    puts: Histogram<u64>,
    get: Tally,
    put: Tally,
    first_error: Option<String>,
}

fn describe(
    r: Result<Result<(), tonic::Status>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(s)) => Err(format!("{}: {}", code_name(s.code()), s.message())),
        Err(_) => Err(format!("DEADLINE_EXCEEDED: no answer within {timeout:?}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn bench(
    client: &mut Client,
    out: &mut Printer,
    a: KvArgs,
    workload: Workload,
    mix: Mix,
    fill: bool,
    consistency: Option<ConsistencyArg>,
) -> Result<(), CliError> {
    validate(&a).map_err(CliError::Usage)?;
    let (endpoint, conns) = target::connect(a.target, client, a.connections as usize).await?;
    let timeout = client.timeout();
    let seed = seed();
    let value: Arc<Vec<u8>> = Arc::new(random_value(&mut Rng::new(seed), a.value_bytes));
    let args = Arc::new(a.clone());
    let stop = Stop::new(Duration::from_secs_f64(a.duration_max));

    if fill {
        let t0 = Instant::now();
        let filled = fill_keys(&conns, &args, &value, timeout, stop.handle()).await?;
        if !out.json {
            out.line(format!(
                "filled {filled} keys in {:.3} s",
                t0.elapsed().as_secs_f64()
            ))?;
        }
    }

    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = CpuSample::take(&a.cpu_pids);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients as usize);
    for i in 0..a.clients {
        let mut conn = conns[(i as usize) % conns.len()].clone();
        let (issued, stop, value, args) =
            (issued.clone(), stop.handle(), value.clone(), args.clone());
        let mut r = TaskResult {
            all: new_histogram()?,
            gets: new_histogram()?,
            puts: new_histogram()?,
            get: Tally::default(),
            put: Tally::default(),
            first_error: None,
        };
        let mut rng = Rng::nth(seed, i);
        tasks.push(tokio::spawn(async move {
            loop {
                if stop.should_stop() || issued.fetch_add(1, Ordering::Relaxed) >= args.total {
                    break;
                }
                let n = rng.next_u64();
                let key = make_key(&args.key_prefix, n % args.keys_space, args.key_bytes);
                // The high bits pick the kind of request, the low ones the key.
                let is_get = (n >> 40) % 100 < mix.read_percent;
                let t0 = Instant::now();
                let res = if is_get {
                    tokio::time::timeout(timeout, conn.get(key, mix.serializable)).await
                } else {
                    let v = value.as_ref().clone();
                    tokio::time::timeout(timeout, conn.put(key, v, mix.lease)).await
                };
                let us = (t0.elapsed().as_micros() as u64).max(1);
                let (hist, tally) = if is_get {
                    (&mut r.gets, &mut r.get)
                } else {
                    (&mut r.puts, &mut r.put)
                };
                match describe(res, timeout) {
                    Ok(()) => {
                        hist.saturating_record(us);
                        r.all.saturating_record(us);
                        tally.ok += 1;
                    }
                    Err(e) => {
                        tally.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            r
        }));
    }

    let mut all = new_histogram()?;
    let mut gets = new_histogram()?;
    let mut puts = new_histogram()?;
    let (mut get, mut put) = (Tally::default(), Tally::default());
    let mut first_error = None::<String>;
    let mut task_failures = 0;
    for t in futures::future::join_all(tasks).await {
        match t {
            Ok(r) => {
                // Same bounds on every side: adding cannot fail.
                let _ = all.add(&r.all);
                let _ = gets.add(&r.gets);
                let _ = puts.add(&r.puts);
                get.ok += r.get.ok;
                get.errors += r.get.errors;
                put.ok += r.put.ok;
                put.errors += r.put.errors;
                if first_error.is_none() {
                    first_error = r.first_error;
                }
            }
            Err(e) => {
                task_failures += 1;
                first_error.get_or_insert_with(|| format!("client task failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu_after = CpuSample::take(&a.cpu_pids);
    let ok = get.ok + put.ok;
    let errors = get.errors + put.errors + task_failures;
    let per_op = |h: &Histogram<u64>, t: &Tally| OpResult {
        ops: t.ok,
        errors: t.errors,
        latency_ms: latency_ms(h),
    };
    let report = Report {
        result: summarize(&all, ok, errors, elapsed),
        target: a.target,
        workload,
        endpoint: endpoint.clone(),
        clients: a.clients,
        connections: a.connections,
        key_bytes: a.key_bytes,
        value_bytes: a.value_bytes,
        keys_space: a.keys_space,
        consistency: consistency.map(consistency_name),
        cpu: CpuReport::between(&cpu_before, &cpu_after, ok + errors),
        read_percent: (workload == Workload::Mixed).then_some(mix.read_percent as u8),
        gets: (workload == Workload::Mixed).then(|| per_op(&gets, &get)),
        puts: (workload == Workload::Mixed).then(|| per_op(&puts, &put)),
    };

    if out.json {
        out.json_line(&report)?;
    } else {
        print_text(out, &report)?;
    }
    if ok + errors < a.total {
        let why = if stop.interrupted() {
            "interrupted"
        } else {
            "stopped at --duration-max"
        };
        eprintln!("note: {why} after {} of {} requests", ok + errors, a.total);
    }
    if let Some(e) = &first_error {
        eprintln!("first error: {e}");
    }
    if ok == 0 && errors > 0 {
        return Err(CliError::Rpc(tonic::Status::unavailable(format!(
            "every request failed; first error: {}",
            first_error.unwrap_or_default()
        ))));
    }
    Ok(())
}

fn print_text(out: &mut Printer, r: &Report) -> Result<(), CliError> {
    let what = match (r.workload, r.consistency) {
        (Workload::Put, _) => "put".to_string(),
        (Workload::Get, Some(c)) => format!("get ({c})"),
        (Workload::Mixed, Some(c)) => format!(
            "mixed ({}% {c} gets, {}% puts)",
            r.read_percent.unwrap_or(0),
            100 - r.read_percent.unwrap_or(0)
        ),
        (w, None) => format!("{w:?}"),
    };
    let target = match r.target {
        Target::Utopia => "utopia",
        Target::Etcd => "etcd",
    };
    out.line(format!(
        "bench {what} on {target}: {} clients, {} connection(s) to {}, {}-byte keys, {}-byte values, {} distinct keys",
        r.clients, r.connections, r.endpoint, r.key_bytes, r.value_bytes, r.keys_space
    ))?;
    let s = &r.result;
    out.line(format!(
        "{} ops, {} errors in {:.3} s: {:.1} ops/s",
        s.ops, s.errors, s.seconds, s.ops_per_second
    ))?;
    let line = |l: &LatencyMs| {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )
    };
    out.line(format!("latency ms: {}", line(&s.latency_ms)))?;
    let c = &r.cpu;
    let per = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    out.line(format!(
        "cpu ms per 1,000 ops: servers {} (pids {}), load generator {}",
        per(c.servers_ms_per_1000_ops),
        if c.servers.is_empty() {
            "none given".to_string()
        } else {
            c.servers
                .iter()
                .map(|p| format!("{} {:.0} ms", p.pid, p.cpu_ms))
                .collect::<Vec<_>>()
                .join(", ")
        },
        per(c.client_ms_per_1000_ops)
    ))?;
    for (name, op) in [("gets", &r.gets), ("puts", &r.puts)] {
        if let Some(op) = op {
            out.line(format!(
                "  {name}: {} ops, {} errors; latency ms: {}",
                op.ops,
                op.errors,
                line(&op.latency_ms)
            ))?;
        }
    }
    Ok(())
}

/// Puts every key of the key space once, with the same concurrency as the
/// run. Fails on the first error: reads of a half-filled space would measure
/// something else.
async fn fill_keys(
    conns: &[Conn],
    args: &Arc<KvArgs>,
    value: &Arc<Vec<u8>>,
    timeout: Duration,
    stop: StopHandle,
) -> Result<u64, CliError> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.clients.min(args.keys_space))
        .map(|i| {
            let mut conn = conns[(i as usize) % conns.len()].clone();
            let (next, args, value, stop) =
                (next.clone(), args.clone(), value.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= args.keys_space || stop.should_stop() {
                        return Ok::<(), String>(());
                    }
                    let key = make_key(&args.key_prefix, n, args.key_bytes);
                    let v = value.as_ref().clone();
                    let r = tokio::time::timeout(timeout, conn.put(key, v, 0)).await;
                    describe(r, timeout)?;
                }
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        match t {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(CliError::Rpc(tonic::Status::unavailable(format!(
                    "filling the key space failed: {e}"
                ))))
            }
            Err(e) => {
                return Err(CliError::Rpc(tonic::Status::internal(format!(
                    "filling the key space failed: {e}"
                ))))
            }
        }
    }
    Ok(next.load(Ordering::Relaxed).min(args.keys_space))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> KvArgs {
        KvArgs {
            target: Target::Utopia,
            clients: 4,
            total: 100,
            value_bytes: 8,
            key_bytes: 16,
            keys_space: 100_000,
            key_prefix: "bench/".into(),
            connections: 1,
            duration_max: 300.0,
            cpu_pids: Vec::new(),
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&args()).is_ok());
        assert!(validate(&KvArgs {
            connections: 5,
            ..args()
        })
        .is_err());
        assert!(validate(&KvArgs {
            key_bytes: 10,
            ..args()
        })
        .is_err());
        assert!(validate(&KvArgs {
            key_bytes: 11,
            ..args()
        })
        .is_ok());
        assert!(validate(&KvArgs {
            duration_max: 0.0,
            ..args()
        })
        .is_err());
    }

    #[test]
    fn report_json_keeps_the_summary_first() {
        let h = new_histogram().unwrap();
        let r = Report {
            result: summarize(&h, 10, 0, Duration::from_secs(1)),
            target: Target::Etcd,
            workload: Workload::Mixed,
            endpoint: "127.0.0.1:2379".into(),
            clients: 4,
            connections: 1,
            key_bytes: 16,
            value_bytes: 8,
            keys_space: 100,
            consistency: Some("linearizable"),
            read_percent: Some(90),
            cpu: CpuReport::between(&CpuSample::take(&[]), &CpuSample::take(&[]), 10),
            gets: Some(OpResult {
                ops: 9,
                errors: 0,
                latency_ms: latency_ms(&h),
            }),
            puts: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(
            s.starts_with(
                r#"{"ops":10,"errors":0,"seconds":1.0,"ops_per_second":10.0,"latency_ms":{"#
            ),
            "{s}"
        );
        assert!(s.contains(r#""target":"etcd","workload":"mixed""#), "{s}");
        assert!(s.contains(r#""gets":{"ops":9"#), "{s}");
        assert!(!s.contains("puts"), "{s}");
        assert!(s.contains(r#""cpu":{"client_ms_per_1000_ops":"#), "{s}");
    }
}

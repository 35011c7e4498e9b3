//! `utopia bench put`: N concurrent clients issue M puts in total over C
//! HTTP/2 connections, each request's latency recorded in an HDR histogram;
//! prints throughput, latency percentiles and the error count.
//!
//! The run stops after `--total` puts, after `--duration-max` seconds, or on
//! Ctrl-C, whichever comes first; the numbers cover what was done. Keys are
//! `--key-prefix` followed by a zero-padded pseudo-random number below
//! `--keys-space`, padded to `--key-bytes` bytes. Exits 3 when every put
//! failed, 0 otherwise (errors are counted in the output).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::Printer;
use super::{code_name, CliError};

#[derive(Debug, Clone, Args)]
pub struct BenchPutArgs {
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,
    /// Puts in total.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub total: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Bytes per key, prefix included.
    #[arg(long, default_value_t = 16)]
    pub key_bytes: usize,
    /// Distinct keys to choose from.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys_space: u64,
    /// Key prefix.
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// HTTP/2 connections shared by the clients (1..=clients).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Stop after this many seconds even if --total is not reached.
    #[arg(long, default_value_t = 300.0)]
    pub duration_max: f64,
    /// Attach every key to this lease (decimal or 0x-hex).
    #[arg(long, value_parser = super::parse_lease_id, default_value = "0")]
    pub lease: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BenchResult {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_second: f64,
    pub latency_ms: LatencyMs,
}

/// Latencies are recorded in microseconds, 1 µs .. 1 hour, 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| CliError::Usage(format!("histogram: {e}")))
}

pub fn summarize(hist: &Histogram<u64>, ops: u64, errors: u64, elapsed: Duration) -> BenchResult {
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |q: f64| {
        if hist.is_empty() {
            0.0
        } else {
            ms(hist.value_at_quantile(q))
        }
    };
    let seconds = elapsed.as_secs_f64();
    BenchResult {
        ops,
        errors,
        seconds: (seconds * 1000.0).round() / 1000.0,
        ops_per_second: if seconds > 0.0 {
            (ops as f64 / seconds * 10.0).round() / 10.0
        } else {
            0.0
        },
        latency_ms: LatencyMs {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if hist.is_empty() { 0.0 } else { ms(hist.max()) },
        },
    }
}

/// xorshift64*: cheap, good enough to spread keys.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// `prefix` + `n` zero-padded so that the key is `key_bytes` long.
fn make_key(prefix: &str, n: u64, key_bytes: usize) -> Vec<u8> {
    let width = key_bytes.saturating_sub(prefix.len());
    format!("{prefix}{n:0width$}").into_bytes()
}

/// Checks the arguments; the error is a usage error.
pub fn validate(a: &BenchPutArgs) -> Result<(), String> {
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

struct TaskResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

pub async fn put(client: &mut Client, out: &mut Printer, a: BenchPutArgs) -> Result<(), CliError> {
    validate(&a).map_err(CliError::Usage)?;
    let (endpoint, channels) = client.connect_many(a.connections as usize).await?;
    let timeout = client.timeout();
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut value_rng = Rng::new(seed);
    let value: Arc<Vec<u8>> = Arc::new(
        (0..a.value_bytes)
            .map(|_| b'a' + (value_rng.next() % 26) as u8)
            .collect(),
    );
    let args = Arc::new(a.clone());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration_max);

    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };

    let mut tasks = Vec::with_capacity(a.clients as usize);
    for i in 0..a.clients {
        let kv = client::kv(channels[(i as usize) % channels.len()].clone());
        let (issued, stop, value, args) =
            (issued.clone(), stop.clone(), value.clone(), args.clone());
        let mut hist = new_histogram()?;
        let mut rng = Rng::new(seed ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                if issued.fetch_add(1, Ordering::Relaxed) >= args.total {
                    break;
                }
                let key = make_key(
                    &args.key_prefix,
                    rng.next() % args.keys_space,
                    args.key_bytes,
                );
                let req = pb::PutRequest {
                    key,
                    value: value.as_ref().clone(),
                    lease: args.lease,
                    prev_kv: false,
                };
                let mut kv = kv.clone();
                let t0 = Instant::now();
                let r = tokio::time::timeout(timeout, kv.put(req)).await;
                let us = t0.elapsed().as_micros() as u64;
                match r {
                    Ok(Ok(_)) => {
                        hist.saturating_record(us.max(1));
                        ok += 1;
                    }
                    Ok(Err(s)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("{}: {}", code_name(s.code()), s.message())
                        });
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("DEADLINE_EXCEEDED: no answer within {timeout:?}")
                        });
                    }
                }
            }
            TaskResult {
                hist,
                ok,
                errors,
                first_error,
            }
        }));
    }

    let mut hist = new_histogram()?;
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
    for t in futures::future::join_all(tasks).await {
        match t {
            Ok(r) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = hist.add(&r.hist);
                ok += r.ok;
                errors += r.errors;
                if first_error.is_none() {
                    first_error = r.first_error;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("client task failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    stopper.abort();
    let result = summarize(&hist, ok, errors, elapsed);

    if out.json {
        out.json_line(&result)?;
    } else {
        out.line(format!(
            "bench put: {} clients, {} connection(s) to {endpoint}, {}-byte keys, {}-byte values, {} distinct keys",
            a.clients, a.connections, a.key_bytes, a.value_bytes, a.keys_space
        ))?;
        out.line(format!(
            "{} ops, {} errors in {:.3} s: {:.1} ops/s",
            result.ops, result.errors, result.seconds, result.ops_per_second
        ))?;
        let l = &result.latency_ms;
        out.line(format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        ))?;
    }
    if ok + errors < a.total {
        let why = if stop.load(Ordering::Relaxed) {
            "interrupted"
        } else {
            "stopped at --duration-max"
        };
        eprintln!("note: {why} after {} of {} puts", ok + errors, a.total);
    }
    if let Some(e) = &first_error {
        eprintln!("first error: {e}");
    }
    if ok == 0 && errors > 0 {
        return Err(CliError::Rpc(tonic::Status::unavailable(format!(
            "every put failed; first error: {}",
            first_error.unwrap_or_default()
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchPutArgs {
        BenchPutArgs {
            clients: 4,
            total: 100,
            value_bytes: 8,
            key_bytes: 16,
            keys_space: 100_000,
            key_prefix: "bench/".into(),
            connections: 1,
            duration_max: 300.0,
            lease: 0,
        }
    }

    #[test]
    fn keys_have_the_requested_length() {
        assert_eq!(make_key("bench/", 42, 16), b"bench/0000000042");
        assert_eq!(make_key("", 7, 3), b"007");
        assert_eq!(digits(0), 1);
        assert_eq!(digits(99_999), 5);
        assert_eq!(digits(100_000), 6);
    }

    #[test]
    fn validation() {
        assert!(validate(&args()).is_ok());
        assert!(validate(&BenchPutArgs {
            connections: 5,
            ..args()
        })
        .is_err());
        assert!(validate(&BenchPutArgs {
            key_bytes: 10,
            ..args()
        })
        .is_err());
        assert!(validate(&BenchPutArgs {
            key_bytes: 11,
            ..args()
        })
        .is_ok());
        assert!(validate(&BenchPutArgs {
            duration_max: 0.0,
            ..args()
        })
        .is_err());
    }

    #[test]
    fn summary_and_json_shape() {
        let mut h = new_histogram().unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let r = summarize(&h, 1000, 2, Duration::from_secs(2));
        assert_eq!(r.ops_per_second, 500.0);
        assert!((r.latency_ms.p50 - 5.0).abs() < 0.01, "{r:?}");
        assert!((r.latency_ms.max - 10.0).abs() < 0.01, "{r:?}");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for f in ["ops", "errors", "seconds", "ops_per_second"] {
            assert!(v[f].is_number(), "{f}");
        }
        for f in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][f].is_number(), "{f}");
        }
        let empty = summarize(&new_histogram().unwrap(), 0, 0, Duration::ZERO);
        assert_eq!(empty.latency_ms.max, 0.0);
        assert_eq!(empty.ops_per_second, 0.0);
    }
}

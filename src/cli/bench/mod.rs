//! `utopia bench`: load generators that print throughput, latency
//! percentiles and the error count (text, or one JSON object with
//! `--output json`).
//!
//! - [`kv`]: `bench put|get|mixed`, against utopia or, with `--target etcd`,
//!   against etcd's v3 gRPC API, with the same options, so that one load
//!   generator measures both systems ([`target`] holds the two clients).
//!
//! What every benchmark shares lives here: the latency histogram and its
//! summary ([`summarize`]), the key and value generators, and the stop
//! condition ([`Stop`]: `--duration-max` or Ctrl-C). A new benchmark (for
//! example one that publishes over MQTT) is a module of its own beside
//! [`kv`], one variant in [`BenchCommand`] and one arm in [`run`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::Client;
use super::output::Printer;
use super::CliError;

pub mod cpu;
pub mod kv;
pub mod target;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Concurrent puts; prints throughput and latency percentiles.
    Put(kv::PutArgs),
    /// Concurrent single-key reads (linearizable unless --consistency serializable).
    Get(kv::GetArgs),
    /// Concurrent reads and puts, --read-percent of them reads.
    Mixed(kv::MixedArgs),
    /// MQTT ingest through a broker into the cluster, against the broker's
    /// raw delivery rate in the same run.
    Mqtt(super::bench_mqtt::BenchMqttArgs),
}

pub async fn run(
    client: &mut Client,
    out: &mut Printer,
    cmd: BenchCommand,
) -> Result<(), CliError> {
    match cmd {
        BenchCommand::Put(a) => kv::put(client, out, a).await,
        BenchCommand::Get(a) => kv::get(client, out, a).await,
        BenchCommand::Mixed(a) => kv::mixed(client, out, a).await,
        BenchCommand::Mqtt(a) => super::bench_mqtt::mqtt(client, out, a).await,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchResult {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_second: f64,
    pub latency_ms: LatencyMs,
}

/// Latencies are recorded in microseconds, 1 µs .. 1 hour, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| CliError::Usage(format!("histogram: {e}")))
}

pub fn latency_ms(hist: &Histogram<u64>) -> LatencyMs {
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |q: f64| {
        if hist.is_empty() {
            0.0
        } else {
            ms(hist.value_at_quantile(q))
        }
    };
    LatencyMs {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if hist.is_empty() { 0.0 } else { ms(hist.max()) },
    }
}

pub fn summarize(hist: &Histogram<u64>, ops: u64, errors: u64, elapsed: Duration) -> BenchResult {
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
        latency_ms: latency_ms(hist),
    }
}

/// xorshift64*: cheap, good enough to spread keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// The `i`th of several independent generators seeded from `seed`.
    pub fn nth(seed: u64, i: u64) -> Self {
        Rng::new(seed ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// A seed from the clock.
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// `n` random lowercase letters.
pub fn random_value(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| b'a' + (rng.next_u64() % 26) as u8).collect()
}

pub fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// `prefix` + `n` zero-padded so that the key is `key_bytes` long.
pub fn make_key(prefix: &str, n: u64, key_bytes: usize) -> Vec<u8> {
    let width = key_bytes.saturating_sub(prefix.len());
    format!("{prefix}{n:0width$}").into_bytes()
}

/// When a run stops early: at its deadline or on Ctrl-C. Dropping it stops
/// listening for Ctrl-C.
pub struct Stop {
    interrupted: Arc<AtomicBool>,
    deadline: Instant,
    listener: tokio::task::JoinHandle<()>,
}

impl Stop {
    pub fn new(duration_max: Duration) -> Self {
        let interrupted = Arc::new(AtomicBool::new(false));
        let listener = {
            let interrupted = interrupted.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    interrupted.store(true, Ordering::Relaxed);
                }
            })
        };
        Stop {
            interrupted,
            deadline: Instant::now() + duration_max,
            listener,
        }
    }

    /// A cheap handle for the client tasks.
    pub fn handle(&self) -> StopHandle {
        StopHandle {
            interrupted: self.interrupted.clone(),
            deadline: self.deadline,
        }
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[derive(Clone)]
pub struct StopHandle {
    interrupted: Arc<AtomicBool>,
    deadline: Instant,
}

impl StopHandle {
    pub fn should_stop(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_length() {
        assert_eq!(make_key("bench/", 42, 16), b"bench/0000000042");
        assert_eq!(make_key("", 7, 3), b"007");
        assert_eq!(digits(0), 1);
        assert_eq!(digits(99_999), 5);
        assert_eq!(digits(100_000), 6);
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

    #[test]
    fn values_are_letters() {
        let v = random_value(&mut Rng::new(7), 100);
        assert_eq!(v.len(), 100);
        assert!(v.iter().all(u8::is_ascii_lowercase));
    }
}

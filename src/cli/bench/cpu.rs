//! CPU time of processes over a benchmark's measured phase: user + system
//! time from `/proc/PID/stat` (every thread, live and exited), sampled at the
//! start and the end of the phase, for the servers named with `--cpu-pids`
//! and for the load generator itself. Linux only; elsewhere, or for a
//! process that is gone, the figure is absent rather than wrong.

use std::time::Duration;

use serde::Serialize;

/// User + system CPU time of process `pid` so far, or `None` when it cannot
/// be read (no such process, not Linux).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The CPU time of the load generator (this process).
fn own_cpu() -> Option<Duration> {
    process_cpu(std::process::id())
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses, so fields are
/// counted from the last `)`: state is the first after it, utime the 12th,
/// stime the 13th.
fn parse_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// The kernel reports these times in USER_HZ ticks, which is 100 on every
/// architecture it still supports (`sysconf(_SC_CLK_TCK)`), so 10 ms each.
const USER_HZ: u64 = 100;

fn ticks(n: u64) -> Duration {
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / USER_HZ)
}

/// CPU times at one moment: the watched processes', then this process's.
#[derive(Debug, Clone)]
pub struct CpuSample {
    watched: Vec<(u32, Option<Duration>)>,
    own: Option<Duration>,
}

impl CpuSample {
    pub fn take(pids: &[u32]) -> Self {
        CpuSample {
            watched: pids.iter().map(|&p| (p, process_cpu(p))).collect(),
            own: own_cpu(),
        }
    }
}

/// One watched process's CPU over the phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessCpu {
    pub pid: u32,
    pub cpu_ms: f64,
}

/// CPU over a measured phase of `ops` operations.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuReport {
    /// Summed over the watched processes (absent when none was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers_ms_per_1000_ops: Option<f64>,
    /// The load generator's own CPU.
    pub client_ms_per_1000_ops: Option<f64>,
    pub servers: Vec<ProcessCpu>,
    pub client_cpu_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn per_1000(ms: f64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        (ms * 1000.0 / ops as f64 * 100.0).round() / 100.0
    }
}

impl CpuReport {
    /// The difference between two samples of the same processes; a process
    /// that could not be read at either end makes the servers' sum absent.
    pub fn between(before: &CpuSample, after: &CpuSample, ops: u64) -> Self {
        let mut servers = Vec::with_capacity(before.watched.len());
        let mut complete = !before.watched.is_empty();
        for ((pid, b), (_, a)) in before.watched.iter().zip(&after.watched) {
            match (b, a) {
                (Some(b), Some(a)) => servers.push(ProcessCpu {
                    pid: *pid,
                    cpu_ms: ms(a.saturating_sub(*b)),
                }),
                _ => complete = false,
            }
        }
        let sum: f64 = servers.iter().map(|s| s.cpu_ms).sum();
        let client = match (before.own, after.own) {
            (Some(b), Some(a)) => Some(ms(a.saturating_sub(b))),
            _ => None,
        };
        CpuReport {
            servers_ms_per_1000_ops: complete.then(|| per_1000(sum, ops)),
            client_ms_per_1000_ops: client.map(|c| per_1000(c, ops)),
            servers,
            client_cpu_ms: client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let hz = USER_HZ;
        let line = format!(
            "4242 (a b) (c)) S 1 4242 4242 0 -1 4194304 100 0 0 0 {} {} 0 0 20 0 3 0",
            2 * hz,
            hz / 2
        );
        assert_eq!(parse_stat(&line), Some(Duration::from_millis(2500)));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn this_process_cpu_time_grows_while_it_computes() {
        let start = own_cpu().expect("/proc/self/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 1u64;
        while own_cpu().expect("/proc/self/stat") <= start {
            assert!(std::time::Instant::now() < deadline, "CPU time never grew");
            for i in 0..100_000u64 {
                x = std::hint::black_box(x ^ i.wrapping_mul(31));
            }
        }
    }

    #[test]
    fn a_report_sums_the_watched_processes() {
        let before = CpuSample {
            watched: vec![
                (1, Some(Duration::from_millis(100))),
                (2, Some(Duration::ZERO)),
            ],
            own: Some(Duration::from_millis(10)),
        };
        let after = CpuSample {
            watched: vec![
                (1, Some(Duration::from_millis(300))),
                (2, Some(Duration::from_millis(100))),
            ],
            own: Some(Duration::from_millis(60)),
        };
        let r = CpuReport::between(&before, &after, 2000);
        assert_eq!(r.servers_ms_per_1000_ops, Some(150.0));
        assert_eq!(r.client_ms_per_1000_ops, Some(25.0));
        let gone = CpuSample {
            watched: vec![(1, None), (2, Some(Duration::from_millis(100)))],
            own: None,
        };
        let r = CpuReport::between(&before, &gone, 2000);
        assert_eq!(r.servers_ms_per_1000_ops, None);
        assert_eq!(r.client_ms_per_1000_ops, None);
    }
}

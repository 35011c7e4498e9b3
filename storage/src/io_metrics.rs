//! What the storage layer counts for the server's metrics: the Raft log's
//! fsync latency, how long applying a batch of committed entries takes,
//! the snapshots built and installed, and how often the applier's key
//! cache spared a put its read.
//!
//! Lock-free atomics, readable at any moment; the server registers them
//! with its Prometheus registry (this crate knows no metrics library).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the fsync and apply latency buckets, in microseconds:
/// 50 µs to about 3.3 s, doubling.
pub const FSYNC_BUCKETS_US: [u64; 17] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600,
    819_200, 1_638_400, 3_276_800,
];

/// A latency histogram with fixed buckets (`bounds_us`, plus one for
/// everything above the last), counted with atomics.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds_us: &'static [u64],
    /// One per bound, then the overflow bucket; not cumulative.
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A histogram as it was read: per-bucket counts (not cumulative; the last
/// is above every bound), their sum in seconds, and their count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramReading {
    pub bounds_s: Vec<f64>,
    pub buckets: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl LatencyHistogram {
    pub fn new(bounds_us: &'static [u64]) -> Self {
        Self {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self.bounds_us.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now. Read bucket by bucket while others may observe: the
    /// count is the buckets' sum, so that the reading is self-consistent.
    pub fn read(&self) -> HistogramReading {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramReading {
            bounds_s: self.bounds_us.iter().map(|b| *b as f64 / 1e6).collect(),
            count: buckets.iter().sum(),
            buckets,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The storage layer's figures, shared by every handle on one database.
#[derive(Debug)]
pub struct StorageMetrics {
    /// Synced writes of the Raft log: the flusher's WAL syncs (one per
    /// group of appends) and the synced vote writes.
    pub log_fsync: LatencyHistogram,
    /// Applying one batch of committed entries, from its first entry to
    /// the state machine's write: while it runs, nothing committed after
    /// it is applied on this member, and clients waiting for those
    /// entries wait.
    pub apply: LatencyHistogram,
    /// Snapshots this member built of its state machine.
    pub snapshots_built: AtomicU64,
    /// Snapshots from a leader this member installed.
    pub snapshots_installed: AtomicU64,
    /// Puts whose key's revisions came from the key cache
    /// ([`crate::key_cache`]), and those that read them from the store (a
    /// new key, or one the cache does not hold).
    pub key_cache_hits: AtomicU64,
    pub key_cache_misses: AtomicU64,
    /// Bytes the key cache counts itself at.
    pub key_cache_bytes: AtomicU64,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        Self {
            log_fsync: LatencyHistogram::new(&FSYNC_BUCKETS_US),
            apply: LatencyHistogram::new(&FSYNC_BUCKETS_US),
            snapshots_built: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            key_cache_hits: AtomicU64::new(0),
            key_cache_misses: AtomicU64::new(0),
            key_cache_bytes: AtomicU64::new(0),
        }
    }
}

impl StorageMetrics {
    pub(crate) fn built(&self) {
        self.snapshots_built.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn installed(&self) {
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one applied batch's key cache lookups, and the cache's size
    /// after it.
    pub(crate) fn key_cache(&self, hits: u64, misses: u64, bytes: u64) {
        self.key_cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.key_cache_misses.fetch_add(misses, Ordering::Relaxed);
        self.key_cache_bytes.store(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_pass() {
        let h = LatencyHistogram::new(&FSYNC_BUCKETS_US);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(10));
        let r = h.read();
        assert_eq!(r.count, 3);
        assert_eq!(r.buckets[0], 1, "50 µs is within the 50 µs bound");
        assert_eq!(r.buckets[1], 1);
        assert_eq!(r.buckets[FSYNC_BUCKETS_US.len()], 1, "above every bound");
        assert_eq!(r.bounds_s[0], 0.00005);
        assert!((r.sum_s - 10.000101).abs() < 1e-9, "{}", r.sum_s);
    }
}

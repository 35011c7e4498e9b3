//! The ingest lag (a copy's arrival → its commit applied on this node) as a
//! histogram, kept in the core and published with the gauges.

/// Upper bounds of the ingest-lag histogram, in milliseconds.
pub const LAG_BUCKETS_MS: [u64; 20] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000, 2000, 5000, 30_000,
];

/// Cumulative counts per bucket (then +Inf), the sum and the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagHistogram {
    pub buckets: [u64; LAG_BUCKETS_MS.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            buckets: [0; LAG_BUCKETS_MS.len() + 1],
            sum_ms: 0,
            count: 0,
        }
    }
}

impl LagHistogram {
    pub fn observe(&mut self, ms: u64) {
        self.sum_ms += ms;
        self.count += 1;
        let first = LAG_BUCKETS_MS.partition_point(|le| *le < ms);
        for b in &mut self.buckets[first..] {
            *b += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_inclusive_bounds() {
        let mut h = LagHistogram::default();
        for ms in [0, 1, 2, 4, 30_000, 30_001] {
            h.observe(ms);
        }
        assert_eq!(h.count, 6);
        assert_eq!(h.sum_ms, 60_008);
        assert_eq!(h.buckets[0], 2, "le=1 holds 0 and 1");
        assert_eq!(h.buckets[1], 3, "le=2");
        assert_eq!(h.buckets[3], 4, "le=5");
        assert_eq!(h.buckets[LAG_BUCKETS_MS.len() - 1], 5, "le=30000");
        assert_eq!(h.buckets[LAG_BUCKETS_MS.len()], 6, "+Inf");
    }
}

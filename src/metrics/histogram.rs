//! Histograms the registry reads from elsewhere when it is encoded: the
//! storage layer's atomics, and the ingest lag the ingest driver publishes.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use utopia_storage::io_metrics::HistogramReading;

use crate::mqtt::ingest::{LagHistogram, LAG_BUCKETS_MS};

/// A histogram kept elsewhere (atomics, or figures a task publishes),
/// read when the registry is encoded.
#[derive(Clone)]
pub struct ReadHistogram(pub(super) Arc<dyn Fn() -> HistogramReading + Send + Sync>);

impl std::fmt::Debug for ReadHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadHistogram")
    }
}

impl TypedMetric for ReadHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ReadHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let r = (self.0)();
        let buckets: Vec<(f64, u64)> = r
            .bounds_s
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(r.buckets.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(r.sum_s, r.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The ingest lag as the ingest driver last published it.
pub(super) fn lag_reading(lag: &LagHistogram) -> HistogramReading {
    // The core keeps cumulative counts; a reading holds them per bucket.
    let mut buckets = Vec::with_capacity(lag.buckets.len());
    let mut below = 0;
    for c in lag.buckets {
        buckets.push(c.saturating_sub(below));
        below = c;
    }
    HistogramReading {
        bounds_s: LAG_BUCKETS_MS.iter().map(|ms| *ms as f64 / 1e3).collect(),
        buckets,
        sum_s: lag.sum_ms as f64 / 1e3,
        count: lag.count,
    }
}

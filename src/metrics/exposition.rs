//! Reading the exposition back: what `utopia status` shows is the text
//! `GET /metrics` renders, parsed into counters, gauges and histogram
//! summaries.

use std::collections::BTreeMap;

use super::PREFIX;

/// A histogram as `utopia status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSummary {
    /// Its name and labels, as counters are named (`name{k="v"}`).
    pub name: String,
    pub count: u64,
    /// In the histogram's unit (seconds).
    pub sum: f64,
    /// Estimated from the buckets as Prometheus' `histogram_quantile` does
    /// (linear within the bucket; the last finite bound when the quantile
    /// falls above it).
    pub p50: f64,
    pub p99: f64,
    /// (upper bound, cumulative count), the last bound +Inf.
    pub buckets: Vec<(f64, u64)>,
}

/// What `utopia status` shows: every sample the endpoint renders, named
/// without the `utopia_` prefix; counters and gauges as integers (a
/// negative gauge as 0), histograms summarised.
#[derive(Debug, Default)]
pub struct Reading {
    pub values: BTreeMap<String, u64>,
    pub histograms: Vec<HistogramSummary>,
}

/// Buckets (upper bound, cumulative count), sum and count of one series.
#[derive(Default)]
struct HistogramSeries {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Reads the text format [`render`](super::render) writes.
pub(super) fn parse(text: &str) -> Reading {
    let mut histogram_families = std::collections::BTreeSet::new();
    let mut series: BTreeMap<String, HistogramSeries> = BTreeMap::new();
    let mut values = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, "histogram")) = rest.split_once(' ') {
                histogram_families.insert(name.to_string());
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            histogram_families.contains(base).then_some((base, *suffix))
        });
        let shown = |name: &str, labels: &[(String, String)]| {
            let name = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix('_'))
                .unwrap_or(name);
            if labels.is_empty() {
                return name.to_string();
            }
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        match family {
            Some((base, suffix)) => {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.clone());
                let rest: Vec<(String, String)> =
                    labels.into_iter().filter(|(k, _)| k != "le").collect();
                let s = series.entry(shown(base, &rest)).or_default();
                match suffix {
                    "_bucket" => {
                        let bound = match le.as_deref() {
                            Some("+Inf") => f64::INFINITY,
                            Some(v) => v.parse().unwrap_or(f64::INFINITY),
                            None => f64::INFINITY,
                        };
                        s.buckets.push((bound, as_count(value)));
                    }
                    "_sum" => s.sum = value,
                    _ => s.count = as_count(value),
                }
            }
            None => {
                values.insert(shown(&name, &labels), as_count(value));
            }
        }
    }
    let histograms = series
        .into_iter()
        .map(|(name, s)| HistogramSummary {
            p50: quantile(0.5, &s.buckets),
            p99: quantile(0.99, &s.buckets),
            name,
            count: s.count,
            sum: s.sum,
            buckets: s.buckets,
        })
        .collect();
    Reading { values, histograms }
}

fn as_count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample's name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

/// `name{k="v",...} value` (a trailing timestamp or exemplar is ignored).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // A key up to `="`, or the closing brace.
            let (start, c) = chars.next()?;
            if c == '}' {
                break start + 1;
            }
            if c == ',' {
                continue;
            }
            let eq = after[start..].find("=\"")? + start;
            let key = after[start..eq].to_string();
            while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        };
        rest = &after[end..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), sorted
/// by bound and ending with +Inf; 0 without observations.
fn quantile(q: f64, buckets: &[(f64, u64)]) -> f64 {
    let Some((_, total)) = buckets.last() else {
        return 0.0;
    };
    if *total == 0 {
        return 0.0;
    }
    let rank = q * *total as f64;
    let mut lower = (0.0, 0u64);
    for (bound, cumulative) in buckets {
        if (*cumulative as f64) >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let in_bucket = (*cumulative - lower.1) as f64;
            if in_bucket == 0.0 {
                return *bound;
            }
            return lower.0 + (bound - lower.0) * (rank - lower.1 as f64) / in_bucket;
        }
        lower = (*bound, *cumulative);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    use super::super::{CallLabels, EventName, Reason};
    use super::*;

    fn registry_text(build: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        build(&mut registry);
        let mut out = String::new();
        encode_registry(&mut out, &registry).unwrap();
        encode_eof(&mut out).unwrap();
        out
    }

    #[test]
    fn status_reads_back_counters_gauges_and_labels_as_rendered() {
        let rejected = Family::<Reason, Counter>::default();
        rejected
            .get_or_create(&Reason {
                reason: "too_large",
            })
            .inc_by(3);
        let calls = Family::<CallLabels, Counter>::default();
        calls
            .get_or_create(&CallLabels {
                method: "/utopia.v1.KV/Put",
                code: "Ok",
            })
            .inc_by(7);
        let open = Gauge::<i64>::default();
        open.set(2);
        let text = registry_text(|r| {
            r.register("requests_rejected", "h", rejected);
            r.register("grpc_requests", "h", calls);
            r.register("grpc_connections", "h", open);
        });
        let r = parse(&text);
        assert_eq!(
            r.values
                .get("requests_rejected_total{reason=\"too_large\"}"),
            Some(&3),
            "{text}\n{r:?}"
        );
        assert_eq!(
            r.values
                .get("grpc_requests_total{method=\"/utopia.v1.KV/Put\",code=\"Ok\"}"),
            Some(&7),
            "{r:?}"
        );
        assert_eq!(r.values.get("grpc_connections"), Some(&2));
        assert!(r.histograms.is_empty());
    }

    #[test]
    fn status_summarises_histograms_with_quantiles_from_their_buckets() {
        let h = Family::<EventName, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.01, 0.1])
        });
        // 90 observations in (0.001, 0.01], 10 in (0.01, 0.1].
        for _ in 0..90 {
            h.get_or_create(&EventName { event: "put" }).observe(0.005);
        }
        for _ in 0..10 {
            h.get_or_create(&EventName { event: "put" }).observe(0.05);
        }
        let text = registry_text(|r| r.register("proposal_duration_seconds", "h", h));
        let r = parse(&text);
        assert_eq!(r.histograms.len(), 1, "{text}");
        let s = &r.histograms[0];
        assert_eq!(s.name, "proposal_duration_seconds{event=\"put\"}");
        assert_eq!(s.count, 100);
        assert!((s.sum - 0.95).abs() < 1e-9, "{}", s.sum);
        // Rank 50 of 90 in the second bucket: 0.001 + 0.009 * 50/90.
        assert!((s.p50 - 0.006).abs() < 1e-9, "{}", s.p50);
        // Rank 99: 9 into the 10 of the third bucket.
        assert!((s.p99 - (0.01 + 0.09 * 0.9)).abs() < 1e-9, "{}", s.p99);
        assert!(r.values.is_empty(), "{:?}", r.values);
    }

    #[test]
    fn quantiles_above_the_last_bound_are_the_last_bound() {
        let b = [(0.1, 0), (1.0, 1), (f64::INFINITY, 10)];
        assert_eq!(quantile(0.99, &b), 1.0);
        assert_eq!(quantile(0.5, &[(1.0, 0), (f64::INFINITY, 0)]), 0.0);
    }
}

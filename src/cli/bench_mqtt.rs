//! `utopia bench mqtt`: MQTT ingest against the broker's own ceiling, in
//! one run.
//!
//! 1. Raw: `--publishers` clients publish `--total` messages at `--qos`
//!    through the broker to one plain subscriber; the rate at which the
//!    subscriber receives them is the ceiling.
//! 2. Ingest: the same publishers send `--total` device messages
//!    (`/${prefix}/z/bench/${device}/v`, payload `{"s":N,"pad":"..."}`)
//!    that the cluster's bridges ingest; the rate is committed events per
//!    second (the cluster's `cluster_ingest_applied_total`, polled), and
//!    the latency is each node's arrival → commit applied, from the
//!    servers' `ingest_lag_ms` histograms (bucket bounds, so percentiles
//!    are "at most").
//!
//! The cluster's bridges must subscribe to the ingest topics
//! (`/${prefix}/#`) and not to the raw ones (`/${prefix}-raw/...`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use utopia_proto::v1 as pb;

use super::bench::cpu::{CpuReport, CpuSample};
use super::client::{self, Client};
use super::output::Printer;
use super::CliError;

#[derive(Debug, Clone, Args)]
pub struct BenchMqttArgs {
    /// The broker, HOST:PORT (plain TCP).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub publishers: u64,
    /// Messages per phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub total: u64,
    /// Distinct devices the ingest messages are spread over.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub devices: u64,
    /// QoS of the publishes (and the raw subscriber).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least the JSON envelope).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// First topic level of the ingest messages.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Skip the raw phase.
    #[arg(long)]
    pub skip_raw: bool,
    /// Messages in the latency phase: one at a time, each timed from its
    /// publish until a linearizable read of its device shows it (0: skip).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub latency_samples: u64,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub phase_seconds_max: u64,
    /// The cluster's server process ids (comma-separated, on this machine):
    /// their CPU time over the ingest phase is reported per 1,000 messages.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
    /// The broker's process id: its CPU time per 1,000 messages is reported
    /// for the raw phase and for the ingest phase.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Phase {
    messages: u64,
    seconds: f64,
    messages_per_second: f64,
    /// The broker's CPU over the phase (with `--broker-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_cpu_ms_per_1000_messages: Option<f64>,
    /// The servers' (`--cpu-pids`) and the load generator's CPU.
    cpu: CpuReport,
}

#[derive(Debug, Serialize)]
struct MqttBenchResult {
    publishers: u64,
    qos: u8,
    payload_bytes: usize,
    raw: Option<Phase>,
    ingest: Phase,
    /// ingest / raw.
    ratio: Option<f64>,
    /// Arrival at a server → commit applied there, at most (bucket bounds).
    ingest_lag_ms: BTreeMap<String, f64>,
    batches: u64,
    mean_batch_messages: f64,
    /// Unloaded publish → committed and readable, one message at a time.
    publish_to_commit_ms: Option<super::bench::LatencyMs>,
}

fn qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn options(a: &BenchMqttArgs, id: String) -> Result<rumqttc::MqttOptions, CliError> {
    let (host, port) = a
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| CliError::Usage(format!("--broker {:?} is not HOST:PORT", a.broker)))?;
    let mut o = rumqttc::MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    if let (Some(u), Some(p)) = (&a.username, &a.password) {
        o.set_credentials(u.clone(), p.clone());
    }
    Ok(o)
}

/// Publishes `topics_payloads(i)` for i in 0..n on one connection; returns
/// how many the broker acknowledged (or sent, at QoS 0).
async fn publish(
    o: rumqttc::MqttOptions,
    q: rumqttc::QoS,
    n: u64,
    msg: impl Fn(u64) -> (String, Vec<u8>) + Send + 'static,
    deadline: Instant,
) -> u64 {
    use rumqttc::{Event, Incoming, Outgoing};
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let (t, p) = msg(i);
            if client.publish(t, q, false, p).await.is_err() {
                break;
            }
        }
        client
    });
    let mut done = 0u64;
    while done < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) if q == rumqttc::QoS::AtLeastOnce => {
                done += 1
            }
            Ok(Ok(Event::Incoming(Incoming::PubComp(_)))) if q == rumqttc::QoS::ExactlyOnce => {
                done += 1
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) if q == rumqttc::QoS::AtMostOnce => {
                done += 1
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("publisher: {e}");
                break;
            }
            Err(_) => {}
        }
    }
    if let Ok(client) = sender.await {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = el.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    done
}

fn payload(seq: u64, bytes: usize) -> Vec<u8> {
    let head = format!("{{\"s\":{seq},\"pad\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

fn split(total: u64, parts: u64, i: u64) -> u64 {
    total / parts + u64::from(i < total % parts)
}

async fn raw_phase(a: &BenchMqttArgs, run: u64) -> Result<Phase, CliError> {
    use rumqttc::{Event, Incoming};
    let deadline = Instant::now() + Duration::from_secs(a.phase_seconds_max);
    let filter = format!("/{}-raw/{run}/#", a.prefix);
    let (sub, mut el) = rumqttc::AsyncClient::new(options(a, format!("bench-sub-{run}"))?, 1000);
    sub.subscribe(filter.clone(), qos(a.qos))
        .await
        .map_err(|e| CliError::Usage(format!("subscribe: {e}")))?;
    // Wait for the SUBACK before publishing.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(CliError::Usage(format!("broker {}: {e}", a.broker))),
            Err(_) => return Err(CliError::Usage("no SUBACK from the broker".into())),
        }
    }
    let total = a.total;
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        let mut last = Instant::now();
        while got < total && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                    got += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        (got, last)
    });
    let cpu = PhaseCpu::start(a);
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..a.publishers {
        let n = split(a.total, a.publishers, i);
        let (prefix, bytes) = (a.prefix.clone(), a.payload_bytes);
        let o = options(a, format!("bench-raw-{run}-{i}"))?;
        pubs.push(tokio::spawn(publish(
            o,
            qos(a.qos),
            n,
            move |s| (format!("/{prefix}-raw/{run}/{i}"), payload(s, bytes)),
            deadline,
        )));
    }
    for p in pubs {
        let _ = p.await;
    }
    let (got, last) = receiver
        .await
        .map_err(|e| CliError::Usage(format!("subscriber: {e}")))?;
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    let (broker_cpu_ms_per_1000_messages, cpu) = cpu.finish(got);
    let _ = sub.disconnect().await;
    Ok(Phase {
        messages: got,
        seconds,
        messages_per_second: got as f64 / seconds,
        broker_cpu_ms_per_1000_messages,
        cpu,
    })
}

/// CPU samples at the start of a phase: the broker's apart from the
/// servers' (and the load generator's).
struct PhaseCpu {
    broker_pid: Vec<u32>,
    broker: CpuSample,
    pids: Vec<u32>,
    rest: CpuSample,
}

impl PhaseCpu {
    fn start(a: &BenchMqttArgs) -> Self {
        let broker_pid: Vec<u32> = a.broker_pid.into_iter().collect();
        PhaseCpu {
            broker: CpuSample::take(&broker_pid),
            broker_pid,
            rest: CpuSample::take(&a.cpu_pids),
            pids: a.cpu_pids.clone(),
        }
    }

    /// The broker's CPU per 1,000 of `messages`, and everyone else's.
    fn finish(self, messages: u64) -> (Option<f64>, CpuReport) {
        let broker = CpuReport::between(&self.broker, &CpuSample::take(&self.broker_pid), messages);
        let rest = CpuReport::between(&self.rest, &CpuSample::take(&self.pids), messages);
        (broker.servers_ms_per_1000_ops, rest)
    }
}

/// Counters summed over every endpoint.
async fn cluster_counters(client: &Client) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for ep in client.endpoint_uris() {
        let Ok(mut one) = Client::new(
            std::slice::from_ref(&ep),
            client.timeout(),
            client.tls().cloned(),
        ) else {
            continue;
        };
        let Ok(resp) = one
            .call(|ch| async move { client::maintenance(ch).status(pb::StatusRequest {}).await })
            .await
        else {
            continue;
        };
        // The ingest lag histogram, as counters in milliseconds.
        for h in resp
            .histograms
            .iter()
            .filter(|h| h.name == "ingest_lag_seconds")
        {
            let ms = |s: f64| (s * 1e3).round() as u64;
            *sum.entry("ingest_lag_ms_count".into()).or_insert(0) += h.count;
            *sum.entry("ingest_lag_ms_sum".into()).or_insert(0) += ms(h.sum);
            for (bound, n) in h.bounds.iter().zip(&h.buckets) {
                *sum.entry(format!("ingest_lag_ms_bucket{{le=\"{}\"}}", ms(*bound)))
                    .or_insert(0) += n;
            }
        }
        for (k, v) in resp.counters {
            if k.starts_with("cluster_") {
                // The same replicated figure on every node: keep the largest.
                let e = sum.entry(k).or_insert(0);
                *e = (*e).max(v);
            } else {
                *sum.entry(k).or_insert(0) += v;
            }
        }
    }
    sum
}

/// How much counter `name` grew between two readings (0 if it went back,
/// as after a server restart).
fn counter_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

fn lag_percentiles(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, f64> {
    let delta = |k: &str| counter_delta(before, after, k);
    let count = delta("ingest_lag_ms_count");
    let mut out = BTreeMap::new();
    if count == 0 {
        return out;
    }
    out.insert(
        "mean".into(),
        delta("ingest_lag_ms_sum") as f64 / count as f64,
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        let want = (count as f64 * q).ceil() as u64;
        let bound = crate::mqtt::ingest::LAG_BUCKETS_MS
            .iter()
            .find(|le| delta(&format!("ingest_lag_ms_bucket{{le=\"{le}\"}}")) >= want)
            .map_or(f64::INFINITY, |le| *le as f64);
        out.insert(name.into(), bound);
    }
    out
}

/// One publisher, one device, one message at a time: each is timed from
/// the publish until a linearizable read of the device shows its sequence
/// number (so the figure includes one read, polled every 200 µs).
async fn latency_phase(
    client: &mut Client,
    a: &BenchMqttArgs,
    run: u64,
) -> Result<super::bench::LatencyMs, CliError> {
    use rumqttc::{Event, Incoming};
    let deadline = Instant::now() + Duration::from_secs(a.phase_seconds_max);
    let device = format!("latency-{run}");
    let doc_id = format!("{}/bench/{device}", a.prefix);
    let topic = format!("/{}/z/bench/{device}/v", a.prefix);
    let (mqtt, mut el) = rumqttc::AsyncClient::new(options(a, format!("bench-lat-{run}"))?, 100);
    let poller = tokio::spawn(async move {
        // Keeps the connection going; PUBACKs are not waited for.
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| CliError::Usage(format!("histogram: {e}")))?;
    for seq in 0..a.latency_samples {
        if Instant::now() > deadline {
            break;
        }
        let start = Instant::now();
        mqtt.publish(
            topic.clone(),
            qos(a.qos),
            false,
            payload(seq, a.payload_bytes),
        )
        .await
        .map_err(|e| CliError::Usage(format!("publish: {e}")))?;
        loop {
            let get = pb::GetDocumentRequest {
                collection: "devices".into(),
                id: doc_id.clone(),
                consistency: pb::Consistency::Linearizable as i32,
            };
            let seen = client
                .call(|ch| {
                    let get = get.clone();
                    async move { client::documents(ch).get(get).await }
                })
                .await
                .ok()
                .and_then(|r| r.document)
                .and_then(|d| serde_json::from_str::<serde_json::Value>(&d.json).ok())
                .and_then(|v| v["data"]["v"]["s"].as_u64());
            if seen == Some(seq) {
                break;
            }
            if Instant::now() > deadline {
                return Err(CliError::Usage(format!(
                    "message {seq} of the latency phase was not committed in time"
                )));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let _ = hist.record(start.elapsed().as_micros().max(1) as u64);
    }
    let _ = mqtt.disconnect().await;
    poller.abort();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(super::bench::LatencyMs {
        p50: ms(hist.value_at_quantile(0.5)),
        p90: ms(hist.value_at_quantile(0.9)),
        p99: ms(hist.value_at_quantile(0.99)),
        p999: ms(hist.value_at_quantile(0.999)),
        max: ms(hist.max()),
    })
}

pub async fn mqtt(
    client: &mut Client,
    out: &mut Printer,
    a: BenchMqttArgs,
) -> Result<(), CliError> {
    crate::mqtt::install_crypto_provider();
    let run = crate::now_ms();
    let raw = if a.skip_raw {
        None
    } else {
        Some(raw_phase(&a, run).await?)
    };

    let before = cluster_counters(client).await;
    if before.get("cluster_ingest_owners").copied().unwrap_or(0) == 0 {
        return Err(CliError::Usage(
            "no server ingests MQTT: configure a bridge subscribed to the ingest topics".into(),
        ));
    }
    let applied0 = before
        .get("cluster_ingest_applied_total")
        .copied()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(a.phase_seconds_max);
    let cpu = PhaseCpu::start(&a);
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..a.publishers {
        let n = split(a.total, a.publishers, i);
        let (prefix, bytes, devices, publishers) =
            (a.prefix.clone(), a.payload_bytes, a.devices, a.publishers);
        let o = options(&a, format!("bench-pub-{run}-{i}"))?;
        pubs.push(tokio::spawn(publish(
            o,
            qos(a.qos),
            n,
            move |s| {
                let device = (s * publishers + i) % devices;
                (
                    format!("/{prefix}/z/bench/{device}/v"),
                    payload(s * publishers + i, bytes),
                )
            },
            deadline,
        )));
    }
    let mut published = 0;
    for p in pubs {
        published += p.await.unwrap_or(0);
    }
    // Committed: the cluster's applied count covers every message.
    let mut applied = 0;
    while Instant::now() < deadline {
        let c = cluster_counters(client).await;
        applied = c
            .get("cluster_ingest_applied_total")
            .copied()
            .unwrap_or(0)
            .saturating_sub(applied0);
        if applied >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let (broker_cpu_ms_per_1000_messages, cpu) = cpu.finish(applied);
    // The servers publish their lag figures every 50 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = cluster_counters(client).await;
    let batches = counter_delta(&before, &after, "ingest_batches_total");
    let batch_msgs = counter_delta(&before, &after, "ingest_batch_messages_total");
    let ingest = Phase {
        messages: applied,
        seconds,
        messages_per_second: applied as f64 / seconds.max(1e-9),
        broker_cpu_ms_per_1000_messages,
        cpu,
    };
    let result = MqttBenchResult {
        publishers: a.publishers,
        qos: a.qos,
        payload_bytes: a.payload_bytes,
        ratio: raw
            .as_ref()
            .map(|r| ingest.messages_per_second / r.messages_per_second.max(1e-9)),
        raw,
        ingest,
        ingest_lag_ms: lag_percentiles(&before, &after),
        batches,
        mean_batch_messages: batch_msgs as f64 / batches.max(1) as f64,
        publish_to_commit_ms: if a.latency_samples > 0 {
            Some(latency_phase(client, &a, run).await?)
        } else {
            None
        },
    };
    if out.json {
        out.json_line(&result)?;
    } else {
        if let Some(r) = &result.raw {
            out.line(format!(
                "raw broker:   {} messages in {:.2}s = {:.0} msg/s (publishers -> broker -> one subscriber, QoS {})",
                r.messages, r.seconds, r.messages_per_second, a.qos
            ))?;
        }
        out.line(format!(
            "utopia ingest: {} committed events in {:.2}s = {:.0} events/s (publishers -> broker -> cluster, QoS {})",
            result.ingest.messages, result.ingest.seconds, result.ingest.messages_per_second, a.qos
        ))?;
        if let Some(r) = result.ratio {
            out.line(format!("ratio ingest/raw: {:.2}", r))?;
        }
        let per = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        if let Some(r) = &result.raw {
            out.line(format!(
                "cpu ms per 1,000 messages, raw: broker {}, load generator {}",
                per(r.broker_cpu_ms_per_1000_messages),
                per(r.cpu.client_ms_per_1000_ops)
            ))?;
        }
        let i = &result.ingest;
        out.line(format!(
            "cpu ms per 1,000 messages, ingest: cluster {}, broker {}, load generator {}",
            per(i.cpu.servers_ms_per_1000_ops),
            per(i.broker_cpu_ms_per_1000_messages),
            per(i.cpu.client_ms_per_1000_ops)
        ))?;
        out.line(format!(
            "batches: {} (mean {:.1} messages)",
            result.batches, result.mean_batch_messages
        ))?;
        let lag: Vec<String> = result
            .ingest_lag_ms
            .iter()
            .map(|(k, v)| format!("{k} {}{v:.1}", if k == "mean" { "" } else { "<=" }))
            .collect();
        out.line(format!("arrival -> commit (ms): {}", lag.join(", ")))?;
        if let Some(l) = &result.publish_to_commit_ms {
            out.line(format!(
                "publish -> commit, one at a time (ms): p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
                l.p50, l.p90, l.p99, l.max
            ))?;
        }
    }
    if applied < published {
        return Err(CliError::Usage(format!(
            "only {applied} of {published} acknowledged messages were committed within {}s",
            a.phase_seconds_max
        )));
    }
    Ok(())
}

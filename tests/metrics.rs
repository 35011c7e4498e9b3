//! The Prometheus endpoint (`metrics.listen`) of three real nodes, scraped
//! over HTTP and read with a Prometheus text parser: the figures agree with
//! the work done (puts and their proposals, log fsyncs, snapshots built, an
//! election after the leader is killed), and `utopia status` shows the same
//! figures.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{cli, free_addr, leader_id, start_cluster_each, temp_dir, wait_for};

/// `utopia status --output json` on `addr`.
fn status(addr: &str) -> serde_json::Value {
    let out = cli(addr, &["--output", "json", "status"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// The count of histogram `name` with `labels` (its `_count` sample).
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map_or(0, |b| b.count as u64)
            }
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => *v as u64,
            _ => 0,
        })
        .sum()
}

/// `GET /metrics` on `addr`, parsed; `None` while it does not answer.
fn scrape(addr: &str) -> Option<prometheus_parse::Scrape> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Some(prometheus_parse::Scrape::parse(lines).expect("a valid exposition"))
}

/// The value of `name` whose labels include `labels` (summed over the
/// rest), or 0.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn the_metrics_endpoint_counts_puts_and_elections() {
    let dir = temp_dir();
    let metrics: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let confs: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let path = dir.path().join(format!("n{}.conf", i + 1));
            // Snapshots every 20 entries: the puts below make every
            // member build some.
            std::fs::write(
                &path,
                format!(
                    "metrics = {{ listen = \"{addr}\"; }};\n\
                     raft = {{ snapshot_log_entries = 20; log_entries_kept_after_snapshot = 5; }};\n"
                ),
            )
            .unwrap();
            path.display().to_string()
        })
        .collect();
    let (mut nodes, addrs) = start_cluster_each(&dir.path().join("c"), 3, |id| {
        vec!["--config".to_string(), confs[id as usize - 1].clone()]
    });
    let endpoints = addrs.join(",");
    const PUTS: usize = 25;
    for i in 0..PUTS {
        let out = cli(&endpoints, &["put", &format!("k{i}"), "v"]);
        assert!(out.status.success(), "{out:?}");
    }
    let puts_ok = |scrapes: &[prometheus_parse::Scrape]| -> f64 {
        scrapes
            .iter()
            .map(|s| {
                value(
                    s,
                    "utopia_grpc_requests_total",
                    &[("method", "/utopia.v1.KV/Put"), ("code", "Ok")],
                )
            })
            .sum()
    };
    let scrapes: Vec<_> = metrics.iter().map(|m| scrape(m).expect("scrape")).collect();
    assert_eq!(puts_ok(&scrapes), PUTS as f64);
    let leader = wait_for("a leader", Duration::from_secs(10), || leader_id(&nodes));
    let on_leader = &scrapes[leader as usize - 1];
    assert_eq!(value(on_leader, "utopia_raft_is_leader", &[]), 1.0);
    assert_eq!(value(on_leader, "utopia_raft_leader", &[]), leader as f64);
    assert!(value(on_leader, "utopia_revision", &[]) >= PUTS as f64);
    assert!(
        value(
            on_leader,
            "utopia_grpc_request_duration_seconds_count",
            &[("method", "/utopia.v1.KV/Put")]
        ) >= 1.0
    );
    // The leader applied every put (of a new key each) before answering
    // it: each read the store, and the key cache holds them now.
    assert!(value(on_leader, "utopia_db_key_cache_misses_total", &[]) >= PUTS as f64);
    assert!(value(on_leader, "utopia_db_key_cache_bytes", &[]) > 0.0);
    let term_before = value(on_leader, "utopia_raft_term", &[]);

    // Every put was proposed where the CLI reached a member: refused by a
    // follower (the CLI then goes to the leader it names), or applied with
    // its latency observed.
    let puts = [("event", "put")];
    let sum = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrapes.iter().map(|s| value(s, name, labels)).sum()
    };
    let not_leader = sum(
        "utopia_proposals_failed_total",
        &[("event", "put"), ("reason", "not_leader")],
    );
    assert_eq!(
        sum("utopia_proposals_total", &puts),
        PUTS as f64 + not_leader
    );
    assert_eq!(
        sum("utopia_proposals_failed_total", &puts),
        not_leader,
        "no other failure"
    );
    let timed: u64 = scrapes
        .iter()
        .map(|s| histogram_count(s, "utopia_proposal_duration_seconds", &puts))
        .sum();
    assert_eq!(timed, PUTS as u64);
    // Every member synced its log and applied the puts, and its log takes
    // room.
    for s in &scrapes {
        assert!(histogram_count(s, "utopia_storage_fsync_duration_seconds", &[]) > 0);
        assert!(histogram_count(s, "utopia_storage_apply_duration_seconds", &[]) > 0);
        assert!(value(s, "utopia_raft_log_bytes", &[]) > 0.0);
        // The puts are in memory, not yet in table files.
        assert!(value(s, "utopia_db_memtable_bytes", &[("cf", "kv")]) > 0.0);
        assert!(s
            .samples
            .iter()
            .any(|m| m.metric == "utopia_db_block_cache_bytes"));
        assert_eq!(
            value(s, "utopia_alarms_active", &[("alarm", "NOSPACE")]),
            0.0
        );
    }
    // More writes, more fsyncs on the leader.
    let leader_metrics = &metrics[leader as usize - 1];
    let fsyncs_before = histogram_count(
        &scrape(leader_metrics).unwrap(),
        "utopia_storage_fsync_duration_seconds",
        &[],
    );
    for i in 0..5 {
        let out = cli(&endpoints, &["put", &format!("more{i}"), "v"]);
        assert!(out.status.success(), "{out:?}");
    }
    let fsyncs_after = histogram_count(
        &scrape(leader_metrics).unwrap(),
        "utopia_storage_fsync_duration_seconds",
        &[],
    );
    assert!(
        fsyncs_after > fsyncs_before,
        "{fsyncs_before} -> {fsyncs_after}"
    );
    // Past 20 entries, each member builds a snapshot.
    for m in &metrics {
        wait_for("a snapshot built", Duration::from_secs(30), || {
            (value(&scrape(m)?, "utopia_raft_snapshots_built_total", &[]) >= 1.0).then_some(())
        });
    }

    // `utopia status` shows the endpoint's figures, histograms summarised.
    // (On the leader, where the puts were applied.)
    let st = status(&addrs[leader as usize - 1]);
    let s = scrape(leader_metrics).unwrap();
    let put_count = |name: &str| value(&s, name, &puts) as u64;
    assert_eq!(
        st["counters"]["proposals_total{event=\"put\"}"]
            .as_u64()
            .unwrap_or(0),
        put_count("utopia_proposals_total"),
        "{st}"
    );
    assert_eq!(
        st["counters"]["grpc_requests_total{method=\"/utopia.v1.KV/Put\",code=\"Ok\"}"]
            .as_u64()
            .unwrap_or(0),
        value(
            &s,
            "utopia_grpc_requests_total",
            &[("method", "/utopia.v1.KV/Put"), ("code", "Ok")]
        ) as u64,
        "{st}"
    );
    let h = &st["histograms"]["proposal_duration_seconds{event=\"put\"}"];
    assert_eq!(
        h["count"].as_u64().unwrap_or(0),
        histogram_count(&s, "utopia_proposal_duration_seconds", &puts),
        "{st}"
    );
    assert!(h["count"].as_u64().unwrap_or(0) > 0, "{st}");
    let (p50, p99) = (h["p50"].as_f64().unwrap(), h["p99"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{h}");
    assert!(st["histograms"]["storage_fsync_duration_seconds"]["count"].as_u64() > Some(0));

    // The leader is killed: a survivor sees a new leader in a later term.
    nodes[leader as usize - 1].kill9();
    let survivor = (1..=3u64).find(|&id| id != leader).unwrap();
    let at = &metrics[survivor as usize - 1];
    let before = scrape(at).unwrap();
    let changes_before = value(&before, "utopia_raft_leader_changes_total", &[]);
    let elections_before = value(&before, "utopia_raft_elections_total", &[]);
    let after = wait_for(
        "an election seen in the metrics",
        Duration::from_secs(30),
        || {
            let s = scrape(at)?;
            let leader_now = value(&s, "utopia_raft_leader", &[]);
            (leader_now != 0.0 && leader_now != leader as f64).then_some(s)
        },
    );
    assert!(value(&after, "utopia_raft_term", &[]) > term_before);
    assert!(value(&after, "utopia_raft_leader_changes_total", &[]) > changes_before);
    assert!(value(&after, "utopia_raft_elections_total", &[]) > elections_before);

    // Anything but GET /metrics is a 404.
    let mut s = TcpStream::connect(at).unwrap();
    s.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.contains(" 404 "), "{raw}");
}

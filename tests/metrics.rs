//! The Prometheus endpoint (`metrics.listen`) of three real nodes, scraped
//! over HTTP and read with a Prometheus text parser: the figures agree with
//! the work done (puts, an election after the leader is killed).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{cli, free_addr, leader_id, start_cluster_each, temp_dir, wait_for};

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
            std::fs::write(&path, format!("metrics = {{ listen = \"{addr}\"; }};\n")).unwrap();
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
    let term_before = value(on_leader, "utopia_raft_term", &[]);

    // The leader is killed: a survivor sees a new leader in a later term.
    nodes[leader as usize - 1].kill9();
    let survivor = (1..=3u64).find(|&id| id != leader).unwrap();
    let at = &metrics[survivor as usize - 1];
    let changes_before = value(
        &scrape(at).unwrap(),
        "utopia_raft_leader_changes_total",
        &[],
    );
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

    // Anything but GET /metrics is a 404.
    let mut s = TcpStream::connect(at).unwrap();
    s.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.contains(" 404 "), "{raw}");
}

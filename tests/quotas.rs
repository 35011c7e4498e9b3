//! Quotas through the real server: devices per host (over the API and over
//! MQTT, where a new device's messages are dropped, counted and still
//! acknowledged), active leases and pending device commands.

mod common;

use std::time::Duration;

use common::mosquitto::{publish_all, Mosquitto, QoS};
use common::{counter, temp_dir, wait_for, Server};

const DEADLINE: Duration = Duration::from_secs(60);

fn refused_by_quota(out: &std::process::Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    out.status.code() == Some(3)
        && stderr.contains("RESOURCE_EXHAUSTED")
        && stderr.contains("quota exceeded")
}

#[test]
fn devices_per_host_leases_and_pending_commands_have_quotas() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(
        &conf,
        format!(
            r#"limits = {{ devices_per_host_max = 2; leases_max = 2; commands_pending_max = 1; }};
mqtt = {{ bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {}; subscriptions = ( {{ filter = "/qhost/#"; qos = 1; }} ); }} ); }};
"#,
            m.plain.port()
        ),
    )
    .unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    wait_for(
        "the quotas, topic owners and a connected bridge",
        DEADLINE,
        || {
            (counter(&s.addr, "events_applied_total{event=\"quotas_changed\"}") >= 1
                && counter(&s.addr, "cluster_ingest_owner_epoch") >= 1
                && counter(&s.addr, "mqtt_connects_total") >= 1)
                .then_some(())
        },
    );

    let report = |id: &str| {
        s.cli(&[
            "device", "report", "--host", "qhost", "--zone", "z", "--class", "c", "--id", id, "t",
            "--json", "1",
        ])
    };
    assert!(report("1").status.success());
    assert!(report("2").status.success());
    assert!(refused_by_quota(&report("3")), "a third device of one host");
    assert!(report("1").status.success(), "known devices go on");

    // Over MQTT a new device's messages are dropped and counted, and
    // acknowledged all the same; known devices' messages are ingested.
    let messages: Vec<(String, Vec<u8>)> = [("4", "7"), ("1", "8")]
        .iter()
        .map(|(d, v)| (format!("/qhost/z/c/{d}/t"), v.as_bytes().to_vec()))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = rt.block_on(publish_all(m.plain_endpoint(), &messages, QoS::AtLeastOnce));
    assert!(acked.iter().all(|a| *a));
    wait_for(
        "the new device's message dropped and counted",
        DEADLINE,
        || {
            (counter(&s.addr, "cluster_ingest_over_quota_total") == 1
                && counter(&s.addr, "cluster_ingest_applied_total") >= 1
                && counter(&s.addr, "ingest_pending_messages") == 0)
                .then_some(())
        },
    );
    assert_eq!(
        s.cli(&["doc", "get", "devices", "qhost/c/4"]).status.code(),
        Some(1)
    );
    assert_eq!(
        s.cli_json(&["doc", "get", "devices", "qhost/c/1"])["document"]["data"]["t"],
        8
    );

    // Two active leases at most.
    let first = s.cli_json(&["lease", "grant", "60"])["id"]
        .as_i64()
        .unwrap();
    s.cli_ok(&["lease", "grant", "60"]);
    assert!(refused_by_quota(&s.cli(&["lease", "grant", "60"])));
    s.cli_ok(&["lease", "revoke", &first.to_string()]);
    s.cli_ok(&["lease", "grant", "60"]);

    // One command awaiting a reply at most.
    let cmd = |payload: &str| s.cli(&["device", "cmd", "qhost/c/1", "set", payload]);
    assert!(cmd("1").status.success());
    assert!(refused_by_quota(&cmd("2")));
    assert!(counter(&s.addr, "events_rejected_total{reason=\"quota\"}") >= 3);
}

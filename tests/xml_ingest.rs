//! Ingest by device class through the real server: with
//! `configs.require_class`, data and commands of a class that has no
//! accepted configuration are refused with their reason and counted (over
//! the API and over MQTT, where the refused message is still
//! acknowledged), while the device's earlier data stays.

mod common;

use std::time::Duration;

use common::mosquitto::{publish_all, Mosquitto, QoS};
use common::{counter, temp_dir, wait_for, Server};

const DEADLINE: Duration = Duration::from_secs(60);

const NO_CONFIGURATION: &str = "class c has no accepted configuration (configs.require_class)";

/// Refused for want of a configuration, with the reason on stderr.
fn refused(out: &std::process::Output, reason: &str) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    out.status.code() == Some(3)
        && stderr.contains("FAILED_PRECONDITION")
        && stderr.contains(reason)
}

fn conf(broker_port: u16, require_class: bool) -> String {
    format!(
        r#"configs = {{ require_class = {require_class}; }};
mqtt = {{ bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {broker_port}; subscriptions = ( {{ filter = "/rhost/#"; qos = 1; }} ); }} ); }};
"#
    )
}

fn ready(s: &Server) {
    wait_for("topic owners and a connected bridge", DEADLINE, || {
        (counter(&s.addr, "cluster_ingest_owner_epoch") >= 1
            && counter(&s.addr, "mqtt_connects_total") >= 1)
            .then_some(())
    });
}

#[test]
fn require_class_refuses_data_and_commands_of_classes_without_a_configuration() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let conf_path = dir.path().join("utopiad.conf");
    std::fs::write(&conf_path, conf(m.plain.port(), false)).unwrap();
    let mut s = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf_path.to_str().unwrap()],
    );
    ready(&s);

    // Without require_class a class without a configuration is untyped.
    let report = |s: &Server, json: &str| {
        s.cli(&[
            "device", "report", "--host", "rhost", "--zone", "z", "--class", "c", "--id", "1", "t",
            "--json", json,
        ])
    };
    assert!(report(&s, "1").status.success());
    let cmd = |s: &Server| s.cli(&["device", "cmd", "rhost/c/1", "set", r#"{"on":true}"#]);
    assert!(cmd(&s).status.success());

    // With it, the class's data and commands are refused.
    s.terminate();
    std::fs::write(&conf_path, conf(m.plain.port(), true)).unwrap();
    s.restart();
    ready(&s);
    wait_for("require_class in the replicated quotas", DEADLINE, || {
        (counter(&s.addr, "events_applied_total{event=\"quotas_changed\"}") >= 1).then_some(())
    });
    let out = report(&s, "2");
    assert!(
        refused(&out, NO_CONFIGURATION),
        "report: {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cmd(&s);
    assert!(
        refused(&out, NO_CONFIGURATION),
        "command: {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );

    // Over MQTT the message is refused, counted and acknowledged.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = rt.block_on(publish_all(
        m.plain_endpoint(),
        &[("/rhost/z/c/1/t".to_string(), b"3".to_vec())],
        QoS::AtLeastOnce,
    ));
    assert!(acked.iter().all(|a| *a), "acknowledged all the same");
    wait_for("the MQTT message refused and counted", DEADLINE, || {
        (counter(&s.addr, "cluster_ingest_class_refused_total") == 2
            && counter(&s.addr, "cluster_ingest_dropped_total") >= 1
            && counter(&s.addr, "ingest_pending_messages") == 0)
            .then_some(())
    });

    // The device keeps its data and shows the refusals.
    let doc = &s.cli_json(&["doc", "get", "devices", "rhost/c/1"])["document"];
    assert_eq!(doc["data"]["t"], 1, "{doc}");
    assert_eq!(doc["rejected_total"], 2, "{doc}");
    assert_eq!(doc["last_rejected"]["reason"], NO_CONFIGURATION, "{doc}");
}

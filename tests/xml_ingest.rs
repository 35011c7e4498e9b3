//! Ingest by device class through the real server: a class accepted on
//! three nodes types its MQTT data (in range stored as a float, out of
//! range and of the wrong type refused and counted) and checks its
//! commands; with `configs.require_class`, data and commands of a class
//! that has no accepted configuration are refused with their reason and
//! counted (over the API and over MQTT, where the refused message is still
//! acknowledged), while the device's earlier data stays.

mod common;

use std::time::Duration;

use common::mosquitto::{publish_all, Mosquitto, QoS};
use common::{counter, start_cluster_each, temp_dir, wait_for, Server};

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

/// Every node's ingest counters summed: each counts what it proposed.
fn refused_on(nodes: &[Server]) -> u64 {
    counter(&nodes[0].addr, "cluster_ingest_class_refused_total")
}

#[test]
fn a_class_accepted_on_three_nodes_types_mqtt_data_and_checks_commands() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    for id in 1..=3u64 {
        let configs = root.join(format!("configs{id}"));
        std::fs::create_dir_all(&configs).unwrap();
        std::fs::write(
            root.join(format!("utopiad{id}.conf")),
            format!(
                r#"configs = {{ dir = "{}"; scan_interval_ms = 200; agreement_window_ms = 200; }};
mqtt = {{ bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {}; subscriptions = ( {{ filter = "/fhost/#"; qos = 1; }} ); }} ); }};
"#,
                configs.display(),
                m.plain.port()
            ),
        )
        .unwrap();
    }
    let (nodes, _) = start_cluster_each(&root, 3, |id| {
        vec![
            "--config".to_string(),
            root.join(format!("utopiad{id}.conf"))
                .to_str()
                .unwrap()
                .to_string(),
        ]
    });
    wait_for("three owners and connected bridges", DEADLINE, || {
        (counter(&nodes[0].addr, "cluster_ingest_owners") == 3
            && nodes
                .iter()
                .all(|n| counter(&n.addr, "mqtt_connects_total") >= 1))
        .then_some(())
    });

    // The thermostat class (temperature: a float from -40 to 125), dropped
    // into node 1's directory, accepted on all three.
    let xml = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/thermostat.xml"),
    )
    .unwrap();
    let incoming = root.join("configs1/.thermostat.xml.incoming");
    std::fs::write(&incoming, &xml).unwrap();
    std::fs::rename(&incoming, root.join("configs1/thermostat.xml")).unwrap();
    for n in &nodes {
        wait_for("thermostat@3 accepted", DEADLINE, || {
            let out = n.cli(&[
                "--output",
                "json",
                "doc",
                "get",
                "xml_configs",
                "thermostat@3",
            ]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["document"]["state"] == "accepted").then_some(())
        });
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let publish = |payloads: &[&str]| {
        let messages: Vec<(String, Vec<u8>)> = payloads
            .iter()
            .map(|p| {
                (
                    "/fhost/z/thermostat/1/temperature".to_string(),
                    p.as_bytes().to_vec(),
                )
            })
            .collect();
        let acked = rt.block_on(publish_all(m.plain_endpoint(), &messages, QoS::AtLeastOnce));
        assert!(acked.iter().all(|a| *a), "every message acknowledged");
    };
    let device = |n: &Server| {
        n.cli_json(&["doc", "get", "devices", "fhost/thermostat/1"])["document"].clone()
    };

    // In range: stored, as a float.
    publish(&["21"]);
    wait_for("the in-range value stored", DEADLINE, || {
        let out = nodes[1].cli(&[
            "--output",
            "json",
            "doc",
            "get",
            "devices",
            "fhost/thermostat/1",
        ]);
        out.status.success().then_some(())
    });
    for n in &nodes {
        let doc = device(n);
        let t = &doc["data"]["temperature"];
        assert!(
            t.is_f64() && t.as_f64() == Some(21.0),
            "typed as a float: {doc}"
        );
    }

    // Out of range and of the wrong type: refused, counted, acknowledged;
    // the device keeps its value and shows the refusals.
    publish(&["130", r#""warm""#]);
    wait_for("two values refused and counted", DEADLINE, || {
        (refused_on(&nodes) == 2).then_some(())
    });
    for n in &nodes {
        assert_eq!(counter(&n.addr, "cluster_ingest_class_refused_total"), 2);
        let doc = device(n);
        assert_eq!(doc["data"]["temperature"].as_f64(), Some(21.0), "{doc}");
        assert_eq!(doc["rejected_total"], 2, "{doc}");
        let reason = doc["last_rejected"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason == "temperature 130 is above max 125 (class thermostat v3)"
                || reason == r#"temperature "warm" is not a float (class thermostat v3)"#,
            "{doc}"
        );
    }

    // Commands are checked against the class.
    let cmd = |post: &str, payload: &str| {
        nodes[2].cli(&["device", "cmd", "fhost/thermostat/1", post, payload])
    };
    assert!(cmd("set_target", r#"{"target":21.5}"#).status.success());
    for (post, payload, reason) in [
        (
            "set_target",
            r#"{"target":50}"#,
            "command set_target field target 50 is above max 30 (class thermostat v3)",
        ),
        (
            "set_target",
            "{}",
            "command set_target field target is required (class thermostat v3)",
        ),
        (
            "explode",
            "{}",
            "command explode is not declared (class thermostat v3)",
        ),
    ] {
        let out = cmd(post, payload);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(3)
                && stderr.contains("INVALID_ARGUMENT")
                && stderr.contains(reason),
            "{post} {payload}: {:?} {stderr}",
            out.status.code()
        );
    }
}

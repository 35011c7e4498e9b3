//! Untrusted device data never halts the cluster: JSON nested too deep
//! (over MQTT, JSON and CBOR, and over gRPC) and paths with too many
//! segments are refused at the entrance with a clear error and a counter,
//! valid traffic beside them goes on, and after every node is SIGKILLed and
//! restarted the cluster still serves writes with the device's data intact.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mosquitto::{publish_all, Endpoint, Mosquitto, QoS};
use common::{
    cli, counter, counters, leader_id, runtime, start_cluster, temp_dir, wait_for, Server,
};
use serde_json::Value;
use utopia_proto::v1 as pb;

const DEADLINE: Duration = Duration::from_secs(60);

/// The device document as `addr` holds it (a serializable read).
fn device(addr: &str, id: &str) -> Option<Value> {
    let out = cli(
        addr,
        &[
            "--output",
            "json",
            "doc",
            "get",
            "devices",
            id,
            "--consistency",
            "serializable",
        ],
    );
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["document"].clone())
}

/// JSON text nested `n` arrays deep.
fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// CBOR: `n` nested one-element arrays around the integer 1.
fn nested_cbor(n: usize) -> Vec<u8> {
    std::iter::repeat_n(0x81u8, n).chain([0x01]).collect()
}

fn publish(m: &Mosquitto, messages: &[(&str, Vec<u8>)]) {
    let batch: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|(t, p)| (t.to_string(), p.clone()))
        .collect();
    let acked = runtime().block_on(publish_all(
        Endpoint::plain(m.plain),
        &batch,
        QoS::AtLeastOnce,
    ));
    assert!(
        acked.iter().all(|a| *a),
        "broker acknowledgements: {acked:?}"
    );
}

/// Waits until every node holds the device document and `check` accepts it.
fn wait_on_every_node(nodes: &[Server], id: &str, what: &str, check: impl Fn(&Value) -> bool) {
    for n in nodes {
        wait_for(what, DEADLINE, || device(&n.addr, id).filter(|d| check(d)));
    }
}

fn report(host: &str, post_type: &str, path: Vec<String>, json: String) -> pb::DeviceReport {
    pb::DeviceReport {
        host: host.into(),
        zone: "z".into(),
        class: "c".into(),
        device_id: "1".into(),
        post_type: post_type.into(),
        path,
        json,
    }
}

fn write_config(dir: &Path, m: &Mosquitto) -> String {
    let path = dir.join("utopiad.conf");
    std::fs::write(
        &path,
        format!(
            r#"mqtt = {{ bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {}; subscriptions = ( {{ filter = "/deep/#"; qos = 1; }} ); }} ); }};
"#,
            m.plain.port()
        ),
    )
    .expect("write utopiad.conf");
    path.display().to_string()
}

#[test]
fn deep_json_and_long_paths_are_refused_and_the_cluster_survives_a_full_restart() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let conf = write_config(dir.path(), &m);
    let (mut nodes, addrs) = start_cluster(dir.path(), 3, &["--config", &conf]);
    let endpoints = addrs.join(",");
    wait_for("three topic owners", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_owners") == 3
            && nodes
                .iter()
                .all(|n| counter(&n.addr, "mqtt_connects_total") >= 1))
        .then_some(())
    });

    // A device reports normally.
    publish(&m, &[("/deep/z/c/1/temp", b"21".to_vec())]);
    wait_on_every_node(&nodes, "deep/c/1", "the device's first value", |d| {
        d["data"]["temp"] == 21
    });

    // Over MQTT: JSON 126 levels deep (under serde_json's own limit of
    // 128), JSON 30,000 deep (as deep as fits in the default 64 KiB
    // payload), and CBOR 40 deep; then valid messages for
    // the same device. Each bad one is refused and counted on every node;
    // the device's next message is applied everywhere.
    publish(
        &m,
        &[
            ("/deep/z/c/1/blob", nested(126).into_bytes()),
            ("/deep/z/c/1/huge", nested(30_000).into_bytes()),
            ("/deep/z/c/1/radio", nested_cbor(40)),
        ],
    );
    publish(
        &m,
        &[
            ("/deep/z/c/1/temp", b"22".to_vec()),
            ("/deep/z/c/1/ok", nested(32).into_bytes()),
        ],
    );
    wait_on_every_node(&nodes, "deep/c/1", "the device's next values", |d| {
        d["data"]["temp"] == 22 && d["data"]["ok"].is_array()
    });
    for n in &nodes {
        let c = wait_for("every deep message counted", DEADLINE, || {
            let c = counters(&n.addr);
            (c.get("mqtt_rejected_total{reason=\"too_deep\"}")
                .and_then(Value::as_u64)
                == Some(3))
            .then_some(c)
        });
        assert!(c.contains_key("cluster_events_rejected_total"), "{c:?}");
        let log = n.stderr_log();
        assert!(
            log.contains("MQTT message rejected") && log.contains("nested more than 32 levels"),
            "the log says why: {log}"
        );
    }
    let doc = device(&addrs[0], "deep/c/1").unwrap();
    for refused in ["blob", "huge", "radio"] {
        assert!(
            doc["data"].get(refused).is_none(),
            "{refused} was stored: {doc}"
        );
    }

    // Over gRPC: the same deep JSON, and a path of 100,000 segments, are
    // INVALID_ARGUMENT with a message that says what and why, on any node.
    let rt = runtime();
    for n in &nodes {
        let mut docs = rt
            .block_on(pb::documents_client::DocumentsClient::connect(n.endpoint()))
            .expect("connect");
        let err = rt
            .block_on(docs.report(report("deep", "blob", vec![], nested(126))))
            .expect_err("126 levels deep is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("nested more than 32")
                && err.message().contains("json_depth_max"),
            "{}",
            err.message()
        );
        let path: Vec<String> = (0..100_000).map(|i| format!("p{i}")).collect();
        let err = rt
            .block_on(docs.report(report("deep", "temp", path, "1".into())))
            .expect_err("100,000 path segments are refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("100000 segments") && err.message().contains("16"),
            "{}",
            err.message()
        );
        let err = rt
            .block_on(docs.command(pb::DeviceCommandRequest {
                device: "deep/c/1".into(),
                post_type: "set".into(),
                json: nested(126),
            }))
            .expect_err("a command nested 126 deep is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let c = counters(&n.addr);
        assert_eq!(
            c.get("requests_rejected_total{reason=\"too_deep\"}")
                .and_then(Value::as_u64),
            Some(2),
            "{c:?}"
        );
        assert_eq!(
            c.get("requests_rejected_total{reason=\"path_too_deep\"}")
                .and_then(Value::as_u64),
            Some(1),
            "{c:?}"
        );
    }
    // Valid reports beside them go on, through the leader.
    let out = cli(
        &endpoints,
        &[
            "device", "report", "--host", "deep", "--zone", "z", "--class", "c", "--id", "1",
            "hum", "--json", "40",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    cli(&endpoints, &["put", "before-restart", "1"]);

    // Every node is SIGKILLed and restarted: each replays its log, and
    // the cluster serves writes again.
    for n in &mut nodes {
        n.kill9();
    }
    let restarts: Vec<_> = nodes
        .into_iter()
        .map(|mut n| {
            std::thread::spawn(move || {
                n.restart();
                n
            })
        })
        .collect();
    let nodes: Vec<Server> = restarts
        .into_iter()
        .map(|h| h.join().expect("node restarted"))
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let endpoints = addrs.join(",");
    wait_for("a leader after the restart", DEADLINE, || leader_id(&nodes));
    wait_for("a write after the restart", DEADLINE, || {
        cli(&endpoints, &["put", "after-restart", "2"])
            .status
            .success()
            .then_some(())
    });
    for n in &nodes {
        let v = wait_for("both writes on every node", DEADLINE, || {
            let out = cli(
                &n.addr,
                &[
                    "--output",
                    "json",
                    "get",
                    "--consistency",
                    "serializable",
                    "after-restart",
                ],
            );
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["kvs"][0]["value"] == "2").then_some(v)
        });
        assert_eq!(v["kvs"][0]["key"], "after-restart");
    }
    publish(&m, &[("/deep/z/c/1/temp", b"23".to_vec())]);
    wait_on_every_node(&nodes, "deep/c/1", "the device's data intact", |d| {
        d["data"]["temp"] == 23 && d["data"]["hum"] == 40 && d["data"]["ok"].is_array()
    });
    for n in &nodes {
        assert!(n.is_running());
        assert!(!n.stderr_log().contains("panicked"), "{}", n.stderr_log());
    }
}

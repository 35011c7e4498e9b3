//! Seed 000's statistics end to end, on three real `utopiad` nodes and a
//! real mosquitto: device data over MQTT (some of it refused by its
//! class), a command that is never answered and an accepted configuration
//! written by every member produce
//! stats documents (devices, fellows, configurations) with the same bytes
//! on every node, read locally (serializable) from each with
//! `utopia stats get`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mosquitto::{publish_all, Endpoint, Mosquitto, QoS};
use common::{cli, counter, runtime, start_cluster_each, temp_dir, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// The stats document of (`kind`, `id`) as `utopia stats get` prints it
/// with `--output json`, read from `addr` alone (serializable); `None`
/// while there is none.
fn stats(addr: &str, kind: &str, id: &str) -> Option<Value> {
    let out = cli(
        addr,
        &[
            "--output",
            "json",
            "stats",
            "get",
            kind,
            id,
            "--consistency",
            "serializable",
        ],
    );
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("stats get prints JSON");
    assert_eq!(v["collection"], "stats", "{v}");
    assert_eq!(v["id"], format!("{kind}/{id}"), "{v}");
    Some(v["document"].clone())
}

fn total(doc: &Value, counter: &str) -> u64 {
    doc["counters"][counter]["total"].as_u64().unwrap_or(0)
}

/// Waits until every node holds the stats document of (`kind`, `id`)
/// with the same content, `ready` on each; that content.
fn same_on_every_node(
    addrs: &[String],
    kind: &str,
    id: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(
        &format!("stats {kind}/{id} alike on every node"),
        DEADLINE,
        || {
            let docs: Vec<Value> = addrs
                .iter()
                .map(|a| stats(a, kind, id))
                .collect::<Option<_>>()?;
            (docs.iter().all(&ready) && docs.iter().all(|d| *d == docs[0])).then(|| docs[0].clone())
        },
    )
}

#[track_caller]
fn assert_averages(doc: &Value) {
    let p = &doc["periods"];
    let attempts = doc["total_attempts"].as_f64().unwrap();
    for (field, period) in [
        ("daily_attempts", "days"),
        ("weekly_attempts", "weeks"),
        ("monthly_attempts", "months"),
        ("yearly_attempts", "years"),
    ] {
        let n = p[period].as_f64().unwrap();
        assert!(n >= 1.0, "{doc}");
        let avg = doc[field].as_f64().unwrap();
        assert!(
            (avg - attempts / n).abs() <= 1e-9 * attempts.max(1.0),
            "{field}: {doc}"
        );
    }
}

#[test]
fn device_fellow_and_config_statistics_are_the_same_on_three_nodes() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let root = dir.path().to_path_buf();
    let plain = m.plain.port();
    let (nodes, addrs) = start_cluster_each(dir.path(), 3, |id| {
        let configs = root.join(format!("configs{id}"));
        std::fs::create_dir_all(&configs).unwrap();
        let conf = root.join(format!("utopiad{id}.conf"));
        std::fs::write(
            &conf,
            format!(
                "mqtt = {{ bridges = ( {{ name = \"devices\"; host = \"127.0.0.1\"; port = {plain}; \
                 subscriptions = ( {{ filter = \"/gw/#\"; qos = 1; }} ); }} ); \
                 commands = {{ attempts_max = 2; retry_initial_ms = 200; retry_max_ms = 400; }}; }};\n\
                 configs = {{ dir = \"{}\"; scan_interval_ms = 200; }};\n",
                configs.display()
            ),
        )
        .unwrap();
        vec!["--config".to_string(), conf.display().to_string()]
    });
    wait_for(
        "three topic owners, every bridge connected",
        DEADLINE,
        || {
            (counter(&addrs[0], "cluster_ingest_owners") == 3
                && addrs.iter().all(|a| counter(a, "mqtt_connects_total") >= 1))
            .then_some(())
        },
    );

    // 20 messages from device 1, 10 from device 2.
    let messages: Vec<(String, Vec<u8>)> = (0..30u32)
        .map(|n| {
            let (device, post) = if n % 3 == 2 { (2, "hum") } else { (1, "temp") };
            (
                format!("/gw/hall/thermo/{device}/{post}"),
                format!("{{\"n\":{n}}}").into_bytes(),
            )
        })
        .collect();
    let rt = runtime();
    let publish_acked = |messages: &[(String, Vec<u8>)]| {
        let acked = rt.block_on(publish_all(
            Endpoint::plain(m.plain),
            messages,
            QoS::AtLeastOnce,
        ));
        assert!(
            acked.iter().all(|a| *a),
            "the broker acknowledged every message"
        );
    };
    publish_acked(&messages);
    let d1 = same_on_every_node(&addrs, "device", "gw/thermo/1", |d| {
        total(d, "messages") == 20
    });
    assert_eq!(d1["total_attempts"], 20, "{d1}");
    assert_eq!(d1["total_failures"], 0, "{d1}");
    assert_eq!(d1["type"], "device", "{d1}");
    assert_eq!(
        d1["used"].as_array().unwrap().last().unwrap()["command"],
        "data/temp"
    );
    assert_averages(&d1);

    // A command device 2 never answers: two attempts, then failed.
    let out = nodes[0].cli(&["device", "cmd", "gw/thermo/2", "set", "1", "--wait", "30"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let d2 = same_on_every_node(&addrs, "device", "gw/thermo/2", |d| {
        total(d, "commands_failed") == 1
    });
    assert_eq!(total(&d2, "messages"), 10, "{d2}");
    assert_eq!(total(&d2, "commands"), 2, "{d2}");
    assert_eq!(d2["total_attempts"], 12, "{d2}");
    assert_eq!(d2["total_failures"], 1, "{d2}");
    let used: Vec<&str> = d2["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        used[used.len() - 3..],
        ["command/1", "command/1", "command/1/failed"],
        "{d2}"
    );
    assert_averages(&d2);
    // The device document points to it.
    let device = common::cli(
        &addrs[2],
        &["--output", "json", "doc", "get", "devices", "gw/thermo/2"],
    );
    let device: Value = serde_json::from_slice(&device.stdout).unwrap();
    assert_eq!(device["document"]["stats"], "device/gw/thermo/2");

    // An accepted configuration is written by every member: three syncs.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/thermostat.xml");
    nodes[0].cli_ok(&["config", "upload", example.to_str().unwrap()]);
    let c = same_on_every_node(&addrs, "config", "thermostat", |d| total(d, "syncs") == 3);
    assert_eq!(total(&c, "syncs_failed"), 0, "{c}");
    assert_eq!(c["total_attempts"], 3, "{c}");

    // With the class accepted, values out of its range are rejected
    // messages of their device (once the device exists).
    let publish = |payloads: &[&str]| {
        let messages: Vec<(String, Vec<u8>)> = payloads
            .iter()
            .map(|p| {
                (
                    "/gw/hall/thermostat/5/temperature".to_string(),
                    p.as_bytes().to_vec(),
                )
            })
            .collect();
        publish_acked(&messages);
    };
    publish(&["21"]);
    same_on_every_node(&addrs, "device", "gw/thermostat/5", |d| {
        total(d, "messages") == 1
    });
    publish(&["130", r#""warm""#]);
    let t5 = same_on_every_node(&addrs, "device", "gw/thermostat/5", |d| {
        total(d, "messages") == 3
    });
    assert_eq!(total(&t5, "messages_rejected"), 2, "{t5}");
    assert_eq!(t5["total_attempts"], 3, "{t5}");
    assert_eq!(t5["total_failures"], 2, "{t5}");
    assert_eq!(
        t5["used"].as_array().unwrap().last().unwrap()["command"],
        "rejected/temperature",
        "{t5}"
    );

    // Fellows: every message was ingested by one member, and the leader
    // was elected and proposed.
    let ingested = |addr: &str| -> Option<u64> {
        (1..=3)
            .map(|id| {
                stats(addr, "fellow", &id.to_string()).map(|d| total(&d, "messages_ingested"))
            })
            .try_fold(0u64, |sum, n| Some(sum + n.unwrap_or(0)))
    };
    for addr in &addrs {
        // 30 messages, and the thermostat's value in range (the refused
        // ones are not ingested).
        wait_for("every message counted as ingested", DEADLINE, || {
            (ingested(addr) == Some(31)).then_some(())
        });
    }
    let status = nodes[0].cli_json(&["cluster", "status"]);
    let leader = status["leader"].as_u64().expect("a leader");
    let fellow = stats(&addrs[0], "fellow", &leader.to_string()).expect("the leader's stats");
    assert!(total(&fellow, "elections") >= 1, "{fellow}");
    assert!(total(&fellow, "proposals") >= 1, "{fellow}");
    assert!(
        fellow["used"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["command"].as_str().unwrap().starts_with("election/")),
        "{fellow}"
    );

    // The text form prints the document; a (type, id) without statistics
    // exits 1.
    let text = nodes[1].cli_ok(&["stats", "get", "device", "gw/thermo/1"]);
    let printed: Value = serde_json::from_str(&text).expect("the document, as JSON");
    assert_eq!(printed["counters"]["messages"]["total"], 20, "{text}");
    let out = nodes[1].cli(&["stats", "get", "device", "gw/thermo/404"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stats/device/gw/thermo/404"),
        "{out:?}"
    );
}

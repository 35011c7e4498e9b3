//! The NOSPACE alarm through real servers: writes past `limits.db_bytes_max`
//! raise it through the log, every member then refuses writes that add data
//! (reads, deletes, compaction and lease revokes go on), it survives
//! restarts, a disarm while still over the limit is followed by the alarm
//! again, and after deletes, compaction and a disarm the cluster takes
//! writes again. MQTT messages arriving meanwhile wait unacknowledged and
//! are ingested after the disarm.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mosquitto::{publish_all, Mosquitto, QoS};
use common::{cli, counter, runtime, start_cluster, temp_dir, wait_for, Server};
use serde_json::Value;
use utopia_proto::v1 as pb;

const DEADLINE: Duration = Duration::from_secs(60);
const KIB: usize = 1 << 10;
/// The quota the clusters below start with.
const DB_BYTES_MAX: usize = 4 << 20;

fn write_config(path: &Path, body: &str) -> String {
    std::fs::write(path, body).expect("write the configuration");
    path.display().to_string()
}

/// `n` bytes that do not compress, so that what is written is what the
/// database holds.
fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn kv(s: &Server) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    pb::kv_client::KvClient::connect(s.endpoint())
        .await
        .expect("connect")
}

async fn put(s: &Server, key: &str, value: Vec<u8>) -> Result<(), tonic::Status> {
    kv(s)
        .await
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Puts 64 KiB values under `fill/` until a put is refused; returns the
/// refusal. Panics if none comes within the deadline.
async fn fill_until_refused(s: &Server) -> tonic::Status {
    let start = std::time::Instant::now();
    for i in 0u64.. {
        assert!(
            start.elapsed() < DEADLINE,
            "no write was refused after {i} puts of 64 KiB against a quota of {DB_BYTES_MAX} bytes"
        );
        if let Err(e) = put(s, &format!("fill/{i:05}"), incompressible(64 * KIB, i + 1)).await {
            return e;
        }
    }
    unreachable!()
}

fn alarms(addr: &str) -> Vec<Value> {
    let out = cli(addr, &["--output", "json", "alarm", "list"]);
    assert!(
        out.status.success(),
        "alarm list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("alarm list JSON");
    v["alarms"].as_array().cloned().unwrap_or_default()
}

fn assert_nospace(e: &tonic::Status) {
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("database space exceeded") && e.message().contains("NOSPACE"),
        "names the alarm: {}",
        e.message()
    );
}

#[test]
fn writes_past_the_quota_raise_nospace_and_the_cluster_recovers_after_compaction_and_disarm() {
    let rt = runtime();
    let dir = temp_dir();
    let conf = dir.path().join("quota.conf");
    let conf = write_config(
        &conf,
        &format!("limits = {{ db_bytes_max = {DB_BYTES_MAX}; }};\n"),
    );
    let (mut nodes, _) = start_cluster(dir.path(), 3, &["--config", &conf]);
    let leader = wait_for("a leader", DEADLINE, || common::leader_id(&nodes)) as usize - 1;

    // A lease with a key, before the quota is reached.
    let lease = nodes[leader].cli_json(&["lease", "grant", "600"])["id"]
        .as_i64()
        .unwrap();
    let lease_arg = lease.to_string();
    nodes[leader].cli_ok(&["put", "--lease", &lease_arg, "leased", "x"]);
    nodes[leader].cli_ok(&["put", "small", "x"]);

    let refused = rt.block_on(fill_until_refused(&nodes[leader]));
    assert_nospace(&refused);
    let raised = alarms(&nodes[leader].addr);
    assert!(
        !raised.is_empty() && raised.iter().all(|a| a["alarm"] == "NOSPACE"),
        "{raised:?}"
    );
    // Every member's metrics show it, from the replicated state (members
    // may still be raising theirs).
    for n in &nodes {
        wait_for("NOSPACE in the metrics", DEADLINE, || {
            (counter(&n.addr, "alarms_active{alarm=\"NOSPACE\"}") >= 1).then_some(())
        });
    }

    // Every member refuses writes that add data, itself, before proposing.
    for n in &nodes {
        let err = rt
            .block_on(put(n, "more", b"x".to_vec()))
            .expect_err("a put under NOSPACE is refused");
        assert_nospace(&err);
    }
    let out = nodes[leader].cli(&["lease", "grant", "60"]);
    assert_eq!(out.status.code(), Some(3), "a lease grant is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("RESOURCE_EXHAUSTED"));
    // Reads, deletes and lease revokes go on.
    assert_eq!(nodes[leader].cli_ok(&["get", "small"]), "small\nx\n");
    let filled = nodes[leader].cli_json(&["get", "--prefix", "fill/", "--count-only"])["count"]
        .as_i64()
        .unwrap();
    assert!(filled > 0);
    assert_eq!(nodes[leader].cli_ok(&["del", "small"]).trim(), "1");
    nodes[leader].cli_ok(&["lease", "revoke", &lease_arg]);
    assert_eq!(nodes[leader].cli(&["get", "leased"]).status.code(), Some(1));

    // The alarm is in the replicated state: it survives restarts. The
    // members come back with a quarter of the quota, which the data still
    // passes, so a disarm is followed by the alarm again.
    write_config(
        Path::new(&conf),
        &format!("limits = {{ db_bytes_max = {}; }};\n", DB_BYTES_MAX / 4),
    );
    for n in nodes.iter_mut() {
        n.kill9();
    }
    // Together: each waits for a leader, which needs a majority.
    std::thread::scope(|scope| {
        for n in nodes.iter_mut() {
            scope.spawn(|| n.restart());
        }
    });
    let leader = wait_for("a leader after the restart", DEADLINE, || {
        common::leader_id(&nodes)
    }) as usize
        - 1;
    assert!(!alarms(&nodes[leader].addr).is_empty(), "still raised");
    let out = nodes[leader].cli_ok(&["alarm", "disarm"]);
    assert!(
        out.trim().is_empty(),
        "disarm lists what is still active: {out}"
    );
    wait_for("NOSPACE raised again", DEADLINE, || {
        (!alarms(&nodes[leader].addr).is_empty()).then_some(())
    });

    // Free the space: delete, compact the history, disarm.
    nodes[leader].cli_ok(&["del", "--prefix", "fill/"]);
    let revision = nodes[leader].cli_json(&["status"])["revision"]
        .as_i64()
        .unwrap()
        .to_string();
    nodes[leader].cli_ok(&["compact", &revision]);
    nodes[leader].cli_ok(&["alarm", "disarm"]);
    wait_for("writes taken again", DEADLINE, || {
        nodes[leader]
            .cli(&["put", "after", "ok"])
            .status
            .success()
            .then_some(())
    });
    assert!(alarms(&nodes[leader].addr).is_empty());
    assert_eq!(nodes[leader].cli_ok(&["get", "after"]), "after\nok\n");
}

fn plain_bridge(m: &Mosquitto) -> String {
    format!(
        r#"mqtt = {{ bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {}; subscriptions = ( {{ filter = "/nshost/#"; qos = 1; }} ); }} ); }};"#,
        m.plain.port()
    )
}

fn device_doc(addr: &str, id: &str) -> Option<Value> {
    let out = cli(addr, &["--output", "json", "doc", "get", "devices", id]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["document"].clone())
}

#[test]
fn mqtt_messages_wait_unacknowledged_under_nospace_and_are_ingested_after_disarm() {
    let rt = runtime();
    let m = Mosquitto::start();
    let dir = temp_dir();
    let conf = write_config(
        &dir.path().join("utopiad.conf"),
        &format!(
            "limits = {{ db_bytes_max = {DB_BYTES_MAX}; }};\n{}\n",
            plain_bridge(&m)
        ),
    );
    let s = Server::start_with(&dir.path().join("data"), &["--config", &conf]);
    wait_for("topic owners and a connected bridge", DEADLINE, || {
        (counter(&s.addr, "cluster_ingest_owner_epoch") >= 1
            && counter(&s.addr, "mqtt_connects_total") >= 1)
            .then_some(())
    });
    assert_nospace(&rt.block_on(fill_until_refused(&s)));

    let batches = counter(&s.addr, "ingest_batches_total");
    let messages: Vec<(String, Vec<u8>)> = (0..20)
        .map(|n| {
            (
                format!("/nshost/z/c/{}/n/{n}", n % 4),
                n.to_string().into_bytes(),
            )
        })
        .collect();
    let acked = rt.block_on(publish_all(m.plain_endpoint(), &messages, QoS::AtLeastOnce));
    assert!(acked.iter().all(|a| *a), "the broker took every message");
    // Held, unacknowledged, not proposed: the core checks the alarm and
    // waits longer each time instead of proposing batches every replica
    // would reject.
    wait_for("the messages held and the core paused", DEADLINE, || {
        (counter(&s.addr, "ingest_pending_messages") == 20
            && counter(&s.addr, "ingest_alarm_pauses_total") >= 3)
            .then_some(())
    });
    assert_eq!(counter(&s.addr, "ingest_batches_total"), batches);
    assert!(device_doc(&s.addr, "nshost/c/0").is_none());

    s.cli_ok(&["del", "--prefix", "fill/"]);
    let revision = s.cli_json(&["status"])["revision"]
        .as_i64()
        .unwrap()
        .to_string();
    s.cli_ok(&["compact", &revision]);
    s.cli_ok(&["alarm", "disarm"]);
    wait_for("every held message ingested", DEADLINE, || {
        (0..4)
            .all(|d| {
                device_doc(&s.addr, &format!("nshost/c/{d}"))
                    .is_some_and(|doc| doc["data"]["n"].as_object().map(|o| o.len()) == Some(5))
            })
            .then_some(())
    });
    wait_for("every message acknowledged", DEADLINE, || {
        (counter(&s.addr, "ingest_pending_messages") == 0).then_some(())
    });
}

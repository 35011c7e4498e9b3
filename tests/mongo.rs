//! The MongoDB mirror against a real MongoDB wire-protocol server
//! (nx-27017, started by the harness) and three real utopiad nodes: under
//! write load, through a SIGKILL of the leader, a document changed behind
//! utopia's back, and a server that refuses writes.

#![cfg(feature = "mongodb")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::mongo::MongoServer;
use common::*;
use mongodb::bson::{doc, Bson, Document};
use serde_json::Value;

const DB: &str = "utopia";

/// The mirror's settings for the tests: small batches, so that a batch is
/// usually in flight, and quick retries.
const CONF: &str = r#"
mongodb = {
  enabled = true;
  database = "utopia";
  mirror_kv = true;
  batch_docs_max = 20;
  verify_sample_docs = 8;
  verify_attempts_max = 3;
  retry_backoff_ms = 100;
  poll_interval_ms = 50;
  timeout_ms = 5000;
};
"#;

/// Utopia's collections and the MongoDB collections they mirror into.
const COLLECTIONS: [(&str, &str); 6] = [
    ("devices", "devices"),
    ("zones", "zones"),
    ("fellows", "fellows"),
    ("db_servers", "nosql_servers"),
    ("xml_configs", "xmlconfigurations"),
    ("stats", "stats"),
];

fn server_label(mongo: &MongoServer) -> String {
    format!("{{server=\"127.0.0.1:{}:mongodb\"}}", mongo.port)
}

/// Every document of `collection` as a linearizable read on `addr` shows it.
fn utopia_docs(addr: &str, collection: &str) -> Option<BTreeMap<String, Value>> {
    let out = cli(
        addr,
        &["--output", "json", "doc", "list", collection, "--all"],
    );
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v["documents"]
            .as_array()?
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap_or("").to_string(),
                    d["document"].clone(),
                )
            })
            .collect(),
    )
}

/// Every key under `prefix` and its value, as utopia holds them.
fn utopia_keys(addr: &str, prefix: &str) -> Option<BTreeMap<String, String>> {
    let out = cli(addr, &["--output", "json", "get", prefix, "--prefix"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v["kvs"]
            .as_array()?
            .iter()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap_or("").to_string(),
                    kv["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

/// A MongoDB document as JSON, without `_id` (integers of any width as
/// JSON integers, doubles as JSON floats).
fn as_json(mut d: Document) -> Value {
    d.remove("_id");
    Bson::Document(d).into_relaxed_extjson()
}

/// Why MongoDB's copy differs from utopia's, if it does: a document
/// missing (a gap), one too many or twice (a duplicate), or other values.
fn difference(addr: &str, mongo: &MongoServer, rt: &tokio::runtime::Runtime) -> Option<String> {
    for (ours, theirs) in COLLECTIONS {
        let Some(want) = utopia_docs(addr, ours) else {
            return Some(format!("cannot list {ours}"));
        };
        let got = rt.block_on(mongo.all(DB, theirs));
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        for d in got {
            let id = d.get_str("_id").unwrap_or("?").to_string();
            if seen.insert(id.clone(), as_json(d)).is_some() {
                return Some(format!("{theirs}/{id} is there twice"));
            }
        }
        for (id, doc) in &want {
            match seen.get(id) {
                None => return Some(format!("{theirs}/{id} is missing")),
                Some(d) if d != doc => {
                    return Some(format!("{theirs}/{id} differs: {d} vs utopia's {doc}"))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = seen.keys().find(|id| !want.contains_key(*id)) {
            return Some(format!("{theirs}/{extra} is not in utopia"));
        }
    }
    let want = utopia_keys(addr, "k/")?;
    let got = rt.block_on(mongo.all(DB, "kv"));
    let got: BTreeMap<String, String> = got
        .iter()
        .filter_map(|d| {
            Some((
                d.get_str("_id").ok()?.to_string(),
                d.get_str("value").ok()?.to_string(),
            ))
        })
        .filter(|(k, _)| k.starts_with("k/"))
        .collect();
    if got != want {
        return Some(format!(
            "kv differs: {} keys in MongoDB, {} in utopia",
            got.len(),
            want.len()
        ));
    }
    None
}

fn wait_equal(addr: &str, mongo: &MongoServer, rt: &tokio::runtime::Runtime, what: &str) {
    let deadline = Duration::from_secs(120);
    let start = std::time::Instant::now();
    loop {
        let Some(last) = difference(addr, mongo, rt) else {
            return;
        };
        assert!(
            start.elapsed() < deadline,
            "{what}: MongoDB did not come to equal utopia within {deadline:?}; last difference: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn leader(nodes: &[Server]) -> &Server {
    let id = wait_for("a leader", Duration::from_secs(30), || leader_id(nodes));
    &nodes[id as usize - 1]
}

#[test]
fn the_mirror_resumes_after_a_leader_kill_repairs_tampering_and_marks_a_refusing_server() {
    let rt = runtime();
    let mongo = MongoServer::start();
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(&conf, CONF).unwrap();
    let (mut nodes, addrs) = start_cluster(dir.path(), 3, &["--config", conf.to_str().unwrap()]);
    let all = addrs.join(",");
    let label = server_label(&mongo);

    // Data before the server is added: the first leader copies it whole.
    for i in 0..5 {
        let out = cli(&all, &["put", &format!("k/before{i}"), "x"]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = cli(&all, &["db", "add", &mongo.addr]);
    assert!(out.status.success(), "{out:?}");

    // Write load from a thread: device reports and keys, through any
    // member (the CLI fails over), until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, all) = (stop.clone(), written.clone(), all.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 2_000 {
                let id = (i % 25).to_string();
                let zone = format!("z{}", i % 3);
                let value = i.to_string();
                let report = cli(
                    &all,
                    &[
                        "device", "report", "--host", "gw1", "--zone", &zone, "--class", "thermo",
                        "--id", &id, "temp", "--json", &value,
                    ],
                );
                let put = cli(&all, &["put", &format!("k/{}", i % 40), &value]);
                if report.status.success() && put.status.success() {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };

    // Kill the leader while the mirror is busy: batches going, and behind.
    let first = leader(&nodes);
    let first_addr = first.addr.clone();
    wait_for(
        "the mirror to write batches under load",
        Duration::from_secs(60),
        || {
            let c = counters(&first_addr);
            let batches = c
                .get(&format!("mongo_mirror_batches_total{label}"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            (batches >= 5 && written.load(Ordering::Relaxed) >= 50).then_some(())
        },
    );
    assert_eq!(
        counter(
            &first_addr,
            &format!("mongo_mirror_full_copies_total{label}")
        ),
        1,
        "the first leader copied whole once (no checkpoint yet)"
    );
    let first_index = nodes.iter().position(|n| n.addr == first_addr).unwrap();
    nodes[first_index].kill9();

    // A new leader takes over the mirror from the checkpoint.
    let killed = first_index as u64 + 1;
    let second_id = wait_for("a new leader", Duration::from_secs(30), || {
        leader_id(&nodes).filter(|id| *id != killed)
    });
    let second = &nodes[second_id as usize - 1];
    let second_addr = second.addr.clone();
    wait_for(
        "the new leader to mirror batches",
        Duration::from_secs(60),
        || {
            (counter(&second_addr, &format!("mongo_mirror_batches_total{label}")) >= 3)
                .then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(written.load(Ordering::Relaxed) >= 50);
    wait_equal(&second_addr, &mongo, &rt, "after the leader was killed");
    assert_eq!(
        counter(
            &second_addr,
            &format!("mongo_mirror_full_copies_total{label}")
        ),
        0,
        "the new leader resumed from the checkpoint instead of copying whole"
    );
    wait_for("the lag to reach 0", Duration::from_secs(30), || {
        (counter(
            &second_addr,
            &format!("mongo_mirror_lag_log_entries{label}"),
        ) == 0)
            .then_some(())
    });

    // A document changed in MongoDB behind utopia's back is found by the
    // audit and rewritten.
    let repaired_before = counter(
        &second_addr,
        &format!("mongo_mirror_repaired_docs_total{label}"),
    );
    rt.block_on(async {
        let client = mongo.client().await;
        let devices = client.database(DB).collection::<Document>("devices");
        let r = devices
            .update_one(
                doc! { "_id": "gw1/thermo/3" },
                doc! { "$set": { "zone": "tampered" } },
            )
            .await
            .expect("tamper with a device");
        assert_eq!((r.matched_count, r.modified_count), (1, 1));
    });
    // The audit may repair it before a comparison here could see it (it
    // runs every poll while the mirror is idle): the repair counter below
    // is what shows that it found the change.
    wait_equal(&second_addr, &mongo, &rt, "after tampering");
    assert!(
        counter(
            &second_addr,
            &format!("mongo_mirror_repaired_docs_total{label}")
        ) > repaired_before
    );

    // A server that refuses writes: a unique index that the next device
    // violates. The leader retries, then marks it problematic through the
    // log; every member lists it so.
    rt.block_on(async {
        let client = mongo.client().await;
        let devices = client.database(DB).collection::<Document>("devices");
        devices
            .insert_one(doc! { "_id": "intruder", "topic_focus": "/gw9/z9/thermo/1" })
            .await
            .expect("insert the intruder");
        let index = mongodb::IndexModel::builder()
            .keys(doc! { "topic_focus": 1 })
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build();
        devices
            .create_index(index)
            .await
            .expect("create a unique index");
    });
    let out = cli(
        &all,
        &[
            "device", "report", "--host", "gw9", "--zone", "z9", "--class", "thermo", "--id", "1",
            "temp", "--json", "1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let problematic = |node: &Server| {
        let v = node.cli_json(&["db", "list", "--consistency", "serializable"]);
        v["db_servers"]
            .as_array()
            .and_then(|s| s.first().cloned())
            .filter(|s| s["state"] == "problematic")
    };
    for node in nodes.iter().filter(|n| n.is_running()) {
        let s = wait_for(
            "the server to be marked problematic",
            Duration::from_secs(60),
            || problematic(node),
        );
        let reason = s["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("11000") || reason.contains("refused"),
            "{reason}"
        );
    }
    assert_eq!(
        counter(
            &second_addr,
            &format!("mongo_mirror_marked_problematic_total{label}")
        ),
        1
    );

    // The operator fixes the server and adds it back: the mirror catches up.
    rt.block_on(async {
        let client = mongo.client().await;
        let devices = client.database(DB).collection::<Document>("devices");
        devices
            .delete_one(doc! { "_id": "intruder" })
            .await
            .expect("delete the intruder");
        for name in devices.list_index_names().await.expect("list indexes") {
            if name.contains("topic_focus") {
                devices.drop_index(name).await.expect("drop the index");
            }
        }
    });
    let out = cli(&all, &["db", "add", &mongo.addr]);
    assert!(out.status.success(), "{out:?}");
    wait_equal(
        &second_addr,
        &mongo,
        &rt,
        "after the server was added again",
    );
    let gw9 = rt.block_on(async {
        let client = mongo.client().await;
        let devices = client.database(DB).collection::<Document>("devices");
        devices
            .find_one(doc! { "_id": "gw9/thermo/1" })
            .await
            .expect("find")
    });
    assert!(
        gw9.is_some(),
        "the device the server refused is mirrored now"
    );
    drop(nodes);
}

/// Only members with `mongodb.enabled` keep the mirror feed. A member that
/// ran without it and is started with it again has a feed that is complete
/// only from then: the mirror copies whole instead of resuming from its
/// older checkpoint across the writes it never recorded, and ends equal.
#[test]
fn a_member_that_ran_without_the_mirror_copies_whole_when_it_is_turned_on_again() {
    let rt = runtime();
    let mongo = MongoServer::start();
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(&conf, CONF).unwrap();
    let mut node = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let label = server_label(&mongo);
    let full_copies = |addr: &str| counter(addr, &format!("mongo_mirror_full_copies_total{label}"));
    let put = |addr: &str, key: &str, value: &str| {
        let out = cli(addr, &["put", key, value]);
        assert!(out.status.success(), "{out:?}");
    };

    // Mirrored and checkpointed.
    put(&node.addr, "k/on", "1");
    let out = node.cli(&["db", "add", &mongo.addr]);
    assert!(out.status.success(), "{out:?}");
    wait_equal(&node.addr, &mongo, &rt, "with the mirror on");
    put(&node.addr, "k/on", "2");
    wait_equal(&node.addr, &mongo, &rt, "after a batch from the feed");
    assert_eq!(full_copies(&node.addr), 1, "no checkpoint at first");

    // Without the mirror: writes that no feed records.
    node.terminate();
    std::fs::write(&conf, "mongodb = { enabled = false; };\n").unwrap();
    node.restart();
    for i in 0..5 {
        put(&node.addr, &format!("k/off{i}"), "x");
    }
    put(&node.addr, "k/on", "3");
    assert!(difference(&node.addr, &mongo, &rt).is_some());

    // On again: the checkpoint is older than the feed, so the mirror
    // copies whole, and MongoDB holds the writes made while it was off.
    node.terminate();
    std::fs::write(&conf, CONF).unwrap();
    node.restart();
    wait_equal(
        &node.addr,
        &mongo,
        &rt,
        "after the mirror was turned on again",
    );
    assert_eq!(
        full_copies(&node.addr),
        1,
        "the member copied whole instead of resuming across writes its feed never held"
    );
    put(&node.addr, "k/on", "4");
    wait_equal(&node.addr, &mongo, &rt, "following the feed again");
    assert_eq!(full_copies(&node.addr), 1);
}

//! MQTT ingest through a real mosquitto into real `utopiad` processes:
//! documents from device topics over plain, TLS and password bridges; bad
//! input counted beside valid traffic; device commands with replies and
//! retries; exactly-once ingest across a three-node cluster while the
//! ingesting node is SIGKILLed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mosquitto::{publish_all, Endpoint, Mosquitto, QoS, Subscriber};
use common::{cli, counter, counters, runtime, start_cluster, temp_dir, wait_for, Server};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("utopiad.conf");
    std::fs::write(&path, body).expect("write utopiad.conf");
    path.display().to_string()
}

fn plain_bridge(name: &str, m: &Mosquitto, filter: &str) -> String {
    format!(
        r#"{{ name = "{name}"; host = "127.0.0.1"; port = {}; subscriptions = ( {{ filter = "{filter}"; qos = 1; }} ); }}"#,
        m.plain.port()
    )
}

/// The device document, read locally (serializable) from `addr`.
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

/// One `utopiad` with `config` in `dir`, returned once it owns topics and
/// its bridge is connected.
fn start_ingesting(dir: &Path, config: &str) -> Server {
    let conf = write_config(dir, config);
    let server = Server::start_with(&dir.join("data"), &["--config", &conf]);
    let addr = server.addr.clone();
    wait_for("topic owners", DEADLINE, || {
        (counter(&addr, "cluster_ingest_owner_epoch") >= 1
            && counter(&addr, "mqtt_connects_total") >= 1)
            .then_some(())
    });
    server
}

fn msgs(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    items
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_vec()))
        .collect()
}

/// `total` messages `/{prefix}/z/c/{device}/n/{n}` with payload `n`, spread
/// round-robin over `devices` devices.
fn numbered(prefix: &str, devices: u64, total: u64) -> Vec<(String, Vec<u8>)> {
    (0..total)
        .map(|n| {
            (
                format!("/{prefix}/z/c/{}/n/{n}", n % devices),
                n.to_string().into_bytes(),
            )
        })
        .collect()
}

/// Asserts that every one of `devices` devices under `prefix` holds
/// `per_device` entries in its `n` data, as read from `addr`.
fn assert_numbered_documents(addr: &str, prefix: &str, devices: u64, per_device: usize) {
    for d in 0..devices {
        let doc = device(addr, &format!("{prefix}/c/{d}")).unwrap();
        assert_eq!(
            doc["data"]["n"].as_object().unwrap().len(),
            per_device,
            "{doc}"
        );
    }
}

#[test]
fn device_messages_become_documents_through_plain_tls_and_password_bridges() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let ca = m.ca_file.display();
    let (cert, key) = (m.client_cert.display(), m.client_key.display());
    let conf = write_config(
        dir.path(),
        &format!(
            r#"mqtt = {{ bridges = (
  {plain},
  {{ name = "tls"; host = "127.0.0.1"; port = {mtls}; protocol = 5;
     tls = {{ ca_file = "{ca}"; cert_file = "{cert}"; key_file = "{key}"; }};
     subscriptions = ( {{ filter = "/tlshost/#"; qos = 2; }} ); }},
  {{ name = "auth"; role = "all"; host = "127.0.0.1"; port = {auth}; username = "{user}"; password = "{pass}";
     subscriptions = ( {{ filter = "/authhost/#"; qos = 1; }} ); }}
); }};
"#,
            plain = plain_bridge("plain", &m, "/plainhost/#"),
            mtls = m.mtls.port(),
            auth = m.auth.port(),
            user = m.username,
            pass = m.password,
        ),
    );
    let server = Server::start_with(&dir.path().join("data"), &["--config", &conf]);
    let addr = server.addr.clone();
    // All three bridges are connected before anything is published.
    wait_for("three MQTT connections", DEADLINE, || {
        (counter(&addr, "mqtt_connects_total") >= 3).then_some(())
    });
    wait_for("topic owners", DEADLINE, || {
        (counter(&addr, "cluster_ingest_owner_epoch") >= 1).then_some(())
    });

    let mut cbor = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Map(vec![(
            ciborium::Value::Text("rssi".into()),
            ciborium::Value::Integer((-61).into()),
        )]),
        &mut cbor,
    )
    .unwrap();
    let rt = runtime();
    let acked = rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &msgs(&[
            ("/plainhost/kitchen/thermo/7/temp", b"21.5"),
            ("/plainhost/kitchen/thermo/7/mystery/a/b", br#"{"x":1}"#),
            ("/plainhost/kitchen/thermo/7/radio", &cbor),
            ("/plainhost/hall/switch/0/state", b"on"),
        ]),
        QoS::AtLeastOnce,
    ));
    assert!(
        acked.iter().all(|a| *a),
        "broker acknowledgements: {acked:?}"
    );
    rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &msgs(&[("/tlshost/lab/sensor/uuid-1/temp", b"19")]),
        QoS::ExactlyOnce,
    ));
    rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &msgs(&[("/authhost/lab/sensor/2/temp", b"18")]),
        QoS::AtLeastOnce,
    ));

    let doc = wait_for("the thermostat's document", DEADLINE, || {
        device(&addr, "plainhost/thermo/7").filter(|d| d["data"]["radio"] != Value::Null)
    });
    assert_eq!(doc["data"]["temp"], 21.5);
    assert_eq!(doc["zone"], "kitchen");
    assert_eq!(doc["class"], "thermo");
    assert_eq!(doc["topic_focus"], "/plainhost/kitchen/thermo/7");
    // An unknown post type nests by the data path.
    assert_eq!(doc["data"]["mystery"]["a"]["b"]["x"], 1);
    assert_eq!(doc["data"]["radio"]["rssi"], -61);
    assert_eq!(doc["last"]["temp"]["value"], 21.5);
    assert!(doc["first_seen_ms"].as_u64().is_some());
    let switch = wait_for("the switch", DEADLINE, || {
        device(&addr, "plainhost/switch/0")
    });
    assert_eq!(switch["data"]["state"], "on");
    let zone = server.cli_json(&["doc", "get", "zones", "kitchen"]);
    assert_eq!(zone["document"]["devices"][0], "plainhost/thermo/7");

    // The TLS (client certificate, MQTT 5, QoS 2) and password bridges.
    let tls = wait_for("a document through the TLS bridge", DEADLINE, || {
        device(&addr, "tlshost/sensor/uuid-1")
    });
    assert_eq!(tls["data"]["temp"], 19);
    let auth = wait_for("a document through the password bridge", DEADLINE, || {
        device(&addr, "authhost/sensor/2")
    });
    assert_eq!(auth["data"]["temp"], 18);

    // The cluster topics reach the bridge that carries server traffic.
    rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &msgs(&[("/utopia/1/hello", b"hi")]),
        QoS::AtLeastOnce,
    ));
    wait_for("a cluster-topic message counted", DEADLINE, || {
        (counter(&addr, "mqtt_cluster_messages_total") >= 1).then_some(())
    });
    assert_eq!(counter(&addr, "cluster_ingest_applied_total"), 6);
}

#[test]
fn bad_input_is_counted_and_valid_traffic_beside_it_is_ingested() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let server = start_ingesting(
        dir.path(),
        &format!(
            "mqtt = {{ bridges = ( {} ); ingest = {{ payload_bytes_max = 1024; device_messages_per_s_max = 20; }}; }};\n",
            plain_bridge("devices", &m, "#")
        ),
    );
    let addr = server.addr.clone();
    let big = vec![b'7'; 2048];
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..20 {
        batch.push((format!("/h/z/good/{i}/temp"), i.to_string().into_bytes()));
        match i % 5 {
            0 => batch.push(("/h/z/short".into(), b"1".to_vec())),
            1 => batch.push((
                format!("/h/z/bad/{i}/temp"),
                vec![0xff, 0xfe, 0xfd, 0x00, 0x80],
            )),
            2 => batch.push((format!("/h/z/bad/{i}/temp"), big.clone())),
            3 => batch.push((format!("/h/z/bad/{i}/temp"), b"{\"unclosed\": ".to_vec())),
            _ => batch.push((format!("/h/z/bad/{i}/temp"), vec![0x82, 0x01])), // truncated CBOR
        }
    }
    // One device floods: 200 messages at once, over its 20 per second.
    for n in 0..200 {
        batch.push(("/h/z/flood/0/n".into(), n.to_string().into_bytes()));
    }
    let rt = runtime();
    let acked = rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &batch,
        QoS::AtLeastOnce,
    ));
    assert!(acked.iter().all(|a| *a));

    for i in 0..20 {
        let d = wait_for(&format!("good device {i}"), DEADLINE, || {
            device(&addr, &format!("h/good/{i}"))
        });
        assert_eq!(d["data"]["temp"], i);
    }
    let c = wait_for("every message settled", DEADLINE, || {
        let c = counters(&addr);
        let get = |n: &str| c.get(n).and_then(Value::as_u64).unwrap_or(0);
        (get("cluster_ingest_applied_total") + get("cluster_ingest_dropped_total") == 20 + 200)
            .then_some(c)
    });
    let get = |n: &str| c.get(n).and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(
        get("mqtt_rejected_total{reason=\"topic_too_few_levels\"}"),
        4
    );
    assert_eq!(get("mqtt_rejected_total{reason=\"bad_payload\"}"), 8);
    assert_eq!(get("mqtt_rejected_total{reason=\"payload_too_large\"}"), 4);
    assert_eq!(get("mqtt_rejected_total{reason=\"bad_json\"}"), 4);
    assert!(
        get("mqtt_rejected_total{reason=\"device_rate\"}") > 0,
        "{c:?}"
    );
    assert!(get("cluster_ingest_dropped_total") > 0);
    assert!(server.is_running());
    let log = server.stderr_log();
    assert!(log.contains("MQTT message rejected"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_burst_beyond_the_pending_bound_waits_in_the_broker_and_is_all_ingested() {
    const DEVICES: u64 = 30;
    const TOTAL: u64 = 900;
    let m = Mosquitto::start();
    let dir = temp_dir();
    let server = start_ingesting(
        dir.path(),
        &format!(
            "mqtt = {{ bridges = ( {} ); ingest = {{ pending_messages_max = 20; device_messages_per_s_max = 100000; }}; }};\n",
            plain_bridge("devices", &m, "/burst/#")
        ),
    );
    let addr = server.addr.clone();
    let batch = numbered("burst", DEVICES, TOTAL);
    let rt = runtime();
    let acked = rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &batch,
        QoS::AtLeastOnce,
    ));
    assert!(acked.iter().all(|a| *a));
    let c = wait_for("every message of the burst committed", DEADLINE, || {
        let c = counters(&addr);
        let get = |n: &str| c.get(n).and_then(Value::as_u64).unwrap_or(0);
        (get("cluster_ingest_applied_total") == TOTAL && get("ingest_pending_messages") == 0)
            .then_some(c)
    });
    let rejected: Vec<_> = c
        .iter()
        .filter(|(k, _)| k.starts_with("mqtt_rejected_total"))
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_numbered_documents(&addr, "burst", DEVICES, (TOTAL / DEVICES) as usize);
}

#[test]
fn commands_are_acknowledged_by_a_replying_device_and_fail_without_one() {
    let m = Mosquitto::start();
    let dir = temp_dir();
    let server = start_ingesting(
        dir.path(),
        &format!(
            "mqtt = {{ bridges = ( {} ); commands = {{ attempts_max = 3; retry_initial_ms = 200; retry_max_ms = 400; }}; }};\n",
            plain_bridge("devices", &m, "/h/#")
        ),
    );
    let addr = server.addr.clone();
    let rt = runtime();
    rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &msgs(&[("/h/z/valve/1/pos", b"0"), ("/h/z/valve/2/pos", b"0")]),
        QoS::AtLeastOnce,
    ));
    wait_for("both valves", DEADLINE, || {
        device(&addr, "h/valve/2").and(device(&addr, "h/valve/1"))
    });

    // A simulated device 1 answers every command on its reply topic.
    let mut sub = rt.block_on(Subscriber::start(
        Endpoint::plain(m.plain),
        "/h/z/valve/1/cmd/#",
        QoS::AtLeastOnce,
    ));
    // It stops after 10 s without a command, keeping its connection until
    // then so that its replies go out.
    let responder = rt.spawn(async move {
        let mut seen = Vec::new();
        while let Some(msg) = sub.next(Duration::from_secs(10)).await {
            let v: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            seen.push(v.clone());
            let id = v["id"].as_u64().unwrap_or(0);
            let _ = sub
                .client()
                .publish(
                    format!("/h/z/valve/1/reply/{id}"),
                    QoS::AtLeastOnce,
                    false,
                    br#"{"ok":true}"#.to_vec(),
                )
                .await;
        }
        seen
    });
    let out = server.cli_ok(&[
        "device",
        "cmd",
        "h/valve/1",
        "open",
        r#"{"to":40}"#,
        "--wait",
        "30",
    ]);
    assert!(out.ends_with("acknowledged\n"), "{out}");
    let seen = rt.block_on(responder).unwrap();
    assert_eq!(seen.len(), 1, "one publish, answered at once: {seen:?}");
    assert_eq!(seen[0]["payload"]["to"], 40);
    let d = device(&addr, "h/valve/1").unwrap();
    let cmd = &d["commands"]["1"];
    assert_eq!(cmd["state"], "acknowledged");
    assert_eq!(cmd["reply"]["ok"], true);
    assert_eq!(cmd["attempts"], 1);

    // Device 2 never answers: three attempts, then failed.
    let out = server.cli(&["device", "cmd", "h/valve/2", "open", "1", "--wait", "30"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
    let d = device(&addr, "h/valve/2").unwrap();
    let cmd = &d["commands"]["2"];
    assert_eq!(cmd["state"], "failed");
    assert_eq!(cmd["attempts"], 3);
    let stats = server.cli_json(&["doc", "get", "stats", "device/h/valve/2"]);
    // Its data message and three command attempts.
    assert_eq!(stats["document"]["total_attempts"], 4, "{stats}");
    assert_eq!(
        stats["document"]["counters"]["commands"]["total"], 3,
        "{stats}"
    );
    assert_eq!(stats["document"]["total_failures"], 1, "{stats}");
    // An unknown device is refused.
    let out = server.cli(&["device", "cmd", "h/valve/9", "open", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn three_nodes_ingest_every_acknowledged_message_exactly_once_across_a_sigkill() {
    const DEVICES: u64 = 6;
    const PER_DEVICE: u64 = 250;
    let m = Mosquitto::start();
    let dir = temp_dir();
    let conf = write_config(
        dir.path(),
        &format!(
            "mqtt = {{ bridges = ( {} ); }};\n",
            plain_bridge("devices", &m, "/seq/#")
        ),
    );
    let (mut nodes, addrs) = start_cluster(dir.path(), 3, &["--config", &conf]);
    let endpoints = addrs.join(",");
    wait_for("three topic owners", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_owners") == 3
            && nodes
                .iter()
                .all(|n| counter(&n.addr, "mqtt_connects_total") >= 1))
        .then_some(())
    });

    // One publisher, QoS 1, unique sequence numbers, paced so that the
    // stream is still running when a node dies.
    let rt = runtime();
    let plain = m.plain;
    let publisher = rt.spawn(async move {
        let mut acked = Vec::new();
        for chunk in 0..PER_DEVICE / 10 {
            let mut batch = Vec::new();
            for n in chunk * 10..(chunk + 1) * 10 {
                for d in 0..DEVICES {
                    batch.push((format!("/seq/z/c/{d}/n/{n}"), n.to_string().into_bytes()));
                }
            }
            let ok = publish_all(Endpoint::plain(plain), &batch, QoS::AtLeastOnce).await;
            acked.extend(batch.into_iter().zip(ok));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        acked
    });

    // Kill the node that has ingested the most so far, mid-stream.
    wait_for("a third of the stream committed", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_applied_total") >= DEVICES * PER_DEVICE / 3)
            .then_some(())
    });
    let victim = (0..3)
        .max_by_key(|i| counter(&nodes[*i].addr, "ingest_batches_total"))
        .unwrap();
    nodes[victim].kill9();
    let survivor = &addrs[(victim + 1) % 3];
    let acked = rt.block_on(publisher).unwrap();
    assert!(
        counter(survivor, "cluster_ingest_applied_total") < DEVICES * PER_DEVICE,
        "the stream ended before the kill"
    );
    let acked_count = acked.iter().filter(|(_, ok)| *ok).count() as u64;
    assert_eq!(
        acked_count,
        DEVICES * PER_DEVICE,
        "the broker acknowledged every publish"
    );

    // Every acknowledged message is in the log: each device's data tree
    // holds every sequence number.
    let total = DEVICES * PER_DEVICE;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while counter(survivor, "cluster_ingest_applied_total") < total {
        if std::time::Instant::now() > deadline {
            for n in &nodes {
                eprintln!("---- node at {}: {:?}", n.addr, counters(&n.addr));
                eprintln!("{}", n.stderr_log());
            }
            panic!("not every acknowledged message was committed within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[victim].restart();
    // The restarted node catches up, and its broker session's redeliveries
    // are settled without new events.
    for n in &nodes {
        wait_for("every node caught up", Duration::from_secs(120), || {
            (0..DEVICES)
                .all(|d| {
                    device(&n.addr, &format!("seq/c/{d}")).is_some_and(|doc| {
                        doc["data"]["n"].as_object().map_or(0, |o| o.len()) as u64 == PER_DEVICE
                    })
                })
                .then_some(())
        });
    }
    for ((topic, payload), _) in &acked {
        let d: u64 = topic.split('/').nth(4).unwrap().parse().unwrap();
        let n = String::from_utf8(payload.clone()).unwrap();
        let doc = device(survivor, &format!("seq/c/{d}")).unwrap();
        assert_eq!(doc["data"]["n"][&n], n.parse::<u64>().unwrap(), "{topic}");
    }
    // Exactly once: as many device events as messages, none twice.
    let c = counters(survivor);
    let get = |n: &str| c.get(n).and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(get("cluster_ingest_applied_total"), total, "{c:?}");
    assert_eq!(get("cluster_ingest_dropped_total"), 0, "{c:?}");
    println!(
        "exactly-once: {total} messages, {} redelivered copies suppressed, {} stale batches refused, owner epoch {}",
        get("cluster_ingest_suppressed_total"),
        get("cluster_ingest_stale_batches_total"),
        get("cluster_ingest_owner_epoch"),
    );
    let _ = endpoints;
}

/// A TCP proxy that can cut every connection through it and refuse new
/// ones until it is restored.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl CuttableProxy {
    fn start(rt: &tokio::runtime::Runtime, target: std::net::SocketAddr) -> CuttableProxy {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_rx.clone();
                if *cut_rx.borrow() {
                    continue; // refused: dropped at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        CuttableProxy { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[test]
fn a_member_cut_off_from_the_broker_gives_up_its_devices_until_it_is_back() {
    const DEVICES: u64 = 30;
    let m = Mosquitto::start();
    let rt = runtime();
    let proxy = CuttableProxy::start(&rt, m.plain);
    let dir = temp_dir();
    // Node 3 reaches the broker through the proxy, and remembers fewer
    // digests committed before its copies arrived than it will miss: the
    // rest of its backlog is settled from the store's dedupe records.
    let (nodes, addrs) = common::start_cluster_each(dir.path(), 3, |id| {
        let (port, ingest) = if id == 3 {
            (
                proxy.addr.port(),
                "ingest = { pending_messages_max = 100; };",
            )
        } else {
            (m.plain.port(), "")
        };
        let d = dir.path().join(format!("conf{id}"));
        std::fs::create_dir_all(&d).unwrap();
        let conf = write_config(
            &d,
            &format!(
                r#"mqtt = {{ {ingest} bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {port}; subscriptions = ( {{ filter = "/cut/#"; qos = 1; }} ); }} ); }};
"#
            ),
        );
        vec!["--config".to_string(), conf]
    });
    wait_for("three topic owners", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_owners") == 3).then_some(())
    });

    proxy.set_cut(true);
    wait_for("node 3 giving up its devices", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_owners") == 2).then_some(())
    });
    let batch = numbered("cut", DEVICES, DEVICES * 10);
    let acked = rt.block_on(publish_all(
        Endpoint::plain(m.plain),
        &batch,
        QoS::AtLeastOnce,
    ));
    assert!(acked.iter().all(|a| *a));
    let total = DEVICES * 10;
    wait_for("every message committed by nodes 1 and 2", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_applied_total") == total).then_some(())
    });

    // Back: node 3 takes devices again, and the messages its broker session
    // kept for it are acknowledged without new events.
    proxy.set_cut(false);
    wait_for("node 3 owning devices again", DEADLINE, || {
        (counter(&addrs[0], "cluster_ingest_owners") == 3).then_some(())
    });
    wait_for("node 3 settling its session's backlog", DEADLINE, || {
        (counter(&addrs[2], "mqtt_messages_received_total") >= total
            && counter(&addrs[2], "ingest_pending_messages") == 0)
            .then_some(())
    });
    let c = counters(&addrs[2]);
    let get = |n: &str| c.get(n).and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(get("cluster_ingest_applied_total"), total, "{c:?}");
    assert!(get("ingest_tombstones_evicted_total") > 0, "{c:?}");
    assert!(get("ingest_copies_settled_by_store_total") > 0, "{c:?}");
    assert_numbered_documents(&addrs[2], "cut", DEVICES, 10);
    drop(nodes);
}

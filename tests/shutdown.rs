//! SIGTERM: `utopiad` stops within 5 s and exits 0, and every write it
//! acknowledged is there after a restart — under write load with a watch
//! open, on a follower and then the leader of a loaded three-node cluster,
//! and while an MQTT bridge is ingesting (whatever the broker delivered is
//! ingested once the node is back, exactly once).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::mosquitto::{publish_all, Endpoint, Mosquitto, QoS};
use common::{cli, counter, leader_id, start_cluster, temp_dir, wait_for, Server};
use serde_json::Value;
use tokio::sync::watch;
use utopia_proto::v1 as pb;

/// How long a server may take to exit after SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);
/// How long the load may take to get going, and a restarted server to
/// catch up (safety nets, not measurements).
const DEADLINE: Duration = Duration::from_secs(60);
/// Concurrent writers, and the most puts each makes.
const WRITERS: u64 = 4;
const PUTS_PER_WRITER_MAX: u64 = 20_000;
/// Acknowledged puts before the signal is sent.
const ACKED_BEFORE_SIGNAL: u64 = 200;

/// Puts `load/{writer}/{n}` to `endpoint` until a put fails (the server is
/// stopping) or `PUTS_PER_WRITER_MAX`; returns every acknowledged key with
/// the revision it was acknowledged at, and counts them on `acked`.
async fn write_until_refused(
    endpoint: String,
    writer: u64,
    acked: watch::Sender<u64>,
) -> Vec<(String, i64)> {
    let mut kv = pb::kv_client::KvClient::connect(endpoint)
        .await
        .expect("connect a writer");
    let mut done = Vec::new();
    for n in 0..PUTS_PER_WRITER_MAX {
        let key = format!("load/{writer}/{n:05}");
        let put = kv.put(pb::PutRequest {
            key: key.clone().into_bytes(),
            value: format!("v{n}").into_bytes(),
            ..Default::default()
        });
        match put.await {
            Ok(resp) => {
                done.push((key, resp.into_inner().header.unwrap().revision));
                acked.send_modify(|a| *a += 1);
            }
            Err(_) => break,
        }
    }
    done
}

/// Starts `WRITERS` writers against `endpoint`; returns their tasks once
/// `ACKED_BEFORE_SIGNAL` puts have been acknowledged.
async fn start_load(endpoint: &str) -> Vec<tokio::task::JoinHandle<Vec<(String, i64)>>> {
    let (acked_tx, mut acked) = watch::channel(0u64);
    let writers = (0..WRITERS)
        .map(|w| {
            tokio::spawn(write_until_refused(
                endpoint.to_string(),
                w,
                acked_tx.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(DEADLINE, acked.wait_for(|n| *n >= ACKED_BEFORE_SIGNAL))
        .await
        .expect("the write load got going")
        .expect("the writers are running");
    writers
}

/// Every key under `load/` with its mod revision, read page by page.
async fn stored(endpoint: String) -> HashMap<String, i64> {
    let mut kv = pb::kv_client::KvClient::connect(endpoint)
        .await
        .expect("connect a reader");
    let mut all = HashMap::new();
    let mut from = b"load/".to_vec();
    loop {
        let page = kv
            .range(pb::RangeRequest {
                key: from.clone(),
                range_end: b"load0".to_vec(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("range after restart")
            .into_inner();
        for kv in &page.kvs {
            all.insert(String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision);
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return all,
        }
    }
}

/// Prints the end of a server's log if the test fails while it is alive.
struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "server stderr ends:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// SIGTERM, then (off the runtime's threads) waits up to `EXIT_DEADLINE`
/// for `what` to exit, and checks that it exited 0.
async fn terminate(mut server: Server, what: &'static str) -> Server {
    tokio::task::spawn_blocking(move || {
        let _log = LogOnPanic(server.stderr_log_path().to_path_buf());
        server.sigterm();
        let status = wait_for(
            &format!("{what} to exit after SIGTERM"),
            EXIT_DEADLINE,
            || server.exited(),
        );
        assert!(
            status.success(),
            "{what} exited with {status} after SIGTERM"
        );
        server
    })
    .await
    .expect("terminate the server")
}

/// Every acknowledged put is stored with the revision it was acknowledged at.
fn assert_all_stored(acked: &[(String, i64)], stored: &HashMap<String, i64>) {
    for (key, revision) in acked {
        assert_eq!(
            stored.get(key),
            Some(revision),
            "{key} was acknowledged at revision {revision}"
        );
    }
}

async fn join_writers(
    writers: Vec<tokio::task::JoinHandle<Vec<(String, i64)>>>,
) -> Vec<(String, i64)> {
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("a writer"));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_write_load_with_a_watch_open_exits_0_within_5_s_and_keeps_every_acknowledged_write(
) {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    // A client following the changes: its stream stays open until the
    // server ends it.
    let mut watcher = pb::watch_client::WatchClient::connect(s.endpoint())
        .await
        .expect("connect a watcher");
    let mut changes = watcher
        .watch(pb::WatchRequest {
            key: b"load/".to_vec(),
            range_end: b"load0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let writers = start_load(&s.endpoint()).await;
    let first = tokio::time::timeout(DEADLINE, changes.message())
        .await
        .expect("the watch sees the load");
    assert!(matches!(first, Ok(Some(_))), "{first:?}");

    let mut s = terminate(s, "utopiad").await;
    let acked = join_writers(writers).await;
    assert!(acked.len() as u64 >= ACKED_BEFORE_SIGNAL);
    // The watch ended with the server.
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match changes.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch stream ended");
    assert!(!matches!(end, Ok(Some(_))));

    s.restart();
    let stored = stored(s.endpoint()).await;
    assert_all_stored(&acked, &stored);
    // The restarted server serves writes again.
    s.cli_ok(&["put", "after", "restart"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_follower_then_the_leader_of_a_loaded_cluster_within_5_s_each() {
    let dir = temp_dir();
    let (nodes, _addrs) = start_cluster(dir.path(), 3, &[]);
    let leader = leader_id(&nodes).expect("a leader") as usize - 1;
    let follower = (leader + 1) % 3;
    let writers = start_load(&nodes[leader].endpoint()).await;
    let mut nodes: Vec<Option<Server>> = nodes.into_iter().map(Some).collect();

    // A follower: the leader's replication stream to it is open and busy.
    nodes[follower] = Some(terminate(nodes[follower].take().unwrap(), "the follower").await);
    // The leader, with proposals in flight and a follower gone.
    nodes[leader] = Some(terminate(nodes[leader].take().unwrap(), "the leader").await);
    let acked = join_writers(writers).await;
    assert!(acked.len() as u64 >= ACKED_BEFORE_SIGNAL);

    let mut nodes: Vec<Server> = nodes.into_iter().map(Option::unwrap).collect();
    for i in [leader, follower] {
        nodes[i].restart();
    }
    let leader = wait_for("a leader after the restarts", DEADLINE, || {
        leader_id(&nodes)
    });
    let stored = stored(nodes[leader as usize - 1].endpoint()).await;
    assert_all_stored(&acked, &stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_an_mqtt_bridge_ingests_exits_0_within_5_s_and_loses_no_message() {
    const DEVICES: u64 = 10;
    const TOTAL: u64 = 2_000;
    let m = Mosquitto::start();
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(
        &conf,
        format!(
            r#"mqtt = {{ bridges = ( {{ name = "devices"; host = "127.0.0.1"; port = {}; persistent_session = true; subscriptions = ( {{ filter = "/term/#"; qos = 1; }} ); }} ); }};
"#,
            m.plain.port()
        ),
    )
    .unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let addr = s.addr.clone();
    let ready = addr.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the bridge connected and owning topics", DEADLINE, || {
            (counter(&ready, "cluster_ingest_owner_epoch") >= 1
                && counter(&ready, "mqtt_connects_total") >= 1)
                .then_some(())
        })
    })
    .await
    .unwrap();

    // Every message goes to the broker (which queues what the node's
    // session has not acknowledged while the node is down).
    let messages: Vec<(String, Vec<u8>)> = (0..TOTAL)
        .map(|n| {
            (
                format!("/term/z/c/{}/n/{n}", n % DEVICES),
                n.to_string().into_bytes(),
            )
        })
        .collect();
    let plain = m.plain;
    let to_publish = messages.clone();
    let publisher = tokio::spawn(async move {
        publish_all(Endpoint::plain(plain), &to_publish, QoS::AtLeastOnce).await
    });
    let ingesting = addr.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("ingest under way", DEADLINE, || {
            (counter(&ingesting, "cluster_ingest_applied_total") > 0).then_some(())
        })
    })
    .await
    .unwrap();

    let mut s = terminate(s, "utopiad with an MQTT bridge").await;
    let published = publisher.await.unwrap();
    assert!(
        published.iter().all(|ok| *ok),
        "the broker took every message"
    );

    s.restart();
    let addr = s.addr.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("every message ingested", DEADLINE, || {
            (counter(&addr, "cluster_ingest_applied_total") >= TOTAL).then_some(())
        });
        // Exactly once: redelivered copies are suppressed, not applied.
        assert_eq!(counter(&addr, "cluster_ingest_applied_total"), TOTAL);
        assert_eq!(counter(&addr, "cluster_ingest_dropped_total"), 0);
        for d in 0..DEVICES {
            let out = cli(
                &addr,
                &[
                    "--output",
                    "json",
                    "doc",
                    "get",
                    "devices",
                    &format!("term/c/{d}"),
                ],
            );
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let n = doc["document"]["data"]["n"]
                .as_object()
                .map_or(0, |o| o.len()) as u64;
            assert_eq!(n, TOTAL / DEVICES, "device {d}: {doc}");
        }
    })
    .await
    .unwrap();
}

//! The ZooKeeper adapter against a real ZooKeeper (Debian's package,
//! started standalone by the harness) and three real `utopiad` nodes: each
//! member's ephemeral entry goes when the member is killed and comes back
//! when it returns, the leader's shared nodes name the members' brokers,
//! and everything is written again after ZooKeeper loses its data and
//! after a session is expired by a network stall. A new data directory
//! takes its initial cluster from ZooKeeper. The leader publishes the
//! database servers `utopia db add` records and takes away the ones
//! `utopia db remove` deletes, and warns of a member that fails to write
//! an accepted XML configuration until it recovers.

#![cfg(feature = "zookeeper")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::files::{drop_file, Immutable};
use common::mosquitto::Mosquitto;
use common::zookeeper::{Stall, ZooKeeper};
use common::{start_cluster, start_cluster_each, temp_dir, wait_for, Server};
use zookeeper_client as zk;

/// Comfortably more than a session timeout (2 s here) plus a few refresh
/// rounds and reconnects on a busy machine.
const DEADLINE: Duration = Duration::from_secs(60);

const FELLOWS: &str = "/utopia/utopia/fellows";
const MQTT_SERVERS: &str = "/utopia/utopia/mqtt_servers";
const DB_SERVERS: &str = "/utopia/utopia/db_servers";
const WARNINGS: &str = "/utopia/utopia/warnings";
const CONFIG_FAILING: &str = "/utopia/utopia/warnings/config_failing";

/// A `utopiad.conf` with the adapter on `zk_addr` (short session and
/// refresh, so that the test is quick) and one plain MQTT bridge to
/// `broker`.
/// A ZooKeeper, a broker, a place for data directories and a reader of
/// ZooKeeper: what every test here starts with.
fn setup() -> (tempfile::TempDir, ZooKeeper, Mosquitto, Reader) {
    let dir = temp_dir();
    let zookeeper = ZooKeeper::start();
    let broker = Mosquitto::start();
    let zkr = Reader::new(&zookeeper.addr);
    (dir, zookeeper, broker, zkr)
}

fn conf(dir: &Path, name: &str, zk_addr: &str, broker: &Mosquitto, extra: &str) -> String {
    let (host, port) = (broker.plain.ip(), broker.plain.port());
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "zookeeper = {{ hosts = ( \"{zk_addr}\" ); session_timeout_ms = 2000; \
             request_timeout_ms = 1000; refresh_interval_ms = 200; retry_backoff_ms = 100; \
             retry_backoff_ms_max = 1000; {extra} }};\n\
             mqtt = {{ bridges = ( {{ name = \"devices\"; host = \"{host}\"; port = {port}; }} ); }};\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Reads ZooKeeper directly (not through any proxy), one session per
/// call: it works across ZooKeeper restarts.
struct Reader {
    addr: String,
    rt: tokio::runtime::Runtime,
}

impl Reader {
    fn new(addr: &str) -> Reader {
        Reader {
            addr: addr.to_string(),
            rt: common::runtime(),
        }
    }

    fn client(&self) -> Option<zk::Client> {
        self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(5))
                    .connect(&self.addr),
            )
            .await
            .ok()?
            .ok()
        })
    }

    /// The children of `path`; `None` when ZooKeeper does not answer or
    /// the node does not exist.
    fn children(&self, path: &str) -> Option<BTreeSet<String>> {
        let c = self.client()?;
        self.rt
            .block_on(c.list_children(path))
            .ok()
            .map(|v| v.into_iter().collect())
    }

    fn data(&self, path: &str) -> Option<Vec<u8>> {
        let c = self.client()?;
        self.rt.block_on(c.get_data(path)).ok().map(|(d, _)| d)
    }

    fn create(&self, path: &str, data: &[u8]) {
        let c = self.client().expect("connect to ZooKeeper");
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let parent = path.rsplit_once('/').unwrap().0;
        self.rt.block_on(async {
            c.mkdir(parent, &persistent).await.expect("mkdir");
            c.create(path, data, &persistent).await.expect("create");
        });
    }

    /// The fellows' entries, by node id, decoded.
    fn fellows(&self) -> Option<Vec<(u64, serde_json::Value)>> {
        let names = self.children(FELLOWS)?;
        let mut out = Vec::new();
        // Only the members' own nodes (a test writes garbage beside them).
        for n in names.into_iter().filter(|n| n.parse::<u64>().is_ok()) {
            let data = self.data(&format!("{FELLOWS}/{n}"))?;
            out.push((n.parse().ok()?, serde_json::from_slice(&data).ok()?));
        }
        Some(out)
    }

    /// Waits until the fellows' entries are exactly `ids`, with one
    /// leader among them when there is any.
    fn wait_fellows(&self, ids: &[u64], what: &str) -> Vec<(u64, serde_json::Value)> {
        let want: BTreeSet<u64> = ids.iter().copied().collect();
        wait_for(what, DEADLINE, || {
            let f = self.fellows()?;
            let got: BTreeSet<u64> = f.iter().map(|(id, _)| *id).collect();
            let leaders = f.iter().filter(|(_, v)| v["role"] == "leader").count();
            (got == want && (want.is_empty() || leaders == 1)).then_some(f)
        })
    }
}

#[test]
fn members_entries_follow_kill9_and_come_back_after_zookeeper_loses_its_data() {
    let (dir, mut zookeeper, broker, zkr) = setup();
    let cfg = conf(dir.path(), "n.conf", &zookeeper.addr, &broker, "");
    let (mut nodes, _addrs) = start_cluster(&dir.path().join("c"), 3, &["--config", &cfg]);

    // Each member's own entry: its id, address, role and state. A member
    // writes its entry as soon as it starts, saying "joining" until the
    // cluster has taken it in, so the wait is for every entry to be active.
    let fellows = wait_for("three active fellows entries, one leader", DEADLINE, || {
        let f = zkr.fellows()?;
        let ids: BTreeSet<u64> = f.iter().map(|(id, _)| *id).collect();
        let leaders = f.iter().filter(|(_, v)| v["role"] == "leader").count();
        let active = f.iter().all(|(_, v)| v["state"] == "active");
        (ids == BTreeSet::from([1, 2, 3]) && leaders == 1 && active).then_some(f)
    });
    for (id, v) in &fellows {
        assert_eq!(v["id"], *id, "{v}");
        assert_eq!(v["client_addr"], nodes[*id as usize - 1].addr, "{v}");
        assert_eq!(v["state"], "active", "{v}");
        assert!(
            ["leader", "follower"].contains(&v["role"].as_str().unwrap()),
            "{v}"
        );
    }
    // The leader's shared nodes: the members' broker, and the (empty)
    // database servers.
    let broker_entry = format!("{}:mqtt", broker.plain);
    wait_for("the members' broker in mqtt_servers", DEADLINE, || {
        (zkr.children(MQTT_SERVERS)? == BTreeSet::from([broker_entry.clone()])).then_some(())
    });
    assert_eq!(
        zkr.data(MQTT_SERVERS).unwrap(),
        format!("{broker_entry}\n").into_bytes()
    );
    assert_eq!(zkr.children(DB_SERVERS), Some(BTreeSet::new()));

    // kill -9 a follower: its entry goes with its session.
    let leader = fellows
        .iter()
        .find(|(_, v)| v["role"] == "leader")
        .map(|(id, _)| *id)
        .unwrap();
    let victim = if leader == 1 { 2 } else { 1 };
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != victim).collect();
    nodes[victim as usize - 1].kill9();
    zkr.wait_fellows(&others, "the killed member's entry to go");
    nodes[victim as usize - 1].restart();
    zkr.wait_fellows(&[1, 2, 3], "the restarted member's entry back");

    // ZooKeeper restarted with its data lost: nodes and sessions are gone,
    // and every member writes its own again, the leader the shared ones.
    // The members write their entries again as soon as they reconnect, so
    // that the data was lost shows on a node nobody writes again.
    zkr.create("/data_loss_marker/m", b"kept only if the data is");
    zookeeper.restart(true);
    let root = wait_for("the fresh ZooKeeper answering", DEADLINE, || {
        zkr.children("/")
    });
    assert!(
        !root.contains("data_loss_marker"),
        "a fresh ZooKeeper lost its data: {root:?}"
    );
    zkr.wait_fellows(&[1, 2, 3], "every entry back after the ZooKeeper restart");
    wait_for("mqtt_servers back", DEADLINE, || {
        (zkr.children(MQTT_SERVERS)? == BTreeSet::from([broker_entry.clone()])).then_some(())
    });
    for n in &nodes {
        assert!(
            common::counter(&n.addr, "zookeeper_sessions_total") >= 2,
            "node at {} opened a new session",
            n.addr
        );
    }

    // A plain restart (its data kept): the sessions survive it.
    zookeeper.restart(false);
    zkr.wait_fellows(&[1, 2, 3], "every entry after a plain ZooKeeper restart");

    // The leader killed: a new one is elected, and the entries say so.
    let leader = leader_of(&zkr);
    nodes[leader as usize - 1].kill9();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let after = zkr.wait_fellows(&others, "the old leader's entry gone, one new leader");
    assert_ne!(leader_of(&zkr), leader, "{after:?}");
}

/// The member whose entry says it leads.
fn leader_of(zkr: &Reader) -> u64 {
    wait_for("an entry with role leader", DEADLINE, || {
        zkr.fellows()?
            .into_iter()
            .find(|(_, v)| v["role"] == "leader")
            .map(|(id, _)| id)
    })
}

#[test]
fn entries_come_back_after_a_forced_session_expiry() {
    let (dir, zookeeper, broker, zkr) = setup();
    // The members reach ZooKeeper only through the proxy.
    let proxy = Stall::start(&zookeeper.addr);
    let cfg = conf(dir.path(), "n.conf", &proxy.addr, &broker, "");
    let (nodes, _addrs) = start_cluster(&dir.path().join("c"), 3, &["--config", &cfg]);
    zkr.wait_fellows(&[1, 2, 3], "three fellows entries");
    // Garbage beside the members' nodes is counted by the leader and
    // changes nothing it publishes.
    zkr.create(&format!("{FELLOWS}/junk"), b"\xff not json");
    let leader = leader_of(&zkr);
    wait_for("the garbage node counted", DEADLINE, || {
        (common::counter(
            &nodes[leader as usize - 1].addr,
            "zookeeper_fellow_nodes_undecodable_total",
        ) > 0)
            .then_some(())
    });
    assert_eq!(
        zkr.children(MQTT_SERVERS),
        Some(BTreeSet::from([format!("{}:mqtt", broker.plain)]))
    );
    let sessions_before: Vec<u64> = nodes
        .iter()
        .map(|n| common::counter(&n.addr, "zookeeper_sessions_total"))
        .collect();

    // Silence past the session timeout: ZooKeeper expires every session,
    // and their ephemeral entries with them.
    proxy.stall();
    zkr.wait_fellows(&[], "every session expired by ZooKeeper");
    proxy.resume();
    zkr.wait_fellows(&[1, 2, 3], "every entry back in new sessions");
    for (n, before) in nodes.iter().zip(sessions_before) {
        wait_for("a new session counted", DEADLINE, || {
            (common::counter(&n.addr, "zookeeper_sessions_total") > before).then_some(())
        });
    }
    wait_for("mqtt_servers after the expiry", DEADLINE, || {
        (zkr.children(MQTT_SERVERS)? == BTreeSet::from([format!("{}:mqtt", broker.plain)]))
            .then_some(())
    });
}

#[test]
fn a_new_cluster_takes_its_initial_members_from_zookeeper() {
    let (dir, zookeeper, broker, zkr) = setup();
    let cfg = conf(
        dir.path(),
        "n.conf",
        &zookeeper.addr,
        &broker,
        "initial_cluster_node = \"initial_cluster\"; initial_cluster_wait_ms = 20000;",
    );
    let listens: Vec<String> = (0..3).map(|_| common::free_addr()).collect();
    let peers: Vec<String> = (0..3).map(|_| common::free_addr()).collect();
    let members = common::initial_cluster(&peers);

    // A member not named in the cluster there refuses to start, saying so.
    zkr.create("/utopia/utopia/initial_cluster", members.as_bytes());
    let mut outsider = std::process::Command::new(common::UTOPIAD);
    outsider
        .args(["--config", &cfg, "--node-id", "4"])
        .arg("--data-dir")
        .arg(dir.path().join("n4"));
    let out = common::run_with_deadline(outsider, DEADLINE);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not name node 4") && stderr.contains("initial_cluster"),
        "{stderr}"
    );

    // Three members started with no --initial-cluster form that cluster.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let (data, listen, peer, cfg) = (
                dir.path().join(format!("node{}", i + 1)),
                listens[i].clone(),
                peers[i].clone(),
                cfg.clone(),
            );
            std::thread::spawn(move || {
                let id = (i + 1).to_string();
                Server::start_member(&data, &listen, &peer, &["--node-id", &id, "--config", &cfg])
            })
        })
        .collect();
    let nodes: Vec<Server> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let status = nodes[0].cli_json(&["cluster", "status"]);
    let text = status["members"].to_string();
    for p in &peers {
        assert!(text.contains(p.as_str()), "member {p} in {status}");
    }
    zkr.wait_fellows(&[1, 2, 3], "three fellows entries");
}

#[test]
fn the_leader_publishes_the_database_servers_db_add_records_and_drops_removed_ones() {
    let (dir, zookeeper, broker, zkr) = setup();
    let cfg = conf(dir.path(), "n.conf", &zookeeper.addr, &broker, "");
    let (nodes, _addrs) = start_cluster(&dir.path().join("c"), 3, &["--config", &cfg]);
    zkr.wait_fellows(&[1, 2, 3], "three fellows entries with one leader");
    wait_for("the empty db_servers node", DEADLINE, || {
        zkr.children(DB_SERVERS)?.is_empty().then_some(())
    });

    // Nothing needs to listen there: the mirror is off, so the server
    // stays ok and is published.
    let server = common::free_addr();
    let entry = format!("{server}:mongodb");
    nodes[0].cli_ok(&["db", "add", &server]);
    wait_for("the added server in db_servers", DEADLINE, || {
        (zkr.children(DB_SERVERS)? == BTreeSet::from([entry.clone()])).then_some(())
    });
    wait_for("the added server in db_servers' data", DEADLINE, || {
        (zkr.data(DB_SERVERS)? == format!("{entry}\n").into_bytes()).then_some(())
    });

    // A second server beside it, then the first one removed.
    let other = common::free_addr();
    let other_entry = format!("{other}:mongodb");
    nodes[1].cli_ok(&["db", "add", &other]);
    wait_for("both servers in db_servers", DEADLINE, || {
        (zkr.children(DB_SERVERS)? == BTreeSet::from([entry.clone(), other_entry.clone()]))
            .then_some(())
    });
    nodes[2].cli_ok(&["db", "remove", &server]);
    wait_for("the removed server gone from db_servers", DEADLINE, || {
        (zkr.children(DB_SERVERS)? == BTreeSet::from([other_entry.clone()])).then_some(())
    });
    wait_for(
        "the removed server gone from db_servers' data",
        DEADLINE,
        || (zkr.data(DB_SERVERS)? == format!("{other_entry}\n").into_bytes()).then_some(()),
    );
    nodes[0].cli_ok(&["db", "remove", &other]);
    wait_for("db_servers empty again", DEADLINE, || {
        (zkr.children(DB_SERVERS)?.is_empty() && zkr.data(DB_SERVERS)?.is_empty()).then_some(())
    });
}

#[test]
fn the_leader_warns_of_a_member_failing_a_configuration_until_it_recovers() {
    let (dir, zookeeper, broker, zkr) = setup();
    // Each member with the adapter and a configuration directory of its
    // own, scanned often, written with few retries.
    let mut dirs = Vec::new();
    let mut cfgs = Vec::new();
    for id in 1..=3u64 {
        let d = dir.path().join(format!("configs{id}"));
        std::fs::create_dir_all(&d).unwrap();
        let cfg = conf(
            dir.path(),
            &format!("n{id}.conf"),
            &zookeeper.addr,
            &broker,
            "",
        );
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "configs = {{ dir = \"{}\"; scan_interval_ms = 300; agreement_window_ms = 500; \
             write_attempts_max = 3; write_backoff_ms = 50; }};\n",
            d.display()
        ));
        std::fs::write(&cfg, text).unwrap();
        dirs.push(d);
        cfgs.push(cfg);
    }
    let (nodes, _addrs) = start_cluster_each(&dir.path().join("c"), 3, |id| {
        vec!["--config".to_string(), cfgs[id as usize - 1].clone()]
    });
    zkr.wait_fellows(&[1, 2, 3], "three fellows entries with one leader");
    assert_eq!(zkr.data(CONFIG_FAILING), None, "no warning at the start");

    // Member 3 cannot write its directory: the accepted configuration
    // fails there, and the leader says so.
    let immutable = Immutable::set(&dirs[2]);
    let xml = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/thermostat.xml"),
    )
    .unwrap();
    drop_file(&dirs[0], "thermostat.xml", &xml);
    let warnings = wait_for("a config_failing warning naming member 3", DEADLINE, || {
        let data = zkr.data(CONFIG_FAILING)?;
        let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
        (v.as_array()?.len() == 1).then_some(v)
    });
    let w = &warnings[0];
    assert_eq!(w["node"], 3, "{warnings}");
    assert_eq!(w["name"], "thermostat", "{warnings}");
    assert_eq!(w["version"], 3, "{warnings}");
    assert!(
        w["reason"].as_str().unwrap().contains("after 3 attempts"),
        "{warnings}"
    );
    assert!(w["since_ms"].as_u64().unwrap() > 0, "{warnings}");
    let fellow = nodes[0].cli_json(&["doc", "get", "fellows", "3"]);
    assert_eq!(
        fellow["document"]["config_failing"][0]["name"], "thermostat",
        "{fellow}"
    );

    // Writable again: the member writes it, and the warning goes.
    drop(immutable);
    wait_for("the warning gone", DEADLINE, || {
        zkr.children(WARNINGS)?.is_empty().then_some(())
    });
    assert_eq!(zkr.data(CONFIG_FAILING), None);
    wait_for("the configuration on member 3's disk", DEADLINE, || {
        (std::fs::read(dirs[2].join("thermostat.xml")).ok()? == xml).then_some(())
    });
}

//! Three `utopiad` processes forming one cluster over the gRPC transport.

mod common;

use std::time::Duration;

use common::{cli, free_addr, leader_id, start_cluster, temp_dir, wait_for, Server};

struct Cluster {
    nodes: Vec<Server>,
    endpoints: String,
}

impl Cluster {
    fn start(dir: &std::path::Path, n: usize) -> Cluster {
        Self::start_with(dir, n, &[])
    }

    fn start_with(dir: &std::path::Path, n: usize, extra: &[&str]) -> Cluster {
        let (nodes, addrs) = start_cluster(dir, n, extra);
        Cluster {
            nodes,
            endpoints: addrs.join(","),
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.endpoints, args)
    }

    fn status_of(node: &Server) -> Option<serde_json::Value> {
        let out = node.cli(&["--output", "json", "status"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn leader(&self) -> u64 {
        wait_for("a leader", Duration::from_secs(20), || {
            leader_id(&self.nodes)
        })
    }
}

#[test]
fn three_nodes_replicate_and_survive_losing_the_leader() {
    let dir = temp_dir();
    let mut c = Cluster::start(dir.path(), 3);

    let status = Cluster::status_of(&c.nodes[0]).expect("status");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    let mut acked = Vec::new();
    for i in 0..10 {
        let key = format!("c/{i:02}");
        let out = c.cli(&["put", &key, &i.to_string()]);
        assert!(
            out.status.success(),
            "put through any endpoint: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        acked.push(key);
    }

    let leader = c.leader();
    c.nodes[(leader - 1) as usize].kill9();
    let killed_at = std::time::Instant::now();

    // One write, sent right away, waits out the election: the survivors
    // answer UNAVAILABLE (naming the dead leader, or none) until the other
    // two elect a leader, and the CLI passes the request again within its
    // --timeout.
    let out = c.cli(&["--timeout", "30", "put", "c/after", "x"]);
    assert!(
        out.status.success(),
        "a write sent while the cluster elects: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A measurement for the log, not an assertion: it includes starting
    // the CLI.
    eprintln!(
        "failover: leader SIGKILL to first acknowledged write in {:?}",
        killed_at.elapsed()
    );
    acked.push("c/after".to_string());
    let new_leader = c.leader();
    assert_ne!(new_leader, leader, "a new leader was elected");
    for i in 10..20 {
        let key = format!("c/{i:02}");
        assert!(c.cli(&["put", &key, &i.to_string()]).status.success());
        acked.push(key);
    }

    // While a member is down the leader retries it at a measured pace, not
    // in a loop: over a few seconds it stays far below one core.
    let busy = &c.nodes[(new_leader - 1) as usize];
    let (cpu_before, since) = (busy.cpu_time(), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wall) = (busy.cpu_time() - cpu_before, since.elapsed());
    assert!(
        cpu < wall / 4,
        "leader used {cpu:?} of CPU in {wall:?} with one member down"
    );

    // The killed node restarts on its data directory and catches up.
    let restarted = (leader - 1) as usize;
    c.nodes[restarted].restart();
    for node in &c.nodes {
        wait_for(
            "every node to hold every acknowledged key",
            Duration::from_secs(30),
            || {
                let out = node.cli(&[
                    "--output",
                    "json",
                    "get",
                    "c/",
                    "--prefix",
                    "--consistency",
                    "serializable",
                ]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let keys: Vec<String> = v["kvs"]
                    .as_array()?
                    .iter()
                    .filter_map(|kv| kv["key"].as_str().map(str::to_string))
                    .collect();
                acked.iter().all(|k| keys.contains(k)).then_some(())
            },
        );
    }
}

fn cluster_view(c: &Cluster) -> serde_json::Value {
    let out = c.cli(&["--output", "json", "cluster", "status"]);
    assert!(
        out.status.success(),
        "cluster status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cluster status JSON")
}

fn member(view: &serde_json::Value, id: u64) -> Option<&serde_json::Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
}

fn put_ok(c: &Cluster, key: &str, value: &str) {
    let out = c.cli(&["put", key, value]);
    assert!(
        out.status.success(),
        "put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn has_keys(node: &Server, prefix: &str, want: usize) -> Option<()> {
    let out = node.cli(&[
        "--output",
        "json",
        "get",
        prefix,
        "--prefix",
        "--consistency",
        "serializable",
        "--count-only",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    (v["count"].as_u64()? as usize == want).then_some(())
}

#[test]
fn members_are_added_as_learners_promoted_and_removed_while_serving() {
    let dir = temp_dir();
    let mut c = Cluster::start(dir.path(), 3);
    let view = cluster_view(&c);
    assert_eq!(view["members"].as_array().map(Vec::len), Some(3), "{view}");
    assert!(view["leader"].as_u64().unwrap_or(0) > 0);

    for i in 0..10 {
        put_ok(&c, &format!("m/{i}"), "x");
    }

    // A fourth node joins as a learner and catches up.
    let addr4 = free_addr();
    let node4 = Server::start_at(
        &dir.path().join("node4"),
        &addr4,
        &["--node-id", "4", "--join"],
    );
    let out = c.cli(&["cluster", "add", "4", &node4.peer_addr, "--learner"]);
    assert!(
        out.status.success(),
        "add learner: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = cluster_view(&c);
    assert_eq!(
        member(&view, 4).map(|m| m["voter"].as_bool()),
        Some(Some(false)),
        "{view}"
    );
    wait_for("the learner to catch up", Duration::from_secs(20), || {
        has_keys(&node4, "m/", 10)
    });

    // Promoted to voter.
    let out = c.cli(&["cluster", "add", "4", &node4.peer_addr]);
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = cluster_view(&c);
    assert_eq!(
        member(&view, 4).map(|m| m["voter"].as_bool()),
        Some(Some(true)),
        "{view}"
    );
    c.endpoints = format!("{},{addr4}", c.endpoints);
    c.nodes.push(node4);

    // Every member has a fellows document (the leader writes them within a
    // housekeeping tick of a change).
    wait_for(
        "a fellows document for every member",
        Duration::from_secs(20),
        || {
            let out = c.cli(&["--output", "json", "doc", "list", "fellows"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["documents"].as_array()?.len() == 4).then_some(())
        },
    );

    // Remove node 1, whichever role it has; the cluster keeps serving.
    let out = c.cli(&["cluster", "remove", "1"]);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.nodes[0].kill9();
    wait_for(
        "writes after removing node 1",
        Duration::from_secs(30),
        || {
            c.cli(&["put", "m/after", "y"])
                .status
                .success()
                .then_some(())
        },
    );
    let view = cluster_view(&c);
    assert!(member(&view, 1).is_none(), "node 1 is gone: {view}");
    assert_eq!(view["members"].as_array().map(Vec::len), Some(3), "{view}");
    for node in &c.nodes[1..] {
        wait_for(
            "every member to hold every key",
            Duration::from_secs(20),
            || has_keys(node, "m/", 11),
        );
    }

    // The fellows collection follows the cluster through the log.
    let fellows_ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            "fellows to reflect the membership",
            Duration::from_secs(20),
            || {
                let out = c.cli(&["--output", "json", "doc", "list", "fellows"]);
                let lines = String::from_utf8_lossy(&out.stdout).to_string();
                let docs: Vec<serde_json::Value> = lines
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .flat_map(|v| match v["documents"].as_array() {
                        Some(a) => a.clone(),
                        None => vec![v],
                    })
                    .map(|d| {
                        if d["document"].is_object() {
                            d["document"].clone()
                        } else {
                            d
                        }
                    })
                    .collect();
                let by_id = |id: u64| docs.iter().find(|d| d["id"].as_u64() == Some(id)).cloned();
                let one = by_id(1)?;
                let four = by_id(4)?;
                let leaders = docs
                    .iter()
                    .filter(|d| d["state"] == "leader" && d["active"] == true)
                    .count();
                (one["active"] == false
                    && four["active"] == true
                    && four["state"] != "learner"
                    && leaders == 1)
                    .then_some(())
            },
        )
    }));
    if fellows_ok.is_err() {
        for n in &c.nodes {
            eprintln!("==== {}\n{}", n.addr, n.stderr_log());
        }
        panic!("fellows did not follow the cluster");
    }

    // Bad requests are refused clearly.
    let out = c.cli(&["cluster", "remove", "99"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member"));
    let out = c.cli(&["cluster", "add", "5", "not-an-address"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
}

#[test]
fn a_wiped_follower_catches_up_through_a_snapshot() {
    let dir = temp_dir();
    let (mut c, conf) = small_log_cluster(dir.path());
    let victim = if c.leader() == 3 { 2 } else { 3 };

    for i in 0..20 {
        put_ok(&c, &format!("w/{i:02}"), "before");
    }
    wipe_and_remove(&mut c, victim);
    // Enough writes that the log it would need is purged behind a snapshot.
    for i in 20..80 {
        put_ok(&c, &format!("w/{i:02}"), "after");
    }

    // The log the wiped node would need is gone from the leader.
    wait_for_purge(&c);

    // It comes back empty, joins, and catches up by installing a snapshot;
    // the metrics count it on both sides.
    let node = rejoin_by_snapshot(&c, victim, &conf, 80);
    assert!(common::counter(&node.addr, "raft_snapshots_installed_total") >= 1);
    // (The wiped member's old server is gone and counts 0.)
    let sent: u64 = c
        .nodes
        .iter()
        .map(|n| common::counter(&n.addr, "raft_snapshots_sent_total"))
        .sum();
    assert!(sent >= 1);
}

#[test]
fn a_snapshot_served_after_a_crash_is_the_recovered_state() {
    let dir = temp_dir();
    let (mut c, conf, victim) = cluster_with_a_wiped_follower(dir.path());
    for i in 0..60 {
        put_ok(&c, &format!("w/{i:02}"), &format!("v{i}"));
    }
    wait_for_purge(&c);

    // Both remaining members crash and restart: the snapshot they can serve
    // is now the state each recovered, taken at startup.
    for id in [1, 2, 3] {
        if id != victim {
            let node = &mut c.nodes[(id - 1) as usize];
            node.kill9();
            node.restart();
        }
    }
    c.leader();
    for i in 60..70 {
        put_ok(&c, &format!("w/{i:02}"), &format!("v{i}"));
    }

    let node = rejoin_by_snapshot(&c, victim, &conf, 70);
    let got = node.cli_json(&["get", "w/", "--prefix", "--consistency", "serializable"]);
    let kvs = got["kvs"].as_array().expect("kvs");
    assert_eq!(kvs.len(), 70);
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv["key"], format!("w/{i:02}"));
        assert_eq!(kv["value"], format!("v{i}"));
        assert_eq!(kv["version"], 1);
    }
}

/// A three-node cluster that snapshots every 20 entries and keeps 5 behind,
/// and the configuration file that says so.
fn small_log_cluster(dir: &std::path::Path) -> (Cluster, std::path::PathBuf) {
    let conf = dir.join("small-log.conf");
    std::fs::write(
        &conf,
        "raft = { snapshot_log_entries = 20; log_entries_kept_after_snapshot = 5; };\n",
    )
    .unwrap();
    let c = Cluster::start_with(dir, 3, &["--config", conf.to_str().unwrap()]);
    (c, conf)
}

/// A small-log cluster (see [`small_log_cluster`]) with one follower,
/// returned last, wiped and removed.
fn cluster_with_a_wiped_follower(dir: &std::path::Path) -> (Cluster, std::path::PathBuf, u64) {
    let (mut c, conf) = small_log_cluster(dir);
    let victim = if c.leader() == 3 { 2 } else { 3 };
    wipe_and_remove(&mut c, victim);
    (c, conf, victim)
}

/// Rejoins the wiped node `victim` and waits until it holds all `keys`
/// keys under `w/`, which it must have caught up on by installing a
/// snapshot.
fn rejoin_by_snapshot(c: &Cluster, victim: u64, conf: &std::path::Path, keys: usize) -> Server {
    let node = rejoin(c, victim, conf);
    wait_for(
        "the wiped node to hold every key",
        Duration::from_secs(30),
        || has_keys(&node, "w/", keys),
    );
    let log = node.stderr_log();
    assert!(
        log.contains("installed snapshot"),
        "the node caught up by installing a snapshot:\n{log}"
    );
    node
}

/// Kills follower `victim`, deletes its data and removes it from the cluster.
fn wipe_and_remove(c: &mut Cluster, victim: u64) {
    let node = &mut c.nodes[(victim - 1) as usize];
    node.kill9();
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    let out = c.cli(&["cluster", "remove", &victim.to_string()]);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for_purge(c: &Cluster) {
    wait_for(
        "the leader to purge its log behind a snapshot",
        Duration::from_secs(30),
        || {
            let st = Cluster::status_of(&c.nodes[(c.leader() - 1) as usize])?;
            (st["raft_purged_index"].as_u64()? > 20).then_some(())
        },
    );
}

/// Starts the wiped node `victim` again, empty, with `--join`, and adds it
/// back to the cluster.
fn rejoin(c: &Cluster, victim: u64, conf: &std::path::Path) -> Server {
    let old = &c.nodes[(victim - 1) as usize];
    let node = Server::start_member(
        &old.data_dir,
        &old.addr,
        &old.peer_addr,
        &[
            "--node-id",
            &victim.to_string(),
            "--join",
            "--config",
            conf.to_str().unwrap(),
        ],
    );
    let out = c.cli(&["cluster", "add", &victim.to_string(), &old.peer_addr]);
    assert!(
        out.status.success(),
        "re-add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node
}

#[test]
fn a_data_directory_is_refused_under_another_identity() {
    let dir = temp_dir();
    let mut c = Cluster::start(dir.path(), 3);
    let node = &mut c.nodes[2];
    node.kill9();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(common::UTOPIAD);
        cmd.arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
            .args(args);
        common::run_with_deadline(cmd, Duration::from_secs(30))
    };
    let out = run(&["--node-id", "7"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to node 3"), "{err}");
    let out = run(&[
        "--node-id",
        "3",
        "--initial-cluster",
        "1=127.0.0.1:1,3=127.0.0.1:3",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflicts with the cluster"), "{err}");

    // Adding a member under an id another member already uses is refused.
    let out = c.cli(&["cluster", "add", "1", &free_addr()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn leadership_is_transferred_on_request() {
    let dir = temp_dir();
    let c = Cluster::start(dir.path(), 3);
    let leader = c.leader();
    let target = if leader == 1 { 2 } else { 1 };
    let out = c.cli(&["cluster", "transfer-leader", &target.to_string()]);
    assert!(
        out.status.success(),
        "transfer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the requested node to lead",
        Duration::from_secs(20),
        || (c.leader() == target).then_some(()),
    );
    put_ok(&c, "after-transfer", "ok");
    let out = c.cli(&["cluster", "transfer-leader", "9"]);
    assert_eq!(out.status.code(), Some(3), "an unknown node cannot lead");
}

/// Serializable (local) read of every `prefix` key on one node at `rev`
/// (0: current): the header's revision and every pair with its revisions
/// and version.
fn local_view(node: &Server, prefix: &str, rev: i64) -> Option<(i64, Vec<serde_json::Value>)> {
    let rev = rev.to_string();
    let out = node.cli(&[
        "--output",
        "json",
        "--timeout",
        "5",
        "get",
        prefix,
        "--prefix",
        "--rev",
        &rev,
        "--consistency",
        "serializable",
    ]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((
        v["header"]["revision"].as_i64()?,
        v["kvs"].as_array()?.clone(),
    ))
}

fn value_of(kvs: &[serde_json::Value], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv["key"] == key)
        .and_then(|kv| kv["value"].as_str().map(str::to_string))
}

#[test]
fn an_isolated_leader_commits_nothing_and_the_cluster_keeps_one_history() {
    let dir = temp_dir();
    let (nodes, net) = common::start_partitionable_cluster(dir.path(), 3, &[]);
    let endpoints = |ns: &[&Server]| {
        ns.iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let all: Vec<&Server> = nodes.iter().collect();
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..5 {
        let (key, value) = (format!("p/before-{i}"), format!("b{i}"));
        let out = cli(&endpoints(&all), &["put", &key, &value]);
        assert!(
            out.status.success(),
            "put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        acked.push((key, value));
    }
    let leader = wait_for("a leader", Duration::from_secs(20), || leader_id(&nodes));
    let old = &nodes[(leader - 1) as usize];
    let majority: Vec<&Server> = nodes.iter().filter(|n| n.addr != old.addr).collect();
    let majority_ids: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    net.isolate(leader);

    // Writes sent to the isolated leader (clients still reach it) are
    // never acknowledged: it cannot replicate them to a majority.
    let old_addr = old.addr.clone();
    let minority = std::thread::spawn(move || {
        (0..3)
            .map(|i| {
                let key = format!("p/minority-{i}");
                (
                    key.clone(),
                    cli(&old_addr, &["--timeout", "2", "put", &key, "lost"]),
                )
            })
            .collect::<Vec<_>>()
    });

    // The other two elect a leader among themselves and keep acknowledging.
    let new_leader = wait_for(
        "the majority to elect a new leader",
        Duration::from_secs(30),
        || {
            majority
                .iter()
                .find_map(|n| Cluster::status_of(n)?["leader"].as_u64())
                .filter(|l| majority_ids.contains(l))
        },
    );
    for i in 0..10 {
        let (key, value) = (format!("p/majority-{i}"), format!("m{i}"));
        wait_for(
            "the majority to acknowledge a write",
            Duration::from_secs(30),
            || {
                cli(
                    &endpoints(&majority),
                    &["--timeout", "3", "put", &key, &value],
                )
                .status
                .success()
                .then_some(())
            },
        );
        acked.push((key, value));
    }

    for (key, out) in minority.join().expect("minority writer") {
        assert!(
            !out.status.success(),
            "the isolated leader acknowledged {key}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!(
            "write through the isolated leader: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The isolated node applied nothing new: it still has exactly the
    // five writes made before the partition, and none of the majority's.
    let st = Cluster::status_of(old).expect("the isolated node answers status");
    let applied = st["raft_applied_index"].as_u64().unwrap_or(0);
    eprintln!(
        "isolated node {leader}: role {}, raft_index {}, raft_applied_index {applied}",
        st["role"], st["raft_index"]
    );
    let (_, kvs) = local_view(old, "p/", 0).expect("the isolated node serves local reads");
    let keys: Vec<&str> = kvs.iter().filter_map(|kv| kv["key"].as_str()).collect();
    assert_eq!(
        keys,
        (0..5).map(|i| format!("p/before-{i}")).collect::<Vec<_>>(),
        "the isolated node holds exactly the writes from before the partition"
    );
    let st = Cluster::status_of(old).expect("status");
    assert_eq!(
        st["raft_applied_index"].as_u64().unwrap_or(0),
        applied,
        "the isolated node applies nothing while cut off"
    );

    net.heal();

    // One history: every node converges on the same revision, the same
    // keys with the same revisions and versions, every acknowledged write
    // included and none of the isolated leader's.
    let converged = wait_for(
        "every node to converge after healing",
        Duration::from_secs(30),
        || {
            let views: Vec<(i64, Vec<serde_json::Value>)> = nodes
                .iter()
                .map(|n| local_view(n, "p/", 0))
                .collect::<Option<_>>()?;
            let first = &views[0];
            let same = views.iter().all(|v| v == first);
            let complete = acked
                .iter()
                .all(|(k, v)| value_of(&first.1, k).as_deref() == Some(v.as_str()));
            (same && complete).then(|| first.clone())
        },
    );
    let (revision, kvs) = converged;
    assert!(
        kvs.iter()
            .all(|kv| !kv["key"].as_str().unwrap_or("").starts_with("p/minority-")),
        "writes the isolated leader never replicated are gone: {kvs:?}"
    );
    // Every past revision reads the same on every node.
    for rev in 1..=revision {
        let views: Vec<_> = nodes.iter().map(|n| local_view(n, "p/", rev)).collect();
        assert!(
            views.iter().all(|v| v.is_some() && v == &views[0]),
            "revision {rev} differs between nodes: {views:?}"
        );
    }
    let leader_now = wait_for("a leader after healing", Duration::from_secs(20), || {
        leader_id(&nodes)
    });
    eprintln!(
        "partition: node {leader} isolated, node {new_leader} elected, node {leader_now} leads after healing; {} keys at revision {revision} on every node",
        kvs.len()
    );
}

#[test]
fn a_membership_change_requested_during_another_is_refused() {
    let dir = temp_dir();
    let mut c = Cluster::start(dir.path(), 3);
    let leader = c.leader();
    let li = (leader - 1) as usize;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (paused, removed) = (others[0], others[1]);
    let leader_addr = c.nodes[li].addr.clone();

    // Removing `removed` goes through the joint membership {all three} +
    // {leader, paused}; the second half needs `paused`, so while it is
    // stopped the change cannot commit and stays in progress.
    c.nodes[(paused - 1) as usize].signal("STOP");
    let first = {
        let addr = leader_addr.clone();
        let id = removed.to_string();
        std::thread::spawn(move || cli(&addr, &["--timeout", "60", "cluster", "remove", &id]))
    };
    wait_for(
        "the removal to be in progress on the leader",
        Duration::from_secs(20),
        || {
            let st = Cluster::status_of(&c.nodes[li])?;
            (st["raft_membership_index"].as_u64()? > st["raft_applied_index"].as_u64()?)
                .then_some(())
        },
    );
    let out = cli(&leader_addr, &["--output", "json", "cluster", "status"]);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cluster status");
    assert_eq!(
        view["membership_change_in_progress"], true,
        "cluster status shows the change: {view}"
    );

    // Any other change is refused at once, with a reason, and changes nothing.
    let addr4 = free_addr();
    for args in [
        vec!["cluster", "add", "4", &addr4, "--learner"],
        vec!["cluster", "remove", &leader.to_string()],
    ] {
        let out = cli(&leader_addr, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("FAILED_PRECONDITION")
                && err.contains("membership change is already in progress"),
            "{args:?}: {err}"
        );
        eprintln!("utopia {}: {}", args.join(" "), err.trim());
    }

    // Once the paused node is back, the first change completes.
    c.nodes[(paused - 1) as usize].signal("CONT");
    let out = first.join().expect("first change");
    assert!(
        out.status.success(),
        "the first change completes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.nodes[(removed - 1) as usize].kill9();
    let view = wait_for("the membership to settle", Duration::from_secs(20), || {
        let out = cli(&leader_addr, &["--output", "json", "cluster", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["membership_change_in_progress"] == false).then_some(v)
    });
    let mut ids: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    ids.sort();
    let mut want = vec![leader, paused];
    want.sort();
    assert_eq!(ids, want, "only the first change took effect: {view}");
}

#[test]
fn a_node_is_known_by_its_advertised_address() {
    use common::net::{free_addr_on, node_ip, Net};
    let dir = temp_dir();
    let real: std::collections::BTreeMap<u64, String> =
        (1..=2).map(|id| (id, free_addr_on(node_ip(id)))).collect();
    let net = Net::start(&real);

    // A one-member cluster behind a proxy records the proxy's address.
    let node1 = Server::start_member(
        &dir.path().join("node1"),
        &free_addr_on(node_ip(1)),
        &real[&1],
        &["--node-id", "1", "--peer-advertise", net.addr(1)],
    );
    let st = Cluster::status_of(&node1).expect("status");
    assert_eq!(st["members"][0]["addr"], net.addr(1), "{st}");
    put_ok_at(&node1, "adv/a", "1");

    // A second node joins through its own proxy and catches up.
    let node2 = Server::start_member(
        &dir.path().join("node2"),
        &free_addr_on(node_ip(2)),
        &real[&2],
        &["--node-id", "2", "--join"],
    );
    let out = node1.cli(&["cluster", "add", "2", net.addr(2)]);
    assert!(
        out.status.success(),
        "add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("node 2 to catch up", Duration::from_secs(20), || {
        has_keys(&node2, "adv/", 1)
    });

    // A peer advertise address that contradicts the initial cluster is refused.
    let mut cmd = std::process::Command::new(common::UTOPIAD);
    cmd.arg("--data-dir")
        .arg(dir.path().join("node3"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--node-id",
            "3",
        ])
        .args([
            "--initial-cluster",
            "3=127.0.0.1:7703",
            "--peer-advertise",
            "127.0.0.1:7713",
        ]);
    let out = common::run_with_deadline(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("differs from node 3's address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn put_ok_at(node: &Server, key: &str, value: &str) {
    let out = node.cli(&["put", key, value]);
    assert!(
        out.status.success(),
        "put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_node_killed_while_receiving_a_snapshot_restarts_and_catches_up() {
    let dir = temp_dir();
    let (c, conf, victim) = cluster_with_a_wiped_follower(dir.path());

    // A snapshot of tens of megabytes, so that its transfer takes a while.
    let leader_addr = c.nodes[(c.leader() - 1) as usize].addr.clone();
    let out = cli(
        &leader_addr,
        &[
            "bench",
            "put",
            "--total",
            "300",
            "--clients",
            "4",
            "--value-bytes",
            "100000",
            "--keys-space",
            "300",
            "--key-prefix",
            "big/",
        ],
    );
    assert!(out.status.success(), "bench put: {out:?}");
    for i in 0..30 {
        put_ok(&c, &format!("w/{i:02}"), "v");
    }
    wait_for_purge(&c);

    let mut node = rejoin(&c, victim, &conf);
    let data = node.data_dir.clone();
    // Kill it as soon as the snapshot starts arriving (polled every
    // millisecond: the transfer is short).
    let incoming_dir = data.join("snapshots").join("incoming");
    let receiving = || {
        std::fs::read_dir(&incoming_dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".snap.tmp"))
            })
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !receiving() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot transfer started:\n{}",
            node.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    node.kill9();
    assert!(
        receiving(),
        "the node finished installing before it was killed; the test needs a larger snapshot"
    );

    node.restart();
    wait_for(
        "the restarted node to hold every key",
        Duration::from_secs(60),
        || has_keys(&node, "w/", 30).and(has_keys(&node, "big/", leader_big_keys(&c)?)),
    );
}

fn leader_big_keys(c: &Cluster) -> Option<usize> {
    let out = c.cli(&[
        "--output",
        "json",
        "get",
        "big/",
        "--prefix",
        "--count-only",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["count"].as_u64()? as usize)
}

/// A follower that falls behind by more than one message's worth of large
/// entries still catches up: the leader sends it the log in batches bounded
/// by bytes, not by an entry count whose bytes could exceed what a peer
/// accepts in one message.
#[test]
fn a_follower_behind_by_large_entries_catches_up_from_the_log() {
    let dir = temp_dir();
    let mut c = Cluster::start(dir.path(), 3);
    let leader = c.leader();
    let victim = if leader == 3 { 2 } else { 3 };
    put_ok(&c, "large/first", "1");
    wait_for(
        "the follower to hold the first key",
        Duration::from_secs(30),
        || has_keys(&c.nodes[(victim - 1) as usize], "large/first", 1),
    );
    c.nodes[(victim - 1) as usize].kill9();

    // 96 entries of 1 MB: more than the 64 MiB a peer message may carry,
    // and far fewer than a snapshot is taken after, so the follower must
    // catch up from the log.
    let leader_addr = c.nodes[(leader - 1) as usize].addr.clone();
    let out = cli(
        &leader_addr,
        &[
            "bench",
            "put",
            "--total",
            "96",
            "--clients",
            "4",
            "--value-bytes",
            "1000000",
            "--keys-space",
            "16",
            "--key-prefix",
            "large/v/",
        ],
    );
    assert!(out.status.success(), "bench put: {out:?}");
    put_ok(&c, "large/last", "1");

    let node = &mut c.nodes[(victim - 1) as usize];
    node.restart();
    wait_for(
        "the restarted follower to hold the last key",
        Duration::from_secs(120),
        || has_keys(node, "large/last", 1),
    );
}

fn term_and_leader(node: &Server) -> Option<(u64, u64)> {
    let st = Cluster::status_of(node)?;
    let leader = st["leader"].as_u64().filter(|&l| l != 0)?;
    Some((st["raft_term"].as_u64()?, leader))
}

/// A member paused past its election timeout (SIGSTOP: a long GC-like
/// stall, or a partition) asks the others whether it could win before it
/// raises its term; they still follow their leader, so the leader and the
/// term stay as they were and the member simply catches up.
#[test]
fn a_member_back_from_a_pause_does_not_unseat_the_leader() {
    let dir = temp_dir();
    let c = Cluster::start(dir.path(), 3);
    let leader = c.leader();
    let leader_node = &c.nodes[(leader - 1) as usize];
    put_ok(&c, "pause/before", "1");
    let before = wait_for("the term and leader", Duration::from_secs(20), || {
        term_and_leader(leader_node)
    });
    let paused = if leader == 3 { 2 } else { 3 };
    let node = &c.nodes[(paused - 1) as usize];

    node.signal("STOP");
    // Several election timeouts (at most 800 ms each) pass while it is
    // stopped; writes go on without it.
    let resume_at = std::time::Instant::now() + Duration::from_secs(3);
    let mut i = 0;
    while std::time::Instant::now() < resume_at {
        put_ok(&c, &format!("pause/during/{i:03}"), "1");
        i += 1;
    }
    node.signal("CONT");

    put_ok(&c, "pause/after", "1");
    wait_for(
        "the resumed member to catch up",
        Duration::from_secs(30),
        || has_keys(node, "pause/after", 1),
    );
    let after = term_and_leader(leader_node).expect("the leader answers");
    assert_eq!(
        after,
        before,
        "(term, leader) changed after member {paused} resumed:\n{}",
        node.stderr_log()
    );
}

/// A new cluster is formed by its lowest member; the others wait to be
/// reached by its leader. Without the lowest member, they form the
/// cluster themselves once they have waited their turn.
#[test]
fn a_new_cluster_forms_without_its_lowest_member() {
    let dir = temp_dir();
    let listens: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers: Vec<String> = (0..3).map(|_| free_addr()).collect();
    // Members 2 and 3 only, started together: each is ready once it knows
    // a leader.
    let nodes = common::start_some_members(
        dir.path(),
        &[2, 3],
        &listens,
        &peers,
        &peers,
        &vec![Vec::new(); 3],
    );
    let leader = wait_for(
        "a leader of members 2 and 3",
        Duration::from_secs(30),
        || leader_id(&nodes),
    );
    assert!(leader == 2 || leader == 3, "leader {leader}");
    let endpoints = listens[1..].join(",");
    let out = wait_for(
        "a write committed by members 2 and 3",
        Duration::from_secs(30),
        || {
            let out = cli(&endpoints, &["put", "formed", "yes"]);
            out.status.success().then_some(out)
        },
    );
    assert!(out.status.success());
    let got = cli(&endpoints, &["get", "formed"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "formed\nyes\n");
}

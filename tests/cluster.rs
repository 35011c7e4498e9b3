//! Three `utopiad` processes forming one cluster over the gRPC transport.

mod common;

use std::time::Duration;

use common::{cli, free_addr, temp_dir, wait_for, Server};

struct Cluster {
    nodes: Vec<Server>,
    endpoints: String,
}

impl Cluster {
    fn start(dir: &std::path::Path, n: usize) -> Cluster {
        let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let initial: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let initial = initial.join(",");
        // Start the nodes concurrently: each waits for a leader, which needs
        // a majority of them running.
        let handles: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let data = dir.join(format!("node{}", i + 1));
                let addr = addr.clone();
                let initial = initial.clone();
                std::thread::spawn(move || {
                    let id = (i + 1).to_string();
                    Server::start_at(
                        &data,
                        &addr,
                        &["--node-id", &id, "--initial-cluster", &initial],
                    )
                })
            })
            .collect();
        let nodes = handles
            .into_iter()
            .map(|h| h.join().expect("node started"))
            .collect();
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
            self.nodes.iter().filter(|n| n.is_running()).find_map(|n| {
                Self::status_of(n)
                    .and_then(|s| s["leader"].as_u64())
                    .filter(|l| *l != 0)
            })
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

    // Writes succeed again once the other two elect a leader.
    wait_for(
        "a write after losing the leader",
        Duration::from_secs(30),
        || {
            c.cli(&["put", "c/after", "x"])
                .status
                .success()
                .then_some(())
        },
    );
    acked.push("c/after".to_string());
    let new_leader = c.leader();
    assert_ne!(new_leader, leader, "a new leader was elected");
    for i in 10..20 {
        let key = format!("c/{i:02}");
        assert!(c.cli(&["put", &key, &i.to_string()]).status.success());
        acked.push(key);
    }

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

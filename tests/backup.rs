//! Backups through the real binaries: `utopia snapshot save` from a
//! three-node cluster under write load, `status`, `restore` into a new
//! three-node cluster that holds exactly the source's state at the
//! backup's revision and takes writes; damaged backups refused.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cli, free_addr, start_cluster, start_members, temp_dir, wait_for, Server};
use serde_json::Value;

fn json(out: std::process::Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// Every key (all are printable ASCII here, from "!" on) with its
/// revisions, version, lease and value, at `rev` (0: now), read from
/// `node`.
fn all_keys(node: &Server, rev: i64) -> Vec<Value> {
    let rev = rev.to_string();
    let v = node.cli_json(&["get", "!", "--from-key", "--rev", &rev]);
    v["kvs"].as_array().cloned().unwrap_or_default()
}

/// `utopia snapshot status FILE --output json` (no server).
fn status(file: &Path) -> std::process::Output {
    cli(
        "127.0.0.1:1",
        &[
            "--output",
            "json",
            "snapshot",
            "status",
            file.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_backup_under_load_restores_into_a_new_cluster_equal_at_its_revision() {
    let dir = temp_dir();
    let (nodes, addrs) = start_cluster(&dir.path().join("src"), 3, &[]);
    let endpoints = addrs.join(",");

    // State of every kind: keys on a lease, a device document, history.
    let lease = json(cli(
        &endpoints,
        &["--output", "json", "lease", "grant", "3600"],
    ))["id"]
        .as_i64()
        .expect("lease id")
        .to_string();
    for (k, v) in [("leased/a", "1"), ("leased/b", "2")] {
        assert!(cli(&endpoints, &["put", k, v, "--lease", &lease])
            .status
            .success());
    }
    assert!(cli(&endpoints, &["put", "twice", "1"]).status.success());
    assert!(cli(&endpoints, &["put", "twice", "2"]).status.success());
    let report = cli(
        &endpoints,
        &[
            "device", "report", "--host", "gw1", "--zone", "hall", "--class", "thermo", "--id",
            "7", "temp", "--json", "21.5",
        ],
    );
    assert!(report.status.success(), "{report:?}");

    // Writes go on while the backup is taken (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, endpoints) = (stop.clone(), written.clone(), endpoints.clone());
        std::thread::spawn(move || {
            for i in 0..2_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("load/{i:05}");
                if cli(&endpoints, &["put", &key, &i.to_string()])
                    .status
                    .success()
                {
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    wait_for("writes under way", Duration::from_secs(30), || {
        (written.load(Ordering::Relaxed) >= 20).then_some(())
    });
    let file = dir.path().join("cluster.utopia");
    let saved = nodes[1].cli(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.status.success(), "{saved:?}");
    let at_save = written.load(Ordering::Relaxed);
    wait_for("writes after the backup", Duration::from_secs(30), || {
        (written.load(Ordering::Relaxed) >= at_save + 10).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(!dir.path().join("cluster.utopia.part").exists());

    let st = json(status(&file));
    let revision = st["manifest"]["revision"].as_i64().unwrap();
    assert!(st["keys"].as_u64().unwrap() >= 23, "{st}");
    assert_eq!(st["documents"]["devices"], 1, "{st}");
    assert_eq!(st["leases"], 1, "{st}");
    let want = all_keys(&nodes[0], revision);
    assert_eq!(want.len() as u64, st["keys"].as_u64().unwrap());
    // The source moved on after the backup.
    assert!(all_keys(&nodes[0], 0).len() > want.len());

    // A new cluster: each member restored from the file, then started.
    let dst = dir.path().join("dst");
    let (listens, peers): (Vec<String>, Vec<String>) =
        (0..3).map(|_| (free_addr(), free_addr())).unzip();
    let initial = common::initial_cluster(&peers);
    for id in 1..=3 {
        let data = dst.join(format!("node{id}"));
        let out = cli(
            "127.0.0.1:1",
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--node-id",
                &id.to_string(),
                "--initial-cluster",
                &initial,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let restored = start_members(&dst, &listens, &peers, &peers, &vec![Vec::new(); 3]);
    let restored_endpoints = listens.join(",");
    for node in &restored {
        let got = all_keys(node, 0);
        assert_eq!(
            got, want,
            "node {} differs from the source at revision {revision}",
            node.addr
        );
    }
    let ttl = restored[2].cli_json(&["lease", "ttl", &lease, "--keys"]);
    assert_eq!(ttl["ttl"], 3600, "{ttl}");
    assert_eq!(ttl["keys"].as_array().map(Vec::len), Some(2), "{ttl}");
    let source_doc = nodes[0].cli_json(&["doc", "get", "devices", "gw1/thermo/7"]);
    let restored_doc = restored[1].cli_json(&["doc", "get", "devices", "gw1/thermo/7"]);
    assert_eq!(source_doc, restored_doc);

    // A new cluster: another id than the source's, and it takes writes.
    let status_of = |n: &Server| n.cli_json(&["status"])["cluster_id"].clone();
    assert_ne!(status_of(&nodes[0]), status_of(&restored[0]));
    let put = cli(&restored_endpoints, &["put", "after-restore", "x"]);
    assert!(put.status.success(), "{put:?}");
    let after = restored[0].cli_json(&["get", "after-restore"]);
    assert_eq!(
        after["kvs"][0]["mod_revision"].as_i64().unwrap(),
        revision + 1
    );
}

#[test]
fn damaged_truncated_and_newer_backups_are_refused() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("n"));
    for i in 0..50 {
        server.cli_ok(&["put", &format!("k{i}"), "v"]);
    }
    let file = dir.path().join("good.utopia");
    server.cli_ok(&["snapshot", "save", file.to_str().unwrap()]);
    let good = std::fs::read(&file).unwrap();
    assert!(status(&file).status.success());

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let mut newer = good.clone();
    newer[12] = b'2';
    for (name, bytes, why) in [
        ("flipped", flipped, "checksum mismatch"),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            "checksum mismatch",
        ),
        (
            "newer",
            newer,
            "backup format 2 is newer than this build reads",
        ),
        ("empty", Vec::new(), "not a utopia backup"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = status(&path);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{name}: {stderr}");
        let data = dir.path().join(format!("{name}-restored"));
        let out = cli(
            "127.0.0.1:1",
            &[
                "snapshot",
                "restore",
                path.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--node-id",
                "1",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert!(
            !data.exists(),
            "{name}: a refused restore created {}",
            data.display()
        );
    }
}

/// The backups in `dir` (scheduled ones' names), sorted.
fn backups_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("utopia-") && n.ends_with(".utopia"))
    });
    files.sort();
    files
}

#[test]
fn the_leader_takes_scheduled_backups_keeps_the_newest_and_counts_failures() {
    let dir = temp_dir();
    let conf = |id: u64| {
        let path = dir.path().join(format!("n{id}.conf"));
        let backups = dir.path().join(format!("backups{id}"));
        std::fs::write(
            &path,
            format!(
                "backups = {{ interval_s = 1; dir = \"{}\"; retention_count = 2; }};\n",
                backups.display()
            ),
        )
        .unwrap();
        vec!["--config".to_string(), path.display().to_string()]
    };
    let (nodes, addrs) = common::start_cluster_each(&dir.path().join("c"), 3, conf);
    let endpoints = addrs.join(",");
    for i in 0..5 {
        assert!(cli(&endpoints, &["put", &format!("k{i}"), "v"])
            .status
            .success());
    }
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        common::leader_id(&nodes)
    });
    let leader_dir = dir.path().join(format!("backups{leader}"));
    let files = wait_for("three scheduled backups", Duration::from_secs(30), || {
        let n = common::counter(&nodes[leader as usize - 1].addr, "backups_taken_total");
        (n >= 3).then(|| backups_in(&leader_dir))
    });
    assert!(files.len() <= 2, "retention keeps 2: {files:?}");
    let st = json(status(files.last().unwrap()));
    assert!(st["keys"].as_u64().unwrap() >= 5, "{st}");
    for id in (1..=3).filter(|&id| id != leader) {
        assert!(
            backups_in(&dir.path().join(format!("backups{id}"))).is_empty(),
            "follower {id} took a backup"
        );
    }

    // A directory that cannot be created: counted, and the node goes on.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"a file, not a directory").unwrap();
    let conf = dir.path().join("blocked.conf");
    std::fs::write(
        &conf,
        format!(
            "backups = {{ interval_s = 1; dir = \"{}\"; }};\n",
            blocked.join("sub").display()
        ),
    )
    .unwrap();
    let single = Server::start_with(
        &dir.path().join("single"),
        &["--config", conf.to_str().unwrap()],
    );
    wait_for("a failed backup counted", Duration::from_secs(30), || {
        (common::counter(&single.addr, "backups_failed_total") >= 1).then_some(())
    });
    single.cli_ok(&["put", "still", "serving"]);
}

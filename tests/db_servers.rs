//! `utopia db add|remove|list`: the db_servers collection through the log,
//! on a three-node cluster (every member sees the same directory), with
//! bad input refused and counted.

mod common;

use std::time::Duration;

use common::*;

/// The db_servers as `db list --output json` on `node` shows them (a
/// serializable read: that member's own state).
fn listed(node: &Server) -> Vec<serde_json::Value> {
    let v = node.cli_json(&["db", "list", "--consistency", "serializable"]);
    v["db_servers"].as_array().cloned().unwrap_or_default()
}

#[test]
fn db_servers_are_added_listed_and_removed_through_the_log() {
    let dir = temp_dir();
    let (nodes, addrs) = start_cluster(dir.path(), 3, &[]);
    let all = addrs.join(",");
    let cli_all = |args: &[&str]| cli(&all, args);

    let out = cli_all(&["db", "add", "db1.example:27017"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "database server db1.example:27017:mongodb added (state ok)"
    );
    assert!(cli_all(&["db", "add", "[::1]:27018", "--type", "mongodb"])
        .status
        .success());
    assert!(cli_all(&["db", "add", "10.0.0.3:9000:rocksdb"])
        .status
        .success());

    // Every member holds the same three, with host, port, type and state.
    for node in &nodes {
        let servers = wait_for(
            "every member to list three servers",
            Duration::from_secs(20),
            || {
                let s = listed(node);
                (s.len() == 3).then_some(s)
            },
        );
        let ids: Vec<&str> = servers.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(
            ids,
            [
                "10.0.0.3:9000:rocksdb",
                "[::1]:27018:mongodb",
                "db1.example:27017:mongodb"
            ]
        );
        let db1 = &servers[2];
        assert_eq!(db1["host"], "db1.example");
        assert_eq!(db1["port"], 27017);
        assert_eq!(db1["type"], "mongodb");
        assert_eq!(db1["state"], "ok");
        assert!(db1["reason"].is_null());
    }
    let table = nodes[0].cli_ok(&["db", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("HOST") && lines[0].ends_with("LAST ERROR"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("db1.example") && lines[3].contains(" ok "),
        "{table}"
    );

    // Removing: gone everywhere; removing again is NOT_FOUND (exit 1).
    assert!(cli_all(&["db", "remove", "db1.example:27017"])
        .status
        .success());
    for node in &nodes {
        wait_for(
            "every member to list two servers",
            Duration::from_secs(20),
            || (listed(node).len() == 2).then_some(()),
        );
    }
    let again = cli_all(&["db", "remove", "db1.example:27017"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("NOT_FOUND"),
        "{again:?}"
    );

    // Bad addresses: the CLI refuses what it cannot parse (exit 2), the
    // server what it cannot store (INVALID_ARGUMENT, exit 3, counted).
    for bad in ["db1", "db1:port", "[::1"] {
        let out = cli_all(&["db", "add", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
    let leader = wait_for("a leader", Duration::from_secs(20), || leader_id(&nodes));
    let leader = &nodes[leader as usize - 1];
    let rejected_before = counter(
        &leader.addr,
        "requests_rejected_total{reason=\"bad_db_server\"}",
    );
    for (addr, why) in [
        ("db 1:27017", "host"),
        ("db1:0", "port"),
        ("db1:70000", "port"),
        ("db1:27017:Mongo DB", "type"),
    ] {
        let out = leader.cli(&["db", "add", addr]);
        assert_eq!(out.status.code(), Some(3), "{addr}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("INVALID_ARGUMENT") && stderr.contains(why),
            "{addr}: {stderr}"
        );
    }
    assert_eq!(
        counter(
            &leader.addr,
            "requests_rejected_total{reason=\"bad_db_server\"}"
        ),
        rejected_before + 4
    );
    assert_eq!(listed(leader).len(), 2);
}

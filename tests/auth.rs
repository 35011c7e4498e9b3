//! Authentication and roles against real servers: a one-node server and a
//! three-node cluster, driven by the `utopia` CLI (`--user`) and, where a
//! token itself is the subject, by a gRPC client.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{cli, free_addr, start_cluster, temp_dir, wait_for, Server};
use tonic::metadata::AsciiMetadataValue;
use utopia_proto::v1 as pb;

const ROOT: &[&str] = &["--user", "root:rootpw"];
const ALICE: &[&str] = &["--user", "alice:alicepw"];
const DEV: &[&str] = &["--user", "dev:devpw"];

fn args<'a>(who: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    who.iter().chain(rest).copied().collect()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The command failed with exit code 3 and `code` (a gRPC code name) on
/// stderr; returns stderr.
fn refused(out: Output, code: &str, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{what} must fail with exit 3\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(code), "{what}: expected {code}, got: {err}");
    err
}

fn json(out: Output, what: &str) -> serde_json::Value {
    let text = ok(out, what);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {text}"))
}

/// Users and roles: root (root), alice (readwrite on keys under `app/`),
/// dev (read on the devices collection); then auth on.
fn enable_auth(run: &dyn Fn(&[&str]) -> Output) {
    for a in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "app"],
        &["user", "add", "dev:devpw"],
        &["role", "add", "devreader"],
        &[
            "role",
            "grant-permission",
            "devreader",
            "read",
            "--collection",
            "devices",
        ],
        &["user", "grant-role", "dev", "devreader"],
    ] {
        ok(run(a), &format!("{a:?}"));
    }
    // A device to list.
    ok(
        run(&[
            "device", "report", "--host", "gw1", "--zone", "hall", "--class", "thermo", "--id",
            "1", "temp", "--json", "20",
        ]),
        "device report",
    );
    ok(run(&["auth", "enable"]), "auth enable");
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn one_node_allows_only_what_roles_grant() {
    let dir = temp_dir();
    let conf = dir.path().join("auth.conf");
    std::fs::write(&conf, "auth = { token_ttl_s = 2; };\n").unwrap();
    let mut s = Server::start_with(&dir.path().join("n"), &["--config", conf.to_str().unwrap()]);
    let run = |a: &[&str]| s.cli(a);

    // Enabling without a root user is refused, and nothing changes.
    refused(
        run(&["auth", "enable"]),
        "FAILED_PRECONDITION",
        "auth enable without root",
    );
    ok(run(&["put", "before", "1"]), "put before auth");

    enable_auth(&run);
    let st = json(run(&["--output", "json", "auth", "status"]), "auth status");
    assert_eq!(st["enabled"], true, "{st}");

    // Without credentials: refused.
    refused(
        run(&["put", "app/a", "1"]),
        "UNAUTHENTICATED",
        "anonymous put",
    );
    refused(run(&["get", "before"]), "UNAUTHENTICATED", "anonymous get");
    refused(
        run(&["user", "list"]),
        "UNAUTHENTICATED",
        "anonymous user list",
    );

    // alice: readwrite on app/ and nothing else.
    ok(run(&args(ALICE, &["put", "app/a", "1"])), "alice put app/a");
    let got = json(
        run(&args(
            ALICE,
            &["--output", "json", "get", "app/", "--prefix"],
        )),
        "alice get app/",
    );
    assert_eq!(got["kvs"][0]["value"], "1", "{got}");
    let err = refused(
        run(&args(ALICE, &["put", "other", "1"])),
        "PERMISSION_DENIED",
        "alice put other",
    );
    assert!(err.contains("alice"), "the message names the user: {err}");
    refused(
        run(&args(ALICE, &["get", "before"])),
        "PERMISSION_DENIED",
        "alice get",
    );
    refused(
        run(&args(ALICE, &["get", "app", "--prefix"])),
        "PERMISSION_DENIED",
        "alice get a wider prefix",
    );
    refused(
        run(&args(ALICE, &["del", "--from", "app/"])),
        "PERMISSION_DENIED",
        "alice delete past her prefix",
    );
    refused(
        run(&args(ALICE, &["doc", "list", "devices"])),
        "PERMISSION_DENIED",
        "alice list devices",
    );
    refused(
        run(&args(ALICE, &["user", "list"])),
        "PERMISSION_DENIED",
        "alice user list",
    );
    refused(
        run(&args(ALICE, &["auth", "disable"])),
        "PERMISSION_DENIED",
        "alice auth disable",
    );

    // A transaction needs read on its compares and write on its puts, in
    // both branches, even the one that does not run.
    let txn = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let inside = txn(
        "inside.json",
        r#"{"compare":[{"key":"app/a","target":"version","result":">","value":0}],
            "success":[{"put":{"key":"app/t","value":"1"}}],
            "failure":[{"get":{"key":"app/","prefix":true}}]}"#,
    );
    ok(
        run(&args(ALICE, &["txn", "--file", &inside])),
        "alice txn inside app/",
    );
    let outside = txn(
        "outside.json",
        r#"{"compare":[{"key":"app/a","target":"version","result":">","value":0}],
            "success":[{"put":{"key":"app/t","value":"2"}}],
            "failure":[{"put":{"key":"other","value":"1"}}]}"#,
    );
    refused(
        run(&args(ALICE, &["txn", "--file", &outside])),
        "PERMISSION_DENIED",
        "alice txn that may write outside app/",
    );

    // Revoking a lease deletes its keys: write on every one is needed.
    let lease = json(
        run(&args(ALICE, &["--output", "json", "lease", "grant", "60"])),
        "alice lease grant",
    )["id"]
        .as_i64()
        .expect("lease id")
        .to_string();
    ok(
        run(&args(ROOT, &["put", "--lease", &lease, "rootkey", "1"])),
        "root put on the lease",
    );
    refused(
        run(&args(ALICE, &["lease", "revoke", &lease])),
        "PERMISSION_DENIED",
        "alice revokes a lease holding root's key",
    );
    ok(
        run(&args(ROOT, &["lease", "revoke", &lease])),
        "root lease revoke",
    );
    refused(
        run(&["lease", "grant", "60"]),
        "UNAUTHENTICATED",
        "anonymous lease grant",
    );

    // dev: read on devices.
    let docs = json(
        run(&args(DEV, &["--output", "json", "doc", "list", "devices"])),
        "dev list devices",
    );
    assert_eq!(
        docs["documents"].as_array().map(Vec::len),
        Some(1),
        "{docs}"
    );
    refused(
        run(&args(
            DEV,
            &[
                "device", "report", "--host", "gw1", "--zone", "hall", "--class", "thermo", "--id",
                "1", "temp", "--json", "21",
            ],
        )),
        "PERMISSION_DENIED",
        "dev report",
    );
    refused(
        run(&args(DEV, &["device", "cmd", "gw1/thermo/1", "set", "1"])),
        "PERMISSION_DENIED",
        "dev command",
    );

    // Compaction is root's.
    refused(
        run(&args(ALICE, &["compact", "2"])),
        "PERMISSION_DENIED",
        "alice compact",
    );
    ok(run(&args(ROOT, &["compact", "2"])), "root compact");

    // Status: open, but the data directory only for root.
    for who in [&[][..], ALICE] {
        let st = json(run(&args(who, &["--output", "json", "status"])), "status");
        assert_eq!(st["data_dir"], "", "{who:?} sees no data directory: {st}");
        assert_eq!(st["cluster_id"], 0, "{who:?} sees no cluster id: {st}");
        assert!(
            st["members"].as_array().is_some_and(|m| m.len() == 1),
            "{st}"
        );
    }
    let st = json(
        run(&args(ROOT, &["--output", "json", "status"])),
        "root status",
    );
    assert!(
        st["data_dir"].as_str().is_some_and(|d| d.ends_with("/n")),
        "root sees the data directory: {st}"
    );
    assert_ne!(st["cluster_id"], 0, "root sees the cluster id: {st}");

    // A wrong password is refused and counted.
    let failures_before = counter(&st, "auth_failures_total{reason=\"bad_password\"}");
    refused(
        run(&["--user", "alice:wrong", "get", "app/a"]),
        "UNAUTHENTICATED",
        "wrong password",
    );
    refused(
        run(&["--user", "nobody:x", "get", "app/a"]),
        "UNAUTHENTICATED",
        "unknown user",
    );
    let st = json(
        run(&args(ROOT, &["--output", "json", "status"])),
        "root status",
    );
    assert_eq!(
        counter(&st, "auth_failures_total{reason=\"bad_password\"}"),
        failures_before + 2,
        "{st}"
    );

    // Without a password and without a terminal: a usage error.
    let mut no_tty = std::process::Command::new(common::UTOPIA);
    no_tty
        .args(["--endpoints", &s.addr, "--user", "alice", "get", "app/a"])
        .stdin(std::process::Stdio::null());
    let out = common::run_with_deadline(no_tty, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("NAME:PASSWORD"), "{err}");

    // A token stops working when it expires (auth.token_ttl_s = 2 here).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (token, expires_at_ms) = authenticate(&s.addr, "alice", "alicepw").await;
        let read = || range(&s.addr, &token, "app/a");
        if now_ms() + 500 < expires_at_ms {
            read().await.expect("a fresh token is accepted");
        }
        let status = wait_for_async("the token to expire", || async move {
            read()
                .await
                .err()
                .filter(|e| e.code() == tonic::Code::Unauthenticated)
        })
        .await;
        assert!(status.message().contains("expired"), "{status:?}");
        // A forged one never worked.
        let forged = token.replacen(&hex("alice"), &hex("root"), 1);
        let e = range(&s.addr, &forged, "app/a").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    });

    // A new password voids the old one.
    ok(
        run(&args(ROOT, &["user", "passwd", "alice:newpw"])),
        "passwd",
    );
    refused(
        run(&args(ALICE, &["get", "app/a"])),
        "UNAUTHENTICATED",
        "old password",
    );
    ok(
        run(&["--user", "alice:newpw", "get", "app/a"]),
        "new password",
    );

    // Auth survives a restart.
    s.kill9();
    s.restart();
    let run = |a: &[&str]| s.cli(a);
    refused(
        run(&["get", "app/a"]),
        "UNAUTHENTICATED",
        "anonymous after restart",
    );
    ok(
        run(&["--user", "alice:newpw", "put", "app/b", "2"]),
        "alice after restart",
    );

    // Root can turn it off; then everything is open again.
    ok(run(&args(ROOT, &["auth", "disable"])), "auth disable");
    ok(run(&["put", "other", "1"]), "anonymous put after disable");
}

#[test]
fn three_nodes_membership_needs_root_and_auth_reaches_every_member() {
    let dir = temp_dir();
    let conf = dir.path().join("small-log.conf");
    std::fs::write(
        &conf,
        "raft = { snapshot_log_entries = 20; log_entries_kept_after_snapshot = 5; };\n",
    )
    .unwrap();
    let (mut nodes, addrs) = start_cluster(dir.path(), 3, &["--config", conf.to_str().unwrap()]);
    let endpoints = addrs.join(",");
    let run = |a: &[&str]| cli(&endpoints, a);
    enable_auth(&run);

    let members = |run: &dyn Fn(&[&str]) -> Output| -> Vec<u64> {
        let st = json(run(&["--output", "json", "status"]), "status");
        let mut ids: Vec<u64> = st["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        ids.sort();
        ids
    };
    let leader = || -> u64 {
        wait_for("a leader", Duration::from_secs(20), || {
            let st: serde_json::Value =
                serde_json::from_slice(&run(&["--output", "json", "status"]).stdout).ok()?;
            st["leader"].as_u64().filter(|l| *l != 0)
        })
    };

    // Membership, compaction and leadership are root's.
    let spare = free_addr();
    for who in [&[][..], ALICE] {
        let code = if who.is_empty() {
            "UNAUTHENTICATED"
        } else {
            "PERMISSION_DENIED"
        };
        refused(
            run(&args(who, &["cluster", "add", "4", &spare])),
            code,
            "cluster add",
        );
        refused(
            run(&args(who, &["cluster", "remove", "3"])),
            code,
            "cluster remove",
        );
        refused(
            run(&args(who, &["cluster", "transfer-leader", "2"])),
            code,
            "transfer-leader",
        );
        refused(run(&args(who, &["compact", "2"])), code, "compact");
    }
    assert_eq!(members(&run), vec![1, 2, 3], "membership unchanged");

    // Root can hand leadership over.
    let first = leader();
    let target = if first == 1 { 2 } else { 1 };
    ok(
        run(&args(
            ROOT,
            &["cluster", "transfer-leader", &target.to_string()],
        )),
        "root transfer-leader",
    );
    wait_for("the new leader", Duration::from_secs(20), || {
        (leader() == target).then_some(())
    });

    // A token from one member works on every member.
    let rt = tokio::runtime::Runtime::new().unwrap();
    ok(run(&args(ALICE, &["put", "app/t", "v"])), "alice put");
    rt.block_on(async {
        let leader_addr = &addrs[(target - 1) as usize];
        let (token, _) = authenticate(leader_addr, "alice", "alicepw").await;
        let token = token.as_str();
        for addr in &addrs {
            wait_for_async("the member to serve alice's read", || async move {
                range(addr, token, "app/t").await.ok().filter(|n| *n == 1)
            })
            .await;
            let e = range(addr, token, "elsewhere").await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{addr}: {e:?}");
        }
    });

    // The CLI fails over with its token: past an endpoint that is down and
    // a follower.
    let follower = addrs[if target == 1 { 1 } else { 0 }].clone();
    let failover = format!("{},{follower}", free_addr());
    ok(
        cli(&failover, &args(ALICE, &["put", "app/f", "1"])),
        "alice put through failover",
    );

    // Root removes a wiped follower; it comes back empty and catches up by
    // snapshot, users and roles included.
    let victim = if target == 3 { 2 } else { 3 };
    let node = &mut nodes[(victim - 1) as usize];
    node.kill9();
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    ok(
        run(&args(ROOT, &["cluster", "remove", &victim.to_string()])),
        "root remove",
    );
    for i in 0..60 {
        ok(
            run(&args(ALICE, &["put", &format!("app/{i:02}"), "x"])),
            "alice put",
        );
    }
    wait_for(
        "the leader to purge its log behind a snapshot",
        Duration::from_secs(30),
        || {
            let st = json(
                cli(
                    &addrs[(leader() - 1) as usize],
                    &["--output", "json", "status"],
                ),
                "status",
            );
            (st["raft_purged_index"].as_u64()? > 20).then_some(())
        },
    );
    let old = &nodes[(victim - 1) as usize];
    let rejoined = Server::start_member(
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
    ok(
        run(&args(
            ROOT,
            &["cluster", "add", &victim.to_string(), &old.peer_addr],
        )),
        "root re-add",
    );
    // alice's token is checked by the rejoined member itself (a
    // serializable read), so it must hold her roles and the signing key.
    wait_for(
        "the rejoined member to serve alice",
        Duration::from_secs(30),
        || {
            let out = rejoined.cli(&args(
                ALICE,
                &[
                    "--output",
                    "json",
                    "get",
                    "app/",
                    "--prefix",
                    "--count-only",
                    "--consistency",
                    "serializable",
                ],
            ));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["count"].as_u64()? == 62).then_some(())
        },
    );
    assert!(
        rejoined.stderr_log().contains("installed snapshot"),
        "the member caught up by snapshot:\n{}",
        rejoined.stderr_log()
    );
    refused(
        rejoined.cli(&["get", "app/t", "--consistency", "serializable"]),
        "UNAUTHENTICATED",
        "anonymous read on the rejoined member",
    );
    nodes[(victim - 1) as usize] = rejoined;

    // Everything survives a restart of every node.
    for n in nodes.iter_mut() {
        n.kill9();
    }
    for n in nodes.iter_mut() {
        n.restart();
    }
    let endpoints: String = nodes
        .iter()
        .map(|n| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let run = |a: &[&str]| cli(&endpoints, a);
    wait_for(
        "alice to write after the restart",
        Duration::from_secs(30),
        || {
            run(&args(ALICE, &["put", "app/r", "1"]))
                .status
                .success()
                .then_some(())
        },
    );
    refused(
        run(&["get", "app/r"]),
        "UNAUTHENTICATED",
        "anonymous after restart",
    );
    refused(
        run(&args(ALICE, &["cluster", "remove", "1"])),
        "PERMISSION_DENIED",
        "alice remove after restart",
    );
}

// ------------------------------------------------------------------ gRPC

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn wait_for_async<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// A token for `name` from the member at `addr` (which must lead: it reads
/// users after a read barrier), and its expiry.
async fn authenticate(addr: &str, name: &str, password: &str) -> (String, u64) {
    let r = pb::auth_client::AuthClient::new(channel(addr).await)
        .authenticate(pb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .into_inner();
    (r.token, r.expires_at_ms)
}

/// A serializable read of `key` at `addr` with `token`: how many keys.
async fn range(addr: &str, token: &str, key: &str) -> Result<i64, tonic::Status> {
    let mut req = tonic::Request::new(pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        consistency: pb::Consistency::Serializable as i32,
        ..Default::default()
    });
    let token: AsciiMetadataValue = token.parse().expect("ASCII token");
    req.metadata_mut().insert("token", token);
    pb::kv_client::KvClient::new(channel(addr).await)
        .range(req)
        .await
        .map(|r| r.into_inner().count)
}

//! The key-value API through the real binaries: the `utopia` CLI and a gRPC
//! client against a real `utopiad`.

mod common;

use std::time::Duration;

use common::{temp_dir, wait_for, Server};
use utopia_proto::v1 as pb;

#[test]
fn put_get_range_delete_through_the_cli() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));

    assert_eq!(s.cli_ok(&["put", "greeting", "hello"]).trim(), "OK");
    assert_eq!(s.cli_ok(&["get", "greeting"]), "greeting\nhello\n");

    let got = s.cli_json(&["get", "greeting"]);
    let kv = &got["kvs"][0];
    assert_eq!(kv["key"], "greeting");
    assert_eq!(kv["value"], "hello");
    assert_eq!(
        (
            kv["create_revision"].as_i64(),
            kv["mod_revision"].as_i64(),
            kv["version"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );

    for (k, v) in [
        ("sensors/a", "1"),
        ("sensors/b", "2"),
        ("sensors/c", "3"),
        ("sensorz", "x"),
    ] {
        s.cli_ok(&["put", k, v]);
    }
    s.cli_ok(&["put", "greeting", "hi"]);
    let kv = &s.cli_json(&["get", "greeting"])["kvs"][0];
    assert_eq!(
        (
            kv["create_revision"].as_i64(),
            kv["mod_revision"].as_i64(),
            kv["version"].as_i64()
        ),
        (Some(1), Some(6), Some(2))
    );

    let prefix = s.cli_json(&["get", "--prefix", "sensors/"]);
    let keys: Vec<&str> = prefix["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["sensors/a", "sensors/b", "sensors/c"]);

    let range = s.cli_json(&["get", "--from", "sensors/b", "--to", "sensorz"]);
    assert_eq!(range["kvs"].as_array().unwrap().len(), 2);

    let limited = s.cli_json(&["get", "--prefix", "sensors/", "--limit", "2"]);
    assert_eq!(limited["kvs"].as_array().unwrap().len(), 2);
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 3);

    // A past revision: at revision 3 only sensors/a and sensors/b existed.
    let past = s.cli_json(&["get", "--prefix", "sensors/", "--rev", "3"]);
    assert_eq!(past["kvs"].as_array().unwrap().len(), 2);
    let past_greeting = s.cli_json(&["get", "greeting", "--rev", "5"]);
    assert_eq!(past_greeting["kvs"][0]["value"], "hello");

    assert_eq!(s.cli_ok(&["del", "--prefix", "sensors/"]).trim(), "3");
    assert_eq!(
        s.cli_json(&["get", "--prefix", "sensors/"])["kvs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let missing = s.cli(&["get", "sensors/a"]);
    assert_eq!(missing.status.code(), Some(1), "a missing key exits 1");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    assert_eq!(s.cli_ok(&["del", "sensorz"]).trim(), "1");
}

#[test]
fn transactions_take_both_branches() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    s.cli_ok(&["put", "k", "v1"]);

    // cas: the version matches, then it no longer does.
    s.cli_ok(&["cas", "k", "--expect-version", "1", "v2"]);
    let failed = s.cli(&["cas", "k", "--expect-version", "1", "v3"]);
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(s.cli_json(&["get", "k"])["kvs"][0]["value"], "v2");
    // Version 0 means "must not exist".
    s.cli_ok(&["cas", "fresh", "--expect-version", "0", "new"]);

    let txn = |compare_value: &str| {
        let path = dir.path().join(format!("txn-{compare_value}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"compare":[{{"key":"k","target":"value","result":"=","value":"{compare_value}"}}],
                    "success":[{{"put":{{"key":"then","value":"yes"}}}},{{"get":{{"key":"k"}}}}],
                    "failure":[{{"put":{{"key":"else","value":"no"}}}},{{"del":{{"key":"fresh"}}}}]}}"#
            ),
        )
        .unwrap();
        s.cli_json(&["txn", "--file", path.to_str().unwrap()])
    };
    let then = txn("v2");
    assert_eq!(then["succeeded"], true, "{then}");
    assert_eq!(s.cli_json(&["get", "then"])["kvs"][0]["value"], "yes");
    let otherwise = txn("nope");
    assert_eq!(otherwise["succeeded"], false, "{otherwise}");
    assert_eq!(s.cli_json(&["get", "else"])["kvs"][0]["value"], "no");
    assert_eq!(
        s.cli(&["get", "fresh"]).status.code(),
        Some(1),
        "the failure branch deleted it"
    );
}

async fn connect(s: &Server) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(s.endpoint())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_changes_in_order_and_resumes() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let ch = connect(&s).await;
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    let mut watch = pb::watch_client::WatchClient::new(ch);

    let put = |k: &str, v: &str| pb::PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    let mut live = watch
        .watch(pb::WatchRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        kv.put(put(&format!("w/{}", i % 3), &i.to_string()))
            .await
            .unwrap();
        kv.put(put("other", "ignored")).await.unwrap();
    }
    kv.delete_range(pb::DeleteRangeRequest {
        key: b"w/1".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 21 {
        let msg = tokio::time::timeout(Duration::from_secs(10), live.message())
            .await
            .expect("watch event in time");
        for ev in msg.unwrap().expect("stream open").events {
            let kv = ev.kv.unwrap();
            seen.push((
                ev.r#type,
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.mod_revision,
                ev.prev_kv,
            ));
        }
    }
    let revisions: Vec<i64> = seen.iter().map(|e| e.3).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions strictly increase: {revisions:?}"
    );
    for (i, e) in seen.iter().take(20).enumerate() {
        assert_eq!(
            (e.1.as_str(), e.2.as_str()),
            (format!("w/{}", i % 3).as_str(), i.to_string().as_str())
        );
        assert_eq!(e.0, pb::event::EventType::Put as i32);
    }
    assert_eq!(
        seen[3].4.as_ref().map(|p| p.value.clone()),
        Some(b"0".to_vec()),
        "prev_kv of the second w/0 put"
    );
    let last = &seen[20];
    assert_eq!(
        (last.0, last.1.as_str()),
        (pb::event::EventType::Delete as i32, "w/1")
    );

    // Resume from a revision in the middle: exactly the changes from there.
    let from = seen[10].3;
    let mut resumed = watch
        .watch(pb::WatchRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            start_revision: from,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut again = Vec::new();
    while again.len() < 11 {
        let msg = tokio::time::timeout(Duration::from_secs(10), resumed.message())
            .await
            .expect("resumed event in time");
        for ev in msg.unwrap().expect("stream open").events {
            again.push(ev.kv.unwrap().mod_revision);
        }
    }
    assert_eq!(again, revisions[10..].to_vec());

    // The CLI resumes the same way.
    let out = s.cli_ok(&[
        "--output",
        "json",
        "watch",
        "w/",
        "--prefix",
        "--rev",
        &from.to_string(),
        "--count",
        "3",
    ]);
    let revs: Vec<i64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kv"]["mod_revision"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(revs, revisions[10..13].to_vec());
}

#[test]
fn lease_expiry_deletes_its_keys() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let granted = s.cli_json(&["lease", "grant", "1"]);
    let id = granted["id"].as_i64().expect("lease id").to_string();
    s.cli_ok(&["put", "--lease", &id, "session/a", "x"]);
    s.cli_ok(&["put", "--lease", &id, "session/b", "y"]);
    s.cli_ok(&["put", "durable", "z"]);
    let before = s.cli_json(&["get", "durable"])["header"]["revision"]
        .as_i64()
        .unwrap();
    wait_for(
        "the lease's keys to be deleted",
        Duration::from_secs(20),
        || {
            let left = s.cli_json(&["get", "--prefix", "session/"]);
            left["kvs"].as_array().unwrap().is_empty().then_some(())
        },
    );
    let after = s.cli_json(&["get", "durable"]);
    assert_eq!(after["kvs"][0]["value"], "z", "keys without the lease stay");
    assert_eq!(
        after["header"]["revision"].as_i64(),
        Some(before + 1),
        "both keys went in one revision"
    );
    assert_eq!(
        s.cli(&["lease", "ttl", &id]).status.code(),
        Some(1),
        "the lease is gone"
    );
    // A put on a lease that does not exist is refused.
    let refused = s.cli(&["put", "--lease", &id, "late", "v"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not found"));

    // Revoking deletes at once.
    let id2 = s.cli_json(&["lease", "grant", "60"])["id"]
        .as_i64()
        .unwrap()
        .to_string();
    s.cli_ok(&["put", "--lease", &id2, "r", "1"]);
    s.cli_ok(&["lease", "revoke", &id2]);
    assert_eq!(s.cli(&["get", "r"]).status.code(), Some(1));
}

#[test]
fn documents_listed_by_zone_class_and_host() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let report = |host: &str, zone: &str, class: &str, id: &str, post: &[&str], json: &str| {
        let mut args = vec![
            "device", "report", "--host", host, "--zone", zone, "--class", class, "--id", id,
        ];
        args.extend_from_slice(post);
        args.extend_from_slice(&["--json", json]);
        s.cli_ok(&args)
    };
    report("gw1", "kitchen", "thermo", "1", &["temp"], "21.5");
    report("gw1", "kitchen", "lamp", "2", &["state"], "true");
    report("gw2", "garage", "thermo", "3", &["temp"], "4");
    report(
        "gw1",
        "kitchen",
        "thermo",
        "1",
        &["diag", "radio", "rssi"],
        "-71",
    );

    let ids = |args: &[&str]| -> Vec<String> {
        let out = s.cli_ok(args);
        out.lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&["doc", "list", "devices", "--zone", "kitchen"]),
        ["gw1/lamp/2", "gw1/thermo/1"]
    );
    assert_eq!(
        ids(&["doc", "list", "devices", "--class", "thermo"]),
        ["gw1/thermo/1", "gw2/thermo/3"]
    );
    assert_eq!(
        ids(&["doc", "list", "devices", "--host", "gw2"]),
        ["gw2/thermo/3"]
    );
    assert_eq!(ids(&["doc", "list", "zones"]), ["garage", "kitchen"]);

    let doc = s.cli_json(&["doc", "get", "devices", "gw1/thermo/1"]);
    let d = &doc["document"];
    assert_eq!(d["zone"], "kitchen");
    assert_eq!(d["data"]["temp"], 21.5);
    assert_eq!(
        d["data"]["diag"]["radio"]["rssi"], -71,
        "unknown post types nest by path"
    );
    let zone = s.cli_json(&["doc", "get", "zones", "kitchen"]);
    assert_eq!(
        zone["document"]["devices"],
        serde_json::json!(["gw1/lamp/2", "gw1/thermo/1"])
    );

    // Paging: one document per page, every device exactly once.
    let paged = ids(&["doc", "list", "devices", "--limit", "1", "--all"]);
    assert_eq!(paged, ["gw1/lamp/2", "gw1/thermo/1", "gw2/thermo/3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let ch = connect(&s).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "utopia.v1.KV", "utopia.v1.Documents"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"));
        assert_eq!(
            resp.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "utopia.v1.KV",
        "utopia.v1.Watch",
        "utopia.v1.Lease",
        "utopia.v1.Documents",
        "utopia.v1.Maintenance",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn old_history_is_compacted_automatically() {
    let dir = temp_dir();
    let conf = dir.path().join("history.conf");
    std::fs::write(
        &conf,
        "limits = { history_revisions_max = 20; };\nraft = { lease_check_interval_ms = 50; };\n",
    )
    .unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    for i in 0..60 {
        s.cli_ok(&["put", "h", &i.to_string()]);
    }
    let compacted = wait_for("automatic compaction", Duration::from_secs(20), || {
        let c = s.cli_json(&["status"])["compact_revision"]
            .as_i64()
            .unwrap_or(0);
        (c >= 38).then_some(c)
    });
    assert!(
        compacted <= 40,
        "keeps history_revisions_max revisions: compacted to {compacted}"
    );
    let old = s.cli(&["get", "h", "--rev", "2"]);
    assert_eq!(old.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&old.stderr).contains("compacted"));
    assert_eq!(
        s.cli_json(&["get", "h", "--rev", "50"])["kvs"][0]["value"],
        "49"
    );
}

#[test]
fn a_wide_compaction_is_applied_in_steps() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    s.cli_ok(&[
        "bench",
        "put",
        "--clients",
        "8",
        "--total",
        "2600",
        "--keys-space",
        "100",
        "--value-bytes",
        "16",
    ]);
    let revision = s.cli_json(&["status"])["revision"].as_i64().unwrap();
    assert!(revision >= 2_600, "revision {revision}");
    let target = revision - 10;
    s.cli_ok(&["compact", &target.to_string()]);
    let st = s.cli_json(&["status"]);
    assert_eq!(st["compact_revision"].as_i64(), Some(target), "{st}");
    // At most 1,000 revisions per entry: three entries at least.
    let entries = st["counters"]["proposals_total{event=\"compact\"}"]
        .as_u64()
        .unwrap_or(0);
    assert!(entries >= 3, "{entries} compaction entries: {st}");
    let old = s.cli(&["get", "--prefix", "bench/", "--rev", "5"]);
    assert_eq!(old.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&old.stderr).contains("compacted"));
    let at = s.cli_json(&["get", "--prefix", "bench/", "--rev", &target.to_string()]);
    assert_eq!(at["count"].as_i64(), Some(100), "{at}");
    // A compaction at or below the compacted revision is refused, and
    // compacts nothing more.
    let again = s.cli(&["compact", &(target - 1500).to_string()]);
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    assert_eq!(
        s.cli_json(&["status"])["compact_revision"].as_i64(),
        Some(target)
    );
}

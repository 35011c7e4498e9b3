//! Durability: what `utopiad` acknowledged survives SIGKILL.

mod common;

use common::{temp_dir, Server};
use utopia_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = temp_dir();
    let mut s = Server::start(&dir.path().join("data"));

    // Concurrent writers, so that appends share fsyncs; every acknowledged
    // put is recorded with the revision the server returned.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let endpoint = s.endpoint();
        tasks.push(tokio::spawn(async move {
            let mut kv = pb::kv_client::KvClient::connect(endpoint)
                .await
                .expect("connect");
            let mut acked = Vec::new();
            for i in 0..100 {
                let key = format!("dur/{w}/{i:03}");
                let resp = kv
                    .put(pb::PutRequest {
                        key: key.clone().into(),
                        value: format!("v{i}").into(),
                        ..Default::default()
                    })
                    .await
                    .expect("put acknowledged");
                acked.push((key, resp.into_inner().header.unwrap().revision));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 800);

    s.kill9();
    s.restart();

    let mut kv = pb::kv_client::KvClient::connect(s.endpoint())
        .await
        .expect("connect after restart");
    let all = kv
        .range(pb::RangeRequest {
            key: b"dur/".to_vec(),
            range_end: b"dur0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range after restart")
        .into_inner();
    assert_eq!(all.kvs.len(), 800, "every acknowledged key is present");
    let by_key: std::collections::HashMap<String, &pb::KeyValue> = all
        .kvs
        .iter()
        .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv))
        .collect();
    for (key, rev) in &acked {
        let kv = by_key.get(key).unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!(
            kv.mod_revision, *rev,
            "{key} has the revision it was acknowledged with"
        );
        assert_eq!(kv.create_revision, *rev);
    }
    let max_rev = acked.iter().map(|a| a.1).max().unwrap();
    assert_eq!(
        all.header.unwrap().revision,
        max_rev,
        "no revision was lost or invented"
    );

    // The restarted server keeps counting from there.
    let next = kv
        .put(pb::PutRequest {
            key: b"after".to_vec(),
            value: b"restart".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.header.unwrap().revision, max_rev + 1);

    // A clean shutdown (SIGTERM) also keeps everything and exits 0.
    assert!(s.terminate().success(), "utopiad exits 0 on SIGTERM");
    s.restart();
    let out = s.cli_json(&["get", "after"]);
    assert_eq!(out["kvs"][0]["mod_revision"].as_i64(), Some(max_rev + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_restarts_resume_from_them() {
    let dir = temp_dir();
    let conf = dir.path().join("snap.conf");
    std::fs::write(
        &conf,
        "raft = { snapshot_log_entries = 50; log_entries_kept_after_snapshot = 5; };\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_with(&data, &["--config", conf.to_str().unwrap()]);
    let mut kv = pb::kv_client::KvClient::connect(s.endpoint())
        .await
        .unwrap();
    for i in 0..300 {
        kv.put(pb::PutRequest {
            key: format!("s/{i:03}").into(),
            value: format!("{i}").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // A snapshot every 50 entries, and the log purged behind it.
    let positions = |s: &Server| {
        let st = s.cli_json(&["status"]);
        (
            st["raft_snapshot_index"].as_u64().unwrap_or(0),
            st["raft_purged_index"].as_u64().unwrap_or(0),
        )
    };
    let (snapshot, purged) = common::wait_for(
        "the log to be purged behind a recent snapshot",
        std::time::Duration::from_secs(20),
        || {
            let (snapshot, purged) = positions(&s);
            (snapshot >= 250 && purged > 0).then_some((snapshot, purged))
        },
    );

    s.kill9();
    s.restart();
    let mut kv = pb::kv_client::KvClient::connect(s.endpoint())
        .await
        .unwrap();
    let all = kv
        .range(pb::RangeRequest {
            key: b"s/".to_vec(),
            range_end: b"s0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.kvs.len(), 300);
    assert_eq!(all.header.unwrap().revision, 300);
    let next = kv
        .put(pb::PutRequest {
            key: b"s/after".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.into_inner().header.unwrap().revision, 301);
    // The restarted node's snapshot is the state it recovered, and the log
    // it had purged stays purged.
    let (snapshot_after, purged_after) = positions(&s);
    assert!(
        snapshot_after >= snapshot && purged_after >= purged,
        "before the crash: snapshot {snapshot}, purged {purged}; after: {snapshot_after}, {purged_after}"
    );
}

//! Bad input gets a clear error, is counted, and the server keeps serving.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_with_deadline, temp_dir, Server, UTOPIAD};
use utopia_proto::raft_v1 as raft_pb;
use utopia_proto::raft_v1::raft_transport_client::RaftTransportClient;
use utopia_proto::v1 as pb;

fn utopiad_with_config(text: &str) -> (i32, String) {
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(&conf, text).unwrap();
    let mut cmd = Command::new(UTOPIAD);
    cmd.arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"]);
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_config_files_are_refused_with_file_and_line() {
    let cases = [
        (
            "node_id = 1;\nlisten = \"127.0.0.1:0\"\nlimits = { value_bytes_max = ; };\n",
            ":3:",
            "syntax error",
        ),
        (
            "node_id = 1;\nlimits = {\n  value_bytes_mx = 10;\n};\n",
            ":3:",
            "unknown setting",
        ),
        ("node_id = \"one\";\n", ":1:", "wrong type"),
    ];
    for (text, line, what) in cases {
        let (code, stderr) = utopiad_with_config(text);
        assert_eq!(code, 2, "{what}: exit code 2, stderr: {stderr}");
        assert!(
            stderr.contains("utopiad.conf") && stderr.contains(line),
            "{what}: names file and line: {stderr}"
        );
    }
    let (_, stderr) = utopiad_with_config("node_id = 1;\nlimits = {\n  value_bytes_mx = 10;\n};\n");
    assert!(
        stderr.contains("value_bytes_mx") && stderr.contains("value_bytes_max"),
        "says what was expected: {stderr}"
    );
    let (_, stderr) = utopiad_with_config("node_id = \"one\";\n");
    assert!(
        stderr.contains("integer"),
        "says what type was expected: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_valid_traffic_goes_on() {
    let dir = temp_dir();
    let conf = dir.path().join("small.conf");
    std::fs::write(&conf, "limits = { value_bytes_max = 1024; };\n").unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mut kv = pb::kv_client::KvClient::connect(s.endpoint())
        .await
        .unwrap();
    let mut docs = pb::documents_client::DocumentsClient::connect(s.endpoint())
        .await
        .unwrap();
    let mut watch = pb::watch_client::WatchClient::connect(s.endpoint())
        .await
        .unwrap();

    // A value over the configured limit.
    let err = kv
        .put(pb::PutRequest {
            key: b"big".to_vec(),
            value: vec![b'x'; 1025],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("1025") && err.message().contains("value_bytes_max = 1024"),
        "{}",
        err.message()
    );
    kv.put(pb::PutRequest {
        key: b"ok".to_vec(),
        value: vec![b'x'; 1024],
        ..Default::default()
    })
    .await
    .expect("at the limit is fine");

    // An unknown collection, over gRPC and through the CLI.
    let err = docs
        .list(pb::ListDocumentsRequest {
            collection: "gadgets".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("gadgets") && err.message().contains("devices"),
        "{}",
        err.message()
    );
    let out = s.cli(&["doc", "list", "gadgets"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown collection"));

    // Invalid device JSON.
    let err = docs
        .report(pb::DeviceReport {
            host: "h".into(),
            zone: "z".into(),
            class: "c".into(),
            device_id: "1".into(),
            post_type: "p".into(),
            path: vec![],
            json: "{not json".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A malformed transaction file is a usage error (exit 2) naming the problem.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\"compare\": [\n  {\"key\": \"a\", \"target\": \"color\"}\n]}",
    )
    .unwrap();
    let out = s.cli(&["txn", "--file", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json") && stderr.contains("line 2"),
        "{stderr}"
    );

    // A watch from a compacted revision.
    for i in 0..5 {
        kv.put(pb::PutRequest {
            key: b"c".to_vec(),
            value: vec![b'0' + i],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    s.cli_ok(&["compact", "4"]);
    let err = watch
        .watch(pb::WatchRequest {
            key: b"c".to_vec(),
            start_revision: 2,
            ..Default::default()
        })
        .await
        .expect_err("watch from a compacted revision fails");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(err.message().contains("compacted"), "{}", err.message());
    let out = s.cli(&["watch", "c", "--rev", "2", "--count", "1"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUT_OF_RANGE"));
    // Reads at a compacted revision fail the same way; at the compaction
    // point they still work.
    let err = kv
        .range(pb::RangeRequest {
            key: b"c".to_vec(),
            revision: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    let at = kv
        .range(pb::RangeRequest {
            key: b"c".to_vec(),
            revision: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at.kvs.len(), 1);

    // A replication stream whose message is not an AppendEntries: the
    // stream ends with a clear error.
    let cluster_id = s.cli_json(&["status"])["cluster_id"]
        .as_u64()
        .expect("status shows the cluster id");
    let mut raft = RaftTransportClient::connect(format!("http://{}", s.peer_addr))
        .await
        .unwrap();
    let garbage = raft_pb::RaftMessage {
        cbor: b"not an AppendEntries".to_vec(),
        cluster_id,
    };
    let mut replies = raft
        .stream_append(futures::stream::iter([garbage]))
        .await
        .expect("stream opens")
        .into_inner();
    let err = replies.message().await.expect_err("garbage is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("raft message"), "{}", err.message());

    // Through all of it the server kept serving, and counted what it refused.
    assert_eq!(s.cli_json(&["get", "ok"])["kvs"][0]["version"], 1);
    let status = s.cli_json(&["status"]);
    let counters = status["counters"].as_object().expect("counters in status");
    let rejected: u64 = counters
        .iter()
        .filter(|(k, _)| k.starts_with("requests_rejected_total"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert!(rejected >= 4, "rejections are counted: {counters:?}");
}

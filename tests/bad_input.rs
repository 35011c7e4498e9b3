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

/// Settings that contradict each other are refused once the flags have
/// overridden the file, naming where the contradicting value came from.
#[test]
fn contradicting_settings_name_the_file_line_or_the_flag() {
    // Both in the file: its line.
    let (code, stderr) = utopiad_with_config(
        "node_id = 3;\ninitial_cluster = \"3=127.0.0.1:7703\";\npeer_advertise = \"127.0.0.1:7713\";\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "utopiad.conf:3: peer advertise address 127.0.0.1:7713 differs from node 3's address"
        ),
        "{stderr}"
    );
    // The file's initial cluster against a flag: the flag.
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(&conf, "initial_cluster = \"3=127.0.0.1:7703\";\n").unwrap();
    let mut cmd = Command::new(UTOPIAD);
    cmd.arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .args(["--node-id", "3", "--peer-advertise", "127.0.0.1:7713"]);
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("utopiad: --peer-advertise: peer advertise address 127.0.0.1:7713 differs from node 3's address"),
        "{stderr}"
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

/// A configuration setting `path` (dotted; `mqtt.bridges[0].x` is a field of
/// one bridge) to `value`, as a whole file on one line.
fn config_with(path: &str, value: &str) -> String {
    let bridge = |field: &str| {
        format!(
            "mqtt = {{ bridges = ( {{ name = \"b\"; host = \"127.0.0.1\"; {field} = {value}; }} ); }};"
        )
    };
    match path.split('.').collect::<Vec<_>>().as_slice() {
        ["mqtt", "bridges[0]", field] => bridge(field),
        ["mqtt", "bridges[0]", "subscriptions[0]", field] => format!(
            "mqtt = {{ bridges = ( {{ name = \"b\"; host = \"127.0.0.1\"; subscriptions = ( {{ filter = \"#\"; {field} = {value}; }} ); }} ); }};"
        ),
        [group, sub, name] => format!("{group} = {{ {sub} = {{ {name} = {value}; }}; }};"),
        [group, name] => format!("{group} = {{ {name} = {value}; }};"),
        [name] => format!("{name} = {value};"),
        _ => panic!("unexpected setting path {path}"),
    }
}

/// Every numeric setting with the largest value it takes: one more, and
/// the largest integer a configuration file holds, are refused with the
/// setting's name and line, never accepted to panic or wrap later.
const NUMERIC_SETTINGS: &[(&str, u64)] = &[
    ("limits.key_bytes_max", u32::MAX as u64),
    ("limits.value_bytes_max", u32::MAX as u64),
    ("limits.request_bytes_max", u32::MAX as u64),
    ("limits.txn_ops_max", u32::MAX as u64),
    ("limits.range_limit_max", u32::MAX as u64),
    ("limits.watchers_max", u32::MAX as u64),
    ("limits.proposals_in_flight_max", u32::MAX as u64),
    ("limits.history_revisions_max", u32::MAX as u64),
    ("limits.json_depth_max", 64),
    ("limits.document_bytes_max", 16 << 20),
    ("raft.snapshot_log_entries", u32::MAX as u64),
    ("raft.log_entries_kept_after_snapshot", u32::MAX as u64),
    ("raft.lease_check_interval_ms", 31_536_000_000),
    ("raft.snapshot_bytes_max", 1 << 50),
    ("raft.forwarded_clock_skew_ms_max", 31_536_000_000),
    ("mqtt.ingest.payload_bytes_max", 1 << 20),
    ("mqtt.ingest.batch_messages_max", u32::MAX as u64),
    ("mqtt.ingest.batch_linger_ms", 31_536_000_000),
    ("mqtt.ingest.pending_messages_max", u32::MAX as u64),
    ("mqtt.ingest.dedupe_window_ms", 31_536_000_000),
    ("mqtt.ingest.owner_timeout_ms", 31_536_000_000),
    ("mqtt.ingest.weight", 1000),
    ("mqtt.ingest.device_messages_per_s_max", u32::MAX as u64),
    ("mqtt.commands.attempts_max", u32::MAX as u64),
    ("mqtt.commands.qos", 2),
    ("mqtt.bridges[0].port", 65535),
    ("mqtt.bridges[0].keep_alive_s", 65535),
    ("mqtt.bridges[0].subscriptions[0].qos", 2),
];

#[test]
fn absurd_numeric_settings_are_refused_with_their_name() {
    use utopia::config::Settings;
    let file = std::path::Path::new("utopiad.conf");
    for &(path, max) in NUMERIC_SETTINGS {
        let text = config_with(path, &max.to_string());
        if let Err(e) = Settings::from_str(&text, file) {
            panic!("{path} = {max} is the largest value it takes, yet: {e}");
        }
        for absurd in [max + 1, i64::MAX as u64] {
            let text = config_with(path, &absurd.to_string());
            let err = match Settings::from_str(&text, file) {
                Ok(_) => panic!("{path} = {absurd} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.starts_with("utopiad.conf:1: ")
                    && err.contains(&format!("setting \"{path}\""))
                    && err.contains(&max.to_string()),
                "{path} = {absurd}: {err}"
            );
        }
    }
    // Raft times, set alone, must keep their order; each is bounded too.
    for (path, text) in [
        (
            "raft.heartbeat_interval_ms",
            "raft = { heartbeat_interval_ms = 31536000001; election_timeout_ms_min = 31536000002; election_timeout_ms_max = 31536000003; };",
        ),
        (
            "raft.election_timeout_ms_max",
            "raft = { election_timeout_ms_max = 9223372036854775807; };",
        ),
        (
            "mqtt.commands.retry_max_ms",
            "mqtt = { commands = { retry_max_ms = 31536000001; }; };",
        ),
    ] {
        let err = Settings::from_str(text, file).unwrap_err().to_string();
        assert!(err.contains(&format!("setting \"{path}\"")), "{path}: {err}");
    }
    assert!(Settings::from_str(
        "raft = { heartbeat_interval_ms = 31535999998; election_timeout_ms_min = 31535999999; election_timeout_ms_max = 31536000000; };",
        file
    )
    .is_ok());

    // The binary: exit 2 and the setting's name, for values that used to
    // panic (a semaphore of too many permits) or wrap.
    for (path, value) in [
        ("limits.watchers_max", "9223372036854775807"),
        ("limits.proposals_in_flight_max", "4294967296"),
        ("raft.election_timeout_ms_max", "9223372036854775807"),
        ("limits.history_revisions_max", "9223372036854775807"),
    ] {
        let (code, stderr) = utopiad_with_config(&format!("{}\n", config_with(path, value)));
        assert_eq!(code, 2, "{path} = {value}: {stderr}");
        assert!(
            stderr.contains("utopiad.conf:1:") && stderr.contains(&format!("setting \"{path}\"")),
            "{path} = {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Flags too: a node id beyond what it holds is a usage error.
    let dir = temp_dir();
    let mut cmd = Command::new(UTOPIAD);
    cmd.arg("--data-dir").arg(dir.path().join("data")).args([
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        "18446744073709551616",
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--node-id"), "{stderr}");
}

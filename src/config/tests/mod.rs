//! The configuration tests: table-driven, each case a file's text and
//! the setting, line and message it must produce.

mod errors;
mod mongodb;
mod mqtt;

use super::mqtt::{Bridge, BridgeTls, CommandSettings, IngestSettings};
use super::*;

fn file() -> &'static Path {
    Path::new("utopiad.conf")
}

fn err(text: &str) -> (u32, String) {
    match Settings::from_str(text, file()) {
        Ok(s) => panic!("expected an error for {text:?}, got {s:?}"),
        Err(e) => {
            let shown = e.to_string();
            let prefix = format!("utopiad.conf:{}: ", e.line());
            assert!(shown.starts_with(&prefix), "{shown:?} lacks {prefix:?}");
            (e.line(), shown[prefix.len()..].to_string())
        }
    }
}

#[test]
fn defaults() {
    let d = Settings::default();
    assert_eq!(d.node_id, 1);
    assert_eq!(d.data_dir, PathBuf::from("./utopia-data"));
    assert_eq!(d.listen, "127.0.0.1:7700");
    assert_eq!(d.cluster_name, "utopia");
    assert_eq!(d.limits.key_bytes_max, 4096);
    assert_eq!(d.limits.value_bytes_max, 1_048_576);
    assert_eq!(d.limits.request_bytes_max, 4_194_304);
    assert_eq!(d.limits.txn_ops_max, 128);
    assert_eq!(d.limits.range_limit_max, 10_000);
    assert_eq!(d.limits.watchers_max, 1024);
    assert_eq!(d.limits.proposals_in_flight_max, 1024);
    assert_eq!(d.raft.heartbeat_interval_ms, 100);
    assert_eq!(d.raft.election_timeout_ms_min, 400);
    assert_eq!(d.raft.election_timeout_ms_max, 800);
    assert_eq!(d.raft.snapshot_log_entries, 100_000);
    assert_eq!(d.raft.lease_check_interval_ms, 250);
    assert_eq!(d.log.level, "info,openraft=warn");
    assert_eq!(d.log.format, LogFormat::Text);
    assert!(d.mqtt.bridges.is_empty());
    assert_eq!(d.mqtt.ingest, IngestSettings::default());
    assert_eq!(d.mqtt.commands, CommandSettings::default());
    assert_eq!(Settings::from_str("", file()).unwrap(), d);
    assert_eq!(
        Settings::from_str(
            "mqtt = { bridges = ( ); ingest = { }; commands = { }; };",
            file()
        )
        .unwrap(),
        d
    );
    assert_eq!(
        Settings::from_str("# nothing\nlimits = {}; raft = {}; log = {};", file()).unwrap(),
        d
    );
}

#[test]
fn reference_is_the_defaults() {
    assert_eq!(
        Settings::from_str(reference(), file()).unwrap(),
        Settings::default()
    );
    // It names every setting, with its default value; the bridge's (there
    // is none by default) in its commented example, which
    // `reference_example_bridge_parses` checks.
    let mut settings = Vec::new();
    walk(
        &serde_json::to_value(Settings::default()).unwrap(),
        true,
        &mut settings,
    );
    let bridge = Bridge {
        tls: Some(BridgeTls {
            ca_file: "ca.crt".into(),
            cert_file: Some("c.crt".into()),
            key_file: Some("c.key".into()),
            server_name: Some("b".into()),
        }),
        username: Some("u".into()),
        password: Some("p".into()),
        ..Bridge::new("b", "h", 1)
    };
    walk(&serde_json::to_value(bridge).unwrap(), false, &mut settings);
    for (name, value) in &settings {
        let shown = match value {
            Some(v) => format!("{name} = {v};"),
            None => format!("{name} = "),
        };
        assert!(reference().contains(&shown), "reference() lacks {shown}");
    }
    let names: Vec<&str> = settings.iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "node_id",
        "token_ttl_s",
        "peer_allowed_names",
        "server_name",
        "qos",
    ] {
        assert!(names.contains(&name), "{name} not walked: {names:?}");
    }
    assert!(names.len() > 70, "{names:?}");
}

/// The settings in a serialized value, each with its value as the file
/// writes it (`None`: a group, or `with_values` is false).
fn walk(value: &serde_json::Value, with_values: bool, out: &mut Vec<(String, Option<String>)>) {
    let serde_json::Value::Object(fields) = value else {
        return;
    };
    for (name, v) in fields {
        let shown = match v {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Array(items) if items.is_empty() => Some("( )".to_string()),
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, with_values, out);
                }
                None
            }
            scalar => Some(scalar.to_string()),
        };
        out.push((name.clone(), shown.filter(|_| with_values)));
        walk(v, with_values, out);
    }
}

#[test]
fn full_file() {
    let text = r#"
node_id = 7;
data_dir = "/var/lib/utopia";
listen : "[::1]:9000";
advertise = "[2001:db8::1]:9000";
peer_listen = "[::1]:9100";
peer_advertise = "[2001:db8::1]:9100";
cluster_name = "fleet-" "eu";
limits = {
  key_bytes_max = 0x200;
  value_bytes_max = 2097152L;
  request_bytes_max = 8388608,
  txn_ops_max = 64
  range_limit_max = 500;
  watchers_max = 10;
  proposals_in_flight_max = 32;
  history_revisions_max = 500;
};
raft = {
  heartbeat_interval_ms = 50;
  election_timeout_ms_min = 300;
  election_timeout_ms_max = 600;
  snapshot_log_entries = 1000;
  log_entries_kept_after_snapshot = 10;
  lease_check_interval_ms = 100;
  snapshot_bytes_max = 1073741824;
  forwarded_clock_skew_ms_max = 5000;
};
log = { level = "debug,openraft=warn"; format = "json"; };
tls = {
  cert_file = "/etc/utopia/node.pem";
  key_file = "/etc/utopia/node.key";
  ca_file = "/etc/utopia/ca.pem";
  client_cert_required = true;
  peer_ca_file = "/etc/utopia/peers.pem";
  peer_allowed_names = ( "n1.utopia.internal", "10.0.0.2" );
};
auth = { token_ttl_s = 60; };
configs = {
  dir = "/var/lib/utopia/configs";
  scan_interval_ms = 1000;
  agreement_window_ms = 0;
  weight = 1.5;
  file_bytes_max = 4096;
  write_attempts_max = 3;
  write_backoff_ms = 50;
  require_class = true;
};
backups = { interval_s = 3600; dir = "/var/backups/utopia"; retention_count = 24; };
metrics = { listen = "127.0.0.1:9464"; };
zookeeper = {
  chroot = "/site-a/utopia";
  session_timeout_ms = 4000;
  request_timeout_ms = 2000;
  refresh_interval_ms = 500;
  retry_backoff_ms = 50;
  retry_backoff_ms_max = 5000;
  initial_cluster_wait_ms = 0;
};
mongodb = { database = "fleet"; mirror_kv = true; batch_docs_max = 50; batch_bytes_max = 65536;
  verify_sample_docs = 4; verify_attempts_max = 5; retry_backoff_ms = 250; poll_interval_ms = 100;
  timeout_ms = 2000; uri_options = "tls=true"; };
"#;
    let s = Settings::from_str(text, file()).unwrap();
    let want = Settings {
        node_id: 7,
        data_dir: PathBuf::from("/var/lib/utopia"),
        listen: "[::1]:9000".into(),
        advertise: "[2001:db8::1]:9000".into(),
        peer_listen: "[::1]:9100".into(),
        peer_advertise: "[2001:db8::1]:9100".into(),
        cluster_name: "fleet-eu".into(),
        initial_cluster: BTreeMap::new(),
        join: false,
        limits: Limits {
            key_bytes_max: 512,
            value_bytes_max: 2_097_152,
            request_bytes_max: 8_388_608,
            txn_ops_max: 64,
            range_limit_max: 500,
            watchers_max: 10,
            proposals_in_flight_max: 32,
            history_revisions_max: 500,
            json_depth_max: 32,
            document_bytes_max: 1_048_576,
            ..Limits::default()
        },
        raft: RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_ms_min: 300,
            election_timeout_ms_max: 600,
            snapshot_log_entries: 1000,
            log_entries_kept_after_snapshot: 10,
            lease_check_interval_ms: 100,
            snapshot_bytes_max: 1 << 30,
            forwarded_clock_skew_ms_max: 5000,
        },
        log: LogSettings {
            level: "debug,openraft=warn".into(),
            format: LogFormat::Json,
        },
        mqtt: MqttSettings::default(),
        tls: TlsSettings {
            cert_file: PathBuf::from("/etc/utopia/node.pem"),
            key_file: PathBuf::from("/etc/utopia/node.key"),
            ca_file: PathBuf::from("/etc/utopia/ca.pem"),
            client_cert_required: true,
            peer_ca_file: PathBuf::from("/etc/utopia/peers.pem"),
            peer_allowed_names: vec!["n1.utopia.internal".into(), "10.0.0.2".into()],
        },
        auth: AuthSettings { token_ttl_s: 60 },
        configs: ConfigsSettings {
            dir: PathBuf::from("/var/lib/utopia/configs"),
            scan_interval_ms: 1000,
            agreement_window_ms: 0,
            weight_milli: 1500,
            file_bytes_max: 4096,
            write_attempts_max: 3,
            write_backoff_ms: 50,
            require_class: true,
        },
        backups: BackupSettings {
            interval_s: 3600,
            dir: PathBuf::from("/var/backups/utopia"),
            retention_count: 24,
        },
        metrics: MetricsSettings {
            listen: "127.0.0.1:9464".into(),
        },
        zookeeper: crate::config::ZookeeperSettings {
            hosts: Vec::new(),
            chroot: "/site-a/utopia".into(),
            session_timeout_ms: 4000,
            request_timeout_ms: 2000,
            refresh_interval_ms: 500,
            retry_backoff_ms: 50,
            retry_backoff_ms_max: 5000,
            initial_cluster_node: String::new(),
            initial_cluster_wait_ms: 0,
        },
        mongodb: MongoSettings {
            enabled: false,
            database: "fleet".into(),
            mirror_kv: true,
            batch_docs_max: 50,
            batch_bytes_max: 65536,
            verify_sample_docs: 4,
            verify_attempts_max: 5,
            retry_backoff_ms: 250,
            poll_interval_ms: 100,
            timeout_ms: 2000,
            uri_options: "tls=true".into(),
        },
    };
    assert_eq!(s, want);
}

#[test]
fn configs_weight_is_bounded_in_thousandths() {
    for (text, want) in [
        (
            "configs = { weight = 0.0001; };",
            "setting \"configs.weight\": must be between 0.001 and 1000, found 0.0001",
        ),
        (
            "configs = { weight = 1001; };",
            "setting \"configs.weight\": must be between 0.001 and 1000, found 1001",
        ),
        (
            "configs = { agreement_window_ms = 600001; };",
            "setting \"configs.agreement_window_ms\": must be between 0 and 600000, found 600001",
        ),
    ] {
        let (_, msg) = err(text);
        assert_eq!(msg, want, "{text}");
    }
    let s = Settings::from_str("configs = { weight = 2; };", file()).unwrap();
    assert_eq!(s.configs.weight_milli, 2000);
}

#[test]
fn auth_token_ttl_is_bounded() {
    for (text, want) in [
        (
            "auth = { token_ttl_s = 0; };",
            "setting \"auth.token_ttl_s\": must be between 1 and 86400, found 0",
        ),
        (
            "auth = {\n token_ttl_s = 86401; };",
            "setting \"auth.token_ttl_s\": must be between 1 and 86400, found 86401",
        ),
        (
            "auth = { ttl = 5; };",
            "unknown setting \"auth.ttl\"; expected one of: token_ttl_s",
        ),
    ] {
        let (_, msg) = err(text);
        assert_eq!(msg, want, "{text}");
    }
    assert_eq!(err("auth = {\n token_ttl_s = 86401; };").0, 2);
}

#[test]
fn byte_time_and_quota_limits_are_bounded() {
    for (text, name) in [
        (
            "limits = { response_bytes_max = 1; };",
            "response_bytes_max",
        ),
        ("limits = { txn_bytes_max = 1073741824; };", "txn_bytes_max"),
        ("limits = { db_bytes_max = 0; };", "db_bytes_max"),
        (
            "limits = { memtable_bytes_max = 1048576; };",
            "memtable_bytes_max",
        ),
        (
            "limits = { block_cache_bytes_max = 0; };",
            "block_cache_bytes_max",
        ),
        ("limits = { connections_max = 0; };", "connections_max"),
        (
            "limits = { streams_per_connection_max = 100000; };",
            "streams_per_connection_max",
        ),
        (
            "limits = { keepalive_interval_ms = 10; };",
            "keepalive_interval_ms",
        ),
        (
            "limits = { keepalive_timeout_ms = 10; };",
            "keepalive_timeout_ms",
        ),
        ("limits = { tcp_keepalive_ms = 10; };", "tcp_keepalive_ms"),
        (
            "limits = { request_timeout_ms = 99999999999; };",
            "request_timeout_ms",
        ),
        (
            "limits = { devices_per_host_max = 0; };",
            "devices_per_host_max",
        ),
        ("limits = { leases_max = 0; };", "leases_max"),
        (
            "limits = { commands_pending_max = 0; };",
            "commands_pending_max",
        ),
        (
            "limits = { command_retention_ms = 1; };",
            "command_retention_ms",
        ),
    ] {
        let (line, msg) = err(text);
        assert_eq!(line, 1, "{text}");
        assert!(
            msg.contains(&format!("limits.{name}")) && msg.contains("must be between"),
            "{text}: {msg}"
        );
    }
    let s = Settings::from_str(
        "limits = { db_bytes_max = 1048576; connections_max = 3; txn_bytes_max = 1048576; };",
        file(),
    )
    .unwrap();
    assert_eq!(
        (
            s.limits.db_bytes_max,
            s.limits.connections_max,
            s.limits.txn_bytes_max
        ),
        (1 << 20, 3, 1 << 20)
    );
    assert_eq!(
        s.limits.response_bytes_max,
        Limits::default().response_bytes_max
    );
}

#[test]
fn partial_groups_keep_defaults() {
    let s = Settings::from_str(
        "limits = { txn_ops_max = 5; };\nraft = { election_timeout_ms_max = 900; };",
        file(),
    )
    .unwrap();
    assert_eq!(
        s.limits,
        Limits {
            txn_ops_max: 5,
            ..Limits::default()
        }
    );
    assert_eq!(
        s.raft,
        RaftSettings {
            election_timeout_ms_max: 900,
            ..RaftSettings::default()
        }
    );
}

#[test]
fn initial_cluster_and_peer_advertise_must_agree() {
    let text = "node_id = 3;\ninitial_cluster = \"3=127.0.0.1:7703\";\npeer_advertise = \"127.0.0.1:7713\";";
    assert_eq!(
        err(text),
        (
            3,
            "peer advertise address 127.0.0.1:7713 differs from node 3's address in the initial cluster (127.0.0.1:7703)"
                .to_string()
        )
    );
    // Agreeing, or naming other nodes only, is fine.
    for ok in [
        "node_id = 3;\ninitial_cluster = \"3=127.0.0.1:7703\";\npeer_advertise = \"127.0.0.1:7703\";",
        "node_id = 4;\ninitial_cluster = \"3=127.0.0.1:7703\";\npeer_advertise = \"127.0.0.1:7713\";",
    ] {
        Settings::from_str(ok, file()).unwrap();
    }
}

#[test]
fn load_and_includes() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("utopiad.conf");
    std::fs::write(
        dir.path().join("limits.conf"),
        "txn_ops_max = 9;\nwatchers_max = 0;\n",
    )
    .unwrap();
    std::fs::write(
        &main,
        "node_id = 3;\nlimits = {\n@include \"limits.conf\"\n};\n",
    )
    .unwrap();
    let e = Settings::load(&main).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: setting \"limits.watchers_max\": must be greater than 0",
            dir.path().join("limits.conf").display()
        )
    );
    std::fs::write(dir.path().join("limits.conf"), "txn_ops_max = 9;\n").unwrap();
    let s = Settings::load(&main).unwrap();
    assert_eq!((s.node_id, s.limits.txn_ops_max), (3, 9));

    let missing = dir.path().join("missing.conf");
    let e = Settings::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "{}:0: cannot read config file: ",
            missing.display()
        )),
        "{e}"
    );
    let e = Settings::load(dir.path()).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");

    std::fs::write(&main, b"node_id = 1;\ncluster_name = \"\xff\";\n").unwrap();
    let e = Settings::load(&main).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:2: file is not valid UTF-8", main.display())
    );
}

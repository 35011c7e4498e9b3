//! The `mqtt` group: bridges, subscriptions, ingest and command settings.

use super::*;
use crate::config::mqtt::*;

/// The commented example bridge in [`reference`], uncommented.
fn reference_example_bridge() -> String {
    let lines: Vec<&str> = reference()
        .lines()
        .skip_while(|l| *l != "  #   {")
        .take_while(|l| l.starts_with("  #"))
        .map(|l| &l[3..])
        .collect();
    assert!(lines.len() > 10, "no example bridge in reference()");
    format!("mqtt = {{ bridges = (\n{}\n); }};", lines.join("\n"))
}

#[test]
fn reference_example_bridge_parses() {
    let text = reference_example_bridge();
    let s = Settings::from_str(&text, file()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let want = Bridge {
        name: "devices".into(),
        role: BridgeRole::Devices,
        host: "broker.example.com".into(),
        port: 8883,
        protocol: Protocol::V311,
        tls: Some(BridgeTls {
            ca_file: "ca.crt".into(),
            cert_file: Some("client.crt".into()),
            key_file: Some("client.key".into()),
            server_name: Some("broker.example.com".into()),
        }),
        username: Some("utopia".into()),
        password: Some("secret".into()),
        ..Bridge::new("devices", "broker.example.com", 8883)
    };
    assert_eq!(s.mqtt.bridges, vec![want]);
    // Apart from port and the optional parts, its values are the defaults.
    let minimal = Settings::from_str(
        "mqtt = { bridges = ( { name = \"devices\"; host = \"broker.example.com\"; } ); };",
        file(),
    )
    .unwrap();
    assert_eq!(
        minimal.mqtt.bridges,
        vec![Bridge::new("devices", "broker.example.com", 1883)]
    );
}

#[test]
fn mqtt_full() {
    let text = r##"
mqtt = {
  bridges = (
{ name = "devices"; role = "devices"; host = "127.0.0.1"; port = 1883; protocol = 4;
  tls = { ca_file = "ca.crt"; cert_file = "client.crt"; key_file = "client.key"; server_name = "localhost"; };
  username = "alice"; password = "s3cret"; client_id = "utopia"; keep_alive_s = 30; persistent_session = true;
  subscriptions = ( { filter = "#"; qos = 1; } ); },
{ name = "servers"; role = "cluster"; host = "mqtt.internal"; protocol = 5;
  tls = { ca_file = "/etc/utopia/ca.pem"; };
  client_id = "node"; keep_alive_s = 5; persistent_session = false;
  subscriptions = ( { filter = "fleet/+/status"; qos = 0; }, { filter = "$share/g/cmd/#"; qos = 2; } ); },
{ name = "both"; role = "all"; host = "::1"; port = 11883; subscriptions = ( ); }
  );
  ingest = { payload_bytes_max = 1024; batch_messages_max = 16; batch_linger_ms = 5; pending_messages_max = 500;
         dedupe_window_ms = 60000; owner_timeout_ms = 900; weight = 1000; device_messages_per_s_max = 7; };
  commands = { attempts_max = 3; retry_initial_ms = 200; retry_max_ms = 200; qos = 2; };
};
"##;
    let dir = Path::new("/etc/utopia");
    let s = Settings::from_str(text, &dir.join("utopiad.conf")).unwrap();
    let want = MqttSettings {
        bridges: vec![
            Bridge {
                tls: Some(BridgeTls {
                    ca_file: dir.join("ca.crt"),
                    cert_file: Some(dir.join("client.crt")),
                    key_file: Some(dir.join("client.key")),
                    server_name: Some("localhost".into()),
                }),
                username: Some("alice".into()),
                password: Some("s3cret".into()),
                ..Bridge::new("devices", "127.0.0.1", 1883)
            },
            Bridge {
                role: BridgeRole::Cluster,
                protocol: Protocol::V5,
                tls: Some(BridgeTls {
                    ca_file: "/etc/utopia/ca.pem".into(),
                    cert_file: None,
                    key_file: None,
                    server_name: None,
                }),
                client_id: "node".into(),
                keep_alive_s: 5,
                persistent_session: false,
                subscriptions: vec![
                    Subscription {
                        filter: "fleet/+/status".into(),
                        qos: 0,
                    },
                    Subscription {
                        filter: "$share/g/cmd/#".into(),
                        qos: 2,
                    },
                ],
                // The TLS default port.
                ..Bridge::new("servers", "mqtt.internal", 8883)
            },
            Bridge {
                role: BridgeRole::All,
                subscriptions: vec![],
                ..Bridge::new("both", "::1", 11883)
            },
        ],
        ingest: IngestSettings {
            payload_bytes_max: 1024,
            batch_messages_max: 16,
            batch_linger_ms: 5,
            pending_messages_max: 500,
            dedupe_window_ms: 60_000,
            owner_timeout_ms: 900,
            weight: 1000,
            device_messages_per_s_max: 7,
        },
        commands: CommandSettings {
            attempts_max: 3,
            retry_initial_ms: 200,
            retry_max_ms: 200,
            qos: 2,
        },
    };
    assert_eq!(s.mqtt, want);
    // Everything else keeps its default.
    assert_eq!(
        Settings {
            mqtt: MqttSettings::default(),
            ..s
        },
        Settings::default()
    );
}

#[test]
fn topic_filters() {
    for ok in [
        "#", "+", "a", "a/b", "/", "a/+/c", "a/#", "+/+", "/#", "a//b", "$SYS/#", "ä/ö",
    ] {
        assert_eq!(check_topic_filter(ok), Ok(()), "{ok:?}");
    }
    for bad in [
        "", "a#", "#/a", "a/#/b", "a/b#", "a+", "+a/b", "a/b+/c", "##", "a\0b",
    ] {
        assert!(check_topic_filter(bad).is_err(), "{bad:?}");
    }
    assert!(check_topic_filter(&"a".repeat(65_536)).is_err());
    assert_eq!(check_topic_filter(&"a".repeat(65_535)), Ok(()));
}

#[test]
fn mqtt_errors() {
    // A valid bridge, as a group in a list, with `extra` settings
    // spliced in on its second line.
    let bridge = |extra: &str| {
        format!(
            "mqtt = {{\n  bridges = (\n    {{ name = \"b\"; host = \"h\";\n{extra}\n    }}\n  );\n}};"
        )
    };
    let cases: Vec<(String, u32, &str)> = vec![
        (
            "mqtt = { brokers = (); };".into(),
            1,
            "unknown setting \"mqtt.brokers\"; expected one of: bridges, ingest, commands",
        ),
        (
            "mqtt = ( );".into(),
            1,
            "setting \"mqtt\": expected a group, found a list",
        ),
        (
            "mqtt = {\n bridges = { };\n};".into(),
            2,
            "setting \"mqtt.bridges\": expected a list, found a group",
        ),
        (
            "mqtt = {\n bridges = (\n   5\n );\n};".into(),
            3,
            "setting \"mqtt.bridges[0]\": expected a group, found an integer",
        ),
        (
            "mqtt = { bridges = ( { host = \"h\"; } ); };".into(),
            1,
            "setting \"mqtt.bridges[0]\": missing \"name\"",
        ),
        (
            "mqtt = { bridges = (\n { name = \"a\"; host = \"h\"; },\n { name = \"b\"; } ); };".into(),
            3,
            "setting \"mqtt.bridges[1]\": missing \"host\"",
        ),
        (
            bridge("port = 0;"),
            4,
            "setting \"mqtt.bridges[0].port\": must be between 1 and 65535, found 0",
        ),
        (
            bridge("port = 65536;"),
            4,
            "setting \"mqtt.bridges[0].port\": must be between 1 and 65535, found 65536",
        ),
        (
            bridge("port = -1;"),
            4,
            "setting \"mqtt.bridges[0].port\": must not be negative, found -1",
        ),
        (
            bridge("port = \"1883\";"),
            4,
            "setting \"mqtt.bridges[0].port\": expected an integer, found a string",
        ),
        (
            bridge("protocol = 3;"),
            4,
            "setting \"mqtt.bridges[0].protocol\": unknown MQTT protocol level 3; expected 4 (MQTT 3.1.1) or 5 (MQTT 5)",
        ),
        (
            bridge("role = \"device\";"),
            4,
            "setting \"mqtt.bridges[0].role\": unknown bridge role \"device\"; expected \"devices\", \"cluster\" or \"all\"",
        ),
        (
            bridge("colour = 1;"),
            4,
            "unknown setting \"mqtt.bridges[0].colour\"; expected one of: name, role, host, port, protocol, tls, username, password, client_id, keep_alive_s, persistent_session, subscriptions",
        ),
        (
            bridge("name = \"\";"),
            4,
            "duplicate setting \"name\" (first set on line 3)",
        ),
        (
            "mqtt = { bridges = (\n { name = \"\"; host = \"h\"; } ); };".into(),
            2,
            "setting \"mqtt.bridges[0].name\": must not be empty",
        ),
        (
            "mqtt = { bridges = ( { name = \"a\"; host = \"h\"; },\n{ name = \"b\"; host = \"h\"; },\n\n { name = \"a\"; host = \"h2\"; } ); };".into(),
            4,
            "setting \"mqtt.bridges[2].name\": bridge name \"a\" is already used by mqtt.bridges[0]",
        ),
        (
            bridge("host = \"\";"),
            4,
            "duplicate setting \"host\"",
        ),
        (
            bridge("persistent_session = 1;"),
            4,
            "setting \"mqtt.bridges[0].persistent_session\": expected a boolean (true or false), found an integer",
        ),
        (
            bridge("keep_alive_s = 0;"),
            4,
            "setting \"mqtt.bridges[0].keep_alive_s\": must be between 1 and 65535, found 0",
        ),
        (
            bridge("client_id = \"\";"),
            4,
            "setting \"mqtt.bridges[0].client_id\": must not be empty",
        ),
        (
            bridge("  username = \"alice\";"),
            4,
            "setting \"mqtt.bridges[0].username\": a username needs a password: set \"mqtt.bridges[0].password\" too",
        ),
        (
            bridge("\n  password = \"s3cret\";"),
            5,
            "setting \"mqtt.bridges[0].password\": a password needs a username: set \"mqtt.bridges[0].username\" too",
        ),
        (
            bridge("username = \"\"; password = \"x\";"),
            4,
            "setting \"mqtt.bridges[0].username\": must not be empty",
        ),
        (
            bridge("tls = { cert_file = \"c.crt\"; key_file = \"c.key\"; };"),
            4,
            "setting \"mqtt.bridges[0].tls\": missing \"ca_file\"",
        ),
        (
            bridge("tls = {\n  ca_file = \"ca.crt\";\n  cert_file = \"c.crt\";\n};"),
            6,
            "setting \"mqtt.bridges[0].tls.cert_file\": a client certificate needs its key: set \"mqtt.bridges[0].tls.key_file\" too",
        ),
        (
            bridge("tls = { ca_file = \"ca.crt\";\n key_file = \"c.key\"; };"),
            5,
            "setting \"mqtt.bridges[0].tls.key_file\": a client key needs its certificate: set \"mqtt.bridges[0].tls.cert_file\" too",
        ),
        (
            bridge("tls = { ca_file = \"\"; };"),
            4,
            "setting \"mqtt.bridges[0].tls.ca_file\": must not be empty",
        ),
        (
            bridge("tls = { ca_file = \"ca.crt\"; verify = false; };"),
            4,
            "unknown setting \"mqtt.bridges[0].tls.verify\"; expected one of: ca_file, cert_file, key_file, server_name",
        ),
        (
            bridge("tls = \"ca.crt\";"),
            4,
            "setting \"mqtt.bridges[0].tls\": expected a group, found a string",
        ),
        (
            bridge("subscriptions = { filter = \"#\"; };"),
            4,
            "setting \"mqtt.bridges[0].subscriptions\": expected a list, found a group",
        ),
        (
            bridge("subscriptions = (\n  { filter = \"a\"; },\n  \"b\" );"),
            6,
            "setting \"mqtt.bridges[0].subscriptions[1]\": expected a group, found a string",
        ),
        (
            bridge("subscriptions = ( { qos = 1; } );"),
            4,
            "setting \"mqtt.bridges[0].subscriptions[0]\": missing \"filter\"",
        ),
        (
            bridge("subscriptions = (\n { filter = \"a/#/b\"; } );"),
            5,
            "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"a/#/b\": \"#\" must be a whole level and the last one",
        ),
        (
            bridge("subscriptions = ( { filter = \"a/b+\"; } );"),
            4,
            "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"a/b+\": \"+\" must be a whole level",
        ),
        (
            bridge("subscriptions = ( { filter = \"\"; } );"),
            4,
            "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"\": must not be empty",
        ),
        (
            bridge("subscriptions = ( { filter = \"a\\x00b\"; } );"),
            4,
            "setting \"mqtt.bridges[0].subscriptions[0].filter\": invalid topic filter \"a\\0b\": contains a NUL character",
        ),
        (
            bridge("subscriptions = ( { filter = \"a\"; qos = 3; } );"),
            4,
            "setting \"mqtt.bridges[0].subscriptions[0].qos\": must be between 0 and 2, found 3",
        ),
        (
            bridge("subscriptions = ( { filter = \"a\"; },\n { filter = \"a\"; qos = 0; } );"),
            5,
            "setting \"mqtt.bridges[0].subscriptions[1].filter\": topic filter \"a\" appears twice in mqtt.bridges[0].subscriptions",
        ),
        (
            bridge("subscriptions = ( { filter = \"a\"; topic = \"b\"; } );"),
            4,
            "unknown setting \"mqtt.bridges[0].subscriptions[0].topic\"; expected one of: filter, qos",
        ),
        (
            "mqtt = {\n ingest = { batch_linger_ms = 0; };\n};".into(),
            2,
            "setting \"mqtt.ingest.batch_linger_ms\": must be greater than 0",
        ),
        (
            "mqtt = { ingest = { weight = 0; }; };".into(),
            1,
            "setting \"mqtt.ingest.weight\": must be between 1 and 1000, found 0",
        ),
        (
            "mqtt = { ingest = { weight = 1001; }; };".into(),
            1,
            "setting \"mqtt.ingest.weight\": must be between 1 and 1000, found 1001",
        ),
        (
            "mqtt = { ingest = { payload_bytes_max = -1; }; };".into(),
            1,
            "setting \"mqtt.ingest.payload_bytes_max\": must not be negative, found -1",
        ),
        (
            "mqtt = { ingest = { linger = 1; }; };".into(),
            1,
            "unknown setting \"mqtt.ingest.linger\"; expected one of: payload_bytes_max, batch_messages_max",
        ),
        (
            "mqtt = { commands = { attempts_max = 0; }; };".into(),
            1,
            "setting \"mqtt.commands.attempts_max\": must be greater than 0",
        ),
        (
            "mqtt = { commands = { qos = 3; }; };".into(),
            1,
            "setting \"mqtt.commands.qos\": must be between 0 and 2, found 3",
        ),
        (
            "mqtt = { commands = {\n retry_max_ms = 999;\n}; };".into(),
            2,
            "mqtt.commands.retry_initial_ms (1000) must not be greater than mqtt.commands.retry_max_ms (999)",
        ),
        (
            "mqtt = { commands = {\n retry_max_ms = 10;\n retry_initial_ms = 20;\n}; };".into(),
            3,
            "mqtt.commands.retry_initial_ms (20) must not be greater than mqtt.commands.retry_max_ms (10)",
        ),
        (
            "mqtt = { commands = { retry_initial_ms = 0; }; };".into(),
            1,
            "setting \"mqtt.commands.retry_initial_ms\": must be greater than 0",
        ),
    ];
    for (text, line, message) in cases {
        let (got_line, got) = err(&text);
        assert_eq!(got_line, line, "line for {text:?}: {got}");
        assert!(
            got.starts_with(message),
            "for {text:?}\n  want {message:?}\n  got  {got:?}"
        );
    }
}

#[test]
fn mqtt_tls_paths_resolve_against_the_file_that_names_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mqtt")).unwrap();
    std::fs::write(
        dir.path().join("mqtt/bridge.conf"),
        "{ name = \"b\"; host = \"h\";\n  tls = { ca_file = \"ca.crt\"; cert_file = \"../c.crt\"; key_file = \"/k/c.key\"; };\n}\n",
    )
    .unwrap();
    let main = dir.path().join("utopiad.conf");
    std::fs::write(
        &main,
        "mqtt = {\n  bridges = (\n    { name = \"a\"; host = \"h\"; tls = { ca_file = \"certs/ca.crt\"; }; },\n@include \"mqtt/bridge.conf\"\n  );\n};\n",
    )
    .unwrap();
    let s = Settings::load(&main).unwrap();
    let tls: Vec<&BridgeTls> = s
        .mqtt
        .bridges
        .iter()
        .map(|b| b.tls.as_ref().unwrap())
        .collect();
    assert_eq!(tls[0].ca_file, dir.path().join("certs/ca.crt"));
    assert_eq!(tls[1].ca_file, dir.path().join("mqtt/ca.crt"));
    assert_eq!(tls[1].cert_file, Some(dir.path().join("mqtt/../c.crt")));
    assert_eq!(tls[1].key_file, Some(PathBuf::from("/k/c.key")));

    // An error in the included bridge names the included file and line.
    std::fs::write(
        dir.path().join("mqtt/bridge.conf"),
        "{ name = \"b\"; host = \"h\";\n  port = 0; }\n",
    )
    .unwrap();
    assert_eq!(
        Settings::load(&main).unwrap_err().to_string(),
        format!(
            "{}:2: setting \"mqtt.bridges[1].port\": must be between 1 and 65535, found 0",
            dir.path().join("mqtt/bridge.conf").display()
        )
    );
}

//! Errors: syntax passed through, unknown names, wrong types, bad values
//! and contradicting settings, each with its line.

use super::*;

#[test]
fn errors() {
    let unknown_limits = "unknown setting \"limits.foo\"; expected one of: key_bytes_max, value_bytes_max, \
                          request_bytes_max, txn_ops_max, range_limit_max, watchers_max, proposals_in_flight_max, history_revisions_max, \
                          json_depth_max, document_bytes_max";
    for (text, line, message) in [
        // Syntax errors pass through.
        (
            "node_id = 1;\nlisten = \"x\" 5;",
            2,
            "expected ';' after setting \"listen\", found integer 5",
        ),
        (
            "node_id = 1;\n\ndata_dir = \"abc;\n",
            3,
            "unterminated string",
        ),
        (
            "node_id = 99999999999999999999;",
            1,
            "integer out of range: 99999999999999999999",
        ),
        (
            "node_id = 1;\nnode_id = 2;",
            2,
            "duplicate setting \"node_id\" (first set on line 1)",
        ),
        // Unknown settings.
        (
            "nodeid = 1;",
            1,
            "unknown setting \"nodeid\"; expected one of: node_id, data_dir, listen, advertise, peer_listen, peer_advertise, cluster_name, initial_cluster, limits, raft, log, mqtt, tls",
        ),
        (
            "limits = {\n  key_bytes_max = 1;\n  foo = 2;\n};",
            3,
            unknown_limits,
        ),
        (
            "raft = { bar = 1; };",
            1,
            "unknown setting \"raft.bar\"; expected one of: heartbeat_interval_ms, election_timeout_ms_min, election_timeout_ms_max, snapshot_log_entries, log_entries_kept_after_snapshot, lease_check_interval_ms",
        ),
        (
            "log = {\n colour = true; };",
            2,
            "unknown setting \"log.colour\"; expected one of: level, format",
        ),
        // Wrong types.
        (
            "node_id = \"1\";",
            1,
            "setting \"node_id\": expected an integer, found a string",
        ),
        (
            "\nnode_id = 1.0;",
            2,
            "setting \"node_id\": expected an integer, found a float",
        ),
        (
            "listen = 7700;",
            1,
            "setting \"listen\": expected a string, found an integer",
        ),
        (
            "data_dir = [\"a\"];",
            1,
            "setting \"data_dir\": expected a string, found an array",
        ),
        (
            "limits = 5;",
            1,
            "setting \"limits\": expected a group, found an integer",
        ),
        (
            "raft = (1);",
            1,
            "setting \"raft\": expected a group, found a list",
        ),
        (
            "limits = {\n txn_ops_max = true; };",
            2,
            "setting \"limits.txn_ops_max\": expected an integer, found a boolean",
        ),
        (
            "log = { format = { }; };",
            1,
            "setting \"log.format\": expected a string, found a group",
        ),
        // Bad values.
        (
            "node_id = -1;",
            1,
            "setting \"node_id\": must not be negative, found -1",
        ),
        (
            "node_id = 0xFFFFFFFF;",
            1,
            "setting \"node_id\": must not be negative, found -1",
        ),
        (
            "limits = {\n\n  watchers_max = 0; };",
            3,
            "setting \"limits.watchers_max\": must be greater than 0",
        ),
        (
            "limits = { key_bytes_max = -5; };",
            1,
            "setting \"limits.key_bytes_max\": must not be negative, found -5",
        ),
        (
            "raft = { snapshot_log_entries = 0; };",
            1,
            "setting \"raft.snapshot_log_entries\": must be greater than 0",
        ),
        (
            "raft = {\n  election_timeout_ms_min = 800;\n  election_timeout_ms_max = 800;\n};",
            2,
            "raft.election_timeout_ms_min (800) must be less than raft.election_timeout_ms_max (800)",
        ),
        (
            "raft = {\n  election_timeout_ms_max = 300;\n};",
            2,
            "raft.election_timeout_ms_min (400) must be less than raft.election_timeout_ms_max (300)",
        ),
        (
            "raft = {\n  heartbeat_interval_ms = 400;\n};",
            2,
            "raft.heartbeat_interval_ms (400) must be less than raft.election_timeout_ms_min (400)",
        ),
        (
            "listen = \"localhost:7700\";",
            1,
            "setting \"listen\": invalid address \"localhost:7700\" (invalid socket address syntax); expected IP:PORT such as 127.0.0.1:7700",
        ),
        (
            "\nlisten = \"127.0.0.1\";",
            2,
            "setting \"listen\": invalid address \"127.0.0.1\"",
        ),
        (
            "log = {\n  format = \"xml\";\n};",
            2,
            "setting \"log.format\": unknown log format \"xml\"; expected \"text\" or \"json\"",
        ),
        (
            "log = { format = \"JSON\"; };",
            1,
            "setting \"log.format\": unknown log format \"JSON\"",
        ),
        (
            "log = { level = \"\"; };",
            1,
            "setting \"log.level\": must not be empty",
        ),
        (
            "cluster_name = \"\";",
            1,
            "setting \"cluster_name\": must not be empty",
        ),
        (
            "advertise = \"node1:7700\";",
            1,
            "setting \"advertise\": invalid address \"node1:7700\"",
        ),
        (
            "data_dir = \"\";",
            1,
            "setting \"data_dir\": must not be empty",
        ),
        (
            "tls = {\n  certfile = \"a\"; };",
            2,
            "unknown setting \"tls.certfile\"; expected one of: cert_file, key_file, ca_file, client_cert_required",
        ),
        (
            "tls = { client_cert_required = 1; };",
            1,
            "setting \"tls.client_cert_required\": expected a boolean (true or false), found an integer",
        ),
        (
            "\ntls = { cert_file = \"a.pem\"; ca_file = \"ca.pem\"; };",
            2,
            "setting \"tls\": tls.cert_file and tls.key_file are set together or not at all",
        ),
        (
            "tls = { cert_file = \"a.pem\"; key_file = \"a.key\"; };",
            1,
            "setting \"tls\": tls.ca_file is needed with tls.cert_file",
        ),
        (
            "tls = { client_cert_required = true; };",
            1,
            "setting \"tls\": tls.ca_file, tls.client_cert_required, tls.peer_ca_file and tls.peer_allowed_names need tls.cert_file and tls.key_file",
        ),
    ] {
        let (got_line, got) = err(text);
        assert_eq!(got_line, line, "line for {text:?}: {got}");
        assert!(
            got.starts_with(message),
            "for {text:?}\n  want {message:?}\n  got  {got:?}"
        );
    }
}

//! The `mongodb` group: bounds, names, options, and the feature check.

use super::*;

#[test]
fn mongodb_settings_parse_and_are_bounded() {
    let s = Settings::from_str(
        "mongodb = { database = \"fleet_1\"; mirror_kv = true; batch_docs_max = 100;\n\
         uri_options = \"tls=true&authSource=admin\"; };",
        file(),
    )
    .unwrap();
    assert_eq!(s.mongodb.database, "fleet_1");
    assert!(s.mongodb.mirror_kv && !s.mongodb.enabled);
    assert_eq!(s.mongodb.batch_docs_max, 100);
    assert_eq!(s.mongodb.verify_attempts_max, 3, "a default kept");
    assert_eq!(s.mongodb.uri_options, "tls=true&authSource=admin");
    for (text, want) in [
        (
            "mongodb = { batch_docs_max = 0; };",
            "setting \"mongodb.batch_docs_max\": must be between 1 and 100000, found 0",
        ),
        (
            "mongodb = { batch_bytes_max = 100; };",
            "setting \"mongodb.batch_bytes_max\": must be between 1024 and 33554432, found 100",
        ),
        (
            "mongodb = { verify_attempts_max = 0; };",
            "setting \"mongodb.verify_attempts_max\": must be between 1 and 100, found 0",
        ),
        (
            "mongodb = { timeout_ms = 10; };",
            "setting \"mongodb.timeout_ms\": must be between 100 and 600000, found 10",
        ),
        (
            "mongodb = { database = \"a.b\"; };",
            "setting \"mongodb.database\": \"a.b\": a MongoDB database name may not contain '.'",
        ),
        (
            "mongodb = { database = \"\"; };",
            "setting \"mongodb.database\": a MongoDB database name is 1 to 63 bytes, found 0",
        ),
        (
            "mongodb = { uri_options = \"tls\"; };",
            "setting \"mongodb.uri_options\": \"tls\" is not a connection string option NAME=VALUE",
        ),
        (
            "mongodb = { uri_options = \"a=b@evil\"; };",
            "setting \"mongodb.uri_options\": \"a=b@evil\" is not a connection string option NAME=VALUE",
        ),
    ] {
        let (_, msg) = err(text);
        assert_eq!(msg, want, "{text}");
    }
}

/// A binary without the feature refuses `enabled = true`, naming the
/// feature and the line; with it, the setting is taken.
#[test]
fn enabling_the_mirror_needs_the_feature() {
    let text = "node_id = 1;\nmongodb = {\n  enabled = true;\n};\n";
    if cfg!(feature = "mongodb") {
        assert!(Settings::from_str(text, file()).unwrap().mongodb.enabled);
    } else {
        let (line, msg) = err(text);
        assert_eq!(line, 3);
        assert!(msg.contains("cargo feature `mongodb`"), "{msg}");
    }
}

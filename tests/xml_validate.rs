//! `utopia config validate`: the real `utopia` binary on the example files of
//! `schemas/examples/` and on hostile input (schema violation, malformed
//! XML, not UTF-8, oversize, an entity bomb, an external entity), and
//! property tests of the XML readers on arbitrary and mutated input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use proptest::prelude::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples")
}

fn validate(args: &[&str]) -> Output {
    let mut cmd = Command::new(common::UTOPIA);
    // No server anywhere: the command must not need one.
    cmd.args(["--endpoints", "127.0.0.1:1", "config", "validate"])
        .args(args);
    common::run_with_deadline(cmd, Duration::from_secs(60))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `validate` on one file; returns the exit code and the JSON object.
fn validate_json(path: &Path) -> (i32, serde_json::Value) {
    let out = validate(&["--output", "json", path.to_str().unwrap()]);
    let line = stdout(&out);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{e}: {line:?} (stderr {:?})", stderr(&out)));
    (out.status.code().unwrap(), v)
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_judged_as_its_name_says() {
    let files = example_files();
    assert!(files.len() >= 8, "{files:?}");
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let (code, v) = validate_json(path);
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys.len(),
            10,
            "{name}: fixed shape, every field present: {v}"
        );
        if name.starts_with("invalid-") {
            assert_eq!(code, 1, "{name}: {v}");
            assert_eq!(v["valid"], false, "{name}: {v}");
            assert!(
                v["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{name}: {v}"
            );
            assert!(v["line"].as_u64().is_some(), "{name} has a line: {v}");
            assert_eq!(v["type"], serde_json::Value::Null, "{name}: {v}");
        } else {
            assert_eq!(code, 0, "{name}: {v}");
            assert_eq!(v["valid"], true, "{name}: {v}");
            assert_eq!(v["reason"], serde_json::Value::Null, "{name}: {v}");
            assert!(v["version"].as_u64().is_some_and(|n| n >= 1), "{name}: {v}");
        }
    }
}

#[test]
fn text_output_and_exit_codes() {
    let dir = examples_dir();
    let good = dir.join("thermostat.xml");
    let schema = dir.join("schema-file.xml");
    let bad = dir.join("invalid-range-type.xml");
    let (good, schema, bad) = (
        good.to_str().unwrap(),
        schema.to_str().unwrap(),
        bad.to_str().unwrap(),
    );

    let out = validate(&[good, schema]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{good}: valid (class thermostat version 3, 6 post types)\n\
             {schema}: valid (schema site-extension version 2)\n"
        )
    );

    // One invalid file among valid ones: every file gets its line, exit 1.
    let out = validate(&[good, bad]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with("valid (class thermostat version 3, 6 post types)"));
    assert!(
        lines[1].starts_with(&format!("{bad}:5:")),
        "FILE:LINE:COL: reason: {}",
        lines[1]
    );
    assert!(
        lines[1].contains("'cold'"),
        "libxml2's reason: {}",
        lines[1]
    );
    assert!(
        stderr(&out).contains("1 of 2 files invalid"),
        "{}",
        stderr(&out)
    );

    // Usage errors: no file, a bad bound.
    assert_eq!(validate(&[]).status.code(), Some(2));
    let out = validate(&["--file-bytes-max", "0", good]);
    assert_eq!(out.status.code(), Some(2));
    // A missing file is reported like an invalid one.
    let out = validate(&["/nonexistent/x.xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("/nonexistent/x.xml: cannot read:"));
}

#[test]
fn schema_violation_has_line_and_reason() {
    let (code, v) = validate_json(&examples_dir().join("invalid-duplicate-post.xml"));
    assert_eq!(code, 1);
    assert_eq!(v["line"], 6, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("Duplicate key-sequence"),
        "{v}"
    );
}

#[test]
fn malformed_xml_has_line_and_column() {
    let (code, v) = validate_json(&examples_dir().join("invalid-malformed.xml"));
    assert_eq!(code, 1);
    assert_eq!(v["line"], 6, "{v}");
    assert!(v["column"].as_u64().is_some(), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("mismatch"), "{v}");
}

#[test]
fn not_utf8_is_refused_where_the_bad_byte_is() {
    let dir = common::temp_dir();
    let xml = std::fs::read_to_string(examples_dir().join("minimal.xml")).unwrap();
    let mut bytes = xml.into_bytes();
    let at = find(&bytes, b"<posts>").unwrap();
    bytes.splice(at..at, b"<!-- caf\xe9 -->".iter().copied());
    let path = dir.path().join("latin1.xml");
    std::fs::write(&path, &bytes).unwrap();
    let (code, v) = validate_json(&path);
    assert_eq!(code, 1);
    assert!(v["reason"].as_str().unwrap().contains("not UTF-8"), "{v}");
    assert_eq!(
        (v["line"].as_u64(), v["column"].as_u64()),
        (Some(4), Some(13)),
        "{v}"
    );
}

#[test]
fn oversize_is_refused_before_parsing() {
    let dir = common::temp_dir();
    let path = dir.path().join("big.xml");
    // Not even XML: only the size is looked at.
    std::fs::write(&path, vec![b'x'; 2 * 1024 * 1024]).unwrap();
    let (code, v) = validate_json(&path);
    assert_eq!(code, 1);
    assert_eq!(
        v["reason"], "file is 2097152 bytes; the limit is 1048576 bytes",
        "{v}"
    );
    // The bound is the flag's.
    let small = examples_dir().join("minimal.xml");
    let out = validate(&["--file-bytes-max", "100", small.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("the limit is 100 bytes"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn entity_bomb_is_refused() {
    let path = examples_dir().join("invalid-billion-laughs.xml");
    let (code, v) = validate_json(&path);
    assert_eq!(code, 1);
    assert_eq!(
        (v["line"].as_u64(), v["column"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("DOCTYPE"), "{v}");
    // 10^9 "lol"s would be 3 GB: the output is one short line.
    let out = validate(&[path.to_str().unwrap()]);
    assert!(out.stdout.len() < 1024, "{}", stdout(&out));
}

#[test]
fn external_entity_is_never_read() {
    let dir = common::temp_dir();
    let secret = "utopia-secret-6b1f0c2e";
    let secret_path = dir.path().join("secret.txt");
    std::fs::write(&secret_path, secret).unwrap();
    let url = format!("file://{}", secret_path.display());
    let variants = [
        // A general entity in content.
        format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE utopia [<!ENTITY s SYSTEM \"{url}\">]>\n\
             <utopia xmlns=\"urn:utopia:config:1\" type=\"config\" name=\"c\" version=\"1\">\
             <deviceClass><description>&s;</description><posts><boolean name=\"b\"/></posts>\
             </deviceClass></utopia>\n"
        ),
        // A parameter entity in the DTD.
        format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE utopia [<!ENTITY % p SYSTEM \"{url}\"> %p;]>\n\
             <utopia/>\n"
        ),
        // An external DTD.
        format!("<?xml version=\"1.0\"?>\n<!DOCTYPE utopia SYSTEM \"{url}\">\n<utopia/>\n"),
        // Lower case is not a DOCTYPE to XML: malformed, and not read either.
        format!(
            "<?xml version=\"1.0\"?>\n<!doctype utopia [<!ENTITY s SYSTEM \"{url}\">]>\n\
             <utopia>&s;</utopia>\n"
        ),
    ];
    for (i, xml) in variants.iter().enumerate() {
        let path = dir.path().join(format!("xxe-{i}.xml"));
        std::fs::write(&path, xml).unwrap();
        for output in ["text", "json"] {
            let out = validate(&["--output", output, path.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(1), "variant {i}: {}", stdout(&out));
            for stream in [stdout(&out), stderr(&out)] {
                assert!(!stream.contains(secret), "variant {i} leaked: {stream}");
            }
            let line_2 = if output == "json" {
                "\"line\":2,"
            } else {
                ":2:"
            };
            assert!(
                stdout(&out).contains(line_2),
                "variant {i} has line 2: {}",
                stdout(&out)
            );
        }
    }
}

#[test]
fn the_readme_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```xml\n")
        .expect("README shows a configuration")
        + 7;
    let len = readme[start..].find("```").unwrap();
    let dir = common::temp_dir();
    let path = dir.path().join("readme.xml");
    std::fs::write(&path, &readme[start..start + len]).unwrap();
    let (code, v) = validate_json(&path);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["post_types"].as_u64()),
        (Some("thermostat"), Some(3))
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Pieces a mutation may insert: fragments of markup the readers must cope
/// with anywhere.
const FRAGMENTS: &[&str] = &[
    "<",
    ">",
    "</",
    "/>",
    "&",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "&lol;",
    "\"",
    "'",
    "=",
    "<!DOCTYPE a [<!ENTITY x \"y\">]>",
    "<![CDATA[",
    "]]>",
    "<?pi?>",
    "<!--",
    "-->",
    "xmlns=\"\"",
    "xmlns:u=\"urn:utopia:config:1\"",
    "u:",
    "<posts>",
    "</posts>",
    "<float name=\"f\" min=\"1e999\"/>",
    "<integer name=\"i\" max=\"99999999999999999999\"/>",
    "<enum name=\"e\"></enum>",
    "\u{FEFF}",
    "\u{0}",
    "\u{FFFF}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 0..FRAGMENTS.len()).prop_map(|(i, f)| Mutation::Insert(i, f)),
        (any::<usize>(), 1usize..256).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match *m {
        Mutation::Flip(i, b) => {
            if !bytes.is_empty() {
                bytes[i % len] = b;
            }
        }
        Mutation::Delete(i, n) => {
            let at = (i % len).min(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Insert(i, f) => {
            let at = (i % len).min(bytes.len());
            bytes.splice(at..at, FRAGMENTS[f].bytes());
        }
        Mutation::Duplicate(i, n) => {
            let at = (i % len).min(bytes.len());
            let end = (at + n).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
    }
}

/// Every reader on `bytes`: any result but a panic.
fn read_everything(bytes: &[u8]) {
    let _ = utopia::xmlconf::read_envelope(bytes);
    let _ = utopia::xmlconf::read_class(bytes);
    let _ = utopia::xmlconf::model::check_standalone_schema(bytes);
    if let Ok(v) = utopia::xmlconf::validate(bytes, utopia::xmlconf::FILE_BYTES_MAX) {
        // Whatever validates also reads, to the same class.
        let env = utopia::xmlconf::read_envelope(bytes).unwrap();
        assert_eq!((env.name.as_str(), env.version), (v.name(), v.version()));
    }
}

fn example_bytes() -> Vec<Vec<u8>> {
    example_files()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        read_everything(&bytes);
    }

    #[test]
    fn mutated_examples_never_panic(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let examples = example_bytes();
        let mut bytes = examples[which % examples.len()].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        read_everything(&bytes);
    }
}

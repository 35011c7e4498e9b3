//! `utopia config upload|list|get` against a real three-node cluster: an
//! upload through one member is decided and served alike by every member,
//! invalid files and refused votes exit 1 with the reason, a higher
//! version supersedes the older, and under authentication an upload needs
//! write permission on the `xml_configs` collection.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{start_cluster, temp_dir, wait_for, Server};
use utopia_proto::v1 as pb;

/// Votes are collected this long before the leader decides.
const CONF: &str = "configs = { agreement_window_ms = 300; };\n";
const DEADLINE: Duration = Duration::from_secs(30);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas/examples")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// `thermostat.xml` as version `version`, with `comment` in it (a
/// different comment: different bytes, another hash).
fn thermostat(dir: &Path, version: u32, comment: &str) -> (PathBuf, Vec<u8>) {
    let original = std::fs::read_to_string(example("thermostat.xml")).unwrap();
    let changed = original
        .replace("version=\"3\"", &format!("version=\"{version}\""))
        .replace(
            "<deviceClass>",
            &format!("<deviceClass>\n    <!-- {comment} -->"),
        );
    assert_ne!(changed, original);
    let path = dir.join(format!("thermostat-{version}-{comment}.xml"));
    std::fs::write(&path, &changed).unwrap();
    (path, changed.into_bytes())
}

fn start(dir: &Path) -> Vec<Server> {
    let conf = dir.join("utopiad.conf");
    std::fs::write(&conf, CONF).unwrap();
    start_cluster(dir, 3, &["--config", conf.to_str().unwrap()]).0
}

/// `config list --output json` as `node` itself holds it.
fn list_on(node: &Server) -> serde_json::Value {
    node.cli_json(&["config", "list", "--consistency", "serializable"])
}

/// The entry `id` of a listing.
fn entry<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
}

/// Waits until every node lists `id` in `state`; returns the listings.
fn listed_everywhere(nodes: &[Server], id: &str, state: &str) -> Vec<serde_json::Value> {
    nodes
        .iter()
        .map(|n| {
            wait_for(&format!("{id} {state} on {}", n.addr), DEADLINE, || {
                let list = list_on(n);
                (entry(&list, id)?["state"] == state).then_some(list)
            })
        })
        .collect()
}

#[test]
fn upload_is_decided_and_served_alike_by_every_member() {
    let dir = temp_dir();
    let nodes = start(dir.path());
    let file = example("thermostat.xml");
    let bytes = std::fs::read(&file).unwrap();

    // Uploaded through the third member; decided by the leader.
    let out = nodes[2].cli(&[
        "--output",
        "json",
        "config",
        "upload",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let up: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(up["name"], "thermostat", "{up}");
    assert_eq!(up["type"], "config", "{up}");
    assert_eq!(up["version"], 3, "{up}");
    assert_eq!(up["hash"], hash(&bytes), "{up}");
    assert_eq!(up["outcome"], "accepted", "{up}");
    assert_eq!(up["state"], "accepted", "{up}");
    assert_eq!(up["decided_hash"], hash(&bytes), "{up}");
    assert!(up["decided_ms"].as_u64().is_some(), "{up}");

    // Every member lists it identically, from its own state.
    let lists = listed_everywhere(&nodes, "thermostat@3", "accepted");
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0], lists[2]);
    let t = entry(&lists[0], "thermostat@3").unwrap();
    assert_eq!(t["hash"], hash(&bytes), "{t}");
    assert_eq!(t["type"], "config", "{t}");
    let votes = t["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 1, "{t}");
    assert_eq!(votes[0]["weight"], 1.0, "{t}");
    assert_eq!(votes[0]["hash"], hash(&bytes), "{t}");
    assert_eq!(votes[0]["source"], "upload", "{t}");
    assert_eq!(t["failing"], serde_json::json!([]), "{t}");
    assert!(t["decided_ms"].as_u64().is_some(), "{t}");

    // Every member serves the exact bytes.
    for n in &nodes {
        let out = n.cli(&[
            "config",
            "get",
            "thermostat",
            "--output",
            "xml",
            "--consistency",
            "serializable",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert_eq!(out.stdout, bytes, "config get on {}", n.addr);
    }
    let got = nodes[0].cli_json(&["config", "get", "thermostat", "--version", "3"]);
    assert_eq!(got["config"]["hash"], hash(&bytes), "{got}");
    assert_eq!(got["document"]["xml"], text(&bytes), "{got}");
    assert_eq!(got["document"]["state"], "accepted", "{got}");

    // The table.
    let table = nodes[1].cli_ok(&["config", "list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "TYPE", "VERSION", "HASH", "STATE", "VOTES", "FAILING"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "thermostat",
            "config",
            "3",
            &hash(&bytes)[..12],
            "accepted",
            &format!("{}:1", up_proposer(&lists[0])),
            "-"
        ],
        "{table}"
    );

    // The same upload again changes nothing and is still accepted, with
    // or without waiting.
    for wait in [&[][..], &["--no-wait"]] {
        let mut args = vec!["config", "upload", file.to_str().unwrap()];
        args.extend_from_slice(wait);
        let out = nodes[0].cli(&args);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("thermostat@3 accepted (hash {})", &hash(&bytes)[..12])
        );
    }

    // Invalid files: exit 1 with FILE:LINE:COL, nothing sent.
    for (name, position) in [
        ("invalid-min-above-max.xml", ":5:7: "),
        ("invalid-malformed.xml", ":6:13: "),
    ] {
        let path = example(name);
        let path = path.to_str().unwrap();
        let out = nodes[0].cli(&["config", "upload", path]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", show(&out));
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("error: {path}{position}")),
            "{name}: {err}"
        );
    }

    // Other bytes for the decided version: refused, a new version is needed.
    let (other, other_bytes) = thermostat(dir.path(), 3, "other");
    let out = nodes[1].cli(&["config", "upload", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(err.contains("FAILED_PRECONDITION"), "{err}");
    assert!(err.contains("a new version is needed"), "{err}");
    // Nothing changed anywhere.
    for n in &nodes {
        let out = n.cli(&["config", "get", "thermostat", "--output", "xml"]);
        assert_eq!(out.stdout, bytes);
    }

    // A higher version supersedes the older one.
    let out = nodes[0].cli(&["config", "upload", "--no-wait", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "still refused: {}", show(&out));
    let (v4, v4_bytes) = thermostat(dir.path(), 4, "four");
    let out = nodes[0].cli(&["config", "upload", v4.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("thermostat@4 accepted (hash {})", &hash(&v4_bytes)[..12])
    );
    let lists = listed_everywhere(&nodes, "thermostat@3", "superseded");
    for list in &lists {
        assert_eq!(entry(list, "thermostat@4").unwrap()["state"], "accepted");
        let ids: Vec<&str> = list["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["thermostat@3", "thermostat@4"]);
    }
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0], lists[2]);
    for n in &nodes {
        let latest = n.cli(&[
            "config",
            "get",
            "thermostat",
            "-o",
            "xml",
            "--consistency",
            "serializable",
        ]);
        assert_eq!(
            latest.stdout, v4_bytes,
            "the default is the accepted version"
        );
        let old = n.cli(&["config", "get", "thermostat", "--version", "3", "-o", "xml"]);
        assert_eq!(old.stdout, bytes);
    }
    assert_ne!(other_bytes, bytes);

    // A version below the accepted one is refused.
    let (v2, _) = thermostat(dir.path(), 2, "two");
    let out = nodes[0].cli(&["config", "upload", v2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("thermostat@4 is accepted"),
        "{}",
        show(&out)
    );

    // --no-wait answers once the vote is in.
    let (v5, v5_bytes) = thermostat(dir.path(), 5, "five");
    let out = nodes[2].cli(&["config", "upload", "--no-wait", v5.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stdout).starts_with(&format!(
            "thermostat@5 proposed (hash {})",
            &hash(&v5_bytes)[..12]
        )),
        "{}",
        show(&out)
    );
    listed_everywhere(&nodes, "thermostat@5", "accepted");

    // Not found: exit 1.
    let out = nodes[0].cli(&["config", "get", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("nosuch has no accepted version"),
        "{}",
        show(&out)
    );
    let out = nodes[0].cli(&["config", "get", "thermostat", "--version", "9"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

/// The proposer of the first listed version (the leader at the upload).
fn up_proposer(list: &serde_json::Value) -> u64 {
    list["configs"][0]["votes"][0]["node"].as_u64().unwrap()
}

#[test]
fn the_server_checks_uploads_itself() {
    let dir = temp_dir();
    let nodes = start(dir.path());
    let rt = common::runtime();
    let upload = |addr: String, xml: Vec<u8>| {
        rt.block_on(async move {
            let mut c = pb::configs_client::ConfigsClient::connect(addr)
                .await
                .unwrap();
            c.upload(pb::ConfigUploadRequest { xml }).await
        })
    };
    // Invalid on any member, before anything is proposed: line, column
    // and the validator's reason.
    for n in &nodes {
        let bad = std::fs::read(example("invalid-min-above-max.xml")).unwrap();
        let e = upload(n.endpoint(), bad).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message()
                .contains("line 5, column 7: \"humidity\": min 100 is above max 0"),
            "{e:?}"
        );
        let e = upload(n.endpoint(), vec![0xff, 0xfe, b'<']).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        // Over configs.file_bytes_max (256 KiB by default).
        let mut big = std::fs::read(example("thermostat.xml")).unwrap();
        big.resize(300 * 1024, b' ');
        let e = upload(n.endpoint(), big).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("configs.file_bytes_max"), "{e:?}");
    }
    let list = list_on(&nodes[0]);
    assert_eq!(list["configs"], serde_json::json!([]), "{list}");
    let counted: u64 = nodes
        .iter()
        .map(|n| {
            common::counter(
                &n.addr,
                "requests_rejected_total{reason=\"invalid_config\"}",
            )
        })
        .sum();
    assert_eq!(counted, 6);
}

#[test]
fn uploads_need_write_on_xml_configs() {
    let dir = temp_dir();
    let nodes = start(dir.path());
    let file = example("minimal.xml");
    let file = file.to_str().unwrap();
    let root = |a: &[&str]| {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(a);
        let out = nodes[0].cli(&all);
        assert!(out.status.success(), "{a:?}: {}", show(&out));
    };
    nodes[0].cli_ok(&["user", "add", "root:rootpw"]);
    nodes[0].cli_ok(&["user", "grant-role", "root", "root"]);
    nodes[0].cli_ok(&["auth", "enable"]);
    root(&["user", "add", "reader:readerpw"]);
    root(&["role", "add", "config-reader"]);
    root(&[
        "role",
        "grant-permission",
        "config-reader",
        "read",
        "--collection",
        "xml_configs",
    ]);
    root(&["user", "grant-role", "reader", "config-reader"]);
    root(&["user", "add", "operator:operatorpw"]);
    root(&["role", "add", "config-operator"]);
    root(&[
        "role",
        "grant-permission",
        "config-operator",
        "readwrite",
        "--collection",
        "xml_configs",
    ]);
    root(&["user", "grant-role", "operator", "config-operator"]);

    // Anonymous: refused. A reader may list but not upload.
    let out = nodes[1].cli(&["config", "upload", file]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        show(&out)
    );
    let out = nodes[1].cli(&["--user", "reader:readerpw", "config", "upload", file]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(err.contains("xml_configs"), "{err}");
    let list = nodes[1].cli_json(&["--user", "reader:readerpw", "config", "list"]);
    assert_eq!(
        list["configs"],
        serde_json::json!([]),
        "nothing was voted: {list}"
    );
    let out = nodes[1].cli(&["config", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));

    // The operator may upload; the reader then reads it.
    let out = nodes[1].cli(&["--user", "operator:operatorpw", "config", "upload", file]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let got = nodes[2].cli(&[
        "--user",
        "reader:readerpw",
        "config",
        "get",
        "door-sensor",
        "-o",
        "xml",
    ]);
    assert_eq!(got.status.code(), Some(0), "{}", show(&got));
    assert_eq!(got.stdout, std::fs::read(file).unwrap());
    // A user with no permission on the collection reads nothing.
    root(&["user", "add", "nobody:nobodypw"]);
    let out = nodes[2].cli(&["--user", "nobody:nobodypw", "config", "get", "door-sensor"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("PERMISSION_DENIED"),
        "{}",
        show(&out)
    );
}

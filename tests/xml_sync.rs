//! XML configuration sync on three real nodes, each with its own
//! `configs.dir`: a file dropped into one directory is voted, decided and
//! written into every directory; invalid and stale files are refused and
//! recorded, changing nothing; competing contents are decided by weight; a
//! file changed or deleted behind utopia's back is restored; a member that
//! cannot write its directory is marked failing and recovers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::files::{drop_file, Immutable};
use common::{counter, start_cluster_each, temp_dir, wait_for, Server};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/examples")
            .join(name),
    )
    .unwrap()
}

/// The thermostat example as version `version`, with `tag` in a comment
/// (another content, the same configuration).
fn thermostat(version: u64, tag: &str) -> Vec<u8> {
    let xml = String::from_utf8(example("thermostat.xml")).unwrap();
    let xml = xml.replacen("version=\"3\"", &format!("version=\"{version}\""), 1);
    assert!(xml.contains(&format!("version=\"{version}\"")));
    format!("{xml}<!-- {tag} -->\n").into_bytes()
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

struct Cluster {
    nodes: Vec<Server>,
    dirs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

/// Three nodes with these configuration weights, each with its own
/// directory (scanned in full every `scan_ms`), prepared by
/// `prepare(id, dir)` before the nodes start.
fn cluster(
    weights: [f64; 3],
    window_ms: u64,
    scan_ms: u64,
    prepare: impl Fn(u64, &Path),
) -> Cluster {
    let dir = temp_dir();
    let mut dirs = Vec::new();
    for id in 1..=3u64 {
        let d = dir.path().join(format!("configs{id}"));
        std::fs::create_dir_all(&d).unwrap();
        prepare(id, &d);
        let conf = dir.path().join(format!("utopiad{id}.conf"));
        std::fs::write(
            &conf,
            format!(
                "configs = {{ dir = \"{}\"; scan_interval_ms = {scan_ms}; agreement_window_ms = {window_ms}; \
                 weight = {}; write_attempts_max = 3; write_backoff_ms = 50; }};\n",
                d.display(),
                weights[id as usize - 1]
            ),
        )
        .unwrap();
        dirs.push(d);
    }
    let root = dir.path().to_path_buf();
    let (nodes, _) = start_cluster_each(dir.path(), 3, |id| {
        vec![
            "--config".to_string(),
            root.join(format!("utopiad{id}.conf"))
                .to_str()
                .unwrap()
                .to_string(),
        ]
    });
    Cluster {
        nodes,
        dirs,
        _dir: dir,
    }
}

impl Cluster {
    /// The `xml_configs` document `id`, read through node `via` (1-based).
    fn config(&self, via: usize, id: &str) -> Option<Value> {
        let out = self.nodes[via - 1].cli(&["--output", "json", "doc", "get", "xml_configs", id]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["document"].clone())
    }

    /// Waits until `name@version` is accepted; its hash.
    fn accepted(&self, id: &str) -> String {
        wait_for(&format!("{id} accepted"), DEADLINE, || {
            let d = self.config(1, id)?;
            (d["state"] == "accepted").then(|| d["hash"].as_str().unwrap().to_string())
        })
    }

    /// Waits until every node's `file` holds bytes with `want` as hash.
    fn on_every_disk(&self, file: &str, want: &str) {
        for i in 0..self.dirs.len() {
            self.on_disk(i, file, want);
        }
    }

    /// Waits until `file` in the directory of the node at index `i` holds
    /// bytes with `want` as hash.
    fn on_disk(&self, i: usize, file: &str, want: &str) {
        wait_for(
            &format!("{file} with hash {want} in node {}'s directory", i + 1),
            DEADLINE,
            || {
                let bytes = std::fs::read(self.dirs[i].join(file)).ok()?;
                (hash(&bytes) == want).then_some(())
            },
        );
    }

    /// Waits for the record of node `node`'s refused `file`; its reason.
    fn refused(&self, node: u64, file: &str) -> String {
        wait_for(&format!("file/{node}/{file} recorded"), DEADLINE, || {
            let d = self.config(1, &format!("file/{node}/{file}"))?;
            assert_eq!(d["state"], "rejected", "{d}");
            Some(d["reason"].as_str().unwrap().to_string())
        })
    }
}

/// `reason` names `file`, then a line (and a column) before the message.
fn has_position(reason: &str, file: &str) -> bool {
    let Some(rest) = reason.strip_prefix(&format!("{file}:")) else {
        return false;
    };
    rest.split(':')
        .next()
        .is_some_and(|l| l.parse::<u32>().is_ok_and(|l| l >= 1))
}

#[test]
fn a_file_dropped_into_one_directory_is_accepted_and_written_everywhere_and_kept() {
    // Scans a minute apart: what happens here follows change notifications.
    let c = cluster([1.0, 1.0, 1.0], 500, 60_000, |_, _| {});
    let v1 = thermostat(1, "first");
    drop_file(&c.dirs[0], "incoming.xml", &v1);
    let h1 = c.accepted("thermostat@1");
    assert_eq!(h1, hash(&v1));
    c.on_every_disk("thermostat.xml", &h1);
    let doc = c.config(2, "thermostat@1").unwrap();
    assert_eq!(doc["xml"].as_str().unwrap().as_bytes(), &v1[..]);
    assert!(doc["rules"].is_object(), "{doc}");
    assert!(counter(&c.nodes[0].addr, "config_votes_proposed_total") >= 1);
    for n in &c.nodes[1..] {
        assert!(counter(&n.addr, "config_files_written_total") >= 1);
    }

    // Deleted behind utopia's back: restored.
    std::fs::remove_file(c.dirs[1].join("thermostat.xml")).unwrap();
    c.on_every_disk("thermostat.xml", &h1);
    // Edited (the same version, other bytes): restored.
    drop_file(&c.dirs[2], "thermostat.xml", &thermostat(1, "edited"));
    c.on_every_disk("thermostat.xml", &h1);
    // Truncated in place: refused (recorded) and restored.
    std::fs::write(c.dirs[0].join("thermostat.xml"), b"<utopia").unwrap();
    let reason = c.refused(1, "thermostat.xml");
    assert!(has_position(&reason, "thermostat.xml"), "{reason}");
    c.on_every_disk("thermostat.xml", &h1);

    // Refused, each recorded with its reason; nothing changes.
    let bad = c.dirs[1].clone();
    let mut not_utf8 = thermostat(2, "x");
    let at = not_utf8
        .windows(11)
        .position(|w| w == b"Room thermo")
        .unwrap();
    not_utf8[at] = 0xff;
    let mut oversize = thermostat(2, "big");
    oversize.extend(std::iter::repeat_n(b' ', 300 * 1024));
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        (
            "schema.xml",
            example("invalid-envelope-type.xml"),
            "firmware",
            true,
        ),
        ("malformed.xml", example("invalid-malformed.xml"), "", true),
        ("latin1.xml", not_utf8, "not UTF-8", true),
        ("oversize.xml", oversize, "file_bytes_max", false),
        (
            "laughs.xml",
            example("invalid-billion-laughs.xml"),
            "DOCTYPE",
            true,
        ),
        (
            "entity.xml",
            example("invalid-external-entity.xml"),
            "DOCTYPE",
            true,
        ),
        // Valid, but below the accepted version with another content.
        (
            "stale.xml",
            thermostat(1, "stale"),
            "a new version is needed",
            false,
        ),
    ];
    for (file, bytes, _, _) in &cases {
        drop_file(&bad, file, bytes);
    }
    for (file, _, says, positioned) in &cases {
        let reason = c.refused(2, file);
        assert!(reason.contains(says), "{file}: {reason}");
        if *positioned {
            assert!(has_position(&reason, file), "{file}: {reason}");
        }
    }
    assert!(counter(&c.nodes[1].addr, "config_files_rejected_total") >= cases.len() as u64);
    let doc = c.config(1, "thermostat@1").unwrap();
    assert_eq!(doc["state"], "accepted");
    assert_eq!(doc["hash"], h1.as_str());
    let list = c.nodes[0].cli_json(&["doc", "list", "xml_configs"]);
    let versions: Vec<&str> = list["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .filter(|id| !id.starts_with("file/"))
        .collect();
    assert_eq!(versions, ["thermostat@1"], "{list}");
    c.on_every_disk("thermostat.xml", &h1);

    // A new version through another member's canonical file: accepted and
    // written everywhere, the old one superseded.
    let v2 = thermostat(2, "second");
    drop_file(&c.dirs[2], "thermostat.xml", &v2);
    let h2 = c.accepted("thermostat@2");
    assert_eq!(h2, hash(&v2));
    c.on_every_disk("thermostat.xml", &h2);
    assert_eq!(c.config(1, "thermostat@1").unwrap()["state"], "superseded");
}

#[test]
fn competing_contents_are_decided_by_the_sum_of_weights_on_every_disk() {
    // A (weights 1 + 1) against B (1.5): A.
    let a = thermostat(1, "A");
    let b = thermostat(1, "B");
    let c = cluster([1.0, 1.0, 1.5], 3000, 300, |id, dir| {
        let bytes = if id == 3 { &b } else { &a };
        drop_file(dir, "thermostat.xml", bytes);
    });
    let won = c.accepted("thermostat@1");
    assert_eq!(won, hash(&a));
    c.on_every_disk("thermostat.xml", &won);
    drop(c);

    // A (1) against B (3), the third member without a file: B.
    let c = cluster([1.0, 1.0, 3.0], 3000, 300, |id, dir| match id {
        1 => drop_file(dir, "thermostat.xml", &a),
        3 => drop_file(dir, "thermostat.xml", &b),
        _ => {}
    });
    let won = c.accepted("thermostat@1");
    assert_eq!(won, hash(&b));
    c.on_every_disk("thermostat.xml", &won);
    let doc = c.config(2, "thermostat@1").unwrap();
    assert_eq!(doc["votes"].as_array().unwrap().len(), 2, "{doc}");
}

#[test]
fn a_member_that_cannot_write_its_directory_is_marked_failing_until_it_can() {
    let c = cluster([1.0, 1.0, 1.0], 500, 300, |_, _| {});
    let immutable = Immutable::set(&c.dirs[2]);
    let v1 = thermostat(1, "first");
    drop_file(&c.dirs[0], "thermostat.xml", &v1);
    let h1 = c.accepted("thermostat@1");
    // The others hold it; member 3 is marked failing after its retries.
    for i in 0..2 {
        c.on_disk(i, "thermostat.xml", &h1);
    }
    let doc = wait_for("member 3 failing", DEADLINE, || {
        let d = c.config(1, "thermostat@1")?;
        let failing = d["failing"].as_array()?;
        (failing.len() == 1).then_some(d)
    });
    assert_eq!(doc["failing"][0]["node"], 3, "{doc}");
    assert!(
        doc["failing"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("after 3 attempts"),
        "{doc}"
    );
    let fellow = c.nodes[0].cli_json(&["doc", "get", "fellows", "3"]);
    assert_eq!(
        fellow["document"]["config_failing"][0]["name"], "thermostat",
        "{fellow}"
    );
    assert!(counter(&c.nodes[2].addr, "config_write_failures_total") >= 3);
    assert!(!c.dirs[2].join("thermostat.xml").exists());
    // Ingest ownership keeps the class's devices from member 3 (a new
    // owners epoch on every member).
    for n in &c.nodes {
        wait_for("member 3 excluded from the class", DEADLINE, || {
            (counter(&n.addr, "cluster_ingest_excluded_members") == 1).then_some(())
        });
    }

    // Nothing else stops: writes go on, through the failing member too.
    c.nodes[2].cli_ok(&["put", "k/after", "v"]);
    assert!(c.nodes[0].cli_ok(&["get", "k/after"]).contains('v'));

    // Writable again: written, verified, and cleared.
    drop(immutable);
    wait_for("member 3 cleared", DEADLINE, || {
        let d = c.config(1, "thermostat@1")?;
        d["failing"]
            .as_array()
            .is_none_or(|f| f.is_empty())
            .then_some(())
    });
    c.on_every_disk("thermostat.xml", &h1);
    wait_for("member 3 owns devices of the class again", DEADLINE, || {
        (counter(&c.nodes[0].addr, "cluster_ingest_excluded_members") == 0).then_some(())
    });
    wait_for("member 3's warning cleared", DEADLINE, || {
        let f = c.nodes[0].cli_json(&["doc", "get", "fellows", "3"]);
        f["document"]["config_failing"]
            .as_array()
            .is_none_or(|a| a.is_empty())
            .then_some(())
    });
    // Every write is counted in the configuration's statistics: member
    // 3's failed ones, and the ones that wrote the file (members 2 and 3).
    wait_for("the writes counted in config/thermostat", DEADLINE, || {
        let out = c.nodes[0].cli(&["--output", "json", "stats", "get", "config", "thermostat"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        let counters = &s["document"]["counters"];
        let failed = counters["syncs_failed"]["total"].as_u64()?;
        let syncs = counters["syncs"]["total"].as_u64()?;
        (failed >= 3 && syncs >= failed + 2 && s["document"]["total_failures"] == failed)
            .then_some(())
    });
}

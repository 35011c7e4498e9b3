//! Configuration agreement: votes, the window, weights and ties, refusals
//! and refused files.

use super::*;
use utopia_raft::event::{ClassRules, ConfigVote, FieldRule, FieldRuleKind, VoteSource};

fn xml(tag: &str) -> String {
    format!("<utopia name=\"thermo\" tag=\"{tag}\"/>")
}

fn hash(xml: &str) -> String {
    blake3::hash(xml.as_bytes()).to_hex().to_string()
}

fn vote(node: u64, weight_milli: u32, version: u64, content: &str) -> Event {
    let xml = xml(content);
    Event::ConfigVote(ConfigVote {
        name: "thermo".into(),
        kind: "config".into(),
        version,
        hash: hash(&xml),
        xml,
        proposer: node,
        weight_milli,
        window_ms: 1_000,
        source: VoteSource::Dir,
        rules: Some(ClassRules {
            posts: vec![FieldRule {
                name: format!("temp-{content}"),
                required: false,
                kind: FieldRuleKind::Float {
                    min: Some(-40.0),
                    max: Some(85.0),
                },
            }],
            commands: Vec::new(),
        }),
    })
}

fn decide(version: u64) -> Event {
    Event::ConfigDecide {
        name: "thermo".into(),
        version,
    }
}

/// Applies `events` at `at` ms, each in its own batch; the outcomes.
fn run(s: &mut MemState, events: Vec<(u64, Event)>) -> Vec<Outcome> {
    events
        .into_iter()
        .map(|(at, e)| s.apply_batch(vec![(at, e)]).pop().unwrap().outcome)
        .collect()
}

fn refused(o: &Outcome) -> String {
    match o {
        Outcome::Rejected(r) => r.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn class_record(s: &MemState) -> Option<ingest::ClassRulesRecord> {
    s.get(Cf::Ingest, &keys::ingest::class_key("thermo"))
        .unwrap()
        .map(|b| codec::decode(Cf::Ingest, b"c", &b).unwrap())
}

#[test]
fn two_light_voters_outweigh_one_heavier() {
    let mut s = MemState::default();
    let out = run(
        &mut s,
        vec![
            (1_000, vote(1, 1_000, 1, "a")),
            (1_100, vote(2, 1_000, 1, "a")),
            (1_200, vote(3, 1_500, 1, "b")),
        ],
    );
    assert!(out.iter().all(|o| *o == Outcome::Done), "{out:?}");
    let doc = s.doc(Cf::XmlConfigs, "thermo@1");
    assert_eq!(doc["state"], "proposed");
    assert_eq!(doc["decide_after_ms"], 2_000);
    assert_eq!(doc["votes"].as_array().unwrap().len(), 3);
    assert_eq!(doc["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(doc["hash"], hash(&xml("a")));
    assert!(
        class_record(&s).is_none(),
        "nothing applies before the decision"
    );

    // Before the window's end the decision is refused; at its end it holds.
    let out = run(&mut s, vec![(1_999, decide(1)), (2_000, decide(1))]);
    assert!(refused(&out[0]).contains("open until 2000"), "{out:?}");
    assert_eq!(out[1], Outcome::Done);
    let doc = s.doc(Cf::XmlConfigs, "thermo@1");
    assert_eq!(doc["state"], "accepted");
    assert_eq!(doc["hash"], hash(&xml("a")));
    assert_eq!(doc["xml"], xml("a"));
    assert_eq!(doc["decided_ms"], 2_000);
    assert!(doc.get("candidates").is_none());
    assert_eq!(doc["rules"]["posts"][0]["name"], "temp-a");
    let record = class_record(&s).expect("the class is typed from now on");
    assert_eq!((record.version, record.hash), (1, hash(&xml("a"))));
}

#[test]
fn one_heavy_voter_outweighs_one_light_and_ties_go_to_the_lower_hash() {
    let mut s = MemState::default();
    run(
        &mut s,
        vec![
            (1_000, vote(1, 1_000, 1, "a")),
            (1_000, vote(2, 3_000, 1, "b")),
            (5_000, decide(1)),
        ],
    );
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["hash"], hash(&xml("b")));

    let mut s = MemState::default();
    run(
        &mut s,
        vec![
            (1_000, vote(1, 1_000, 1, "a")),
            (1_000, vote(2, 1_000, 1, "b")),
            (5_000, decide(1)),
        ],
    );
    let lower = hash(&xml("a")).min(hash(&xml("b")));
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["hash"], lower);
}

#[test]
fn a_members_later_vote_replaces_its_earlier_one() {
    let mut s = MemState::default();
    run(
        &mut s,
        vec![
            (1_000, vote(1, 1_000, 1, "a")),
            (1_100, vote(2, 1_000, 1, "a")),
            (1_200, vote(1, 1_000, 1, "b")),
            (1_300, vote(3, 1_500, 1, "b")),
            (9_000, decide(1)),
        ],
    );
    let doc = s.doc(Cf::XmlConfigs, "thermo@1");
    assert_eq!(doc["votes"].as_array().unwrap().len(), 3);
    // b: 1 + 1.5 against a: 1.
    assert_eq!(doc["hash"], hash(&xml("b")));
}

#[test]
fn a_decided_version_needs_a_new_version_to_change() {
    let mut s = MemState::default();
    run(
        &mut s,
        vec![(1_000, vote(1, 1_000, 1, "a")), (3_000, decide(1))],
    );
    let out = run(
        &mut s,
        vec![
            // The same content again: nothing to do.
            (4_000, vote(2, 1_000, 1, "a")),
            (4_000, vote(2, 5_000, 1, "b")),
            (4_000, decide(1)),
        ],
    );
    assert_eq!(out[0], Outcome::Done);
    assert!(
        refused(&out[1]).contains("a new version is needed"),
        "{out:?}"
    );
    assert_eq!(out[2], Outcome::Done, "deciding twice changes nothing");
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["hash"], hash(&xml("a")));

    // Version 2 supersedes 1; a vote for 1 again is refused, and so is a
    // brand-new version below the accepted one.
    run(
        &mut s,
        vec![(5_000, vote(1, 1_000, 3, "c")), (7_000, decide(3))],
    );
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["state"], "superseded");
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@3")["state"], "accepted");
    let out = run(&mut s, vec![(8_000, vote(1, 1_000, 2, "d"))]);
    assert!(refused(&out[0]).contains("thermo@3 is accepted"), "{out:?}");
    assert_eq!(class_record(&s).unwrap().version, 3);
}

#[test]
fn a_version_decided_after_a_newer_one_never_takes_effect() {
    let mut s = MemState::default();
    run(
        &mut s,
        vec![
            (1_000, vote(1, 1_000, 1, "a")),
            (1_500, vote(1, 1_000, 2, "b")),
            (2_600, decide(2)),
            (2_700, decide(1)),
        ],
    );
    let old = s.doc(Cf::XmlConfigs, "thermo@1");
    assert_eq!(old["state"], "superseded");
    assert_eq!(old["reason"], "thermo@2 was accepted first");
    assert_eq!(class_record(&s).unwrap().version, 2);
}

#[test]
fn votes_that_do_not_hold_are_refused_and_change_nothing() {
    let mut s = MemState::default();
    let mut bad_hash = vote(1, 1_000, 1, "a");
    if let Event::ConfigVote(v) = &mut bad_hash {
        v.hash = hash("something else");
    }
    let mut bad_name = vote(1, 1_000, 1, "a");
    if let Event::ConfigVote(v) = &mut bad_name {
        v.name = "../etc".into();
    }
    let mut long_window = vote(1, 1_000, 1, "a");
    if let Event::ConfigVote(v) = &mut long_window {
        v.window_ms = 600_001;
    }
    let out = run(
        &mut s,
        vec![
            (1_000, bad_hash),
            (1_000, bad_name),
            (1_000, long_window),
            (1_000, decide(1)),
        ],
    );
    assert!(refused(&out[0]).contains("not the blake3"), "{out:?}");
    assert!(refused(&out[1]).contains("configuration name"), "{out:?}");
    assert!(refused(&out[2]).contains("600000"), "{out:?}");
    assert!(refused(&out[3]).contains("not found"), "{out:?}");
    assert!(
        s.data.keys().all(|(cf, _)| *cf == Cf::SmMeta),
        "{:?}",
        s.data.keys()
    );
}

#[test]
fn competing_contents_are_bounded() {
    let mut s = MemState::default();
    let events = (0..super::super::xmlconf::CANDIDATES_MAX as u64 + 1)
        .map(|n| (1_000, vote(n + 1, 1_000, 1, &format!("c{n}"))))
        .collect();
    let out = run(&mut s, events);
    assert!(out[..out.len() - 1].iter().all(|o| *o == Outcome::Done));
    assert!(refused(out.last().unwrap()).contains("competing contents"));
}

#[test]
fn refused_files_are_recorded_per_member_and_file() {
    let mut s = MemState::default();
    let rejected = |reason: &str| Event::ConfigFileRejected {
        node: 2,
        file: "bad.xml".into(),
        hash: hash("x"),
        reason: reason.into(),
    };
    let long = "é".repeat(2_000);
    let out = run(
        &mut s,
        vec![
            (1_000, rejected("bad.xml:3:7: element x is not expected")),
            (1_100, rejected(&long)),
            (
                1_200,
                Event::ConfigFileRejected {
                    node: 2,
                    file: "../x".into(),
                    hash: hash("x"),
                    reason: "r".into(),
                },
            ),
        ],
    );
    assert_eq!(out[..2], [Outcome::Done, Outcome::Done]);
    assert!(refused(&out[2]).contains("file name"), "{out:?}");
    let doc = s.doc(Cf::XmlConfigs, "file/2/bad.xml");
    assert_eq!(doc["state"], "rejected");
    assert_eq!(doc["file"], "bad.xml");
    assert_eq!(doc["type"], "file");
    // The reason is cut at a character boundary within the bound.
    let reason = doc["reason"].as_str().unwrap();
    assert!(
        reason.len() <= 1024 && reason.len() >= 1022,
        "{}",
        reason.len()
    );
}

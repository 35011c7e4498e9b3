//! A member's configuration sync state: marked failing on the accepted
//! version's document and in its fellows document, and cleared again.

use super::*;
use crate::documents::{Document, Fellow, XmlConfig};
use utopia_raft::event::{ConfigVote, VoteSource};

fn accept(s: &mut MemState, version: u64) {
    let xml = format!("<utopia name=\"thermo\" v=\"{version}\"/>");
    let vote = Event::ConfigVote(ConfigVote {
        name: "thermo".into(),
        kind: "config".into(),
        version,
        hash: blake3::hash(xml.as_bytes()).to_hex().to_string(),
        xml,
        proposer: 1,
        weight_milli: 1000,
        window_ms: 10,
        source: VoteSource::Dir,
        rules: None,
    });
    let decide = Event::ConfigDecide {
        name: "thermo".into(),
        version,
    };
    for (at, e) in [(version * 1000, vote), (version * 1000 + 20, decide)] {
        let out = s.apply_batch(vec![(at, e)]).pop().unwrap().outcome;
        assert_eq!(out, Outcome::Done);
    }
}

fn state(node: u64, version: u64, failing: bool, reason: &str) -> Event {
    Event::ConfigSyncState {
        node,
        name: "thermo".into(),
        version,
        failing,
        reason: reason.into(),
    }
}

fn apply(s: &mut MemState, at: u64, e: Event) -> Outcome {
    s.apply_batch(vec![(at, e)]).pop().unwrap().outcome
}

fn config(s: &MemState, id: &str) -> XmlConfig {
    let b = s
        .get(Cf::XmlConfigs, keys::document_key(id))
        .unwrap()
        .unwrap();
    XmlConfig::decode(id, &b).unwrap()
}

fn fellow(s: &MemState, id: u64) -> Option<Fellow> {
    s.get(Cf::Fellows, keys::document_key(&id.to_string()))
        .unwrap()
        .map(|b| Fellow::decode(&id.to_string(), &b).unwrap())
}

#[test]
fn a_failing_member_is_listed_on_the_version_and_its_fellows_document_until_cleared() {
    let mut s = MemState::default();
    accept(&mut s, 1);
    assert_eq!(
        apply(&mut s, 5_000, state(2, 1, true, "read-only dir")),
        Outcome::Done
    );
    let doc = config(&s, "thermo@1");
    assert_eq!(doc.failing.len(), 1);
    assert_eq!(doc.failing[0].node, 2);
    assert_eq!(doc.failing[0].reason, "read-only dir");
    assert_eq!(doc.failing[0].since_ms, 5_000);
    let f = fellow(&s, 2).expect("a fellows document");
    assert_eq!(f.config_failing.len(), 1);
    assert_eq!(f.config_failing[0].name, "thermo");
    assert_eq!(f.config_failing[0].version, 1);
    // Said again: the first time stays.
    assert_eq!(
        apply(&mut s, 6_000, state(2, 1, true, "still")),
        Outcome::Done
    );
    let doc = config(&s, "thermo@1");
    assert_eq!(doc.failing.len(), 1);
    assert_eq!(doc.failing[0].since_ms, 5_000);
    assert_eq!(doc.failing[0].reason, "still");
    // Cleared.
    assert_eq!(apply(&mut s, 7_000, state(2, 1, false, "")), Outcome::Done);
    assert!(config(&s, "thermo@1").failing.is_empty());
    assert!(fellow(&s, 2).unwrap().config_failing.is_empty());
}

#[test]
fn sync_state_is_refused_for_a_version_that_is_not_the_accepted_one() {
    let mut s = MemState::default();
    assert!(matches!(
        apply(&mut s, 1_000, state(2, 1, true, "x")),
        Outcome::Rejected(_)
    ));
    accept(&mut s, 1);
    accept(&mut s, 2);
    assert!(matches!(
        apply(&mut s, 9_000, state(2, 1, true, "x")),
        Outcome::Rejected(_)
    ));
    // A warning about an older version is cleared by a newer version's
    // success.
    assert_eq!(apply(&mut s, 9_100, state(3, 2, true, "x")), Outcome::Done);
    accept(&mut s, 3);
    assert_eq!(apply(&mut s, 9_200, state(3, 3, false, "")), Outcome::Done);
    assert!(fellow(&s, 3).unwrap().config_failing.is_empty());
}

//! Leases and their keys; compaction of the history and the change feed.

use super::*;

#[test]
fn leases_attach_and_delete_keys_on_expiry() {
    let mut s = MemState::default();
    let missing = s.apply(Event::Put(PutOp {
        key: b("x"),
        value: b("1"),
        lease: 5,
        prev_kv: false,
    }));
    assert!(matches!(
        missing.outcome,
        Outcome::Rejected(Rejection::LeaseNotFound(5))
    ));
    assert_eq!(missing.revision, 0);
    s.apply_batch(vec![(10_000, Event::LeaseGrant { id: 5, ttl_s: 2 })]);
    s.apply(Event::Put(PutOp {
        key: b("x"),
        value: b("1"),
        lease: 5,
        prev_kv: false,
    }));
    s.apply(Event::Put(PutOp {
        key: b("y"),
        value: b("1"),
        lease: 5,
        prev_kv: false,
    }));
    s.apply(put("z", "no lease"));
    // Too early: the expiry is refused.
    let early = s
        .apply_batch(vec![(11_000, Event::LeaseExpired { id: 5 })])
        .pop()
        .unwrap();
    assert!(
        matches!(early.outcome, Outcome::Rejected(Rejection::Invalid(_))),
        "{early:?}"
    );
    let r = s
        .apply_batch(vec![(12_000, Event::LeaseExpired { id: 5 })])
        .pop()
        .unwrap();
    assert_eq!(r.revision, 4, "both keys deleted in one revision");
    assert!(s.kv("x").is_none() && s.kv("y").is_none() && s.kv("z").is_some());
    assert!(s.get(Cf::Leases, &keys::lease_id_key(5)).unwrap().is_none());
    assert_eq!(s.scan(Cf::LeaseDeadlines, &[], None).count(), 0);
    assert_eq!(s.scan(Cf::LeaseKeys, &[], None).count(), 0);
}

#[test]
fn compaction_keeps_what_reads_at_the_revision_need() {
    let mut s = MemState::default();
    s.apply(put("a", "1")); // 1
    s.apply(put("a", "2")); // 2
    s.apply(put("b", "1")); // 3
    s.apply(del("b", "")); // 4
    s.apply(put("a", "3")); // 5
    let r = s.apply(Event::Compact { revision: 4 });
    assert!(matches!(r.outcome, Outcome::Done), "{r:?}");
    let hist = s.history();
    // a@2 is a's state at revision 4; a@1 and b@3 are gone. The deletion of
    // b at revision 4 stays until a later compaction passes it.
    assert_eq!(
        hist,
        vec![(b"a".to_vec(), 2), (b"a".to_vec(), 5), (b"b".to_vec(), 4)]
    );
    let changes = s.change_revisions();
    assert_eq!(changes, vec![4, 5]);
    let again = s.apply(Event::Compact { revision: 3 });
    assert!(matches!(
        again.outcome,
        Outcome::Rejected(Rejection::Compacted { .. })
    ));
    let future = s.apply(Event::Compact { revision: 99 });
    assert!(matches!(
        future.outcome,
        Outcome::Rejected(Rejection::FutureRevision { .. })
    ));
}

#[test]
fn a_later_compaction_drops_the_state_an_earlier_one_kept() {
    let mut s = MemState::default();
    s.apply(put("a", "1")); // 1
    s.apply(put("b", "1")); // 2
    s.apply(put("c", "1")); // 3
    s.apply(Event::Compact { revision: 3 }); // keeps a@1, b@2, c@3
    s.apply(put("a", "2")); // 4
    s.apply(del("b", "")); // 5
    s.apply(put("c", "2")); // 6
    s.apply(put("a", "3")); // 7
    let r = s.apply(Event::Compact { revision: 6 });
    assert!(matches!(r.outcome, Outcome::Done), "{r:?}");
    let hist = s.history();
    // a: @4 is its state at 6, @7 above it; b: deleted at 5, nothing left;
    // c: @6 (the compacted revision itself) replaces @3.
    assert_eq!(
        hist,
        vec![(b"a".to_vec(), 4), (b"a".to_vec(), 7), (b"c".to_vec(), 6),]
    );
    let changes = s.change_revisions();
    assert_eq!(changes, vec![6, 7]);
}

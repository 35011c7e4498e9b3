//! Alarms: what an active one refuses and what it lets through.

use super::*;

#[test]
fn an_active_alarm_refuses_what_adds_data_and_lets_the_rest_through() {
    use utopia_raft::event::AlarmKind;
    let mut s = MemState::default();
    s.apply(put("a", "1"));
    s.apply(Event::LeaseGrant { id: 9, ttl_s: 60 });
    let raise = |node_id, disarms| Event::AlarmRaised {
        node_id,
        alarm: AlarmKind::NoSpace,
        disarms,
    };
    s.apply(raise(2, 0));
    s.apply(raise(2, 0));
    assert_eq!(Applier::new(&s).alarms().unwrap().len(), 1, "raised once");
    let nospace = |r: Response| {
        matches!(
            r.outcome,
            Outcome::Rejected(Rejection::Alarm {
                node_id: 2,
                alarm: AlarmKind::NoSpace
            })
        )
    };
    let before = s.data.clone();
    assert!(nospace(s.apply(put("b", "1"))));
    assert!(nospace(s.apply(Event::LeaseGrant { id: 10, ttl_s: 60 })));
    assert!(nospace(s.apply(device("z", "temp", &[], "1"))));
    let with_put = Event::Txn(TxnOp {
        compares: vec![],
        success: vec![range_step("a", "")],
        failure: vec![TxnStep::Put(PutOp {
            key: b("c"),
            value: b("1"),
            lease: 0,
            prev_kv: false,
        })],
        bytes_max: 0,
    });
    assert!(nospace(s.apply(with_put)));
    assert_eq!(s.data, before, "nothing refused was written");

    // Reads, deletes and lease revokes go on.
    let read_only = Event::Txn(TxnOp {
        compares: vec![],
        success: vec![range_step("a", "")],
        failure: vec![],
        bytes_max: 0,
    });
    assert!(matches!(
        s.apply(read_only).outcome,
        Outcome::Txn {
            succeeded: true,
            ..
        }
    ));
    assert!(matches!(
        s.apply(del("a", "")).outcome,
        Outcome::Delete { deleted: 1, .. }
    ));
    assert_eq!(s.apply(Event::LeaseRevoke { id: 9 }).outcome, Outcome::Done);

    // A disarm clears it; a raise measured before the disarm is ignored,
    // one measured after it is applied.
    s.apply(Event::AlarmDisarmed {
        node_id: 0,
        alarm: AlarmKind::NoSpace,
    });
    assert!(matches!(
        s.apply(put("b", "1")).outcome,
        Outcome::Put { .. }
    ));
    s.apply(raise(3, 0));
    assert!(Applier::new(&s).alarms().unwrap().is_empty(), "stale raise");
    s.apply(raise(3, 1));
    assert!(nospace_of(&s.apply(put("b", "2")), 3));
}

fn nospace_of(r: &Response, node: u64) -> bool {
    matches!(r.outcome, Outcome::Rejected(Rejection::Alarm { node_id, .. }) if node_id == node)
}

/// The first alarm is read once per batch: a raise or a disarm in the
/// batch applies to the events after it.
#[test]
fn alarms_raised_and_disarmed_within_a_batch_apply_to_the_events_after_them() {
    use utopia_raft::event::AlarmKind;
    let mut s = MemState::default();
    let r = s.apply_batch(vec![
        (1_000, put("a", "1")),
        (
            1_000,
            Event::AlarmRaised {
                node_id: 2,
                alarm: AlarmKind::NoSpace,
                disarms: 0,
            },
        ),
        (1_000, put("b", "1")),
        (
            1_000,
            Event::AlarmDisarmed {
                node_id: 0,
                alarm: AlarmKind::NoSpace,
            },
        ),
        (1_000, put("c", "1")),
    ]);
    assert!(matches!(r[0].outcome, Outcome::Put { .. }), "{r:?}");
    assert!(nospace_of(&r[2], 2), "{r:?}");
    assert!(matches!(r[4].outcome, Outcome::Put { .. }), "{r:?}");
    assert!(s.get(Cf::Kv, b"b").unwrap().is_none());
    assert!(s.get(Cf::Kv, b"c").unwrap().is_some());
}

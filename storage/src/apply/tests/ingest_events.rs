//! MQTT ingest and device commands.

use super::*;
use utopia_raft::event::{IngestBody, IngestItem, IngestMember};

fn owners(epoch: u64, nodes: &[u64]) -> Event {
    Event::IngestOwnersChanged {
        epoch,
        members: nodes
            .iter()
            .map(|&node_id| IngestMember { node_id, weight: 1 })
            .collect(),
        dedupe_window_ms: 10_000,
    }
}

fn item(device: &str, value: &str, redelivered: bool) -> IngestItem {
    IngestItem {
        digest: Bytes::from(
            crate::ingest::digest(&format!("/h/z/c/{device}/t"), value.as_bytes()).to_vec(),
        ),
        redelivered,
        body: IngestBody::Data(DeviceData {
            host: "h".into(),
            zone: "z".into(),
            class: "c".into(),
            device_id: device.into(),
            post_type: "t".into(),
            path: vec![],
            json: value.into(),
        }),
    }
}

fn batch(epoch: u64, proposer: u64, items: Vec<IngestItem>) -> Event {
    Event::IngestBatch {
        epoch,
        proposer,
        items,
    }
}

fn totals(s: &MemState) -> IngestTotals {
    s.get(Cf::Ingest, keys::ingest::TOTALS)
        .unwrap()
        .map(|b| event::decode(&b).unwrap())
        .unwrap_or_default()
}

#[test]
fn owners_epochs_advance_one_at_a_time() {
    let mut s = MemState::default();
    assert_eq!(s.apply(owners(1, &[1])).outcome, Outcome::Done);
    assert!(matches!(
        s.apply(owners(1, &[1, 2])).outcome,
        Outcome::Rejected(Rejection::StaleEpoch { .. })
    ));
    assert!(matches!(
        s.apply(owners(3, &[1, 2])).outcome,
        Outcome::Rejected(Rejection::StaleEpoch { .. })
    ));
    assert_eq!(s.apply(owners(2, &[1, 2])).outcome, Outcome::Done);
}

#[test]
fn a_batch_under_a_stale_epoch_changes_nothing_but_the_count() {
    let mut s = MemState::default();
    s.apply(owners(1, &[1]));
    s.apply(owners(2, &[2]));
    let r = s.apply(batch(1, 1, vec![item("1", "5", false)]));
    assert_eq!(
        r.outcome,
        Outcome::Rejected(Rejection::StaleEpoch {
            proposed: 1,
            current: 2
        })
    );
    assert!(s.get(Cf::Devices, b"h/c/1").unwrap().is_none());
    assert_eq!(totals(&s).stale_batches, 1);
}

#[test]
fn only_the_owner_may_propose_a_device() {
    let mut s = MemState::default();
    s.apply(owners(1, &[1, 2]));
    let owner = crate::ingest::owner_of(
        "h/c/1",
        &[
            IngestMember {
                node_id: 1,
                weight: 1,
            },
            IngestMember {
                node_id: 2,
                weight: 1,
            },
        ],
    )
    .unwrap();
    let other = 3 - owner;
    assert!(matches!(
        s.apply(batch(1, other, vec![item("1", "5", false)]))
            .outcome,
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    assert!(matches!(
        s.apply(batch(1, owner, vec![item("1", "5", false)]))
            .outcome,
        Outcome::Ingested { applied: 1, .. }
    ));
    assert_eq!(s.doc(Cf::Devices, "h/c/1")["data"]["t"], 5);
}

#[test]
fn redelivered_copies_are_suppressed_within_the_window_and_repeats_are_not() {
    let mut s = MemState::default();
    s.apply(owners(1, &[7]));
    let at = |t: u64, e: Event| (t, e);
    let out = s.apply_batch(vec![
        at(1_000, batch(1, 7, vec![item("1", "5", false)])),
        // The same message again, first delivery: a legitimate repeat.
        at(2_000, batch(1, 7, vec![item("1", "5", false)])),
        // A redelivered copy within the window: suppressed.
        at(3_000, batch(1, 7, vec![item("1", "5", true)])),
        // A redelivered copy never committed before: applied.
        at(3_000, batch(1, 7, vec![item("1", "6", true)])),
        // Beyond the window (10 s after the last commit): applied.
        at(13_001, batch(1, 7, vec![item("1", "5", true)])),
    ]);
    let outcomes: Vec<(u32, u32)> = out
        .iter()
        .map(|r| match r.outcome {
            Outcome::Ingested {
                applied,
                suppressed,
                ..
            } => (applied, suppressed),
            ref o => panic!("{o:?}"),
        })
        .collect();
    assert_eq!(outcomes, vec![(1, 0), (1, 0), (0, 1), (1, 0), (1, 0)]);
    let t = totals(&s);
    assert_eq!((t.applied, t.suppressed), (4, 1));
}

#[test]
fn dedupe_records_expire_with_the_window() {
    let mut s = MemState::default();
    s.apply(owners(1, &[7]));
    s.apply_batch(vec![(1_000, batch(1, 7, vec![item("1", "5", false)]))]);
    let count = |s: &MemState| {
        s.data
            .keys()
            .filter(|(cf, k)| *cf == Cf::Ingest && k[0] == keys::ingest::DEDUPE_PREFIX)
            .count()
    };
    assert_eq!(count(&s), 1);
    s.apply_batch(vec![(20_000, batch(1, 7, vec![item("2", "1", false)]))]);
    // The first record is gone; only the new one is left.
    assert_eq!(count(&s), 1);
}

#[test]
fn a_message_committed_twice_keeps_the_later_record_and_both_expire() {
    let mut s = MemState::default();
    s.apply(owners(1, &[7]));
    let count = |s: &MemState, prefix: u8| {
        s.data
            .keys()
            .filter(|(cf, k)| *cf == Cf::Ingest && k[0] == prefix)
            .count()
    };
    // The same reading twice, both fresh (a device repeating itself): both
    // apply, and the dedupe record is the later commit's.
    s.apply_batch(vec![(1_000, batch(1, 7, vec![item("1", "5", false)]))]);
    s.apply_batch(vec![(5_000, batch(1, 7, vec![item("1", "5", false)]))]);
    assert_eq!(totals(&s).applied, 2);
    assert_eq!(count(&s, keys::ingest::DEDUPE_PREFIX), 1);
    assert_eq!(count(&s, keys::ingest::EXPIRY_PREFIX), 2);
    // A redelivery within the window of the later commit is suppressed,
    // though the first commit is outside it.
    s.apply_batch(vec![(12_000, batch(1, 7, vec![item("1", "5", true)]))]);
    assert_eq!(totals(&s).suppressed, 1);
    // Past both windows, the record and both expiry keys are gone; only
    // the new message's are left.
    s.apply_batch(vec![(20_000, batch(1, 7, vec![item("2", "1", false)]))]);
    assert_eq!(count(&s, keys::ingest::DEDUPE_PREFIX), 1);
    assert_eq!(count(&s, keys::ingest::EXPIRY_PREFIX), 1);
}

#[test]
fn commands_are_issued_attempted_and_settled() {
    let mut s = MemState::default();
    s.apply(owners(1, &[7]));
    s.apply(batch(1, 7, vec![item("1", "5", false)]));
    let issue = |s: &mut MemState| {
        s.apply(Event::CommandIssued {
            device: "h/c/1".into(),
            post_type: "set".into(),
            json: "1".into(),
            attempts_max: 2,
        })
    };
    assert_eq!(issue(&mut s).outcome, Outcome::Command { id: 1 });
    assert_eq!(issue(&mut s).outcome, Outcome::Command { id: 2 });
    s.apply(Event::CommandAttempted { id: 1, attempt: 1 });
    // A repeated attempt record changes nothing.
    s.apply(Event::CommandAttempted { id: 1, attempt: 1 });
    let reply = IngestItem {
        digest: Bytes::from(vec![9; 16]),
        redelivered: false,
        body: IngestBody::Reply {
            host: "h".into(),
            zone: "z".into(),
            class: "c".into(),
            device_id: "1".into(),
            command_id: 1,
            json: "\"ok\"".into(),
        },
    };
    s.apply(batch(1, 7, vec![reply]));
    s.apply(Event::CommandAttempted { id: 2, attempt: 1 });
    s.apply(Event::CommandFailed {
        id: 2,
        reason: "no reply".into(),
    });
    let d = s.doc(Cf::Devices, "h/c/1");
    assert_eq!(d["commands"]["1"]["state"], "acknowledged");
    assert_eq!(d["commands"]["1"]["attempts"], 1);
    assert_eq!(d["commands"]["1"]["reply"], "ok");
    assert_eq!(d["commands"]["2"]["state"], "failed");
    let stats = s.doc(Cf::Stats, "device/h/c/1");
    // The data message, two commands published and the reply to the
    // first.
    assert_eq!(stats["today_attempts"], 4, "{stats}");
    assert_eq!(stats["today_failures"], 1, "{stats}");
    assert_eq!(stats["counters"]["commands"]["total"], 2, "{stats}");
    assert_eq!(stats["counters"]["commands_failed"]["total"], 1, "{stats}");
    assert_eq!(stats["counters"]["messages"]["total"], 2, "{stats}");
    // Nothing is pending any more; an unknown device is refused.
    assert!(s
        .data
        .keys()
        .all(|(cf, k)| *cf != Cf::Commands || k[0] != keys::commands::PENDING_PREFIX));
    assert!(matches!(
        s.apply(Event::CommandIssued {
            device: "h/c/404".into(),
            post_type: "set".into(),
            json: "1".into(),
            attempts_max: 2,
        })
        .outcome,
        Outcome::Rejected(Rejection::NotFound(_))
    ));
}

#[test]
fn quotas_changed_within_a_batch_apply_to_the_events_after_them() {
    use utopia_raft::event::Quotas;
    let register = |id: &str| {
        (
            1_000,
            Event::DeviceRegistered {
                host: "h".into(),
                zone: "z".into(),
                class: "c".into(),
                device_id: id.into(),
            },
        )
    };
    let mut s = MemState::default();
    // The first registration reads the quotas (none yet) into the
    // batch; the change after it must not leave that reading in place.
    let r = s.apply_batch(vec![
        register("1"),
        (
            1_000,
            Event::QuotasChanged(Quotas {
                devices_per_host_max: 1,
                ..Quotas::default()
            }),
        ),
        register("2"),
    ]);
    assert!(matches!(r[0].outcome, Outcome::Device { .. }), "{r:?}");
    assert!(
        matches!(r[2].outcome, Outcome::Rejected(Rejection::Quota(_))),
        "{r:?}"
    );
    assert!(s.get(Cf::Devices, b"h/c/2").unwrap().is_none());
}

#[test]
fn quotas_bound_devices_per_host_leases_and_pending_commands() {
    use utopia_raft::event::Quotas;
    let quota = |r: &Response| matches!(r.outcome, Outcome::Rejected(Rejection::Quota(_)));
    let mut s = MemState::default();
    s.apply(owners(1, &[7]));
    // Two devices of host h before any quota; their count is then
    // dropped, as in a state written before counts were kept.
    s.apply(batch(
        1,
        7,
        vec![item("1", "1", false), item("2", "1", false)],
    ));
    s.data
        .remove(&(Cf::DeviceIndex, keys::host_devices_key("h")))
        .expect("the count is kept");
    s.apply(Event::QuotasChanged(Quotas {
        devices_per_host_max: 2,
        leases_max: 1,
        commands_pending_max: 1,
        command_retention_ms: 1000,
        require_class: false,
    }));

    // A third device of h: its message is dropped and counted (and
    // committed, so it is acknowledged); known devices go on.
    let r = s.apply(batch(
        1,
        7,
        vec![item("3", "1", false), item("1", "2", false)],
    ));
    assert_eq!(
        r.outcome,
        Outcome::Ingested {
            applied: 1,
            suppressed: 0,
            rejected: 1
        }
    );
    assert_eq!(totals(&s).over_quota, 1);
    assert!(s.get(Cf::Devices, b"h/c/3").unwrap().is_none());
    let register = |host: &str, id: &str| Event::DeviceRegistered {
        host: host.into(),
        zone: "z".into(),
        class: "c".into(),
        device_id: id.into(),
    };
    assert!(quota(&s.apply(register("h", "4"))));
    assert!(matches!(
        s.apply(register("g", "4")).outcome,
        Outcome::Device { .. }
    ));

    // One lease at a time, counted from the records when the count is
    // missing.
    assert!(!quota(&s.apply(Event::LeaseGrant { id: 1, ttl_s: 60 })));
    assert!(quota(&s.apply(Event::LeaseGrant { id: 2, ttl_s: 60 })));
    s.data.remove(&(Cf::SmMeta, meta::LEASE_COUNT.to_vec()));
    assert!(quota(&s.apply(Event::LeaseGrant { id: 2, ttl_s: 60 })));
    s.apply(Event::LeaseRevoke { id: 1 });
    assert!(!quota(&s.apply(Event::LeaseGrant { id: 2, ttl_s: 60 })));

    // One pending command at a time; settled ones expire after the
    // retention, when a later command is issued.
    let issue = |s: &mut MemState, at: u64| {
        s.apply_batch(vec![(
            at,
            Event::CommandIssued {
                device: "h/c/1".into(),
                post_type: "set".into(),
                json: "1".into(),
                attempts_max: 2,
            },
        )])
        .pop()
        .unwrap()
    };
    let fail = |s: &mut MemState, at: u64, id: u64| {
        s.apply_batch(vec![(
            at,
            Event::CommandFailed {
                id,
                reason: "no reply".into(),
            },
        )]);
    };
    let record = |s: &MemState, id: u64| {
        s.get(Cf::Commands, &keys::commands::record_key(id))
            .unwrap()
            .is_some()
    };
    assert_eq!(issue(&mut s, 1000).outcome, Outcome::Command { id: 1 });
    assert!(quota(&issue(&mut s, 1100)));
    fail(&mut s, 1500, 1);
    assert_eq!(issue(&mut s, 1600).outcome, Outcome::Command { id: 2 });
    assert!(record(&s, 1), "settled 100 ms ago: kept");
    fail(&mut s, 1700, 2);
    assert_eq!(issue(&mut s, 5000).outcome, Outcome::Command { id: 3 });
    assert!(
        !record(&s, 1) && !record(&s, 2),
        "settled long ago: expired"
    );
    assert!(record(&s, 3));
}

/// A state that counts the reads of stats documents.
struct CountingReads<'a> {
    inner: &'a MemState,
    stats_gets: std::cell::RefCell<BTreeMap<Vec<u8>, usize>>,
}

impl StateRead for CountingReads<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if cf == Cf::Stats {
            *self
                .stats_gets
                .borrow_mut()
                .entry(key.to_vec())
                .or_default() += 1;
        }
        self.inner.get(cf, key)
    }

    fn scan<'a>(&'a self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'a> {
        self.inner.scan(cf, start, end)
    }
}

#[test]
fn a_batch_reads_and_writes_each_stats_document_once() {
    let mut s = MemState::default();
    s.apply(owners(1, &[7]));
    s.apply(batch(
        1,
        7,
        vec![item("1", "0", false), item("2", "0", false)],
    ));
    let counting = CountingReads {
        inner: &s,
        stats_gets: Default::default(),
    };
    let mut applier = Applier::new(&counting);
    // Two ingest batches of 100 messages for two devices, as entries of
    // member 3 (its proposals), in one apply batch.
    for round in 0..2 {
        let items = (0..100)
            .map(|n| {
                item(
                    ["1", "2"][n % 2],
                    &(round * 1000 + n as u64).to_string(),
                    false,
                )
            })
            .collect();
        let r = applier
            .apply_entry(2, 3, &Request::new(2_000 + round, batch(1, 7, items)))
            .unwrap();
        assert!(
            matches!(r.outcome, Outcome::Ingested { applied: 100, .. }),
            "{r:?}"
        );
    }
    let (writes, _) = applier.finish();
    let gets = counting.stats_gets.into_inner();
    for id in ["device/h/c/1", "device/h/c/2", "fellow/7", "fellow/3"] {
        assert_eq!(gets.get(id.as_bytes()), Some(&1), "{id}: {gets:?}");
    }
    let written: Vec<_> = writes
        .iter()
        .filter(|(cf, _, _)| *cf == Cf::Stats)
        .map(|(_, k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        written,
        ["device/h/c/1", "device/h/c/2", "fellow/3", "fellow/7"]
    );
    for (k, v) in writes {
        if let Some(v) = v {
            s.data.insert(k, v);
        }
    }
    assert_eq!(
        s.doc(Cf::Stats, "device/h/c/1")["counters"]["messages"]["total"],
        101
    );
    assert_eq!(
        s.doc(Cf::Stats, "fellow/7")["counters"]["messages_ingested"]["total"],
        202
    );
    assert_eq!(
        s.doc(Cf::Stats, "fellow/3")["counters"]["proposals"]["total"],
        2
    );
}

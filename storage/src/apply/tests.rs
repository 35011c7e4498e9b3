//! Event application against an in-memory state: no RocksDB.

use std::collections::BTreeMap;

use super::*;
use utopia_raft::event::{DeviceData, Event, Outcome, Request};

/// A state held in a map, committed the way the state machine commits.
#[derive(Default)]
struct MemState {
    data: BTreeMap<(Cf, Vec<u8>), Vec<u8>>,
}

impl StateRead for MemState {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data.get(&(cf, key.to_vec())).cloned())
    }

    fn scan<'a>(&'a self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'a> {
        let end = end.map(<[u8]>::to_vec);
        Box::new(
            self.data
                .range((cf, start.to_vec())..)
                .take_while(move |((c, k), _)| *c == cf && end.as_ref().is_none_or(|e| k < e))
                .map(|((_, k), v)| Ok((k.clone(), v.clone()))),
        )
    }
}

impl MemState {
    /// Applies events one batch at a time, returning the responses.
    fn apply_batch(&mut self, events: Vec<(u64, Event)>) -> Vec<Response> {
        let mut applier = Applier::new(&*self);
        let mut out = Vec::new();
        for (at, e) in events {
            out.push(applier.apply(&Request::new(at, e)).unwrap());
        }
        let (writes, _) = applier.finish();
        for (k, v) in writes {
            match v {
                Some(v) => self.data.insert(k, v),
                None => self.data.remove(&k),
            };
        }
        out
    }

    fn apply(&mut self, e: Event) -> Response {
        self.apply_batch(vec![(1_000, e)]).pop().unwrap()
    }

    fn kv(&self, key: &str) -> Option<KeyValue> {
        self.get(Cf::Kv, key.as_bytes())
            .unwrap()
            .map(|b| event::decode(&b).unwrap())
    }

    /// Every history record's (key, revision), in key order.
    fn history(&self) -> Vec<(Vec<u8>, i64)> {
        self.scan(Cf::KvHistory, &[], None)
            .map(|r| keys::parse_history_key(&r.unwrap().0).unwrap())
            .collect()
    }

    /// The revision of every change in the feed, in order.
    fn change_revisions(&self) -> Vec<i64> {
        self.scan(Cf::KvChanges, &[], None)
            .map(|r| keys::parse_change_key(&r.unwrap().0).unwrap().0)
            .collect()
    }

    fn doc(&self, cf: Cf, id: &str) -> Value {
        serde_json::from_slice(
            &self
                .get(cf, id.as_bytes())
                .unwrap()
                .expect("document exists"),
        )
        .unwrap()
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.as_bytes().to_vec())
}

fn put(k: &str, v: &str) -> Event {
    Event::Put(PutOp {
        key: b(k),
        value: b(v),
        lease: 0,
        prev_kv: true,
    })
}

fn del(k: &str, end: &str) -> Event {
    Event::Delete(DeleteOp {
        key: b(k),
        range_end: b(end),
        prev_kv: true,
    })
}

#[test]
fn puts_advance_revision_and_versions() {
    let mut s = MemState::default();
    assert_eq!(s.apply(put("a", "1")).revision, 1);
    assert_eq!(s.apply(put("b", "1")).revision, 2);
    let r = s.apply(put("a", "2"));
    assert_eq!(r.revision, 3);
    let Outcome::Put { prev: Some(prev) } = r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(prev.value, b("1"));
    let a = s.kv("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
}

#[test]
fn delete_range_deletes_in_one_revision() {
    let mut s = MemState::default();
    for k in ["a", "b", "c", "d"] {
        s.apply(put(k, "x"));
    }
    let r = s.apply(del("b", "d"));
    assert_eq!(r.revision, 5);
    assert!(matches!(r.outcome, Outcome::Delete { deleted: 2, .. }));
    assert!(s.kv("b").is_none() && s.kv("c").is_none() && s.kv("d").is_some());
    // Deleting nothing does not advance the revision.
    let r = s.apply(del("zz", ""));
    assert_eq!(r.revision, 5);
    // Recreated keys start a new life.
    s.apply(put("b", "y"));
    let kv = s.kv("b").unwrap();
    assert_eq!((kv.create_revision, kv.version), (6, 1));
}

#[test]
fn txn_takes_both_branches() {
    let mut s = MemState::default();
    s.apply(put("k", "v1"));
    let cas = |version: i64| {
        Event::Txn(TxnOp {
            compares: vec![Compare {
                key: b("k"),
                range_end: Bytes::new(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(version),
            }],
            success: vec![TxnStep::Put(PutOp {
                key: b("k"),
                value: b("new"),
                lease: 0,
                prev_kv: false,
            })],
            failure: vec![TxnStep::Range(RangeOp {
                key: b("k"),
                range_end: Bytes::new(),
                limit: 0,
                keys_only: false,
                count_only: false,
            })],
            bytes_max: 0,
        })
    };
    let r = s.apply(cas(7));
    let Outcome::Txn {
        succeeded: false,
        results,
    } = r.outcome
    else {
        panic!("{r:?}")
    };
    assert_eq!(
        r.revision, 1,
        "a failed compare with a read-only branch writes nothing"
    );
    let StepResult::Range(range) = &results[0] else {
        panic!()
    };
    assert_eq!(range.kvs[0].value, b("v1"));
    let r = s.apply(cas(1));
    assert!(matches!(
        r.outcome,
        Outcome::Txn {
            succeeded: true,
            ..
        }
    ));
    assert_eq!(r.revision, 2);
    assert_eq!(s.kv("k").unwrap().value, b("new"));
}

fn range_step(k: &str, end: &str) -> TxnStep {
    TxnStep::Range(RangeOp {
        key: b(k),
        range_end: b(end),
        limit: 0,
        keys_only: false,
        count_only: false,
    })
}

/// Ten keys of 1 KiB each, `k0`..`k9`.
fn ten_kib() -> MemState {
    let mut s = MemState::default();
    for i in 0..10 {
        s.apply(Event::Put(PutOp {
            key: b(&format!("k{i}")),
            value: Bytes::from(vec![b'v'; 1024]),
            lease: 0,
            prev_kv: false,
        }));
    }
    s
}

#[test]
fn txn_ranges_stop_at_the_bytes_the_event_carries() {
    let mut s = ten_kib();
    // Room for about four pairs of the ten in each of two ranges' share.
    let r = s.apply(Event::Txn(TxnOp {
        compares: vec![],
        success: vec![range_step("k", "l"), range_step("k", "l")],
        failure: vec![],
        bytes_max: 4 * 1100,
    }));
    let Outcome::Txn { results, .. } = r.outcome else {
        panic!("{r:?}")
    };
    let StepResult::Range(first) = &results[0] else {
        panic!()
    };
    let StepResult::Range(second) = &results[1] else {
        panic!()
    };
    assert_eq!((first.count, first.more), (10, true));
    assert!(
        !first.kvs.is_empty() && first.kvs.len() < 10,
        "{}",
        first.kvs.len()
    );
    // The second range gets what the first left.
    assert_eq!((second.count, second.more), (10, true));
    assert!(second.kvs.len() < first.kvs.len(), "{}", second.kvs.len());
    // An entry logged before the bound travelled uses the applier's own.
    let r = s.apply(Event::Txn(TxnOp {
        compares: vec![],
        success: vec![range_step("k", "l")],
        failure: vec![],
        bytes_max: 0,
    }));
    let Outcome::Txn { results, .. } = r.outcome else {
        panic!("{r:?}")
    };
    let StepResult::Range(all) = &results[0] else {
        panic!()
    };
    assert_eq!((all.kvs.len(), all.more), (10, false));
}

#[test]
fn txn_over_its_bytes_is_rejected_whole_before_any_write() {
    let mut s = ten_kib();
    let before = s.data.clone();
    let over = |compares: Vec<Compare>, success: Vec<TxnStep>| {
        Event::Txn(TxnOp {
            compares,
            success,
            failure: vec![],
            bytes_max: 4 * 1100,
        })
    };
    let put_x = TxnStep::Put(PutOp {
        key: b("x"),
        value: b("1"),
        lease: 0,
        prev_kv: false,
    });
    let cases = [
        // A compare over a range of ten pairs.
        over(
            vec![Compare {
                key: b("k"),
                range_end: b("l"),
                op: CompareOp::Greater,
                target: CompareTarget::Version(0),
            }],
            vec![put_x.clone()],
        ),
        // A delete returning ten previous pairs.
        over(
            vec![],
            vec![
                put_x.clone(),
                TxnStep::Delete(DeleteOp {
                    key: b("k"),
                    range_end: b("l"),
                    prev_kv: true,
                }),
            ],
        ),
    ];
    for event in cases {
        let r = s.apply(event);
        assert!(
            matches!(
                r.outcome,
                Outcome::Rejected(Rejection::TooLarge { bytes_max: 4400 })
            ),
            "{r:?}"
        );
        assert_eq!(s.data, before, "nothing was written");
    }
    // The same delete without prev_kv touches only keys: within the bound.
    let r = s.apply(over(
        vec![],
        vec![TxnStep::Delete(DeleteOp {
            key: b("k"),
            range_end: b("l"),
            prev_kv: false,
        })],
    ));
    assert!(
        matches!(
            r.outcome,
            Outcome::Txn {
                succeeded: true,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(s.kv("k3").is_none());
}

#[test]
fn a_txn_is_estimated_over_both_branches_and_stops_at_the_bound() {
    let s = ten_kib();
    let applier = Applier::new(&s);
    let txn = |success: Vec<TxnStep>, failure: Vec<TxnStep>| TxnOp {
        compares: vec![],
        success,
        failure,
        bytes_max: 0,
    };
    let small = txn(vec![range_step("k0", "")], vec![]);
    let one = applier.txn_bytes(&small, 1 << 20).unwrap().unwrap();
    assert!((1024..1200).contains(&one), "{one}");
    // The larger branch counts, even if it is the failure branch.
    let large = txn(vec![range_step("k0", "")], vec![range_step("k", "l")]);
    let all = applier.txn_bytes(&large, 1 << 20).unwrap().unwrap();
    assert!(all >= 10 * 1024, "{all}");
    assert_eq!(applier.txn_bytes(&large, 5000).unwrap(), None);
}

#[test]
fn txn_rejects_a_key_written_twice() {
    let mut s = MemState::default();
    let r = s.apply(Event::Txn(TxnOp {
        compares: vec![],
        success: vec![
            TxnStep::Put(PutOp {
                key: b("k"),
                value: b("1"),
                lease: 0,
                prev_kv: false,
            }),
            TxnStep::Delete(DeleteOp {
                key: b("a"),
                range_end: b("z"),
                prev_kv: false,
            }),
        ],
        failure: vec![],
        bytes_max: 0,
    }));
    assert!(
        matches!(r.outcome, Outcome::Rejected(Rejection::DuplicateKey(_))),
        "{r:?}"
    );
    assert!(s.kv("k").is_none());
}

#[test]
fn compares_on_missing_keys_and_values() {
    let mut s = MemState::default();
    let txn = |target: CompareTarget, op| {
        Event::Txn(TxnOp {
            compares: vec![Compare {
                key: b("m"),
                range_end: Bytes::new(),
                op,
                target,
            }],
            success: vec![],
            failure: vec![],
            bytes_max: 0,
        })
    };
    let ok = |r: Response| {
        matches!(
            r.outcome,
            Outcome::Txn {
                succeeded: true,
                ..
            }
        )
    };
    assert!(ok(s.apply(txn(CompareTarget::Version(0), CompareOp::Equal))));
    assert!(!ok(
        s.apply(txn(CompareTarget::Value(b("")), CompareOp::Equal))
    ));
    s.apply(put("m", "b"));
    assert!(ok(
        s.apply(txn(CompareTarget::Value(b("a")), CompareOp::Greater))
    ));
    assert!(ok(
        s.apply(txn(CompareTarget::ModRevision(1), CompareOp::Equal))
    ));
    assert!(ok(
        s.apply(txn(CompareTarget::CreateRevision(2), CompareOp::Less))
    ));
}

#[test]
fn batch_reads_see_earlier_writes() {
    let mut s = MemState::default();
    let rs = s.apply_batch(vec![
        (1, put("a", "1")),
        (2, put("a", "2")),
        (3, del("a", "")),
    ]);
    assert_eq!(
        rs.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        matches!(&rs[2].outcome, Outcome::Delete { deleted: 1, prev } if prev[0].value == b("2"))
    );
    assert!(s.kv("a").is_none());
}

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

fn device(zone: &str, post_type: &str, path: &[&str], json: &str) -> Event {
    Event::DeviceDataUpdated(DeviceData {
        host: "gw1".into(),
        zone: zone.into(),
        class: "thermo".into(),
        device_id: "7".into(),
        post_type: post_type.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        json: json.into(),
    })
}

#[test]
fn documents_updated_many_times_in_one_batch_match_one_event_per_batch() {
    let events: Vec<(u64, Event)> = (0..40u64)
        .map(|n| {
            let zone = if n % 7 == 0 { "garage" } else { "kitchen" };
            let json = format!("{{\"n\":{n},\"t\":{}.25}}", n % 5);
            (
                100 + n,
                device(zone, "temp", &["x", &(n % 3).to_string()], &json),
            )
        })
        .collect();
    let mut together = MemState::default();
    together.apply_batch(events.clone());
    let mut apart = MemState::default();
    for e in events {
        apart.apply_batch(vec![e]);
    }
    assert_eq!(together.data, apart.data);
    assert_eq!(
        together.doc(Cf::Devices, "gw1/thermo/7")["last_seen_ms"],
        139
    );
}

#[test]
fn device_data_builds_documents_zones_and_indexes() {
    let mut s = MemState::default();
    s.apply_batch(vec![(5, device("kitchen", "temp", &[], "21.5"))]);
    s.apply_batch(vec![(
        6,
        device("kitchen", "weird", &["a", "b"], "{\"c\":1}"),
    )]);
    let d = s.doc(Cf::Devices, "gw1/thermo/7");
    assert_eq!(d["zone"], "kitchen");
    assert_eq!(d["data"]["temp"], 21.5);
    assert_eq!(
        d["data"]["weird"]["a"]["b"]["c"], 1,
        "unknown post types nest by path"
    );
    assert_eq!(d["first_seen_ms"], 5);
    assert_eq!(d["last_seen_ms"], 6);
    assert_eq!(d["topic_focus"], "/gw1/kitchen/thermo/7");
    assert_eq!(s.doc(Cf::Zones, "kitchen")["device_count"], 1);
    assert!(s
        .get(
            Cf::DeviceIndex,
            &keys::device_index_key(DeviceIndex::Zone, "kitchen", "gw1/thermo/7")
        )
        .unwrap()
        .is_some());

    // Moving zones updates both zone documents and the index.
    s.apply(device("garage", "temp", &[], "3"));
    assert_eq!(s.doc(Cf::Zones, "kitchen")["device_count"], 0);
    assert_eq!(s.doc(Cf::Zones, "garage")["device_count"], 1);
    assert!(s
        .get(
            Cf::DeviceIndex,
            &keys::device_index_key(DeviceIndex::Zone, "kitchen", "gw1/thermo/7")
        )
        .unwrap()
        .is_none());
    // Device events do not touch the key-value revision.
    assert_eq!(s.apply(put("k", "v")).revision, 1);
}

#[test]
fn a_zone_document_keeps_a_count_not_its_device_list() {
    let mut s = MemState::default();
    let register = |id: u64, zone: &str| Event::DeviceRegistered {
        host: "gw1".into(),
        zone: zone.into(),
        class: "cam".into(),
        device_id: format!("{id:04}"),
    };
    let mut stored_bytes = Vec::new();
    for id in 0..200 {
        s.apply(register(id, "hall"));
        stored_bytes.push(s.get(Cf::Zones, b"hall").unwrap().unwrap().len());
    }
    let hall = s.doc(Cf::Zones, "hall");
    assert_eq!(hall["device_count"], 200);
    assert!(
        hall.get("devices").is_none(),
        "the device list is served from the zone index, not stored: {hall}"
    );
    // What a new device rewrites does not grow with the zone (a digit or
    // two of the count at most).
    let (first, last) = (stored_bytes[0], stored_bytes[199]);
    assert!(last <= first + 2, "{first} bytes, then {last}");
    // Moving a device out counts it out; the index says which devices.
    s.apply(register(7, "yard"));
    assert_eq!(s.doc(Cf::Zones, "hall")["device_count"], 199);
    assert_eq!(s.doc(Cf::Zones, "yard")["device_count"], 1);
    assert!(s
        .get(
            Cf::DeviceIndex,
            &keys::device_index_key(DeviceIndex::Zone, "yard", "gw1/cam/0007")
        )
        .unwrap()
        .is_some());
}

#[test]
fn invalid_device_json_is_rejected_without_writes() {
    let mut s = MemState::default();
    let r = s.apply(device("z", "temp", &[], "{nope"));
    assert!(matches!(
        r.outcome,
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    // Nothing but the count of rejected events.
    assert_eq!(
        s.data.keys().collect::<Vec<_>>(),
        vec![&(Cf::SmMeta, keys::meta::EVENTS_REJECTED.to_vec())]
    );
}

#[test]
fn stats_roll_over_days() {
    let mut s = MemState::default();
    let inc = |counter| Event::StatIncremented {
        id: "d1".into(),
        kind: "device".into(),
        counter,
        by: 1,
    };
    let day = 86_400_000;
    s.apply_batch(vec![
        (day, inc(StatCounter::Attempts)),
        (day + 1, inc(StatCounter::Failures)),
    ]);
    s.apply_batch(vec![(3 * day, inc(StatCounter::Attempts))]);
    let d = s.doc(Cf::Stats, "device/d1");
    assert_eq!(d["today_attempts"], 1);
    assert_eq!(d["today_failures"], 0);
    assert_eq!(d["weekly_attempts"], 2);
    assert_eq!(d["weekly_failures"], 1);
    assert_eq!(d["days"].as_array().unwrap().len(), 2);
}

#[test]
fn configs_pick_the_heavier_proposal_and_supersede() {
    let mut s = MemState::default();
    let prop = |version, hash: &str, weight| {
        Event::ConfigProposed(ConfigVersion {
            name: "thermo".into(),
            kind: "config".into(),
            version,
            hash: hash.into(),
            xml: "<x/>".into(),
            proposer: 1,
            weight,
        })
    };
    s.apply(prop(1, "aaa", 1));
    s.apply(prop(1, "bbb", 5));
    s.apply(prop(1, "ccc", 2));
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["hash"], "bbb");
    s.apply(Event::ConfigAccepted {
        name: "thermo".into(),
        version: 1,
        hash: "bbb".into(),
    });
    s.apply(prop(2, "ddd", 1));
    s.apply(Event::ConfigAccepted {
        name: "thermo".into(),
        version: 2,
        hash: "ddd".into(),
    });
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@1")["state"], "superseded");
    assert_eq!(s.doc(Cf::XmlConfigs, "thermo@2")["state"], "accepted");
    let r = s.apply(Event::ConfigRejected {
        name: "nope".into(),
        version: 1,
        hash: "x".into(),
        reason: "r".into(),
    });
    assert!(matches!(r.outcome, Outcome::Rejected(_)));
}

#[test]
fn fellows_and_db_servers() {
    let mut s = MemState::default();
    s.apply(Event::FellowStateChanged(FellowState {
        node_id: 1,
        host: "a".into(),
        addr: "127.0.0.1:1".into(),
        active: true,
        role: utopia_raft::event::FellowRole::Leader,
        weight: 3,
    }));
    assert_eq!(s.doc(Cf::Fellows, "1")["state"], "leader");
    s.apply(Event::DbServerRegistered {
        host: "db".into(),
        port: 27017,
        kind: "mongodb".into(),
    });
    s.apply(Event::DbServerProblematic {
        host: "db".into(),
        port: 27017,
        kind: "mongodb".into(),
        reason: "down".into(),
    });
    let d = s.doc(Cf::DbServers, "db:27017:mongodb");
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("problematic"), Some("down"))
    );
}

#[test]
fn replay_is_deterministic() {
    let events = vec![
        (1, put("a", "1")),
        (2, Event::LeaseGrant { id: 9, ttl_s: 1 }),
        (
            3,
            Event::Put(PutOp {
                key: b("l"),
                value: b("x"),
                lease: 9,
                prev_kv: false,
            }),
        ),
        (4, device("z", "p", &["q"], "[1,2]")),
        (5_000, Event::LeaseExpired { id: 9 }),
        (6_000, del("a", "\0")),
    ];
    let mut one = MemState::default();
    one.apply_batch(events.clone());
    let mut two = MemState::default();
    for e in events {
        two.apply_batch(vec![e]);
    }
    assert_eq!(one.data, two.data, "one batch or many, the same bytes");
}

#[test]
fn corrupt_records_name_their_key() {
    let mut s = MemState::default();
    s.data.insert((Cf::Kv, b"bad".to_vec()), vec![0xff, 0x00]);
    let mut applier = Applier::new(&s);
    let err = applier
        .apply(&Request::new(0, put("bad", "x")))
        .unwrap_err();
    assert!(
        err.to_string().contains("kv") && err.to_string().contains("bad"),
        "{err}"
    );
}

#[test]
fn events_from_a_newer_build_stop_the_applier() {
    let s = MemState::default();
    let mut applier = Applier::new(&s);
    let mut req = Request::new(0, put("k", "v"));
    req.version = event::EVENT_VERSION + 1;
    let err = applier.apply(&req).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}

// ------------------------------------------------------------ MQTT ingest

mod ingest_events {
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
        assert_eq!(stats["today_attempts"], 2);
        assert_eq!(stats["today_failures"], 1);
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
}

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

// ------------------------------------------------------------ content errors

/// Events whose content cannot be applied are rejected alone, alike on
/// every replica: their writes are rolled back and the events beside them
/// apply. Only storage errors stop the applier.
mod content_errors {
    use super::*;
    use utopia_raft::event::{IngestBody, IngestItem, IngestMember};

    /// Applies requests as one batch (one applier), like the state machine
    /// applies a chunk of committed entries.
    fn apply_requests(s: &mut MemState, reqs: Vec<Request>) -> Vec<Response> {
        let mut applier = Applier::new(&*s);
        let out = reqs
            .iter()
            .map(|r| applier.apply(r).expect("no storage error"))
            .collect();
        let (writes, _) = applier.finish();
        for (k, v) in writes {
            match v {
                Some(v) => s.data.insert(k, v),
                None => s.data.remove(&k),
            };
        }
        out
    }

    fn rejected_total(s: &MemState) -> u64 {
        s.get(Cf::SmMeta, keys::meta::EVENTS_REJECTED)
            .unwrap()
            .map(|b| event::decode(&b).unwrap())
            .unwrap_or(0)
    }

    fn rejection(r: &Response) -> String {
        match &r.outcome {
            Outcome::Rejected(Rejection::Invalid(reason)) => reason.clone(),
            o => panic!("expected a rejection, got {o:?}"),
        }
    }

    /// JSON text nested `n` arrays deep.
    fn nested(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    fn device_index_entries(s: &MemState) -> usize {
        s.data
            .keys()
            .filter(|(cf, _)| *cf == Cf::DeviceIndex)
            .count()
    }

    #[test]
    fn a_content_error_mid_event_rolls_back_that_event_alone() {
        let mut s = MemState::default();
        // A zone document an older build wrote, too deep to decode.
        let broken = format!("{{\"zone\":\"broken\",\"devices\":{}}}", nested(200));
        s.data
            .insert((Cf::Zones, b"broken".to_vec()), broken.clone().into_bytes());
        // The device event registers a new device (index entries) and then
        // fails on the zone document: after some of its writes.
        let out = apply_requests(
            &mut s,
            vec![
                Request::new(1, put("a", "1")),
                Request::new(2, device("broken", "temp", &[], "21.5")),
                Request::new(3, put("b", "2")),
            ],
        );
        assert!(matches!(out[0].outcome, Outcome::Put { .. }));
        let reason = rejection(&out[1]);
        assert!(reason.contains("zones/broken"), "{reason}");
        assert_eq!(out[2].revision, 2, "the revision moves on");
        assert_eq!(s.kv("a").unwrap().value, b("1"));
        assert_eq!(s.kv("b").unwrap().mod_revision, 2);
        assert!(s.get(Cf::Devices, b"gw1/thermo/7").unwrap().is_none());
        assert_eq!(device_index_entries(&s), 0, "index entries rolled back");
        assert_eq!(
            s.get(Cf::Zones, b"broken").unwrap().unwrap(),
            broken.into_bytes(),
            "the zone document is left as it was"
        );
        assert_eq!(s.change_revisions(), vec![1, 2]);
        assert_eq!(rejected_total(&s), 1);
    }

    #[test]
    fn a_document_over_the_events_limit_is_refused_and_the_cache_rolled_back() {
        let big = format!("\"{}\"", "x".repeat(2000));
        let limited = |at: u64, e: Event| Request::new(at, e).with_document_bytes_max(1024);
        let mut s = MemState::default();
        let out = apply_requests(
            &mut s,
            vec![
                limited(1, device("kitchen", "temp", &[], "1")),
                // The same device, decoded and cached by the first event:
                // over the limit, so the cached document is rolled back.
                limited(2, device("kitchen", "temp", &[], &big)),
                limited(3, device("kitchen", "hum", &[], "40")),
            ],
        );
        assert!(matches!(out[0].outcome, Outcome::Device { .. }));
        let reason = rejection(&out[1]);
        assert!(
            reason.contains("devices/gw1/thermo/7") && reason.contains("1024"),
            "{reason}"
        );
        assert!(matches!(out[2].outcome, Outcome::Device { .. }));
        let d = s.doc(Cf::Devices, "gw1/thermo/7");
        assert_eq!(
            (d["data"]["temp"].clone(), d["data"]["hum"].clone()),
            (json!(1), json!(40))
        );
        assert_eq!(d["last_seen_ms"], 3);
        assert_eq!(rejected_total(&s), 1);

        // Replicas agree byte for byte: the same events one at a time give
        // the same state, and the rejected event is as if absent (but for
        // the count).
        let mut apart = MemState::default();
        for (at, json) in [(1, "1"), (2, big.as_str())] {
            apply_requests(
                &mut apart,
                vec![limited(at, device("kitchen", "temp", &[], json))],
            );
        }
        apply_requests(
            &mut apart,
            vec![limited(3, device("kitchen", "hum", &[], "40"))],
        );
        assert_eq!(apart.data, s.data);
        // Without the limit in the event, the applier's ceiling holds: the
        // same value is fine.
        let r = apply_requests(
            &mut s,
            vec![Request::new(4, device("kitchen", "temp", &[], &big))],
        );
        assert!(matches!(r[0].outcome, Outcome::Device { .. }), "{r:?}");
    }

    #[test]
    fn a_document_an_older_build_left_undecodable_rejects_only_its_events() {
        let mut s = MemState::default();
        // What the MQTT bug left behind: a 126-deep value under data/temp.
        let doc = format!(
            "{{\"id\":\"gw1/thermo/7\",\"zone\":\"kitchen\",\"data\":{{\"temp\":{}}}}}",
            nested(126)
        );
        s.data
            .insert((Cf::Devices, b"gw1/thermo/7".to_vec()), doc.into_bytes());
        for at in 0..3 {
            let out = apply_requests(
                &mut s,
                vec![
                    Request::new(at, device("kitchen", "temp", &[], "2")),
                    Request::new(at, put("k", "v")),
                ],
            );
            let reason = rejection(&out[0]);
            assert!(reason.contains("devices/gw1/thermo/7"), "{reason}");
            assert!(matches!(out[1].outcome, Outcome::Put { .. }));
        }
        assert_eq!(s.kv("k").unwrap().version, 3);
        assert_eq!(rejected_total(&s), 3);
    }

    #[test]
    fn deep_values_and_long_paths_are_refused_by_the_applier_itself() {
        let mut s = MemState::default();
        // Deeper than the applier ever stores (an entry from an older
        // build, or one that bypassed the entrance checks).
        let r = s.apply(device("z", "temp", &[], &nested(126)));
        assert!(rejection(&r).contains("nested"), "{r:?}");
        let deep_path: Vec<String> = (0..100_000).map(|i| format!("p{i}")).collect();
        let path: Vec<&str> = deep_path.iter().map(String::as_str).collect();
        let r = s.apply(device("z", "temp", &path, "1"));
        assert!(rejection(&r).contains("100000"), "{r:?}");
        // A command's payload and a device's reply, likewise.
        s.apply(device("z", "temp", &[], "1"));
        let r = s.apply(Event::CommandIssued {
            device: "gw1/thermo/7".into(),
            post_type: "set".into(),
            json: nested(100),
            attempts_max: 1,
        });
        assert!(rejection(&r).contains("nested"), "{r:?}");
        // Within the bounds, the same shapes apply.
        let ok_path: Vec<&str> = path[..16].to_vec();
        let r = s.apply(device("z", "temp", &ok_path, &nested(64)));
        assert!(matches!(r.outcome, Outcome::Device { .. }), "{r:?}");
        let d = s.doc(Cf::Devices, "gw1/thermo/7");
        assert!(d["data"]["temp"]["p0"].is_object());
        assert_eq!(rejected_total(&s), 3);
    }

    #[test]
    fn an_ingest_item_that_cannot_be_applied_is_dropped_alone() {
        let mut s = MemState::default();
        s.apply(Event::IngestOwnersChanged {
            epoch: 1,
            members: vec![IngestMember {
                node_id: 7,
                weight: 1,
            }],
            dedupe_window_ms: 10_000,
        });
        let item = |device: &str, json: &str| IngestItem {
            digest: Bytes::from(
                crate::ingest::digest(&format!("/h/z/c/{device}/t"), json.as_bytes()).to_vec(),
            ),
            redelivered: false,
            body: IngestBody::Data(DeviceData {
                host: "h".into(),
                zone: "z".into(),
                class: "c".into(),
                device_id: device.into(),
                post_type: "t".into(),
                path: vec![],
                json: json.into(),
            }),
        };
        let big = format!("\"{}\"", "x".repeat(2000));
        let items = vec![item("1", "5"), item("2", &big), item("3", "6")];
        let digests: Vec<Bytes> = items.iter().map(|i| i.digest.clone()).collect();
        let req = Request::new(
            1_000,
            Event::IngestBatch {
                epoch: 1,
                proposer: 7,
                items,
            },
        )
        .with_document_bytes_max(1024);
        let mut applier = Applier::new(&s);
        let r = applier.apply(&req).unwrap();
        let (writes, _, effects) = applier.finish_with_effects();
        for (k, v) in writes {
            match v {
                Some(v) => s.data.insert(k, v),
                None => s.data.remove(&k),
            };
        }
        assert_eq!(
            r.outcome,
            Outcome::Ingested {
                applied: 2,
                suppressed: 0,
                rejected: 1
            }
        );
        // Every item is committed (so acknowledged to the broker), the
        // dropped one too; its writes are gone.
        assert_eq!(
            effects.committed,
            digests
                .iter()
                .map(|d| <[u8; 16]>::try_from(&d[..]).unwrap())
                .collect::<Vec<_>>()
        );
        assert_eq!(s.doc(Cf::Devices, "h/c/1")["data"]["t"], 5);
        assert_eq!(s.doc(Cf::Devices, "h/c/3")["data"]["t"], 6);
        assert!(s.get(Cf::Devices, b"h/c/2").unwrap().is_none());
        // The zone counts the two devices, and its index lists them alone.
        assert_eq!(s.doc(Cf::Zones, "z")["device_count"], 2);
        for (id, listed) in [("h/c/1", true), ("h/c/2", false), ("h/c/3", true)] {
            let key = keys::device_index_key(DeviceIndex::Zone, "z", id);
            assert_eq!(
                s.get(Cf::DeviceIndex, &key).unwrap().is_some(),
                listed,
                "{id}"
            );
        }
        let totals: IngestTotals =
            event::decode(&s.get(Cf::Ingest, keys::ingest::TOTALS).unwrap().unwrap()).unwrap();
        assert_eq!((totals.applied, totals.dropped), (2, 1));
        assert_eq!(rejected_total(&s), 1);
    }
}

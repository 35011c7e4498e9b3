//! Puts, deletes and transactions, within their byte bounds.

use super::*;

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
    let txn = |success| {
        Event::Txn(TxnOp {
            compares: vec![],
            success,
            failure: vec![],
            bytes_max: 0,
        })
    };
    let put = |value: &str| {
        TxnStep::Put(PutOp {
            key: b("k"),
            value: b(value),
            lease: 0,
            prev_kv: false,
        })
    };
    let delete = || {
        TxnStep::Delete(DeleteOp {
            key: b("a"),
            range_end: b("z"),
            prev_kv: false,
        })
    };
    let mut s = MemState::default();
    // A put and a delete over its key; two puts of one key.
    for success in [vec![put("1"), delete()], vec![put("1"), put("2")]] {
        let r = s.apply(txn(success));
        assert!(
            matches!(r.outcome, Outcome::Rejected(Rejection::DuplicateKey(_))),
            "{r:?}"
        );
        assert!(s.kv("k").is_none());
    }
    // A put alone and a delete alone are checked for nothing of the kind.
    for step in [put("3"), delete()] {
        let r = s.apply(txn(vec![step]));
        assert!(!matches!(r.outcome, Outcome::Rejected(_)), "{r:?}");
    }
    assert!(s.kv("k").is_none(), "put, then deleted");
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

/// A history and a change record built around their pair's encoding are
/// the bytes serde writes for them, for every shape of record a put or a
/// delete makes and revisions of every CBOR integer width.
#[test]
fn records_built_around_the_pair_encode_as_serde_does() {
    let revisions = [
        0,
        1,
        23,
        24,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as i64,
        u32::MAX as i64 + 1,
        i64::MAX,
        -1,
        -25,
        i64::MIN,
    ];
    let pairs = [
        KeyValue::default(),
        KeyValue {
            key: b("a"),
            value: Bytes::from(vec![7u8; 300]),
            create_revision: 3,
            mod_revision: 70_000,
            version: 2,
            lease: 1 << 40,
        },
        KeyValue {
            key: b("k/\u{e9}"),
            mod_revision: i64::MAX,
            ..Default::default()
        },
    ];
    for kv in &pairs {
        let kv_cbor = codec::encode(kv);
        for deleted in [false, true] {
            let history = HistoryRecord {
                deleted,
                kv: kv.clone(),
            };
            assert_eq!(
                HistoryRecord::encode_with(deleted, &kv_cbor),
                codec::encode(&history)
            );
            for prev_revision in std::iter::once(None).chain(revisions.map(Some)) {
                let change = ChangeRecord {
                    deleted,
                    kv: kv.clone(),
                    prev_revision,
                };
                let built = ChangeRecord::encode_with(deleted, &kv_cbor, prev_revision);
                assert_eq!(built, codec::encode(&change), "{change:?}");
                assert_eq!(
                    codec::decode::<ChangeRecord>(Cf::KvChanges, b"k", &built).unwrap(),
                    change
                );
            }
        }
    }
}

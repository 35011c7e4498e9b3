//! Events whose content cannot be applied are rejected alone, alike on
//! every replica: their writes are rolled back and the events beside them
//! apply. Only storage errors stop the applier.

use super::*;
use utopia_raft::event::{AlarmKind, IngestBody, IngestItem, IngestMember, Quotas};

use crate::apply::CarriedDocs;

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

/// Applies `reqs` in batches of the given sizes (cycled), each starting
/// from the documents the one before left decoded when `carry` is set.
fn apply_in_batches(reqs: &[Request], sizes: &[usize], carry: bool) -> (MemState, Vec<Response>) {
    let mut s = MemState::default();
    let mut out = Vec::new();
    let mut carried = CarriedDocs::default();
    let mut carried_most = 0;
    let mut rest = reqs;
    let mut index = 0;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at((*size).min(rest.len()));
        rest = after;
        let mut applier = Applier::new(&s);
        if carry {
            applier = applier.carrying(std::mem::take(&mut carried));
        }
        for r in batch {
            // A new term, with another leader, every 37 entries: each is
            // counted as an election in the stats.
            let term = 1 + index / 37;
            index += 1;
            let applied = applier.apply_entry(term, term % 3 + 1, r);
            out.push(applied.expect("no storage error"));
        }
        let (writes, _, _, next) = applier.finish_carrying();
        for (k, v) in writes {
            match v {
                Some(v) => s.data.insert(k, v),
                None => s.data.remove(&k),
            };
        }
        if carry {
            carried_most = carried_most.max(next.len());
            carried = next;
        }
    }
    assert!(!carry || carried_most > 0, "documents were carried");
    (s, out)
}

#[test]
fn documents_carried_from_batch_to_batch_leave_the_bytes_reading_them_would() {
    // Devices reporting, moving between zones, over their size limit,
    // with values that do not parse, as commands' replies and as ingest
    // batches: applied one event per batch reading every document from
    // the store, and in batches of several sizes that start from the
    // documents the batch before left decoded. Same outcomes, same bytes.
    let limited = |at: u64, e: Event| Request::new(at, e).with_document_bytes_max(2048);
    let mut reqs = vec![Request::new(
        999,
        Event::IngestOwnersChanged {
            epoch: 1,
            members: vec![IngestMember {
                node_id: 7,
                weight: 1,
            }],
            dedupe_window_ms: 10_000,
        },
    )];
    let zones = ["kitchen", "hall", "attic"];
    for i in 0..120u64 {
        let zone = zones[(i as usize / 7) % zones.len()];
        let device_id = format!("{}", i % 5);
        let (post_type, json) = match i % 6 {
            0 => ("temp", format!("{}.25", i)),
            1 => (
                "hum",
                format!(
                    "{{\"v\":{i},\"pad\":\"{}\"}}",
                    "p".repeat((i as usize * 31) % 700)
                ),
            ),
            2 => ("temp", "{\"unclosed\":".to_string()),
            3 => ("state", format!("\"s{i}\"")),
            4 => ("hum", format!("{}", 1.0e-300 * i as f64)),
            _ => ("temp", format!("[{i},{}]", i * 2)),
        };
        let e = Event::DeviceDataUpdated(DeviceData {
            host: "gw1".into(),
            zone: zone.into(),
            class: "thermo".into(),
            device_id,
            post_type: post_type.into(),
            path: if i % 4 == 0 {
                vec![format!("p{}", i % 3)]
            } else {
                vec![]
            },
            json,
        });
        reqs.push(limited(1_000 + i * 10, e));
        // The settings every batch checks, changed on the way: an alarm
        // that refuses what adds data, and quotas that refuse data of a
        // class with no accepted configuration. A batch carrying either
        // past its change would refuse, or let through, the wrong events.
        let alarm = AlarmKind::NoSpace;
        let require_class = |on| {
            Event::QuotasChanged(Quotas {
                require_class: on,
                ..Quotas::default()
            })
        };
        match i {
            30 => reqs.push(Request::new(
                1_001 + i * 10,
                Event::AlarmRaised {
                    node_id: 2,
                    alarm,
                    disarms: 0,
                },
            )),
            44 => reqs.push(Request::new(
                1_001 + i * 10,
                Event::AlarmDisarmed { node_id: 2, alarm },
            )),
            60 => reqs.push(Request::new(1_001 + i * 10, require_class(true))),
            77 => reqs.push(Request::new(1_001 + i * 10, require_class(false))),
            _ => {}
        }
        // Every tenth event, an ingest batch for the same devices, its
        // last item a redelivery of the one before.
        if i % 10 == 9 {
            let items = (0..4u64)
                .map(|k| {
                    let json = format!("{}.5", i + k.min(2));
                    let device_id = k.min(2).to_string();
                    IngestItem {
                        digest: Bytes::from(
                            crate::ingest::digest(
                                &format!("/gw1/kitchen/thermo/{device_id}/t"),
                                json.as_bytes(),
                            )
                            .to_vec(),
                        ),
                        redelivered: k == 3,
                        body: IngestBody::Data(DeviceData {
                            host: "gw1".into(),
                            zone: "kitchen".into(),
                            class: "thermo".into(),
                            device_id,
                            post_type: "t".into(),
                            path: vec![],
                            json,
                        }),
                    }
                })
                .collect();
            reqs.push(limited(
                1_005 + i * 10,
                Event::IngestBatch {
                    epoch: 1,
                    proposer: 7,
                    items,
                },
            ));
        }
    }
    let (apart, out_apart) = apply_in_batches(&reqs, &[1], false);
    for sizes in [&[1usize][..], &[2, 5, 1, 9], &[7], &[200]] {
        let (together, out) = apply_in_batches(&reqs, sizes, true);
        assert_eq!(
            out.iter()
                .map(|r| format!("{:?}", r.outcome))
                .collect::<Vec<_>>(),
            out_apart
                .iter()
                .map(|r| format!("{:?}", r.outcome))
                .collect::<Vec<_>>(),
            "{sizes:?}"
        );
        assert!(
            together.data == apart.data,
            "{sizes:?}: the stored bytes differ"
        );
    }
    assert!(
        out_apart
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Rejected(_))),
        "some events were refused"
    );
    assert!(
        out_apart
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Ingested { suppressed: 1, .. })),
        "redelivered messages were suppressed"
    );
    assert!(
        out_apart
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Rejected(Rejection::Alarm { .. }))),
        "the alarm refused data"
    );
    assert!(
        out_apart.iter().any(|r| matches!(
            &r.outcome,
            Outcome::Rejected(Rejection::FailedPrecondition(reason)) if reason.contains("require_class")
        )),
        "the quotas refused data"
    );
}

#[test]
fn floats_survive_a_document_written_out_and_read_back() {
    // A batch keeps the documents it updates decoded from one event to the
    // next, and where one batch ends on a member depends on timing: a
    // member that wrote a device's document out and read it back between
    // two values must store what a member that kept it decoded stores.
    // Floats that JSON text does not bring back exactly would fork them.
    let floats = [
        "1.0715660391465826e-75",
        "-1.81996730402717e-179",
        "-1.603964615428183e+143",
        "-9.643915712060552e-234",
        "1.5860846119992697e-265",
        "0.30000000000000004",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "5e-324",
    ];
    let mut reqs = Vec::new();
    for (i, f) in floats.iter().enumerate() {
        let slot = format!("f{i}");
        reqs.push(Request::new(
            1 + i as u64,
            device("kitchen", "temp", &[&slot], f),
        ));
        reqs.push(Request::new(
            100 + i as u64,
            device("kitchen", "hum", &[], &i.to_string()),
        ));
    }
    let mut together = MemState::default();
    apply_requests(&mut together, reqs.clone());
    let mut apart = MemState::default();
    for r in reqs {
        apply_requests(&mut apart, vec![r]);
    }
    assert_eq!(
        together.doc(Cf::Devices, "gw1/thermo/7"),
        apart.doc(Cf::Devices, "gw1/thermo/7")
    );
    assert_eq!(together.data, apart.data);
    let d = together.doc(Cf::Devices, "gw1/thermo/7");
    for (i, f) in floats.iter().enumerate() {
        assert_eq!(
            d["data"]["temp"][format!("f{i}")].as_f64(),
            Some(f.parse::<f64>().unwrap()),
            "{f}"
        );
    }
}

#[test]
fn values_stored_in_place_meet_the_size_limit_as_if_each_document_were_counted() {
    // One device takes values at new paths, then replaces them, in one
    // batch: its document grows past the limit and back. The batch knows
    // a bound on the document's size and counts the document only when the
    // bound leaves the limit in doubt; applied one event per batch, every
    // document is counted. Both refuse the same events and leave the same
    // bytes.
    let limited = |at: u64, e: Event| Request::new(at, e).with_document_bytes_max(4096);
    let mut reqs = Vec::new();
    for i in 0..40u64 {
        let value = format!("\"{}\"", "v".repeat(100 + (i as usize * 37) % 300));
        let slot = format!("s{}", i % 24);
        reqs.push(limited(1 + i, device("kitchen", "temp", &[&slot], &value)));
    }
    for i in 0..24u64 {
        let slot = format!("s{i}");
        reqs.push(limited(100 + i, device("kitchen", "temp", &[&slot], "1")));
    }
    let mut together = MemState::default();
    let out = apply_requests(&mut together, reqs.clone());
    let mut apart = MemState::default();
    let mut out_apart = Vec::new();
    for r in reqs {
        out_apart.extend(apply_requests(&mut apart, vec![r]));
    }
    let refused = |out: &[Response]| {
        out.iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.outcome, Outcome::Rejected(_)))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let refused_together = refused(&out);
    assert!(!refused_together.is_empty(), "the limit was reached");
    assert!(
        refused_together.len() < 30,
        "values after a refusal still fit: {refused_together:?}"
    );
    assert_eq!(refused_together, refused(&out_apart));
    for (a, b) in out.iter().zip(&out_apart) {
        if let (Outcome::Rejected(_), Outcome::Rejected(_)) = (&a.outcome, &b.outcome) {
            assert_eq!(rejection(a), rejection(b), "the same size is reported");
        }
    }
    assert_eq!(together.data, apart.data);
    let d = together.doc(Cf::Devices, "gw1/thermo/7");
    assert_eq!(d["data"]["temp"]["s0"], 1);
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

#[test]
fn a_malformed_ingest_batch_takes_back_the_values_it_stored_in_place() {
    let owners = Event::IngestOwnersChanged {
        epoch: 1,
        members: vec![IngestMember {
            node_id: 7,
            weight: 1,
        }],
        dedupe_window_ms: 10_000,
    };
    let item = |post_type: &str, path: &[&str], json: &str| IngestItem {
        digest: Bytes::from(
            crate::ingest::digest(&format!("/h/z/c/1/{post_type}/{json}"), json.as_bytes())
                .to_vec(),
        ),
        redelivered: false,
        body: IngestBody::Data(DeviceData {
            host: "h".into(),
            zone: "z".into(),
            class: "c".into(),
            device_id: "1".into(),
            post_type: post_type.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
            json: json.into(),
        }),
    };
    let batch = |at: u64, items: Vec<IngestItem>| {
        Request::new(
            at,
            Event::IngestBatch {
                epoch: 1,
                proposer: 7,
                items,
            },
        )
    };
    let first = batch(2, vec![item("t", &[], "1"), item("m", &["a"], "2")]);
    // The device is in the batch's documents after `first`, so these
    // values are stored in place: a new nested path, a value replaced by
    // an object, a replaced value. Then an item with a malformed digest
    // rejects the whole batch.
    let mut bad = item("t", &[], "9");
    bad.digest = Bytes::from(vec![1, 2, 3]);
    let malformed = batch(
        3,
        vec![
            item("n", &["x", "y"], "3"),
            item("t", &["deeper"], "4"),
            item("m", &["a"], "5"),
            bad,
        ],
    );
    let last = batch(4, vec![item("m", &["b"], "6")]);

    let mut s = MemState::default();
    s.apply(owners.clone());
    let out = apply_requests(&mut s, vec![first.clone(), malformed, last.clone()]);
    assert!(rejection(&out[1]).contains("digest"), "{out:?}");
    let d = s.doc(Cf::Devices, "h/c/1");
    assert_eq!(d["data"], json!({"t": 1, "m": {"a": 2, "b": 6}}));
    assert_eq!(d["last_seen_ms"], 4);

    // The device's document is the one the batches without the malformed
    // one leave.
    let mut apart = MemState::default();
    apart.apply(owners);
    apply_requests(&mut apart, vec![first, last]);
    assert_eq!(
        apart.get(Cf::Devices, b"h/c/1").unwrap(),
        s.get(Cf::Devices, b"h/c/1").unwrap()
    );
}

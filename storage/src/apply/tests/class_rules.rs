//! Device data and commands typed by their class's accepted configuration,
//! `configs.require_class`, and members excluded from a class's devices
//! while they fail to hold its accepted file.

use super::*;
use crate::apply::ingest::ClassRulesRecord;
use crate::documents::{Device, Document, Fellow};
use utopia_raft::event::{
    ClassRules, CommandRule, FieldRule, FieldRuleKind, IngestBody, IngestItem, IngestMember, Quotas,
};

fn field(name: &str, required: bool, kind: FieldRuleKind) -> FieldRule {
    FieldRule {
        name: name.into(),
        required,
        kind,
    }
}

/// Class `thermostat` version 2: one post type of each kind, and two
/// commands.
fn thermostat() -> ClassRulesRecord {
    ClassRulesRecord {
        version: 2,
        hash: "ab".repeat(32),
        rules: ClassRules {
            posts: vec![
                field(
                    "temperature",
                    false,
                    FieldRuleKind::Float {
                        min: Some(-10.0),
                        max: Some(40.0),
                    },
                ),
                field(
                    "count",
                    false,
                    FieldRuleKind::Integer {
                        min: Some(0),
                        max: Some(100),
                    },
                ),
                field("open", false, FieldRuleKind::Boolean),
                field(
                    "label",
                    false,
                    FieldRuleKind::String {
                        length_max: Some(4),
                    },
                ),
                field(
                    "mode",
                    false,
                    FieldRuleKind::Enum {
                        values: vec!["heat".into(), "cool".into()],
                    },
                ),
                field("cfg", false, FieldRuleKind::Object),
                field(
                    "any",
                    false,
                    FieldRuleKind::Float {
                        min: None,
                        max: None,
                    },
                ),
            ],
            commands: vec![
                CommandRule {
                    name: "setpoint".into(),
                    payload: vec![
                        field(
                            "value",
                            true,
                            FieldRuleKind::Float {
                                min: Some(5.0),
                                max: Some(30.0),
                            },
                        ),
                        field(
                            "mode",
                            false,
                            FieldRuleKind::Enum {
                                values: vec!["heat".into(), "cool".into()],
                            },
                        ),
                    ],
                },
                CommandRule {
                    name: "reboot".into(),
                    payload: vec![],
                },
            ],
        },
    }
}

/// A state where `class` has the accepted configuration `record`.
fn with_class(s: &mut MemState, class: &str, record: &ClassRulesRecord) {
    s.data.insert(
        (Cf::Ingest, keys::ingest::class_key(class)),
        codec::encode(record),
    );
}

fn data(class: &str, id: &str, post_type: &str, path: &[&str], json: &str) -> DeviceData {
    DeviceData {
        host: "gw1".into(),
        zone: "hall".into(),
        class: class.into(),
        device_id: id.into(),
        post_type: post_type.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        json: json.into(),
    }
}

fn report(class: &str, id: &str, post_type: &str, path: &[&str], json: &str) -> Event {
    Event::DeviceDataUpdated(data(class, id, post_type, path, json))
}

fn totals(s: &MemState) -> IngestTotals {
    s.get(Cf::Ingest, keys::ingest::TOTALS)
        .unwrap()
        .map(|b| event::decode(&b).unwrap())
        .unwrap_or_default()
}

fn owners(s: &MemState) -> IngestOwners {
    s.get(Cf::Ingest, keys::ingest::OWNERS)
        .unwrap()
        .map(|b| event::decode(&b).unwrap())
        .unwrap_or_default()
}

fn device_doc(s: &MemState, id: &str) -> Device {
    Device::decode(id, &s.get(Cf::Devices, id.as_bytes()).unwrap().unwrap()).unwrap()
}

fn refusal(r: &Response) -> String {
    match &r.outcome {
        Outcome::Rejected(Rejection::Invalid(reason)) => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The reason of a refusal for want of a configuration.
fn precondition(r: &Response) -> String {
    match &r.outcome {
        Outcome::Rejected(Rejection::FailedPrecondition(reason)) => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Post type, path, value, and the stored JSON text or a part of the
/// reason it is refused.
type TypingCase<'a> = (&'a str, &'a [&'a str], &'a str, Result<&'a str, &'a str>);

#[test]
fn values_are_typed_by_their_post_type() {
    let cases: &[TypingCase] = &[
        ("temperature", &[], "21.5", Ok("21.5")),
        ("temperature", &[], "21", Ok("21.0")),
        ("temperature", &[], "-10", Ok("-10.0")),
        ("temperature", &[], "40", Ok("40.0")),
        (
            "temperature",
            &[],
            "41.5",
            Err("temperature 41.5 is above max 40 (class thermostat v2)"),
        ),
        (
            "temperature",
            &[],
            "-10.5",
            Err("temperature -10.5 is below min -10 (class thermostat v2)"),
        ),
        (
            "temperature",
            &[],
            r#""hot""#,
            Err(r#"temperature "hot" is not a float (class thermostat v2)"#),
        ),
        ("temperature", &[], "null", Err("is not a float")),
        ("temperature", &[], "[1]", Err("is not a float")),
        ("any", &[], "1e300", Ok("1e+300")),
        ("count", &[], "7", Ok("7")),
        ("count", &[], "0", Ok("0")),
        ("count", &[], "100", Ok("100")),
        ("count", &[], "101", Err("count 101 is above max 100")),
        ("count", &[], "-1", Err("count -1 is below min 0")),
        ("count", &[], "7.5", Err("count 7.5 is not an integer")),
        ("count", &[], "7.0", Err("count 7.0 is not an integer")),
        (
            "count",
            &[],
            "18446744073709551615",
            Err("count 18446744073709551615 is above max 100"),
        ),
        ("count", &[], "true", Err("is not an integer")),
        ("open", &[], "true", Ok("true")),
        ("open", &[], "1", Err("open 1 is not a boolean")),
        ("label", &[], r#""abcd""#, Ok(r#""abcd""#)),
        // Characters, not bytes.
        ("label", &[], r#""äöüß""#, Ok(r#""äöüß""#)),
        (
            "label",
            &[],
            r#""abcde""#,
            Err("label is 5 characters long, above length_max 4"),
        ),
        ("label", &[], "5", Err("label 5 is not a string")),
        ("mode", &[], r#""heat""#, Ok(r#""heat""#)),
        (
            "mode",
            &[],
            r#""dry""#,
            Err(r#"mode "dry" is not one of heat, cool"#),
        ),
        ("mode", &[], "1", Err("is not one of its enum values")),
        ("cfg", &[], r#"{"a":1}"#, Ok(r#"{"a":1}"#)),
        ("cfg", &[], "1", Err("cfg 1 is not an object")),
        ("cfg", &["a", "b"], "[1,2]", Ok("[1,2]")),
        (
            "temperature",
            &["inner"],
            "1",
            Err("post type temperature is a float; a path below it (inner) is only allowed under an object post type (class thermostat v2)"),
        ),
        (
            "humidity",
            &[],
            "50",
            Err("post type humidity is not declared (class thermostat v2)"),
        ),
    ];
    for (i, (post, path, json, want)) in cases.iter().enumerate() {
        let mut s = MemState::default();
        with_class(&mut s, "thermostat", &thermostat());
        let id = i.to_string();
        let r = s.apply(report("thermostat", &id, post, path, json));
        let doc_id = format!("gw1/thermostat/{id}");
        match want {
            Ok(stored) => {
                assert_eq!(
                    r.outcome,
                    Outcome::Device { id: doc_id.clone() },
                    "{post} {json}"
                );
                let mut at = &s.doc(Cf::Devices, &doc_id)["data"][post];
                for p in *path {
                    at = &at[p];
                }
                assert_eq!(at.to_string(), *stored, "{post} {path:?} {json}");
            }
            Err(part) => {
                let reason = refusal(&r);
                assert!(reason.contains(part), "{post} {json}: {reason}");
                assert!(
                    s.get(Cf::Devices, doc_id.as_bytes()).unwrap().is_none(),
                    "a refused value registers nothing: {post} {json}"
                );
            }
        }
    }
}

#[test]
fn a_float_is_stored_as_a_float_in_the_document_bytes() {
    let mut s = MemState::default();
    with_class(&mut s, "thermostat", &thermostat());
    s.apply(report("thermostat", "1", "temperature", &[], "21"));
    let bytes = s
        .get(Cf::Devices, b"gw1/thermostat/1")
        .unwrap()
        .expect("stored");
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains(r#""data":{"temperature":21.0}"#), "{text}");
    assert!(text.contains(r#""value":21.0"#), "{text}");
}

#[test]
fn refusals_are_counted_for_the_cluster_and_the_device_and_change_nothing_else() {
    let mut s = MemState::default();
    with_class(&mut s, "thermostat", &thermostat());
    s.apply(report("thermostat", "1", "temperature", &[], "20"));
    let before = device_doc(&s, "gw1/thermostat/1");
    let r = s.apply_batch(vec![(
        5_000,
        report("thermostat", "1", "temperature", &[], "99"),
    )]);
    assert_eq!(
        refusal(&r[0]),
        "temperature 99 is above max 40 (class thermostat v2)"
    );
    let after = device_doc(&s, "gw1/thermostat/1");
    assert_eq!(after.data, before.data);
    assert_eq!(after.last, before.last);
    assert_eq!(after.last_seen_ms, before.last_seen_ms);
    assert_eq!(after.rejected_total, Some(1));
    let last = after.last_rejected.expect("the last refusal is shown");
    assert_eq!(
        last.reason,
        "temperature 99 is above max 40 (class thermostat v2)"
    );
    assert_eq!(last.at_ms, 5_000);
    assert_eq!(totals(&s).class_refused, 1);
    // Not a content error: the event is answered, not counted as one that
    // could not be applied.
    assert_eq!(
        s.get(Cf::SmMeta, meta::EVENTS_REJECTED).unwrap(),
        None,
        "a refusal by the class is an answer"
    );
    s.apply(report("thermostat", "1", "mode", &[], "3"));
    assert_eq!(device_doc(&s, "gw1/thermostat/1").rejected_total, Some(2));
    assert_eq!(totals(&s).class_refused, 2);
}

fn ingest_item(n: u8, d: DeviceData) -> IngestItem {
    IngestItem {
        digest: Bytes::from(vec![n; 16]),
        redelivered: false,
        body: IngestBody::Data(d),
    }
}

#[test]
fn in_a_batch_the_refused_items_are_dropped_and_the_valid_ones_apply() {
    let mut s = MemState::default();
    with_class(&mut s, "thermostat", &thermostat());
    s.apply(Event::IngestOwnersChanged {
        epoch: 1,
        members: vec![IngestMember {
            node_id: 1,
            weight: 1,
        }],
        dedupe_window_ms: 10_000,
    });
    let r = s.apply(Event::IngestBatch {
        epoch: 1,
        proposer: 1,
        items: vec![
            ingest_item(1, data("thermostat", "1", "temperature", &[], "21")),
            ingest_item(2, data("thermostat", "1", "temperature", &[], "41.5")),
            ingest_item(3, data("thermostat", "1", "temperature", &[], r#""x""#)),
            ingest_item(4, data("thermostat", "2", "humidity", &[], "3")),
            ingest_item(5, data("other", "1", "whatever", &["a"], r#"{"b":1}"#)),
        ],
    });
    assert_eq!(
        r.outcome,
        Outcome::Ingested {
            applied: 2,
            suppressed: 0,
            rejected: 3
        }
    );
    let t = totals(&s);
    assert_eq!((t.applied, t.dropped, t.class_refused), (2, 3, 3));
    assert_eq!(
        s.doc(Cf::Devices, "gw1/thermostat/1")["data"]["temperature"],
        json!(21.0)
    );
    let doc = device_doc(&s, "gw1/thermostat/1");
    assert_eq!(doc.rejected_total, Some(2));
    assert_eq!(
        doc.last_rejected.unwrap().reason,
        r#"temperature "x" is not a float (class thermostat v2)"#
    );
    // A new device whose first value is refused is not registered.
    assert!(s.get(Cf::Devices, b"gw1/thermostat/2").unwrap().is_none());
    // A class without a configuration stays untyped.
    assert_eq!(
        s.doc(Cf::Devices, "gw1/other/1")["data"]["whatever"],
        json!({"a": {"b": 1}})
    );
}

fn require_class(on: bool) -> Event {
    Event::QuotasChanged(Quotas {
        require_class: on,
        ..Quotas::default()
    })
}

#[test]
fn without_a_configuration_data_is_untyped_unless_one_is_required() {
    let mut s = MemState::default();
    let r = s.apply(report("plain", "1", "t", &["x"], r#""anything""#));
    assert!(matches!(r.outcome, Outcome::Device { .. }));
    let untyped = s.get(Cf::Devices, b"gw1/plain/1").unwrap().unwrap();
    // Nothing a build without class typing would not write.
    let text = String::from_utf8(untyped).unwrap();
    assert!(!text.contains("rejected"), "{text}");
    assert!(s.get(Cf::Ingest, keys::ingest::TOTALS).unwrap().is_none());

    s.apply(require_class(true));
    let r = s.apply(report("plain", "1", "t", &[], "1"));
    assert_eq!(
        precondition(&r),
        "class plain has no accepted configuration (configs.require_class)"
    );
    assert_eq!(device_doc(&s, "gw1/plain/1").rejected_total, Some(1));
    assert_eq!(totals(&s).class_refused, 1);
    // A class with a configuration is typed as before.
    with_class(&mut s, "thermostat", &thermostat());
    let r = s.apply(report("thermostat", "1", "temperature", &[], "1"));
    assert!(matches!(r.outcome, Outcome::Device { .. }), "{r:?}");

    s.apply(require_class(false));
    let r = s.apply(report("plain", "1", "t", &[], "2"));
    assert!(matches!(r.outcome, Outcome::Device { .. }), "{r:?}");
}

#[test]
fn a_class_record_written_in_the_batch_types_the_items_after_it() {
    let mut s = MemState::default();
    let mut applier = Applier::new(&s);
    let at = |n: &str| Request::new(1_000, report("thermostat", "1", "temperature", &[], n));
    let r = applier.apply(&at("99")).unwrap();
    assert!(matches!(r.outcome, Outcome::Device { .. }), "untyped first");
    applier.put(
        Cf::Ingest,
        keys::ingest::class_key("thermostat"),
        codec::encode(&thermostat()),
    );
    let r = applier.apply(&at("99")).unwrap();
    assert!(matches!(r.outcome, Outcome::Rejected(_)), "{r:?}");
    applier.delete(Cf::Ingest, keys::ingest::class_key("thermostat"));
    let r = applier.apply(&at("99")).unwrap();
    assert!(matches!(r.outcome, Outcome::Device { .. }), "untyped again");
    let (writes, _) = applier.finish();
    for (k, v) in writes {
        if let Some(v) = v {
            s.data.insert(k, v);
        }
    }
}

fn command(post_type: &str, json: &str) -> Event {
    Event::CommandIssued {
        device: "gw1/thermostat/1".into(),
        post_type: post_type.into(),
        json: json.into(),
        attempts_max: 3,
    }
}

#[test]
fn commands_are_checked_against_the_class() {
    let mut s = MemState::default();
    with_class(&mut s, "thermostat", &thermostat());
    s.apply(report("thermostat", "1", "temperature", &[], "20"));
    let cases: &[(&str, &str, Result<(), &str>)] = &[
        ("setpoint", r#"{"value":21.5}"#, Ok(())),
        ("setpoint", r#"{"value":21,"mode":"cool"}"#, Ok(())),
        ("reboot", "{}", Ok(())),
        ("reboot", "null", Ok(())),
        (
            "explode",
            "{}",
            Err("command explode is not declared (class thermostat v2)"),
        ),
        (
            "setpoint",
            "{}",
            Err("command setpoint field value is required (class thermostat v2)"),
        ),
        (
            "setpoint",
            r#"{"value":31}"#,
            Err("command setpoint field value 31 is above max 30 (class thermostat v2)"),
        ),
        (
            "setpoint",
            r#"{"value":"warm"}"#,
            Err(r#"command setpoint field value "warm" is not a float"#),
        ),
        (
            "setpoint",
            r#"{"value":20,"mode":"dry"}"#,
            Err(r#"command setpoint field mode "dry" is not one of heat, cool"#),
        ),
        (
            "setpoint",
            r#"{"value":20,"speed":1}"#,
            Err("command setpoint field speed is not declared"),
        ),
        (
            "setpoint",
            "20",
            Err("command setpoint payload 20 is not an object"),
        ),
        (
            "reboot",
            r#"{"now":true}"#,
            Err("command reboot field now is not declared"),
        ),
    ];
    for (post, json, want) in cases {
        let r = s.apply(command(post, json));
        match want {
            Ok(()) => assert!(
                matches!(r.outcome, Outcome::Command { .. }),
                "{post} {json}: {r:?}"
            ),
            Err(part) => {
                let reason = refusal(&r);
                assert!(reason.contains(part), "{post} {json}: {reason}");
            }
        }
    }
    // Refused commands leave no record: ids 1..=4 went to the accepted.
    let last: u64 = s
        .get(Cf::Commands, keys::commands::LAST_ID)
        .unwrap()
        .map(|b| event::decode(&b).unwrap())
        .unwrap();
    assert_eq!(last, 4);

    // Under require_class, a class without a configuration takes none.
    s.apply(report("plain", "1", "t", &[], "1"));
    s.apply(require_class(true));
    let r = s.apply(Event::CommandIssued {
        device: "gw1/plain/1".into(),
        post_type: "any".into(),
        json: "{}".into(),
        attempts_max: 3,
    });
    assert_eq!(
        precondition(&r),
        "class plain has no accepted configuration (configs.require_class)"
    );
}

// ---- members excluded from a class's devices

/// An accepted `thermostat@2`, and owners 1, 2, 3 in epoch 1.
fn synced_cluster() -> MemState {
    let mut s = MemState::default();
    s.data.insert(
        (Cf::XmlConfigs, b"thermostat@2".to_vec()),
        br#"{"hash":"aa","id":"thermostat@2","name":"thermostat","proposed_ms":1,"proposer":1,"state":"accepted","type":"config","version":2,"weight":1,"xml":"<x/>"}"#.to_vec(),
    );
    s.data.insert(
        (Cf::XmlConfigs, b"thermostat@1".to_vec()),
        br#"{"hash":"bb","id":"thermostat@1","name":"thermostat","proposed_ms":1,"proposer":1,"state":"superseded","type":"config","version":1,"weight":1,"xml":"<y/>"}"#.to_vec(),
    );
    s.apply(Event::IngestOwnersChanged {
        epoch: 1,
        members: (1..=3)
            .map(|node_id| IngestMember { node_id, weight: 1 })
            .collect(),
        dedupe_window_ms: 10_000,
    });
    s
}

fn sync(node: u64, version: u64, failing: bool) -> Event {
    Event::ConfigSyncState {
        node,
        name: "thermostat".into(),
        version,
        failing,
        reason: if failing {
            "read back hash differs".into()
        } else {
            String::new()
        },
    }
}

/// A thermostat device that node `node` owns while nothing is excluded.
fn device_of(node: u64) -> String {
    let o = IngestOwners {
        epoch: 1,
        members: (1..=3)
            .map(|node_id| IngestMember { node_id, weight: 1 })
            .collect(),
        ..IngestOwners::default()
    };
    (1..)
        .map(|i| format!("gw1/thermostat/{i}"))
        .find(|d| o.owner(d) == Some(node))
        .expect("some device")
}

#[test]
fn a_failing_member_owns_none_of_the_class_until_it_is_cleared() {
    let mut s = synced_cluster();
    let device = device_of(2);
    let other_class = (1..)
        .map(|i| format!("gw1/plain/{i}"))
        .find(|d| owners(&s).owner(d) == Some(2))
        .unwrap();
    let r = s.apply_batch(vec![(2_000, sync(2, 2, true))]);
    assert_eq!(r[0].outcome, Outcome::Done);
    let o = owners(&s);
    assert_eq!(o.epoch, 2, "an exclusion is a new epoch");
    assert_eq!(o.excluded, BTreeMap::from([("thermostat".into(), vec![2])]));
    let owner = o.owner(&device).unwrap();
    assert_ne!(owner, 2, "its devices of the class move");
    assert_eq!(o.owner(&other_class), Some(2), "other classes stay");

    // The version lists it, its fellows document warns.
    let doc = s.doc(Cf::XmlConfigs, "thermostat@2");
    assert_eq!(
        doc["failing"],
        json!([{"node": 2, "reason": "read back hash differs", "since_ms": 2_000}])
    );
    let fellow = Fellow::decode("2", &s.get(Cf::Fellows, b"2").unwrap().unwrap()).unwrap();
    assert_eq!(fellow.config_failing.len(), 1);
    assert_eq!(fellow.config_failing[0].name, "thermostat");
    assert_eq!(fellow.config_failing[0].reason, "read back hash differs");

    // The applier agrees: the failing member's batch for the device is
    // refused, the new owner's applies.
    let (host, id) = device.split_once("/thermostat/").unwrap();
    let item = IngestItem {
        digest: Bytes::from(vec![9; 16]),
        redelivered: false,
        body: IngestBody::Data(DeviceData {
            host: host.into(),
            zone: "z".into(),
            class: "thermostat".into(),
            device_id: id.into(),
            post_type: "t".into(),
            path: vec![],
            json: "1".into(),
        }),
    };
    let batch = |proposer: u64| Event::IngestBatch {
        epoch: 2,
        proposer,
        items: vec![item.clone()],
    };
    assert!(matches!(
        s.apply(batch(2)).outcome,
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    assert!(matches!(
        s.apply(batch(owner)).outcome,
        Outcome::Ingested { applied: 1, .. }
    ));

    // Saying it again changes nothing; a new membership keeps it.
    assert_eq!(s.apply(sync(2, 2, true)).outcome, Outcome::Done);
    assert_eq!(owners(&s).epoch, 2);
    s.apply(Event::IngestOwnersChanged {
        epoch: 3,
        members: (1..=3)
            .map(|node_id| IngestMember { node_id, weight: 1 })
            .collect(),
        dedupe_window_ms: 10_000,
    });
    assert_eq!(owners(&s).excluded.len(), 1, "membership keeps it");

    // Cleared: a new epoch, its devices back, the warnings gone.
    assert_eq!(s.apply(sync(2, 2, false)).outcome, Outcome::Done);
    let o = owners(&s);
    assert_eq!(o.epoch, 4);
    assert!(o.excluded.is_empty());
    assert_eq!(o.owner(&device), Some(2));
    assert!(s
        .doc(Cf::XmlConfigs, "thermostat@2")
        .get("failing")
        .is_none());
    assert!(s.doc(Cf::Fellows, "2").get("config_failing").is_none());
    // Clearing what is clear changes nothing.
    assert_eq!(s.apply(sync(2, 2, false)).outcome, Outcome::Done);
    assert_eq!(owners(&s).epoch, 4);
}

#[test]
fn when_every_member_fails_all_of_them_own_the_class_again() {
    let mut s = synced_cluster();
    let device = device_of(3);
    s.apply(sync(1, 2, true));
    s.apply(sync(2, 2, true));
    assert_eq!(owners(&s).owner(&device), Some(3), "the one left");
    s.apply(sync(3, 2, true));
    let o = owners(&s);
    assert_eq!(o.epoch, 4);
    assert_eq!(o.excluded["thermostat"], vec![1, 2, 3]);
    assert_eq!(
        o.owner(&device),
        Some(3),
        "no member left: ownership as without exclusions"
    );
    // A member with weight 0 does not count as one left.
    let mut o = o;
    o.excluded.insert("thermostat".into(), vec![1, 2]);
    o.members[2].weight = 0;
    assert!(o.owner(&device).is_some());
}

#[test]
fn only_the_accepted_version_is_synced() {
    let mut s = synced_cluster();
    assert!(
        refusal(&s.apply(sync(2, 1, true))).contains("thermostat@1 is not the accepted version")
    );
    assert!(matches!(
        s.apply(sync(2, 7, true)).outcome,
        Outcome::Rejected(Rejection::NotFound(_))
    ));
    let o = owners(&s);
    assert_eq!(o.epoch, 1);
    assert!(o.excluded.is_empty());
    assert!(s.get(Cf::Fellows, b"2").unwrap().is_none());
}

#[test]
fn owners_without_exclusions_are_stored_and_shown_as_before() {
    let s = synced_cluster();
    let o = owners(&s);
    assert_eq!(
        format!("{o:?}"),
        "IngestOwners { epoch: 1, members: [IngestMember { node_id: 1, weight: 1 }, \
         IngestMember { node_id: 2, weight: 1 }, IngestMember { node_id: 3, weight: 1 }], \
         dedupe_window_ms: 10000 }"
    );
    let stored = s.get(Cf::Ingest, keys::ingest::OWNERS).unwrap().unwrap();
    assert_eq!(stored, codec::encode(&o));
    assert!(!String::from_utf8_lossy(&stored).contains("excluded"));
}

#[test]
fn a_class_accepted_through_votes_types_data_from_its_decision_on() {
    use utopia_raft::event::{ConfigVote, VoteSource};
    let mut s = MemState::default();
    let xml = "<utopia name=\"thermostat\" version=\"2\"/>".to_string();
    let vote = Event::ConfigVote(ConfigVote {
        name: "thermostat".into(),
        kind: "config".into(),
        version: 2,
        hash: blake3::hash(xml.as_bytes()).to_hex().to_string(),
        xml,
        proposer: 1,
        weight_milli: 1000,
        window_ms: 10,
        source: VoteSource::Dir,
        rules: Some(thermostat().rules),
    });
    let decide = Event::ConfigDecide {
        name: "thermostat".into(),
        version: 2,
    };
    let hot = || report("thermostat", "1", "temperature", &[], "99");
    // Voted but undecided: untyped still. Decided in the same batch as the
    // next value: that value is typed.
    let out = s.apply_batch(vec![
        (1_000, vote),
        (1_001, hot()),
        (1_020, decide),
        (1_021, hot()),
    ]);
    assert_eq!(out[0].outcome, Outcome::Done);
    assert!(matches!(out[1].outcome, Outcome::Device { .. }), "{out:?}");
    assert_eq!(out[2].outcome, Outcome::Done);
    assert_eq!(
        refusal(&out[3]),
        "temperature 99 is above max 40 (class thermostat v2)"
    );
    let r = s.apply(report("thermostat", "1", "temperature", &[], "21"));
    assert!(matches!(r.outcome, Outcome::Device { .. }));
    assert_eq!(
        s.doc(Cf::Devices, "gw1/thermostat/1")["data"]["temperature"],
        json!(21.0)
    );
}

use super::*;

fn b(s: &str) -> Bytes {
    Bytes::from(s.as_bytes().to_vec())
}

#[test]
fn events_round_trip_through_cbor() {
    let stat = Event::StatIncremented {
        id: "d".into(),
        kind: "device".into(),
        counter: StatCounter::Failures,
        by: 1,
    };
    for event in tagged_samples().into_iter().chain([stat]) {
        let req = Request::new(1_700_000_000_000, event);
        let bytes = encode(&req).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), req);
    }
}

#[test]
fn byte_strings_are_compact() {
    let req = Request::new(
        0,
        Event::Put(PutOp {
            key: b("k"),
            value: Bytes::from(vec![0u8; 100]),
            lease: 0,
            prev_kv: false,
        }),
    );
    // 100 zero bytes as a CBOR byte string (~101 bytes), not an array of
    // 100 integers (~200 bytes); the rest is field names and framing.
    let len = encode(&req).unwrap().len();
    assert!(len < 160, "{len} bytes");
}

#[test]
fn byte_strings_encode_as_they_did_when_they_were_byte_bufs() {
    // Logs and state written before keys and values became
    // reference-counted must read back the same.
    for v in [vec![], vec![0u8, 1, 0xff], vec![7u8; 300]] {
        let old = encode(&serde_bytes::ByteBuf::from(v.clone())).unwrap();
        assert_eq!(encode(&Bytes::from(v.clone())).unwrap(), old);
        assert_eq!(decode::<Bytes>(&old).unwrap(), Bytes::from(v));
    }
}

#[test]
fn the_document_limit_travels_in_the_request_and_is_optional() {
    let req = Request::new(5, Event::LeaseRevoke { id: 1 }).with_document_bytes_max(1024);
    assert_eq!(decode_request(&encode(&req).unwrap()).unwrap(), req);
    // Entries written before the limit was carried read back without it,
    // and a request without it encodes as they did.
    #[derive(Serialize)]
    struct Before {
        v: u16,
        t: u64,
        e: Event,
    }
    let before = Before {
        v: EVENT_VERSION,
        t: 5,
        e: Event::LeaseRevoke { id: 1 },
    };
    let old = encode(&before).unwrap();
    let read = decode_request(&old).unwrap();
    assert_eq!(read.document_bytes_max, None);
    assert_eq!(encode(&read).unwrap(), old);
}

#[test]
fn bad_bytes_are_an_error() {
    for bytes in [&b""[..], b"\xff", b"\xa1\x61v\x19\xff\xff", b"garbage"] {
        assert!(decode_request(bytes).is_err());
    }
}

#[test]
fn newer_versions_are_refused() {
    let mut req = Request::new(0, Event::LeaseRevoke { id: 1 });
    req.version = EVENT_VERSION + 1;
    let err = decode_request(&encode(&req).unwrap()).unwrap_err();
    assert!(matches!(err, CodecError::Version { .. }), "{err}");
}

/// Events of the kinds decoded without serde's buffering, and of others.
pub(crate) fn tagged_samples() -> Vec<Event> {
    let data = DeviceData {
        host: "h".into(),
        zone: "z".into(),
        class: "thermo".into(),
        device_id: "1".into(),
        post_type: "temp".into(),
        path: vec!["c".into(), "d".into()],
        json: r#"{"x":[1,2]}"#.into(),
    };
    let item = |body| IngestItem {
        digest: b("0123456789abcdef"),
        redelivered: false,
        body,
    };
    vec![
        Event::Put(PutOp {
            key: b("a"),
            value: b("1"),
            lease: 3,
            prev_kv: true,
        }),
        Event::Delete(DeleteOp {
            key: b("a"),
            range_end: b("b"),
            prev_kv: false,
        }),
        Event::Txn(TxnOp {
            compares: vec![Compare {
                key: b("a"),
                range_end: Bytes::new(),
                op: CompareOp::Greater,
                target: CompareTarget::ModRevision(3),
            }],
            success: vec![TxnStep::Put(PutOp {
                key: b("a"),
                value: b("2"),
                lease: 0,
                prev_kv: false,
            })],
            failure: vec![],
            bytes_max: 0,
        }),
        Event::DeviceDataUpdated(data.clone()),
        Event::IngestBatch {
            epoch: 4,
            proposer: 2,
            items: vec![
                item(IngestBody::Data(data)),
                item(IngestBody::Reply {
                    host: "h".into(),
                    zone: "z".into(),
                    class: "thermo".into(),
                    device_id: "1".into(),
                    command_id: 9,
                    json: "true".into(),
                }),
                item(IngestBody::Dropped {
                    device: "h/thermo/1".into(),
                    reason: "over its rate".into(),
                }),
            ],
        },
        Event::LeaseGrant { id: 7, ttl_s: 10 },
        Event::IngestOwnersChanged {
            epoch: 1,
            members: vec![IngestMember {
                node_id: 1,
                weight: 1000,
            }],
            dedupe_window_ms: 60_000,
        },
        Event::Auth(AuthChange::UserAdd {
            name: "u".into(),
            password_hash: None,
        }),
    ]
}

type Map = Vec<(ciborium::Value, ciborium::Value)>;

fn text(s: &str) -> ciborium::Value {
    ciborium::Value::Text(s.into())
}

fn map_of(value: &impl Serialize) -> Map {
    match ciborium::Value::serialized(value).unwrap() {
        ciborium::Value::Map(entries) => entries,
        other => panic!("not a map: {other:?}"),
    }
}

/// `event` (a map) decoded as a log entry's event is, and the way serde's
/// derived decoder does.
fn both_ways(event: Map) -> (Result<Event, CodecError>, Result<Event, CodecError>) {
    let event = ciborium::Value::Map(event);
    let request = ciborium::Value::Map(vec![
        (text("v"), ciborium::Value::from(EVENT_VERSION)),
        (text("t"), ciborium::Value::from(5u64)),
        (text("e"), event.clone()),
    ]);
    let entry = decode_request(&encode(&request).unwrap()).map(|r| Arc::unwrap_or_clone(r.event));
    let derived = decode::<Event>(&encode(&event).unwrap());
    (entry, derived)
}

#[test]
fn tagged_events_decode_as_the_derived_decoder_does() {
    for event in tagged_samples() {
        // As serde writes them: the tag first.
        let (entry, derived) = both_ways(map_of(&event));
        assert_eq!(entry.unwrap(), event);
        assert_eq!(derived.unwrap(), event);
        // The tag last, at every level: the derived decoder reads it there.
        let mut moved = map_of(&event);
        moved.rotate_left(1);
        for (_, value) in &mut moved {
            if let ciborium::Value::Array(items) = value {
                for item in items {
                    if let ciborium::Value::Map(fields) = item {
                        for (key, body) in fields {
                            if key == &text("body") {
                                if let ciborium::Value::Map(b) = body {
                                    b.rotate_left(1);
                                }
                            }
                        }
                    }
                }
            }
        }
        let (entry, derived) = both_ways(moved);
        assert_eq!(entry.unwrap(), event);
        assert_eq!(derived.unwrap(), event);
        // A field no build writes is skipped by both.
        let mut extra = map_of(&event);
        extra.push((text("zz"), ciborium::Value::from(1u8)));
        let (entry, derived) = both_ways(extra);
        assert_eq!(entry.unwrap(), event);
        assert_eq!(derived.unwrap(), event);
    }
}

#[test]
fn badly_tagged_events_are_refused_both_ways() {
    let put = map_of(&tagged_samples()[0]);
    let without_tag: Map = put[1..].to_vec();
    let mut unknown = put.clone();
    unknown[0].1 = text("no_such_event");
    let mut not_text = put.clone();
    not_text[0].1 = ciborium::Value::from(7u8);
    let mut missing_field = put.clone();
    missing_field.retain(|(k, _)| k != &text("key"));
    let mut wrong_type = put.clone();
    for (k, v) in &mut wrong_type {
        if k == &text("lease") {
            *v = text("three");
        }
    }
    let non_text_key = vec![(ciborium::Value::from(1u8), text("put"))];
    for (what, map) in [
        ("no tag", without_tag),
        ("an unknown tag", unknown),
        ("a tag that is not text", not_text),
        ("a missing field", missing_field),
        ("a field of the wrong type", wrong_type),
        ("an empty map", vec![]),
        ("a key that is not text", non_text_key),
    ] {
        let (entry, derived) = both_ways(map);
        assert!(entry.is_err(), "{what}: {entry:?}");
        assert!(derived.is_err(), "{what}: {derived:?}");
    }
    // Not a map at all.
    let request = ciborium::Value::Map(vec![
        (text("v"), ciborium::Value::from(EVENT_VERSION)),
        (text("t"), ciborium::Value::from(5u64)),
        (text("e"), text("put")),
    ]);
    assert!(decode_request(&encode(&request).unwrap()).is_err());
}

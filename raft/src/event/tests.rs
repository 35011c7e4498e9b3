use super::*;

fn b(s: &str) -> Bytes {
    Bytes::from(s.as_bytes().to_vec())
}

#[test]
fn events_round_trip_through_cbor() {
    let events = vec![
        Event::Put(PutOp {
            key: b("a"),
            value: b("1"),
            lease: 0,
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
                op: CompareOp::Equal,
                target: CompareTarget::Version(3),
            }],
            success: vec![TxnStep::Put(PutOp {
                key: b("a"),
                value: b("2"),
                lease: 0,
                prev_kv: false,
            })],
            failure: vec![TxnStep::Range(RangeOp {
                key: b("a"),
                range_end: Bytes::new(),
                limit: 0,
                keys_only: false,
                count_only: false,
            })],
            bytes_max: 1 << 20,
        }),
        Event::LeaseGrant { id: 7, ttl_s: 10 },
        Event::DeviceDataUpdated(DeviceData {
            host: "h".into(),
            zone: "z".into(),
            class: "thermo".into(),
            device_id: "1".into(),
            post_type: "temp".into(),
            path: vec!["c".into()],
            json: "21.5".into(),
        }),
        Event::StatIncremented {
            id: "d".into(),
            kind: "device".into(),
            counter: StatCounter::Failures,
            by: 1,
        },
    ];
    for event in events {
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

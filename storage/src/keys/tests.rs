//! Every layout parses back what it encodes; garbage is refused, never a
//! panic.

use super::*;

#[test]
fn escaping_round_trips() {
    for key in [&b""[..], b"a", b"\0", b"a\0b", b"\0\0\xff\x01", b"\xff\xff"] {
        let mut enc = escaped(key);
        enc.extend_from_slice(b"rest");
        let (back, rest) = split_escaped(&enc).unwrap();
        assert_eq!(back, key);
        assert_eq!(rest, b"rest");
    }
}

#[test]
fn escaped_order_is_key_order_then_revision() {
    let keys: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"ab"];
    let mut encoded = vec![];
    for k in keys {
        for rev in [1i64, 2, 300] {
            encoded.push((history_key(k, rev), (k, rev)));
        }
    }
    let mut sorted = encoded.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let order: Vec<_> = sorted.into_iter().map(|e| e.1).collect();
    let expected: Vec<_> = encoded.into_iter().map(|e| e.1).collect();
    assert_eq!(order, expected);
}

#[test]
fn malformed_escapes_are_rejected() {
    for bad in [&b"a"[..], b"a\0", b"a\0\x02", b"\0"] {
        assert!(split_escaped(bad).is_none(), "{bad:?}");
    }
    assert!(parse_history_key(&escaped(b"k")).is_err());
}

#[test]
fn change_and_history_keys_parse_back() {
    assert_eq!(parse_change_key(&change_key(42, 3)), Ok((42, 3)));
    assert_eq!(
        parse_history_key(&history_key(b"k\0", 9)),
        Ok((b"k\0".to_vec(), 9))
    );
    assert!(change_key(1, 9) < change_key(2, 0));
}

/// Checks that `parse` gives back what `key` was encoded from.
fn check<T: PartialEq + std::fmt::Debug>(
    key: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, KeyError>,
    want: T,
) {
    assert_eq!(parse(key), Ok(want), "{}", crate::printable_key(key));
}

#[test]
fn every_layout_parses_back_what_it_encodes() {
    let digest = [7u8; 16];
    check(&log_key(0), parse_log_key, 0);
    check(&log_key(u64::MAX), parse_log_key, u64::MAX);
    check(&lease_id_key(5), parse_lease_id_key, 5);
    check(&lease_id_key(i64::MAX), parse_lease_id_key, i64::MAX);
    for user_key in [&b""[..], b"k", b"\0\xff\0", b"a/b"] {
        check(
            &history_key(user_key, 3),
            parse_history_key,
            (user_key.to_vec(), 3),
        );
        check(
            &lease_key(9, user_key),
            |k| parse_lease_key(k).map(|(l, u)| (l, u.to_vec())),
            (9, user_key.to_vec()),
        );
    }
    check(&change_key(0, 0), parse_change_key, (0, 0));
    check(
        &change_key(i64::MAX, u32::MAX),
        parse_change_key,
        (i64::MAX, u32::MAX),
    );
    check(&deadline_key(1_000, 4), parse_deadline_key, (1_000, 4));
    for id in ["", "gw1/thermo/7", "é"] {
        check(
            document_key(id),
            |k| parse_document_key(Cf::Devices, k).map(str::to_string),
            id.to_string(),
        );
    }
    for (index, value, device) in [
        (DeviceIndex::Zone, "hall", "gw1/thermo/7"),
        (DeviceIndex::Class, "", "x"),
        (DeviceIndex::Host, "h\0st", ""),
    ] {
        check(
            &device_index_key(index, value, device),
            |k| parse_device_index_key(k).map(|(i, v, d)| (i, v, d.to_string())),
            (index, value.to_string(), device.to_string()),
        );
        assert!(
            device_index_key(index, value, device).starts_with(&device_index_prefix(index, value))
        );
    }
    check(
        &host_devices_key("gw\0x"),
        parse_host_devices_key,
        "gw\0x".to_string(),
    );
    check(&ingest::weight_key(3), ingest::parse_weight_key, 3);
    check(
        &ingest::class_key("thermo-2.x"),
        |k| ingest::parse_class_key(k).map(str::to_string),
        "thermo-2.x".to_string(),
    );
    check(
        &ingest::dedupe_key(&digest),
        ingest::parse_dedupe_key,
        digest,
    );
    check(
        &ingest::expiry_key(12, &digest),
        ingest::parse_expiry_key,
        (12, digest),
    );
    assert!(ingest::expiry_bound(12)[..] <= ingest::expiry_key(12, &[0; 16])[..]);
    assert!(ingest::expiry_key(11, &[0xff; 16])[..] < ingest::expiry_bound(12)[..]);
    check(&commands::record_key(8), commands::parse_record_key, 8);
    check(&commands::pending_key(8), commands::parse_pending_key, 8);
    check(
        &commands::settled_key(5, 8),
        commands::parse_settled_key,
        (5, 8),
    );
    check(
        &auth::user_key("alice"),
        auth::parse_user_key,
        "alice".to_string(),
    );
    check(
        &auth::role_key("app"),
        auth::parse_role_key,
        "app".to_string(),
    );
}

/// Garbage is refused with the layout and the key named, never a panic.
#[test]
fn malformed_keys_are_refused_never_a_panic() {
    type Parser = fn(&[u8]) -> Result<(), KeyError>;
    let parsers: [(&str, Parser); 15] = [
        ("raft log", |k| parse_log_key(k).map(drop)),
        ("lease", |k| parse_lease_id_key(k).map(drop)),
        ("key history", |k| parse_history_key(k).map(drop)),
        ("change feed", |k| parse_change_key(k).map(drop)),
        ("lease key", |k| parse_lease_key(k).map(drop)),
        ("lease deadline", |k| parse_deadline_key(k).map(drop)),
        ("device index", |k| parse_device_index_key(k).map(drop)),
        ("host device count", |k| parse_host_devices_key(k).map(drop)),
        ("ingest weight", |k| ingest::parse_weight_key(k).map(drop)),
        ("ingest class", |k| ingest::parse_class_key(k).map(drop)),
        ("ingest dedupe", |k| ingest::parse_dedupe_key(k).map(drop)),
        ("ingest expiry", |k| ingest::parse_expiry_key(k).map(drop)),
        ("command record", |k| {
            commands::parse_record_key(k).map(drop)
        }),
        ("pending command", |k| {
            commands::parse_pending_key(k).map(drop)
        }),
        ("settled command", |k| {
            commands::parse_settled_key(k).map(drop)
        }),
    ];
    let garbage: [&[u8]; 7] = [
        b"",
        b"x",
        b"\0\x01",
        b"w\0\0\0\0\0\0\0",
        b"z\xff\0\x02",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"n\xc3\0\x01",
    ];
    for (layout, parse) in parsers {
        for key in garbage {
            if let Err(e) = parse(key) {
                assert_eq!(e.layout, layout);
                assert_eq!(e.key, key);
                let text = StoreError::from(e).to_string();
                assert!(text.contains(layout), "{text}");
            }
        }
    }
    // Each garbage key is refused by the parsers it cannot belong to.
    let refused = |parse: Parser, keys: &[&[u8]]| {
        for key in keys {
            assert!(parse(key).is_err(), "{}", crate::printable_key(key));
        }
    };
    refused(
        |k| parse_log_key(k).map(drop),
        &[b"", b"1234567", b"123456789"],
    );
    refused(
        |k| parse_change_key(k).map(drop),
        &[b"12345678", b"1234567890123"],
    );
    refused(
        |k| parse_history_key(k).map(drop),
        &[b"k\0\x01", b"k\0\x011234567", b"k"],
    );
    refused(|k| parse_lease_key(k).map(drop), &[b"1234567"]);
    refused(
        |k| parse_device_index_key(k).map(drop),
        &[b"", b"q\0\x01", b"z\xff\0\x01", b"zv\0\x01\xff"],
    );
    refused(
        |k| parse_host_devices_key(k).map(drop),
        &[b"h\0\x01", b"nx\0\x01!", b"n\xc3\0\x01"],
    );
    refused(
        |k| ingest::parse_weight_key(k).map(drop),
        &[b"w", b"w12345678!", b"d12345678"],
    );
    refused(
        |k| ingest::parse_class_key(k).map(drop),
        &[b"w", b"c\xff", b"d12345678"],
    );
    refused(
        |k| ingest::parse_dedupe_key(k).map(drop),
        &[b"d", b"d123456789012345", b"d12345678901234567"],
    );
    refused(
        |k| ingest::parse_expiry_key(k).map(drop),
        &[b"x", b"x12345678", b"x123456781234567890123456!"],
    );
    refused(
        |k| commands::parse_settled_key(k).map(drop),
        &[b"s", b"s1234567812345678!", b"c1234567812345678"],
    );
    refused(
        |k| commands::parse_pending_key(k).map(drop),
        &[b"p12345678!", b"c12345678"],
    );
    refused(
        |k| auth::parse_user_key(k).map(drop),
        &[b"r alice", b"u\xff\xfe", b"m"],
    );
    refused(
        |k| auth::parse_role_key(k).map(drop),
        &[b"u app", b"r\xc3", b""],
    );
    assert!(parse_document_key(Cf::Zones, b"\xff").is_err());
}

#[test]
fn prefix_end_cases() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert_eq!(prefix_end(b""), None);
}

#[test]
fn collections_and_cfs_parse_by_name() {
    for c in Collection::ALL {
        assert_eq!(Collection::parse(c.name()), Some(c));
    }
    assert_eq!(Collection::parse("nope"), None);
    for cf in Cf::ALL {
        assert_eq!(Cf::from_name(cf.name()), Some(cf));
    }
}

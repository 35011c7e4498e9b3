use openraft::entry::RaftEntry;

use super::super::fixtures::{log_id, request};
use super::*;
use crate::event::tests::tagged_samples;

fn normal(index: u64, event: Event) -> Entry {
    let request = Request::new(1_700_000_000_000 + index, event);
    let request = if index.is_multiple_of(3) {
        request.with_document_bytes_max(index * 1000)
    } else {
        request
    };
    Entry {
        log_id: log_id(3, index),
        payload: EntryPayload::Normal(request),
    }
}

fn put(key: &[u8], value_bytes: usize, lease: i64, prev_kv: bool) -> Event {
    Event::Put(PutOp {
        key: key.to_vec().into(),
        value: vec![b'v'; value_bytes].into(),
        lease,
        prev_kv,
    })
}

/// Entries of every payload, the frequent events with every head width of
/// their numbers and byte strings (and values longer than ciborium's
/// scratch buffer), and the other events.
fn entries() -> Vec<Entry> {
    let mut events = vec![
        put(b"", 0, 0, false),
        put(b"k", 23, 1, true),
        put(b"key/24", 24, -1, false),
        put(&[0xff; 255], 256, i64::MAX, true),
        put(b"k", 70_000, i64::MIN, false),
        put(b"k", 5_000, -25, true),
        Event::Delete(DeleteOp {
            key: b"a".to_vec().into(),
            range_end: bytes::Bytes::new(),
            prev_kv: true,
        }),
        Event::Delete(DeleteOp {
            key: b"a".to_vec().into(),
            range_end: vec![0].into(),
            prev_kv: false,
        }),
    ];
    events.extend(tagged_samples());
    // A batch of device data alone, the one the reader reads itself.
    let data = |i: u32| DeviceData {
        host: format!("host{i}"),
        zone: "zone/é".into(),
        class: "thermo".into(),
        device_id: i.to_string(),
        post_type: "temp".into(),
        path: (0..i * 2).map(|p| format!("p{p}")).collect(),
        json: format!("{{\"t\":{i}}}"),
    };
    events.push(Event::IngestBatch {
        epoch: 2,
        proposer: 3,
        items: (0..2)
            .map(|i| IngestItem {
                digest: vec![i as u8; 16].into(),
                redelivered: i == 2,
                body: IngestBody::Data(data(i)),
            })
            .collect(),
    });
    events.push(Event::IngestBatch {
        epoch: u64::MAX,
        proposer: 0,
        items: vec![],
    });
    let mut entries: Vec<Entry> = (1..)
        .zip(events)
        .map(|(index, event)| normal(index, event))
        .collect();
    let next = entries.len() as u64 + 1;
    entries.push(Entry::new_blank(log_id(3, next)));
    entries.push(Entry::new_membership(
        log_id(3, next + 1),
        openraft::Membership::new_with_defaults(vec![[1, 2, 3].into()], []),
    ));
    entries
}

/// The outcome `event::decode` gives, as text (an AppendEntries request
/// has no `PartialEq`; its `Debug` shows every field).
fn outcome(decoded: Result<AppendEntriesRequest<TypeConfig>, CodecError>) -> String {
    match decoded {
        Ok(req) => format!("{req:?}"),
        Err(e) => format!("error: {e}"),
    }
}

fn assert_decoded_as_serde_does(bytes: &[u8], what: &str) {
    assert_eq!(
        outcome(decode_append(bytes).map(|(req, _)| req)),
        outcome(event::decode(bytes)),
        "{what}"
    );
}

#[test]
fn frequent_events_are_read_without_serde() {
    for entry in entries() {
        let bytes = event::encode(&entry).unwrap();
        let mut reader = Reader::new(&bytes);
        let read = reader.entry();
        let EntryPayload::Normal(request) = &entry.payload else {
            assert!(read.is_none(), "{entry}");
            continue;
        };
        // Normal entries are read here, whatever their event ...
        assert_eq!(read.as_ref(), Some(&entry));
        assert_eq!(reader.pos, bytes.len());
        // ... and the frequent events without serde.
        let event = &*request.event;
        let bytes = event::encode(event).unwrap();
        let direct = Reader::new(&bytes).event();
        let read_here = match event {
            Event::Put(_) | Event::Delete(_) | Event::DeviceDataUpdated(_) => true,
            Event::IngestBatch { items, .. } => {
                items.iter().all(|i| matches!(i.body, IngestBody::Data(_)))
            }
            _ => false,
        };
        if read_here {
            assert_eq!(direct.as_ref(), Some(event));
        } else {
            assert!(direct.is_none(), "{event:?}");
        }
    }
}

#[test]
fn requests_decode_as_serde_decodes_them() {
    let all = entries();
    let cases = [
        request(vec![], None),
        request(vec![], Some(4)),
        request(all[..1].to_vec(), None),
        request(all.clone(), Some(2)),
        request(all.iter().rev().cloned().collect(), Some(7)),
    ];
    for req in cases {
        let bytes = event::encode(&req).unwrap();
        let (decoded, encodings) = decode_append(&bytes).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{req:?}"));
        assert_eq!(event::encode(&decoded).unwrap(), bytes);
        // Each entry's encoding, where the message holds it.
        assert_eq!(encodings.len(), req.entries.len());
        for (entry, at) in req.entries.iter().zip(encodings) {
            assert_eq!(bytes[at], event::encode(entry).unwrap()[..]);
        }
    }
}

/// Every byte of a request changed, every prefix of it, and bytes after
/// it: whatever serde makes of the result, an error or a request, is what
/// the reader makes of it.
#[test]
fn corrupted_requests_decode_as_serde_decodes_them() {
    // One request per entry, and one of several: every byte of each is a
    // head or a key somewhere (values are small).
    let all: Vec<Entry> = entries()
        .into_iter()
        .filter(|e| event::encode(e).unwrap().len() < 400)
        .collect();
    // Among them, an entry of each event read without serde (a batch of
    // device data items alone).
    let names: Vec<&str> = all
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(r) => match &*r.event {
                Event::IngestBatch { items, .. }
                    if items.is_empty()
                        || items.iter().any(|i| !matches!(i.body, IngestBody::Data(_))) =>
                {
                    None
                }
                event => Some(event.name()),
            },
            _ => None,
        })
        .collect();
    for name in ["put", "delete", "device_data_updated", "ingest_batch"] {
        assert!(names.contains(&name), "no {name} among {names:?}");
    }
    let mut requests: Vec<_> = all
        .iter()
        .map(|e| request(vec![e.clone()], Some(3)))
        .collect();
    requests.push(request(all[..3].to_vec(), None));
    for req in requests {
        let bytes = event::encode(&req).unwrap();
        for i in 0..bytes.len() {
            for flip in [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                assert_decoded_as_serde_does(&bad, &format!("byte {i} ^ {flip:#x}"));
            }
            for value in [
                0x00, 0x17, 0x18, 0x1b, 0x1f, 0x5f, 0x7f, 0x9f, 0xbf, 0xf6, 0xff,
            ] {
                let mut bad = bytes.clone();
                bad[i] = value;
                assert_decoded_as_serde_does(&bad, &format!("byte {i} = {value:#x}"));
            }
            assert_decoded_as_serde_does(&bytes[..i], &format!("first {i} bytes"));
        }
    }
    let bytes = event::encode(&request(all[..2].to_vec(), Some(1))).unwrap();
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"\xa1\x61k\x00");
    assert_decoded_as_serde_does(&longer, "bytes after the request");
}

/// An event, an entry and a message field each nested as deep as serde
/// allows, and one level deeper: refused where serde refuses them.
#[test]
fn values_nested_too_deep_are_refused_as_serde_refuses_them() {
    let deep = |levels: usize| {
        let mut value = ciborium::Value::Integer(1.into());
        for _ in 0..levels {
            value = ciborium::Value::Array(vec![value]);
        }
        value
    };
    let text = |s: &str| ciborium::Value::Text(s.into());
    let req = request(vec![normal(1, put(b"k", 1, 0, false))], Some(1));
    let base = ciborium::Value::serialized(&req).unwrap();
    // An unknown field holding `levels` nested arrays, added to the map at
    // `path` (map keys from the message down).
    let with_deep_field = |path: &[&str], levels: usize| {
        let mut value = base.clone();
        let mut map = &mut value;
        for key in path {
            map = match map {
                ciborium::Value::Map(fields) => {
                    &mut fields.iter_mut().find(|(k, _)| *k == text(key)).unwrap().1
                }
                ciborium::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
                _ => unreachable!(),
            };
        }
        let ciborium::Value::Map(fields) = map else {
            unreachable!()
        };
        fields.push((text("x"), deep(levels)));
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).unwrap();
        bytes
    };
    let paths: [&[&str]; 4] = [
        &["vote"],
        &["entries", "0"],
        &["entries", "0", "payload", "Normal"],
        &["entries", "0", "payload", "Normal", "e"],
    ];
    for path in paths {
        let mut refused_at = None;
        for levels in 240..260 {
            let bytes = with_deep_field(path, levels);
            assert_decoded_as_serde_does(&bytes, &format!("{path:?} with {levels} levels"));
            if refused_at.is_none()
                && event::decode::<AppendEntriesRequest<TypeConfig>>(&bytes).is_err()
            {
                refused_at = Some(levels);
            }
        }
        assert!(
            refused_at.is_some(),
            "{path:?}: serde refused no depth tried"
        );
    }
}

/// Every initial byte, with arguments of every width: the head and its
/// length are ciborium_ll's.
#[test]
fn heads_are_read_as_ciborium_ll_reads_them() {
    let tails: [&[u8]; 5] = [
        &[],
        &[0x2a],
        &[0x01, 0x02],
        &[0xff, 0xff, 0xff, 0xff],
        &[0x80, 0, 0, 0, 0, 0, 0, 0x01, 0x63],
    ];
    for initial in 0..=u8::MAX {
        for tail in tails {
            let bytes = [&[initial][..], tail].concat();
            let mut decoder = Decoder::from(&bytes[..]);
            let theirs = decoder.pull().ok().map(|h| (h, decoder.offset()));
            let mut reader = Reader::new(&bytes);
            let ours = reader.head().map(|h| (h, reader.pos));
            // As text: a NaN is not equal to itself.
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{bytes:02x?}");
        }
    }
}

/// A forwarded request, encoded, corrupted at every byte, nested too deep
/// or of a newer version: whatever `event::decode_request` makes of it.
#[test]
fn forwarded_requests_decode_as_serde_decodes_them() {
    let same = |bytes: &[u8], what: &str| {
        let text = |r: Result<Request, CodecError>| match r {
            Ok(req) => format!("{req:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(
            text(decode_request(bytes)),
            text(event::decode_request(bytes)),
            "{what}"
        );
    };
    for entry in entries() {
        let EntryPayload::Normal(request) = entry.payload else {
            continue;
        };
        let bytes = event::encode(&request).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request);
        if bytes.len() > 400 {
            continue;
        }
        for i in 0..bytes.len() {
            for flip in [0x01, 0x08, 0x20, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                same(&bad, &format!("byte {i} ^ {flip:#x}"));
            }
            same(&bytes[..i], &format!("first {i} bytes"));
        }
        let mut newer = request.clone();
        newer.version = event::EVENT_VERSION + 1;
        let bytes = event::encode(&newer).unwrap();
        assert!(decode_request(&bytes).is_err());
        same(&bytes, "a newer version");
    }
    // An unknown field nested around the depth serde refuses, in the
    // request and in its event.
    let request = Request::new(1, put(b"k", 1, 0, false));
    for in_event in [false, true] {
        for levels in 250..258 {
            let mut value = ciborium::Value::serialized(&request).unwrap();
            let ciborium::Value::Map(fields) = &mut value else {
                unreachable!()
            };
            let fields = if in_event {
                let (_, ciborium::Value::Map(event)) = &mut fields[2] else {
                    unreachable!()
                };
                event
            } else {
                fields
            };
            let mut deep = ciborium::Value::Integer(1.into());
            for _ in 0..levels {
                deep = ciborium::Value::Array(vec![deep]);
            }
            fields.push((ciborium::Value::Text("x".into()), deep));
            let mut bytes = Vec::new();
            ciborium::into_writer(&value, &mut bytes).unwrap();
            same(
                &bytes,
                &format!("{levels} levels, in the event: {in_event}"),
            );
        }
    }
}

/// A count in a message reserves no more than the message could hold, and
/// at most 1 MiB.
#[test]
fn counts_in_a_message_reserve_little() {
    let small = [0u8; 10];
    assert_eq!(Reader::new(&small).room::<Entry>(usize::MAX), 10);
    let large = vec![0u8; 8 << 20];
    let room = Reader::new(&large).room::<Entry>(usize::MAX);
    assert!(room * std::mem::size_of::<Entry>() <= 1 << 20, "{room}");
    assert_eq!(Reader::new(&large).room::<u8>(3), 3);
    // A request claiming more entries than it holds is refused as serde
    // refuses it.
    let mut bytes = event::encode(&request(vec![normal(1, put(b"k", 1, 0, false))], None)).unwrap();
    let at = bytes.windows(8).position(|w| w == b"\x67entries").unwrap() + 8;
    bytes[at] = 0x9b; // an array of 2^64 - 1 entries
    bytes.splice(at + 1..at + 1, [0xff; 8]);
    assert_decoded_as_serde_does(&bytes, "an entry count of 2^64 - 1");
    assert!(decode_append(&bytes).is_err());
}

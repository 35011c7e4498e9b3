//! Reads that only count do not decode what they count; a read of one
//! key answers that key alone, now and at the current revision; past
//! reads find each key's state among interleaved histories.

mod common;

use utopia_raft::openraft_api::RaftStateMachine;
use utopia_storage::keys::{self, Cf, Collection};

fn poke(dir: &std::path::Path, cf: Cf, key: &[u8], value: &[u8]) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
    let db = rocksdb::DB::open_cf(&opts, dir.join("db"), names).expect("open the store's rocksdb");
    db.put_cf(db.cf_handle(cf.name()).unwrap(), key, value)
        .unwrap();
}

#[test]
fn count_only_counts_keys_without_decoding_their_records() {
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    // A record no decoder accepts: only a read that decodes it notices.
    poke(dir.path(), Cf::Kv, b"k", b"\x00\x01");
    let store = utopia_storage::open(dir.path()).unwrap();
    let counted = store
        .reader
        .range(b"k", b"", 0, usize::MAX, 0, false, true)
        .expect("counting reads keys only");
    assert_eq!((counted.count, counted.kvs.len()), (1, 0));
    let err = store
        .reader
        .range(b"k", b"", 0, usize::MAX, 0, false, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("kv"), "{err}");
}

#[test]
fn a_zone_is_served_with_its_devices_from_the_index_within_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    poke(
        dir.path(),
        Cf::Zones,
        b"hall",
        br#"{"device_count":100,"zone":"hall"}"#,
    );
    let ids: Vec<String> = (0..100).map(|i| format!("gw/cam/{i:03}")).collect();
    for id in &ids {
        let key = keys::device_index_key(keys::DeviceIndex::Zone, "hall", id);
        poke(dir.path(), Cf::DeviceIndex, &key, b"");
    }
    let store = utopia_storage::open(dir.path()).unwrap();
    let served = |bytes_max| -> serde_json::Value {
        let json = store
            .reader
            .get_document(Collection::Zones, "hall", bytes_max)
            .unwrap()
            .expect("the zone exists");
        serde_json::from_str(&json).unwrap()
    };
    let all = served(1 << 20);
    assert_eq!(all["devices"], serde_json::json!(ids));
    assert_eq!(all["devices_more"], false);
    assert_eq!(all["device_count"], 100);
    let part = served(500);
    let listed = part["devices"].as_array().unwrap().len();
    assert!(listed > 0 && listed < 100, "{listed} ids in 500 bytes");
    assert_eq!(part["devices_more"], true);
    assert!(part.to_string().len() <= 500, "{part}");
}

#[tokio::test]
async fn a_read_of_one_key_answers_that_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = utopia_storage::open(dir.path()).unwrap();
    let puts = [
        (1, "k", "v1"),
        (2, "k1", "v2"),
        (3, "j", "v3"),
        (4, "k", "v4"),
    ];
    let entries = puts.map(|(i, k, v)| Ok((common::put_entry(i, k.into(), v.into()), None)));
    store
        .state_machine
        .apply(futures::stream::iter(entries))
        .await
        .unwrap();
    let read = |key: &[u8], revision: i64, keys_only: bool| {
        store
            .reader
            .range(key, b"", 0, usize::MAX, revision, keys_only, false)
            .unwrap()
    };
    for revision in [0, 4] {
        let got = read(b"k", revision, false);
        assert_eq!(got.count, 1, "at {revision}");
        assert_eq!(&got.kvs[0].value[..], b"v4");
        assert_eq!((got.kvs[0].version, got.kvs[0].mod_revision), (2, 4));
        let keys = read(b"k", revision, true);
        assert!(keys.kvs[0].value.is_empty(), "keys only");
        assert_eq!(keys.kvs[0].mod_revision, 4);
        assert_eq!(read(b"k0", revision, false).count, 0, "absent");
    }
    // An older revision reads the history.
    assert_eq!(&read(b"k", 2, false).kvs[0].value[..], b"v1");
}

/// Reads of one key's history (`prev_kv`) and reads of past revisions
/// across keys see every record they should, with keys that are prefixes
/// of each other and writes interleaved.
#[tokio::test]
async fn past_reads_see_each_keys_history_among_interleaved_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = utopia_storage::open(dir.path()).unwrap();
    let keys = ["a", "a\u{0}", "ab", "b", "a"];
    let entries = (1..=40u64).map(|i| {
        let key = keys[(i as usize) % keys.len()];
        Ok((
            common::put_entry(i, key.into(), format!("{key}@{i}").into()),
            None,
        ))
    });
    store
        .state_machine
        .apply(futures::stream::iter(entries))
        .await
        .unwrap();
    // What each key held at each revision, worked out from the puts.
    let at = |key: &str, revision: i64| -> Option<String> {
        (1..=revision)
            .rev()
            .find(|i| keys[(*i as usize) % keys.len()] == key)
            .map(|i| format!("{key}@{i}"))
    };
    for revision in 1..40 {
        for key in ["a", "a\u{0}", "ab", "b", "c"] {
            let prev = store
                .reader
                .prev_kv(key.as_bytes(), revision + 1)
                .unwrap()
                .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap());
            assert_eq!(prev, at(key, revision), "{key:?} before {}", revision + 1);
        }
        let all = store
            .reader
            .range(b"a", &[0], 0, usize::MAX, revision, false, false)
            .unwrap();
        let got: Vec<String> = all
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = ["a", "a\u{0}", "ab", "b"]
            .into_iter()
            .filter_map(|k| at(k, revision))
            .collect();
        assert_eq!(got, want, "every key at {revision}");
    }
}

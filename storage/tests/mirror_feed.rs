//! The mirror feed: every applied batch records the documents and keys it
//! wrote under its last log index; a reader resuming after any index finds
//! every write since, in whole indexes, and the current values.

mod common;

use utopia_raft::event::{DeviceData, Event, Request};
use utopia_raft::openraft_api::{EntryOf, EntryPayload, RaftStateMachine};
use utopia_raft::TypeConfig;
use utopia_storage::keys::mirror_feed::Target;
use utopia_storage::keys::Collection;
use utopia_storage::read::MirrorValue;

/// A member that keeps the mirror feed (one with `mongodb.enabled`).
const FEED_ON: utopia_storage::OpenOptions = utopia_storage::OpenOptions {
    mirror_feed: true,
    memtable_bytes_max: utopia_storage::MEMTABLE_BYTES_MAX_DEFAULT,
    block_cache_bytes_max: utopia_storage::BLOCK_CACHE_BYTES_MAX_DEFAULT,
    key_cache_bytes_max: utopia_storage::KEY_CACHE_BYTES_MAX_DEFAULT,
};

fn event_entry(index: u64, event: Event) -> EntryOf<TypeConfig> {
    EntryOf::<TypeConfig> {
        log_id: common::log_id(index),
        payload: EntryPayload::Normal(Request::new(5_000 + index, event)),
    }
}

fn report(device: &str, zone: &str) -> Event {
    Event::DeviceDataUpdated(DeviceData {
        host: "gw1".into(),
        zone: zone.into(),
        class: "thermo".into(),
        device_id: device.into(),
        post_type: "temp".into(),
        path: vec![],
        json: "21.5".into(),
    })
}

#[tokio::test]
async fn the_feed_names_every_write_after_a_checkpoint_in_whole_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = utopia_storage::open_with(dir.path(), FEED_ON).unwrap();
    assert_eq!(store.reader.mirror_feed_start().unwrap(), 0);

    // Two batches: entries 1..=3 together (a put, two device reports),
    // then entry 4 alone (another put).
    let first = vec![
        common::put_entry(1, "k/a".into(), b"1".to_vec()),
        event_entry(2, report("7", "kitchen")),
        event_entry(3, report("8", "hall")),
    ];
    store
        .state_machine
        .apply(futures::stream::iter(
            first.into_iter().map(|e| Ok((e, None))),
        ))
        .await
        .unwrap();
    let second = vec![common::put_entry(4, "k/b".into(), b"2".to_vec())];
    store
        .state_machine
        .apply(futures::stream::iter(
            second.into_iter().map(|e| Ok((e, None))),
        ))
        .await
        .unwrap();
    assert_eq!(store.reader.applied_index().unwrap(), Some(4));

    let all = store.reader.mirror_feed(0, 4, 1000).unwrap();
    assert_eq!(all.through_index, 4);
    assert_eq!(
        all.first_at_ms, 5_003,
        "the first batch's last event's time"
    );
    let names: Vec<(Target, String)> = all
        .changes
        .iter()
        .map(|(t, id)| (*t, String::from_utf8_lossy(id).into_owned()))
        .collect();
    for want in [
        (Target::Kv, "k/a"),
        (Target::Document(Collection::Devices), "gw1/thermo/7"),
        (Target::Document(Collection::Devices), "gw1/thermo/8"),
        (Target::Document(Collection::Zones), "kitchen"),
        (Target::Document(Collection::Zones), "hall"),
        (Target::Kv, "k/b"),
    ] {
        assert!(
            names.contains(&(want.0, want.1.to_string())),
            "{want:?} missing from {names:?}"
        );
    }
    // Only what the second batch wrote after its checkpoint: its key, and
    // the proposing member's stats document (every batch counts its
    // proposals there).
    let after = store.reader.mirror_feed(3, 4, 1000).unwrap();
    assert_eq!(
        after.changes,
        vec![
            (Target::Kv, b"k/b".to_vec()),
            (Target::Document(Collection::Stats), b"fellow/1".to_vec()),
        ]
    );
    assert_eq!(
        after.first_at_ms, 1_004,
        "put_entry proposes at 1_000 + index"
    );
    // A small bound still reads the first batch whole, and stops at its
    // end.
    let bounded = store.reader.mirror_feed(0, 4, 1).unwrap();
    assert_eq!(bounded.through_index, 3);
    assert!(bounded.changes.len() >= 5, "{:?}", bounded.changes);
    assert!(!bounded.changes.contains(&(Target::Kv, b"k/b".to_vec())));
    // Caught up: nothing.
    let none = store.reader.mirror_feed(4, 4, 10).unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.through_index, 4);

    // Current values: a device's JSON, a zone as served (with its
    // devices), a key's pair; nothing for what is not there.
    let Some(MirrorValue::Document(device)) = store
        .reader
        .mirror_value(Target::Document(Collection::Devices), b"gw1/thermo/7")
        .unwrap()
    else {
        panic!("the device is there");
    };
    let device: serde_json::Value = serde_json::from_slice(&device).unwrap();
    assert_eq!(device["zone"], "kitchen");
    let Some(MirrorValue::Document(zone)) = store
        .reader
        .mirror_value(Target::Document(Collection::Zones), b"hall")
        .unwrap()
    else {
        panic!("the zone is there");
    };
    let zone: serde_json::Value = serde_json::from_slice(&zone).unwrap();
    assert_eq!(zone["devices"], serde_json::json!(["gw1/thermo/8"]));
    let Some(MirrorValue::Kv(kv)) = store.reader.mirror_value(Target::Kv, b"k/b").unwrap() else {
        panic!("the key is there");
    };
    assert_eq!(&kv.value[..], b"2");
    assert!(store
        .reader
        .mirror_value(Target::Kv, b"k/none")
        .unwrap()
        .is_none());

    // Pages of a whole collection, in id order.
    let page = store
        .reader
        .mirror_page(Target::Document(Collection::Devices), None, 1)
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, b"gw1/thermo/7");
    let next = store
        .reader
        .mirror_page(Target::Document(Collection::Devices), Some(&page[0].0), 10)
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, b"gw1/thermo/8");

    // Reopened, the feed is still complete from the start.
    drop(store);
    let store = utopia_storage::open_with(dir.path(), FEED_ON).unwrap();
    assert_eq!(store.reader.mirror_feed_start().unwrap(), 0);
    assert_eq!(
        store.reader.mirror_feed(0, 4, 1000).unwrap().changes.len(),
        all.changes.len()
    );
}

/// The feed keeps the last `MIRROR_FEED_LOG_INDEXES_KEPT` log indexes:
/// older entries are trimmed and its start moves, so a mirror further
/// behind knows to copy whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_trimmed_behind_the_indexes_it_keeps() {
    use utopia_storage::MIRROR_FEED_LOG_INDEXES_KEPT as KEPT;
    let dir = tempfile::tempdir().unwrap();
    let mut store = utopia_storage::open_with(dir.path(), FEED_ON).unwrap();
    let last = KEPT + 1_500;
    let entries = (1..=last).map(|i| {
        Ok((
            common::put_entry(i, format!("k{}", i % 100), vec![b'v']),
            None,
        ))
    });
    store
        .state_machine
        .apply(futures::stream::iter(entries))
        .await
        .unwrap();
    let start = store.reader.mirror_feed_start().unwrap();
    assert!(
        start > 1_000 && start <= last - KEPT,
        "the start moved to {start}"
    );
    assert!(store
        .reader
        .mirror_feed(0, start - 1, 10)
        .unwrap()
        .changes
        .is_empty());
    let kept = store
        .reader
        .mirror_feed(start - 1, last, usize::MAX)
        .unwrap();
    assert_eq!(kept.through_index, last);
    // A batch names each key it wrote once, under its last index (and the
    // proposing member's stats document, which every batch writes).
    let distinct: std::collections::BTreeSet<&(Target, Vec<u8>)> = kept.changes.iter().collect();
    assert_eq!(distinct.len(), 101);
    assert!(distinct.contains(&(Target::Document(Collection::Stats), b"fellow/1".to_vec())));
    assert!(kept.changes.len() as u64 <= last - start + 1);
}

/// Applies `entries` as one stream (few: one batch).
async fn apply(store: &mut utopia_storage::OpenedStore, entries: Vec<EntryOf<TypeConfig>>) {
    store
        .state_machine
        .apply(futures::stream::iter(
            entries.into_iter().map(|e| Ok((e, None))),
        ))
        .await
        .unwrap();
}

/// Every feed entry this member holds, whatever its index.
fn whole_feed(store: &utopia_storage::OpenedStore) -> Vec<(Target, Vec<u8>)> {
    store
        .reader
        .mirror_feed(0, u64::MAX - 1, usize::MAX)
        .unwrap()
        .changes
}

/// A member without `mongodb.enabled` keeps no feed: nothing is written
/// per batch, and its start says that no checkpoint can resume from it.
/// Turned on, the feed is complete from the index after what was applied;
/// turned off again, the old feed is dropped, and it is not trusted when
/// turned on once more.
#[tokio::test]
async fn only_a_member_opened_with_the_feed_keeps_one() {
    let dir = tempfile::tempdir().unwrap();
    let put = |i: u64| common::put_entry(i, format!("k/{i}"), b"v".to_vec());

    let mut store = utopia_storage::open(dir.path()).unwrap();
    apply(&mut store, (1..=3).map(put).collect()).await;
    apply(&mut store, vec![put(4)]).await;
    assert_eq!(store.reader.applied_index().unwrap(), Some(4));
    assert_eq!(whole_feed(&store), vec![], "no feed entries when off");
    let start = store.reader.mirror_feed_start().unwrap();
    assert!(
        start > 5,
        "no checkpoint up to the applied index may resume from a feed that is off (start {start})"
    );

    // Turned on: complete from applied + 1, and recording from there.
    drop(store);
    let mut store = utopia_storage::open_with(dir.path(), FEED_ON).unwrap();
    assert_eq!(store.reader.mirror_feed_start().unwrap(), 5);
    assert_eq!(whole_feed(&store), vec![]);
    apply(&mut store, vec![put(5), put(6)]).await;
    let feed = store.reader.mirror_feed(4, 6, 1000).unwrap();
    assert_eq!(feed.through_index, 6);
    for key in ["k/5", "k/6"] {
        assert!(
            feed.changes
                .contains(&(Target::Kv, key.as_bytes().to_vec())),
            "{key} missing from {:?}",
            feed.changes
        );
    }
    assert!(!feed
        .changes
        .iter()
        .any(|(t, k)| *t == Target::Kv && k.starts_with(b"k/") && k[2] < b'5'));
    assert_eq!(store.reader.mirror_feed_start().unwrap(), 5);

    // Turned off again: the old feed is gone and nothing trusts it.
    drop(store);
    let mut store = utopia_storage::open(dir.path()).unwrap();
    assert_eq!(whole_feed(&store), vec![]);
    assert!(store.reader.mirror_feed_start().unwrap() > 7);
    apply(&mut store, vec![put(7)]).await;
    assert_eq!(whole_feed(&store), vec![]);

    // On once more: complete only after what was applied while off.
    drop(store);
    let mut store = utopia_storage::open_with(dir.path(), FEED_ON).unwrap();
    assert_eq!(store.reader.mirror_feed_start().unwrap(), 8);
    assert_eq!(whole_feed(&store), vec![]);
    apply(&mut store, vec![put(8)]).await;
    let names: Vec<Vec<u8>> = whole_feed(&store)
        .into_iter()
        .filter(|(t, _)| *t == Target::Kv)
        .map(|(_, k)| k)
        .collect();
    assert_eq!(names, vec![b"k/8".to_vec()]);
}

//! Installing a snapshot replaces the whole state machine, in bounded
//! batches; an install that a crash cuts short is finished from the kept
//! file at the next start, and a corrupt file changes nothing.

mod common;

use utopia_raft::openraft_api::RaftStateMachine;
use utopia_raft::{SnapshotData, TypeConfig};

/// A member that keeps the mirror feed (one with `mongodb.enabled`).
const FEED_ON: utopia_storage::OpenOptions = utopia_storage::OpenOptions {
    mirror_feed: true,
    memtable_bytes_max: utopia_storage::MEMTABLE_BYTES_MAX_DEFAULT,
    block_cache_bytes_max: utopia_storage::BLOCK_CACHE_BYTES_MAX_DEFAULT,
    key_cache_bytes_max: utopia_storage::KEY_CACHE_BYTES_MAX_DEFAULT,
};

/// Entries `from..=to` putting `{prefix}{i}` with a value of `value_bytes`.
fn puts(
    prefix: &'static str,
    from: u64,
    to: u64,
    value_bytes: usize,
) -> impl futures::Stream<
    Item = Result<utopia_raft::openraft_api::EntryResponder<TypeConfig>, std::io::Error>,
> {
    futures::stream::iter((from..=to).map(move |i| {
        let entry = common::put_entry(i, format!("{prefix}{i:05}"), vec![b'v'; value_bytes]);
        Ok((entry, None))
    }))
}

/// A store with `n` keys under `a/`, and its current snapshot written to a
/// file in `dir`.
async fn leader_snapshot(
    dir: &std::path::Path,
    n: u64,
) -> (
    utopia_raft::openraft_api::SnapshotMetaOf<TypeConfig>,
    std::path::PathBuf,
) {
    let mut store = utopia_storage::open(&dir.join("leader")).unwrap();
    // Values of 20 KiB: the snapshot spans many install batches.
    store
        .state_machine
        .apply(puts("a/", 1, n, 20 << 10))
        .await
        .unwrap();
    let snap = store
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a snapshot of the applied state");
    let file = dir.join("sent.snapshot");
    let mut data = snap.snapshot;
    std::io::copy(&mut data, &mut std::fs::File::create(&file).unwrap()).unwrap();
    (snap.meta, file)
}

/// What a crash part way through installing `meta` leaves in the data
/// directory `dir`: the kept snapshot file, the marker, and a state machine
/// that holds only part of the snapshot's keys.
fn cut_short(
    dir: &std::path::Path,
    meta: &utopia_raft::openraft_api::SnapshotMetaOf<TypeConfig>,
    file: &std::path::Path,
) {
    use utopia_storage::keys::{meta as keys, Cf};
    std::fs::copy(file, dir.join("snapshots").join("installing.snapshot")).unwrap();
    let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.join("db"), names).unwrap();
    let kv = db.cf_handle(Cf::Kv.name()).unwrap();
    let sm = db.cf_handle(Cf::SmMeta.name()).unwrap();
    db.delete_range_cf(kv, b"a/00300".as_slice(), b"a/99999".as_slice())
        .unwrap();
    db.delete_cf(sm, keys::APPLIED).unwrap();
    db.put_cf(
        sm,
        keys::INSTALLING,
        utopia_raft::event::encode(meta).unwrap(),
    )
    .unwrap();
}

fn keys(store: &utopia_storage::OpenedStore, prefix: &[u8]) -> usize {
    let mut end = prefix.to_vec();
    *end.last_mut().unwrap() += 1;
    store
        .reader
        .range(prefix, &end, 0, usize::MAX, 0, true, false)
        .unwrap()
        .kvs
        .len()
}

#[tokio::test]
async fn a_snapshot_replaces_the_state_and_survives_a_crash_mid_install() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, sent) = leader_snapshot(dir.path(), 600).await;

    // A follower with other keys of its own: installing replaces them.
    let follower = dir.path().join("follower");
    {
        let mut store = utopia_storage::open_with(&follower, FEED_ON).unwrap();
        store
            .state_machine
            .apply(puts("b/", 1, 50, 10))
            .await
            .unwrap();
        let received = follower.join("received.snap.tmp");
        std::fs::copy(&sent, &received).unwrap();
        store
            .state_machine
            .install_snapshot(&meta, SnapshotData::from_file(received.clone()).unwrap())
            .await
            .unwrap();
        assert!(!received.exists(), "the received file was taken over");
        assert_eq!(keys(&store, b"a/"), 600);
        assert_eq!(keys(&store, b"b/"), 0, "the old state is gone");
        let (applied, _) = store.state_machine.applied_state().await.unwrap();
        assert_eq!(applied, meta.last_log_id);
        // The mirror feed knows nothing of what the snapshot brought: it
        // starts over after it, and its old entries are gone (a mirror
        // further behind must copy whole).
        let last = meta.last_log_id.map(|l| l.index()).unwrap();
        assert_eq!(store.reader.mirror_feed_start().unwrap(), last + 1);
        assert!(store
            .reader
            .mirror_feed(0, last, 1000)
            .unwrap()
            .changes
            .is_empty());
    }

    // A crash mid-install: the marker is set, the file kept, the state
    // partly written. Simulated by cutting the state down and marking it.
    cut_short(&follower, &meta, &sent);
    let mut store = utopia_storage::open_with(&follower, FEED_ON).unwrap();
    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(
        applied, None,
        "a partly installed state machine applied nothing"
    );
    assert!(store.reader.installing_snapshot());
    // What openraft does at start: the current snapshot is newer than
    // what is applied, so it is installed.
    let current = store
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("the interrupted snapshot is offered again");
    assert_eq!(current.meta.last_log_id, meta.last_log_id);
    store
        .state_machine
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .unwrap();
    assert!(!store.reader.installing_snapshot());
    assert_eq!(keys(&store, b"a/"), 600);
    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
}

#[tokio::test]
async fn a_corrupt_snapshot_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, sent) = leader_snapshot(dir.path(), 50).await;
    let mut bytes = std::fs::read(&sent).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let corrupt = dir.path().join("corrupt.snap.tmp");
    std::fs::write(&corrupt, bytes).unwrap();

    let mut store = utopia_storage::open(&dir.path().join("follower")).unwrap();
    store
        .state_machine
        .apply(puts("b/", 1, 20, 10))
        .await
        .unwrap();
    let err = store
        .state_machine
        .install_snapshot(&meta, SnapshotData::from_file(corrupt).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert_eq!(keys(&store, b"b/"), 20, "the old state is untouched");
    assert!(!store.reader.installing_snapshot());
    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index()), Some(20));
}

/// A member without the mirror feed installs a snapshot without starting
/// one: the feed stays empty, and its start trusts no checkpoint.
#[tokio::test]
async fn a_member_without_the_feed_installs_a_snapshot_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, sent) = leader_snapshot(dir.path(), 20).await;
    let mut store = utopia_storage::open(&dir.path().join("follower")).unwrap();
    store
        .state_machine
        .install_snapshot(&meta, SnapshotData::from_file(sent).unwrap())
        .await
        .unwrap();
    let last = meta.last_log_id.map(|l| l.index()).unwrap();
    assert!(store.reader.mirror_feed_start().unwrap() > last + 1);
    store
        .state_machine
        .apply(puts("b/", last + 1, last + 5, 10))
        .await
        .unwrap();
    assert!(store
        .reader
        .mirror_feed(0, last + 5, 1000)
        .unwrap()
        .changes
        .is_empty());
}

/// Installing a snapshot replaces what the applier remembers of the keys
/// (`key_cache`): a put after the install carries the snapshot's versions
/// of its key forward, not the ones the member had written before.
#[tokio::test]
async fn a_put_after_an_install_carries_the_snapshots_versions_forward() {
    let dir = tempfile::tempdir().unwrap();
    // The leader's a/00001 was written once, at revision 1.
    let (meta, sent) = leader_snapshot(dir.path(), 5).await;
    let mut store = utopia_storage::open(&dir.path().join("follower")).unwrap();
    // The follower's a/00001: written three times, at revisions 1 to 3.
    let writes = (1..=3).map(|i| Ok((common::put_entry(i, "a/00001".into(), vec![b'f']), None)));
    store
        .state_machine
        .apply(futures::stream::iter(writes))
        .await
        .unwrap();
    store
        .state_machine
        .install_snapshot(&meta, SnapshotData::from_file(sent).unwrap())
        .await
        .unwrap();
    let next = meta.last_log_id.map(|l| l.index()).unwrap() + 1;
    let put = common::put_entry(next, "a/00001".into(), vec![b'n']);
    store
        .state_machine
        .apply(futures::stream::iter([Ok((put, None))]))
        .await
        .unwrap();
    let got = store
        .reader
        .range(b"a/00001", b"", 0, usize::MAX, 0, false, false)
        .unwrap();
    let kv = &got.kvs[0];
    assert_eq!(
        (kv.create_revision, kv.version, kv.mod_revision),
        (1, 2, 6),
        "{kv:?}"
    );
}

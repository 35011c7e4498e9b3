//! What the leader reads to send a follower in one `AppendEntries` is
//! bounded in bytes, from the in-memory recent entries as from RocksDB, and
//! always holds at least one entry, however large; a follower stores the
//! encodings its leader sent.

mod common;

use utopia_raft::openraft_api::{EntryOf, IOFlushed, RaftEntry, RaftLogReader, RaftLogStorage};
use utopia_raft::TypeConfig;
use utopia_storage::REPLICATION_BATCH_BYTES_MAX;

const VALUE_BYTES: usize = 1 << 20;

fn put(index: u64, value_bytes: usize) -> EntryOf<TypeConfig> {
    common::put_entry(index, format!("k{index:04}"), vec![b'v'; value_bytes])
}

async fn append(store: &mut utopia_storage::LogStore, entries: Vec<EntryOf<TypeConfig>>) {
    // Appended entries are readable once `append` returns; their fsync
    // is not what these reads are about.
    store
        .append(entries, IOFlushed::noop())
        .await
        .expect("append");
}

fn indexes(entries: &[EntryOf<TypeConfig>]) -> Vec<u64> {
    entries.iter().map(RaftEntry::index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_batch_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = utopia_storage::open(dir.path()).unwrap().log_store;
    // 48 entries of 1 MiB: more than the recent entries kept in memory, so
    // the oldest are read back from RocksDB.
    let entries = 48u64;
    append(
        &mut log,
        (1..=entries).map(|i| put(i, VALUE_BYTES)).collect(),
    )
    .await;

    let per_batch = (REPLICATION_BATCH_BYTES_MAX / VALUE_BYTES) as u64;
    for start in [1, entries - per_batch - 2] {
        let batch = log
            .limited_get_log_entries(start, entries + 1)
            .await
            .unwrap();
        assert!(
            !batch.is_empty() && batch.len() as u64 <= per_batch,
            "{} entries of {VALUE_BYTES} bytes from {start}",
            batch.len()
        );
        assert_eq!(
            indexes(&batch),
            (start..start + batch.len() as u64).collect::<Vec<_>>()
        );
    }

    // Unlimited reads (apply, snapshots) still read the whole range.
    let all = log.try_get_log_entries(1..=entries).await.unwrap();
    assert_eq!(all.len() as u64, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_larger_than_a_batch_is_sent_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = utopia_storage::open(dir.path()).unwrap().log_store;
    let big = REPLICATION_BATCH_BYTES_MAX + 1;
    append(&mut log, vec![put(1, big), put(2, big), put(3, 10)]).await;
    let batch = log.limited_get_log_entries(1, 4).await.unwrap();
    assert_eq!(indexes(&batch), vec![1]);
    let batch = log.limited_get_log_entries(2, 4).await.unwrap();
    assert_eq!(indexes(&batch), vec![2]);
    let batch = log.limited_get_log_entries(3, 4).await.unwrap();
    assert_eq!(indexes(&batch), vec![3]);

    // Small entries go many to a batch.
    append(&mut log, (4..=300).map(|i| put(i, 100)).collect()).await;
    let batch = log.limited_get_log_entries(3, 301).await.unwrap();
    assert_eq!(batch.len(), 298);
}

/// A follower's log stores the encoding its leader sent for an entry (here
/// one that writes the index in a longer head than serde would, so that
/// the stored bytes tell which was kept), and reads it back as the entry
/// after a restart. An encoding held for another decoding of an entry,
/// even under its log id, is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stores_the_encodings_its_leader_sent() {
    use utopia_raft::EncodedEntries;

    let dir = tempfile::tempdir().unwrap();
    let (kept, other) = (put(9, 10), put(10, 10));
    let serde_bytes = |e: &EntryOf<TypeConfig>| utopia_raft::event::encode(e).unwrap();
    let index_9 = b"\x65index\x09";
    let at = serde_bytes(&kept)
        .windows(index_9.len())
        .position(|w| w == index_9)
        .expect("the index's key and value");
    let mut sent = serde_bytes(&kept);
    sent.splice(at + index_9.len() - 1..at + index_9.len(), [0x18, 0x09]);
    assert_eq!(
        utopia_raft::event::decode::<EntryOf<TypeConfig>>(&sent).unwrap(),
        kept
    );
    {
        let mut log = utopia_storage::open(dir.path()).unwrap().log_store;
        // `other`'s log id with bytes, but another decoding: not used.
        log.received(vec![
            (kept.clone(), sent.clone()),
            (put(10, 10), b"not this one".to_vec()),
        ]);
        append(&mut log, vec![kept.clone(), other.clone()]).await;
        let mut stored = Vec::new();
        assert!(log.append_encoded(&[kept.clone(), other.clone()], &mut stored));
        assert_eq!(stored, [sent, serde_bytes(&other)].concat());
    }
    let mut log = utopia_storage::open(dir.path()).unwrap().log_store;
    assert_eq!(
        log.try_get_log_entries(9..=10).await.unwrap(),
        vec![kept, other]
    );
}

//! A backlog of committed entries larger than one apply chunk is applied in
//! full and in order, in several writes, on a multi-threaded runtime (where
//! large chunks leave the runtime's thread) as on a single-threaded one.

mod common;

use utopia_raft::openraft_api::{EntryOf, RaftStateMachine};
use utopia_raft::TypeConfig;

const ENTRIES: u64 = 3000;

fn put(index: u64) -> EntryOf<TypeConfig> {
    // Each key twice, so that later entries read what earlier ones in
    // other chunks wrote.
    let key = format!("k{:04}", index % (ENTRIES / 2));
    common::put_entry(index, key, index.to_string().into_bytes())
}

async fn apply_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = utopia_storage::open(dir.path()).unwrap();
    let entries = futures::stream::iter((1..=ENTRIES).map(|i| Ok((put(i), None))));
    store.state_machine.apply(entries).await.unwrap();

    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index()), Some(ENTRIES));
    let (revision, _) = store.reader.revisions().unwrap();
    assert_eq!(revision, ENTRIES as i64);
    let all = store
        .reader
        .range(b"k", &[0], 0, usize::MAX, 0, false, false)
        .unwrap();
    assert_eq!(all.kvs.len() as u64, ENTRIES / 2);
    for kv in &all.kvs {
        assert_eq!(kv.version, 2, "{kv:?}");
        let n: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
        assert!(n > ENTRIES / 2, "{kv:?} holds its first value");
        assert_eq!(kv.mod_revision, n as i64, "{kv:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_applied_in_chunks_on_a_multi_threaded_runtime() {
    apply_backlog().await;
}

#[tokio::test]
async fn a_backlog_is_applied_in_chunks_on_a_current_thread_runtime() {
    apply_backlog().await;
}

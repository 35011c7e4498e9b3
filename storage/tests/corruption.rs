//! Bad bytes on disk give an error naming where they are; never a panic or
//! a silent skip.

use utopia_raft::openraft_api::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use utopia_storage::keys::Cf;

fn poke(dir: &std::path::Path, cf: Cf, key: &[u8], value: &[u8]) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
    let db = rocksdb::DB::open_cf(&opts, dir.join("db"), names).expect("open the store's rocksdb");
    db.put_cf(db.cf_handle(cf.name()).unwrap(), key, value)
        .unwrap();
}

#[tokio::test]
async fn corrupt_log_entries_name_their_index() {
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    poke(dir.path(), Cf::RaftLog, &7u64.to_be_bytes(), b"\xa1garbage");
    let mut store = utopia_storage::open(dir.path()).unwrap();
    let err = store
        .log_store
        .get_log_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("raft_log") && err.contains("\\x07"), "{err}");
    let err = store
        .log_store
        .try_get_log_entries(0..10)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("raft_log"), "{err}");
}

#[tokio::test]
async fn corrupt_state_machine_metadata_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    poke(dir.path(), Cf::SmMeta, b"applied", b"\xff\xff");
    let mut store = utopia_storage::open(dir.path()).unwrap();
    let err = store
        .state_machine
        .applied_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("sm_meta") && err.contains("applied"), "{err}");
}

#[test]
fn corrupt_documents_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    poke(dir.path(), Cf::Kv, b"k", b"\x00\x01");
    let store = utopia_storage::open(dir.path()).unwrap();
    let err = store
        .reader
        .range(b"k", b"", 0, usize::MAX, 0, false, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("kv") && err.contains("k"), "{err}");
}

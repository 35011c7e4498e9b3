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

/// A damaged key in the ingest state: the applier, which walks the expiry
/// index on every batch, stops with the key named instead of panicking on
/// a key too short to slice.
#[test]
fn a_malformed_ingest_expiry_key_stops_the_applier_naming_it() {
    use utopia_raft::event::{Event, Request};
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    poke(dir.path(), Cf::Ingest, b"x", b"");
    let store = utopia_storage::open(dir.path()).unwrap();
    let batch = Request::new(
        1_000,
        Event::IngestBatch {
            epoch: 0,
            proposer: 1,
            items: vec![],
        },
    );
    let err = utopia_storage::apply::Applier::new(&store.db)
        .apply(&batch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ingest") && err.contains("x"), "{err}");
}

/// Index keys longer than their layout are named, not read by their first
/// bytes.
#[test]
fn malformed_index_keys_are_named_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    drop(utopia_storage::open(dir.path()).unwrap());
    poke(dir.path(), Cf::Ingest, b"w\0\0\0\0\0\0\0\x01!", b"\x01");
    poke(dir.path(), Cf::Commands, b"p\0\0\0\0\0\0\0\x01!", b"");
    let store = utopia_storage::open(dir.path()).unwrap();
    let err = store.reader.ingest_weights().unwrap_err().to_string();
    assert!(err.contains("ingest") && err.contains("w"), "{err}");
    let err = store.reader.pending_commands(10).unwrap_err().to_string();
    assert!(err.contains("commands") && err.contains("p"), "{err}");
}

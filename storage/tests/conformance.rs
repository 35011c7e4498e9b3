//! openraft's storage conformance suite against the RocksDB log store and
//! state machine.

use utopia_raft::openraft_api::testing::{StoreBuilder, Suite};
use utopia_raft::openraft_api::StorageError;
use utopia_raft::TypeConfig;
use utopia_storage::{LogStore, StateMachine};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let store = utopia_storage::open(dir.path()).expect("open a fresh store");
        Ok((dir, store.log_store, store.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}

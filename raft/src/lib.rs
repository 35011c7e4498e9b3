//! Consensus for utopia.
//!
//! This crate owns the openraft type configuration ([`TypeConfig`]), the
//! events carried in the log ([`event`]) and [`RaftNode`], the handle the
//! server uses to propose events and to confirm linearizable reads.
//!
//! Architecture invariant: this crate knows nothing of RocksDB, gRPC clients
//! or MQTT. Storage is supplied by the caller through openraft's storage
//! traits; openraft's own types stay inside this crate and `storage`, so that
//! an openraft upgrade touches few files.

mod error;
pub mod event;
pub mod network;
mod node;

pub use error::ProposeError;
pub use event::{Event, Request, Response};
pub use network::{
    ClusterId, EncodedEntries, ForwardCheck, PeerGuard, Refusal, TransportService,
    TransportSettings,
};
pub use node::{NodeConfig, NodeStatus, PeerPolicy, RaftNode, RaftTimings, Role, StartError};

/// A snapshot's bytes on their way between the state machine and the
/// transport, read once from front to back: a file a follower received, or
/// a state-machine view encoded as it is read.
pub struct SnapshotData {
    bytes: Box<dyn std::io::Read + Send>,
    /// The file the bytes are in, when they are in one: the state machine
    /// keeps it (renamed) until it has installed it.
    file: Option<std::path::PathBuf>,
}

impl SnapshotData {
    pub fn new(bytes: impl std::io::Read + Send + 'static) -> Self {
        Self {
            bytes: Box::new(bytes),
            file: None,
        }
    }

    /// The snapshot in the file at `path`.
    pub fn from_file(path: std::path::PathBuf) -> std::io::Result<Self> {
        let file = std::fs::File::open(&path)?;
        Ok(Self {
            bytes: Box::new(file),
            file: Some(path),
        })
    }

    /// The file the snapshot is in, if it is in one.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }
}

impl std::io::Read for SnapshotData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.bytes.read(buf)
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotData")
    }
}

openraft::declare_raft_types!(
    /// utopia's openraft type configuration: node ids are `u64`, nodes are
    /// known by their gRPC address, log entries carry a [`Request`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// Re-exports of the openraft items the storage crate implements against.
pub mod openraft_api {
    pub use openraft::alias::{
        EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf,
    };
    pub use openraft::entry::RaftEntry;
    pub use openraft::storage::{
        EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
        RaftStateMachine,
    };
    pub use openraft::{BasicNode, EntryPayload, OptionalSend, StorageError, StoredMembership};
    pub mod testing {
        pub use openraft::testing::log::{StoreBuilder, Suite};
    }
}

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

pub mod event;
pub mod network;
mod node;

pub use event::{Event, Request, Response};
pub use network::{TransportService, TransportSettings};
pub use node::{NodeStatus, ProposeError, RaftNode, RaftTimings, Role};

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

//! RocksDB storage for utopia.
//!
//! One RocksDB database per data directory holds the Raft log, Raft's
//! metadata and the state machine — key-value pairs with their history, the
//! change feed, leases, and the document collections with their indexes —
//! each in its own column family ([`keys::Cf`]).
//!
//! Architecture invariant: this is the only crate that links RocksDB or knows
//! a key encoding ([`keys`]: every layout, its encoder and its parser).
//! Applying events ([`apply`]) is pure and tested without RocksDB;
//! [`LogStore`] and [`StateMachine`] adapt RocksDB to openraft's storage
//! traits, and [`Reader`] serves reads to the API. Records are CBOR
//! ([`codec`]); documents are typed ([`documents`]) and stored as JSON with
//! sorted keys, the same bytes from one build to the next.
//!
//! Durability: log appends are acknowledged to Raft only after the WAL is
//! synced ([`LogStore`]'s flusher shares one fsync among every append
//! waiting for it). State machine writes skip the WAL, as the log already
//! holds what they are made from: RocksDB flushes every column family at
//! once, so after a crash the state machine is at the last applied batch
//! flushed, and Raft applies the rest again from the durable log, which
//! keeps every entry until the state machine that applied it is flushed.

pub mod apply;
pub mod auth;
pub mod backup;
pub mod codec;
mod db;
pub mod documents;
pub mod ingest;
pub mod io_metrics;
pub mod key_cache;
pub mod keys;
mod log_store;
pub mod read;
mod snapshot;
mod state_machine;

pub use apply::{ChangeRecord, FeedChange, LeaseRecord};
pub use db::{
    open, open_with, Db, NodeIdentity, OpenOptions, OpenedStore, BLOCK_CACHE_BYTES_MAX_DEFAULT,
    MEMTABLE_BYTES_MAX_DEFAULT,
};
pub use key_cache::KEY_CACHE_BYTES_MAX_DEFAULT;
pub use log_store::{LogStore, REPLICATION_BATCH_BYTES_MAX};
pub use read::{DocPage, Reader, WatchBatch};
pub use state_machine::{StateMachine, MIRROR_FEED_LOG_INDEXES_KEPT};

use keys::Cf;

/// A storage failure. Corrupt bytes name the column family and key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(String),
    #[error("corrupt record in {cf} at key {key}: {reason}")]
    Corrupt {
        cf: &'static str,
        key: String,
        reason: String,
    },
    #[error("{0}")]
    Io(String),
}

impl StoreError {
    pub fn corrupt(cf: Cf, key: &[u8], reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            cf: cf.name(),
            key: printable_key(key),
            reason: reason.into(),
        }
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Rocks(e.to_string())
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => {
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
            }
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// A key for error messages: printable ASCII as is, anything else escaped.
pub fn printable_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

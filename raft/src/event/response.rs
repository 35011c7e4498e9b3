//! What applying an event produced: the response every replica computes
//! identically, and the rejections that are part of it.

use serde::{Deserialize, Serialize};

use super::{AlarmKind, Bytes};

/// A key's record as the state machine stores and returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Range(RangeResult),
    Put { prev: Option<KeyValue> },
    Delete { deleted: i64, prev: Vec<KeyValue> },
}

/// What applying one event produced. Rejections that every replica reaches
/// identically (a lease that does not exist, say) are responses, not errors:
/// the event is in the log either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    /// The store's revision after the event.
    pub revision: i64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    Done,
    Put {
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: i64,
        prev: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        results: Vec<StepResult>,
    },
    Lease {
        id: i64,
        ttl_s: i64,
    },
    Device {
        id: String,
    },
    /// An ingest batch was applied: how many items became events, how many
    /// were suppressed as redeliveries, how many were rejected.
    Ingested {
        applied: u32,
        suppressed: u32,
        rejected: u32,
    },
    /// A command was issued under this id.
    Command {
        id: u64,
    },
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    #[error("lease {0} already exists")]
    LeaseExists(i64),
    #[error("revision {requested} is already compacted (compacted up to {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("key {0:?} is modified more than once in one transaction")]
    DuplicateKey(String),
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("ingest epoch {proposed} is not the current epoch {current}")]
    StaleEpoch { proposed: u64, current: u64 },
    #[error("{0} not found")]
    NotFound(String),
    /// A transaction (or a delete) would read or touch more bytes than its
    /// bound: ranges and range compares count their pairs, deletes their
    /// keys, `prev_kv` the previous values.
    #[error(
        "the request reads or touches more than {bytes_max} bytes (txn_bytes_max); \
         read large ranges with Range, which pages them, and delete in smaller ranges"
    )]
    TooLarge { bytes_max: u64 },
    /// An event that adds data while an alarm is active (etcd's "mvcc:
    /// database space exceeded").
    #[error(
        "database space exceeded: {} alarm of member {node_id} is active (its database passed \
         limits.db_bytes_max); reads, deletes, compaction and lease revokes still work: free \
         space (delete, compact), then `utopia alarm disarm`",
        alarm.name()
    )]
    Alarm { node_id: u64, alarm: AlarmKind },
    /// A quota of [`Quotas`](super::Quotas) would be passed.
    #[error("quota exceeded: {0}")]
    Quota(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The state does not allow the change (enabling auth without a root
    /// user, deleting root while auth is on).
    #[error("{0}")]
    FailedPrecondition(String),
}

impl Rejection {
    /// Short name, for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::LeaseNotFound(_) => "lease_not_found",
            Rejection::LeaseExists(_) => "lease_exists",
            Rejection::Compacted { .. } => "compacted",
            Rejection::FutureRevision { .. } => "future_revision",
            Rejection::DuplicateKey(_) => "duplicate_key",
            Rejection::Invalid(_) => "invalid",
            Rejection::StaleEpoch { .. } => "stale_epoch",
            Rejection::NotFound(_) => "not_found",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Alarm { .. } => "alarm",
            Rejection::Quota(_) => "quota",
            Rejection::AlreadyExists(_) => "already_exists",
            Rejection::FailedPrecondition(_) => "failed_precondition",
        }
    }
}

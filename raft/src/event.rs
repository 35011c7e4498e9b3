//! The events carried in the Raft log.
//!
//! Every change to utopia's state is one [`Request`] in the log: a versioned
//! envelope holding one [`Event`] and the proposer's wall-clock time. Applying
//! an event must be deterministic, so anything time-dependent (first seen,
//! lease grant time) is taken from `at_ms`, never from the applying node's
//! clock. Events are encoded in CBOR; [`encode`] and [`decode`] are the only
//! way bytes become events and back.

use serde::{Deserialize, Serialize};

mod auth;
pub use auth::{Access, AuthChange, Permission, PermissionTarget};

/// The encoding version written by this build. Decoders accept every version
/// up to this one; a newer version is refused with a clear error rather than
/// misread.
pub const EVENT_VERSION: u16 = 1;

/// One log entry's application payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Encoding version, [`EVENT_VERSION`] when written by this build.
    #[serde(rename = "v")]
    pub version: u16,
    /// Proposer's wall-clock time, milliseconds since the Unix epoch.
    #[serde(rename = "t")]
    pub at_ms: u64,
    #[serde(rename = "e")]
    pub event: Event,
}

impl Request {
    pub fn new(at_ms: u64, event: Event) -> Self {
        Self {
            version: EVENT_VERSION,
            at_ms,
            event,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.event.name(), self.at_ms)
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "revision {}", self.revision)
    }
}

/// A byte string serialised as a CBOR byte string rather than an array;
/// reference-counted, so that cloning a log entry (once for each follower
/// and once for the state machine) does not copy its keys and values.
pub type Bytes = bytes::Bytes;

/// Everything that can change utopia's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Event {
    // ---- key-value
    Put(PutOp),
    Delete(DeleteOp),
    Txn(TxnOp),
    /// Discard key history before `revision`.
    Compact {
        revision: i64,
    },

    // ---- leases
    LeaseGrant {
        id: i64,
        ttl_s: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Proposed by the leader when a lease's deadline has passed; applying it
    /// deletes the lease's keys exactly as a revoke does.
    LeaseExpired {
        id: i64,
    },

    // ---- devices and zones
    /// A device published data: `value` is stored at `post_type/path...` in
    /// the device's data tree. A device seen for the first time in a zone is
    /// registered there by the same event.
    DeviceDataUpdated(DeviceData),
    /// Explicit registration of a device in a zone, without data.
    DeviceRegistered {
        host: String,
        zone: String,
        class: String,
        device_id: String,
    },

    // ---- cluster
    FellowStateChanged(FellowState),
    DbServerRegistered {
        host: String,
        port: u16,
        kind: String,
    },
    DbServerProblematic {
        host: String,
        port: u16,
        kind: String,
        reason: String,
    },

    // ---- XML configurations
    ConfigProposed(ConfigVersion),
    ConfigAccepted {
        name: String,
        version: u64,
        hash: String,
    },
    ConfigRejected {
        name: String,
        version: u64,
        hash: String,
        reason: String,
    },

    // ---- statistics
    StatIncremented {
        id: String,
        kind: String,
        counter: StatCounter,
        by: u64,
    },

    // ---- MQTT ingest
    /// A member announces the weight it asks for in topic ownership.
    IngestWeight {
        node_id: u64,
        weight: u32,
    },
    /// The leader's decision on which members own topics from now on:
    /// `epoch` increases by one with every change. Batches proposed under an
    /// older epoch are refused (fencing a member that lost its topics).
    IngestOwnersChanged {
        epoch: u64,
        members: Vec<IngestMember>,
        /// How long a committed message's digest is kept to suppress
        /// redelivered copies; decided here so that every replica agrees.
        dedupe_window_ms: u64,
    },
    /// Messages from the MQTT broker, proposed by the owner of their
    /// devices' topics under `epoch`.
    IngestBatch {
        epoch: u64,
        proposer: u64,
        items: Vec<IngestItem>,
    },

    // ---- device commands
    /// A command for a device; the applier gives it the next command id.
    CommandIssued {
        device: String,
        post_type: String,
        /// The command's payload, JSON text.
        json: String,
        /// Publishes before the command fails.
        attempts_max: u32,
    },
    /// The owner of the device published the command (attempt number
    /// `attempt`, counting from 1).
    CommandAttempted {
        id: u64,
        attempt: u32,
    },
    /// The command is given up: no reply after its last attempt.
    CommandFailed {
        id: u64,
        reason: String,
    },

    // ---- authentication and roles
    Auth(AuthChange),
}

/// A member taking part in topic ownership, with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestMember {
    pub node_id: u64,
    pub weight: u32,
}

/// One MQTT message turned into an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestItem {
    /// blake3 of topic and payload, 16 bytes: what every server matches its
    /// own copy of the message against, and what suppresses redeliveries.
    pub digest: Bytes,
    /// The broker marked this copy as a redelivery (or the proposer may have
    /// proposed it before): suppressed if the same digest was committed
    /// within the dedupe window.
    pub redelivered: bool,
    pub body: IngestBody,
}

/// What an ingested message means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum IngestBody {
    /// Device data.
    Data(DeviceData),
    /// A device's reply to command `command_id`.
    Reply {
        host: String,
        zone: String,
        class: String,
        device_id: String,
        command_id: u64,
        /// The reply payload, JSON text.
        json: String,
    },
    /// A message the owner refused (for example a device over its rate):
    /// recorded so that every server that holds a copy acknowledges it to
    /// the broker, and counted.
    Dropped { device: String, reason: String },
}

impl Event {
    /// Short name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Put(_) => "put",
            Event::Delete(_) => "delete",
            Event::Txn(_) => "txn",
            Event::Compact { .. } => "compact",
            Event::LeaseGrant { .. } => "lease_grant",
            Event::LeaseRevoke { .. } => "lease_revoke",
            Event::LeaseExpired { .. } => "lease_expired",
            Event::DeviceDataUpdated(_) => "device_data_updated",
            Event::DeviceRegistered { .. } => "device_registered",
            Event::FellowStateChanged(_) => "fellow_state_changed",
            Event::DbServerRegistered { .. } => "db_server_registered",
            Event::DbServerProblematic { .. } => "db_server_problematic",
            Event::ConfigProposed(_) => "config_proposed",
            Event::ConfigAccepted { .. } => "config_accepted",
            Event::ConfigRejected { .. } => "config_rejected",
            Event::StatIncremented { .. } => "stat_incremented",
            Event::IngestWeight { .. } => "ingest_weight",
            Event::IngestOwnersChanged { .. } => "ingest_owners_changed",
            Event::IngestBatch { .. } => "ingest_batch",
            Event::CommandIssued { .. } => "command_issued",
            Event::CommandAttempted { .. } => "command_attempted",
            Event::CommandFailed { .. } => "command_failed",
            Event::Auth(change) => change.name(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutOp {
    pub key: Bytes,
    pub value: Bytes,
    /// 0: no lease.
    #[serde(default)]
    pub lease: i64,
    #[serde(default)]
    pub prev_kv: bool,
}

/// Deletes `key`, or every key in `[key, range_end)` when `range_end` is
/// non-empty (`[0]` meaning "to the end").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteOp {
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    #[serde(default)]
    pub prev_kv: bool,
}

/// A read inside a transaction; evaluated at the transaction's revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeOp {
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub keys_only: bool,
    #[serde(default)]
    pub count_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStep {
    Range(RangeOp),
    Put(PutOp),
    Delete(DeleteOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value(Bytes),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnOp {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnStep>,
    pub failure: Vec<TxnStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceData {
    pub host: String,
    pub zone: String,
    pub class: String,
    pub device_id: String,
    pub post_type: String,
    pub path: Vec<String>,
    /// The value as JSON text (object, array, number, string, bool or null).
    pub json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FellowRole {
    Leader,
    Follower,
    Learner,
    Candidate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FellowState {
    pub node_id: u64,
    pub host: String,
    pub addr: String,
    pub active: bool,
    pub role: FellowRole,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub name: String,
    /// "config" or "schema".
    pub kind: String,
    pub version: u64,
    /// blake3 of `xml`, hex.
    pub hash: String,
    pub xml: String,
    pub proposer: u64,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatCounter {
    Attempts,
    Failures,
}

// ------------------------------------------------------------------ responses

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
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The state does not allow the change (enabling auth without a root
    /// user, deleting root while auth is on).
    #[error("{0}")]
    FailedPrecondition(String),
}

// ------------------------------------------------------------------ codec

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode CBOR: {0}")]
    Encode(String),
    #[error("decode CBOR: {0}")]
    Decode(String),
    #[error("event version {found} is newer than this build understands ({supported})")]
    Version { found: u16, supported: u16 },
}

impl Event {
    /// How many events applying this one amounts to: an ingest batch counts
    /// its items. Bounds the work applied in one write.
    pub fn work_units(&self) -> usize {
        match self {
            Event::IngestBatch { items, .. } => items.len().max(1),
            _ => 1,
        }
    }
}

/// Serialises any value to CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Deserialises a CBOR value; bad bytes give an error, never a panic.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a request and checks its version.
pub fn decode_request(bytes: &[u8]) -> Result<Request, CodecError> {
    let req: Request = decode(bytes)?;
    if req.version > EVENT_VERSION {
        return Err(CodecError::Version {
            found: req.version,
            supported: EVENT_VERSION,
        });
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.as_bytes().to_vec())
    }

    #[test]
    fn events_round_trip_through_cbor() {
        let events = vec![
            Event::Put(PutOp {
                key: b("a"),
                value: b("1"),
                lease: 0,
                prev_kv: true,
            }),
            Event::Delete(DeleteOp {
                key: b("a"),
                range_end: b("b"),
                prev_kv: false,
            }),
            Event::Txn(TxnOp {
                compares: vec![Compare {
                    key: b("a"),
                    range_end: Bytes::new(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(3),
                }],
                success: vec![TxnStep::Put(PutOp {
                    key: b("a"),
                    value: b("2"),
                    lease: 0,
                    prev_kv: false,
                })],
                failure: vec![TxnStep::Range(RangeOp {
                    key: b("a"),
                    range_end: Bytes::new(),
                    limit: 0,
                    keys_only: false,
                    count_only: false,
                })],
            }),
            Event::LeaseGrant { id: 7, ttl_s: 10 },
            Event::DeviceDataUpdated(DeviceData {
                host: "h".into(),
                zone: "z".into(),
                class: "thermo".into(),
                device_id: "1".into(),
                post_type: "temp".into(),
                path: vec!["c".into()],
                json: "21.5".into(),
            }),
            Event::StatIncremented {
                id: "d".into(),
                kind: "device".into(),
                counter: StatCounter::Failures,
                by: 1,
            },
        ];
        for event in events {
            let req = Request::new(1_700_000_000_000, event);
            let bytes = encode(&req).unwrap();
            assert_eq!(decode_request(&bytes).unwrap(), req);
        }
    }

    #[test]
    fn byte_strings_are_compact() {
        let req = Request::new(
            0,
            Event::Put(PutOp {
                key: b("k"),
                value: Bytes::from(vec![0u8; 100]),
                lease: 0,
                prev_kv: false,
            }),
        );
        // 100 zero bytes as a CBOR byte string (~101 bytes), not an array of
        // 100 integers (~200 bytes); the rest is field names and framing.
        let len = encode(&req).unwrap().len();
        assert!(len < 160, "{len} bytes");
    }

    #[test]
    fn byte_strings_encode_as_they_did_when_they_were_byte_bufs() {
        // Logs and state written before keys and values became
        // reference-counted must read back the same.
        for v in [vec![], vec![0u8, 1, 0xff], vec![7u8; 300]] {
            let old = encode(&serde_bytes::ByteBuf::from(v.clone())).unwrap();
            assert_eq!(encode(&Bytes::from(v.clone())).unwrap(), old);
            assert_eq!(decode::<Bytes>(&old).unwrap(), Bytes::from(v));
        }
    }

    #[test]
    fn bad_bytes_are_an_error() {
        for bytes in [&b""[..], b"\xff", b"\xa1\x61v\x19\xff\xff", b"garbage"] {
            assert!(decode_request(bytes).is_err());
        }
    }

    #[test]
    fn newer_versions_are_refused() {
        let mut req = Request::new(0, Event::LeaseRevoke { id: 1 });
        req.version = EVENT_VERSION + 1;
        let err = decode_request(&encode(&req).unwrap()).unwrap_err();
        assert!(matches!(err, CodecError::Version { .. }), "{err}");
    }
}

//! The events carried in the Raft log.
//!
//! Every change to utopia's state is one [`Request`] in the log: a versioned
//! envelope holding one [`Event`] and the proposer's wall-clock time. Applying
//! an event must be deterministic, so anything time-dependent (first seen,
//! lease grant time) is taken from `at_ms`, never from the applying node's
//! clock. Events are encoded in CBOR; [`encode`] and [`decode`] are the only
//! way bytes become events and back.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod auth;
mod kv;
mod response;
mod tagged;
mod xmlconf;

pub use auth::{Access, AuthChange, Permission, PermissionTarget};
pub use kv::{Compare, CompareOp, CompareTarget, DeleteOp, PutOp, RangeOp, TxnOp, TxnStep};
pub use response::*;
pub(crate) use tagged::TAG;
pub use xmlconf::{ClassRules, CommandRule, ConfigVote, FieldRule, FieldRuleKind, VoteSource};

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
    /// Shared: a log entry is cloned for each replication stream and for
    /// the state machine, and the event is never changed once proposed.
    #[serde(
        rename = "e",
        serialize_with = "serialize_shared",
        deserialize_with = "deserialize_shared"
    )]
    pub event: Arc<Event>,
    /// The largest document, in bytes, applying this event may leave behind:
    /// the proposer's `limits.document_bytes_max`, carried in the event so
    /// that every replica applies the same limit. None (events that write
    /// no document, and entries from older builds): the applier's ceiling.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub document_bytes_max: Option<u64>,
}

impl Request {
    pub fn new(at_ms: u64, event: Event) -> Self {
        Self {
            version: EVENT_VERSION,
            at_ms,
            event: Arc::new(event),
            document_bytes_max: None,
        }
    }

    /// The same request, limiting the documents it writes to `bytes`.
    pub fn with_document_bytes_max(mut self, bytes: u64) -> Self {
        self.document_bytes_max = Some(bytes);
        self
    }
}

fn serialize_shared<S: serde::Serializer>(event: &Arc<Event>, s: S) -> Result<S::Ok, S::Error> {
    Event::serialize(event, s)
}

pub(crate) fn deserialize_shared<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Arc<Event>, D::Error> {
    tagged::deserialize(d).map(Arc::new)
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
    /// The mirror into a database server failed to write and verify
    /// repeatedly: every member stops using it until it is registered
    /// again (`utopia db add`). Refused for a server that is not
    /// registered, so a late report cannot bring back a removed one.
    DbServerProblematic {
        host: String,
        port: u16,
        kind: String,
        reason: String,
    },
    /// `utopia db remove`: the server's `db_servers` document is deleted
    /// (refused for one that is not registered).
    DbServerRemoved {
        host: String,
        port: u16,
        kind: String,
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
    /// A member's vote for the content of `name@version`
    /// ([`ConfigVote`]). Refused for a version already decided with
    /// another hash, or not above the accepted version of that name.
    ConfigVote(ConfigVote),
    /// The agreement window of `name@version` is over (by this event's
    /// `at_ms`): the hash whose voters' weights sum highest is accepted,
    /// ties to the lower hash, and the other hashes are superseded.
    /// Proposed by the leader; refused before the window's end.
    ConfigDecide {
        name: String,
        version: u64,
    },
    /// A file in `node`'s configuration directory that is not taken: not a
    /// valid configuration, or refused by the log (`reason` says which).
    /// `file` is its name in the directory.
    ConfigFileRejected {
        node: u64,
        file: String,
        hash: String,
        reason: String,
    },
    /// Whether `node` holds the accepted `name@version` on its disk.
    /// `failing`: its bounded write-and-verify retries failed; it ignores
    /// that class, and ingest gives its devices of the class to other
    /// members. Cleared (`failing: false`) once it verifies the file.
    ConfigSyncState {
        node: u64,
        name: String,
        version: u64,
        failing: bool,
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

    // ---- cluster (continued)
    /// A member tells the cluster the address clients reach it at, so that
    /// any member can send clients on to the leader.
    ClientAddressPublished {
        node_id: u64,
        addr: String,
    },
    // ---- alarms
    /// Member `node_id` raises an alarm: for [`AlarmKind::NoSpace`], its
    /// database passed its `limits.db_bytes_max`. While any alarm is
    /// active, events that add data are rejected on every replica (see
    /// [`Event::adds_data`]).
    AlarmRaised {
        node_id: u64,
        alarm: AlarmKind,
        /// How many disarms the member had applied when it measured: a
        /// raise measured before a later disarm is stale, and ignored.
        disarms: u64,
    },
    /// An operator disarms `alarm` of member `node_id` (0: of every
    /// member). A member still over its limit raises it again.
    AlarmDisarmed {
        node_id: u64,
        alarm: AlarmKind,
    },

    // ---- quotas
    /// The quotas every replica applies from here on: the leader's
    /// `limits`, proposed when they differ from the ones in the state.
    QuotasChanged(Quotas),

    // ---- authentication and roles
    Auth(AuthChange),
}

/// Quotas on what the store holds, applied alike on every replica because
/// they are part of the replicated state. 0: no quota (as before any was
/// set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quotas {
    /// Devices registered under one host; a new device past it is
    /// rejected (its MQTT messages are dropped and counted).
    #[serde(default)]
    pub devices_per_host_max: u64,
    /// Leases granted and not yet revoked or expired.
    #[serde(default)]
    pub leases_max: u64,
    /// Device commands awaiting a reply.
    #[serde(default)]
    pub commands_pending_max: u64,
    /// How long a settled (acknowledged or failed) command's record is
    /// kept.
    #[serde(default)]
    pub command_retention_ms: u64,
    /// Device data and commands of a class with no accepted configuration
    /// are refused (`configs.require_class`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_class: bool,
}

/// What an alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A member's database passed `limits.db_bytes_max` (etcd's NOSPACE).
    NoSpace,
}

impl AlarmKind {
    /// The name operators see, as etcd spells its alarms.
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
        }
    }
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
    #[serde(deserialize_with = "tagged::deserialize")]
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

/// The frequent events decode without serde's buffering (see `tagged`);
/// every variant's encoding is the derived one.
impl<'de> tagged::Tagged<'de> for Event {
    fn variant<A: serde::de::MapAccess<'de>>(
        tag: &str,
        rest: A,
    ) -> Result<tagged::Fast<Self, A>, A::Error> {
        use serde::de::value::MapAccessDeserializer as Rest;
        /// `Event::IngestBatch`'s fields, as the derived decoder reads them.
        #[derive(Deserialize)]
        struct IngestBatchFields {
            epoch: u64,
            proposer: u64,
            items: Vec<IngestItem>,
        }
        let event = match tag {
            "put" => Event::Put(PutOp::deserialize(Rest::new(rest))?),
            "delete" => Event::Delete(DeleteOp::deserialize(Rest::new(rest))?),
            "txn" => Event::Txn(TxnOp::deserialize(Rest::new(rest))?),
            "device_data_updated" => {
                Event::DeviceDataUpdated(DeviceData::deserialize(Rest::new(rest))?)
            }
            "ingest_batch" => {
                let f = IngestBatchFields::deserialize(Rest::new(rest))?;
                Event::IngestBatch {
                    epoch: f.epoch,
                    proposer: f.proposer,
                    items: f.items,
                }
            }
            _ => return Ok(tagged::Fast::Derived(rest)),
        };
        Ok(tagged::Fast::Done(event))
    }
}

/// Device data, nearly every ingested message, decodes without serde's
/// buffering (see `tagged`).
impl<'de> tagged::Tagged<'de> for IngestBody {
    fn variant<A: serde::de::MapAccess<'de>>(
        tag: &str,
        rest: A,
    ) -> Result<tagged::Fast<Self, A>, A::Error> {
        use serde::de::value::MapAccessDeserializer as Rest;
        Ok(match tag {
            "data" => {
                tagged::Fast::Done(IngestBody::Data(DeviceData::deserialize(Rest::new(rest))?))
            }
            _ => tagged::Fast::Derived(rest),
        })
    }
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
            Event::DbServerRemoved { .. } => "db_server_removed",
            Event::ConfigProposed(_) => "config_proposed",
            Event::ConfigAccepted { .. } => "config_accepted",
            Event::ConfigVote(_) => "config_vote",
            Event::ConfigDecide { .. } => "config_decide",
            Event::ConfigFileRejected { .. } => "config_file_rejected",
            Event::ConfigSyncState { .. } => "config_sync_state",
            Event::ConfigRejected { .. } => "config_rejected",
            Event::StatIncremented { .. } => "stat_incremented",
            Event::IngestWeight { .. } => "ingest_weight",
            Event::IngestOwnersChanged { .. } => "ingest_owners_changed",
            Event::IngestBatch { .. } => "ingest_batch",
            Event::CommandIssued { .. } => "command_issued",
            Event::CommandAttempted { .. } => "command_attempted",
            Event::CommandFailed { .. } => "command_failed",
            Event::ClientAddressPublished { .. } => "client_address_published",
            Event::AlarmRaised { .. } => "alarm_raised",
            Event::AlarmDisarmed { .. } => "alarm_disarmed",
            Event::QuotasChanged(_) => "quotas_changed",
            Event::Auth(change) => change.name(),
        }
    }

    /// Whether the event adds data to the store, and is therefore refused
    /// while an alarm is active: puts, transactions with a put in either
    /// branch, lease grants, device data and registrations, ingest
    /// batches, new commands, proposed configurations and statistics.
    /// Reads, deletes, compaction, lease revocation and expiry, alarms,
    /// membership and ownership upkeep, and the progress of commands
    /// already issued go on (as etcd lets deletes, compaction and disarm
    /// through under NOSPACE).
    pub fn adds_data(&self) -> bool {
        match self {
            Event::Put(_)
            | Event::LeaseGrant { .. }
            | Event::DeviceDataUpdated(_)
            | Event::DeviceRegistered { .. }
            | Event::IngestBatch { .. }
            | Event::CommandIssued { .. }
            | Event::ConfigProposed(_)
            | Event::ConfigVote(_)
            | Event::StatIncremented { .. } => true,
            Event::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .any(|s| matches!(s, TxnStep::Put(_))),
            Event::Delete(_)
            | Event::Compact { .. }
            | Event::LeaseRevoke { .. }
            | Event::LeaseExpired { .. }
            | Event::FellowStateChanged(_)
            | Event::DbServerRegistered { .. }
            | Event::DbServerProblematic { .. }
            | Event::DbServerRemoved { .. }
            | Event::ConfigAccepted { .. }
            | Event::ConfigRejected { .. }
            | Event::ConfigDecide { .. }
            | Event::ConfigFileRejected { .. }
            | Event::ConfigSyncState { .. }
            | Event::IngestWeight { .. }
            | Event::IngestOwnersChanged { .. }
            | Event::CommandAttempted { .. }
            | Event::CommandFailed { .. }
            | Event::AlarmRaised { .. }
            | Event::AlarmDisarmed { .. }
            | Event::QuotasChanged(_)
            | Event::ClientAddressPublished { .. }
            | Event::Auth(_) => false,
        }
    }
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
    check_version(decode(bytes)?)
}

/// The request, if this build reads its version.
pub fn check_version(req: Request) -> Result<Request, CodecError> {
    if req.version > EVENT_VERSION {
        return Err(CodecError::Version {
            found: req.version,
            supported: EVENT_VERSION,
        });
    }
    Ok(req)
}

#[cfg(test)]
pub(crate) mod tests;

//! The `limits` and `raft` groups of `utopiad.conf`: sizes, counts and
//! times, each with its default and its range.
//!
//! Every numeric setting is bounded where it is declared (`In::<MIN,
//! MAX>` or `Positive::<MAX>`): the upper bound is what the code using the
//! value holds, so that an absurd value is refused when the file is read
//! (exit 2, with the setting's name) rather than panicking or wrapping
//! later.

use serde::{Deserialize, Serialize};
use utopia_storage::apply::bounds;

use super::rules::{In, Positive};

/// Counts: they become `u32` counters, `usize` lengths, semaphore permits
/// (at most `usize::MAX >> 3`) and channel sizes.
pub const COUNT_MAX: u64 = u32::MAX as u64;
/// Sizes of a gRPC message or a part of one: gRPC frames a message with a
/// 32-bit length.
pub const MESSAGE_BYTES_MAX: u64 = u32::MAX as u64;
/// Durations in milliseconds: a year, far inside what tokio's timer
/// (2^36 ms) and `Instant` arithmetic hold.
pub const DURATION_MS_MAX: u64 = 365 * 86_400_000;
/// Sizes of whole stores (a snapshot, the database): 1 PiB, far beyond any
/// disk a node has, far inside what a `u64` of bytes holds.
pub const STORE_BYTES_MAX: u64 = 1 << 50;
/// Smallest document limit: a device's document with nothing in it takes
/// a few hundred bytes.
pub const DOCUMENT_BYTES_MIN: u64 = 1024;
/// The largest JSON depth the applier takes.
const JSON_DEPTH_MAX: u64 = bounds::JSON_DEPTH_MAX as u64;
/// The most bytes the applier itself lets one request touch.
const APPLY_BYTES_MAX: u64 = utopia_storage::apply::APPLY_BYTES_MAX;

/// Size and count limits on requests and server resources. All are > 0.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    #[serde(deserialize_with = "Positive::<MESSAGE_BYTES_MAX>::de")]
    pub key_bytes_max: u64,
    #[serde(deserialize_with = "Positive::<MESSAGE_BYTES_MAX>::de")]
    pub value_bytes_max: u64,
    /// Largest gRPC message.
    #[serde(deserialize_with = "Positive::<MESSAGE_BYTES_MAX>::de")]
    pub request_bytes_max: u64,
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub txn_ops_max: u64,
    /// Most keys one range request returns.
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub range_limit_max: u64,
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub watchers_max: u64,
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub proposals_in_flight_max: u64,
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub history_revisions_max: u64,
    /// Deepest JSON (or CBOR) value accepted from a device, a report or a
    /// command: 1..=[`bounds::JSON_DEPTH_MAX`], the most the applier takes.
    #[serde(deserialize_with = "Positive::<JSON_DEPTH_MAX>::de")]
    pub json_depth_max: u64,
    /// Largest document an event this node proposes may leave behind,
    /// carried in the event (every replica applies the proposer's value).
    #[serde(deserialize_with = "In::<DOCUMENT_BYTES_MIN, { bounds::DOCUMENT_BYTES_MAX }>::de")]
    pub document_bytes_max: u64,
    /// Largest Range response or page of documents, in bytes (one pair or
    /// document always goes, whatever its size). A page holds at least one
    /// pair; the encoder allows 64 MiB.
    #[serde(deserialize_with = "In::<4096, { 64 << 20 }>::de")]
    pub response_bytes_max: u64,
    /// Most bytes one transaction (or delete) may read or touch: at most
    /// what the applier itself allows.
    #[serde(deserialize_with = "In::<{ 1 << 20 }, APPLY_BYTES_MAX>::de")]
    pub txn_bytes_max: u64,
    /// The state machine's size on disk past which this node raises the
    /// NOSPACE alarm.
    #[serde(deserialize_with = "In::<{ 1 << 20 }, STORE_BYTES_MAX>::de")]
    pub db_bytes_max: u64,
    /// Memory the database's memtables (writes not yet in table files) may
    /// take, all column families together; past it they are all flushed.
    #[serde(deserialize_with = "In::<{ 16 << 20 }, { 64 << 30 }>::de")]
    pub memtable_bytes_max: u64,
    /// The database's cache of table blocks, shared by every column family.
    #[serde(deserialize_with = "In::<{ 1 << 20 }, { 64 << 30 }>::de")]
    pub block_cache_bytes_max: u64,
    /// The applier's cache of current keys' revisions and leases, which
    /// spares a put of a cached key its read of the store (0: none).
    #[serde(deserialize_with = "In::<0, { 64 << 30 }>::de")]
    pub key_cache_bytes_max: u64,
    /// Open gRPC connections on each port (client, peer); more wait to be
    /// accepted.
    #[serde(deserialize_with = "In::<1, 65_536>::de")]
    pub connections_max: u64,
    /// Concurrent HTTP/2 streams (calls) on one connection.
    #[serde(deserialize_with = "In::<1, 10_000>::de")]
    pub streams_per_connection_max: u64,
    /// HTTP/2 keep-alive: a PING after this long without one...
    #[serde(deserialize_with = "In::<1000, 3_600_000>::de")]
    pub keepalive_interval_ms: u64,
    /// ...and the connection closed if it is not answered within this.
    #[serde(deserialize_with = "In::<1000, 600_000>::de")]
    pub keepalive_timeout_ms: u64,
    /// TCP keep-alive probes after this long without traffic.
    #[serde(deserialize_with = "In::<1000, 7_200_000>::de")]
    pub tcp_keepalive_ms: u64,
    /// How long a unary request may take before DEADLINE_EXCEEDED.
    #[serde(deserialize_with = "In::<100, 3_600_000>::de")]
    pub request_timeout_ms: u64,
    /// Devices registered under one host, at most.
    #[serde(deserialize_with = "In::<1, 100_000_000>::de")]
    pub devices_per_host_max: u64,
    /// Active leases, at most.
    #[serde(deserialize_with = "In::<1, 100_000_000>::de")]
    pub leases_max: u64,
    /// Device commands awaiting a reply, at most.
    #[serde(deserialize_with = "In::<1, 100_000_000>::de")]
    pub commands_pending_max: u64,
    /// How long a settled device command's record is kept: one minute to
    /// one year.
    #[serde(deserialize_with = "In::<60_000, { 366 * 24 * 3_600_000 }>::de")]
    pub command_retention_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4096,
            value_bytes_max: 1_048_576,
            request_bytes_max: 4_194_304,
            txn_ops_max: 128,
            range_limit_max: 10_000,
            watchers_max: 1024,
            proposals_in_flight_max: 1024,
            history_revisions_max: 100_000,
            json_depth_max: 32,
            document_bytes_max: 1_048_576,
            response_bytes_max: 4 << 20,
            txn_bytes_max: 16 << 20,
            db_bytes_max: 8 << 30,
            memtable_bytes_max: utopia_storage::MEMTABLE_BYTES_MAX_DEFAULT,
            block_cache_bytes_max: utopia_storage::BLOCK_CACHE_BYTES_MAX_DEFAULT,
            key_cache_bytes_max: utopia_storage::KEY_CACHE_BYTES_MAX_DEFAULT,
            connections_max: 1024,
            streams_per_connection_max: 256,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            tcp_keepalive_ms: 60_000,
            request_timeout_ms: 30_000,
            devices_per_host_max: 10_000,
            leases_max: 100_000,
            commands_pending_max: 10_000,
            command_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl Limits {
    /// The quotas every replica applies (proposed by the leader when they
    /// differ from the ones in the replicated state).
    pub fn quotas(&self) -> utopia_raft::event::Quotas {
        utopia_raft::event::Quotas {
            devices_per_host_max: self.devices_per_host_max,
            leases_max: self.leases_max,
            commands_pending_max: self.commands_pending_max,
            command_retention_ms: self.command_retention_ms,
            // `configs.require_class`, set by the caller.
            require_class: false,
        }
    }
}

/// Raft timing. `heartbeat_interval_ms < election_timeout_ms_min <
/// election_timeout_ms_max` ([`super::Settings::validate`]); all are > 0.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub heartbeat_interval_ms: u64,
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub election_timeout_ms_min: u64,
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many log entries.
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub snapshot_log_entries: u64,
    #[serde(deserialize_with = "Positive::<COUNT_MAX>::de")]
    pub log_entries_kept_after_snapshot: u64,
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub lease_check_interval_ms: u64,
    /// Largest snapshot this node accepts from a leader, in bytes.
    #[serde(deserialize_with = "Positive::<STORE_BYTES_MAX>::de")]
    pub snapshot_bytes_max: u64,
    /// How far a proposal forwarded by another member may have been
    /// stamped from this node's clock, in milliseconds.
    #[serde(deserialize_with = "Positive::<DURATION_MS_MAX>::de")]
    pub forwarded_clock_skew_ms_max: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 400,
            election_timeout_ms_max: 800,
            snapshot_log_entries: 100_000,
            log_entries_kept_after_snapshot: 5000,
            lease_check_interval_ms: 250,
            snapshot_bytes_max: 64 << 30,
            forwarded_clock_skew_ms_max: 60_000,
        }
    }
}

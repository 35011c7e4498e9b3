//! The gRPC services and what they share.
//!
//! [`Node`] is the state every service holds: the Raft node that orders
//! writes, the storage reader, the limits from the configuration and the
//! counters. A write is validated here, becomes one event, and is proposed;
//! the reply is built from what applying the event returned. A read first
//! passes a Raft read barrier unless the client asked for a serializable
//! (local) read.

pub mod access;
pub mod auth;
pub mod documents;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod status;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tonic::Status;
use utopia_proto::v1 as pb;
use utopia_raft::event::{Bytes, Event, KeyValue, Outcome, Request, Response};
use utopia_raft::RaftNode;
use utopia_storage::{Reader, StateMachine};

use crate::config::Limits;

/// Counters of what the node has seen, by name. Names carry their unit.
#[derive(Default)]
pub struct Counters {
    values: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn add(&self, name: &str, n: u64) {
        if let Ok(mut v) = self.values.lock() {
            // Counted on every request: allocate the name only the first time.
            match v.get_mut(name) {
                Some(value) => *value += n,
                None => {
                    v.insert(name.to_string(), n);
                }
            }
        }
    }

    /// Sets a gauge (a value that goes up and down).
    pub fn set(&self, name: &str, value: u64) {
        if let Ok(mut v) = self.values.lock() {
            v.insert(name.to_string(), value);
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.values
            .lock()
            .map(|v| v.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.values.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// What every gRPC service shares.
pub struct Node {
    pub raft: RaftNode<StateMachine>,
    pub reader: Reader,
    pub limits: Limits,
    pub counters: Counters,
    pub data_dir: String,
    /// Publishes of a device command before it fails (`mqtt.commands`).
    pub command_attempts_max: u32,
    /// Authentication: the cached auth state, token lifetime, password
    /// hashing bounds.
    pub auth: access::AuthGate,
    proposals: Semaphore,
    next_lease_id: AtomicU64,
}

impl Node {
    pub fn new(
        raft: RaftNode<StateMachine>,
        reader: Reader,
        limits: Limits,
        data_dir: String,
        command_attempts_max: u32,
        auth: access::AuthGate,
    ) -> Arc<Self> {
        let permits = limits.proposals_in_flight_max as usize;
        // Lease ids: node id in the top 16 bits, then a millisecond clock,
        // so ids from different nodes and restarts do not collide.
        let seed = ((raft.id() & 0x7FFF) << 48) | (crate::now_ms() & 0xFFFF_FFFF_FFFF);
        Arc::new(Self {
            raft,
            reader,
            limits,
            counters: Counters::default(),
            data_dir,
            command_attempts_max,
            auth,
            proposals: Semaphore::new(permits),
            next_lease_id: AtomicU64::new(seed),
        })
    }

    pub fn new_lease_id(&self) -> i64 {
        (self.next_lease_id.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64
    }

    /// Counts a rejected request by reason and returns the status.
    pub fn reject(&self, reason: &str, status: Status) -> Status {
        self.counters.add(
            &format!("requests_rejected_total{{reason=\"{reason}\"}}"),
            1,
        );
        status
    }

    /// Proposes one event and waits for it to be applied. At most
    /// `proposals_in_flight_max` proposals wait at once; beyond that the
    /// request is refused with RESOURCE_EXHAUSTED rather than queued.
    pub async fn propose(&self, event: Event) -> Result<Response, Status> {
        let _permit = self.proposals.try_acquire().map_err(|_| {
            self.reject(
                "overloaded",
                Status::resource_exhausted(format!(
                    "too many proposals in flight (proposals_in_flight_max = {})",
                    self.limits.proposals_in_flight_max
                )),
            )
        })?;
        let name = event.name();
        let resp = self
            .raft
            .propose(Request::new(crate::now_ms(), event))
            .await
            .map_err(status::from_propose)?;
        self.counters
            .add(&format!("events_applied_total{{event=\"{name}\"}}"), 1);
        if let Outcome::Rejected(r) = resp.outcome {
            return Err(status::from_rejection(r));
        }
        Ok(resp)
    }

    /// A read barrier for linearizable reads; nothing for serializable ones.
    pub async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        if consistency == pb::Consistency::Serializable as i32 {
            return Ok(());
        }
        self.raft.read_barrier().await.map_err(status::from_propose)
    }

    pub fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision,
            member_id: self.raft.id(),
            raft_term: self.raft.term(),
        })
    }

    pub fn current_revision(&self) -> Result<i64, Status> {
        Ok(self.reader.revisions().map_err(status::from_store)?.0)
    }

    // ---- validation

    pub fn check_key(&self, key: &[u8], what: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(self.reject("empty_key", status::invalid(format!("{what} is empty"))));
        }
        self.check_len(key.len(), self.limits.key_bytes_max, what, "key_bytes_max")
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        self.check_len(
            value.len(),
            self.limits.value_bytes_max,
            "value",
            "value_bytes_max",
        )
    }

    pub fn check_len(&self, len: usize, max: u64, what: &str, setting: &str) -> Result<(), Status> {
        if len as u64 > max {
            return Err(self.reject(
                "too_large",
                status::invalid(format!(
                    "{what} is {len} bytes; the limit is {setting} = {max}"
                )),
            ));
        }
        Ok(())
    }

    /// The limit to use for a range: the request's, capped by the server's.
    pub fn range_limit(&self, requested: i64) -> usize {
        let max = self.limits.range_limit_max as usize;
        if requested <= 0 {
            max
        } else {
            (requested as usize).min(max)
        }
    }
}

pub fn kv_to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: Vec::from(kv.key),
        value: Vec::from(kv.value),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

pub fn bytes(v: Vec<u8>) -> Bytes {
    Bytes::from(v)
}

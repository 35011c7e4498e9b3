//! The gRPC services and what they share.
//!
//! [`Node`] is the state every service holds: the Raft node that orders
//! writes, the storage reader, the limits from the configuration and the
//! counters. A write is validated here, becomes one event, and is proposed;
//! the reply is built from what applying the event returned. A read first
//! passes a Raft read barrier unless the client asked for a serializable
//! (local) read.

pub mod access;
pub mod alarm;
pub mod auth;
pub mod documents;
pub mod forward;
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
use utopia_raft::{PeerGuard, ProposeError, RaftNode};
use utopia_storage::apply::bounds;
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
    /// The peer port's checks: the cluster id, and what it refused.
    pub peers: Arc<PeerGuard>,
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
        peers: Arc<PeerGuard>,
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
            peers,
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
        self.refuse_under_alarm(&event)?;
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
        let mut req = Request::new(crate::now_ms(), event);
        if writes_documents(&req.event) {
            // Carried in the event: every replica applies this node's limit.
            req = req.with_document_bytes_max(self.limits.document_bytes_max);
        }
        let resp = self
            .raft
            .propose(req)
            .await
            .map_err(|e| self.propose_status(e))?;
        self.counters
            .add(&format!("events_applied_total{{event=\"{name}\"}}"), 1);
        if let Outcome::Rejected(r) = resp.outcome {
            self.counters.add(
                &format!("events_rejected_total{{reason=\"{}\"}}", r.reason()),
                1,
            );
            return Err(status::from_rejection(r));
        }
        Ok(resp)
    }

    /// A read barrier for linearizable reads; nothing for serializable ones.
    pub async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        if consistency == pb::Consistency::Serializable as i32 {
            if self.reader.installing_snapshot() {
                // Never a state that existed: half of a snapshot.
                return Err(Status::unavailable(
                    "this node is installing a snapshot from the leader; \
                     read from another member or retry shortly",
                ));
            }
            return Ok(());
        }
        self.raft
            .read_barrier()
            .await
            .map_err(|e| self.propose_status(e))
    }

    /// The status for a failed proposal or barrier. A follower names the
    /// leader by the address clients reach it at (as the leader published
    /// it), never by its peer address.
    pub fn propose_status(&self, e: ProposeError) -> Status {
        let e = match e {
            ProposeError::NotLeader { leader_id, .. } => ProposeError::NotLeader {
                leader_id,
                leader_addr: leader_id.and_then(|id| self.client_addr_of(id)),
            },
            other => other,
        };
        status::from_propose(e)
    }

    /// The client address member `id` published, if it has.
    pub fn client_addr_of(&self, id: u64) -> Option<String> {
        self.reader
            .document::<utopia_storage::documents::Fellow>(&id.to_string())
            .ok()??
            .client_addr
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

    /// JSON text from a client must nest at most `json_depth_max` levels
    /// (checked on the text, before parsing it).
    pub fn check_json_depth(&self, json: &str, what: &str) -> Result<(), Status> {
        let max = self.limits.json_depth_max as usize;
        if bounds::json_text_depth(json.as_bytes(), max) > max {
            return Err(self.reject(
                "too_deep",
                status::invalid(format!(
                    "{what} is nested more than {max} levels deep; the limit is json_depth_max = {max}"
                )),
            ));
        }
        Ok(())
    }

    /// A document path (under a device's post type) has at most
    /// [`bounds::DOCUMENT_PATH_SEGMENTS_MAX`] segments.
    pub fn check_path(&self, segments: usize) -> Result<(), Status> {
        bounds::check_path_segments(segments)
            .map_err(|e| self.reject("path_too_deep", status::invalid(e)))
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

/// Events that write documents carry the document size limit.
fn writes_documents(event: &Event) -> bool {
    matches!(
        event,
        Event::DeviceDataUpdated(_) | Event::DeviceRegistered { .. } | Event::CommandIssued { .. }
    )
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

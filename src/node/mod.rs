//! The application core: what a member does, apart from how it is asked.
//!
//! [`Node`] is the state the gRPC services, the MQTT ingest and the
//! housekeeping loops share: the Raft node that orders writes, the storage
//! reader, the limits from the configuration, the metrics, the
//! authentication gate, the peer guard, and the [`Tasks`] the server owns.
//! A write is validated here, becomes one event, and is proposed; what
//! applying it returned comes back. A read first passes a Raft read barrier
//! unless it asked for a serializable (local) one.
//!
//! Architecture invariant: nothing here knows gRPC. The core returns
//! [`Error`]; `api::status` is the one place that turns it into status
//! codes, and MQTT and housekeeping log it.
//!
//! - [`error`]: the domain error.
//! - [`access`]: who is calling and what they may do.
//! - [`credentials`]: passwords and signed tokens.
//! - [`forward`]: what the leader checks on a proposal another member
//!   forwards.
//! - [`housekeeping`]: the leader's upkeep (leases, compaction, fellows,
//!   quotas) and each member's published client address.
//! - [`compaction`]: compacting the key history in bounded steps.
//! - [`configs`]: XML configuration sync, the member's side (watching its
//!   directory, voting, writing accepted files) and the leader's decisions.
//! - [`backups`]: backups the leader takes on a schedule.
//! - [`tasks`]: the tasks a server owns and stops.

pub mod access;
mod alarm;
pub mod backups;
pub mod compaction;
pub mod configs;
pub mod credentials;
pub mod error;
pub mod forward;
pub mod housekeeping;
pub mod tasks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use utopia_raft::event::{Event, Outcome, Request, Response};
use utopia_raft::{PeerGuard, ProposeError, RaftNode};
use utopia_storage::apply::bounds;
use utopia_storage::{Reader, StateMachine};

pub use error::Error;
pub use tasks::Tasks;

use crate::config::{BackupSettings, ConfigsSettings, Limits, Settings};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The leader confirms its leadership with a quorum first.
    Linearizable,
    /// This member's state as it is.
    Serializable,
}

/// What every part of a running member shares.
pub struct Node {
    pub raft: RaftNode<StateMachine>,
    pub reader: Reader,
    pub limits: Limits,
    pub data_dir: String,
    /// Publishes of a device command before it fails (`mqtt.commands`).
    pub command_attempts_max: u32,
    /// XML configuration sync (`configs`).
    pub configs: ConfigsSettings,
    /// Scheduled backups (`backups`).
    pub backups: BackupSettings,
    /// What this member counts: the metrics endpoint and `utopia status`
    /// show it.
    pub metrics: crate::metrics::Metrics,
    /// The peer port's checks: the cluster id, and what it refused.
    pub peers: Arc<PeerGuard>,
    /// Authentication: the cached auth state, token lifetime, password
    /// hashing bounds.
    pub auth: access::AuthGate,
    /// Every task the server runs, stopped on shutdown.
    pub tasks: Arc<Tasks>,
    proposals: Semaphore,
    next_lease_id: AtomicU64,
}

impl Node {
    /// A member with `settings` (its limits, data directory, device
    /// commands and configuration sync settings).
    pub fn new(
        raft: RaftNode<StateMachine>,
        reader: Reader,
        settings: &Settings,
        peers: Arc<PeerGuard>,
        auth: access::AuthGate,
    ) -> Arc<Self> {
        let limits = settings.limits.clone();
        let permits = limits.proposals_in_flight_max as usize;
        // Lease ids: node id in the top 16 bits, then a millisecond clock,
        // so ids from different nodes and restarts do not collide.
        let seed = ((raft.id() & 0x7FFF) << 48) | (crate::now_ms() & 0xFFFF_FFFF_FFFF);
        let metrics = crate::metrics::Metrics::new(reader.storage_metrics());
        Arc::new(Self {
            raft,
            reader,
            limits,
            data_dir: settings.data_dir.display().to_string(),
            command_attempts_max: settings.mqtt.commands.attempts_max.min(u64::from(u32::MAX))
                as u32,
            configs: settings.configs.clone(),
            backups: settings.backups.clone(),
            metrics,
            peers,
            auth,
            tasks: Arc::new(Tasks::default()),
            proposals: Semaphore::new(permits),
            next_lease_id: AtomicU64::new(seed),
        })
    }

    pub fn new_lease_id(&self) -> i64 {
        (self.next_lease_id.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64
    }

    /// Counts a refused request under `reason` and returns the error.
    pub fn reject(&self, reason: &'static str, e: Error) -> Error {
        self.metrics
            .requests_rejected
            .get_or_create(&crate::metrics::Reason { reason })
            .inc();
        e
    }

    /// An invalid request, counted under `reason`.
    pub fn invalid(&self, reason: &'static str, message: impl Into<String>) -> Error {
        self.reject(reason, Error::invalid(reason, message))
    }

    /// Proposes one event and waits for it to be applied. At most
    /// `proposals_in_flight_max` proposals wait at once; beyond that the
    /// request is refused (resource exhausted) rather than queued. An event
    /// the state machine rejected is an error, counted by reason.
    pub async fn propose(&self, event: Event) -> Result<Response, Error> {
        let name = event.name();
        let started = Instant::now();
        if let Err(e) = self.refuse_under_alarm(&event) {
            self.metrics.proposed(name, started, Err("alarm"));
            return Err(e);
        }
        let _permit = self.proposals.try_acquire().map_err(|_| {
            self.metrics.proposed(name, started, Err("overloaded"));
            self.reject(
                "overloaded",
                Error::ResourceExhausted(format!(
                    "too many proposals in flight (proposals_in_flight_max = {})",
                    self.limits.proposals_in_flight_max
                )),
            )
        })?;
        let mut req = Request::new(crate::now_ms(), event);
        if writes_documents(&req.event) {
            // Carried in the event: every replica applies this node's limit.
            req = req.with_document_bytes_max(self.limits.document_bytes_max);
        }
        let resp = self.raft.propose(req).await.map_err(|e| {
            self.metrics
                .proposed(name, started, Err(crate::metrics::propose_failure(&e)));
            self.raft_error(e)
        })?;
        if let Outcome::Rejected(r) = resp.outcome {
            self.metrics.proposed(name, started, Ok(Some(r.reason())));
            return Err(Error::Rejected(r));
        }
        self.metrics.proposed(name, started, Ok(None));
        Ok(resp)
    }

    /// A read barrier for linearizable reads; for serializable ones only
    /// the check that this member's state is whole.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), Error> {
        if consistency == Consistency::Serializable {
            if self.reader.installing_snapshot() {
                // Never a state that existed: half of a snapshot.
                return Err(Error::Unavailable(
                    "this node is installing a snapshot from the leader; \
                     read from another member or retry shortly"
                        .into(),
                ));
            }
            return Ok(());
        }
        self.raft
            .read_barrier()
            .await
            .map_err(|e| self.raft_error(e))
    }

    /// The error for a failed proposal, barrier or membership change. A
    /// follower names the leader by the address clients reach it at (as the
    /// leader published it), never by its peer address.
    pub fn raft_error(&self, e: ProposeError) -> Error {
        match e {
            ProposeError::NotLeader { leader_id, .. } => Error::NotLeader {
                leader_id,
                leader_addr: leader_id.and_then(|id| self.client_addr_of(id)),
            },
            other => other.into(),
        }
    }

    /// The client address member `id` published, if it has.
    pub fn client_addr_of(&self, id: u64) -> Option<String> {
        self.reader
            .document::<utopia_storage::documents::Fellow>(&id.to_string())
            .ok()??
            .client_addr
    }

    pub fn current_revision(&self) -> Result<i64, Error> {
        Ok(self.reader.revision()?)
    }

    // ---- validation

    pub fn check_key(&self, key: &[u8], what: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(self.invalid("empty_key", format!("{what} is empty")));
        }
        self.check_len(key.len(), self.limits.key_bytes_max, what, "key_bytes_max")
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        self.check_len(
            value.len(),
            self.limits.value_bytes_max,
            "value",
            "value_bytes_max",
        )
    }

    /// JSON text from a client must nest at most `json_depth_max` levels
    /// (checked on the text, before parsing it).
    pub fn check_json_depth(&self, json: &str, what: &str) -> Result<(), Error> {
        let max = self.limits.json_depth_max as usize;
        if bounds::json_text_depth(json.as_bytes(), max) > max {
            return Err(self.invalid(
                "too_deep",
                format!(
                    "{what} is nested more than {max} levels deep; the limit is json_depth_max = {max}"
                ),
            ));
        }
        Ok(())
    }

    /// A document path (under a device's post type) has at most
    /// [`bounds::DOCUMENT_PATH_SEGMENTS_MAX`] segments.
    pub fn check_path(&self, segments: usize) -> Result<(), Error> {
        bounds::check_path_segments(segments).map_err(|e| self.invalid("path_too_deep", e))
    }

    pub fn check_len(&self, len: usize, max: u64, what: &str, setting: &str) -> Result<(), Error> {
        if len as u64 > max {
            return Err(self.invalid(
                "too_large",
                format!("{what} is {len} bytes; the limit is {setting} = {max}"),
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

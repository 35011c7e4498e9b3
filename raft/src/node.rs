//! [`RaftNode`]: the server's handle on consensus.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, LinearizableReadError, RaftError};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use openraft::Instant as _;
use openraft::{
    BasicNode, Config, LinearizerOption, Raft, ReadPolicy, ServerState, SnapshotPolicy,
};

use crate::error::write_error;
use crate::network::{
    ClusterId, ForwardCheck, GrpcNetwork, PeerGuard, TransportService, TransportSettings,
};
use crate::ProposeError;
use crate::{Request, Response, TypeConfig};

/// How long a linearizable read waits for a quorum to confirm the leader,
/// in election timeouts (see [`RaftNode::read_barrier`]).
const READ_INDEX_WAIT_ELECTION_TIMEOUTS: u64 = 5;

/// How long a member of a new cluster other than its lowest id waits to be
/// reached by a leader before it forms the cluster itself, in election
/// timeouts per place after the lowest (see [`RaftNode::form_if_unreached`]).
const FORMATION_WAIT_ELECTION_TIMEOUTS: u64 = 3;

/// Timing and log-retention settings for one node.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    pub snapshot_log_entries: u64,
    /// Entries kept in the log behind the last snapshot, for lagging peers.
    pub log_entries_kept_after_snapshot: u64,
    /// Client requests openraft may queue before proposals are refused.
    pub proposals_in_flight_max: u64,
}

/// Everything [`RaftNode::start`] needs besides storage.
pub struct NodeConfig {
    pub id: u64,
    /// The address this node's peers reach it at; recorded as its member
    /// address when it starts a one-member cluster.
    pub peer_addr: String,
    pub cluster_name: String,
    pub timings: RaftTimings,
    /// The members a new cluster starts with (id → peer address).
    pub initial_members: BTreeMap<u64, String>,
    /// Wait to be added to an existing cluster instead of starting one.
    pub join: bool,
    pub transport: TransportSettings,
    pub peers: PeerPolicy,
    /// Where incoming snapshots are written before they are installed.
    pub incoming_snapshot_dir: std::path::PathBuf,
}

/// Who may call this node as a peer, and what it accepts from them.
pub struct PeerPolicy {
    pub cluster_id: ClusterId,
    /// Peer TLS is on: callers must present a certificate from the peer CA.
    pub certificate_required: bool,
    /// DNS names or IP addresses one of which a peer's certificate must
    /// carry (empty: any certificate from the peer CA).
    pub allowed_names: Vec<String>,
    /// Largest snapshot accepted from a leader, in bytes.
    pub snapshot_bytes_max: u64,
    /// What a forwarded proposal must pass before this node proposes it.
    pub forward_check: ForwardCheck,
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid raft settings: {0}")]
    Settings(String),
    #[error("node id {id} is not in the initial cluster ({})", .members.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))]
    NotInInitialCluster { id: u64, members: Vec<u64> },
    #[error("start raft: {0}")]
    Raft(String),
    #[error("initialise the cluster: {0}")]
    Initialize(String),
}

/// The role of a node, as seen in its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Learner,
    Candidate,
    Shutdown,
}

/// A snapshot of a node's Raft state, for status and the fellows view.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// The log index of the membership in use; a change is in progress
    /// while it is above `applied_index`.
    pub membership_index: u64,
    /// Members by id: (address, is_voter).
    pub members: BTreeMap<u64, (String, bool)>,
    /// On the leader: the last log index known replicated to each member.
    pub matched: BTreeMap<u64, u64>,
    /// On the leader: milliseconds since each follower last acknowledged a
    /// heartbeat (absent: never).
    pub heartbeat_age_ms: BTreeMap<u64, u64>,
}

/// A running Raft node.
pub struct RaftNode<SM: RaftStateMachine<TypeConfig>> {
    id: u64,
    raft: Raft<TypeConfig, SM>,
    network: GrpcNetwork,
    /// A new cluster this member forms itself only if no leader reaches it
    /// first.
    formation: Option<Arc<Formation>>,
}

/// The members of a new cluster, and how long to wait for a leader of it.
#[derive(Debug)]
struct Formation {
    members: BTreeMap<u64, BasicNode>,
    wait: Duration,
}

impl<SM: RaftStateMachine<TypeConfig>> Clone for RaftNode<SM> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            raft: self.raft.clone(),
            network: self.network.clone(),
            formation: self.formation.clone(),
        }
    }
}

impl<SM> RaftNode<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = crate::SnapshotData>,
{
    /// Starts the node on the given storage, and returns it with the gRPC
    /// service its peers send Raft messages to (served on the peer port).
    ///
    /// A storage that has never been initialised is initialised with
    /// `initial_members` (id → peer address), which must include this node;
    /// when it is empty, as a one-member cluster of this node at
    /// `peer_addr`. With `join`, it is left uninitialised: the node waits
    /// for a cluster's leader to add it (`utopia cluster add`). An
    /// initialised storage is resumed as it was: the members it knows win.
    /// Replication sends the log's own encodings of the entries it holds
    /// them for, and the log stores the encodings a leader sent
    /// ([`crate::EncodedEntries`]).
    pub async fn start<LS>(
        config: NodeConfig,
        log_store: LS,
        state_machine: SM,
    ) -> Result<(Self, TransportService<SM>), StartError>
    where
        LS: RaftLogStorage<TypeConfig> + crate::EncodedEntries + Clone,
    {
        let NodeConfig {
            id,
            peer_addr,
            cluster_name,
            timings,
            initial_members,
            join,
            transport,
            peers,
            incoming_snapshot_dir,
        } = config;
        let raft_config = Config {
            cluster_name,
            heartbeat_interval: timings.heartbeat_interval_ms,
            election_timeout_min: timings.election_timeout_ms_min,
            election_timeout_max: timings.election_timeout_ms_max,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timings.snapshot_log_entries),
            max_in_snapshot_log_to_keep: timings.log_entries_kept_after_snapshot,
            api_channel_size: Some(timings.proposals_in_flight_max),
            // A member back from a pause or a partition asks first whether
            // it could win, instead of raising its term and unseating a
            // leader the others still follow (etcd's PreVote).
            enable_pre_vote: Some(true),
            // A leader back from a crash stands for election like any
            // member instead of resuming its old term. Its state machine
            // restarts at the last flushed batch and the commit index is
            // not stored, so a resumed leader's read index could be below
            // writes it acknowledged before the crash; a new term's first
            // entry commits only with what a majority holds, and reads
            // wait until it is applied.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Settings(e.to_string()))?;

        // A follower that has not answered within an election timeout is
        // as good as gone; one that answers later was only slow.
        let transport = TransportSettings {
            append_reply_timeout: Duration::from_millis(timings.election_timeout_ms_min),
            ..transport
        };
        let guard = PeerGuard::new(
            peers.cluster_id.clone(),
            peers.certificate_required,
            &peers.allowed_names,
        )
        .map_err(StartError::Settings)?;
        let encoded: Arc<dyn crate::EncodedEntries> = Arc::new(log_store.clone());
        let network =
            GrpcNetwork::new(transport, peers.cluster_id).with_encoded_entries(encoded.clone());
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let mut formation = None;
        if !initialized && join {
            tracing::info!(node_id = id, "waiting to be added to a cluster");
        } else if !initialized {
            let members: BTreeMap<u64, BasicNode> = if initial_members.is_empty() {
                BTreeMap::from([(id, BasicNode { addr: peer_addr })])
            } else {
                if !initial_members.contains_key(&id) {
                    return Err(StartError::NotInInitialCluster {
                        id,
                        members: initial_members.keys().copied().collect(),
                    });
                }
                initial_members
                    .iter()
                    .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
                    .collect()
            };
            // openraft starts an election at once (without a pre-vote) on
            // the member that initialises, so every member initialising
            // would let a late one unseat the leader an earlier one just
            // became. The lowest id forms the cluster; the others are
            // reached by its leader, and form it themselves only when none
            // reached them (the lowest is not up), one after another.
            let place = members.keys().position(|m| *m == id).unwrap_or(0) as u64;
            if place == 0 {
                initialize(&raft, id, members).await?;
            } else {
                let wait = Duration::from_millis(
                    timings
                        .election_timeout_ms_max
                        .saturating_mul(FORMATION_WAIT_ELECTION_TIMEOUTS)
                        .saturating_mul(place),
                );
                tracing::info!(
                    node_id = id,
                    lowest = members.keys().next().copied().unwrap_or(id),
                    wait_ms = wait.as_millis() as u64,
                    "waiting for the lowest member's leader to form the new cluster"
                );
                formation = Some(Arc::new(Formation { members, wait }));
            }
        } else {
            tracing::info!(node_id = id, "resumed an existing cluster");
        }
        let service = TransportService::new(
            raft.clone(),
            Arc::new(guard),
            incoming_snapshot_dir,
            peers.snapshot_bytes_max,
            peers.forward_check,
            encoded,
        );
        Ok((
            Self {
                id,
                raft,
                network,
                formation,
            },
            service,
        ))
    }

    /// False until this node is part of a cluster (a joining node that has
    /// not been added yet).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this member starts in a new cluster that another member (the
    /// lowest) forms: a member, though not initialised until that
    /// member's leader reaches it.
    pub fn joins_new_cluster(&self) -> bool {
        self.formation.is_some()
    }

    /// For a member of a new cluster that is not its lowest id: waits its
    /// turn (see `FORMATION_WAIT_ELECTION_TIMEOUTS`), then forms the cluster
    /// itself if no leader has reached it meanwhile. Returns at once for
    /// every other member. Run once the peer port serves.
    pub async fn form_if_unreached(&self) -> Result<(), StartError> {
        let Some(formation) = &self.formation else {
            return Ok(());
        };
        tokio::time::sleep(formation.wait).await;
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            tracing::info!(node_id = self.id, "joined the new cluster");
            return Ok(());
        }
        tracing::warn!(
            node_id = self.id,
            waited_ms = formation.wait.as_millis() as u64,
            "no leader reached this member: forming the new cluster"
        );
        initialize(&self.raft, self.id, formation.members.clone()).await
    }

    /// Proposes one request and waits until it is committed and applied.
    pub async fn propose(&self, request: Request) -> Result<Response, ProposeError> {
        self.raft
            .client_write(request)
            .await
            .map(|r| r.data)
            .map_err(write_error)
    }

    /// Proposes one request from any member: on the leader as
    /// [`RaftNode::propose`], elsewhere handed to the leader over the
    /// transport (one hop; a leader that moved meanwhile answers NotLeader).
    /// `timeout` bounds the forwarded call; when it passes, the outcome is
    /// unknown.
    pub async fn propose_anywhere(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ProposeError> {
        let leader_addr = match self.propose(request.clone()).await {
            Err(ProposeError::NotLeader {
                leader_addr: Some(addr),
                ..
            }) => addr,
            other => return other,
        };
        self.network.forward(&leader_addr, &request, timeout).await
    }

    /// Returns once this node's state machine reflects every write committed
    /// before the call: the leader confirms its leadership with a quorum
    /// (read index), then waits for its state machine to apply that far.
    ///
    /// A busy cluster can take longer than openraft's default wait (one
    /// leader lease) to answer a heartbeat round, and the read would fail
    /// with "not enough for a quorum" though nothing is wrong: it waits up
    /// to five election timeouts instead (`READ_INDEX_WAIT_ELECTION_TIMEOUTS`).
    /// A leader that steps down meanwhile fails it at once.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let wait = Duration::from_millis(
            self.raft
                .config()
                .election_timeout_max
                .saturating_mul(READ_INDEX_WAIT_ELECTION_TIMEOUTS),
        );
        let option = LinearizerOption::from(ReadPolicy::ReadIndex).with_wait_timeout(wait);
        match self.raft.ensure_linearizable(option).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => {
                Err(ProposeError::Unavailable(format!("raft node stopped: {e}")))
            }
        }
    }

    /// Takes a snapshot of the state applied so far and waits, up to
    /// `timeout`, until it is this node's current snapshot. The storage
    /// keeps the state as of its current snapshot readable, so the space
    /// of everything deleted since the previous one comes free only once
    /// a newer one replaces it.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<(), String> {
        let applied = self.raft.metrics().borrow_watched().last_applied;
        let Some(applied) = applied else {
            return Ok(());
        };
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| format!("trigger a snapshot: {e}"))?;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.snapshot
                        .as_ref()
                        .is_some_and(|s| s.index >= applied.index)
                },
                "take a snapshot",
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// True while this node believes it leads the cluster.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader
    }

    /// Waits until this node knows a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), String> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "know a leader")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The current term, without building a whole [`NodeStatus`]: every
    /// response header carries it.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// Snapshots this node sent to followers: (accepted, failed).
    pub fn snapshot_sends(&self) -> (u64, u64) {
        let s = &self.network.snapshot_sends;
        (
            s.sent.load(std::sync::atomic::Ordering::Relaxed),
            s.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Learner => Role::Learner,
            ServerState::Candidate => Role::Candidate,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| (*id, (node.addr.clone(), voters.contains(id))))
            .collect();
        NodeStatus {
            id: self.id,
            role,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.as_ref().map(|l| l.index).unwrap_or(0),
            membership_index: m
                .membership_config
                .log_id()
                .as_ref()
                .map(|l| l.index)
                .unwrap_or(0),
            members,
            matched: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            heartbeat_age_ms: m
                .heartbeat
                .as_ref()
                .map(|h| {
                    h.iter()
                        .filter_map(|(id, t)| {
                            t.as_ref().map(|t| (*id, t.elapsed().as_millis() as u64))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Adds a node: first as a learner, waiting until it has caught up
    /// with the log, then (unless `learner_only`) promotes it to voter.
    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
        learner_only: bool,
    ) -> Result<(), ProposeError> {
        if let Some((existing, _)) = self.status().members.get(&id) {
            if existing != addr {
                return Err(ProposeError::Invalid(format!(
                    "node id {id} is already in use by the member at {existing}"
                )));
            }
        }
        self.raft
            .add_learner(
                id,
                BasicNode {
                    addr: addr.to_string(),
                },
                true,
            )
            .await
            .map_err(write_error)?;
        if !learner_only {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Removes a node from the cluster, voter or learner.
    pub async fn remove_member(&self, id: u64) -> Result<(), ProposeError> {
        let status = self.status();
        let Some((_, voter)) = status.members.get(&id) else {
            return Err(ProposeError::Invalid(format!("node {id} is not a member")));
        };
        let change = if *voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Asks the leader to hand leadership to `to`. Returns at once; the
    /// transfer completes when `to` wins its election.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        let st = self.status();
        if st.role != Role::Leader {
            let addr = st
                .leader
                .and_then(|l| st.members.get(&l).map(|m| m.0.clone()));
            return Err(ProposeError::NotLeader {
                leader_id: st.leader,
                leader_addr: addr,
            });
        }
        if !st.members.get(&to).is_some_and(|m| m.1) {
            return Err(ProposeError::Invalid(format!("node {to} is not a voter")));
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))
    }

    /// Stops the node; outstanding proposals fail with [`ProposeError::Stopped`].
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Initialises `raft` as a new cluster of `members`; a leader of it that
/// reached this member first is fine.
async fn initialize<SM: RaftStateMachine<TypeConfig>>(
    raft: &Raft<TypeConfig, SM>,
    id: u64,
    members: BTreeMap<u64, BasicNode>,
) -> Result<(), StartError> {
    let n = members.len();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(node_id = id, members = n, "initialised a new cluster"),
        // Another member's leader reached this node first: it is
        // already part of the cluster.
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::info!(node_id = id, reason = %e, "joined a cluster initialised elsewhere")
        }
        Err(e) => return Err(StartError::Initialize(e.to_string())),
    }
    Ok(())
}

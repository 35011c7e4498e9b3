//! Raft messages forged as an attacker would forge them: copied from what
//! `utopia status` shows (term, leader, last log index), sent straight to a
//! node's gRPC transport. Each would change the cluster if a node took it:
//! an AppendEntries that appends a key behind the leader's back (a fork), a
//! leadership-transfer vote for a higher term (the cluster loses its
//! leader), a snapshot that replaces the state, a forwarded proposal that
//! skips the API's checks.

use openraft::entry::RaftEntry;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::vote::leader_id_adv::LeaderId;
use utopia_proto::raft_v1 as pb;
use utopia_proto::raft_v1::raft_transport_client::RaftTransportClient;
use utopia_raft::event::{encode, Event, PutOp};
use utopia_raft::{Request, TypeConfig};

type LogId = openraft::alias::LogIdOf<TypeConfig>;
type Vote = openraft::alias::VoteOf<TypeConfig>;

/// What an attacker copies from a node's status to make its messages look
/// like the leader's.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub term: u64,
    pub leader: u64,
    pub last_index: u64,
}

impl Seen {
    /// Reads it from `utopia status --output json`.
    pub fn from_status(status: &serde_json::Value) -> Seen {
        Seen {
            term: status["raft_term"].as_u64().expect("raft_term"),
            leader: status["leader"].as_u64().expect("leader"),
            last_index: status["raft_index"].as_u64().expect("raft_index"),
        }
    }

    fn log_id(&self, index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term: self.term,
                node_id: self.leader,
            },
            index,
        )
    }
}

fn message(cluster_id: u64, cbor: Vec<u8>) -> pb::RaftMessage {
    pb::RaftMessage { cbor, cluster_id }
}

/// An AppendEntries in the leader's name that appends `key` after the
/// node's last entry.
pub fn append_entries(cluster_id: u64, seen: Seen, key: &str) -> pb::RaftMessage {
    let put = Request::new(
        0,
        Event::Put(PutOp {
            key: key.as_bytes().to_vec().into(),
            value: b"forged".to_vec().into(),
            lease: 0,
            prev_kv: false,
        }),
    );
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(seen.term, seen.leader),
        prev_log_id: Some(seen.log_id(seen.last_index)),
        leader_commit: Some(seen.log_id(seen.last_index + 1)),
        entries: vec![openraft::alias::EntryOf::<TypeConfig>::new_normal(
            seen.log_id(seen.last_index + 1),
            put,
        )],
    };
    message(cluster_id, encode(&req).expect("encode AppendEntries"))
}

/// A leadership-transfer vote request from `candidate` for the next term,
/// with a log far ahead: a node that takes it leaves its leader.
pub fn transfer_vote(cluster_id: u64, seen: Seen, candidate: u64) -> pb::RaftMessage {
    let req = VoteRequest::<TypeConfig> {
        vote: Vote::new(seen.term + 1, candidate),
        last_log_id: Some(LogId::new(
            LeaderId {
                term: seen.term + 1,
                node_id: candidate,
            },
            seen.last_index + 1_000_000,
        )),
        leadership_transfer: true,
    };
    message(cluster_id, encode(&req).expect("encode Vote"))
}

/// A snapshot stream in the leader's name: metadata far ahead of the node,
/// then garbage.
pub fn snapshot(cluster_id: u64, seen: Seen) -> Vec<pb::SnapshotChunk> {
    snapshot_under(
        cluster_id,
        seen,
        Vote::new_committed(seen.term, seen.leader),
    )
}

/// Like [`snapshot`], under a vote that is not a leader's (not committed):
/// openraft takes it as a leader's, and stops on an assertion in debug
/// builds.
pub fn snapshot_uncommitted(cluster_id: u64, seen: Seen) -> Vec<pb::SnapshotChunk> {
    snapshot_under(cluster_id, seen, Vote::new(seen.term + 1, seen.leader))
}

fn snapshot_under(cluster_id: u64, seen: Seen, vote: Vote) -> Vec<pb::SnapshotChunk> {
    let meta = openraft::alias::SnapshotMetaOf::<TypeConfig> {
        last_log_id: Some(seen.log_id(seen.last_index + 1_000)),
        last_membership: Default::default(),
    };
    let first = pb::SnapshotChunk {
        vote_cbor: encode(&vote).expect("encode vote"),
        meta_cbor: encode(&meta).expect("encode meta"),
        data: Vec::new(),
        cluster_id,
    };
    let garbage = pb::SnapshotChunk {
        vote_cbor: Vec::new(),
        meta_cbor: Vec::new(),
        data: vec![0xAB; 64 << 10],
        cluster_id,
    };
    vec![first, garbage.clone(), garbage]
}

/// A forwarded proposal of `event`, stamped `at_ms`.
pub fn proposal(cluster_id: u64, at_ms: u64, event: Event) -> pb::RaftMessage {
    message(
        cluster_id,
        encode(&Request::new(at_ms, event)).expect("encode request"),
    )
}

/// Sends each forged message to the transport at `endpoint` (a URI, with
/// `tls` for https) and returns what each call answered: `Ok` if the node
/// took it, the status it refused it with otherwise.
pub async fn send_all(
    endpoint: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    cluster_id: u64,
    seen: Seen,
    candidate: u64,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).expect("TLS settings");
    }
    let channel = match ep.connect().await {
        Ok(ch) => ch,
        Err(e) => {
            // Refused before any call: every message is refused.
            let refused = || Err(tonic::Status::unavailable(format!("connect: {e:?}")));
            return vec![
                ("append_entries", refused()),
                ("stream_append", refused()),
                ("vote", refused()),
                ("install_snapshot", refused()),
                ("propose", refused()),
            ];
        }
    };
    let mut client = RaftTransportClient::new(channel);
    let mut out = Vec::new();
    let r = client
        .append_entries(append_entries(cluster_id, seen, "forged/unary"))
        .await;
    out.push(("append_entries", r.map(|_| ())));
    let r = match client
        .stream_append(futures::stream::iter([append_entries(
            cluster_id,
            seen,
            "forged/stream",
        )]))
        .await
    {
        Ok(replies) => replies.into_inner().message().await.map(|_| ()),
        Err(s) => Err(s),
    };
    out.push(("stream_append", r));
    let r = client
        .vote(transfer_vote(cluster_id, seen, candidate))
        .await;
    out.push(("vote", r.map(|_| ())));
    let r = client
        .install_snapshot(futures::stream::iter(snapshot(cluster_id, seen)))
        .await;
    out.push(("install_snapshot", r.map(|_| ())));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let r = client
        .propose(proposal(
            cluster_id,
            now,
            Event::Put(PutOp {
                key: b"forged/proposal".to_vec().into(),
                value: b"x".to_vec().into(),
                lease: 0,
                prev_kv: false,
            }),
        ))
        .await;
    out.push(("propose", r.map(|_| ())));
    out
}

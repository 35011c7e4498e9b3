//! The Maintenance service: node and cluster status, alarms, backups.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_raft::event::Event;
use utopia_storage::backup::Producer;

use super::access::Need;
use super::header;
use crate::node::{Consistency, Error, Node};

/// Bytes per backup message.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Backup messages produced ahead of the client, at most.
const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 4;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Fills `buf` unless the stream ends first; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = self.node.authorize(&req, Need::Anyone)?;
        let st = self.node.raft.status();
        let (revision, compact_revision) = self.node.reader.revisions().map_err(Error::from)?;
        let reading = crate::metrics::reading(&self.node);
        Ok(Response::new(pb::StatusResponse {
            header: header(&self.node, revision),
            version: env!("CARGO_PKG_VERSION").to_string(),
            leader: st.leader.unwrap_or(0),
            raft_term: st.term,
            raft_index: st.last_log_index,
            raft_applied_index: st.applied_index,
            compact_revision,
            // Where the data lives tells about the host: root only.
            data_dir: if caller.sees_host_details() {
                self.node.data_dir.clone()
            } else {
                String::new()
            },
            db_size_bytes: self.node.reader.db_size_bytes(),
            members: st
                .members
                .into_iter()
                .map(|(id, (addr, voter))| pb::Member {
                    id,
                    addr,
                    voter,
                    matched_index: st.matched.get(&id).copied().unwrap_or(0),
                    client_addr: self.node.client_addr_of(id).unwrap_or_default(),
                })
                .collect(),
            // What peer messages must carry: with auth on, root only.
            cluster_id: if caller.sees_host_details() {
                self.node.peers.cluster().get()
            } else {
                0
            },
            // The figures the metrics endpoint renders, read back.
            counters: reading.values.into_iter().collect(),
            histograms: reading
                .histograms
                .into_iter()
                .map(|h| pb::HistogramSummary {
                    name: h.name,
                    count: h.count,
                    sum: h.sum,
                    p50: h.p50,
                    p99: h.p99,
                    bounds: h
                        .buckets
                        .iter()
                        .map(|(b, _)| *b)
                        .filter(|b| b.is_finite())
                        .collect(),
                    buckets: h.buckets.iter().map(|(_, n)| *n).collect(),
                })
                .collect(),
            role: format!("{:?}", st.role).to_lowercase(),
            raft_snapshot_index: st.snapshot_index,
            raft_purged_index: st.purged_index,
            raft_membership_index: st.membership_index,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let producer = Producer {
            cluster_id: self.node.peers.cluster().get(),
            node_id: self.node.raft.id(),
            created_ms: crate::now_ms(),
            utopia_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let reader = self.node.reader.clone();
        let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
        // The view is taken here, before the answer: the backup is of this
        // moment however slowly the client reads.
        let mut stream = reader
            .backup(producer)
            .map_err(|e| Status::failed_precondition(format!("take a backup: {e}")))?;
        let (revision, last_log_index) =
            (stream.manifest().revision, stream.manifest().last_log_index);
        tracing::info!(revision, last_log_index, "streaming a backup");
        self.node.tasks.spawn("backup stream", async move {
            let mut first = true;
            loop {
                // RocksDB reads block: one chunk at a time off the runtime.
                let read = tokio::task::spawn_blocking(move || {
                    let mut blob = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                    let n = read_full(&mut stream, &mut blob);
                    (stream, blob, n)
                })
                .await;
                let (returned, mut blob, n) = match read {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("backup: {e}")))).await;
                        return;
                    }
                };
                stream = returned;
                let n = match n {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("read the backup: {e}"))))
                            .await;
                        return;
                    }
                };
                blob.truncate(n);
                let msg = pb::SnapshotResponse {
                    blob,
                    revision: if first { revision } else { 0 },
                    last_log_index: if first { last_log_index } else { 0 },
                };
                first = false;
                // The client went away: stop reading.
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let r = req.into_inner();
        let alarm = super::alarm::alarm_from_pb(&self.node, r.alarm)?;
        let revision = match pb::alarm_request::AlarmAction::try_from(r.action) {
            Ok(pb::alarm_request::AlarmAction::List) => {
                self.node.read_barrier(Consistency::Linearizable).await?;
                self.node.current_revision()?
            }
            Ok(pb::alarm_request::AlarmAction::Disarm) => {
                let resp = self
                    .node
                    .propose(Event::AlarmDisarmed {
                        node_id: r.member_id,
                        alarm,
                    })
                    .await?;
                tracing::info!(member = r.member_id, alarm = alarm.name(), "alarm disarmed");
                resp.revision
            }
            Err(_) => {
                return Err(self
                    .node
                    .invalid("bad_alarm", format!("unknown alarm action {}", r.action))
                    .into())
            }
        };
        let alarms = self.node.reader.alarms().map_err(Error::from)?;
        Ok(Response::new(pb::AlarmResponse {
            header: header(&self.node, revision),
            alarms: super::alarm::alarms_to_pb(alarms),
        }))
    }
}

/// The Cluster service: membership changes and leader transfer.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let r = req.into_inner();
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(self
                .node
                .invalid(
                    "bad_member",
                    format!(
                        "member address {:?} is not HOST:PORT (an IP address and a port)",
                        r.addr
                    ),
                )
                .into());
        }
        self.node
            .raft
            .add_member(r.id, &r.addr, r.learner)
            .await
            .map_err(|e| self.node.raft_error(e))?;
        tracing::info!(node = r.id, addr = %r.addr, learner = r.learner, "member added");
        Ok(Response::new(pb::AddMemberResponse {
            header: header(&self.node, self.node.current_revision()?),
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let id = req.into_inner().id;
        self.node
            .raft
            .remove_member(id)
            .await
            .map_err(|e| self.node.raft_error(e))?;
        tracing::info!(node = id, "member removed");
        Ok(Response::new(pb::RemoveMemberResponse {
            header: header(&self.node, self.node.current_revision()?),
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let id = req.into_inner().id;
        self.node
            .raft
            .transfer_leader(id)
            .await
            .map_err(|e| self.node.raft_error(e))?;
        Ok(Response::new(pb::TransferLeaderResponse {
            header: header(&self.node, self.node.current_revision()?),
        }))
    }
}

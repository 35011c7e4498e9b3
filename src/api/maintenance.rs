//! The Maintenance service: node and cluster status.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;

use super::{status, Node};

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
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.node.raft.status();
        let (revision, compact_revision) =
            self.node.reader.revisions().map_err(status::from_store)?;
        Ok(Response::new(pb::StatusResponse {
            header: self.node.header(revision),
            version: env!("CARGO_PKG_VERSION").to_string(),
            leader: st.leader.unwrap_or(0),
            raft_term: st.term,
            raft_index: st.last_log_index,
            raft_applied_index: st.applied_index,
            compact_revision,
            data_dir: self.node.data_dir.clone(),
            db_size_bytes: self.node.reader.db_size_bytes(),
            members: st
                .members
                .into_iter()
                .map(|(id, (addr, voter))| pb::Member { id, addr, voter })
                .collect(),
            counters: self.node.counters.snapshot().into_iter().collect(),
        }))
    }
}

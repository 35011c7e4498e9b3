//! The Lease service: grant, revoke and inspect leases. Expiry is driven by
//! the leader's reaper in [`crate::server`], through the log.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_raft::event::{Event, Outcome};

use super::access::Need;
use super::header;
use crate::node::{Consistency, Error, Node};
use utopia_raft::event::Access;

/// The longest lease a client may ask for: one year.
pub const LEASE_TTL_SECONDS_MAX: i64 = 366 * 24 * 3600;

pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.node.authorize(&req, Need::User)?;
        let r = req.into_inner();
        if r.ttl_seconds <= 0 || r.ttl_seconds > LEASE_TTL_SECONDS_MAX {
            return Err(self
                .node
                .invalid(
                    "bad_lease",
                    format!(
                        "lease TTL must be 1..={LEASE_TTL_SECONDS_MAX} seconds, got {}",
                        r.ttl_seconds
                    ),
                )
                .into());
        }
        if r.id < 0 {
            return Err(self
                .node
                .invalid("bad_lease", "lease id must not be negative")
                .into());
        }
        let id = if r.id == 0 {
            self.node.new_lease_id()
        } else {
            r.id
        };
        let resp = self
            .node
            .propose(Event::LeaseGrant {
                id,
                ttl_s: r.ttl_seconds,
            })
            .await?;
        let (id, ttl) = match resp.outcome {
            Outcome::Lease { id, ttl_s } => (id, ttl_s),
            _ => (id, r.ttl_seconds),
        };
        Ok(Response::new(pb::LeaseGrantResponse {
            header: header(&self.node, resp.revision),
            id,
            ttl_seconds: ttl,
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.node
            .authorize(&req, Need::LeaseKeys(Access::Write, req.get_ref().id))?;
        let id = req.into_inner().id;
        let resp = self.node.propose(Event::LeaseRevoke { id }).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: header(&self.node, resp.revision),
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.node
            .authorize(&req, Need::LeaseKeys(Access::Read, req.get_ref().id))?;
        let id = req.into_inner().id;
        self.node.read_barrier(Consistency::Linearizable).await?;
        let bytes_max = self.node.limits.response_bytes_max as usize;
        let Some((lease, keys, keys_more)) =
            self.node.reader.lease(id, bytes_max).map_err(Error::from)?
        else {
            return Err(Error::NotFound(format!("lease {id} not found")).into());
        };
        let remaining_ms = lease.deadline_ms() as i64 - crate::now_ms() as i64;
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: header(&self.node, self.node.current_revision()?),
            id,
            ttl_seconds: lease.ttl_s,
            remaining_ms: remaining_ms.max(0),
            keys,
            keys_more,
        }))
    }
}

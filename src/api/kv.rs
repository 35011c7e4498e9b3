//! The KV service: etcd-style Range, Put, DeleteRange, Txn and Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use utopia_proto::v1 as pb;
use utopia_proto::v1::compare::{CompareResult, CompareTarget as PbTarget, TargetUnion};
use utopia_raft::event::{
    Compare, CompareOp, CompareTarget, DeleteOp, Event, Outcome, PutOp, RangeOp, RangeResult,
    StepResult, TxnOp, TxnStep,
};

use super::access::{txn_needs, Need};
use super::{bytes, consistency, header, kv_to_pb};
use crate::node::{Error, Node};
use utopia_raft::event::Access;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn put_op(&self, r: pb::PutRequest) -> Result<PutOp, Error> {
        self.node.check_key(&r.key, "key")?;
        self.node.check_value(&r.value)?;
        if r.lease < 0 {
            return Err(self
                .node
                .invalid("bad_lease", format!("lease id {} is negative", r.lease)));
        }
        Ok(PutOp {
            key: bytes(r.key),
            value: bytes(r.value),
            lease: r.lease,
            prev_kv: r.prev_kv,
        })
    }

    fn delete_op(&self, r: pb::DeleteRangeRequest) -> Result<DeleteOp, Error> {
        self.node.check_key(&r.key, "key")?;
        self.node.check_len(
            r.range_end.len(),
            self.node.limits.key_bytes_max,
            "range_end",
            "key_bytes_max",
        )?;
        Ok(DeleteOp {
            key: bytes(r.key),
            range_end: bytes(r.range_end),
            prev_kv: r.prev_kv,
        })
    }

    fn range_op(&self, r: pb::RangeRequest) -> Result<RangeOp, Error> {
        self.node.check_key(&r.key, "key")?;
        if r.revision != 0 {
            return Err(self.node.invalid("txn_range_revision", "a range inside a transaction reads at the transaction's revision; revision must be 0"));
        }
        Ok(RangeOp {
            key: bytes(r.key),
            range_end: bytes(r.range_end),
            limit: self.node.range_limit(r.limit) as i64,
            keys_only: r.keys_only,
            count_only: r.count_only,
        })
    }

    fn step(&self, op: pb::RequestOp) -> Result<TxnStep, Error> {
        match op.request {
            Some(pb::request_op::Request::RequestPut(p)) => Ok(TxnStep::Put(self.put_op(p)?)),
            Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                Ok(TxnStep::Delete(self.delete_op(d)?))
            }
            Some(pb::request_op::Request::RequestRange(r)) => Ok(TxnStep::Range(self.range_op(r)?)),
            None => Err(self
                .node
                .invalid("bad_txn", "transaction operation is empty")),
        }
    }

    fn compare(&self, c: pb::Compare) -> Result<Compare, Error> {
        self.node.check_key(&c.key, "compare key")?;
        let op = match CompareResult::try_from(c.result) {
            Ok(CompareResult::Equal) => CompareOp::Equal,
            Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
            Ok(CompareResult::Greater) => CompareOp::Greater,
            Ok(CompareResult::Less) => CompareOp::Less,
            Err(_) => {
                return Err(self
                    .node
                    .invalid("bad_txn", format!("unknown compare result {}", c.result)))
            }
        };
        let target = PbTarget::try_from(c.target).map_err(|_| {
            self.node
                .invalid("bad_txn", format!("unknown compare target {}", c.target))
        })?;
        let value = c.target_union;
        let target = match (target, value) {
            (PbTarget::Version, Some(TargetUnion::Version(v))) => CompareTarget::Version(v),
            (PbTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
                CompareTarget::CreateRevision(v)
            }
            (PbTarget::Mod, Some(TargetUnion::ModRevision(v))) => CompareTarget::ModRevision(v),
            (PbTarget::Value, Some(TargetUnion::Value(v))) => {
                self.node.check_value(&v)?;
                CompareTarget::Value(bytes(v))
            }
            (PbTarget::Lease, Some(TargetUnion::Lease(v))) => CompareTarget::Lease(v),
            // proto3 drops zero values of a oneof only when unset: treat a
            // missing number as 0, as etcd does.
            (PbTarget::Version, None) => CompareTarget::Version(0),
            (PbTarget::Create, None) => CompareTarget::CreateRevision(0),
            (PbTarget::Mod, None) => CompareTarget::ModRevision(0),
            (PbTarget::Lease, None) => CompareTarget::Lease(0),
            (PbTarget::Value, None) => CompareTarget::Value(bytes(Vec::new())),
            (t, Some(_)) => {
                return Err(self.node.invalid(
                    "bad_txn",
                    format!(
                        "compare target {} does not match the value given",
                        t.as_str_name()
                    ),
                ))
            }
        };
        Ok(Compare {
            key: bytes(c.key),
            range_end: bytes(c.range_end),
            op,
            target,
        })
    }
}

impl KvService {
    /// Refuses, before it is proposed, a transaction that would read or
    /// touch more than `txn_bytes_max` in the current state (estimated on
    /// this node, off the runtime's threads; the work stops at the
    /// bound). The applier holds the same bound, carried in the event, for
    /// a state that grows in between. Hands the transaction back.
    async fn check_txn_bytes(&self, txn: TxnOp) -> Result<TxnOp, Error> {
        let reader = self.node.reader.clone();
        let bytes_max = txn.bytes_max;
        let (txn, estimate) = tokio::task::spawn_blocking(move || {
            let estimate = reader.txn_bytes(&txn, bytes_max);
            (txn, estimate)
        })
        .await
        .map_err(|e| Error::Internal(format!("estimate the transaction's bytes: {e}")))?;
        match estimate.map_err(Error::from)? {
            Some(_) => Ok(txn),
            None => Err(self.node.invalid(
                "txn_too_large",
                format!(
                    "the request would read or touch more than txn_bytes_max = {bytes_max} bytes \
                     (ranges and range compares count their pairs, deletes their keys, prev_kv the \
                     previous pairs); read large ranges with Range, which pages them, and delete \
                     in smaller ranges"
                ),
            )),
        }
    }
}

pub fn range_to_pb(node: &Node, revision: i64, r: RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(node, revision),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (key, end) = (&req.get_ref().key, &req.get_ref().range_end);
        self.node
            .authorize(&req, Need::Keys(Access::Read, key, end))?;
        let r = req.into_inner();
        self.node.check_key(&r.key, "key")?;
        self.node.read_barrier(consistency(r.consistency)).await?;
        let limit = self.node.range_limit(r.limit);
        let result = self
            .node
            .reader
            .range(
                &r.key,
                &r.range_end,
                limit,
                self.node.limits.response_bytes_max as usize,
                r.revision,
                r.keys_only,
                r.count_only,
            )
            .map_err(|e| self.node.reject("range", e.into()))?;
        let revision = if r.revision > 0 {
            r.revision
        } else {
            self.node.current_revision()?
        };
        Ok(Response::new(range_to_pb(&self.node, revision, result)))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.node
            .authorize(&req, Need::Keys(Access::Write, &req.get_ref().key, &[]))?;
        let op = self.put_op(req.into_inner())?;
        let resp = self.node.propose(Event::Put(op)).await?;
        let prev_kv = match resp.outcome {
            Outcome::Put { prev } => prev.map(kv_to_pb),
            _ => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: header(&self.node, resp.revision),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (key, end) = (&req.get_ref().key, &req.get_ref().range_end);
        self.node
            .authorize(&req, Need::Keys(Access::Write, key, end))?;
        let op = self.delete_op(req.into_inner())?;
        let check = TxnOp {
            compares: vec![],
            success: vec![TxnStep::Delete(op)],
            failure: vec![],
            bytes_max: self.node.limits.txn_bytes_max,
        };
        let Some(TxnStep::Delete(op)) = self.check_txn_bytes(check).await?.success.pop() else {
            return Err(Error::Internal("the checked delete went missing".into()).into());
        };
        let resp = self.node.propose(Event::Delete(op)).await?;
        let (deleted, prev) = match resp.outcome {
            Outcome::Delete { deleted, prev } => (deleted, prev),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: header(&self.node, resp.revision),
            deleted,
            prev_kvs: prev.into_iter().map(kv_to_pb).collect(),
        }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.node.authorize(&req, txn_needs(req.get_ref()))?;
        let t = req.into_inner();
        let ops = t.compare.len() + t.success.len() + t.failure.len();
        if ops as u64 > self.node.limits.txn_ops_max {
            return Err(self
                .node
                .invalid(
                    "too_large",
                    format!(
                    "transaction has {ops} compares and operations; the limit is txn_ops_max = {}",
                    self.node.limits.txn_ops_max
                ),
                )
                .into());
        }
        let mut txn = TxnOp {
            compares: t
                .compare
                .into_iter()
                .map(|c| self.compare(c))
                .collect::<Result<_, _>>()?,
            success: t
                .success
                .into_iter()
                .map(|s| self.step(s))
                .collect::<Result<_, _>>()?,
            failure: t
                .failure
                .into_iter()
                .map(|s| self.step(s))
                .collect::<Result<_, _>>()?,
            bytes_max: self.node.limits.txn_bytes_max,
        };
        txn = self.check_txn_bytes(txn).await?;
        let resp = self.node.propose(Event::Txn(txn)).await?;
        let Outcome::Txn { succeeded, results } = resp.outcome else {
            return Err(
                Error::Internal("transaction produced no transaction result".into()).into(),
            );
        };
        let responses = results
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    StepResult::Range(range) => pb::response_op::Response::ResponseRange(
                        range_to_pb(&self.node, resp.revision, range),
                    ),
                    StepResult::Put { prev } => {
                        pb::response_op::Response::ResponsePut(pb::PutResponse {
                            header: header(&self.node, resp.revision),
                            prev_kv: prev.map(kv_to_pb),
                        })
                    }
                    StepResult::Delete { deleted, prev } => {
                        pb::response_op::Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: header(&self.node, resp.revision),
                            deleted,
                            prev_kvs: prev.into_iter().map(kv_to_pb).collect(),
                        })
                    }
                }),
            })
            .collect();
        Ok(Response::new(pb::TxnResponse {
            header: header(&self.node, resp.revision),
            succeeded,
            responses,
        }))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        self.node.authorize(&req, Need::Root)?;
        let revision = req.into_inner().revision;
        if revision <= 0 {
            return Err(self
                .node
                .invalid("bad_revision", "compact revision must be positive")
                .into());
        }
        let resp = self.node.compact(revision).await?;
        Ok(Response::new(pb::CompactResponse {
            header: header(&self.node, resp.revision),
        }))
    }
}

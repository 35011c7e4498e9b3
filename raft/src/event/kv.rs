//! The key-value operations events carry: a put, a delete, and a
//! transaction's compares and steps (etcd's v3 model; reads inside a
//! transaction are evaluated at its revision).

use serde::{Deserialize, Serialize};

use super::Bytes;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutOp {
    pub key: Bytes,
    pub value: Bytes,
    /// 0: no lease.
    #[serde(default)]
    pub lease: i64,
    #[serde(default)]
    pub prev_kv: bool,
}

/// Deletes `key`, or every key in `[key, range_end)` when `range_end` is
/// non-empty (`[0]` meaning "to the end").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteOp {
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    #[serde(default)]
    pub prev_kv: bool,
}

/// A read inside a transaction; evaluated at the transaction's revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeOp {
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub keys_only: bool,
    #[serde(default)]
    pub count_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStep {
    Range(RangeOp),
    Put(PutOp),
    Delete(DeleteOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value(Bytes),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes,
    #[serde(default)]
    pub range_end: Bytes,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnOp {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnStep>,
    pub failure: Vec<TxnStep>,
    /// The most bytes the transaction may read or touch when it is
    /// applied (`limits.txn_bytes_max` of the proposer), carried here so
    /// that every replica applies the same bound. 0 in entries written
    /// before it was carried: the applier's own bound then.
    #[serde(default)]
    pub bytes_max: u64,
}

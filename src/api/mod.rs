//! The gRPC edge: the client port's services. Each handler checks who is
//! calling ([`access`]), turns the request into a call on the application
//! core ([`crate::node::Node`]) and the answer into a response; the core's
//! errors become gRPC statuses in one place, [`status`].
//!
//! Architecture invariant: nothing outside this module (and the server that
//! mounts it) depends on tonic's request or status types; the core, MQTT
//! and housekeeping never see them.

pub mod access;
pub mod alarm;
pub mod auth;
pub mod configs;
pub mod documents;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod status;
pub mod watch;

use utopia_proto::v1 as pb;
use utopia_raft::event::{Bytes, KeyValue};

use crate::node::{Consistency, Node};

/// The header of every response: the revision it reflects, this member,
/// and the Raft term.
pub fn header(node: &Node, revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        member_id: node.raft.id(),
        raft_term: node.raft.term(),
    })
}

/// The consistency a request asks for (linearizable unless it says
/// serializable).
pub fn consistency(value: i32) -> Consistency {
    if value == pb::Consistency::Serializable as i32 {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
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

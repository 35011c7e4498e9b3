//! Log entries for the storage tests: ids in term 1 of node 1, and puts.

#![allow(dead_code)]

use openraft::vote::leader_id_adv::LeaderId;
use utopia_raft::event::{Bytes, Event, PutOp, Request};
use utopia_raft::openraft_api::{EntryOf, EntryPayload, LogIdOf};
use utopia_raft::TypeConfig;

/// The id of entry `index`, written in term 1 by node 1.
pub fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    LogIdOf::<TypeConfig>::new(
        LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

/// Entry `index`: a put of `key` to `value`, proposed at `1_000 + index` ms.
pub fn put_entry(index: u64, key: String, value: Vec<u8>) -> EntryOf<TypeConfig> {
    let op = PutOp {
        key: Bytes::from(key),
        value: Bytes::from(value),
        lease: 0,
        prev_kv: false,
    };
    EntryOf::<TypeConfig> {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::new(1_000 + index, Event::Put(op))),
    }
}

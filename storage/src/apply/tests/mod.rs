//! Event application against an in-memory state: no RocksDB. The state
//! and helpers are here; the tests are by domain, like the applier.

use std::collections::BTreeMap;

use super::*;
use crate::keys::DeviceIndex;
use serde_json::{json, Value};
use utopia_raft::event::{
    Bytes, Compare, CompareOp, CompareTarget, ConfigVersion, DeleteOp, DeviceData, Event,
    FellowState, KeyValue, Outcome, PutOp, RangeOp, Request, StatCounter, StepResult, TxnOp,
    TxnStep,
};

/// A state held in a map, committed the way the state machine commits.
#[derive(Default)]
struct MemState {
    data: BTreeMap<(Cf, Vec<u8>), Vec<u8>>,
}

impl StateRead for MemState {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data.get(&(cf, key.to_vec())).cloned())
    }

    fn scan<'a>(&'a self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'a> {
        let end = end.map(<[u8]>::to_vec);
        Box::new(
            self.data
                .range((cf, start.to_vec())..)
                .take_while(move |((c, k), _)| *c == cf && end.as_ref().is_none_or(|e| k < e))
                .map(|((_, k), v)| Ok((k.clone(), v.clone()))),
        )
    }
}

impl MemState {
    /// Applies events one batch at a time, returning the responses.
    fn apply_batch(&mut self, events: Vec<(u64, Event)>) -> Vec<Response> {
        let mut applier = Applier::new(&*self);
        let mut out = Vec::new();
        for (at, e) in events {
            out.push(applier.apply(&Request::new(at, e)).unwrap());
        }
        let (writes, _) = applier.finish();
        for (k, v) in writes {
            match v {
                Some(v) => self.data.insert(k, v),
                None => self.data.remove(&k),
            };
        }
        out
    }

    fn apply(&mut self, e: Event) -> Response {
        self.apply_batch(vec![(1_000, e)]).pop().unwrap()
    }

    fn kv(&self, key: &str) -> Option<KeyValue> {
        self.get(Cf::Kv, key.as_bytes())
            .unwrap()
            .map(|b| event::decode(&b).unwrap())
    }

    /// Every history record's (key, revision), in key order.
    fn history(&self) -> Vec<(Vec<u8>, i64)> {
        self.scan(Cf::KvHistory, &[], None)
            .map(|r| keys::parse_history_key(&r.unwrap().0).unwrap())
            .collect()
    }

    /// The revision of every change in the feed, in order.
    fn change_revisions(&self) -> Vec<i64> {
        self.scan(Cf::KvChanges, &[], None)
            .map(|r| keys::parse_change_key(&r.unwrap().0).unwrap().0)
            .collect()
    }

    fn doc(&self, cf: Cf, id: &str) -> Value {
        serde_json::from_slice(
            &self
                .get(cf, id.as_bytes())
                .unwrap()
                .expect("document exists"),
        )
        .unwrap()
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.as_bytes().to_vec())
}

fn put(k: &str, v: &str) -> Event {
    Event::Put(PutOp {
        key: b(k),
        value: b(v),
        lease: 0,
        prev_kv: true,
    })
}

fn del(k: &str, end: &str) -> Event {
    Event::Delete(DeleteOp {
        key: b(k),
        range_end: b(end),
        prev_kv: true,
    })
}

fn range_step(k: &str, end: &str) -> TxnStep {
    TxnStep::Range(RangeOp {
        key: b(k),
        range_end: b(end),
        limit: 0,
        keys_only: false,
        count_only: false,
    })
}

/// Ten keys of 1 KiB each, `k0`..`k9`.
fn ten_kib() -> MemState {
    let mut s = MemState::default();
    for i in 0..10 {
        s.apply(Event::Put(PutOp {
            key: b(&format!("k{i}")),
            value: Bytes::from(vec![b'v'; 1024]),
            lease: 0,
            prev_kv: false,
        }));
    }
    s
}

fn device(zone: &str, post_type: &str, path: &[&str], json: &str) -> Event {
    Event::DeviceDataUpdated(DeviceData {
        host: "gw1".into(),
        zone: zone.into(),
        class: "thermo".into(),
        device_id: "7".into(),
        post_type: post_type.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        json: json.into(),
    })
}

mod alarm;
mod auth;
mod class_rules;
mod content_errors;
mod documents;
mod ingest_events;
mod kv;
mod lease_compact;
mod xmlconf;
mod xmlconf_sync;

//! A simulated world for the core: a store (owners, alarms, dedupe
//! records), bridges with connection generations, and a Raft that records
//! proposals until a test step answers them. Reads of the store are
//! answered at once unless a step holds them.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use utopia_raft::event::{Event, IngestBody, IngestMember, Outcome, Rejection, Request};
use utopia_raft::{ProposeError, Response};
use utopia_storage::apply::{IngestEffects, IngestOwners};

use super::super::core::{Action, Core, CoreConfig, Now};
use crate::config::mqtt::IngestSettings;
use crate::mqtt::bridge::{AckToken, BridgeEvent, Incoming};

/// This node.
pub const NODE: u64 = 1;
/// The wall clock at monotonic 0.
const WALL_MS_AT_START: u64 = 1_700_000_000_000;

/// A message by number: device `m / 100`, sequence `m % 100`; its topic is
/// `/h/z/c/{device}/n/{seq}` and its payload the sequence number.
pub fn topic_of(m: u32) -> String {
    format!("/h/z/c/{}/n/{}", m / 100, m % 100)
}

fn payload_of(m: u32) -> Vec<u8> {
    (m % 100).to_string().into_bytes()
}

pub fn digest_of(m: u32) -> [u8; 16] {
    utopia_storage::ingest::digest(&topic_of(m), &payload_of(m))
}

/// Owners of epoch 1: `ids`, weight 1 each, nothing excluded.
pub fn owners_of(ids: &[u64]) -> IngestOwners {
    IngestOwners {
        epoch: 1,
        members: members(ids),
        ..IngestOwners::default()
    }
}

pub fn members(ids: &[u64]) -> Vec<IngestMember> {
    ids.iter()
        .map(|id| IngestMember {
            node_id: *id,
            weight: 1,
        })
        .collect()
}

/// A device number (1..) whose device `node` owns among `ids`.
pub fn device_owned_by(node: u64, ids: &[u64]) -> u32 {
    (1..)
        .find(|d| {
            let doc = utopia_storage::apply::device_doc_id("h", "c", &d.to_string());
            owners_of(ids).owner(&doc) == Some(node)
        })
        .expect("some device")
}

/// How a proposal is answered.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Ingested,
    Stale {
        current: u64,
    },
    Alarm,
    RejectedInvalid,
    OutcomeUnknown,
    /// The leader refused a forwarded batch before proposing it.
    RefusedByLeader,
    Unavailable,
}

impl Answer {
    pub fn result(self, proposed_epoch: u64) -> Result<Response, ProposeError> {
        let rejected = |r| {
            Ok(Response {
                revision: 0,
                outcome: Outcome::Rejected(r),
            })
        };
        match self {
            Answer::Ingested => Ok(Response {
                revision: 0,
                outcome: Outcome::Ingested {
                    applied: 0,
                    suppressed: 0,
                    rejected: 0,
                },
            }),
            Answer::Stale { current } => rejected(Rejection::StaleEpoch {
                proposed: proposed_epoch,
                current,
            }),
            Answer::Alarm => rejected(Rejection::Alarm {
                node_id: 2,
                alarm: utopia_raft::event::AlarmKind::NoSpace,
            }),
            Answer::RejectedInvalid => rejected(Rejection::Invalid("no".into())),
            Answer::OutcomeUnknown => Err(ProposeError::OutcomeUnknown("leader changed".into())),
            Answer::RefusedByLeader => Err(ProposeError::Invalid(
                "the leader at 127.0.0.1:1 refused the proposal: stamped too far from its clock"
                    .into(),
            )),
            Answer::Unavailable => Err(ProposeError::Unavailable("no quorum".into())),
        }
    }
}

/// What a proposed item is, as a test states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Proposed as new: the applier applies it.
    New,
    /// Proposed as redelivered: the applier suppresses it if committed.
    Redelivered,
    /// Recorded as dropped (its device was over its rate).
    Dropped,
}

/// Which store reads a step may hold back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Owners,
    Checks,
}

pub struct Sim {
    pub core: Core,
    pub now: Now,
    pub owners: IngestOwners,
    pub alarm: bool,
    /// The store's dedupe records: digest → wall ms of its latest commit.
    pub commits: HashMap<[u8; 16], u64>,
    /// Each bridge's current connection, as the bridge knows it.
    pub generations: Vec<u64>,
    /// Packet ids of acknowledgements that reached the broker, unchecked.
    pub acked: Vec<u16>,
    pub proposals: Vec<(u64, Request)>,
    pub counters: BTreeMap<String, u64>,
    pub weight: u32,
    pub commands_changed: u64,
    pub alarm_reads: u64,
    /// Digests looked up in the dedupe records.
    pub lookups: u64,
    pub holding: Vec<Read>,
    held: Vec<Action>,
}

impl Sim {
    /// Bridge 0 carries devices; bridge 1 is a cluster-role bridge.
    pub fn new(settings: IngestSettings) -> Sim {
        let now = Now {
            mono_ms: 0,
            wall_ms: WALL_MS_AT_START,
        };
        let config = CoreConfig {
            node_id: NODE,
            cluster_name: "utopia".into(),
            settings,
            ingests: vec![true, false],
            json_depth_max: 32,
            document_bytes_max: 1 << 20,
        };
        let mut sim = Sim {
            core: Core::new(config, now),
            now,
            owners: IngestOwners::default(),
            alarm: false,
            commits: HashMap::new(),
            generations: vec![0, 0],
            acked: Vec::new(),
            proposals: Vec::new(),
            counters: BTreeMap::new(),
            weight: 0,
            commands_changed: 0,
            alarm_reads: 0,
            lookups: 0,
            holding: Vec::new(),
            held: Vec::new(),
        };
        let first = sim.core.start(now);
        sim.perform(first);
        sim
    }

    pub fn at(&mut self, mono_ms: u64) {
        assert!(mono_ms >= self.now.mono_ms, "time only moves forward");
        self.now = Now {
            mono_ms,
            wall_ms: WALL_MS_AT_START + mono_ms,
        };
        let a = self.core.on_tick(self.now);
        self.perform(a);
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn bridge_event(&mut self, ev: BridgeEvent) {
        let a = self.core.on_bridge_event(ev, self.now);
        self.perform(a);
    }

    /// A message on bridge 0's current connection.
    pub fn receive(&mut self, topic: String, payload: Vec<u8>, pkid: u16, dup: bool) {
        let token = AckToken::new(0, self.generations[0], pkid, 1);
        self.bridge_event(BridgeEvent::Message(Incoming {
            bridge: 0,
            topic,
            payload: Bytes::from(payload),
            qos: 1,
            dup,
            ack: Some(token),
        }));
    }

    pub fn receive_m(&mut self, m: u32, pkid: u16, dup: bool) {
        self.receive(topic_of(m), payload_of(m), pkid, dup);
    }

    /// Bridge `bridge` is on connection `generation`; `told`: the core has
    /// heard of it too (else the event is still on its way).
    pub fn connect(&mut self, bridge: usize, generation: u64, told: bool) {
        self.generations[bridge] = generation;
        if told {
            self.bridge_event(BridgeEvent::Connected { bridge, generation });
        }
    }

    /// The store records a commit of each, now.
    pub fn store_commits(&mut self, ms: &[u32]) {
        for m in ms {
            self.commits.insert(digest_of(*m), self.now.wall_ms);
        }
    }

    /// A batch committing `ms` is applied on this node.
    pub fn apply(&mut self, ms: &[u32], owners_changed: bool, commands_changed: bool) {
        self.store_commits(ms);
        let eff = IngestEffects {
            committed: ms.iter().map(|m| digest_of(*m)).collect(),
            owners_changed,
            commands_changed,
        };
        let a = self.core.on_applied(&eff, self.now);
        self.perform(a);
    }

    pub fn set_owners(&mut self, epoch: u64, ids: &[u64], applied: bool) {
        self.set_owners_excluding(epoch, ids, &[], applied);
    }

    /// Owners whose members `excluded` own no device of class `c` (the
    /// class of every simulated device) while another member can.
    pub fn set_owners_excluding(
        &mut self,
        epoch: u64,
        ids: &[u64],
        excluded: &[u64],
        applied: bool,
    ) {
        self.owners = IngestOwners {
            epoch,
            members: members(ids),
            dedupe_window_ms: 0,
            excluded: Default::default(),
        };
        if !excluded.is_empty() {
            self.owners
                .excluded
                .insert("c".to_string(), excluded.to_vec());
        }
        if applied {
            self.apply(&[], true, false);
        }
    }

    pub fn answer(&mut self, i: usize, answer: Answer) {
        let (batch, request) = self.proposals.get(i).cloned().expect("no such proposal");
        let Event::IngestBatch { epoch, .. } = *request.event else {
            panic!("not a batch")
        };
        let a = self.core.on_proposed(batch, answer.result(epoch), self.now);
        self.perform(a);
    }

    pub fn feed_lagged(&mut self) {
        let a = self.core.on_feed_lagged(3, self.now);
        self.perform(a);
    }

    pub fn release(&mut self, read: Read) {
        self.holding.retain(|r| *r != read);
        let held = std::mem::take(&mut self.held);
        self.perform(held);
    }

    /// Proposal `i` as (epoch, items by message number and kind).
    pub fn proposal(&self, i: usize) -> Option<(u64, Vec<(u32, Item)>)> {
        let (_, request) = self.proposals.get(i)?;
        let Event::IngestBatch {
            epoch,
            proposer,
            items,
        } = &*request.event
        else {
            panic!("not a batch: {request}")
        };
        assert_eq!(*proposer, NODE);
        let name = |d: &[u8]| {
            (0..10_000)
                .find(|m| digest_of(*m)[..] == *d)
                .expect("a digest of a test message")
        };
        let items = items
            .iter()
            .map(|it| {
                let kind = match (&it.body, it.redelivered) {
                    (IngestBody::Dropped { .. }, _) => Item::Dropped,
                    (_, true) => Item::Redelivered,
                    (_, false) => Item::New,
                };
                (name(&it.digest), kind)
            })
            .collect();
        Some((*epoch, items))
    }

    fn perform(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let now = self.now;
            match action {
                Action::Ack(token) => {
                    if token.generation == self.generations[token.bridge] {
                        self.acked.push(token.pkid());
                    }
                }
                Action::AckCommitted { token, digest } => {
                    if token.generation == self.generations[token.bridge] {
                        self.acked.push(token.pkid());
                    } else {
                        queue.extend(self.core.on_ack_void(digest, now));
                    }
                }
                Action::Propose { batch, request } => self.proposals.push((batch, request)),
                Action::ReadOwners if self.holding.contains(&Read::Owners) => {
                    self.held.push(Action::ReadOwners)
                }
                Action::ReadOwners => {
                    queue.extend(self.core.on_owners(Some(self.owners.clone()), now))
                }
                Action::ReadAlarms => {
                    self.alarm_reads += 1;
                    queue.extend(self.core.on_alarms(self.alarm, now));
                }
                Action::CheckCommitted { check, lookups } => {
                    if self.holding.contains(&Read::Checks) {
                        self.held.push(Action::CheckCommitted { check, lookups });
                        continue;
                    }
                    self.lookups += lookups.len() as u64;
                    let answers: Vec<(u64, bool)> = lookups
                        .iter()
                        .map(|l| {
                            let c = self
                                .commits
                                .get(&l.digest)
                                .is_some_and(|at| *at >= l.since_ms);
                            (l.seq, c)
                        })
                        .collect();
                    queue.extend(self.core.on_checked(check, &answers, now));
                }
                Action::SetWeight(w) => self.weight = w,
                Action::CommandsChanged => self.commands_changed += 1,
                Action::Count(what, n) => {
                    *self.counters.entry(what.name().into_owned()).or_default() += n
                }
            }
        }
    }
}

//! The ingest core as a state machine: the held copies, the digest index,
//! tombstones, device rates, the bridges' health and the alarm back-off.
//!
//! Every method takes one input (a broker message, an applied batch, the
//! answer to a proposal or to a store read, a tick) and the time, and
//! returns the [`Action`]s that follow from it. The core reads no clock and
//! does no I/O: it knows nothing of tokio, RocksDB or the network, and all
//! its types are plain data (`actions.rs`), so it is tested input by input
//! (`tests/`). The driver (`driver.rs`) performs the actions and feeds
//! their results back. Proposing, and what a proposal's answer means, is
//! in `core/propose.rs`.
//!
//! Reads of the store are asked for, never made: the owners after a change
//! (proposals wait for the answer, so a batch never goes out under an epoch
//! the core has not seen), the active alarms before each round of
//! proposals, and whether a digest was committed (a redelivered copy, or
//! any copy while tombstones were recently dropped for room; such a copy
//! is held meanwhile, so a commit applied in between still settles it).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};

use utopia_raft::event::IngestBody;
use utopia_storage::apply::{IngestEffects, IngestOwners};

pub use super::actions::{Action, CoreConfig, Counted, Gauges, Lookup, Now};
use super::arrival::{self, Arrival, DeviceMessage, Rules};
use super::copies::CopiesByDigest;
use super::lag::LagHistogram;
use super::links::Links;
use super::rate::DeviceRates;
use super::tombstones::Tombstones;
use crate::config::mqtt::IngestSettings;
use crate::mqtt::bridge::{AckToken, BridgeEvent, Incoming};
use crate::mqtt::topic::{self, BadMessage};

mod propose;

pub use propose::BATCHES_IN_FLIGHT_MAX;

/// Devices whose ownership the core remembers at most (see `Core::owned`).
const OWNED_DEVICES_REMEMBERED_MAX: usize = 65_536;

/// How far before its arrival a held copy's commit is looked for after the
/// applied-batch feed fell behind.
const RESYNC_LOOKBACK_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the store to say whether it is committed.
    Checking,
    /// Waiting to be proposed (by this node, if it owns the device) or to
    /// be settled by a commit.
    Waiting,
    /// In a proposal not yet answered.
    InFlight,
}

/// A copy of a message, held until its commit is applied here.
struct Held {
    digest: [u8; 16],
    device: String,
    body: IngestBody,
    received_ms: u64,
    received_wall_ms: u64,
    /// The broker marked it as a redelivery.
    dup: bool,
    /// It may be committed already: an earlier proposal of it has an
    /// unknown outcome, or the store has a commit of its digest.
    maybe_committed: bool,
    /// The owners epoch when it arrived, and whether this node owned its
    /// device then: a copy proposed under another epoch, or by a node that
    /// did not own it on arrival, may have been committed by another owner.
    epoch_at_receipt: u64,
    owned_at_receipt: bool,
    /// Its device was over `device_messages_per_s_max` when it arrived.
    over_rate: bool,
    stage: Stage,
    ack: Option<AckToken>,
}

/// Why the store was asked whether digests were committed.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// A copy on arrival; `evicted`: because tombstones were dropped for
    /// room (else because the broker marked it DUP).
    Arrival { evicted: bool },
    /// Every held copy, after the applied-batch feed fell behind.
    Resync,
}

/// An outstanding read of the owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnersRead {
    Idle,
    Asked,
    /// Asked, and asked for again since: the answer may predate a change.
    AskedAgain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlarmGate {
    Unknown,
    Asked,
    /// No alarm, as just read: one round of proposals may go.
    Clear,
}

pub struct Core {
    node_id: u64,
    cluster_prefix: String,
    settings: IngestSettings,
    json_depth_max: u64,
    document_bytes_max: u64,
    links: Links,
    /// Boxed: a tree node moves its values on every insert and removal,
    /// and a copy with its body is a few hundred bytes.
    held: BTreeMap<u64, Box<Held>>,
    /// Held copies by digest, oldest first.
    by_digest: CopiesByDigest,
    /// Copies of owned devices waiting to be proposed, oldest first (may
    /// name settled or in-flight ones: skipped when met).
    ready: VecDeque<u64>,
    next_seq: u64,
    tombstones: Tombstones,
    owners: IngestOwners,
    /// Whether this node owns each device seen under `owners`: ownership is
    /// a hash per member, and every copy asks it more than once. Emptied
    /// when the owners change, and when it reaches
    /// [`OWNED_DEVICES_REMEMBERED_MAX`].
    owned: RefCell<HashMap<String, bool>>,
    owners_read: OwnersRead,
    /// Proposals not yet answered, with the copies in each.
    batches: HashMap<u64, Vec<u64>>,
    next_batch: u64,
    checks: HashMap<u64, Purpose>,
    next_check: u64,
    /// Arrival checks not yet answered whose copy was settled meanwhile:
    /// they keep its room in the pending bound until the answer, so the
    /// store reads waiting are bounded by it too.
    orphan_checks: u64,
    /// A resync check is outstanding, and whether another is due after it.
    resync: Option<bool>,
    pause_until_ms: Option<u64>,
    alarm_gate: AlarmGate,
    /// The current pause while an alarm (NOSPACE) refuses new data; zero
    /// when none is active.
    alarm_pause_ms: u64,
    rates: DeviceRates,
    /// Rejections per reason, for logging the first and every power of two.
    rejected: HashMap<&'static str, u64>,
    lag: LagHistogram,
    out: Vec<Action>,
}

impl Core {
    pub fn new(config: CoreConfig, now: Now) -> Self {
        let s = &config.settings;
        Core {
            node_id: config.node_id,
            cluster_prefix: format!("/{}/", config.cluster_name),
            json_depth_max: config.json_depth_max,
            document_bytes_max: config.document_bytes_max,
            links: Links::new(config.ingests, s.weight, s.owner_timeout_ms, now.mono_ms),
            held: BTreeMap::new(),
            by_digest: CopiesByDigest::default(),
            ready: VecDeque::new(),
            next_seq: 0,
            tombstones: Tombstones::new(s.pending_messages_max, s.dedupe_window_ms),
            owners: IngestOwners::default(),
            owned: RefCell::default(),
            owners_read: OwnersRead::Idle,
            batches: HashMap::new(),
            next_batch: 0,
            checks: HashMap::new(),
            next_check: 0,
            orphan_checks: 0,
            resync: None,
            pause_until_ms: None,
            alarm_gate: AlarmGate::Unknown,
            alarm_pause_ms: 0,
            rates: DeviceRates::new(s.device_messages_per_s_max),
            rejected: HashMap::new(),
            lag: LagHistogram::default(),
            out: Vec::new(),
            settings: config.settings,
        }
    }

    /// The first actions: read the owners.
    pub fn start(&mut self, now: Now) -> Vec<Action> {
        self.read_owners();
        self.finish(now)
    }

    /// Whether another message may be taken from the bridges. At the bound,
    /// messages wait in the bridges and then in the broker (their
    /// connections are not read) until commits make room: nothing is
    /// refused that would then never come back.
    pub fn has_room(&self) -> bool {
        self.held.len() as u64 + self.orphan_checks < self.settings.pending_messages_max
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            pending_messages: self.held.len() as u64,
            lag: self.lag.clone(),
        }
    }

    pub fn on_bridge_event(&mut self, ev: BridgeEvent, now: Now) -> Vec<Action> {
        match ev {
            BridgeEvent::Message(m) => self.on_message(m, now),
            BridgeEvent::Connected { bridge, generation } => {
                self.count(Counted::MqttConnects);
                self.links.connected(bridge, generation);
                self.update_weight(now);
            }
            BridgeEvent::Disconnected { bridge, .. } => {
                self.count(Counted::MqttConnectionErrors);
                self.links.disconnected(bridge);
                self.update_weight(now);
            }
        }
        self.finish(now)
    }

    /// A batch was applied on this node.
    pub fn on_applied(&mut self, eff: &IngestEffects, now: Now) -> Vec<Action> {
        for digest in &eff.committed {
            match self
                .by_digest
                .pop_oldest(digest)
                .and_then(|s| self.held.remove(&s))
            {
                Some(e) => {
                    if e.stage == Stage::Checking {
                        self.orphan_checks += 1;
                    }
                    self.lag.observe(now.mono_ms.saturating_sub(e.received_ms));
                    if let Some(token) = e.ack {
                        self.out.push(Action::AckCommitted {
                            token,
                            digest: *digest,
                        });
                    }
                }
                None => self.add_tombstone(*digest, now),
            }
        }
        if eff.owners_changed {
            self.read_owners();
        }
        if eff.commands_changed {
            self.out.push(Action::CommandsChanged);
        }
        self.finish(now)
    }

    /// A committed copy's acknowledgement was void (its connection is
    /// gone): the broker redelivers it, and the redelivery must find a
    /// tombstone.
    pub fn on_ack_void(&mut self, digest: [u8; 16], now: Now) -> Vec<Action> {
        self.add_tombstone(digest, now);
        self.finish(now)
    }

    /// The applied-batch feed fell behind by `missed` batches: settle held
    /// copies from the store instead (committed since shortly before they
    /// arrived), and read the owners again.
    pub fn on_feed_lagged(&mut self, missed: u64, now: Now) -> Vec<Action> {
        tracing::warn!(missed, "ingest feed lagged; resynchronising held messages");
        self.count(Counted::IngestResyncs);
        match &mut self.resync {
            Some(again) => *again = true,
            None => self.resync_check(),
        }
        self.read_owners();
        self.finish(now)
    }

    pub fn on_tick(&mut self, now: Now) -> Vec<Action> {
        self.tombstones.expire(now.mono_ms);
        self.update_weight(now);
        self.finish(now)
    }

    /// The answer to [`Action::ReadOwners`]; None when the read failed
    /// (the core keeps the owners it knew).
    pub fn on_owners(&mut self, owners: Option<IngestOwners>, now: Now) -> Vec<Action> {
        let again = self.owners_read == OwnersRead::AskedAgain;
        self.owners_read = OwnersRead::Idle;
        if again {
            self.read_owners();
        }
        if let Some(o) = owners {
            if o.epoch != self.owners.epoch {
                tracing::info!(
                    epoch = o.epoch,
                    members = ?o.members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                    "topic owners changed"
                );
            }
            self.owners = o;
            self.owned.get_mut().clear();
        }
        self.rebuild_ready();
        self.finish(now)
    }

    /// The answer to [`Action::CheckCommitted`]: per looked-up copy,
    /// whether the store holds a commit of its digest since the time asked.
    pub fn on_checked(&mut self, check: u64, committed: &[(u64, bool)], now: Now) -> Vec<Action> {
        match self.checks.remove(&check) {
            Some(Purpose::Arrival { evicted }) => {
                for (seq, c) in committed {
                    self.arrival_checked(*seq, *c, evicted, now);
                }
            }
            Some(Purpose::Resync) => {
                for (seq, _) in committed.iter().filter(|(_, c)| *c) {
                    if let Some(e) = self.remove_held(*seq) {
                        if e.stage == Stage::Checking {
                            self.orphan_checks += 1;
                        }
                        self.ack(e.ack);
                    }
                }
                if self.resync.take() == Some(true) {
                    self.resync_check();
                }
            }
            None => {}
        }
        self.finish(now)
    }

    fn finish(&mut self, now: Now) -> Vec<Action> {
        self.propose(now);
        std::mem::take(&mut self.out)
    }

    fn count(&mut self, what: Counted) {
        self.out.push(Action::Count(what, 1));
    }

    fn ack(&mut self, token: Option<AckToken>) {
        if let Some(t) = token {
            self.out.push(Action::Ack(t));
        }
    }

    fn update_weight(&mut self, now: Now) {
        if let Some(w) = self.links.weight_change(now.mono_ms) {
            self.out.push(Action::SetWeight(w));
        }
    }

    fn read_owners(&mut self) {
        self.owners_read = match self.owners_read {
            OwnersRead::Idle => {
                self.out.push(Action::ReadOwners);
                OwnersRead::Asked
            }
            OwnersRead::Asked | OwnersRead::AskedAgain => OwnersRead::AskedAgain,
        };
    }

    fn owns(&self, device: &str) -> bool {
        if self.owners.epoch == 0 {
            return false;
        }
        let mut owned = self.owned.borrow_mut();
        if let Some(mine) = owned.get(device) {
            return *mine;
        }
        let mine = self.owners.owner(device) == Some(self.node_id);
        if owned.len() >= OWNED_DEVICES_REMEMBERED_MAX {
            owned.clear();
        }
        owned.insert(device.to_string(), mine);
        mine
    }

    fn reject(&mut self, m: &Incoming, bad: &BadMessage) {
        let reason = bad.reason();
        self.count(Counted::MqttRejected(reason));
        // Every rejection is counted; the log shows the first and then every
        // power of two of each reason, so a flood cannot drown it.
        let seen = self.rejected.entry(reason).or_default();
        *seen += 1;
        if seen.is_power_of_two() {
            tracing::warn!(topic = %topic::shown(&m.topic), reason, count = *seen, error = %bad, "MQTT message rejected");
        }
    }

    fn on_message(&mut self, m: Incoming, now: Now) {
        self.count(Counted::MqttMessagesReceived);
        let rules = Rules {
            cluster_prefix: &self.cluster_prefix,
            payload_bytes_max: self.settings.payload_bytes_max as usize,
            json_depth_max: self.json_depth_max as usize,
        };
        match arrival::classify(&m, self.links.carries_devices(m.bridge), &rules) {
            Arrival::Cluster => {
                self.count(Counted::MqttClusterMessages);
                tracing::info!(topic = %topic::shown(&m.topic), bytes = m.payload.len(), "cluster topic message");
                self.ack(m.ack);
            }
            Arrival::NotData => self.ack(m.ack),
            Arrival::Bad(bad) => {
                self.reject(&m, &bad);
                self.ack(m.ack);
            }
            Arrival::Device(d) => self.on_device_message(m, d, now),
        }
    }

    fn on_device_message(&mut self, m: Incoming, d: DeviceMessage, now: Now) {
        let DeviceMessage {
            device,
            digest,
            body,
        } = d;
        // Already committed (by the owner, before this copy arrived).
        if self.tombstones.take(&digest) {
            self.count(Counted::IngestCopiesAlreadyCommitted);
            self.ack(m.ack);
            return;
        }
        // A redelivery of a copy held from an earlier connection: it takes
        // over that copy's acknowledgement.
        if m.dup {
            if let Some(seq) = self.held_from_older_connection(&digest, m.bridge) {
                if let Some(e) = self.held.get_mut(&seq) {
                    e.ack = m.ack;
                    e.dup = true;
                }
                self.count(Counted::MqttRedeliveries);
                return;
            }
        }
        let mine = self.owns(&device);
        // Committed, as far as the store's dedupe records tell (a record
        // is one commit of this digest within the dedupe window)? Asked
        // for a redelivery, which may be of a committed message by
        // definition, and for any copy while tombstones may be missing for
        // room. The copy is held while the store is asked.
        let evicted = self.tombstones.evicted_recently(now.mono_ms);
        let ask = m.dup || evicted;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.held.insert(
            seq,
            Box::new(Held {
                digest,
                device,
                body,
                received_ms: now.mono_ms,
                received_wall_ms: now.wall_ms,
                dup: m.dup,
                maybe_committed: false,
                epoch_at_receipt: self.owners.epoch,
                owned_at_receipt: mine,
                over_rate: false,
                stage: Stage::Checking,
                ack: m.ack,
            }),
        );
        self.by_digest.push(digest, seq);
        if ask {
            let check = self.next_check;
            self.next_check += 1;
            self.checks.insert(check, Purpose::Arrival { evicted });
            self.out.push(Action::CheckCommitted {
                check,
                lookups: vec![Lookup {
                    seq,
                    digest,
                    since_ms: now.wall_ms.saturating_sub(self.settings.dedupe_window_ms),
                }],
            });
        } else {
            self.hold(seq, false, now);
        }
    }

    /// A held copy of `digest` that arrived on an older connection of
    /// `bridge` (its acknowledgement is void).
    fn held_from_older_connection(&self, digest: &[u8; 16], bridge: usize) -> Option<u64> {
        let current = self.links.generation(bridge)?;
        self.by_digest.seqs(digest).find(|s| {
            self.held.get(s).is_some_and(|e| {
                e.ack
                    .as_ref()
                    .is_some_and(|t| t.bridge == bridge && t.generation != current)
            })
        })
    }

    fn arrival_checked(&mut self, seq: u64, committed: bool, evicted: bool, now: Now) {
        let Some(e) = self.held.get(&seq).filter(|e| e.stage == Stage::Checking) else {
            // Settled meanwhile: its room is free now.
            self.orphan_checks = self.orphan_checks.saturating_sub(1);
            return;
        };
        let others = self.by_digest.seqs(&e.digest).any(|s| s != seq);
        if committed && !e.owned_at_receipt && !others {
            if let Some(e) = self.remove_held(seq) {
                self.count(Counted::IngestCopiesAlreadyCommitted);
                if evicted {
                    self.count(Counted::IngestCopiesSettledByStore);
                }
                self.ack(e.ack);
            }
            return;
        }
        // The applier suppresses it if the store's record is of it.
        self.hold(seq, committed, now);
    }

    /// A copy from now on waits to be proposed or settled.
    fn hold(&mut self, seq: u64, maybe_committed: bool, now: Now) {
        let Some(e) = self.held.get(&seq) else {
            return;
        };
        let mine = self.owns(&e.device);
        // Counted on every node that sees it; the owner's copy is recorded
        // in the log as dropped.
        let over_rate = self.rates.over(&e.device, now.wall_ms);
        if let Some(e) = self.held.get_mut(&seq) {
            e.over_rate = over_rate;
            e.maybe_committed = maybe_committed;
            e.stage = Stage::Waiting;
        }
        if over_rate {
            self.count(Counted::MqttRejected("device_rate"));
        }
        if mine {
            self.ready.push_back(seq);
        }
    }

    fn remove_held(&mut self, seq: u64) -> Option<Box<Held>> {
        let e = self.held.remove(&seq)?;
        self.by_digest.remove(&e.digest, seq);
        Some(e)
    }

    fn rebuild_ready(&mut self) {
        let mine: VecDeque<u64> = self
            .held
            .iter()
            .filter(|(_, e)| e.stage == Stage::Waiting && self.owns(&e.device))
            .map(|(s, _)| *s)
            .collect();
        self.ready = mine;
    }

    fn add_tombstone(&mut self, digest: [u8; 16], now: Now) {
        let evicted = self.tombstones.add(digest, now.mono_ms);
        if evicted > 0 {
            self.out
                .push(Action::Count(Counted::IngestTombstonesEvicted, evicted));
        }
    }

    fn resync_check(&mut self) {
        let lookups: Vec<Lookup> = self
            .held
            .iter()
            .map(|(seq, e)| Lookup {
                seq: *seq,
                digest: e.digest,
                since_ms: e.received_wall_ms.saturating_sub(RESYNC_LOOKBACK_MS),
            })
            .collect();
        if lookups.is_empty() {
            return;
        }
        let check = self.next_check;
        self.next_check += 1;
        self.checks.insert(check, Purpose::Resync);
        self.resync = Some(false);
        self.out.push(Action::CheckCommitted { check, lookups });
    }
}

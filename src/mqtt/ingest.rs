//! The ingest core: every message any bridge receives waits here until it
//! is in the committed log, and is acknowledged to the broker only then.
//!
//! Every server subscribes to the same device topics, so every server holds
//! a copy of every message. The owner of a message's device (rendezvous
//! hashing over the members agreed in the log, see
//! `utopia_storage::ingest`) batches its copies into `IngestBatch`
//! proposals; every server, on applying a committed batch, matches the
//! batch's digests against the copies it holds and acknowledges them. A
//! digest committed before this server's copy arrived is remembered for the
//! dedupe window, so the late copy is acknowledged on arrival.
//!
//! When ownership moves (a new epoch in the log), the new owner proposes the
//! copies it still holds. A batch proposed under an older epoch is refused
//! by the applier, so the old and the new owner never both commit a
//! message. Copies that may already be committed (the broker's DUP flag, or
//! a proposal whose outcome is unknown) are proposed as redelivered, and
//! the applier suppresses them when their digest was committed within the
//! dedupe window. So are copies a node proposes for a device it did not own
//! when the copy arrived, or under a later epoch than the one it arrived in:
//! the previous owner may have committed them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use utopia_raft::event::{
    Bytes, DeviceData, Event, IngestBody, IngestItem, Outcome, Rejection, Request,
};
use utopia_raft::{ProposeError, Response};
use utopia_storage::apply::{IngestEffects, IngestOwners};

use super::bridge::{AckToken, BridgeEvent, BridgeHandle, Incoming};
use super::topic::{self, BadMessage};
use crate::api::Node;
use crate::config::mqtt::IngestSettings;

/// Batches proposed and not yet answered, at most.
const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// How long a forwarded proposal may take before its outcome is unknown.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before proposing again after a failed proposal.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The first pause in proposing while an alarm refuses new data; it
/// doubles while the alarm stays, up to [`ALARM_PAUSE_MAX`].
const ALARM_PAUSE_MIN: Duration = Duration::from_millis(250);
const ALARM_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How often the pending and lag figures are published to the counters.
const GAUGES_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bounds of the ingest-lag histogram, in milliseconds.
pub const LAG_BUCKETS_MS: [u64; 20] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000, 2000, 5000, 30_000,
];

struct Entry {
    digest: [u8; 16],
    device: String,
    body: IngestBody,
    received: Instant,
    received_ms: u64,
    /// The broker marked it as a redelivery.
    dup: bool,
    /// An earlier proposal of it has an unknown outcome.
    maybe_committed: bool,
    /// The owners epoch when it arrived, and whether this node owned its
    /// device then: a copy proposed under another epoch, or by a node that
    /// did not own it on arrival, may have been committed by another owner.
    epoch_at_receipt: u64,
    owned_at_receipt: bool,
    /// Its device was over `device_messages_per_s_max` when it arrived.
    over_rate: bool,
    in_flight: bool,
    ack: Option<AckToken>,
}

/// Digests committed before this node's copy of them arrived, counted, for
/// the dedupe window and at most `pending_messages_max` of them.
struct Tombstones {
    by_digest: HashMap<[u8; 16], u32>,
    order: VecDeque<([u8; 16], Instant)>,
    /// When one was last dropped for room rather than age: until the dedupe
    /// window has passed since, a copy without a tombstone may still be of
    /// a committed message, and the store is asked.
    evicted_at: Option<Instant>,
}

/// The core's state; one task owns it, so there are no locks.
pub struct Core {
    node: Arc<Node>,
    settings: IngestSettings,
    node_id: u64,
    cluster_prefix: String,
    bridges: Vec<BridgeHandle>,
    ingests: Vec<bool>,
    generations: Vec<u64>,
    entries: BTreeMap<u64, Entry>,
    by_digest: HashMap<[u8; 16], VecDeque<u64>>,
    ready: VecDeque<u64>,
    next_seq: u64,
    tombstones: Tombstones,
    owners: IngestOwners,
    batches_in_flight: usize,
    pause_until: Option<Instant>,
    rate_second: u64,
    rate_counts: HashMap<String, u64>,
    commands: watch::Sender<u64>,
    /// The weight this node asks for: configured while every device bridge
    /// is connected, 0 after one has been down for `owner_timeout_ms`.
    weight: watch::Sender<u32>,
    connected: Vec<bool>,
    down_since: Option<Instant>,
    /// Ingest lag histogram (cumulative per bucket, then +Inf), sum and
    /// count, published to the counters on every tick.
    lag_buckets: [u64; LAG_BUCKETS_MS.len() + 1],
    lag_sum_ms: u64,
    lag_count: u64,
    /// The current pause while an alarm (NOSPACE) refuses new data; zero
    /// when none is active.
    alarm_pause: Duration,
}

type BatchResult = (Vec<u64>, Result<Response, ProposeError>);

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Arc<Node>,
        settings: IngestSettings,
        node_id: u64,
        cluster_name: &str,
        bridges: Vec<BridgeHandle>,
        ingests: Vec<bool>,
        commands: watch::Sender<u64>,
        weight: watch::Sender<u32>,
    ) -> Self {
        let n = bridges.len();
        Core {
            node,
            settings,
            node_id,
            cluster_prefix: format!("/{cluster_name}/"),
            bridges,
            ingests,
            generations: vec![0; n],
            entries: BTreeMap::new(),
            by_digest: HashMap::new(),
            ready: VecDeque::new(),
            next_seq: 0,
            tombstones: Tombstones {
                by_digest: HashMap::new(),
                order: VecDeque::new(),
                evicted_at: None,
            },
            owners: IngestOwners::default(),
            batches_in_flight: 0,
            pause_until: None,
            rate_second: 0,
            rate_counts: HashMap::new(),
            commands,
            weight,
            connected: vec![false; n],
            down_since: Some(Instant::now()),
            lag_buckets: [0; LAG_BUCKETS_MS.len() + 1],
            lag_sum_ms: 0,
            lag_count: 0,
            alarm_pause: Duration::ZERO,
        }
    }

    fn count(&self, name: &str) {
        self.node.counters.add(name, 1);
    }

    /// Runs until the bridges stop. `applied` was subscribed before Raft
    /// started applying, so no committed batch is missed.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<BridgeEvent>,
        mut applied: broadcast::Receiver<Arc<IngestEffects>>,
    ) {
        self.reload_owners();
        let (results_tx, mut results) = mpsc::channel::<BatchResult>(BATCHES_IN_FLIGHT_MAX * 2);
        let linger = Duration::from_millis(self.settings.batch_linger_ms.max(1));
        let mut tick = tokio::time::interval(linger);
        let mut gauges_at = Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // At the bound, messages wait in the bridges and then in the
            // broker (their connections are not read) until commits make
            // room: nothing is refused that would then never come back.
            let room = (self.entries.len() as u64) < self.settings.pending_messages_max;
            tokio::select! {
                ev = events.recv(), if room => match ev {
                    Some(ev) => self.on_bridge_event(ev),
                    None => return,
                },
                eff = applied.recv() => match eff {
                    Ok(eff) => self.on_applied(&eff),
                    Err(broadcast::error::RecvError::Lagged(n)) => self.resync(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some((seqs, result)) = results.recv() => self.on_result(seqs, result),
                _ = tick.tick() => {
                    self.expire_tombstones();
                    self.update_weight();
                    if gauges_at.elapsed() >= GAUGES_INTERVAL {
                        gauges_at = Instant::now();
                        self.publish_gauges();
                    }
                }
            }
            self.propose(&results_tx);
        }
    }

    fn on_bridge_event(&mut self, ev: BridgeEvent) {
        match ev {
            BridgeEvent::Message(m) => self.on_message(m),
            BridgeEvent::Connected { bridge, generation } => {
                self.count("mqtt_connects_total");
                if let Some(g) = self.generations.get_mut(bridge) {
                    *g = generation;
                }
                if let Some(c) = self.connected.get_mut(bridge) {
                    *c = true;
                }
                self.update_weight();
            }
            BridgeEvent::Disconnected { bridge, .. } => {
                self.count("mqtt_connection_errors_total");
                if let Some(c) = self.connected.get_mut(bridge) {
                    *c = false;
                }
                self.update_weight();
            }
        }
    }

    /// A member whose device bridge is down does not receive its devices'
    /// messages: after `owner_timeout_ms` it gives its devices up (weight 0)
    /// until the bridge is back.
    fn update_weight(&mut self) {
        let all_up = self
            .connected
            .iter()
            .zip(&self.ingests)
            .all(|(up, ingests)| *up || !*ingests);
        let wanted = if all_up {
            self.down_since = None;
            self.settings.weight
        } else {
            let since = *self.down_since.get_or_insert_with(Instant::now);
            if since.elapsed() < Duration::from_millis(self.settings.owner_timeout_ms) {
                return;
            }
            0
        };
        self.weight.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }

    fn ack(&self, token: &Option<AckToken>) -> bool {
        match token {
            Some(t) => self.bridges.get(t.bridge).is_some_and(|b| b.ack(t)),
            None => true,
        }
    }

    fn reject(&mut self, m: &Incoming, bad: &BadMessage) {
        let reason = bad.reason();
        let name = format!("mqtt_rejected_total{{reason=\"{reason}\"}}");
        self.node.counters.add(&name, 1);
        // Every rejection is counted; the log shows the first and then every
        // power of two of each reason, so a flood cannot drown it.
        let seen = self.node.counters.get(&name);
        if seen.is_power_of_two() {
            tracing::warn!(topic = %topic::shown(&m.topic), reason, count = seen, error = %bad, "MQTT message rejected");
        }
        self.ack(&m.ack);
    }

    fn on_message(&mut self, m: Incoming) {
        self.count("mqtt_messages_received_total");
        if m.topic.starts_with(&self.cluster_prefix) {
            self.count("mqtt_cluster_messages_total");
            tracing::info!(topic = %topic::shown(&m.topic), bytes = m.payload.len(), "cluster topic message");
            self.ack(&m.ack);
            return;
        }
        if !self.ingests.get(m.bridge).copied().unwrap_or(false) || m.topic.starts_with('$') {
            self.ack(&m.ack);
            return;
        }
        let parsed = match topic::parse_topic(&m.topic) {
            Ok(t) => t,
            Err(bad) => return self.reject(&m, &bad),
        };
        if parsed.post_type == "cmd" {
            // A command to a device (possibly our own publish): not data.
            self.ack(&m.ack);
            return;
        }
        let value = match topic::decode_payload(
            &m.payload,
            self.settings.payload_bytes_max as usize,
            self.node.limits.json_depth_max as usize,
        ) {
            Ok(v) => v,
            Err(bad) => return self.reject(&m, &bad),
        };
        let body = if parsed.post_type == "reply" {
            let Some(id) = parsed
                .path
                .first()
                .filter(|_| parsed.path.len() == 1)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return self.reject(&m, &BadMessage::BadReply(topic::shown(&m.topic)));
            };
            IngestBody::Reply {
                host: parsed.host.to_string(),
                zone: parsed.zone.to_string(),
                class: parsed.class.to_string(),
                device_id: parsed.device_id.to_string(),
                command_id: id,
                json: value.to_string(),
            }
        } else {
            IngestBody::Data(DeviceData {
                host: parsed.host.to_string(),
                zone: parsed.zone.to_string(),
                class: parsed.class.to_string(),
                device_id: parsed.device_id.to_string(),
                post_type: parsed.post_type.to_string(),
                path: parsed.path.iter().map(|s| s.to_string()).collect(),
                json: value.to_string(),
            })
        };
        let device = parsed.device();
        let digest = utopia_storage::ingest::digest(&m.topic, &m.payload);

        // Already committed (by the owner, before this copy arrived).
        if let Some(n) = self.tombstones.by_digest.get_mut(&digest) {
            *n -= 1;
            if *n == 0 {
                self.tombstones.by_digest.remove(&digest);
            }
            self.count("ingest_copies_already_committed_total");
            self.ack(&m.ack);
            return;
        }
        // A redelivery of a copy held from an earlier connection: it takes
        // over that copy's acknowledgement.
        if m.dup {
            if let Some(seqs) = self.by_digest.get(&digest) {
                let generations = &self.generations;
                let stale = seqs.iter().copied().find(|s| {
                    self.entries.get(s).is_some_and(|e| {
                        e.ack.as_ref().is_some_and(|t| {
                            t.bridge == m.bridge
                                && generations
                                    .get(t.bridge)
                                    .is_some_and(|g| t.generation != *g)
                        })
                    })
                });
                if let Some(seq) = stale {
                    if let Some(e) = self.entries.get_mut(&seq) {
                        e.ack = m.ack;
                        e.dup = true;
                    }
                    self.count("mqtt_redeliveries_total");
                    return;
                }
            }
        }
        let mine = self.owns(&device);
        // Committed, as far as the store's dedupe records tell (a record
        // is one commit of this digest within the dedupe window). Asked for
        // a redelivery, which may be of a committed message by definition,
        // and for any copy while tombstones may be missing for room.
        let evicted = self.tombstones_evicted_recently();
        let committed = (m.dup || evicted) && self.committed_recently(&digest);
        if committed && !mine && !self.by_digest.contains_key(&digest) {
            self.count("ingest_copies_already_committed_total");
            if evicted {
                self.count("ingest_copies_settled_by_store_total");
            }
            self.ack(&m.ack);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        // Rate by arrival, once per copy: a backlog proposed after a
        // handover is not a flood.
        let second = crate::now_ms() / 1000;
        if second != self.rate_second {
            self.rate_second = second;
            self.rate_counts.clear();
        }
        let n = self.rate_counts.entry(device.clone()).or_default();
        *n += 1;
        let over_rate = *n > self.settings.device_messages_per_s_max;
        if over_rate {
            // Counted on every node that sees it; the owner's copy is
            // recorded in the log as dropped.
            self.count("mqtt_rejected_total{reason=\"device_rate\"}");
        }
        self.entries.insert(
            seq,
            Entry {
                digest,
                device,
                body,
                received: Instant::now(),
                received_ms: crate::now_ms(),
                dup: m.dup,
                // The applier suppresses it if the store's record is of it.
                maybe_committed: committed,
                epoch_at_receipt: self.owners.epoch,
                owned_at_receipt: mine,
                over_rate,
                in_flight: false,
                ack: m.ack,
            },
        );
        self.by_digest.entry(digest).or_default().push_back(seq);
        if mine {
            self.ready.push_back(seq);
        }
    }

    /// Whether an alarm (NOSPACE) refuses new data now. While one does,
    /// held messages are not proposed (every replica would reject the
    /// batch, and the log would only grow): they stay unacknowledged, the
    /// pending bound then stops reading the brokers, and the rest waits in
    /// the brokers until the alarm is disarmed. Nothing acknowledged is
    /// lost, and the core checks again after a pause that doubles up to
    /// [`ALARM_PAUSE_MAX`] instead of spinning.
    fn alarm_active(&mut self) -> bool {
        let active = match self.node.reader.alarms() {
            Ok(alarms) => !alarms.is_empty(),
            Err(e) => {
                tracing::error!(error = %e, "read the active alarms");
                false
            }
        };
        if !active && !self.alarm_pause.is_zero() {
            tracing::info!("alarm disarmed: proposing held MQTT messages again");
            self.alarm_pause = Duration::ZERO;
        }
        active
    }

    fn pause_for_alarm(&mut self) {
        if self.alarm_pause.is_zero() {
            tracing::warn!(
                held = self.entries.len(),
                "an alarm refuses new data: MQTT messages are held unacknowledged until it is disarmed"
            );
        }
        self.alarm_pause = (self.alarm_pause * 2).clamp(ALARM_PAUSE_MIN, ALARM_PAUSE_MAX);
        self.pause_until = Some(Instant::now() + self.alarm_pause);
        self.count("ingest_alarm_pauses_total");
    }

    fn owns(&self, device: &str) -> bool {
        self.owners.epoch > 0
            && utopia_storage::ingest::owner_of(device, &self.owners.members) == Some(self.node_id)
    }

    fn reload_owners(&mut self) {
        match self.node.reader.ingest_owners() {
            Ok(o) => {
                if o.epoch != self.owners.epoch {
                    tracing::info!(
                        epoch = o.epoch,
                        members = ?o.members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                        "topic owners changed"
                    );
                }
                self.owners = o;
            }
            Err(e) => tracing::error!(error = %e, "read topic owners"),
        }
        self.rebuild_ready();
    }

    fn rebuild_ready(&mut self) {
        let mine: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.in_flight && self.owns(&e.device))
            .map(|(s, _)| *s)
            .collect();
        self.ready = mine.into();
    }

    fn on_applied(&mut self, eff: &IngestEffects) {
        for digest in &eff.committed {
            let seq = self.by_digest.get_mut(digest).and_then(|q| q.pop_front());
            if self.by_digest.get(digest).is_some_and(|q| q.is_empty()) {
                self.by_digest.remove(digest);
            }
            match seq.and_then(|s| self.entries.remove(&s)) {
                Some(e) => {
                    self.observe_lag(e.received.elapsed());
                    if !self.ack(&e.ack) {
                        // Its connection is gone: the broker redelivers it.
                        self.add_tombstone(*digest);
                    }
                }
                None => self.add_tombstone(*digest),
            }
        }
        if eff.owners_changed {
            self.reload_owners();
        }
        if eff.commands_changed {
            self.commands.send_modify(|n| *n += 1);
        }
    }

    fn observe_lag(&mut self, lag: Duration) {
        let ms = lag.as_millis() as u64;
        self.lag_sum_ms += ms;
        self.lag_count += 1;
        let first = LAG_BUCKETS_MS.partition_point(|le| *le < ms);
        for b in &mut self.lag_buckets[first..] {
            *b += 1;
        }
    }

    fn publish_gauges(&self) {
        let c = &self.node.counters;
        c.set("ingest_pending_messages", self.entries.len() as u64);
        c.set("ingest_lag_ms_sum", self.lag_sum_ms);
        c.set("ingest_lag_ms_count", self.lag_count);
        for (le, n) in LAG_BUCKETS_MS.iter().zip(&self.lag_buckets) {
            c.set(&format!("ingest_lag_ms_bucket{{le=\"{le}\"}}"), *n);
        }
        c.set(
            "ingest_lag_ms_bucket{le=\"+Inf\"}",
            self.lag_buckets[LAG_BUCKETS_MS.len()],
        );
    }

    fn add_tombstone(&mut self, digest: [u8; 16]) {
        *self.tombstones.by_digest.entry(digest).or_default() += 1;
        self.tombstones.order.push_back((digest, Instant::now()));
        while self.tombstones.order.len() as u64 > self.settings.pending_messages_max {
            self.drop_oldest_tombstone();
            self.tombstones.evicted_at = Some(Instant::now());
            self.count("ingest_tombstones_evicted_total");
        }
    }

    fn tombstones_evicted_recently(&mut self) -> bool {
        let window = Duration::from_millis(self.settings.dedupe_window_ms);
        if self
            .tombstones
            .evicted_at
            .is_some_and(|t| t.elapsed() > window)
        {
            self.tombstones.evicted_at = None;
        }
        self.tombstones.evicted_at.is_some()
    }

    /// Whether the store holds a commit of `digest` within the dedupe window.
    fn committed_recently(&self, digest: &[u8; 16]) -> bool {
        let since_ms = crate::now_ms().saturating_sub(self.settings.dedupe_window_ms);
        match self.node.reader.ingest_committed_since(digest, since_ms) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "read ingest dedupe record");
                false
            }
        }
    }

    fn drop_oldest_tombstone(&mut self) {
        if let Some((d, _)) = self.tombstones.order.pop_front() {
            if let Some(n) = self.tombstones.by_digest.get_mut(&d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.tombstones.by_digest.remove(&d);
                }
            }
        }
    }

    fn expire_tombstones(&mut self) {
        let window = Duration::from_millis(self.settings.dedupe_window_ms);
        while self
            .tombstones
            .order
            .front()
            .is_some_and(|(_, at)| at.elapsed() > window)
        {
            self.drop_oldest_tombstone();
        }
    }

    /// The applied-batch feed fell behind: settle held copies from the
    /// store instead (committed since shortly before they arrived).
    fn resync(&mut self, missed: u64) {
        tracing::warn!(missed, "ingest feed lagged; resynchronising held messages");
        self.count("ingest_resyncs_total");
        let committed: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                self.node
                    .reader
                    .ingest_committed_since(&e.digest, e.received_ms.saturating_sub(10_000))
                    .unwrap_or(false)
            })
            .map(|(s, _)| *s)
            .collect();
        for seq in committed {
            if let Some(e) = self.entries.remove(&seq) {
                if let Some(q) = self.by_digest.get_mut(&e.digest) {
                    q.retain(|s| *s != seq);
                    if q.is_empty() {
                        self.by_digest.remove(&e.digest);
                    }
                }
                self.ack(&e.ack);
            }
        }
        self.reload_owners();
    }

    fn propose(&mut self, results: &mpsc::Sender<BatchResult>) {
        if self.pause_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.pause_until = None;
        if !self.ready.is_empty() && self.alarm_active() {
            self.pause_for_alarm();
            return;
        }
        let max = self.settings.batch_messages_max.max(1) as usize;
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
        while self.batches_in_flight < BATCHES_IN_FLIGHT_MAX && !self.ready.is_empty() {
            // Drop entries that were settled or are in flight already.
            while let Some(s) = self.ready.front() {
                match self.entries.get(s) {
                    Some(e) if !e.in_flight => break,
                    _ => {
                        self.ready.pop_front();
                    }
                }
            }
            let Some(first) = self.ready.front().and_then(|s| self.entries.get(s)) else {
                return;
            };
            if self.ready.len() < max && first.received.elapsed() < linger {
                return;
            }
            let now_ms = crate::now_ms();
            let mut seqs = Vec::with_capacity(max);
            let mut items = Vec::with_capacity(max);
            while seqs.len() < max {
                let Some(seq) = self.ready.pop_front() else {
                    break;
                };
                let Some(e) = self.entries.get_mut(&seq) else {
                    continue;
                };
                if e.in_flight {
                    continue;
                }
                e.in_flight = true;
                let body = if e.over_rate {
                    IngestBody::Dropped {
                        device: e.device.clone(),
                        reason: format!(
                            "device over {} messages/s",
                            self.settings.device_messages_per_s_max
                        ),
                    }
                } else {
                    e.body.clone()
                };
                items.push(IngestItem {
                    digest: Bytes::from(e.digest.to_vec()),
                    redelivered: e.dup
                        || e.maybe_committed
                        || !e.owned_at_receipt
                        || e.epoch_at_receipt != self.owners.epoch,
                    body,
                });
                seqs.push(seq);
            }
            if seqs.is_empty() {
                return;
            }
            self.node
                .counters
                .add("ingest_batch_messages_total", seqs.len() as u64);
            self.count("ingest_batches_total");
            self.batches_in_flight += 1;
            let raft = self.node.raft.clone();
            let event = Event::IngestBatch {
                epoch: self.owners.epoch,
                proposer: self.node_id,
                items,
            };
            let tx = results.clone();
            let req = Request::new(now_ms, event)
                .with_document_bytes_max(self.node.limits.document_bytes_max);
            tokio::spawn(async move {
                let result = raft.propose_anywhere(req, PROPOSE_TIMEOUT).await;
                let _ = tx.send((seqs, result)).await;
            });
        }
    }

    fn on_result(&mut self, seqs: Vec<u64>, result: Result<Response, ProposeError>) {
        self.batches_in_flight = self.batches_in_flight.saturating_sub(1);
        let mut maybe_committed = false;
        match result {
            Ok(Response {
                outcome: Outcome::Ingested { .. },
                ..
            }) => return, // settled when the batch is applied here
            Ok(Response {
                outcome: Outcome::Rejected(Rejection::Alarm { .. }),
                ..
            }) => {
                // Raised after the check before proposing: held, as above.
                self.count("ingest_batches_refused_alarm_total");
                for seq in seqs.iter().rev() {
                    if let Some(e) = self.entries.get_mut(seq) {
                        e.in_flight = false;
                    }
                }
                self.rebuild_ready();
                self.pause_for_alarm();
                return;
            }
            Ok(Response {
                outcome: Outcome::Rejected(Rejection::StaleEpoch { proposed, current }),
                ..
            }) => {
                tracing::debug!(proposed, current, "batch proposed under a stale epoch");
                self.count("ingest_batches_stale_total");
            }
            Ok(other) => {
                tracing::error!(outcome = ?other.outcome, "ingest batch refused");
                self.count("ingest_batches_refused_total");
            }
            Err(e @ ProposeError::OutcomeUnknown(_)) => {
                tracing::warn!(error = %e, "ingest batch outcome unknown; will propose again as redelivered");
                maybe_committed = true;
            }
            Err(e) => tracing::debug!(error = %e, "ingest batch not proposed"),
        }
        self.pause_until = Some(Instant::now() + RETRY_PAUSE);
        for seq in seqs.iter().rev() {
            if let Some(e) = self.entries.get_mut(seq) {
                e.in_flight = false;
                e.maybe_committed |= maybe_committed;
            }
        }
        // Ownership may have moved meanwhile.
        self.reload_owners();
    }
}

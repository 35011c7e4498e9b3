//! The driver: the one task that owns the [`Core`], feeds it what happens
//! (bridge events, applied batches, proposal results, store answers,
//! ticks) with the time, and performs the actions it returns.
//!
//! - Acknowledgements go to the bridges at once; a committed copy whose
//!   acknowledgement is void (its connection is gone) is reported back.
//! - Proposals are spawned into the driver's own set, at most
//!   [`BATCHES_IN_FLIGHT_MAX`](super::core::BATCHES_IN_FLIGHT_MAX) at a
//!   time (the core's bound), each with [`PROPOSE_TIMEOUT`]; they end with
//!   the driver.
//! - Store reads run on a thread of their own, one at a time, never on the
//!   runtime's threads. Their queue is bounded by the core: at most one
//!   owners read, one alarms read, one resync, and one arrival check per
//!   copy within `pending_messages_max` (a copy settled while its check
//!   waits keeps its room until the answer).
//! - Counters, the ownership weight and the command driver's wake-up are
//!   updated in place; the gauges are published every [`GAUGES_INTERVAL`].
//! - When the server stops, the driver stops taking messages and ends,
//!   with its proposals and its store thread. What was not acknowledged is
//!   redelivered by the broker to the next connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use utopia_raft::{ProposeError, Response};
use utopia_storage::apply::{IngestEffects, IngestOwners};
use utopia_storage::Reader;

use super::core::{Action, Core, CoreConfig, Gauges, Lookup, Now};
use crate::mqtt::bridge::{BridgeEvent, BridgeHandle};
use crate::node::Node;

/// How long a forwarded proposal may take before its outcome is unknown.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the pending and lag figures are published to the metrics.
const GAUGES_INTERVAL: Duration = Duration::from_millis(50);

enum StoreRead {
    Owners,
    Alarms,
    Committed { check: u64, lookups: Vec<Lookup> },
}

enum StoreAnswer {
    Owners(Option<IngestOwners>),
    Alarms(bool),
    Committed {
        check: u64,
        committed: Vec<(u64, bool)>,
    },
}

type BatchResult = (u64, Result<Response, ProposeError>);

/// The batches being proposed, each in its own task.
#[derive(Default)]
struct Proposals {
    set: JoinSet<BatchResult>,
    /// The batch each task proposes, to settle it if the task fails.
    batches: HashMap<Id, u64>,
}

impl Proposals {
    /// The next proposal to finish; `None` when there is none.
    async fn next(&mut self) -> Option<BatchResult> {
        let joined = self.set.join_next_with_id().await?;
        Some(match joined {
            Ok((id, result)) => {
                self.batches.remove(&id);
                result
            }
            Err(e) => {
                let batch = self.batches.remove(&e.id()).unwrap_or_default();
                tracing::error!(batch, error = %e, "an ingest proposal task failed");
                (
                    batch,
                    Err(ProposeError::OutcomeUnknown(format!(
                        "the proposal task failed: {e}"
                    ))),
                )
            }
        })
    }
}

/// What the driver hands its actions to.
pub struct Driver {
    node: Arc<Node>,
    bridges: Vec<BridgeHandle>,
    commands: watch::Sender<u64>,
    weight: watch::Sender<u32>,
    started: Instant,
}

impl Driver {
    pub fn new(
        node: Arc<Node>,
        bridges: Vec<BridgeHandle>,
        commands: watch::Sender<u64>,
        weight: watch::Sender<u32>,
    ) -> Self {
        Driver {
            node,
            bridges,
            commands,
            weight,
            started: Instant::now(),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: crate::now_ms(),
        }
    }

    /// Runs until the bridges stop or `stop` fires. `applied` was
    /// subscribed before Raft started applying, so no committed batch is
    /// missed.
    pub async fn run(
        self,
        config: CoreConfig,
        events: mpsc::Receiver<BridgeEvent>,
        applied: broadcast::Receiver<Arc<IngestEffects>>,
        stop: CancellationToken,
    ) {
        let (reads, answers, reader_done) = match start_store_reader(self.node.reader.clone()) {
            Ok(started) => started,
            Err(e) => {
                tracing::error!(error = %e, "start the ingest store reader; MQTT ingest is off");
                return;
            }
        };
        let mut proposals = Proposals::default();
        tokio::select! {
            () = stop.cancelled() => {}
            () = self.drive(config, events, applied, &reads, answers, &mut proposals) => {}
        }
        // The proposals end with the driver (one may still commit: its
        // messages are then settled by the dedupe record on redelivery),
        // and the store thread once its queue closes.
        drop(proposals);
        drop(reads);
        let _ = reader_done.await;
    }

    async fn drive(
        &self,
        config: CoreConfig,
        mut events: mpsc::Receiver<BridgeEvent>,
        mut applied: broadcast::Receiver<Arc<IngestEffects>>,
        reads: &mpsc::UnboundedSender<StoreRead>,
        mut answers: mpsc::UnboundedReceiver<StoreAnswer>,
        proposals: &mut Proposals,
    ) {
        let linger = Duration::from_millis(config.settings.batch_linger_ms.max(1));
        let mut core = Core::new(config, self.now());
        let mut tick = tokio::time::interval(linger);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges_at = Instant::now();
        let first = core.start(self.now());
        self.perform(&mut core, first, reads, proposals);
        loop {
            let room = core.has_room();
            let actions = tokio::select! {
                ev = events.recv(), if room => match ev {
                    Some(ev) => core.on_bridge_event(ev, self.now()),
                    None => return,
                },
                eff = applied.recv() => match eff {
                    Ok(eff) => core.on_applied(&eff, self.now()),
                    Err(broadcast::error::RecvError::Lagged(n)) => core.on_feed_lagged(n, self.now()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some((batch, result)) = proposals.next() => core.on_proposed(batch, result, self.now()),
                answer = answers.recv() => match answer {
                    Some(StoreAnswer::Owners(o)) => core.on_owners(o, self.now()),
                    Some(StoreAnswer::Alarms(a)) => core.on_alarms(a, self.now()),
                    Some(StoreAnswer::Committed { check, committed }) => {
                        core.on_checked(check, &committed, self.now())
                    }
                    None => {
                        tracing::error!("the ingest store reader stopped; MQTT ingest is off");
                        return;
                    }
                },
                _ = tick.tick() => {
                    if gauges_at.elapsed() >= GAUGES_INTERVAL {
                        gauges_at = Instant::now();
                        self.publish(&core.gauges());
                    }
                    core.on_tick(self.now())
                }
            };
            self.perform(&mut core, actions, reads, proposals);
        }
    }

    fn perform(
        &self,
        core: &mut Core,
        actions: Vec<Action>,
        reads: &mpsc::UnboundedSender<StoreRead>,
        proposals: &mut Proposals,
    ) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Ack(token) => {
                    if let Some(b) = self.bridges.get(token.bridge) {
                        b.ack(&token);
                    }
                }
                Action::AckCommitted { token, digest } => {
                    let acked = self
                        .bridges
                        .get(token.bridge)
                        .is_some_and(|b| b.ack(&token));
                    if !acked {
                        queue.extend(core.on_ack_void(digest, self.now()));
                    }
                }
                Action::Propose { batch, request } => {
                    let raft = self.node.raft.clone();
                    let task = proposals.set.spawn(async move {
                        (batch, raft.propose_anywhere(request, PROPOSE_TIMEOUT).await)
                    });
                    proposals.batches.insert(task.id(), batch);
                }
                // A closed queue means the reader stopped; the loop sees
                // its answers end and stops.
                Action::ReadOwners => {
                    let _ = reads.send(StoreRead::Owners);
                }
                Action::ReadAlarms => {
                    let _ = reads.send(StoreRead::Alarms);
                }
                Action::CheckCommitted { check, lookups } => {
                    let _ = reads.send(StoreRead::Committed { check, lookups });
                }
                Action::SetWeight(w) => {
                    self.weight.send_if_modified(|current| {
                        let changed = *current != w;
                        *current = w;
                        changed
                    });
                }
                Action::CommandsChanged => self.commands.send_modify(|n| *n += 1),
                Action::Count(what, n) => self.node.metrics.ingest(what, n),
            }
        }
    }

    fn publish(&self, g: &Gauges) {
        let m = &self.node.metrics;
        m.ingest_pending_messages
            .set(i64::try_from(g.pending_messages).unwrap_or(i64::MAX));
        m.set_ingest_lag(&g.lag);
    }
}

type StoreChannels = (
    mpsc::UnboundedSender<StoreRead>,
    mpsc::UnboundedReceiver<StoreAnswer>,
    oneshot::Receiver<()>,
);

/// Starts the thread that answers the core's store reads, in order. It
/// ends when the driver drops its queue; the third channel closes when it
/// has. A failed read is logged here and answered as the core expects:
/// owners unknown, no alarm, not committed.
fn start_store_reader(reader: Reader) -> std::io::Result<StoreChannels> {
    let (reads_tx, mut reads) = mpsc::unbounded_channel::<StoreRead>();
    let (answers, answers_rx) = mpsc::unbounded_channel::<StoreAnswer>();
    let (done, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ingest-store".into())
        .spawn(move || {
            // Dropped (closing `done_rx`) when the thread ends.
            let _done = done;
            while let Some(read) = reads.blocking_recv() {
                let answer = match read {
                    StoreRead::Owners => StoreAnswer::Owners(match reader.ingest_owners() {
                        Ok(o) => Some(o),
                        Err(e) => {
                            tracing::error!(error = %e, "read topic owners");
                            None
                        }
                    }),
                    StoreRead::Alarms => StoreAnswer::Alarms(match reader.alarms() {
                        Ok(alarms) => !alarms.is_empty(),
                        Err(e) => {
                            tracing::error!(error = %e, "read the active alarms");
                            false
                        }
                    }),
                    StoreRead::Committed { check, lookups } => StoreAnswer::Committed {
                        check,
                        committed: lookups
                            .iter()
                            .map(|l| {
                                let c = reader
                                    .ingest_committed_since(&l.digest, l.since_ms)
                                    .unwrap_or_else(|e| {
                                        tracing::error!(error = %e, "read ingest dedupe record");
                                        false
                                    });
                                (l.seq, c)
                            })
                            .collect(),
                    },
                };
                if answers.send(answer).is_err() {
                    return;
                }
            }
        })?;
    Ok((reads_tx, answers_rx, done_rx))
}

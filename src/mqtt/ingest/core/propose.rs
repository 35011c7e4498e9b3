//! Proposing: which held copies go into a batch and when, what a
//! proposal's answer means for its copies, and the pause while an alarm
//! (NOSPACE) refuses new data.

use utopia_raft::event::{Bytes, Event, IngestBody, IngestItem, Outcome, Rejection, Request};
use utopia_raft::{ProposeError, Response};

use super::{Action, AlarmGate, Core, Counted, Now, OwnersRead, Stage};

/// Batches proposed and not yet answered, at most.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Pause before proposing again after a failed proposal.
pub const RETRY_PAUSE_MS: u64 = 100;
/// The first pause in proposing while an alarm refuses new data; it
/// doubles while the alarm stays, up to `ALARM_PAUSE_MS_MAX`.
pub const ALARM_PAUSE_MS_MIN: u64 = 250;
pub const ALARM_PAUSE_MS_MAX: u64 = 5_000;

impl Core {
    /// The answer to [`Action::ReadAlarms`]. While an alarm (NOSPACE)
    /// refuses new data, held messages are not proposed (every replica
    /// would reject the batch, and the log would only grow): they stay
    /// unacknowledged, the pending bound then stops reading the brokers,
    /// and the rest waits in the brokers until the alarm is disarmed.
    /// Nothing acknowledged is lost, and the core asks again after a pause
    /// that doubles up to `ALARM_PAUSE_MS_MAX` instead of spinning.
    pub fn on_alarms(&mut self, active: bool, now: Now) -> Vec<Action> {
        self.alarm_gate = AlarmGate::Unknown;
        if active {
            self.pause_for_alarm(now);
        } else {
            if self.alarm_pause_ms != 0 {
                tracing::info!("alarm disarmed: proposing held MQTT messages again");
                self.alarm_pause_ms = 0;
            }
            self.alarm_gate = AlarmGate::Clear;
        }
        self.finish(now)
    }

    /// The answer to [`Action::Propose`].
    pub fn on_proposed(
        &mut self,
        batch: u64,
        result: Result<Response, ProposeError>,
        now: Now,
    ) -> Vec<Action> {
        let Some(seqs) = self.batches.remove(&batch) else {
            return self.finish(now);
        };
        let mut maybe_committed = false;
        match result {
            Ok(Response {
                outcome: Outcome::Ingested { .. },
                ..
            }) => {
                // Settled when the batch is applied here.
                return self.finish(now);
            }
            Ok(Response {
                outcome: Outcome::Rejected(Rejection::Alarm { .. }),
                ..
            }) => {
                // Raised after the check before proposing: held, as there.
                self.count(Counted::IngestBatchesRefusedAlarm);
                self.unflight(&seqs, false);
                self.rebuild_ready();
                self.pause_for_alarm(now);
                return self.finish(now);
            }
            Ok(Response {
                outcome: Outcome::Rejected(Rejection::StaleEpoch { proposed, current }),
                ..
            }) => {
                tracing::debug!(proposed, current, "batch proposed under a stale epoch");
                self.count(Counted::IngestBatchesStale);
            }
            Ok(other) => {
                tracing::error!(outcome = ?other.outcome, "ingest batch refused");
                self.count(Counted::IngestBatchesRefused);
            }
            Err(e @ ProposeError::OutcomeUnknown(_)) => {
                tracing::warn!(error = %e, "ingest batch outcome unknown; will propose again as redelivered");
                maybe_committed = true;
            }
            // Not proposed (no leader, or the leader refused a forwarded
            // batch before proposing it): nothing of it is committed.
            Err(e) => tracing::debug!(error = %e, "ingest batch not proposed"),
        }
        self.pause_until_ms = Some(now.mono_ms + RETRY_PAUSE_MS);
        self.unflight(&seqs, maybe_committed);
        // Ownership may have moved meanwhile.
        self.read_owners();
        self.finish(now)
    }

    fn unflight(&mut self, seqs: &[u64], maybe_committed: bool) {
        for seq in seqs {
            if let Some(e) = self.held.get_mut(seq) {
                e.stage = Stage::Waiting;
                e.maybe_committed |= maybe_committed;
            }
        }
    }

    pub(super) fn pause_for_alarm(&mut self, now: Now) {
        if self.alarm_pause_ms == 0 {
            tracing::warn!(
                held = self.held.len(),
                "an alarm refuses new data: MQTT messages are held unacknowledged until it is disarmed"
            );
        }
        self.alarm_pause_ms =
            (self.alarm_pause_ms * 2).clamp(ALARM_PAUSE_MS_MIN, ALARM_PAUSE_MS_MAX);
        self.pause_until_ms = Some(now.mono_ms + self.alarm_pause_ms);
        self.count(Counted::IngestAlarmPauses);
    }

    /// Proposes what is due: full batches at once, a partial one once its
    /// oldest copy has lingered `batch_linger_ms`; at most
    /// [`BATCHES_IN_FLIGHT_MAX`] unanswered, none while paused, none before
    /// the owners asked for are known, and each round only after the store
    /// said no alarm is active.
    pub(super) fn propose(&mut self, now: Now) {
        let clear = self.alarm_gate == AlarmGate::Clear;
        if clear {
            // One round per reading.
            self.alarm_gate = AlarmGate::Unknown;
        }
        if self.pause_until_ms.is_some_and(|t| now.mono_ms < t) {
            return;
        }
        self.pause_until_ms = None;
        if self.owners_read != OwnersRead::Idle {
            return;
        }
        let max = self.settings.batch_messages_max.max(1) as usize;
        while self.batches.len() < BATCHES_IN_FLIGHT_MAX {
            // Drop copies that were settled or are in flight already.
            while let Some(s) = self.ready.front() {
                match self.held.get(s) {
                    Some(e) if e.stage == Stage::Waiting => break,
                    _ => {
                        self.ready.pop_front();
                    }
                }
            }
            let Some(first) = self.ready.front().and_then(|s| self.held.get(s)) else {
                return;
            };
            let lingered = now.mono_ms.saturating_sub(first.received_ms);
            if self.ready.len() < max && lingered < self.settings.batch_linger_ms {
                return;
            }
            if !clear {
                if self.alarm_gate == AlarmGate::Unknown {
                    self.alarm_gate = AlarmGate::Asked;
                    self.out.push(Action::ReadAlarms);
                }
                return;
            }
            self.propose_batch(max, now);
        }
    }

    fn propose_batch(&mut self, max: usize, now: Now) {
        let mut seqs = Vec::with_capacity(max);
        let mut items = Vec::with_capacity(max);
        while seqs.len() < max {
            let Some(seq) = self.ready.pop_front() else {
                break;
            };
            let Some(e) = self.held.get_mut(&seq) else {
                continue;
            };
            if e.stage != Stage::Waiting {
                continue;
            }
            e.stage = Stage::InFlight;
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
        self.out.push(Action::Count(
            Counted::IngestBatchMessages,
            seqs.len() as u64,
        ));
        self.count(Counted::IngestBatches);
        let batch = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(batch, seqs);
        let event = Event::IngestBatch {
            epoch: self.owners.epoch,
            proposer: self.node_id,
            items,
        };
        let request =
            Request::new(now.wall_ms, event).with_document_bytes_max(self.document_bytes_max);
        self.out.push(Action::Propose { batch, request });
    }
}

//! Applying alarms, and refusing events that add data while one is active.
//!
//! The active alarms are one record in `sm_meta` (`alarms`), so they are
//! part of every snapshot and survive restarts; every replica refuses the
//! same events, since the refusal depends on the log alone.

use serde::{Deserialize, Serialize};
use utopia_raft::event::{AlarmKind, Event, Outcome, Rejection};

use super::{Applier, StateRead};
use crate::codec;
use crate::keys::{meta, Cf};
use crate::StoreError;

/// The alarms, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmState {
    /// The active alarms, by member then kind.
    pub alarms: Vec<AlarmRecord>,
    /// How many disarms have been applied: a raise carries the count its
    /// member had seen, so one measured before a disarm is not applied
    /// after it.
    pub disarms: u64,
}

/// An active alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRecord {
    /// The member that raised it.
    pub node_id: u64,
    pub alarm: AlarmKind,
    /// When it was raised (the proposer's clock).
    pub raised_ms: u64,
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub fn alarm_state(&self) -> Result<AlarmState, StoreError> {
        Ok(self.get_dec(Cf::SmMeta, meta::ALARMS)?.unwrap_or_default())
    }

    /// The active alarms, by member then kind.
    pub fn alarms(&self) -> Result<Vec<AlarmRecord>, StoreError> {
        Ok(self.alarm_state()?.alarms)
    }

    fn put_alarm_state(&mut self, state: &AlarmState) {
        self.put(Cf::SmMeta, meta::ALARMS.to_vec(), codec::encode(state));
    }

    /// Why `event` is refused, if it adds data while an alarm is active.
    /// The first active alarm is read once and carried from batch to
    /// batch (most events add data, and usually no alarm is recorded, a
    /// lookup that searches `sm_meta`); a write of the alarms or a
    /// rollback forgets it.
    pub(super) fn refused_by_alarm(&self, event: &Event) -> Result<Option<Rejection>, StoreError> {
        if !event.adds_data() {
            return Ok(None);
        }
        let first = match self.first_alarm.get() {
            Some(first) => first,
            None => {
                let first = self.alarms()?.first().map(|a| (a.node_id, a.alarm));
                self.first_alarm.set(Some(first));
                first
            }
        };
        Ok(first.map(|(node_id, alarm)| Rejection::Alarm { node_id, alarm }))
    }

    pub(super) fn apply_alarm_raised(
        &mut self,
        at_ms: u64,
        node_id: u64,
        alarm: AlarmKind,
        disarms: u64,
    ) -> Result<Outcome, StoreError> {
        let mut state = self.alarm_state()?;
        if disarms < state.disarms {
            // Measured before a disarm (and the space freed before it, as
            // far as anyone knows): the member measures again.
            return Ok(Outcome::Done);
        }
        let key = |a: &AlarmRecord| (a.node_id, a.alarm);
        match state.alarms.binary_search_by_key(&(node_id, alarm), key) {
            // Raised already (a retried proposal): it stays as it was.
            Ok(_) => {}
            Err(pos) => {
                state.alarms.insert(
                    pos,
                    AlarmRecord {
                        node_id,
                        alarm,
                        raised_ms: at_ms,
                    },
                );
                self.put_alarm_state(&state);
            }
        }
        Ok(Outcome::Done)
    }

    pub(super) fn apply_alarm_disarmed(
        &mut self,
        node_id: u64,
        alarm: AlarmKind,
    ) -> Result<Outcome, StoreError> {
        let mut state = self.alarm_state()?;
        state
            .alarms
            .retain(|a| !(a.alarm == alarm && (node_id == 0 || a.node_id == node_id)));
        state.disarms += 1;
        self.put_alarm_state(&state);
        Ok(Outcome::Done)
    }
}

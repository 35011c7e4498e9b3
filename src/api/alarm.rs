//! Alarms at the edge: a write that adds data is refused before it is
//! proposed while an alarm is active (the applier refuses it too, for
//! whatever reaches the log), and alarms are listed and disarmed through
//! `Maintenance.Alarm`.

use tonic::Status;
use utopia_proto::v1 as pb;
use utopia_raft::event::{AlarmKind, Event, Rejection};
use utopia_storage::apply::AlarmRecord;

use super::{status, Node};

impl Node {
    /// Refuses `event` with RESOURCE_EXHAUSTED, naming the alarm, if it adds
    /// data while an alarm is active: proposing it would only grow the log
    /// with an entry every replica rejects.
    pub fn refuse_under_alarm(&self, event: &Event) -> Result<(), Status> {
        if !event.adds_data() {
            return Ok(());
        }
        let alarms = self.reader.alarms().map_err(status::from_store)?;
        match alarms.first() {
            None => Ok(()),
            Some(a) => Err(self.reject(
                "alarm",
                status::from_rejection(Rejection::Alarm {
                    node_id: a.node_id,
                    alarm: a.alarm,
                }),
            )),
        }
    }
}

pub fn alarm_to_pb(kind: AlarmKind) -> pb::AlarmType {
    match kind {
        AlarmKind::NoSpace => pb::AlarmType::Nospace,
    }
}

/// The kind an `AlarmRequest` names (NONE: NOSPACE, the only one).
pub fn alarm_from_pb(value: i32) -> Result<AlarmKind, Status> {
    match pb::AlarmType::try_from(value) {
        Ok(pb::AlarmType::None | pb::AlarmType::Nospace) => Ok(AlarmKind::NoSpace),
        Err(_) => Err(status::invalid(format!("unknown alarm type {value}"))),
    }
}

pub fn alarms_to_pb(alarms: Vec<AlarmRecord>) -> Vec<pb::AlarmMember> {
    alarms
        .into_iter()
        .map(|a| pb::AlarmMember {
            member_id: a.node_id,
            alarm: alarm_to_pb(a.alarm) as i32,
        })
        .collect()
}

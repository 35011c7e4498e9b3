//! Alarms at the edge: listed and disarmed through `Maintenance.Alarm`.
//! (A write that adds data is refused before it is proposed while an alarm
//! is active: see the core, `Node::refuse_under_alarm`.)

use utopia_proto::v1 as pb;
use utopia_raft::event::AlarmKind;
use utopia_storage::apply::AlarmRecord;

use crate::node::{Error, Node};

pub fn alarm_to_pb(kind: AlarmKind) -> pb::AlarmType {
    match kind {
        AlarmKind::NoSpace => pb::AlarmType::Nospace,
    }
}

/// The kind an `AlarmRequest` names (NONE: NOSPACE, the only one).
pub fn alarm_from_pb(node: &Node, value: i32) -> Result<AlarmKind, Error> {
    match pb::AlarmType::try_from(value) {
        Ok(pb::AlarmType::None | pb::AlarmType::Nospace) => Ok(AlarmKind::NoSpace),
        Err(_) => Err(node.invalid("bad_alarm", format!("unknown alarm type {value}"))),
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

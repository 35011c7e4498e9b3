//! Alarms in the core: a write that adds data is refused before it is
//! proposed while an alarm is active (the applier refuses it too, for
//! whatever reaches the log).

use utopia_raft::event::{Event, Rejection};

use super::{Error, Node};

impl Node {
    /// Refuses `event`, naming the alarm, if it adds data while an alarm is
    /// active: proposing it would only grow the log with an entry every
    /// replica rejects.
    pub fn refuse_under_alarm(&self, event: &Event) -> Result<(), Error> {
        if !event.adds_data() {
            return Ok(());
        }
        let alarms = self.reader.alarms()?;
        match alarms.first() {
            None => Ok(()),
            Some(a) => Err(self.reject(
                "alarm",
                Error::Rejected(Rejection::Alarm {
                    node_id: a.node_id,
                    alarm: a.alarm,
                }),
            )),
        }
    }
}

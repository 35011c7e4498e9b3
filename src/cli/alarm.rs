//! `utopia alarm list|disarm`: the cluster's alarms (Maintenance.Alarm).

use clap::Subcommand;
use serde::Serialize;
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::Printer;
use super::CliError;

#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// List the active alarms (`memberID:N alarm:NOSPACE`, one per line).
    List,
    /// Disarm NOSPACE alarms, then list what is still active. Free space
    /// first (delete, `utopia compact REV`): a member still over its
    /// limits.db_bytes_max raises the alarm again.
    Disarm {
        /// Only this member's alarm (default: every member's).
        #[arg(long, default_value_t = 0)]
        member: u64,
    },
}

#[derive(Serialize)]
struct AlarmJson {
    member_id: u64,
    alarm: String,
}

#[derive(Serialize)]
struct AlarmsJson {
    alarms: Vec<AlarmJson>,
}

pub async fn run(
    client: &mut Client,
    out: &mut Printer,
    cmd: AlarmCommand,
) -> Result<(), CliError> {
    let req = match cmd {
        AlarmCommand::List => pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::List as i32,
            member_id: 0,
            alarm: pb::AlarmType::Nospace as i32,
        },
        AlarmCommand::Disarm { member } => pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Disarm as i32,
            member_id: member,
            alarm: pb::AlarmType::Nospace as i32,
        },
    };
    let resp = client
        .call(|ch| async move { client::maintenance(ch).alarm(req).await })
        .await?;
    let alarms: Vec<AlarmJson> = resp
        .alarms
        .into_iter()
        .map(|a| AlarmJson {
            member_id: a.member_id,
            alarm: pb::AlarmType::try_from(a.alarm)
                .map_or_else(|_| a.alarm.to_string(), |t| t.as_str_name().to_string()),
        })
        .collect();
    if out.json {
        out.json_line(&AlarmsJson { alarms })?;
    } else {
        for a in &alarms {
            out.line(format!("memberID:{} alarm:{}", a.member_id, a.alarm))?;
        }
    }
    Ok(())
}

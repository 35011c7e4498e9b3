//! `utopia cluster ...`: cluster status and membership changes.
//!
//! `cluster status` asks the endpoints for the member list, then every
//! member, at the client address it published, for its own view (role,
//! applied index); the leader adds how far it has replicated to each
//! member. Members are added by their peer address.

use std::time::Duration;

use serde::Serialize;
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::Printer;
use super::{CliError, ClusterCommand};

/// How long `cluster status` waits for each member.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct MemberView {
    id: u64,
    /// The peer address (what the membership records).
    addr: String,
    /// The client address the member published (empty: not yet).
    client_addr: String,
    voter: bool,
    /// leader, follower, learner, candidate, or unreachable.
    role: String,
    matched_index: Option<u64>,
    applied_index: Option<u64>,
    raft_term: Option<u64>,
}

#[derive(Serialize)]
struct ClusterView {
    leader: u64,
    raft_term: u64,
    members: Vec<MemberView>,
    /// The leader's membership is not committed and applied yet (another
    /// change would be refused).
    membership_change_in_progress: bool,
}

async fn member_status(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Option<pb::StatusResponse> {
    let mut c = Client::new(&[addr.to_string()], MEMBER_TIMEOUT, tls.cloned()).ok()?;
    c.call(|ch| async move { client::maintenance(ch).status(pb::StatusRequest {}).await })
        .await
        .ok()
}

pub async fn run(
    client: &mut Client,
    out: &mut Printer,
    cmd: ClusterCommand,
) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::Status => status(client, out).await,
        ClusterCommand::Add { id, addr, learner } => {
            client
                .call(|ch| {
                    let addr = addr.clone();
                    async move {
                        client::cluster(ch)
                            .add_member(pb::AddMemberRequest { id, addr, learner })
                            .await
                    }
                })
                .await?;
            done(
                out,
                &format!(
                    "node {id} added as {}",
                    if learner { "learner" } else { "voter" }
                ),
            )
        }
        ClusterCommand::Remove { id } => {
            client
                .call(|ch| async move {
                    client::cluster(ch)
                        .remove_member(pb::RemoveMemberRequest { id })
                        .await
                })
                .await?;
            done(out, &format!("node {id} removed"))
        }
        ClusterCommand::TransferLeader { id } => {
            client
                .call(|ch| async move {
                    client::cluster(ch)
                        .transfer_leader(pb::TransferLeaderRequest { id })
                        .await
                })
                .await?;
            done(out, &format!("leadership transfer to node {id} started"))
        }
    }
}

fn done(out: &mut Printer, message: &str) -> Result<(), CliError> {
    if out.json {
        out.json_line(&serde_json::json!({ "ok": true, "message": message }))
            .map_err(CliError::Io)
    } else {
        out.line(message).map_err(CliError::Io)
    }
}

async fn status(client: &mut Client, out: &mut Printer) -> Result<(), CliError> {
    let first = client
        .call(|ch| async move { client::maintenance(ch).status(pb::StatusRequest {}).await })
        .await?;
    let leader_id = first.leader;
    let members = first.members.clone();
    let asked = first.header.as_ref().map_or(0, |h| h.member_id);
    // Each member's own view: the endpoint that answered is one of them;
    // the others at the client address they published.
    let own_status = |m: &pb::Member| {
        let first = first.clone();
        let (id, client_addr) = (m.id, m.client_addr.clone());
        let tls = client.tls().cloned();
        async move {
            if id == asked {
                Some(first)
            } else if client_addr.is_empty() {
                None
            } else {
                member_status(&client_addr, tls.as_ref()).await
            }
        }
    };
    let leader_status = match members.iter().find(|m| m.id == leader_id) {
        Some(m) => own_status(m).await,
        None => None,
    };
    let matched: std::collections::BTreeMap<u64, u64> = leader_status
        .as_ref()
        .map(|s| s.members.iter().map(|m| (m.id, m.matched_index)).collect())
        .unwrap_or_default();
    let mut views = Vec::with_capacity(members.len());
    for m in &members {
        let own = own_status(m).await;
        views.push(MemberView {
            id: m.id,
            addr: m.addr.clone(),
            client_addr: m.client_addr.clone(),
            voter: m.voter,
            role: own
                .as_ref()
                .map_or_else(|| "unreachable".to_string(), |s| s.role.clone()),
            matched_index: matched.get(&m.id).copied(),
            applied_index: own.as_ref().map(|s| s.raft_applied_index),
            raft_term: own.as_ref().map(|s| s.raft_term),
        });
    }
    let in_progress = leader_status
        .as_ref()
        .is_some_and(|s| s.raft_membership_index > s.raft_applied_index);
    let view = ClusterView {
        leader: leader_id,
        raft_term: first.raft_term,
        members: views,
        membership_change_in_progress: in_progress,
    };
    if out.json {
        return out.json_line(&view).map_err(CliError::Io);
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    out.line(format!(
        "leader {}  term {}{}",
        view.leader,
        view.raft_term,
        if view.membership_change_in_progress {
            "  (membership change in progress)"
        } else {
            ""
        }
    ))
    .map_err(CliError::Io)?;
    out.line(format!(
        "{:<6} {:<24} {:<24} {:<8} {:<12} {:>10} {:>10}",
        "ID", "PEER ADDRESS", "CLIENT ADDRESS", "MEMBER", "ROLE", "MATCHED", "APPLIED"
    ))
    .map_err(CliError::Io)?;
    for m in &view.members {
        out.line(format!(
            "{:<6} {:<24} {:<24} {:<8} {:<12} {:>10} {:>10}",
            m.id,
            m.addr,
            if m.client_addr.is_empty() {
                "-"
            } else {
                &m.client_addr
            },
            if m.voter { "voter" } else { "learner" },
            m.role,
            opt(m.matched_index),
            opt(m.applied_index)
        ))
        .map_err(CliError::Io)?;
    }
    Ok(())
}

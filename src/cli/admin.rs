//! Leases, documents, device reports and server status.

use std::collections::BTreeMap;

use serde::Serialize;
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::{self, Printer};
use super::{CliError, DeviceCmdArgs, DeviceReportArgs, DocCommand, DocListArgs, LeaseCommand};

#[derive(Serialize)]
struct LeaseGrantJson {
    id: i64,
    ttl: i64,
}

#[derive(Serialize)]
struct LeaseRevokeJson {
    id: i64,
    revoked: bool,
}

#[derive(Serialize)]
struct LeaseTtlJson {
    id: i64,
    ttl: i64,
    remaining_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<String>>,
    /// More keys are attached than the server sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    keys_more: bool,
}

/// `0x1a2b (6699)`.
fn lease_name(id: i64) -> String {
    format!("{id:#x} ({id})")
}

pub async fn lease(
    client: &mut Client,
    out: &mut Printer,
    cmd: LeaseCommand,
) -> Result<(), CliError> {
    match cmd {
        LeaseCommand::Grant { ttl_seconds, id } => {
            let req = pb::LeaseGrantRequest { ttl_seconds, id };
            let resp = client
                .call(|ch| async move { client::lease(ch).lease_grant(req).await })
                .await?;
            if out.json {
                out.json_line(&LeaseGrantJson {
                    id: resp.id,
                    ttl: resp.ttl_seconds,
                })?;
            } else {
                out.line(format!(
                    "lease {} granted with TTL {}s",
                    lease_name(resp.id),
                    resp.ttl_seconds
                ))?;
            }
        }
        LeaseCommand::Revoke { id } => {
            let req = pb::LeaseRevokeRequest { id };
            client
                .call(|ch| async move { client::lease(ch).lease_revoke(req).await })
                .await?;
            if out.json {
                out.json_line(&LeaseRevokeJson { id, revoked: true })?;
            } else {
                out.line(format!("lease {} revoked", lease_name(id)))?;
            }
        }
        LeaseCommand::Ttl { id, keys } => {
            let req = pb::LeaseTimeToLiveRequest { id };
            let resp = client
                .call(|ch| async move { client::lease(ch).lease_time_to_live(req).await })
                .await?;
            if resp.ttl_seconds < 0 {
                return Err(CliError::NotFound(format!(
                    "lease not found: {}",
                    lease_name(id)
                )));
            }
            let key_list: Vec<String> = resp
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            if out.json {
                out.json_line(&LeaseTtlJson {
                    id: resp.id,
                    ttl: resp.ttl_seconds,
                    remaining_ms: resp.remaining_ms,
                    keys: keys.then_some(key_list),
                    keys_more: keys && resp.keys_more,
                })?;
            } else {
                out.line(format!(
                    "lease {} granted with TTL {}s, remaining {:.1}s",
                    lease_name(resp.id),
                    resp.ttl_seconds,
                    resp.remaining_ms as f64 / 1000.0
                ))?;
                if keys {
                    out.line(format!("attached keys ({}):", resp.keys.len()))?;
                    for k in &resp.keys {
                        out.line(k)?;
                    }
                    if resp.keys_more {
                        out.line("... more keys are attached than one response holds")?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct DocJson {
    collection: String,
    id: String,
    document: serde_json::Value,
}

fn doc_json(d: pb::Document) -> DocJson {
    // A document that is not JSON (it should always be) is kept as a string.
    let document = serde_json::from_str(&d.json).unwrap_or(serde_json::Value::String(d.json));
    DocJson {
        collection: d.collection,
        id: d.id,
        document,
    }
}

#[derive(Serialize)]
struct DocListJson {
    documents: Vec<DocJson>,
    next_page_token: String,
}

pub async fn doc(client: &mut Client, out: &mut Printer, cmd: DocCommand) -> Result<(), CliError> {
    match cmd {
        DocCommand::Get {
            collection,
            id,
            consistency,
        } => {
            let req = pb::GetDocumentRequest {
                collection,
                id,
                consistency: consistency.to_proto(),
            };
            let resp = client
                .call(|ch| {
                    let req = req.clone();
                    async move { client::documents(ch).get(req).await }
                })
                .await?;
            let Some(doc) = resp.document else {
                return Err(CliError::NotFound(format!(
                    "document not found: {}/{}",
                    req.collection, req.id
                )));
            };
            let doc = doc_json(doc);
            if out.json {
                out.json_line(&doc)?;
            } else {
                let pretty =
                    serde_json::to_string_pretty(&doc.document).map_err(std::io::Error::other)?;
                out.line(pretty)?;
            }
            Ok(())
        }
        DocCommand::List(a) => doc_list(client, out, a).await,
    }
}

async fn doc_list(client: &mut Client, out: &mut Printer, a: DocListArgs) -> Result<(), CliError> {
    let mut req = pb::ListDocumentsRequest {
        collection: a.collection,
        zone: a.zone.unwrap_or_default(),
        class: a.class.unwrap_or_default(),
        host: a.host.unwrap_or_default(),
        limit: a.limit,
        page_token: a.page_token,
        consistency: a.consistency.to_proto(),
    };
    let max_pages = if a.all { a.max_pages } else { 1 };
    let mut all_docs = Vec::new();
    let mut pages = 0u64;
    let next = loop {
        let resp = client
            .call(|ch| {
                let req = req.clone();
                async move { client::documents(ch).list(req).await }
            })
            .await?;
        pages += 1;
        for d in resp.documents {
            if out.json {
                all_docs.push(doc_json(d));
            } else {
                // Compact form of the document: re-serialised when it parses.
                let compact = serde_json::from_str::<serde_json::Value>(&d.json)
                    .ok()
                    .and_then(|v| serde_json::to_string(&v).ok())
                    .unwrap_or(d.json);
                out.line(format!("{}\t{}", d.id, compact))?;
            }
        }
        let token = resp.next_page_token;
        if token.is_empty() || pages >= max_pages || token == req.page_token {
            break token;
        }
        req.page_token = token;
    };
    if out.json {
        out.json_line(&DocListJson {
            documents: all_docs,
            next_page_token: next.clone(),
        })?;
    }
    if !next.is_empty() {
        if a.all {
            eprintln!("warning: stopped after {pages} pages (--max-pages); continue with --page-token {next}");
        } else if !out.json {
            eprintln!("more documents: use --all, or --page-token {next}");
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ReportJson {
    device: String,
    revision: i64,
}

pub async fn device_report(
    client: &mut Client,
    out: &mut Printer,
    a: DeviceReportArgs,
) -> Result<(), CliError> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&a.json) {
        return Err(CliError::Usage(format!(
            "--json {:?} is not JSON ({e}); quote strings, e.g. --json '\"on\"'",
            a.json
        )));
    }
    let req = pb::DeviceReport {
        host: a.host,
        zone: a.zone,
        class: a.class,
        device_id: a.device_id,
        post_type: a.post_type,
        path: a.path,
        json: a.json,
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::documents(ch).report(req).await }
        })
        .await?;
    if out.json {
        out.json_line(&ReportJson {
            device: resp.device,
            revision: output::revision(&resp.header),
        })?;
    } else {
        out.line(resp.device)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct CommandJson {
    device: String,
    command_id: u64,
    revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<serde_json::Value>,
}

pub async fn device_cmd(
    client: &mut Client,
    out: &mut Printer,
    a: DeviceCmdArgs,
) -> Result<(), CliError> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&a.payload) {
        return Err(CliError::Usage(format!(
            "payload {:?} is not JSON ({e}); quote strings, e.g. '\"on\"'",
            a.payload
        )));
    }
    let req = pb::DeviceCommandRequest {
        device: a.device.clone(),
        post_type: a.post_type,
        json: a.payload,
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::documents(ch).command(req).await }
        })
        .await?;
    let id = resp.command_id;
    let mut shown = CommandJson {
        device: a.device.clone(),
        command_id: id,
        revision: output::revision(&resp.header),
        state: None,
    };
    if let Some(wait_s) = a.wait {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_s);
        loop {
            let get = pb::GetDocumentRequest {
                collection: "devices".into(),
                id: a.device.clone(),
                consistency: pb::Consistency::Serializable as i32,
            };
            let doc = client
                .call(|ch| {
                    let get = get.clone();
                    async move { client::documents(ch).get(get).await }
                })
                .await?;
            let cmd = doc
                .document
                .and_then(|d| serde_json::from_str::<serde_json::Value>(&d.json).ok())
                .and_then(|v| v["commands"].get(id.to_string()).cloned());
            let state = cmd
                .as_ref()
                .and_then(|c| c["state"].as_str())
                .unwrap_or("pending")
                .to_string();
            if state != "pending" || std::time::Instant::now() >= deadline {
                let failed = state != "acknowledged";
                shown.state = cmd;
                if out.json {
                    out.json_line(&shown)?;
                } else {
                    out.line(format!("{id} {state}"))?;
                }
                if failed {
                    return Err(CliError::NotFound(format!(
                        "command {id} for {} is {state}",
                        a.device
                    )));
                }
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    if out.json {
        out.json_line(&shown)?;
    } else {
        out.line(id.to_string())?;
    }
    Ok(())
}

#[derive(Serialize)]
struct MemberJson {
    id: u64,
    /// Its peer address.
    addr: String,
    /// The address clients reach it at (empty: not published yet).
    client_addr: String,
    voter: bool,
}

#[derive(Serialize)]
struct StatusJson {
    endpoint: String,
    version: String,
    member_id: u64,
    /// The cluster this node belongs to (0: not known yet).
    cluster_id: u64,
    leader: u64,
    raft_term: u64,
    raft_index: u64,
    raft_applied_index: u64,
    raft_snapshot_index: u64,
    raft_purged_index: u64,
    role: String,
    revision: i64,
    compact_revision: i64,
    data_dir: String,
    db_size_bytes: u64,
    members: Vec<MemberJson>,
    counters: BTreeMap<String, u64>,
    /// Histograms by name: count, sum and quantiles in seconds.
    histograms: BTreeMap<String, HistogramJson>,
    raft_membership_index: u64,
}

#[derive(Serialize)]
struct HistogramJson {
    count: u64,
    sum: f64,
    p50: f64,
    p99: f64,
}

pub async fn status(client: &mut Client, out: &mut Printer) -> Result<(), CliError> {
    let resp = client
        .call(|ch| async move { client::maintenance(ch).status(pb::StatusRequest {}).await })
        .await?;
    let h = output::header(&resp.header);
    let s = StatusJson {
        endpoint: client.current_endpoint().unwrap_or_default().to_string(),
        version: resp.version,
        member_id: h.member_id,
        cluster_id: resp.cluster_id,
        leader: resp.leader,
        raft_term: resp.raft_term,
        raft_index: resp.raft_index,
        raft_applied_index: resp.raft_applied_index,
        raft_snapshot_index: resp.raft_snapshot_index,
        raft_purged_index: resp.raft_purged_index,
        role: resp.role,
        revision: h.revision,
        compact_revision: resp.compact_revision,
        data_dir: resp.data_dir,
        db_size_bytes: resp.db_size_bytes,
        members: resp
            .members
            .into_iter()
            .map(|m| MemberJson {
                id: m.id,
                addr: m.addr,
                client_addr: m.client_addr,
                voter: m.voter,
            })
            .collect(),
        counters: resp.counters.into_iter().collect(),
        histograms: resp
            .histograms
            .into_iter()
            .map(|h| {
                (
                    h.name,
                    HistogramJson {
                        count: h.count,
                        sum: h.sum,
                        p50: h.p50,
                        p99: h.p99,
                    },
                )
            })
            .collect(),
        raft_membership_index: resp.raft_membership_index,
    };
    if out.json {
        out.json_line(&s)?;
        return Ok(());
    }
    let rows: [(&str, String); 16] = [
        ("endpoint", s.endpoint.clone()),
        ("version", s.version.clone()),
        ("cluster_id", format!("{:016x}", s.cluster_id)),
        ("member_id", s.member_id.to_string()),
        ("leader", s.leader.to_string()),
        ("raft_term", s.raft_term.to_string()),
        ("raft_index", s.raft_index.to_string()),
        ("role", s.role.clone()),
        ("raft_applied_index", s.raft_applied_index.to_string()),
        ("raft_snapshot_index", s.raft_snapshot_index.to_string()),
        ("raft_purged_index", s.raft_purged_index.to_string()),
        ("raft_membership_index", s.raft_membership_index.to_string()),
        ("revision", s.revision.to_string()),
        ("compact_revision", s.compact_revision.to_string()),
        ("data_dir", s.data_dir.clone()),
        ("db_size_bytes", s.db_size_bytes.to_string()),
    ];
    for (name, value) in rows {
        out.line(format!("{name:<20} {value}"))?;
    }
    out.line(format!("members ({}):", s.members.len()))?;
    for m in &s.members {
        let role = if m.voter { "voter" } else { "learner" };
        let me = if m.id == s.member_id {
            " (this node)"
        } else {
            ""
        };
        let leader = if m.id == s.leader { " (leader)" } else { "" };
        let client = if m.client_addr.is_empty() {
            "-"
        } else {
            &m.client_addr
        };
        out.line(format!(
            "  {:<20} peer {:<24} client {:<24} {role}{me}{leader}",
            m.id, m.addr, client
        ))?;
    }
    out.line(format!("counters ({}):", s.counters.len()))?;
    let width = s.counters.keys().map(|k| k.len()).max().unwrap_or(0);
    for (name, value) in &s.counters {
        out.line(format!("  {name:<width$} {value}"))?;
    }
    out.line(format!("histograms ({}, seconds):", s.histograms.len()))?;
    let width = s.histograms.keys().map(|k| k.len()).max().unwrap_or(0);
    for (name, h) in &s.histograms {
        out.line(format!(
            "  {name:<width$} count {} sum {:.6} p50 {:.6} p99 {:.6}",
            h.count, h.sum, h.p50, h.p99
        ))?;
    }
    Ok(())
}

//! `utopia db add|remove|list`: the database servers utopia mirrors into
//! (the `db_servers` collection, seed 000's directory of database
//! servers), in the manner of `etcdctl member add|remove|list`.
//!
//! `add HOST:PORT [--type mongodb]` registers a server, or makes a
//! problematic one ok again; `remove HOST:PORT [--type mongodb]` deletes
//! it; `list` prints `ID HOST PORT TYPE STATE UPDATED LAST ERROR` (or
//! `{"db_servers":[{"id","host","port","type","state","reason",
//! "first_seen_ms","updated_ms"}]}` with `--output json`). `ADDR` may also
//! be the document id `HOST:PORT:TYPE`.

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::Printer;
use super::{CliError, ConsistencyArg};

/// Most servers `db list` reads (pages of the collection).
const LIST_PAGES_MAX: usize = 100;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Register a database server (or make a problematic one ok again).
    Add {
        /// HOST:PORT (an IPv6 host in brackets), or the id HOST:PORT:TYPE.
        addr: String,
        /// The server's type.
        #[arg(long = "type", default_value = "mongodb")]
        kind: String,
    },
    /// Remove a database server from the directory.
    Remove {
        /// HOST:PORT, or the id HOST:PORT:TYPE.
        addr: String,
        /// The server's type.
        #[arg(long = "type", default_value = "mongodb")]
        kind: String,
    },
    /// Every database server: host, port, type, state and last error.
    List {
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
}

/// A db_servers document as listed.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct DbServerView {
    id: String,
    host: String,
    port: u16,
    #[serde(rename = "type")]
    kind: String,
    state: String,
    #[serde(default)]
    reason: Option<String>,
    first_seen_ms: u64,
    updated_ms: u64,
}

/// `HOST:PORT` or `HOST:PORT:TYPE` (then `--type` must agree or be the
/// default) into (host, port, type).
fn parse_addr(addr: &str, kind: &str) -> Result<(String, u32, String), CliError> {
    let usage = || {
        CliError::Usage(format!(
            "{addr:?} is not HOST:PORT or HOST:PORT:TYPE (an IPv6 host in brackets: [::1]:27017)"
        ))
    };
    // The host may be a bracketed IPv6 address with colons inside.
    let (host, rest) = if let Some(inner) = addr.strip_prefix('[') {
        let end = inner.find(']').ok_or_else(usage)?;
        (
            &addr[..end + 2],
            inner[end + 1..].strip_prefix(':').ok_or_else(usage)?,
        )
    } else {
        addr.split_once(':').ok_or_else(usage)?
    };
    let (port, kind) = match rest.split_once(':') {
        Some((port, k)) => (port, k),
        None => (rest, kind),
    };
    let port: u32 = port.parse().map_err(|_| usage())?;
    if host.is_empty() || kind.is_empty() {
        return Err(usage());
    }
    Ok((host.to_string(), port, kind.to_string()))
}

pub async fn run(client: &mut Client, out: &mut Printer, cmd: DbCommand) -> Result<(), CliError> {
    match cmd {
        DbCommand::Add { addr, kind } => change(client, out, &addr, &kind, false).await,
        DbCommand::Remove { addr, kind } => change(client, out, &addr, &kind, true).await,
        DbCommand::List { consistency } => list(client, out, consistency).await,
    }
}

async fn change(
    client: &mut Client,
    out: &mut Printer,
    addr: &str,
    kind: &str,
    remove: bool,
) -> Result<(), CliError> {
    let (host, port, kind) = parse_addr(addr, kind)?;
    let action = if remove {
        pb::db_server_request::Action::Remove
    } else {
        pb::db_server_request::Action::Add
    };
    let req = pb::DbServerRequest {
        action: action as i32,
        host: host.clone(),
        port,
        r#type: kind.clone(),
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::documents(ch).db_server(req).await }
        })
        .await?;
    let id = format!("{host}:{port}:{kind}");
    let message = if remove {
        format!("database server {id} removed")
    } else {
        format!("database server {id} added (state ok)")
    };
    if out.json {
        let document = resp
            .document
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d.json).ok());
        out.json_line(
            &serde_json::json!({ "ok": true, "message": message, "document": document }),
        )?;
    } else {
        out.line(message)?;
    }
    Ok(())
}

async fn list(
    client: &mut Client,
    out: &mut Printer,
    consistency: ConsistencyArg,
) -> Result<(), CliError> {
    let mut req = pb::ListDocumentsRequest {
        collection: "db_servers".into(),
        consistency: consistency.to_proto(),
        ..Default::default()
    };
    let mut servers = Vec::new();
    for _ in 0..LIST_PAGES_MAX {
        let resp = client
            .call(|ch| {
                let req = req.clone();
                async move { client::documents(ch).list(req).await }
            })
            .await?;
        for d in resp.documents {
            let view: DbServerView = serde_json::from_str(&d.json).map_err(|e| {
                CliError::Rpc(tonic::Status::data_loss(format!(
                    "db_servers document {} does not read: {e}",
                    d.id
                )))
            })?;
            servers.push(view);
        }
        if resp.next_page_token.is_empty() {
            break;
        }
        req.page_token = resp.next_page_token;
    }
    if out.json {
        out.json_line(&serde_json::json!({ "db_servers": servers }))?;
        return Ok(());
    }
    for line in table(&servers) {
        out.line(line)?;
    }
    Ok(())
}

fn table(servers: &[DbServerView]) -> Vec<String> {
    let mut rows: Vec<[String; 6]> = vec![[
        "HOST".into(),
        "PORT".into(),
        "TYPE".into(),
        "STATE".into(),
        "UPDATED_MS".into(),
        "LAST ERROR".into(),
    ]];
    for s in servers {
        rows.push([
            s.host.clone(),
            s.port.to_string(),
            s.kind.clone(),
            s.state.clone(),
            s.updated_ms.to_string(),
            s.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let ok = |addr: &str, kind: &str, want: (&str, u32, &str)| {
            let (h, p, k) = parse_addr(addr, kind).expect(addr);
            assert_eq!((h.as_str(), p, k.as_str()), want, "{addr}");
        };
        ok("db1:27017", "mongodb", ("db1", 27017, "mongodb"));
        ok("db1:27017:rocksdb", "mongodb", ("db1", 27017, "rocksdb"));
        ok("[::1]:27017", "mongodb", ("[::1]", 27017, "mongodb"));
        ok("[::1]:1:x", "mongodb", ("[::1]", 1, "x"));
        for bad in [
            "db1",
            ":27017",
            "db1:port",
            "[::1",
            "[::1]27017",
            "db1:27017:",
            "",
        ] {
            assert!(parse_addr(bad, "mongodb").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_names_the_last_error() {
        let view = |state: &str, reason: Option<&str>| DbServerView {
            id: "db:1:mongodb".into(),
            host: "db".into(),
            port: 1,
            kind: "mongodb".into(),
            state: state.into(),
            reason: reason.map(String::from),
            first_seen_ms: 1,
            updated_ms: 2,
        };
        let lines = table(&[view("ok", None), view("problematic", Some("verify failed"))]);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("HOST"));
        assert!(lines[1].ends_with(" -"), "{}", lines[1]);
        assert!(lines[2].contains("problematic") && lines[2].ends_with("verify failed"));
    }
}

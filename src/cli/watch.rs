//! `utopia watch`: stream changes to a key or range until `--count` events,
//! Ctrl-C (exit 0) or the server ends the stream (exit 3).

use serde::Serialize;
use utopia_proto::v1 as pb;

use super::client::{self, Client};
use super::output::{self, Printer};
use super::txn::prefix_end;
use super::{CliError, WatchArgs};

#[derive(Serialize)]
struct EventJson {
    #[serde(rename = "type")]
    kind: &'static str,
    revision: i64,
    kv: output::KvJson,
    prev_kv: Option<output::KvJson>,
}

fn kind(ev: &pb::Event) -> &'static str {
    match pb::event::EventType::try_from(ev.r#type) {
        Ok(pb::event::EventType::Put) => "PUT",
        Ok(pb::event::EventType::Delete) => "DELETE",
        Err(_) => "UNKNOWN",
    }
}

fn print_event(
    out: &mut Printer,
    ev: &pb::Event,
    header_revision: i64,
    with_prev: bool,
) -> std::io::Result<()> {
    let kv = ev.kv.clone().unwrap_or_default();
    if out.json {
        let revision = if kv.mod_revision != 0 {
            kv.mod_revision
        } else {
            header_revision
        };
        out.json_line(&EventJson {
            kind: kind(ev),
            revision,
            kv: output::kv(&kv),
            prev_kv: ev.prev_kv.as_ref().map(output::kv),
        })?;
    } else {
        out.line(kind(ev))?;
        if with_prev {
            if let Some(prev) = &ev.prev_kv {
                out.kv_text(prev, false)?;
            }
        }
        out.kv_text(&kv, false)?;
    }
    // Each event is visible at once, also through a pipe.
    out.flush()
}

pub async fn watch(client: &mut Client, out: &mut Printer, a: WatchArgs) -> Result<(), CliError> {
    if a.count == Some(0) {
        return Ok(());
    }
    let key = a.key.into_bytes();
    let range_end = if a.prefix {
        prefix_end(&key)
    } else {
        Vec::new()
    };
    let req = pb::WatchRequest {
        key,
        range_end,
        start_revision: a.rev,
        prev_kv: a.prev_kv,
    };
    // Ctrl-C ends the watch; if the handler cannot be installed, never fire.
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            futures::future::pending::<()>().await;
        }
    };
    tokio::pin!(ctrl_c);
    let mut stream = tokio::select! {
        _ = &mut ctrl_c => return Ok(()),
        s = client.call(|ch| {
            let req = req.clone();
            async move { client::watch(ch).watch(req).await }
        }) => s?,
    };
    let mut seen: u64 = 0;
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            m = stream.message() => m,
        };
        match msg {
            Ok(Some(resp)) => {
                let rev = output::revision(&resp.header);
                for ev in &resp.events {
                    print_event(out, ev, rev, a.prev_kv)?;
                    seen += 1;
                    if a.count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
            Ok(None) => {
                return Err(CliError::Rpc(tonic::Status::unavailable(format!(
                    "the server closed the watch stream after {seen} events"
                ))))
            }
            Err(status) => return Err(CliError::Rpc(status)),
        }
    }
}

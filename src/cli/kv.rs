//! The KV commands: put, get, del, cas, txn, compact.

use serde::Serialize;
use utopia_proto::v1 as pb;
use utopia_proto::v1::compare::{CompareResult, CompareTarget, TargetUnion};

use super::client::{self, Client};
use super::output::{self, Printer};
use super::txn::{self, prefix_end};
use super::{CasArgs, CliError, CompactArgs, DelArgs, GetArgs, PutArgs, TxnArgs};

pub async fn put(client: &mut Client, out: &mut Printer, a: PutArgs) -> Result<(), CliError> {
    let req = pb::PutRequest {
        key: a.key.into_bytes(),
        value: a.value.into_bytes(),
        lease: a.lease,
        prev_kv: a.prev_kv,
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::kv(ch).put(req).await }
        })
        .await?;
    if out.json {
        out.json_line(&output::put(&resp))?;
    } else {
        out.line("OK")?;
        if let Some(prev) = &resp.prev_kv {
            out.kv_text(prev, false)?;
        }
    }
    Ok(())
}

/// (key, range_end) for get/del from the selector flags.
fn selection(
    key: Option<String>,
    prefix: bool,
    from: Option<String>,
    to: Option<String>,
    from_key: bool,
) -> (Vec<u8>, Vec<u8>) {
    match from {
        Some(from) => (
            from.into_bytes(),
            to.map(String::into_bytes).unwrap_or_else(|| vec![0]),
        ),
        None => {
            let key = key.unwrap_or_default().into_bytes();
            let end = if prefix {
                prefix_end(&key)
            } else if from_key {
                vec![0]
            } else {
                Vec::new()
            };
            (key, end)
        }
    }
}

pub async fn get(client: &mut Client, out: &mut Printer, a: GetArgs) -> Result<(), CliError> {
    let (key, range_end) = selection(a.key, a.prefix, a.from, a.to, a.from_key);
    let single = range_end.is_empty();
    let req = pb::RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev,
        consistency: a.consistency.to_proto(),
        keys_only: a.keys_only,
        count_only: a.count_only,
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::kv(ch).range(req).await }
        })
        .await?;
    if single && !a.count_only && resp.kvs.is_empty() {
        if out.json {
            out.json_line(&output::range(&resp))?;
        }
        return Err(CliError::NotFound(format!(
            "key not found: {}",
            String::from_utf8_lossy(&req.key)
        )));
    }
    if out.json {
        out.json_line(&output::range(&resp))?;
    } else if a.count_only {
        out.line(resp.count.to_string())?;
    } else {
        for kv in &resp.kvs {
            out.kv_text(kv, a.keys_only)?;
        }
    }
    Ok(())
}

pub async fn del(client: &mut Client, out: &mut Printer, a: DelArgs) -> Result<(), CliError> {
    let (key, range_end) = selection(a.key, a.prefix, a.from, a.to, false);
    let req = pb::DeleteRangeRequest {
        key,
        range_end,
        prev_kv: a.prev_kv,
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::kv(ch).delete_range(req).await }
        })
        .await?;
    if out.json {
        out.json_line(&output::del(&resp))?;
    } else {
        out.line(resp.deleted.to_string())?;
        for kv in &resp.prev_kvs {
            out.kv_text(kv, false)?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct CasJson {
    succeeded: bool,
    header: output::HeaderJson,
    version: i64,
}

/// The Txn behind `cas`: VERSION(key) == expected → put, else read the key.
pub fn cas_request(key: &[u8], expected: i64, value: &[u8], lease: i64) -> pb::TxnRequest {
    use pb::request_op::Request;
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Version(expected)),
        }],
        success: vec![pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                prev_kv: false,
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(Request::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                keys_only: true,
                ..Default::default()
            })),
        }],
    }
}

pub async fn cas(client: &mut Client, out: &mut Printer, a: CasArgs) -> Result<(), CliError> {
    if a.expect_version < 0 {
        return Err(CliError::Usage(format!(
            "--expect-version must be >= 0, got {}",
            a.expect_version
        )));
    }
    let req = cas_request(
        a.key.as_bytes(),
        a.expect_version,
        a.value.as_bytes(),
        a.lease,
    );
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::kv(ch).txn(req).await }
        })
        .await?;
    if resp.succeeded {
        let version = a.expect_version + 1;
        if out.json {
            out.json_line(&CasJson {
                succeeded: true,
                header: output::header(&resp.header),
                version,
            })?;
        } else {
            out.line("OK")?;
        }
        return Ok(());
    }
    let current = resp
        .responses
        .iter()
        .find_map(|r| match &r.response {
            Some(pb::response_op::Response::ResponseRange(g)) => {
                Some(g.kvs.first().map(|kv| kv.version).unwrap_or(0))
            }
            _ => None,
        })
        .unwrap_or(0);
    if out.json {
        out.json_line(&CasJson {
            succeeded: false,
            header: output::header(&resp.header),
            version: current,
        })?;
    }
    let state = if current == 0 {
        "does not exist (version 0)".to_string()
    } else {
        format!("is at version {current}")
    };
    Err(CliError::CompareFailed(format!(
        "compare failed: key {} {state}, expected version {}",
        a.key, a.expect_version
    )))
}

pub async fn txn(client: &mut Client, out: &mut Printer, a: TxnArgs) -> Result<(), CliError> {
    let text = if a.file == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&a.file)
    }
    .map_err(|e| CliError::Usage(format!("cannot read transaction file {}: {e}", a.file)))?;
    let req = txn::parse(&text)
        .map_err(|e| CliError::Usage(format!("invalid transaction file {}: {e}", a.file)))?;
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::kv(ch).txn(req).await }
        })
        .await?;
    if out.json {
        out.json_line(&txn::response_json(&resp))?;
    } else {
        txn::print_text(out, &resp)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct CompactJson {
    header: output::HeaderJson,
    revision: i64,
}

pub async fn compact(
    client: &mut Client,
    out: &mut Printer,
    a: CompactArgs,
) -> Result<(), CliError> {
    let req = pb::CompactRequest {
        revision: a.revision,
    };
    let resp = client
        .call(|ch| async move { client::kv(ch).compact(req).await })
        .await?;
    if out.json {
        out.json_line(&CompactJson {
            header: output::header(&resp.header),
            revision: a.revision,
        })?;
    } else {
        out.line(format!("compacted revision {}", a.revision))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        let s = |k: Option<&str>, p, f: Option<&str>, t: Option<&str>, fk| {
            selection(
                k.map(String::from),
                p,
                f.map(String::from),
                t.map(String::from),
                fk,
            )
        };
        assert_eq!(
            s(Some("a"), false, None, None, false),
            (b"a".to_vec(), vec![])
        );
        assert_eq!(
            s(Some("a/"), true, None, None, false),
            (b"a/".to_vec(), b"a0".to_vec())
        );
        assert_eq!(s(Some(""), true, None, None, false), (vec![], vec![0]));
        assert_eq!(
            s(Some("a"), false, None, None, true),
            (b"a".to_vec(), vec![0])
        );
        assert_eq!(
            s(None, false, Some("a"), Some("c"), false),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(
            s(None, false, Some("a"), None, false),
            (b"a".to_vec(), vec![0])
        );
    }

    #[test]
    fn cas_compares_version() {
        let r = cas_request(b"k", 0, b"v", 0);
        assert_eq!(r.compare[0].target_union, Some(TargetUnion::Version(0)));
        assert_eq!(r.compare[0].target, CompareTarget::Version as i32);
        assert_eq!(r.compare[0].result, CompareResult::Equal as i32);
        assert!(matches!(
            r.success[0].request,
            Some(pb::request_op::Request::RequestPut(_))
        ));
        assert!(matches!(
            r.failure[0].request,
            Some(pb::request_op::Request::RequestRange(_))
        ));
    }
}

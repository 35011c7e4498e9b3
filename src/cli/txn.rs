//! The `utopia txn --file` JSON format, its translation to a `TxnRequest`,
//! and the rendering of a `TxnResponse`.
//!
//! ```json
//! {
//!   "compare": [
//!     {"key": "a", "target": "version", "result": "=", "value": 0},
//!     {"key": "b", "target": "value", "result": "!=", "value": "x"}
//!   ],
//!   "success": [
//!     {"put": {"key": "a", "value": "1", "lease": 0, "prev_kv": false}},
//!     {"get": {"key": "a", "range_end": ""}},
//!     {"del": {"key": "tmp/", "prefix": true}}
//!   ],
//!   "failure": [
//!     {"get": {"key": "a"}}
//!   ]
//! }
//! ```
//!
//! See [`FORMAT_HELP`] for every field; the same text is `utopia txn --help`.

use serde::{Deserialize, Serialize};
use utopia_proto::v1 as pb;
use utopia_proto::v1::compare::{CompareResult, CompareTarget, TargetUnion};

use super::output::{self, Printer};

/// The help text for `utopia txn`, describing the file format.
pub const FORMAT_HELP: &str = r#"Run a transaction described by a JSON file (KV.Txn).

If every compare holds, the "success" operations run, otherwise the "failure"
operations, atomically at one revision. Prints SUCCESS or FAILURE, then each
operation's response (put: OK; get: key and value lines; del: the count); with
--output json the whole response:
  {"header":{..},"succeeded":bool,"responses":[{"put":{..}}|{"get":{..}}|{"del":{..}}]}.
A FAILURE is not an error: the exit code is 0.

File format (unknown fields are rejected; keys and values are UTF-8 strings):
  {
    "compare": [ COMPARE... ],      optional, default []
    "success": [ OP... ],           optional, default []
    "failure": [ OP... ]            optional, default []
  }
  COMPARE = {"key": "a", "target": T, "result": R, "value": V,
             "range_end": "..." | "prefix": true}    (range optional)
    T = "version" | "create" | "mod" | "value" | "lease"
        (also "create_revision", "mod_revision")
    R = "=" (or "==") | "!=" | ">" | "<"
    V = an integer for version, create, mod and lease (version 0: the key
        does not exist); a string for value
  OP = {"put": {"key": "a", "value": "1", "lease": 0, "prev_kv": false}}
     | {"get": {"key": "a", "range_end": "", "prefix": false, "from_key": false,
                "limit": 0, "revision": 0, "keys_only": false,
                "count_only": false, "consistency": "linearizable"}}
     | {"del": {"key": "a", "range_end": "", "prefix": false, "from_key": false,
                "prev_kv": false}}
    Only "key" (and "value" for put) is required. A range is at most one of
    range_end (exclusive end; "\u0000" means every key >= key), prefix (every
    key starting with key) and from_key (every key >= key). "range" is
    accepted for "get" and "delete" for "del".

Example:
  {"compare":[{"key":"a","target":"version","result":"=","value":0}],
   "success":[{"put":{"key":"a","value":"1"}}],
   "failure":[{"get":{"key":"a"}}]}

A file that is not valid JSON or not in this format exits 2 with the problem
and its line and column."#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnFile {
    #[serde(default)]
    pub compare: Vec<CompareJson>,
    #[serde(default)]
    pub success: Vec<OpJson>,
    #[serde(default)]
    pub failure: Vec<OpJson>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum TargetJson {
    #[serde(rename = "version")]
    Version,
    #[serde(rename = "create", alias = "create_revision")]
    Create,
    #[serde(rename = "mod", alias = "mod_revision")]
    Mod,
    #[serde(rename = "value")]
    Value,
    #[serde(rename = "lease")]
    Lease,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ResultJson {
    #[serde(rename = "=", alias = "==")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = "<")]
    Less,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareJson {
    pub key: String,
    pub target: TargetJson,
    pub result: ResultJson,
    pub value: serde_json::Value,
    #[serde(default)]
    pub range_end: Option<String>,
    #[serde(default)]
    pub prefix: bool,
}

#[derive(Debug, Deserialize)]
pub enum OpJson {
    #[serde(rename = "put")]
    Put(PutOp),
    #[serde(rename = "get", alias = "range")]
    Get(GetOp),
    #[serde(rename = "del", alias = "delete")]
    Del(DelOp),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutOp {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub lease: i64,
    #[serde(default)]
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyJson {
    #[default]
    Linearizable,
    Serializable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOp {
    pub key: String,
    #[serde(default)]
    pub range_end: Option<String>,
    #[serde(default)]
    pub prefix: bool,
    #[serde(default)]
    pub from_key: bool,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub revision: i64,
    #[serde(default)]
    pub keys_only: bool,
    #[serde(default)]
    pub count_only: bool,
    #[serde(default)]
    pub consistency: ConsistencyJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelOp {
    pub key: String,
    #[serde(default)]
    pub range_end: Option<String>,
    #[serde(default)]
    pub prefix: bool,
    #[serde(default)]
    pub from_key: bool,
    #[serde(default)]
    pub prev_kv: bool,
}

/// The end of the range of keys starting with `prefix` (etcd semantics):
/// the prefix with its last byte below 0xff incremented and what follows
/// dropped; "\0" (every key) when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The range_end for a key given the range options; at most one may be set.
pub fn range_end(
    key: &[u8],
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<Vec<u8>, String> {
    let set = usize::from(range_end.is_some_and(|r| !r.is_empty()))
        + usize::from(prefix)
        + usize::from(from_key);
    if set > 1 {
        return Err("use at most one of range_end, prefix and from_key".into());
    }
    Ok(if prefix {
        prefix_end(key)
    } else if from_key {
        vec![0]
    } else {
        range_end.unwrap_or("").as_bytes().to_vec()
    })
}

/// Parses and checks a transaction file; errors name the problem (serde's
/// message with line and column, or the operation's position).
pub fn parse(text: &str) -> Result<pb::TxnRequest, String> {
    // serde would also read a struct from an array; only an object is valid.
    if let Some(first) = text.trim_start().chars().next().filter(|c| *c != '{') {
        return Err(format!(
            "expected a JSON object starting with '{{', found {first:?}"
        ));
    }
    let file: TxnFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    to_request(file)
}

pub fn to_request(file: TxnFile) -> Result<pb::TxnRequest, String> {
    let compare = file
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| compare(c).map_err(|e| format!("compare[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ops = |name: &str, ops: Vec<OpJson>| {
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| request_op(op).map_err(|e| format!("{name}[{i}]: {e}")))
            .collect::<Result<Vec<_>, String>>()
    };
    let success = ops("success", file.success)?;
    let failure = ops("failure", file.failure)?;
    Ok(pb::TxnRequest {
        compare,
        success,
        failure,
    })
}

fn compare(c: CompareJson) -> Result<pb::Compare, String> {
    let int = |what: &str| {
        c.value.as_i64().ok_or_else(|| {
            format!(
                "target {what:?} needs an integer \"value\", got {}",
                c.value
            )
        })
    };
    let (target, union) = match c.target {
        TargetJson::Version => (
            CompareTarget::Version,
            TargetUnion::Version(int("version")?),
        ),
        TargetJson::Create => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int("create")?),
        ),
        TargetJson::Mod => (CompareTarget::Mod, TargetUnion::ModRevision(int("mod")?)),
        TargetJson::Lease => (CompareTarget::Lease, TargetUnion::Lease(int("lease")?)),
        TargetJson::Value => match &c.value {
            serde_json::Value::String(s) => (
                CompareTarget::Value,
                TargetUnion::Value(s.as_bytes().to_vec()),
            ),
            other => {
                return Err(format!(
                    "target \"value\" needs a string \"value\", got {other}"
                ))
            }
        },
    };
    let result = match c.result {
        ResultJson::Equal => CompareResult::Equal,
        ResultJson::NotEqual => CompareResult::NotEqual,
        ResultJson::Greater => CompareResult::Greater,
        ResultJson::Less => CompareResult::Less,
    };
    let key = c.key.into_bytes();
    let range_end = range_end(&key, c.range_end.as_deref(), c.prefix, false)?;
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end,
        target_union: Some(union),
    })
}

fn request_op(op: OpJson) -> Result<pb::RequestOp, String> {
    use pb::request_op::Request;
    let request = match op {
        OpJson::Put(p) => Request::RequestPut(pb::PutRequest {
            key: p.key.into_bytes(),
            value: p.value.into_bytes(),
            lease: p.lease,
            prev_kv: p.prev_kv,
        }),
        OpJson::Get(g) => {
            let key = g.key.into_bytes();
            let range_end = range_end(&key, g.range_end.as_deref(), g.prefix, g.from_key)
                .map_err(|e| format!("get: {e}"))?;
            Request::RequestRange(pb::RangeRequest {
                key,
                range_end,
                limit: g.limit,
                revision: g.revision,
                consistency: match g.consistency {
                    ConsistencyJson::Linearizable => pb::Consistency::Linearizable as i32,
                    ConsistencyJson::Serializable => pb::Consistency::Serializable as i32,
                },
                keys_only: g.keys_only,
                count_only: g.count_only,
            })
        }
        OpJson::Del(d) => {
            let key = d.key.into_bytes();
            let range_end = range_end(&key, d.range_end.as_deref(), d.prefix, d.from_key)
                .map_err(|e| format!("del: {e}"))?;
            Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: d.prev_kv,
            })
        }
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

#[derive(Serialize)]
pub struct TxnJson {
    pub header: output::HeaderJson,
    pub succeeded: bool,
    pub responses: Vec<ResponseJson>,
}

#[derive(Serialize)]
pub enum ResponseJson {
    #[serde(rename = "put")]
    Put(output::PutJson),
    #[serde(rename = "get")]
    Get(output::RangeJson),
    #[serde(rename = "del")]
    Del(output::DelJson),
    /// A response this client does not know (a newer server).
    #[serde(rename = "unknown")]
    Unknown {},
}

pub fn response_json(r: &pb::TxnResponse) -> TxnJson {
    use pb::response_op::Response;
    let responses = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Response::ResponsePut(p)) => ResponseJson::Put(output::put(p)),
            Some(Response::ResponseRange(g)) => ResponseJson::Get(output::range(g)),
            Some(Response::ResponseDeleteRange(d)) => ResponseJson::Del(output::del(d)),
            None => ResponseJson::Unknown {},
        })
        .collect();
    TxnJson {
        header: output::header(&r.header),
        succeeded: r.succeeded,
        responses,
    }
}

/// SUCCESS/FAILURE, then each response as text.
pub fn print_text(out: &mut Printer, r: &pb::TxnResponse) -> std::io::Result<()> {
    use pb::response_op::Response;
    out.line(if r.succeeded { "SUCCESS" } else { "FAILURE" })?;
    for op in &r.responses {
        out.line("")?;
        match &op.response {
            Some(Response::ResponsePut(p)) => {
                out.line("OK")?;
                if let Some(prev) = &p.prev_kv {
                    out.kv_text(prev, false)?;
                }
            }
            Some(Response::ResponseRange(g)) => {
                if g.kvs.is_empty() && g.count > 0 {
                    out.line(g.count.to_string())?;
                }
                for kv in &g.kvs {
                    out.kv_text(kv, false)?;
                }
            }
            Some(Response::ResponseDeleteRange(d)) => {
                out.line(d.deleted.to_string())?;
                for kv in &d.prev_kvs {
                    out.kv_text(kv, false)?;
                }
            }
            None => out.line("(unknown response)")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"sensors/"), b"sensors0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn full_example_translates() {
        let req = parse(
            r#"{"compare":[{"key":"a","target":"version","result":"=","value":0},
                           {"key":"b","target":"value","result":"!=","value":"x"},
                           {"key":"c/","target":"mod","result":"<","value":7,"prefix":true}],
                "success":[{"put":{"key":"a","value":"1","lease":5,"prev_kv":true}},
                           {"get":{"key":"a","range_end":""}},
                           {"del":{"key":"tmp/","prefix":true}}],
                "failure":[{"get":{"key":"a","from_key":true,"consistency":"serializable","limit":2}}]}"#,
        )
        .unwrap();
        assert_eq!(req.compare.len(), 3);
        let c = &req.compare[0];
        assert_eq!(
            (c.target, c.result),
            (CompareTarget::Version as i32, CompareResult::Equal as i32)
        );
        assert_eq!(c.target_union, Some(TargetUnion::Version(0)));
        assert!(c.range_end.is_empty());
        assert_eq!(
            req.compare[1].target_union,
            Some(TargetUnion::Value(b"x".to_vec()))
        );
        assert_eq!(req.compare[1].result, CompareResult::NotEqual as i32);
        assert_eq!(
            req.compare[2].target_union,
            Some(TargetUnion::ModRevision(7))
        );
        assert_eq!(req.compare[2].range_end, b"c0");
        match &req.success[0].request {
            Some(Request::RequestPut(p)) => {
                assert_eq!(
                    (&p.key[..], &p.value[..], p.lease, p.prev_kv),
                    (&b"a"[..], &b"1"[..], 5, true)
                )
            }
            other => panic!("{other:?}"),
        }
        match &req.success[1].request {
            Some(Request::RequestRange(r)) => assert!(r.range_end.is_empty()),
            other => panic!("{other:?}"),
        }
        match &req.success[2].request {
            Some(Request::RequestDeleteRange(d)) => assert_eq!(d.range_end, b"tmp0"),
            other => panic!("{other:?}"),
        }
        match &req.failure[0].request {
            Some(Request::RequestRange(r)) => {
                assert_eq!(r.range_end, b"\0");
                assert_eq!(r.consistency, pb::Consistency::Serializable as i32);
                assert_eq!(r.limit, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepted_variants() {
        let cases: &[(&str, usize, usize, usize)] = &[
            ("{}", 0, 0, 0),
            (r#"{"success":[{"put":{"key":"a","value":""}}]}"#, 0, 1, 0),
            (
                r#"{"compare":[{"key":"a","target":"create_revision","result":"==","value":1}]}"#,
                1,
                0,
                0,
            ),
            (
                r#"{"compare":[{"key":"a","target":"lease","result":">","value":0}]}"#,
                1,
                0,
                0,
            ),
            (
                r#"{"failure":[{"range":{"key":"a"}},{"delete":{"key":"a","range_end":"\u0000"}}]}"#,
                0,
                0,
                2,
            ),
        ];
        for (text, c, s, f) in cases {
            let req = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (req.compare.len(), req.success.len(), req.failure.len()),
                (*c, *s, *f),
                "{text}"
            );
        }
    }

    #[test]
    fn rejected_files_name_the_problem() {
        // (file, substring the error must contain)
        let cases: &[(&str, &str)] = &[
            ("", "EOF while parsing"),
            ("{", "line 1 column 1"),
            ("[]", "expected a JSON object"),
            ("  x", "expected a JSON object"),
            (
                "{\"compare\":[],\n \"sucess\":[]}",
                "unknown field `sucess`",
            ),
            ("{\"compare\":[],\n \"sucess\":[]}", "line 2 column"),
            (
                r#"{"success":[{"pot":{"key":"a"}}]}"#,
                "unknown variant `pot`",
            ),
            (
                r#"{"success":[{"put":{"key":"a"}}]}"#,
                "missing field `value`",
            ),
            (
                r#"{"success":[{"put":{"key":"a","value":1}}]}"#,
                "invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"success":[{"put":{"key":"a","value":"1","ttl":3}}]}"#,
                "unknown field `ttl`",
            ),
            (
                r#"{"compare":[{"key":"a","target":"size","result":"=","value":1}]}"#,
                "unknown variant `size`",
            ),
            (
                r#"{"compare":[{"key":"a","target":"version","result":"~","value":1}]}"#,
                "unknown variant `~`",
            ),
            (
                r#"{"compare":[{"key":"a","target":"version","result":"="}]}"#,
                "missing field `value`",
            ),
            (
                r#"{"compare":[{"key":"a","target":"version","result":"=","value":"1"}]}"#,
                "compare[0]: target \"version\" needs an integer",
            ),
            (
                r#"{"compare":[{"key":"a","target":"value","result":"=","value":1}]}"#,
                "compare[0]: target \"value\" needs a string",
            ),
            (
                r#"{"compare":[{"key":"a","target":"mod","result":"=","value":1.5}]}"#,
                "needs an integer",
            ),
            (
                r#"{"success":[{"put":{"key":"a","value":"1"}},{"get":{"key":"a","prefix":true,"from_key":true}}]}"#,
                "success[1]: get: use at most one",
            ),
            (
                r#"{"failure":[{"del":{"key":"a","prefix":true,"range_end":"b"}}]}"#,
                "failure[0]: del: use at most one",
            ),
            (
                r#"{"success":[{"get":{"key":"a","consistency":"strong"}}]}"#,
                "unknown variant `strong`",
            ),
            (
                r#"{"success":[{"put":{"key":"a","value":"1"},"get":{"key":"a"}}]}"#,
                "line 1",
            ),
        ];
        for (text, want) in cases {
            match parse(text) {
                Ok(req) => panic!("{text} parsed: {req:?}"),
                Err(e) => assert!(
                    e.contains(want),
                    "{text}: error {e:?} does not contain {want:?}"
                ),
            }
        }
    }

    #[test]
    fn response_json_shape() {
        use pb::response_op::Response;
        let r = pb::TxnResponse {
            header: Some(pb::ResponseHeader {
                revision: 9,
                member_id: 1,
                raft_term: 2,
            }),
            succeeded: true,
            responses: vec![
                pb::ResponseOp {
                    response: Some(Response::ResponsePut(pb::PutResponse::default())),
                },
                pb::ResponseOp {
                    response: Some(Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        deleted: 2,
                        ..Default::default()
                    })),
                },
            ],
        };
        let v = serde_json::to_string(&response_json(&r)).unwrap();
        assert_eq!(
            v,
            concat!(
                r#"{"header":{"revision":9,"member_id":1,"raft_term":2},"succeeded":true,"responses":["#,
                r#"{"put":{"header":{"revision":0,"member_id":0,"raft_term":0},"prev_kv":null}},"#,
                r#"{"del":{"header":{"revision":0,"member_id":0,"raft_term":0},"deleted":2,"prev_kvs":[]}}]}"#
            )
        );
    }
}

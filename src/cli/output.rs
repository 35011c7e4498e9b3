//! Rendering: a buffered stdout writer and the JSON shapes shared by the
//! commands (header, key-value pair). See the module docs of [`super`] for
//! the full JSON format.

use std::io::Write;

use serde::Serialize;
use utopia_proto::v1 as pb;

/// Buffered stdout; text lines are raw bytes (values may be binary).
pub struct Printer {
    pub json: bool,
    /// `--output xml` (`config get` only): the file's bytes as they are.
    pub xml: bool,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Printer {
            json,
            xml: false,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    /// Writes `bytes` and a newline.
    pub fn line(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.out.write_all(bytes.as_ref())?;
        self.out.write_all(b"\n")
    }

    /// Writes `bytes` as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Writes `v` as one line of compact JSON.
    pub fn json_line<T: Serialize + ?Sized>(&mut self, v: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, v).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Writes a key line and a value line.
    pub fn kv_text(&mut self, kv: &pb::KeyValue, keys_only: bool) -> std::io::Result<()> {
        self.line(&kv.key)?;
        if !keys_only {
            self.line(&kv.value)?;
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct HeaderJson {
    pub revision: i64,
    pub member_id: u64,
    pub raft_term: u64,
}

pub fn header(h: &Option<pb::ResponseHeader>) -> HeaderJson {
    let h = h.unwrap_or_default();
    HeaderJson {
        revision: h.revision,
        member_id: h.member_id,
        raft_term: h.raft_term,
    }
}

pub fn revision(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(0)
}

/// A key-value pair. `key`/`value` are null when the bytes are not UTF-8;
/// then `key_base64`/`value_base64` carry them.
#[derive(Debug, Serialize, PartialEq)]
pub struct KvJson {
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// (UTF-8 string, base64) — exactly one is Some.
pub fn bytes_fields(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(base64(b))),
    }
}

pub fn kv(kv: &pb::KeyValue) -> KvJson {
    let (key, key_base64) = bytes_fields(&kv.key);
    let (value, value_base64) = bytes_fields(&kv.value);
    KvJson {
        key,
        key_base64,
        value,
        value_base64,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

pub fn kvs(kvs: &[pb::KeyValue]) -> Vec<KvJson> {
    kvs.iter().map(kv).collect()
}

#[derive(Debug, Serialize)]
pub struct RangeJson {
    pub header: HeaderJson,
    pub kvs: Vec<KvJson>,
    pub more: bool,
    pub count: i64,
}

pub fn range(r: &pb::RangeResponse) -> RangeJson {
    RangeJson {
        header: header(&r.header),
        kvs: kvs(&r.kvs),
        more: r.more,
        count: r.count,
    }
}

#[derive(Debug, Serialize)]
pub struct PutJson {
    pub header: HeaderJson,
    pub prev_kv: Option<KvJson>,
}

pub fn put(r: &pb::PutResponse) -> PutJson {
    PutJson {
        header: header(&r.header),
        prev_kv: r.prev_kv.as_ref().map(kv),
    }
}

#[derive(Debug, Serialize)]
pub struct DelJson {
    pub header: HeaderJson,
    pub deleted: i64,
    pub prev_kvs: Vec<KvJson>,
}

pub fn del(r: &pb::DeleteRangeResponse) -> DelJson {
    DelJson {
        header: header(&r.header),
        deleted: r.deleted,
        prev_kvs: kvs(&r.prev_kvs),
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn kv_json_shapes() {
        let pair = pb::KeyValue {
            key: b"a".to_vec(),
            value: vec![0xff, 0x00],
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        };
        let v = serde_json::to_string(&kv(&pair)).unwrap();
        assert_eq!(
            v,
            r#"{"key":"a","value":null,"value_base64":"/wA=","create_revision":2,"mod_revision":3,"version":2,"lease":0}"#
        );
        let pair = pb::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let v = serde_json::to_string(&kv(&pair)).unwrap();
        assert_eq!(
            v,
            r#"{"key":"k","value":"v","create_revision":0,"mod_revision":0,"version":0,"lease":0}"#
        );
    }
}

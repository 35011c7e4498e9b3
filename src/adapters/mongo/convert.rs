//! utopia's documents and keys as MongoDB documents, and the hash the
//! mirror compares after reading them back.
//!
//! A document becomes its JSON fields with `_id` = the document id. JSON
//! maps to BSON one to one, with three exceptions MongoDB needs: an
//! integer above `i64::MAX` becomes a double (BSON has no unsigned
//! 64-bit integer), and in field names a leading `$` becomes `＄` (U+FF04),
//! `.` becomes `．` (U+FF0E) and NUL becomes U+FFFD, since MongoDB refuses
//! or misreads those in stored documents. A key-value pair becomes
//! `{_id: key, value, create_revision, mod_revision, version, lease}`, key
//! and value as strings when they are UTF-8, else binary.
//!
//! [`canonical_hash`] hashes a BSON document independently of field order
//! and of how the server chose to store an integer (int32 or int64), so
//! that what was written and what is read back compare equal exactly when
//! they hold the same values.

use mongodb::bson::{spec::BinarySubtype, Binary, Bson, Document};
use serde_json::Value;
use utopia_raft::event::KeyValue;

/// Deepest value converted: utopia's documents are at most 83 deep
/// (`apply::bounds`); anything deeper is not converted further.
const DEPTH_MAX: usize = 128;

/// A stored document (its JSON text) as the MongoDB document to write.
pub fn document(id: &str, json: &[u8]) -> Result<Document, String> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| format!("document {id} is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err(format!("document {id} is not a JSON object"));
    };
    let mut out = Document::new();
    out.insert("_id", id);
    for (k, v) in map {
        if k == "_id" {
            continue;
        }
        out.insert(field_name(&k), bson(v, 0));
    }
    Ok(out)
}

/// A key-value pair as the MongoDB document to write.
pub fn kv(kv: &KeyValue) -> Document {
    let mut out = Document::new();
    out.insert("_id", bytes(&kv.key));
    out.insert("value", bytes(&kv.value));
    out.insert("create_revision", kv.create_revision);
    out.insert("mod_revision", kv.mod_revision);
    out.insert("version", kv.version);
    out.insert("lease", kv.lease);
    out
}

/// A key's `_id`: text when UTF-8, else binary.
pub fn key_id(key: &[u8]) -> Bson {
    bytes(key)
}

fn bytes(b: &[u8]) -> Bson {
    match std::str::from_utf8(b) {
        Ok(s) => Bson::String(s.to_string()),
        Err(_) => Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: b.to_vec(),
        }),
    }
}

fn field_name(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    for (i, c) in k.chars().enumerate() {
        match c {
            '$' if i == 0 => out.push('\u{FF04}'),
            '.' => out.push('\u{FF0E}'),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn bson(v: Value, depth: usize) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Bson::Int64(i),
            (None, Some(f)) => Bson::Double(f),
            (None, None) => Bson::Null,
        },
        Value::String(s) => Bson::String(s),
        Value::Array(items) if depth < DEPTH_MAX => {
            Bson::Array(items.into_iter().map(|i| bson(i, depth + 1)).collect())
        }
        Value::Object(map) if depth < DEPTH_MAX => {
            let mut d = Document::new();
            for (k, v) in map {
                d.insert(field_name(&k), bson(v, depth + 1));
            }
            Bson::Document(d)
        }
        Value::Array(_) | Value::Object(_) => Bson::Null,
    }
}

/// blake3 of the document's values, fields in name order at every level,
/// integers as 64-bit whatever width the server stored them in.
pub fn canonical_hash(doc: &Document) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    hash_document(&mut h, doc, 0);
    *h.finalize().as_bytes()
}

fn hash_document(h: &mut blake3::Hasher, doc: &Document, depth: usize) {
    let mut fields: Vec<(&String, &Bson)> = doc.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    h.update(b"{");
    h.update(&(fields.len() as u64).to_le_bytes());
    for (k, v) in fields {
        hash_str(h, k);
        hash_bson(h, v, depth + 1);
    }
}

fn hash_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn hash_bson(h: &mut blake3::Hasher, v: &Bson, depth: usize) {
    if depth > DEPTH_MAX {
        h.update(b"deep");
        return;
    }
    match v {
        Bson::Null => {
            h.update(b"n");
        }
        Bson::Boolean(b) => {
            h.update(if *b { b"t" } else { b"f" });
        }
        Bson::Int32(i) => {
            h.update(b"i");
            h.update(&i64::from(*i).to_le_bytes());
        }
        Bson::Int64(i) => {
            h.update(b"i");
            h.update(&i.to_le_bytes());
        }
        Bson::Double(f) => {
            h.update(b"d");
            h.update(&f.to_bits().to_le_bytes());
        }
        Bson::String(s) => {
            h.update(b"s");
            hash_str(h, s);
        }
        Bson::Binary(b) => {
            h.update(b"b");
            h.update(&(b.bytes.len() as u64).to_le_bytes());
            h.update(&b.bytes);
        }
        Bson::Array(items) => {
            h.update(b"[");
            h.update(&(items.len() as u64).to_le_bytes());
            for i in items {
                hash_bson(h, i, depth + 1);
            }
        }
        Bson::Document(d) => hash_document(h, d, depth),
        other => {
            // Types utopia never writes: hashed by their text, so a
            // document holding one never matches what utopia wrote.
            h.update(b"?");
            hash_str(h, &other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn documents_convert_with_their_id() {
        let d = document(
            "gw1/thermo/7",
            br#"{"a":1,"big":18446744073709551615,"f":21.5,"n":null,"$x":{"a.b":[true,"s"]},"_id":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(d.get_str("_id").unwrap(), "gw1/thermo/7");
        assert_eq!(d.get_i64("a").unwrap(), 1);
        assert_eq!(d.get_f64("big").unwrap(), 18446744073709551615.0);
        assert_eq!(d.get_f64("f").unwrap(), 21.5);
        assert_eq!(d.get("n"), Some(&Bson::Null));
        let x = d.get_document("\u{FF04}x").unwrap();
        assert_eq!(
            x.get_array("a\u{FF0E}b").unwrap(),
            &vec![Bson::Boolean(true), Bson::String("s".into())]
        );
        assert!(document("x", b"[1]").is_err());
        assert!(document("x", b"{").is_err());
    }

    #[test]
    fn keys_convert_as_text_or_binary() {
        let kv = |k: &[u8], v: &[u8]| KeyValue {
            key: k.to_vec().into(),
            value: v.to_vec().into(),
            create_revision: 2,
            mod_revision: 3,
            version: 1,
            lease: 0,
        };
        let d = super::kv(&kv(b"a/b", b"hello"));
        assert_eq!(d.get_str("_id").unwrap(), "a/b");
        assert_eq!(d.get_str("value").unwrap(), "hello");
        assert_eq!(d.get_i64("mod_revision").unwrap(), 3);
        let d = super::kv(&kv(b"\xff", b"\x00\xfe"));
        assert!(matches!(d.get("_id"), Some(Bson::Binary(_))));
        assert!(matches!(d.get("value"), Some(Bson::Binary(_))));
    }

    #[test]
    fn the_hash_ignores_field_order_and_integer_width_only() {
        let a = doc! { "_id": "x", "n": 1_i64, "m": { "b": 2_i64, "a": [1_i64, "s"] } };
        let same = doc! { "m": { "a": [1_i32, "s"], "b": 2_i32 }, "_id": "x", "n": 1_i32 };
        assert_eq!(canonical_hash(&a), canonical_hash(&same));
        for other in [
            doc! { "_id": "x", "n": 2_i64, "m": { "b": 2_i64, "a": [1_i64, "s"] } },
            doc! { "_id": "x", "n": 1.0, "m": { "b": 2_i64, "a": [1_i64, "s"] } },
            doc! { "_id": "x", "n": 1_i64, "m": { "b": 2_i64, "a": ["s", 1_i64] } },
            doc! { "_id": "x", "n": 1_i64, "m": { "b": 2_i64 } },
            doc! { "_id": "x", "n": 1_i64, "m": { "b": 2_i64, "a": [1_i64, "s"] }, "extra": 0 },
        ] {
            assert_ne!(canonical_hash(&a), canonical_hash(&other), "{other}");
        }
    }
}

//! Device topics and payloads: what an MQTT message means, decided from its
//! bytes alone, so that every server reaches the same answer.
//!
//! Topic layout (seed 000): `/${host}/${zone}/${class}/${id}/${post_type}/${data...}`.
//! Every level is non-empty; `host` may be a hostname or a UUID; `id` may be
//! a placeholder but is kept as given. Two post types are reserved:
//! `cmd` (commands utopia publishes to a device; never ingested) and
//! `reply` (a device's answer to a command: `.../reply/${command_id}`).
//!
//! Payload rules, in order:
//! 1. empty: JSON `null`;
//! 2. UTF-8 text without control characters (tab, CR and LF allowed) that
//!    parses as JSON: that value (`21.5`, `true`, `"on"`, `{"a":1}`);
//! 3. such text starting with `{` or `[` that does not parse: rejected as
//!    invalid JSON;
//! 4. any other such text: a string scalar (`on`, `21.5 C`);
//! 5. anything else: one CBOR data item (nothing after it), converted to
//!    JSON — map keys become strings, byte strings become hex strings, tags
//!    are dropped; not CBOR: rejected.
//!
//! A JSON or CBOR value nested deeper than `limits.json_depth_max` is
//! rejected (`too_deep`) before it is parsed further: depth is counted on
//! the text, and CBOR conversion stops at the limit (a CBOR tag counts as a
//! level), so no input recurses deeper than that.

use serde_json::{Map, Number, Value};

/// Longest topic accepted, in bytes.
pub const TOPIC_BYTES_MAX: usize = 1024;
/// Longest topic level, in bytes.
pub const LEVEL_BYTES_MAX: usize = 256;
/// Most `${data}` levels after the post type: the most path segments a
/// document takes.
pub const DATA_LEVELS_MAX: usize = utopia_storage::apply::bounds::DOCUMENT_PATH_SEGMENTS_MAX;

/// The parts of a device topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopic<'a> {
    pub host: &'a str,
    pub zone: &'a str,
    pub class: &'a str,
    pub device_id: &'a str,
    pub post_type: &'a str,
    pub path: Vec<&'a str>,
}

impl DeviceTopic<'_> {
    /// The device's document id (and the key its owner is chosen by).
    pub fn device(&self) -> String {
        utopia_storage::apply::device_doc_id(self.host, self.class, self.device_id)
    }
}

/// Why a message was not ingested; `reason()` names the counter label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMessage {
    #[error("topic {0:?} has too few levels; expected /host/zone/class/id/post_type[/data...]")]
    TooFewLevels(String),
    #[error("topic {topic:?}: {why}")]
    BadTopic { topic: String, why: String },
    #[error("payload of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("payload is not valid JSON: {0}")]
    BadJson(String),
    #[error("payload is nested more than {max} levels deep (json_depth_max = {max})")]
    TooDeep { max: usize },
    #[error("payload is neither UTF-8 text nor CBOR: {0}")]
    NotTextOrCbor(String),
    #[error("reply topic must end in /reply/COMMAND_ID, found {0:?}")]
    BadReply(String),
}

impl BadMessage {
    pub fn reason(&self) -> &'static str {
        match self {
            BadMessage::TooFewLevels(_) => "topic_too_few_levels",
            BadMessage::BadTopic { .. } => "bad_topic",
            BadMessage::TooLarge { .. } => "payload_too_large",
            BadMessage::BadJson(_) => "bad_json",
            BadMessage::TooDeep { .. } => "too_deep",
            BadMessage::NotTextOrCbor(_) => "bad_payload",
            BadMessage::BadReply(_) => "bad_reply",
        }
    }
}

/// A topic cut to 120 bytes (on a character boundary), for messages.
pub fn shown(topic: &str) -> String {
    let mut end = topic.len().min(120);
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    topic[..end].to_string()
}

/// Splits a device topic into its parts.
pub fn parse_topic(topic: &str) -> Result<DeviceTopic<'_>, BadMessage> {
    let bad = |why: &str| BadMessage::BadTopic {
        topic: shown(topic),
        why: why.to_string(),
    };
    if topic.len() > TOPIC_BYTES_MAX {
        return Err(bad(&format!("longer than {TOPIC_BYTES_MAX} bytes")));
    }
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(bad("must start with '/'"));
    };
    let levels: Vec<&str> = rest.split('/').collect();
    if levels.len() < 5 {
        return Err(BadMessage::TooFewLevels(shown(topic)));
    }
    if levels.len() > 5 + DATA_LEVELS_MAX {
        return Err(bad(&format!("more than {DATA_LEVELS_MAX} data levels")));
    }
    for level in &levels {
        if level.is_empty() {
            return Err(bad("empty level"));
        }
        if level.len() > LEVEL_BYTES_MAX {
            return Err(bad(&format!(
                "a level is longer than {LEVEL_BYTES_MAX} bytes"
            )));
        }
        if level.contains(['+', '#', '\0']) {
            return Err(bad("a level contains '+', '#' or NUL"));
        }
    }
    Ok(DeviceTopic {
        host: levels[0],
        zone: levels[1],
        class: levels[2],
        device_id: levels[3],
        post_type: levels[4],
        path: levels[5..].to_vec(),
    })
}

fn is_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
    {
        return None;
    }
    Some(text)
}

/// Decodes a payload by the rules in the module documentation: at most
/// `max` bytes, nested at most `depth_max` levels.
pub fn decode_payload(payload: &[u8], max: usize, depth_max: usize) -> Result<Value, BadMessage> {
    if payload.len() > max {
        return Err(BadMessage::TooLarge {
            len: payload.len(),
            max,
        });
    }
    if payload.is_empty() {
        return Ok(Value::Null);
    }
    if let Some(text) = is_text(payload) {
        let trimmed = text.trim();
        // Only text that starts with a bracket can be a nested value (any
        // other JSON text is a scalar, and anything else a string).
        if trimmed.starts_with(['{', '['])
            && utopia_storage::apply::bounds::json_text_depth(trimmed.as_bytes(), depth_max)
                > depth_max
        {
            return Err(BadMessage::TooDeep { max: depth_max });
        }
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => Ok(v),
            Err(e) if trimmed.starts_with(['{', '[']) => Err(BadMessage::BadJson(e.to_string())),
            Err(_) => Ok(Value::String(text.to_string())),
        };
    }
    let mut reader = payload;
    let item: ciborium::Value = ciborium::from_reader(&mut reader)
        .map_err(|e| BadMessage::NotTextOrCbor(format!("CBOR: {e}")))?;
    if !reader.is_empty() {
        return Err(BadMessage::NotTextOrCbor(format!(
            "{} bytes after the CBOR item",
            reader.len()
        )));
    }
    cbor_to_json(item, 0, depth_max)
}

/// The JSON text a payload is logged as: the value [`decode_payload`]
/// decodes it to, written out. An object or array that came as JSON text
/// is logged as it came (trimmed) once it has decoded: every replica
/// parses the logged text again when applying it, to the same value, so
/// writing the value out anew would only cost time.
pub fn payload_json(payload: &[u8], max: usize, depth_max: usize) -> Result<String, BadMessage> {
    let value = decode_payload(payload, max, depth_max)?;
    if matches!(value, Value::Object(_) | Value::Array(_)) {
        if let Some(text) = is_text(payload) {
            return Ok(text.trim().to_string());
        }
    }
    Ok(value.to_string())
}

/// Converts a CBOR item inside `depth` containers (or tags).
fn cbor_to_json(v: ciborium::Value, depth: usize, depth_max: usize) -> Result<Value, BadMessage> {
    use ciborium::Value as C;
    if matches!(v, C::Array(_) | C::Map(_) | C::Tag(..)) && depth >= depth_max {
        return Err(BadMessage::TooDeep { max: depth_max });
    }
    Ok(match v {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => {
            let i = i128::from(i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(n), _) => Value::Number(n.into()),
                (_, Ok(n)) => Value::Number(n.into()),
                _ => Value::String(i.to_string()),
            }
        }
        C::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        C::Text(s) => Value::String(s),
        C::Bytes(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        C::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|x| cbor_to_json(x, depth + 1, depth_max))
                .collect::<Result<_, _>>()?,
        ),
        C::Map(pairs) => {
            let mut m = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    C::Text(s) => s,
                    other => match cbor_to_json(other, depth + 1, depth_max)? {
                        Value::String(s) => s,
                        j => j.to_string(),
                    },
                };
                m.insert(key, cbor_to_json(v, depth + 1, depth_max)?);
            }
            Value::Object(m)
        }
        C::Tag(_, inner) => cbor_to_json(*inner, depth + 1, depth_max)?,
        _ => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_parse_into_their_parts() {
        let t = parse_topic("/h1/kitchen/thermo/7/temp").unwrap();
        assert_eq!(
            (t.host, t.zone, t.class, t.device_id, t.post_type),
            ("h1", "kitchen", "thermo", "7", "temp")
        );
        assert!(t.path.is_empty());
        assert_eq!(t.device(), "h1/thermo/7");
        let t = parse_topic("/h1/z/c/0/status/a/b").unwrap();
        assert_eq!(t.path, vec!["a", "b"]);
    }

    #[test]
    fn bad_topics_are_refused_with_a_reason() {
        for (topic, reason) in [
            ("/h/z/c/1", "topic_too_few_levels"),
            ("/", "topic_too_few_levels"),
            ("h/z/c/1/p", "bad_topic"),
            ("/h//c/1/p", "bad_topic"),
            ("/h/z/c/1/p/", "bad_topic"),
            ("/h/z/c/1/p/a+b", "bad_topic"),
        ] {
            assert_eq!(parse_topic(topic).unwrap_err().reason(), reason, "{topic}");
        }
        let long = format!("/h/z/c/1/p/{}", "x".repeat(LEVEL_BYTES_MAX + 1));
        assert_eq!(parse_topic(&long).unwrap_err().reason(), "bad_topic");
        let deep = format!("/h/z/c/1/p{}", "/d".repeat(DATA_LEVELS_MAX + 1));
        assert_eq!(parse_topic(&deep).unwrap_err().reason(), "bad_topic");
    }

    #[test]
    fn payloads_decode_by_the_documented_rules() {
        let d = |b: &[u8]| decode_payload(b, 1024, 32);
        assert_eq!(d(b"").unwrap(), Value::Null);
        assert_eq!(d(b"21.5").unwrap(), json!(21.5));
        assert_eq!(d(b" true\n").unwrap(), json!(true));
        assert_eq!(d(br#"{"a":[1,2]}"#).unwrap(), json!({"a":[1,2]}));
        assert_eq!(d(b"on").unwrap(), json!("on"));
        assert_eq!(d(b"21.5 C").unwrap(), json!("21.5 C"));
        assert_eq!(d(b"{\"a\":").unwrap_err().reason(), "bad_json");
        assert_eq!(d(b"[1,").unwrap_err().reason(), "bad_json");
        assert_eq!(d(&[b'x'; 2000]).unwrap_err().reason(), "payload_too_large");
    }

    #[test]
    fn a_payload_is_logged_as_json_text_of_the_value_it_decodes_to() {
        let mut cbor = Vec::new();
        let item = ciborium::Value::Map(vec![(
            ciborium::Value::Text("a".into()),
            ciborium::Value::Array(vec![1.into(), ciborium::Value::Float(2.5)]),
        )]);
        ciborium::into_writer(&item, &mut cbor).unwrap();
        let payloads: [&[u8]; 9] = [
            b"",
            b"21.5",
            b" true\n",
            b"on",
            br#"{"a":[1,2]}"#,
            b" { \"a\" : [ 1 , 2.50 ], \"a\": {\"b\": \"\\u00e9\"} }\r\n",
            b"[1e3, -0, 18446744073709551615, \"x\"]",
            &cbor,
            &[0x01],
        ];
        for p in payloads {
            let text = payload_json(p, 1024, 32).unwrap();
            let value = decode_payload(p, 1024, 32).unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                value,
                "{p:?}"
            );
        }
        // Objects and arrays sent as text are logged as sent, trimmed.
        assert_eq!(
            payload_json(b" {\"a\": [1, 2]}\n", 1024, 32).unwrap(),
            r#"{"a": [1, 2]}"#
        );
        assert_eq!(payload_json(b"on", 1024, 32).unwrap(), r#""on""#);
        for bad in [&b"{\"a\":"[..], b"[1,", &[b'['; 40]] {
            assert_eq!(
                payload_json(bad, 1024, 32).unwrap_err().reason(),
                decode_payload(bad, 1024, 32).unwrap_err().reason()
            );
        }
    }

    #[test]
    fn payloads_nested_too_deep_are_refused_before_parsing() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let d = |b: &[u8]| decode_payload(b, 1 << 20, 32);
        assert_eq!(depth_of(&d(nested(32).as_bytes()).unwrap()), 32);
        for n in [33, 126, 100_000] {
            let err = d(nested(n).as_bytes()).unwrap_err();
            assert_eq!(err.reason(), "too_deep", "{n}: {err}");
            assert!(err.to_string().contains("json_depth_max = 32"), "{err}");
        }
        // Objects count as arrays do; brackets inside strings do not count.
        let objects = format!("{}{}", r#"{"a":"#.repeat(33), "}".repeat(33));
        assert_eq!(d(objects.as_bytes()).unwrap_err().reason(), "too_deep");
        assert_eq!(
            d(br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#).unwrap()["a"]
                .as_str()
                .unwrap()
                .len(),
            40
        );
        // The same in CBOR: 32 nested arrays convert, 33 do not.
        let cbor = |n: usize| {
            std::iter::repeat_n(0x81u8, n)
                .chain([0x01])
                .collect::<Vec<u8>>()
        };
        assert_eq!(depth_of(&d(&cbor(32)).unwrap()), 32);
        assert_eq!(d(&cbor(33)).unwrap_err().reason(), "too_deep");
        // A tag counts as a level.
        let tagged: Vec<u8> = std::iter::repeat_n(0xc6u8, 40).chain([0x01]).collect();
        assert_eq!(d(&tagged).unwrap_err().reason(), "too_deep");
    }

    fn depth_of(v: &Value) -> usize {
        utopia_storage::apply::bounds::json_value_depth(v, usize::MAX)
    }

    #[test]
    fn cbor_payloads_become_json() {
        let mut buf = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![
                (
                    ciborium::Value::Text("t".into()),
                    ciborium::Value::Float(21.5),
                ),
                (
                    ciborium::Value::Integer(1.into()),
                    ciborium::Value::Bytes(vec![0xde, 0xad]),
                ),
            ]),
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            decode_payload(&buf, 1024, 32).unwrap(),
            json!({"t": 21.5, "1": "dead"})
        );
        // A CBOR small integer is a control character, not text.
        assert_eq!(decode_payload(&[0x01], 1024, 32).unwrap(), json!(1));
    }

    #[test]
    fn garbage_is_refused_never_a_panic() {
        assert_eq!(
            decode_payload(&[0xff, 0xfe, 0x00, 0x80], 1024, 32)
                .unwrap_err()
                .reason(),
            "bad_payload"
        );
        // Two CBOR items.
        assert_eq!(
            decode_payload(&[0x01, 0x02], 1024, 32)
                .unwrap_err()
                .reason(),
            "bad_payload"
        );
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..3000usize {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode_payload(&bytes, 1024, 32);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_topic(s);
            }
        }
        // Deep CBOR nesting is bounded.
        let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 1000).chain([0x01]).collect();
        assert!(decode_payload(&deep, 4096, 32).is_err());
    }
}

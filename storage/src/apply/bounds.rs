//! Bounds on what an event may put into a document, and the checks the
//! applier and every entrance (MQTT, gRPC) share.
//!
//! The applier enforces the constants here on every replica alike, whatever
//! a node's settings say: a committed entry may come from an older build or
//! a forwarded proposal, and a limit that changes what apply does must be
//! identical everywhere. The settings `limits.json_depth_max` (at most
//! [`JSON_DEPTH_MAX`]) only tighten the entrances. `limits.document_bytes_max`
//! travels in the event ([`utopia_raft::event::Request::document_bytes_max`]),
//! so every replica applies the proposer's value, capped by
//! [`DOCUMENT_BYTES_MAX`].
//!
//! Why these bounds are enough: a stored document is at most
//! `DOCUMENT_NESTING_MAX` levels deep, under serde_json's recursion limit
//! (128), so every stored document can be decoded again; and nothing ever
//! builds, encodes or drops a JSON tree deeper than that, so no recursion
//! over a document can run out of stack.
//!
//! Depth counts containers: a scalar is 0 deep, `[]` and `{}` are 1,
//! `{"a":[1]}` is 2. [`json_text_depth`] counts it on the text, without
//! parsing and without recursion, so a 100,000-deep input is measured (and
//! refused) in one pass.

use serde_json::Value;

/// Deepest JSON value (payload, report, command, reply) an event may carry
/// into a document.
pub const JSON_DEPTH_MAX: usize = 64;
/// Most path segments under a device's post type (`data[post_type][path...]`).
pub const DOCUMENT_PATH_SEGMENTS_MAX: usize = 16;
/// Largest document any event may leave behind, in bytes (JSON text). The
/// event's own `document_bytes_max` may only lower it.
pub const DOCUMENT_BYTES_MAX: u64 = 16 << 20;

/// The deepest a stored document can be: the document object, `data`, the
/// post type, the path, then the value (a command's reply sits at
/// `commands[id].reply`, one level less).
pub const DOCUMENT_NESTING_MAX: usize = 3 + DOCUMENT_PATH_SEGMENTS_MAX + JSON_DEPTH_MAX;

// serde_json refuses to decode anything nested 128 deep or more: every
// document the applier writes must stay decodable.
const _: () = assert!(DOCUMENT_NESTING_MAX < 128);

/// The nesting depth of JSON text, counted on the bytes: brackets and braces
/// outside strings. Stops counting once past `stop_above` (the result is
/// then `stop_above + 1`), so a hostile input costs one pass at most.
/// Text that is not JSON gets some depth; whether it parses is for the
/// parser to say.
pub fn json_text_depth(text: &[u8], stop_above: usize) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > stop_above {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The nesting depth of a JSON value, without recursion; stops counting
/// once past `stop_above`.
pub fn json_value_depth(value: &Value, stop_above: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(m) => Box::new(m.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        if deepest > stop_above {
            return deepest;
        }
        stack.extend(children.map(|c| (c, depth)));
    }
    deepest
}

/// Checks JSON text against a depth limit: the error says how deep it is
/// (at least) and what the limit is.
pub fn check_json_depth(text: &str, max: usize) -> Result<(), String> {
    let depth = json_text_depth(text.as_bytes(), max);
    if depth > max {
        return Err(format!(
            "JSON is nested more than {max} levels deep (the limit is {max})"
        ));
    }
    Ok(())
}

/// Checks a document path's segment count.
pub fn check_path_segments(segments: usize) -> Result<(), String> {
    if segments > DOCUMENT_PATH_SEGMENTS_MAX {
        return Err(format!(
            "path has {segments} segments; at most {DOCUMENT_PATH_SEGMENTS_MAX} are allowed"
        ));
    }
    Ok(())
}

/// The length of a JSON value's text as the store writes it, without
/// building the text.
pub fn json_encoded_bytes<T: serde::Serialize + ?Sized>(value: &T) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail, and serde_json writes a value of
    // bounded depth (the applier checks depth before building one).
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_depth_counts_containers_outside_strings() {
        for (text, depth) in [
            ("", 0),
            ("21.5", 0),
            ("\"[[[\"", 0),
            ("[]", 1),
            ("{}", 1),
            (r#"{"a":[1]}"#, 2),
            (r#"{"a":"]]]","b":[[{"c":"\"[["}]]}"#, 4),
            ("[[],[[]],[]]", 3),
            (r#"["\\", [1]]"#, 2),
        ] {
            assert_eq!(json_text_depth(text.as_bytes(), 100), depth, "{text}");
        }
    }

    #[test]
    fn text_depth_stops_early_and_never_recurses() {
        let deep = "[".repeat(1_000_000);
        assert_eq!(json_text_depth(deep.as_bytes(), 32), 33);
        assert!(check_json_depth(&deep, 32).is_err());
        let at = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(check_json_depth(&at, 32).is_ok());
        let over = format!("{}{}", "[".repeat(33), "]".repeat(33));
        let err = check_json_depth(&over, 32).unwrap_err();
        assert!(err.contains("32"), "{err}");
    }

    #[test]
    fn value_depth_matches_text_depth() {
        for v in [
            json!(1),
            json!([]),
            json!({"a": [1, {"b": {}}], "c": 2}),
            json!([[[[[]]]], 1, [2]]),
        ] {
            let text = v.to_string();
            assert_eq!(
                json_value_depth(&v, 100),
                json_text_depth(text.as_bytes(), 100),
                "{text}"
            );
        }
    }

    #[test]
    fn encoded_bytes_is_the_text_length() {
        for v in [json!(null), json!({"a": [1, "x\"y"], "é": 2.5})] {
            assert_eq!(
                json_encoded_bytes(&v),
                serde_json::to_vec(&v).unwrap().len() as u64
            );
        }
    }

    #[test]
    fn path_segments_are_bounded() {
        assert!(check_path_segments(DOCUMENT_PATH_SEGMENTS_MAX).is_ok());
        let err = check_path_segments(100_000).unwrap_err();
        assert!(err.contains("100000") && err.contains("16"), "{err}");
    }
}

//! Storing a value at a path inside a device's JSON data, and taking it
//! back: an ingest batch writes each device many times, and an item that is
//! rolled back must leave the document exactly as it found it, without the
//! applier copying the whole document before every write.

use serde_json::{Map, Value};

/// What [`set_path`] replaced, enough to put it back: the entry reached by
/// the first `depth` segments of the path held `before` (`None`: there was
/// no entry; at depth 0, the root itself).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PathUndo {
    depth: usize,
    before: Option<Value>,
}

/// Stores `value` at `path` inside `root`, turning anything in the way into
/// an object, and returns what it replaced.
pub(super) fn set_path(root: &mut Value, path: &[&str], value: Value) -> PathUndo {
    set_at(root, 0, path, value)
}

/// [`set_path`] below `node`, which is `depth` segments deep.
fn set_at(node: &mut Value, depth: usize, path: &[&str], value: Value) -> PathUndo {
    let Some((segment, rest)) = path.split_first() else {
        return PathUndo {
            depth,
            before: Some(std::mem::replace(node, value)),
        };
    };
    match node {
        Value::Object(map) => match map.get_mut(*segment) {
            Some(child) => set_at(child, depth + 1, rest, value),
            None => {
                map.insert((*segment).to_string(), nest(rest, value));
                PathUndo {
                    depth: depth + 1,
                    before: None,
                }
            }
        },
        other => PathUndo {
            depth,
            before: Some(std::mem::replace(other, nest(path, value))),
        },
    }
}

/// Puts back what [`set_path`] with the same `path` replaced, `root` being
/// as that call left it (a root in another shape is left alone).
pub(super) fn undo_path(root: &mut Value, path: &[&str], undo: PathUndo) {
    let PathUndo { depth, before } = undo;
    let Some(parent_depth) = depth.checked_sub(1) else {
        if let Some(before) = before {
            *root = before;
        }
        return;
    };
    let mut node = root;
    for segment in path.iter().take(parent_depth) {
        match node {
            Value::Object(map) => match map.get_mut(*segment) {
                Some(child) => node = child,
                None => return,
            },
            _ => return,
        }
    }
    let (Value::Object(map), Some(segment)) = (node, path.get(parent_depth)) else {
        return;
    };
    match before {
        Some(v) => map.insert((*segment).to_string(), v),
        None => map.remove(*segment),
    };
}

/// `value` inside one object per segment of `path`, outermost first.
fn nest(path: &[&str], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, segment| {
        Value::Object(Map::from_iter([((*segment).to_string(), inner)]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sets `value` at `path` in `before`: checks the result, then that the
    /// undo gives `before` back.
    fn round_trip(before: Value, path: &[&str], value: Value, after: Value) {
        let mut doc = before.clone();
        let undo = set_path(&mut doc, path, value);
        assert_eq!(doc, after, "set {path:?} in {before}");
        undo_path(&mut doc, path, undo);
        assert_eq!(doc, before, "undo {path:?}");
    }

    #[test]
    fn a_write_is_taken_back_exactly_whatever_stood_in_its_way() {
        // The leaf replaced.
        round_trip(
            json!({"v": 1, "w": 2}),
            &["v"],
            json!(3),
            json!({"v": 3, "w": 2}),
        );
        round_trip(
            json!({"v": {"a": 1, "b": 2}}),
            &["v", "a"],
            json!({"x": [1]}),
            json!({"v": {"a": {"x": [1]}, "b": 2}}),
        );
        // New entries: the objects made on the way go too.
        round_trip(json!({}), &["v"], json!(1), json!({"v": 1}));
        round_trip(
            json!({"v": {"a": 1}}),
            &["v", "b", "c"],
            json!(true),
            json!({"v": {"a": 1, "b": {"c": true}}}),
        );
        // A value in the way becomes an object, and comes back.
        round_trip(
            json!({"v": 5}),
            &["v", "a"],
            json!(1),
            json!({"v": {"a": 1}}),
        );
        round_trip(
            json!({"v": {"a": "text"}}),
            &["v", "a", "b"],
            json!(null),
            json!({"v": {"a": {"b": null}}}),
        );
        // A root that is not an object.
        round_trip(json!(7), &["v", "a"], json!(1), json!({"v": {"a": 1}}));
        round_trip(json!({"v": 1}), &[], json!(2), json!(2));
    }

    #[test]
    fn writes_are_taken_back_newest_first() {
        let before = json!({"v": {"a": 1}});
        let mut doc = before.clone();
        let paths: [&[&str]; 4] = [&["v", "a"], &["v", "b", "c"], &["v"], &["w", "x"]];
        let mut undos = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            undos.push(set_path(&mut doc, path, json!(i)));
        }
        assert_eq!(doc, json!({"v": 2, "w": {"x": 3}}));
        for (path, undo) in paths.iter().zip(undos).rev() {
            undo_path(&mut doc, path, undo);
        }
        assert_eq!(doc, before);
    }
}

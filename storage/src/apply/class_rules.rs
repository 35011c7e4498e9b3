//! Typing device data and commands by their class: the accepted
//! configuration of a device class ([`ClassRulesRecord`], written when a
//! version of the class is accepted) says which post types the class
//! publishes, which commands it accepts, and the type and bounds of each
//! value.
//!
//! A class with a record is checked: a post type or command it does not
//! declare, a value of another type, out of its range, longer than its
//! length or not one of its values is refused with a reason naming the
//! class, its version, the post type and the rule. A class without a record
//! keeps the untyped behaviour, unless [`Quotas::require_class`] says every
//! class needs one.
//!
//! Everything here is pure and decided from the replicated state alone, the
//! same on every replica. The record of a class is read once per batch: the
//! applier keeps what it read in a small cache, emptied whenever a class
//! record is written or an event rolled back.
//!
//! [`Quotas::require_class`]: utopia_raft::event::Quotas::require_class

use std::sync::Arc;

use serde_json::{Map, Number, Value};
use utopia_raft::event::{CommandRule, FieldRule, FieldRuleKind};

use super::ingest::ClassRulesRecord;
use super::{Applier, StateRead};
use crate::keys::{self, Cf};
use crate::StoreError;

/// Characters of a refused value shown in its reason, at most.
const SHOWN_VALUE_CHARS_MAX: usize = 64;
/// Classes whose records an applier keeps while applying a batch.
pub(super) const CLASSES_CACHED_MAX: usize = 256;

/// What a class's data or commands are checked against.
pub(super) enum ClassCheck {
    /// The class has no accepted configuration, and none is required.
    Untyped,
    /// The class has an accepted configuration.
    Typed(Arc<ClassRulesRecord>),
    /// The class has none, and one is required: the reason.
    Refused(String),
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// The accepted configuration of `class`, if it has one.
    pub(super) fn class_rules(
        &mut self,
        class: &str,
    ) -> Result<Option<Arc<ClassRulesRecord>>, StoreError> {
        if let Some(cached) = self.classes.get(class) {
            return Ok(cached.clone());
        }
        let record: Option<ClassRulesRecord> =
            self.get_dec(Cf::Ingest, &keys::ingest::class_key(class))?;
        let record = record.map(Arc::new);
        if self.classes.len() >= CLASSES_CACHED_MAX {
            self.classes.clear();
        }
        self.classes.insert(class.to_string(), record.clone());
        Ok(record)
    }

    /// How data and commands of `class` are checked.
    pub(super) fn class_check(&mut self, class: &str) -> Result<ClassCheck, StoreError> {
        if let Some(record) = self.class_rules(class)? {
            return Ok(ClassCheck::Typed(record));
        }
        if self.quotas()?.require_class {
            return Ok(ClassCheck::Refused(format!(
                "class {class} has no accepted configuration (configs.require_class)"
            )));
        }
        Ok(ClassCheck::Untyped)
    }
}

/// Checks a device's value for `post_type` (at `path` below it) against its
/// class: the value to store (a float rule stores every number as a
/// float), or why it is refused.
pub(super) fn type_post(
    class: &str,
    record: &ClassRulesRecord,
    post_type: &str,
    path: &[String],
    value: Value,
) -> Result<Value, String> {
    let from = || format!("(class {class} v{})", record.version);
    let Some(rule) = record.rules.posts.iter().find(|p| p.name == post_type) else {
        return Err(format!("post type {post_type} is not declared {}", from()));
    };
    if !path.is_empty() {
        if matches!(rule.kind, FieldRuleKind::Object) {
            // Below an object post type, any value.
            return Ok(value);
        }
        return Err(format!(
            "post type {post_type} is {}; a path below it ({}) is only allowed under an object \
             post type {}",
            kind_name(&rule.kind),
            shown_text(&path.join("/")),
            from()
        ));
    }
    type_value(post_type, &rule.kind, value).map_err(|why| format!("{why} {}", from()))
}

/// Checks a command's payload against its class: the command must be
/// declared, the payload an object (or `null`, no fields) whose fields are
/// declared, typed and present where required.
pub(super) fn check_command(
    class: &str,
    record: &ClassRulesRecord,
    command: &str,
    payload: &Value,
) -> Result<(), String> {
    let from = || format!("(class {class} v{})", record.version);
    let Some(rule) = record.rules.commands.iter().find(|c| c.name == command) else {
        return Err(format!("command {command} is not declared {}", from()));
    };
    check_payload(command, rule, payload).map_err(|why| format!("{why} {}", from()))
}

fn check_payload(command: &str, rule: &CommandRule, payload: &Value) -> Result<(), String> {
    let empty = Map::new();
    let fields = match payload {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => {
            return Err(format!(
                "command {command} payload {} is not an object",
                shown(other)
            ))
        }
    };
    // Undeclared fields first, in the payload's (sorted) order, so the
    // reason does not depend on how the rules list them.
    if let Some(name) = fields
        .keys()
        .find(|name| !rule.payload.iter().any(|f| &f.name == *name))
    {
        return Err(format!(
            "command {command} field {} is not declared",
            shown_text(name)
        ));
    }
    for field in &rule.payload {
        match fields.get(&field.name) {
            None if field.required => {
                return Err(format!(
                    "command {command} field {} is required",
                    field.name
                ))
            }
            None => {}
            Some(v) => check_field(command, field, v)?,
        }
    }
    Ok(())
}

fn check_field(command: &str, field: &FieldRule, value: &Value) -> Result<(), String> {
    let what = format!("command {command} field {}", field.name);
    type_value(&what, &field.kind, value.clone()).map(|_| ())
}

/// Checks `value` against `kind`; `what` names it in the reason.
fn type_value(what: &str, kind: &FieldRuleKind, value: Value) -> Result<Value, String> {
    let wrong = |value: &Value| {
        Err(format!(
            "{what} {} is not {}",
            shown(value),
            kind_name(kind)
        ))
    };
    match kind {
        FieldRuleKind::Integer { min, max } => {
            let Value::Number(n) = &value else {
                return wrong(&value);
            };
            if let Some(i) = n.as_i64() {
                if let Some(min) = min.filter(|min| i < *min) {
                    return Err(format!("{what} {i} is below min {min}"));
                }
                if let Some(max) = max.filter(|max| i > *max) {
                    return Err(format!("{what} {i} is above max {max}"));
                }
            } else if let Some(u) = n.as_u64() {
                // Above every i64.
                if let Some(max) = max {
                    return Err(format!("{what} {u} is above max {max}"));
                }
            } else {
                return wrong(&value);
            }
            Ok(value)
        }
        FieldRuleKind::Float { min, max } => {
            let Some(x) = value.as_f64() else {
                return wrong(&value);
            };
            if let Some(min) = min.filter(|min| x < *min) {
                return Err(format!("{what} {} is below min {min}", shown(&value)));
            }
            if let Some(max) = max.filter(|max| x > *max) {
                return Err(format!("{what} {} is above max {max}", shown(&value)));
            }
            // JSON numbers are finite, so this is always a number.
            match Number::from_f64(x) {
                Some(n) => Ok(Value::Number(n)),
                None => wrong(&value),
            }
        }
        FieldRuleKind::Boolean => match value {
            Value::Bool(_) => Ok(value),
            _ => wrong(&value),
        },
        FieldRuleKind::String { length_max } => {
            let Value::String(s) = &value else {
                return wrong(&value);
            };
            if let Some(max) = length_max {
                let chars = s.chars().count();
                if chars > *max as usize {
                    return Err(format!(
                        "{what} is {chars} characters long, above length_max {max}"
                    ));
                }
            }
            Ok(value)
        }
        FieldRuleKind::Enum { values } => match &value {
            Value::String(s) if values.iter().any(|v| v == s) => Ok(value),
            Value::String(s) => Err(format!(
                "{what} {} is not one of {}",
                shown_text(&format!("{s:?}")),
                shown_text(&values.join(", "))
            )),
            _ => wrong(&value),
        },
        FieldRuleKind::Object => match value {
            Value::Object(_) => Ok(value),
            _ => wrong(&value),
        },
    }
}

/// A rule's type, as a reason names it.
fn kind_name(kind: &FieldRuleKind) -> &'static str {
    match kind {
        FieldRuleKind::Integer { .. } => "an integer",
        FieldRuleKind::Float { .. } => "a float",
        FieldRuleKind::Boolean => "a boolean",
        FieldRuleKind::String { .. } => "a string",
        FieldRuleKind::Enum { .. } => "one of its enum values",
        FieldRuleKind::Object => "an object",
    }
}

/// A value as a reason shows it: its JSON text, cut to a bounded length.
fn shown(value: &Value) -> String {
    shown_text(&value.to_string())
}

fn shown_text(text: &str) -> String {
    match text.char_indices().nth(SHOWN_VALUE_CHARS_MAX) {
        None => text.to_string(),
        Some((at, _)) => format!("{}...", &text[..at]),
    }
}

/// The class of a device document id, `${host}/${class}/${device_id}`.
pub fn device_class(device_doc_id: &str) -> Option<&str> {
    let mut parts = device_doc_id.splitn(3, '/');
    let _host = parts.next()?;
    let class = parts.next()?;
    parts.next()?;
    Some(class)
}

//! A `serde` deserializer over the [`super::libconfig`] tree, so that the
//! settings types declare their names, defaults and checks once, with
//! `derive`.
//!
//! Every value is deserialized with its place in the file: an error from
//! it (a wrong type, a value out of range, an unknown name) reads
//! `file:line: setting "path": message`, the path dotted with `[i]` for
//! list elements (`mqtt.bridges[0].port`). Every setting read is recorded
//! in [`Sources`], so that the checks across settings that run afterwards
//! ([`crate::config::Settings::validate`]) can point at one too.
//!
//! The deserializer is strict, not self-describing: each value must have
//! the type the field asks for (`expected an integer, found a string`),
//! integers are never negative, lists are libconfig lists `( )` (not
//! arrays `[ ]`), and groups are structs. The per-value rules the types
//! cannot express (ranges, non-empty strings, addresses) are the
//! `deserialize_with` functions of [`super::rules`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, DeserializeSeed, Error as _, IntoDeserializer, Visitor};

use super::libconfig::{Setting, Span, Value};
use super::ConfigError;

/// Where each setting's value came from: its line in a file, or a flag.
/// Keyed by the setting's path (`limits.txn_ops_max`, `mqtt.bridges[0]`).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    origins: BTreeMap<String, Origin>,
}

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(Span),
    /// A command-line flag, such as `--peer-advertise`.
    Flag(&'static str),
}

impl Sources {
    /// Records that `flag` set the setting at `path` (over the file).
    pub fn set_by_flag(&mut self, path: &str, flag: &'static str) {
        self.origins.insert(path.to_string(), Origin::Flag(flag));
    }

    /// Where the setting at `path` came from; `None`: its default.
    pub fn origin(&self, path: &str) -> Option<&Origin> {
        self.origins.get(path)
    }

    /// A problem with the setting at `path`: `setting "path": message`, at
    /// the place it was set.
    pub(crate) fn setting_error(&self, path: &str, message: impl fmt::Display) -> ConfigError {
        match self.origin(path) {
            Some(Origin::Flag(flag)) => ConfigError::Flag {
                flag,
                message: message.to_string(),
            },
            _ => self.error(&[path], format!("setting \"{path}\": {message}")),
        }
    }

    /// A problem with several settings, reported at the first of `paths`
    /// that was set (in a file or by a flag).
    pub(crate) fn error(&self, paths: &[&str], message: impl Into<String>) -> ConfigError {
        let message = message.into();
        match paths.iter().find_map(|p| self.origin(p)) {
            Some(Origin::File(span)) => ConfigError::Invalid {
                file: span.file.to_path_buf(),
                line: span.line,
                message,
            },
            Some(Origin::Flag(flag)) => ConfigError::Flag { flag, message },
            // Only settings that were set can contradict each other (the
            // defaults agree); should it happen, the message still says
            // which ones.
            None => ConfigError::Conflict { message },
        }
    }
}

/// Deserializes the top level of a parsed file (`file` names it in
/// errors) into `T`, and tells where each setting came from.
pub fn from_tree<T: DeserializeOwned>(
    tree: &[Setting],
    file: &Path,
) -> Result<(T, Sources), ConfigError> {
    let sources = RefCell::new(Sources::default());
    let top = Span {
        file: file.into(),
        line: 0,
    };
    let de = ValueDe {
        value: Node::Group(tree),
        span: &top,
        path: String::new(),
        sources: &sources,
    };
    let value = T::deserialize(de).map_err(|e| e.at(&top, "").into_config_error())?;
    Ok((value, sources.into_inner()))
}

/// The error of a value being deserialized. It gets its place from the
/// innermost setting it came out of.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    at: Option<(Span, String)>,
}

#[derive(Debug)]
enum Kind {
    /// Said of the setting: `setting "path": message`.
    Message(String),
    /// A name the group does not have.
    UnknownField(&'static [&'static str]),
}

impl Error {
    /// Places the error at `span` and `path` unless a setting inside them
    /// already did.
    fn at(mut self, span: &Span, path: &str) -> Error {
        if self.at.is_none() {
            self.at = Some((span.clone(), path.to_string()));
        }
        self
    }

    /// The error as the file's reader sees it (placed: see [`Error::at`]).
    fn into_config_error(self) -> ConfigError {
        let (span, path) = match self.at {
            Some(at) => at,
            None => (
                Span {
                    file: Path::new("").into(),
                    line: 0,
                },
                String::new(),
            ),
        };
        let message = match self.kind {
            Kind::Message(m) if path.is_empty() => m,
            Kind::Message(m) => format!("setting \"{path}\": {m}"),
            Kind::UnknownField(expected) => format!(
                "unknown setting \"{path}\"; expected one of: {}",
                expected.join(", ")
            ),
        };
        ConfigError::Invalid {
            file: span.file.to_path_buf(),
            line: span.line,
            message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Message(m) => f.write_str(m),
            Kind::UnknownField(expected) => {
                write!(
                    f,
                    "unknown setting; expected one of: {}",
                    expected.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            kind: Kind::Message(msg.to_string()),
            at: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Error::custom(format_args!("expected {exp}, found {unexp}"))
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        Error {
            kind: Kind::UnknownField(expected),
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Error::custom(format_args!("missing \"{field}\""))
    }
}

/// A value to deserialize: a setting's, a list element's, or the top
/// level's (a group without a setting of its own).
#[derive(Clone, Copy)]
enum Node<'a> {
    Value(&'a Value),
    Group(&'a [Setting]),
}

struct ValueDe<'a> {
    value: Node<'a>,
    span: &'a Span,
    /// Empty at the top level.
    path: String,
    sources: &'a RefCell<Sources>,
}

impl<'a> ValueDe<'a> {
    fn type_name(&self) -> &'static str {
        match self.value {
            Node::Value(v) => v.type_name(),
            Node::Group(_) => "a group",
        }
    }

    fn wrong_type(&self, expected: &str) -> Error {
        Error::custom(format_args!(
            "expected {expected}, found {}",
            self.type_name()
        ))
    }

    fn group(&self) -> Option<&'a [Setting]> {
        match self.value {
            Node::Group(g) => Some(g),
            Node::Value(Value::Group(g)) => Some(g),
            Node::Value(_) => None,
        }
    }

    /// The directory relative paths in this setting are resolved against:
    /// the one of the file it is written in (as for `@include`).
    fn resolve(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        match self.span.file.parent() {
            Some(dir) if !p.is_absolute() && !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Node::Value(Value::Int(_)) => self.deserialize_u64(visitor),
            Node::Value(Value::Float(f)) => visitor.visit_f64(*f),
            Node::Value(Value::Bool(b)) => visitor.visit_bool(*b),
            Node::Value(Value::Str(s)) => visitor.visit_str(s),
            Node::Value(Value::List(_)) => self.deserialize_seq(visitor),
            Node::Value(Value::Array(_)) => Err(self.wrong_type("a list")),
            Node::Value(Value::Group(_)) | Node::Group(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Node::Value(Value::Int(i)) => match u64::try_from(*i) {
                Ok(v) => visitor.visit_u64(v),
                Err(_) => Err(Error::custom(format_args!(
                    "must not be negative, found {i}"
                ))),
            },
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Node::Value(Value::Bool(b)) => visitor.visit_bool(*b),
            _ => Err(self.wrong_type("a boolean (true or false)")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Node::Value(Value::Str(s)) => visitor.visit_str(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // A setting that is present is `Some`; an absent one keeps its
        // default.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name != FILE_PATH {
            return visitor.visit_newtype_struct(self);
        }
        match self.value {
            Node::Value(Value::Str(s)) if s.is_empty() => Err(Error::custom("must not be empty")),
            Node::Value(Value::Str(s)) => {
                visitor.visit_string(self.resolve(s).to_string_lossy().into_owned())
            }
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Node::Value(Value::List(items)) => visitor.visit_seq(ListAccess {
                items: items.iter().enumerate(),
                path: &self.path,
                sources: self.sources,
            }),
            _ => Err(self.wrong_type("a list")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.group() {
            Some(settings) => visitor.visit_map(GroupAccess {
                settings: settings.iter(),
                current: None,
                prefix: &self.path,
                sources: self.sources,
            }),
            None => Err(self.wrong_type("a group")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum identifier
    }
}

/// The settings of a group, as a map from name to value.
struct GroupAccess<'a> {
    settings: std::slice::Iter<'a, Setting>,
    /// The setting whose name was just read, with its path.
    current: Option<(&'a Setting, String)>,
    prefix: &'a str,
    sources: &'a RefCell<Sources>,
}

impl<'de> de::MapAccess<'de> for GroupAccess<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(setting) = self.settings.next() else {
            return Ok(None);
        };
        let path = if self.prefix.is_empty() {
            setting.name.clone()
        } else {
            format!("{}.{}", self.prefix, setting.name)
        };
        let key = seed
            .deserialize(setting.name.as_str().into_deserializer())
            .map_err(|e: Error| e.at(&setting.span, &path))?;
        self.current = Some((setting, path));
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((setting, path)) = self.current.take() else {
            return Err(Error::custom("a value without a name"));
        };
        value_seed(seed, &setting.value, &setting.span, path, self.sources)
    }
}

/// The elements of a list, each with its path `{path}[i]`.
struct ListAccess<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, (Value, Span)>>,
    path: &'a str,
    sources: &'a RefCell<Sources>,
}

impl<'de> de::SeqAccess<'de> for ListAccess<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, (value, span))) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.path);
        value_seed(seed, value, span, path, self.sources).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Deserializes one setting or element, recording where it came from and
/// placing its errors there.
fn value_seed<'de, S: DeserializeSeed<'de>>(
    seed: S,
    value: &Value,
    span: &Span,
    path: String,
    sources: &RefCell<Sources>,
) -> Result<S::Value, Error> {
    sources
        .borrow_mut()
        .origins
        .insert(path.clone(), Origin::File(span.clone()));
    let de = ValueDe {
        value: Node::Value(value),
        span,
        path: path.clone(),
        sources,
    };
    seed.deserialize(de).map_err(|e| e.at(span, &path))
}

/// The newtype name that asks this deserializer for a file path resolved
/// against the directory of the file that names it ([`rules::file_path`]).
pub(super) const FILE_PATH: &str = "$utopia::config::FilePath";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules::{file_path, keyword, In, Positive};
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        #[serde(deserialize_with = "In::<2, 9>::de")]
        small: u8,
        #[serde(deserialize_with = "Positive::<100>::de")]
        count: u64,
        #[serde(deserialize_with = "file_path")]
        file: Option<PathBuf>,
        names: Vec<String>,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        on: bool,
    }

    fn de(text: &str) -> Result<(Sample, Sources), String> {
        let file = Path::new("dir/x.conf");
        let tree = super::super::libconfig::parse_str(text, file).unwrap();
        from_tree(&tree, file).map_err(|e| e.to_string())
    }

    #[test]
    fn values_paths_and_places() {
        let (s, sources) = de(
            "small = 9;\ncount = 100;\nfile = \"a.pem\";\nnames = (\"a\",\n \"b\");\ninner = { on = true; };",
        )
        .unwrap();
        assert_eq!(
            s,
            Sample {
                small: 9,
                count: 100,
                file: Some(PathBuf::from("dir/a.pem")),
                names: vec!["a".into(), "b".into()],
                inner: Inner { on: true },
            }
        );
        let line = |p: &str| match sources.origin(p) {
            Some(Origin::File(span)) => span.line,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(
            [
                line("small"),
                line("names[1]"),
                line("inner"),
                line("inner.on")
            ],
            [1, 5, 6, 6]
        );
        assert_eq!(sources.origin("count.x"), None);
        assert_eq!(de("").unwrap().0, Sample::default());
    }

    #[test]
    fn errors() {
        for (text, want) in [
            ("small = 1;", "dir/x.conf:1: setting \"small\": must be between 2 and 9, found 1"),
            ("\ncount = 0;", "dir/x.conf:2: setting \"count\": must be greater than 0"),
            ("count = 101;", "dir/x.conf:1: setting \"count\": must be between 1 and 100, found 101"),
            ("count = -3;", "dir/x.conf:1: setting \"count\": must not be negative, found -3"),
            ("count = 1.5;", "dir/x.conf:1: setting \"count\": expected an integer, found a float"),
            ("file = \"\";", "dir/x.conf:1: setting \"file\": must not be empty"),
            ("names = [\"a\"];", "dir/x.conf:1: setting \"names\": expected a list, found an array"),
            ("names = (\"a\",\n 2);", "dir/x.conf:2: setting \"names[1]\": expected a string, found an integer"),
            ("inner = {\n off = 1; };", "dir/x.conf:2: unknown setting \"inner.off\"; expected one of: on"),
            ("inner = { on = 1; };", "dir/x.conf:1: setting \"inner.on\": expected a boolean (true or false), found an integer"),
            ("inner = ( );", "dir/x.conf:1: setting \"inner\": expected a group, found a list"),
            ("x = 1;", "dir/x.conf:1: unknown setting \"x\"; expected one of: small, count, file, names, inner"),
        ] {
            assert_eq!(de(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn keywords() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Colour {
            Red,
            Blue,
        }
        let words = [("red", Colour::Red), ("blue", Colour::Blue)];
        let one = |s: &str| {
            keyword::<_, Colour>(s.into_deserializer(), "colour", &words)
                .map_err(|e: serde::de::value::Error| e.to_string())
        };
        assert_eq!(one("blue"), Ok(Colour::Blue));
        assert_eq!(
            one("green"),
            Err("unknown colour \"green\"; expected \"red\" or \"blue\"".to_string())
        );
    }
}

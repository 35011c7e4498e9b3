//! The per-value rules of settings, for `#[serde(deserialize_with =
//! "...")]`: ranges, non-empty strings, addresses, file paths, keywords.
//! Each works with any deserializer; with [`super::de`]'s, an error gets the
//! setting's place (`file:line: setting "path": ...`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, Visitor};
use serde::Deserialize;

use super::de::FILE_PATH;

/// An integer in `MIN..=MAX`, converted to the field's type:
/// `deserialize_with = "In::<1, 1000>::de"`.
pub struct In<const MIN: u64, const MAX: u64>;

impl<const MIN: u64, const MAX: u64> In<MIN, MAX> {
    pub fn de<'de, D: de::Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let v = u64::deserialize(d)?;
        if !(MIN..=MAX).contains(&v) {
            return Err(de::Error::custom(format_args!(
                "must be between {MIN} and {MAX}, found {v}"
            )));
        }
        T::try_from(v).map_err(|_| de::Error::custom(format_args!("{v} does not fit")))
    }
}

/// An integer in `1..=MAX`; zero is refused as "must be greater than 0".
pub struct Positive<const MAX: u64>;

impl<const MAX: u64> Positive<MAX> {
    pub fn de<'de, D: de::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = u64::deserialize(d)?;
        if v == 0 {
            return Err(de::Error::custom("must be greater than 0"));
        }
        if v > MAX {
            return Err(de::Error::custom(format_args!(
                "must be between 1 and {MAX}, found {v}"
            )));
        }
        Ok(v)
    }
}

/// A string that is not empty (for `String`, `PathBuf` or an `Option` of
/// either).
pub fn non_empty<'de, D: de::Deserializer<'de>, T: From<String>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(T::from(s))
}

/// A file name, not empty; a relative one is resolved against the
/// directory of the file the setting is written in (as `@include` paths
/// are). For `PathBuf` or `Option<PathBuf>`.
pub fn file_path<'de, D: de::Deserializer<'de>, T: From<PathBuf>>(d: D) -> Result<T, D::Error> {
    struct PathVisitor;
    impl Visitor<'_> for PathVisitor {
        type Value = PathBuf;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<PathBuf, E> {
            Ok(PathBuf::from(s))
        }
    }
    d.deserialize_newtype_struct(FILE_PATH, PathVisitor)
        .map(T::from)
}

/// An `IP:PORT` address; `PORT` is the port of the example in messages.
pub struct Addr<const PORT: u16>;

impl<const PORT: u16> Addr<PORT> {
    /// An address to listen on (required).
    pub fn listen<'de, D: de::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<SocketAddr>() {
            Ok(_) => Ok(s),
            Err(e) => Err(de::Error::custom(format_args!(
                "invalid address {s:?} ({e}); expected IP:PORT such as 127.0.0.1:{PORT}"
            ))),
        }
    }

    /// An address to publish, or `""` for none.
    pub fn advertise<'de, D: de::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<SocketAddr>() {
            Err(e) if !s.is_empty() => Err(de::Error::custom(format_args!(
                "invalid address {s:?} ({e}); expected IP:PORT such as 192.0.2.10:{PORT}, or \"\""
            ))),
            _ => Ok(s),
        }
    }
}

/// A value named by one of the `words` in the file (an enum's spelling):
/// anything else is refused, naming `what` it is and the words.
pub fn keyword<'de, D: de::Deserializer<'de>, T: Copy>(
    d: D,
    what: &str,
    words: &[(&str, T)],
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    if let Some((_, v)) = words.iter().find(|(w, _)| *w == s) {
        return Ok(*v);
    }
    let quoted: Vec<String> = words.iter().map(|(w, _)| format!("{w:?}")).collect();
    let expected = match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(de::Error::custom(format_args!(
        "unknown {what} {s:?}; expected {expected}"
    )))
}

//! XML configuration files (seed 000): device-class configurations and
//! schemas, wrapped in an envelope that names them. Pure functions, no server
//! state: [`validate()`] takes the raw bytes of one file and either returns what
//! utopia uses from it or the first problem with its line and column.
//!
//! - [`schema`]: the XSD files of `schemas/`, embedded in the binaries.
//! - [`validate`](mod@validate): the checks, in order — size bound, UTF-8, no DOCTYPE
//!   (so no entity can be declared, expanded or fetched), well-formedness
//!   and the XSD (libxml2), then the model reader.
//! - [`model`]: what utopia reads after validation (quick-xml): the
//!   [`Envelope`] and the [`ClassConfig`].

pub mod model;
pub mod schema;
pub mod validate;
pub mod vote;

pub use model::{
    read_class, read_envelope, ClassConfig, Command, Envelope, Field, FieldKind, FileType,
};
pub use validate::{validate, Validated, FILE_BYTES_MAX};
pub use vote::{vote, Voter};

/// Why a file is not a valid configuration, and where (1-based line and
/// column, when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub reason: String,
}

impl Issue {
    /// An issue that concerns the whole file (size, reading it).
    pub fn file(reason: impl Into<String>) -> Self {
        Issue {
            line: None,
            column: None,
            reason: reason.into(),
        }
    }

    /// An issue at byte `offset` of `xml`.
    pub fn at(xml: &[u8], offset: usize, reason: impl Into<String>) -> Self {
        let (line, column) = line_column(xml, offset);
        Issue {
            line: Some(line),
            column: Some(column),
            reason: reason.into(),
        }
    }

    /// `FILE:LINE:COL: reason`, `FILE:LINE: reason` or `FILE: reason`.
    pub fn display_for(&self, file: &str) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}: {}", self.reason),
            (Some(l), None) => format!("{file}:{l}: {}", self.reason),
            _ => format!("{file}: {}", self.reason),
        }
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_for("<input>"))
    }
}

/// The 1-based line and column (in characters; a byte that is not UTF-8
/// counts as one) of byte `offset` in `xml`; an offset past the end is the
/// end.
pub fn line_column(xml: &[u8], offset: usize) -> (u32, u32) {
    let before = &xml[..offset.min(xml.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    // Count characters: every byte that is not a UTF-8 continuation byte.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let xml = "ab\ncé<x\n".as_bytes();
        assert_eq!(line_column(xml, 0), (1, 1));
        assert_eq!(line_column(xml, 2), (1, 3));
        assert_eq!(line_column(xml, 3), (2, 1));
        // 'é' is two bytes, one column.
        let lt = xml.iter().position(|&b| b == b'<').unwrap();
        assert_eq!(line_column(xml, lt), (2, 3));
        assert_eq!(line_column(xml, 10_000), (3, 1));
    }

    #[test]
    fn issue_display() {
        let i = Issue {
            line: Some(3),
            column: Some(7),
            reason: "bad".into(),
        };
        assert_eq!(i.display_for("a.xml"), "a.xml:3:7: bad");
        assert_eq!(
            Issue::file("too big").display_for("a.xml"),
            "a.xml: too big"
        );
    }
}

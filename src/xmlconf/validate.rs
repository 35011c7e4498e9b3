//! Validation of one configuration file, from raw bytes to [`Validated`].
//!
//! In order, stopping at the first problem:
//! 1. size: more than the bound is refused before anything parses it;
//! 2. UTF-8: configuration files are UTF-8 (the position of the first bad
//!    byte is reported);
//! 3. no `<!DOCTYPE`: without a DTD no entity can be declared, so nothing
//!    is expanded (billion laughs) or fetched (external entities);
//! 4. well-formedness, by libxml2 with network access off, entity
//!    substitution and DTD loading off and its size limits on;
//! 5. the envelope against `schemas/envelope.xsd`, then a configuration's
//!    `<deviceClass>` against `schemas/device-class.xsd` (libxml2's XSD
//!    validator), or a schema's `<xs:schema>` compiled by libxml2 (with
//!    `xs:include`, `xs:import`, `xs:redefine` and `xs:override` refused, as
//!    they would read other files);
//! 6. the model reader ([`super::model`]), which adds `min <= max`.

use libxml::error::{StructuredError, XmlErrorLevel};
use libxml::parser::{Parser, ParserOptions, XmlParseFailure};
use libxml::schemas::{SchemaParserContext, SchemaValidationContext};
use libxml::tree::{Document, Node};

use super::model::{
    check_standalone_schema, read_class, read_envelope, ClassConfig, Envelope, FileType,
};
use super::schema::{compile, DEVICE_CLASS_XSD, ENVELOPE_XSD};
use super::Issue;

/// The default size bound of a configuration file, in bytes.
pub const FILE_BYTES_MAX: usize = 1024 * 1024;

/// A file that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub enum Validated {
    /// A device-class configuration.
    Config(ClassConfig),
    /// An XML Schema (its envelope; the schema compiled).
    Schema(Envelope),
}

impl Validated {
    pub fn file_type(&self) -> FileType {
        match self {
            Validated::Config(_) => FileType::Config,
            Validated::Schema(_) => FileType::Schema,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Validated::Config(c) => &c.name,
            Validated::Schema(e) => &e.name,
        }
    }

    pub fn version(&self) -> u32 {
        match self {
            Validated::Config(c) => c.version,
            Validated::Schema(e) => e.version,
        }
    }
}

/// Validates the raw bytes of one configuration file (see the module
/// documentation for the checks); `file_bytes_max` is the size bound.
pub fn validate(xml: &[u8], file_bytes_max: usize) -> Result<Validated, Issue> {
    if xml.len() > file_bytes_max {
        return Err(Issue::file(format!(
            "file is {} bytes; the limit is {file_bytes_max} bytes",
            xml.len()
        )));
    }
    if let Err(e) = std::str::from_utf8(xml) {
        return Err(Issue::at(
            xml,
            e.valid_up_to(),
            "not UTF-8: configuration files are UTF-8",
        ));
    }
    if let Some(at) = find(xml, b"<!DOCTYPE") {
        return Err(Issue::at(
            xml,
            at,
            "DOCTYPE is not allowed: configuration files have no DTD and no entities",
        ));
    }
    let doc = parse(xml)?;
    let mut envelope_xsd = compile(ENVELOPE_XSD)?;
    envelope_xsd
        .validate_document(&doc)
        .map_err(|errors| first_issue(&errors, "does not match the envelope schema"))?;
    let envelope = read_envelope(xml)?;
    let payload = doc
        .get_root_element()
        .and_then(|root| root.get_child_elements().into_iter().next())
        .ok_or_else(|| Issue::file("the envelope holds no element"))?;
    match envelope.file_type {
        FileType::Config => {
            let mut class_xsd = compile(DEVICE_CLASS_XSD)?;
            class_xsd
                .validate_node(&payload)
                .map_err(|errors| first_issue(&errors, "does not match the device-class schema"))?;
            Ok(Validated::Config(read_class(xml)?))
        }
        FileType::Schema => {
            check_standalone_schema(xml)?;
            compile_schema(&payload)?;
            Ok(Validated::Schema(envelope))
        }
    }
}

/// Parses with libxml2: no recovery, no network, no entity substitution, no
/// DTD loading, libxml2's default limits.
fn parse(xml: &[u8]) -> Result<Document, Issue> {
    let options = ParserOptions {
        recover: false,
        no_def_dtd: true,
        no_error: true,
        no_warning: true,
        no_net: true,
        huge: false,
        ..ParserOptions::default()
    };
    match Parser::default().parse_string_with_diagnostics(xml, options) {
        Ok((doc, _warnings)) => Ok(doc),
        Err(XmlParseFailure::ParseFailed(errors)) => Err(first_issue(&errors, "malformed XML")),
        Err(e) => Err(Issue::file(format!("malformed XML: {e:?}"))),
    }
}

/// Compiles an `xs:schema` payload with libxml2 (its line numbers are those
/// of the file); [`check_standalone_schema`] has refused what would make the
/// compiler read other files.
fn compile_schema(payload: &Node) -> Result<(), Issue> {
    let doc = Document::dup_node_into_new_doc(payload)
        .map_err(|()| Issue::file("cannot copy the schema out of the envelope"))?;
    let mut parser = SchemaParserContext::from_document(&doc);
    SchemaValidationContext::from_parser(&mut parser)
        .map(drop)
        .map_err(|errors| first_issue(&errors, "the schema does not compile"))
}

/// The first error (or the first diagnostic) as an [`Issue`]; `fallback`
/// when libxml2 gave no message.
fn first_issue(errors: &[StructuredError], fallback: &str) -> Issue {
    let first = errors
        .iter()
        .find(|e| matches!(e.level, XmlErrorLevel::Error | XmlErrorLevel::Fatal))
        .or_else(|| errors.first());
    let Some(e) = first else {
        return Issue::file(fallback);
    };
    let reason = e
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or(fallback);
    let positive = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|&v| v > 0);
    Issue {
        line: positive(e.line),
        column: positive(e.col),
        reason: reason.to_owned(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

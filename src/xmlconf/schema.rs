//! The XSD files of `schemas/`, embedded in the binaries so that validation
//! needs no file at run time, and their compilation with libxml2.

use libxml::schemas::{SchemaParserContext, SchemaValidationContext};

use super::Issue;

/// The namespace of the envelope and of device-class configurations.
pub const NAMESPACE: &str = "urn:utopia:config:1";

/// The namespace of XML Schema (the payload of `type="schema"` files).
pub const XSD_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema";

/// `schemas/envelope.xsd`: type (config or schema), name, version, and one
/// payload element.
pub const ENVELOPE_XSD: &str = include_str!("../../schemas/envelope.xsd");

/// `schemas/device-class.xsd`: the `deviceClass` payload of a configuration.
pub const DEVICE_CLASS_XSD: &str = include_str!("../../schemas/device-class.xsd");

/// Compiles one of the embedded schemas into a validation context. The
/// embedded schemas have no `xs:include` or `xs:import`, so compiling them
/// reads no file and no URL.
pub fn compile(xsd: &str) -> Result<SchemaValidationContext, Issue> {
    let mut parser = SchemaParserContext::from_buffer(xsd.as_bytes());
    SchemaValidationContext::from_parser(&mut parser).map_err(|errors| {
        let reason = errors
            .iter()
            .filter_map(|e| e.message.as_deref())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        Issue::file(format!("embedded schema does not compile: {reason}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schemas_compile() {
        compile(ENVELOPE_XSD).unwrap();
        compile(DEVICE_CLASS_XSD).unwrap();
    }

    #[test]
    fn embedded_schemas_use_the_namespace_and_load_nothing() {
        for xsd in [ENVELOPE_XSD, DEVICE_CLASS_XSD] {
            assert!(xsd.contains(&format!("targetNamespace=\"{NAMESPACE}\"")));
            assert!(!xsd.contains("xs:include") && !xsd.contains("xs:import"));
        }
    }
}

use super::*;

fn example(name: &str) -> Vec<u8> {
    let path = format!("{}/schemas/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn invalid(xml: &[u8]) -> Issue {
    match validate(xml, FILE_BYTES_MAX) {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn valid_examples() {
    let v = validate(&example("thermostat.xml"), FILE_BYTES_MAX).unwrap();
    assert_eq!(
        (v.file_type(), v.name(), v.version()),
        (FileType::Config, "thermostat", 3)
    );
    match v {
        Validated::Config(c) => assert_eq!(c.posts.len(), 6),
        other => panic!("{other:?}"),
    }
    let v = validate(&example("minimal.xml"), FILE_BYTES_MAX).unwrap();
    assert_eq!((v.name(), v.version()), ("door-sensor", 1));
    let v = validate(&example("schema-file.xml"), FILE_BYTES_MAX).unwrap();
    assert_eq!(v.file_type(), FileType::Schema);
}

#[test]
fn schema_violations_carry_the_validators_reason_and_line() {
    let e = invalid(&example("invalid-range-type.xml"));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.reason.contains("'cold'"), "{e}");
    let e = invalid(&example("invalid-duplicate-post.xml"));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.reason.contains("Duplicate key-sequence"), "{e}");
    let e = invalid(&example("invalid-envelope-type.xml"));
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.reason.contains("'firmware'"), "{e}");
    let e = invalid(&example("invalid-envelope-version.xml"));
    assert!(e.reason.contains("'0'"), "{e}");
}

#[test]
fn min_above_max_is_found_after_the_xsd() {
    let e = invalid(&example("invalid-min-above-max.xml"));
    assert_eq!((e.line, e.column), (Some(5), Some(7)), "{e}");
    assert!(e.reason.contains("above max"), "{e}");
}

#[test]
fn malformed_xml_has_line_and_column() {
    let e = invalid(&example("invalid-malformed.xml"));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.column.is_some(), "{e}");
    assert!(e.reason.contains("mismatch"), "{e}");
}

#[test]
fn size_utf8_and_doctype_come_first() {
    let xml = example("thermostat.xml");
    let e = validate(&xml, xml.len() - 1).unwrap_err();
    assert_eq!((e.line, e.column), (None, None));
    assert!(e.reason.contains("limit"), "{e}");
    validate(&xml, xml.len()).unwrap();

    let mut latin1 = xml.clone();
    let at = latin1.windows(2).position(|w| w == "°".as_bytes()).unwrap();
    latin1.splice(at..at + 2, [0xB0]);
    let e = invalid(&latin1);
    assert!(e.reason.contains("not UTF-8"), "{e}");
    assert_eq!(e.line, Some(6), "{e}");

    for name in ["invalid-billion-laughs.xml", "invalid-external-entity.xml"] {
        let e = invalid(&example(name));
        assert_eq!((e.line, e.column), (Some(2), Some(1)), "{name}: {e}");
        assert!(e.reason.contains("DOCTYPE"), "{name}: {e}");
    }
}

#[test]
fn schema_files_are_compiled() {
    let bad = "<utopia xmlns=\"urn:utopia:config:1\" type=\"schema\" name=\"s\" version=\"1\">\n\
               <xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\">\n\
               <xs:element name=\"e\" type=\"xs:nosuchtype\"/>\n\
               </xs:schema></utopia>";
    let e = invalid(bad.as_bytes());
    assert!(e.reason.contains("nosuchtype"), "{e}");
    let include = bad.replace(
        "<xs:element name=\"e\" type=\"xs:nosuchtype\"/>",
        "<xs:import namespace=\"urn:x\" schemaLocation=\"/etc/passwd\"/>",
    );
    let e = invalid(include.as_bytes());
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.reason.contains("xs:import"), "{e}");
}

/// The DOCTYPE refusal comes first, but libxml2's own options hold without
/// it: an entity bomb fails to parse, and an external entity is neither
/// read nor substituted.
#[test]
fn libxml2_alone_neither_expands_nor_fetches() {
    match parse(&example("invalid-billion-laughs.xml")) {
        Ok(doc) => panic!("parsed: {} bytes", doc.to_string().len()),
        Err(e) => assert!(e.reason.contains("entity"), "{e}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let secret = "utopia-secret-unit-93c1";
    let path = dir.path().join("secret.txt");
    std::fs::write(&path, secret).unwrap();
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE a [<!ENTITY s SYSTEM \"file://{}\">]>\n<a>&s;</a>\n",
        path.display()
    );
    // Well-formed: it parses, with the reference left unresolved.
    let doc = parse(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let text = doc.to_string();
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("&s;"), "{text}");
    let root = doc.get_root_element().unwrap();
    assert!(!root.get_content().contains(secret));
}

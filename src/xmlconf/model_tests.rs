use super::*;

const THERMOSTAT: &str = include_str!("../../schemas/examples/thermostat.xml");

fn class(xml: &str) -> ClassConfig {
    read_class(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn issue(xml: &str) -> Issue {
    match read_class(xml.as_bytes()) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

/// A configuration whose `<posts>` holds `posts`.
fn with_posts(posts: &str) -> String {
    format!(
        "<utopia xmlns=\"urn:utopia:config:1\" type=\"config\" name=\"c\" version=\"1\">\n\
         <deviceClass>\n<posts>\n{posts}\n</posts>\n</deviceClass>\n</utopia>\n"
    )
}

#[test]
fn reads_the_thermostat_example() {
    let c = class(THERMOSTAT);
    assert_eq!(c.name, "thermostat");
    assert_eq!(c.version, 3);
    assert_eq!(
        c.description.as_deref(),
        Some("Room thermostat with a relay")
    );
    let names: Vec<_> = c.posts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "temperature",
            "humidity",
            "relay",
            "mode",
            "firmware",
            "diagnostics"
        ]
    );
    let t = &c.posts[0];
    assert!(t.required);
    assert_eq!(t.unit.as_deref(), Some("°C"));
    assert_eq!(
        t.kind,
        FieldKind::Float {
            min: Some(-40.0),
            max: Some(125.0)
        }
    );
    assert_eq!(
        c.posts[1].kind,
        FieldKind::Integer {
            min: Some(0),
            max: Some(100)
        }
    );
    assert!(!c.posts[1].required);
    assert_eq!(c.posts[2].kind, FieldKind::Boolean);
    assert_eq!(
        c.posts[3].kind,
        FieldKind::Enum {
            values: vec!["off".into(), "heat".into(), "eco".into()]
        }
    );
    assert_eq!(
        c.posts[4].kind,
        FieldKind::String {
            length_max: Some(32)
        }
    );
    assert_eq!(c.posts[5].kind, FieldKind::Object);
    assert_eq!(c.commands.len(), 2);
    assert_eq!(c.commands[0].name, "set_target");
    assert_eq!(c.commands[0].payload.len(), 1);
    assert!(c.commands[0].payload[0].required);
    assert_eq!(c.commands[1].name, "reboot");
    assert_eq!(
        c.commands[1].description.as_deref(),
        Some("Restarts the device")
    );
    assert!(c.commands[1].payload.is_empty());
}

#[test]
fn reads_the_envelope() {
    let e = read_envelope(THERMOSTAT.as_bytes()).unwrap();
    assert_eq!(
        e,
        Envelope {
            file_type: FileType::Config,
            name: "thermostat".into(),
            version: 3
        }
    );
    let schema = include_str!("../../schemas/examples/schema-file.xml");
    let e = read_envelope(schema.as_bytes()).unwrap();
    assert_eq!(e.file_type, FileType::Schema);
    assert_eq!((e.name.as_str(), e.version), ("site-extension", 2));
    // A schema file is not a device class.
    assert!(read_class(schema.as_bytes()).is_err());
}

#[test]
fn prefixes_and_entities_are_resolved() {
    let xml = "<c:utopia xmlns:c=\"urn:utopia:config:1\" type=\"config\" name=\"a\" version=\"2\">\
               <c:deviceClass><c:description>x &lt; y &#x263A;</c:description>\
               <c:posts><c:enum name=\"m\"><c:value>a&amp;b</c:value></c:enum></c:posts>\
               </c:deviceClass></c:utopia>";
    let c = class(xml);
    assert_eq!(c.description.as_deref(), Some("x < y \u{263A}"));
    assert_eq!(
        c.posts[0].kind,
        FieldKind::Enum {
            values: vec!["a&b".into()]
        }
    );
}

#[test]
fn min_above_max_is_refused_where_it_is() {
    let e = issue(&with_posts("<integer name=\"h\" min=\"100\" max=\"0\"/>"));
    assert_eq!((e.line, e.column), (Some(4), Some(1)));
    assert!(e.reason.contains("min 100 is above max 0"), "{e}");
    let e = issue(&with_posts("<float name=\"t\" min=\"2.5\" max=\"-1\"/>"));
    assert!(e.reason.contains("above max"), "{e}");
    // Equal bounds are one allowed value.
    class(&with_posts("<integer name=\"h\" min=\"5\" max=\"5\"/>"));
}

#[test]
fn duplicates_and_bad_names_are_refused() {
    let e = issue(&with_posts("<boolean name=\"a\"/>\n<float name=\"a\"/>"));
    assert_eq!(e.line, Some(5));
    assert!(e.reason.contains("declared twice"), "{e}");
    let e = issue(&with_posts("<boolean name=\"a/b\"/>"));
    assert!(e.reason.contains("name \"a/b\""), "{e}");
    let e = issue(&with_posts(
        "<enum name=\"m\"><value>x</value><value>x</value></enum>",
    ));
    assert!(e.reason.contains("repeated"), "{e}");
    let e = issue(&with_posts("<enum name=\"m\"/>"));
    assert!(e.reason.contains("at least one"), "{e}");
    let e = issue(&with_posts("<float name=\"t\" min=\"NaN\"/>"));
    assert!(e.reason.contains("finite"), "{e}");
    let e = issue(&with_posts("<integer name=\"t\" max=\"1.5\"/>"));
    assert!(e.reason.contains("max=\"1.5\""), "{e}");
    let e = issue(&with_posts("<date name=\"t\"/>"));
    assert!(e.reason.contains("expected <integer>"), "{e}");
}

#[test]
fn envelope_problems() {
    let cases = [
        ("<other/>", "root element"),
        (
            "<utopia xmlns=\"urn:utopia:config:1\" type=\"blob\" name=\"a\" version=\"1\"><deviceClass/></utopia>",
            "type \"blob\"",
        ),
        (
            "<utopia xmlns=\"urn:utopia:config:1\" type=\"config\" name=\"a\" version=\"0\"><deviceClass/></utopia>",
            "version",
        ),
        (
            "<utopia xmlns=\"urn:utopia:config:1\" type=\"config\" name=\"a\" version=\"1\"/>",
            "exactly one element",
        ),
        (
            "<utopia xmlns=\"urn:utopia:config:1\" type=\"schema\" name=\"a\" version=\"1\"><deviceClass/></utopia>",
            "<xs:schema>",
        ),
    ];
    for (xml, want) in cases {
        let e = read_envelope(xml.as_bytes()).unwrap_err();
        assert!(e.reason.contains(want), "{xml}: {e}");
        assert_eq!(e.line, Some(1), "{xml}: {e}");
    }
}

#[test]
fn doctype_entities_encodings_and_bytes_are_refused() {
    let e = read_envelope(b"<?xml version=\"1.0\"?>\n<!DOCTYPE a [<!ENTITY x \"y\">]>\n<a>&x;</a>")
        .unwrap_err();
    assert_eq!((e.line, e.column), (Some(2), Some(1)));
    assert!(e.reason.contains("DOCTYPE"), "{e}");
    let e = read_envelope(b"<a>&x;</a>").unwrap_err();
    assert!(e.reason.contains("&x;"), "{e}");
    let e = read_envelope(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>").unwrap_err();
    assert!(e.reason.contains("UTF-8"), "{e}");
    let e = read_envelope(b"<a>\n caf\xe9</a>").unwrap_err();
    assert_eq!((e.line, e.column), (Some(2), Some(5)));
    assert!(e.reason.contains("not UTF-8"), "{e}");
    let e = read_envelope(b"<a><b></a>").unwrap_err();
    assert!(e.reason.contains("malformed"), "{e}");
    let e = read_envelope(b"<a/><b/>").unwrap_err();
    assert!(e.reason.contains("more than one root"), "{e}");
    assert!(read_envelope(b"").is_err());
}

#[test]
fn nesting_is_bounded() {
    let deep = "<a>".repeat(DEPTH_MAX + 1) + &"</a>".repeat(DEPTH_MAX + 1);
    let e = read_envelope(deep.as_bytes()).unwrap_err();
    assert!(e.reason.contains("levels"), "{e}");
}

#[test]
fn standalone_schemas_only() {
    let xml = "<utopia xmlns=\"urn:utopia:config:1\" type=\"schema\" name=\"s\" version=\"1\">\n\
               <xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\">\n\
               <xs:include schemaLocation=\"file:///etc/passwd\"/>\n\
               </xs:schema></utopia>";
    let e = check_standalone_schema(xml.as_bytes()).unwrap_err();
    assert_eq!(e.line, Some(3));
    assert!(e.reason.contains("xs:include"), "{e}");
    let ok = include_str!("../../schemas/examples/schema-file.xml");
    check_standalone_schema(ok.as_bytes()).unwrap();
}

//! What utopia reads from a configuration file (with quick-xml, after the
//! XSD validation in [`super::validate()`]): the envelope and the device class.
//!
//! The readers stand on their own: given any bytes they return a model or an
//! [`Issue`], never panic, and re-check what the model's users rely on
//! (names unique, `min <= max`), so a caller that skipped the XSD still gets
//! a consistent model. Entities other than the five predefined ones and
//! character references are refused, as is any DOCTYPE.

use std::collections::BTreeSet;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde::Serialize;

use super::schema::{NAMESPACE, XSD_NAMESPACE};
use super::Issue;

/// Deepest element nesting the readers follow.
pub const DEPTH_MAX: usize = 32;
/// Most elements in one file.
pub const ELEMENTS_MAX: usize = 20_000;

/// What a file holds (the envelope's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// A device-class configuration.
    Config,
    /// An XML Schema.
    Schema,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Config => "config",
            FileType::Schema => "schema",
        }
    }
}

/// The envelope: `<utopia xmlns="urn:utopia:config:1" type=".." name=".."
/// version="..">` around one payload element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub file_type: FileType,
    pub name: String,
    pub version: u32,
}

/// A device class: the post types it publishes and the commands it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassConfig {
    /// The class (the `${type}` level of the MQTT topic).
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    /// In file order; names unique.
    pub posts: Vec<Field>,
    /// In file order; names unique.
    pub commands: Vec<Command>,
}

/// A post type, or one field of a command's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub required: bool,
    pub unit: Option<String>,
    pub kind: FieldKind,
}

/// A value type, with its bounds (`min <= max` when both are given).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    Integer { min: Option<i64>, max: Option<i64> },
    Float { min: Option<f64>, max: Option<f64> },
    Boolean,
    String { length_max: Option<u32> },
    Enum { values: Vec<String> },
    Object,
}

impl FieldKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FieldKind::Integer { .. } => "integer",
            FieldKind::Float { .. } => "float",
            FieldKind::Boolean => "boolean",
            FieldKind::String { .. } => "string",
            FieldKind::Enum { .. } => "enum",
            FieldKind::Object => "object",
        }
    }
}

/// A command the class accepts, with its payload fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub description: Option<String>,
    pub payload: Vec<Field>,
}

/// Reads the envelope of `xml`.
pub fn read_envelope(xml: &[u8]) -> Result<Envelope, Issue> {
    let root = parse_tree(xml)?;
    envelope(xml, &root).map(|(e, _)| e)
}

/// Reads the device class of a `type="config"` file.
pub fn read_class(xml: &[u8]) -> Result<ClassConfig, Issue> {
    let root = parse_tree(xml)?;
    let (env, payload) = envelope(xml, &root)?;
    if env.file_type != FileType::Config {
        return Err(root.issue(xml, "a schema file, not a device-class configuration"));
    }
    if !payload.is(NAMESPACE, "deviceClass") {
        return Err(payload.issue(xml, "the payload of a configuration is <deviceClass>"));
    }
    let mut class = ClassConfig {
        name: env.name,
        version: env.version,
        description: None,
        posts: Vec::new(),
        commands: Vec::new(),
    };
    let mut seen_posts = false;
    for child in &payload.children {
        match child.ours() {
            Some("description") => class.description = Some(child.text.trim().to_owned()),
            Some("posts") if !seen_posts => {
                seen_posts = true;
                class.posts = fields(xml, child, &child.children)?;
                if class.posts.is_empty() {
                    return Err(child.issue(xml, "a device class declares at least one post type"));
                }
            }
            Some("commands") => {
                let mut names = BTreeSet::new();
                for c in &child.children {
                    if c.ours() != Some("command") {
                        return Err(c.issue(xml, "<commands> holds only <command>"));
                    }
                    let name = name_attr(xml, c)?;
                    if !names.insert(name.clone()) {
                        return Err(c.issue(xml, format!("command {name:?} is declared twice")));
                    }
                    let mut description = None;
                    let mut rest = c.children.as_slice();
                    if let Some((first, tail)) = rest.split_first() {
                        if first.ours() == Some("description") {
                            description = Some(first.text.trim().to_owned());
                            rest = tail;
                        }
                    }
                    class.commands.push(Command {
                        name,
                        description,
                        payload: fields(xml, c, rest)?,
                    });
                }
            }
            _ => return Err(child.issue(xml, "unexpected element in <deviceClass>")),
        }
    }
    if !seen_posts {
        return Err(payload.issue(xml, "<deviceClass> has no <posts>"));
    }
    Ok(class)
}

/// Refuses, in a `type="schema"` file, the XSD elements that would make a
/// schema compiler read other files or URLs (`xs:include`, `xs:import`,
/// `xs:redefine`, `xs:override`): a schema file stands alone.
pub fn check_standalone_schema(xml: &[u8]) -> Result<(), Issue> {
    let root = parse_tree(xml)?;
    let (_, payload) = envelope(xml, &root)?;
    let mut stack = vec![payload];
    while let Some(e) = stack.pop() {
        let loads = ["include", "import", "redefine", "override"];
        if e.ns.as_deref() == Some(XSD_NAMESPACE) && loads.contains(&e.local.as_str()) {
            return Err(e.issue(
                xml,
                format!("xs:{} is not allowed: a schema file stands alone", e.local),
            ));
        }
        stack.extend(&e.children);
    }
    Ok(())
}

/// The envelope and its single payload element.
fn envelope<'a>(xml: &[u8], root: &'a Element) -> Result<(Envelope, &'a Element), Issue> {
    if !root.is(NAMESPACE, "utopia") {
        return Err(root.issue(
            xml,
            format!("the root element is <utopia xmlns=\"{NAMESPACE}\">"),
        ));
    }
    let file_type = match root.attr("type") {
        Some("config") => FileType::Config,
        Some("schema") => FileType::Schema,
        Some(other) => {
            return Err(root.issue(
                xml,
                format!("type {other:?}: expected \"config\" or \"schema\""),
            ))
        }
        None => return Err(root.issue(xml, "the envelope has no type")),
    };
    let name = name_attr(xml, root)?;
    let version = match root.attr("version").map(|v| v.trim().parse::<u32>()) {
        Some(Ok(v)) if v >= 1 => v,
        Some(_) => {
            return Err(root.issue(xml, "version is an integer from 1 to 4294967295"));
        }
        None => return Err(root.issue(xml, "the envelope has no version")),
    };
    let [payload] = root.children.as_slice() else {
        return Err(root.issue(xml, "the envelope holds exactly one element"));
    };
    let expected = match file_type {
        FileType::Config => payload.ns.as_deref() == Some(NAMESPACE),
        FileType::Schema => payload.is(XSD_NAMESPACE, "schema"),
    };
    if !expected {
        return Err(payload.issue(
            xml,
            format!(
                "the payload of a {} file is {}",
                file_type.as_str(),
                match file_type {
                    FileType::Config => "<deviceClass>",
                    FileType::Schema => "<xs:schema>",
                }
            ),
        ));
    }
    Ok((
        Envelope {
            file_type,
            name,
            version,
        },
        payload,
    ))
}

/// The fields declared by `elements` (children of `parent`).
fn fields(xml: &[u8], parent: &Element, elements: &[Element]) -> Result<Vec<Field>, Issue> {
    let mut out = Vec::with_capacity(elements.len());
    let mut names = BTreeSet::new();
    for e in elements {
        let name = name_attr(xml, e)?;
        if !names.insert(name.clone()) {
            return Err(e.issue(
                xml,
                format!("{name:?} is declared twice in <{}>", parent.local),
            ));
        }
        let kind = match e.ours() {
            Some("integer") => {
                let min = num_attr::<i64>(xml, e, "min")?;
                let max = num_attr::<i64>(xml, e, "max")?;
                check_range(xml, e, min, max)?;
                FieldKind::Integer { min, max }
            }
            Some("float") => {
                let min = num_attr::<f64>(xml, e, "min")?;
                let max = num_attr::<f64>(xml, e, "max")?;
                if min.is_some_and(|v| !v.is_finite()) || max.is_some_and(|v| !v.is_finite()) {
                    return Err(e.issue(xml, "min and max are finite numbers"));
                }
                check_range(xml, e, min, max)?;
                FieldKind::Float { min, max }
            }
            Some("boolean") => FieldKind::Boolean,
            Some("string") => FieldKind::String {
                length_max: num_attr::<u32>(xml, e, "lengthMax")?,
            },
            Some("enum") => {
                let mut values = Vec::with_capacity(e.children.len());
                for v in &e.children {
                    if v.ours() != Some("value") || v.text.is_empty() {
                        return Err(v.issue(xml, "an enum holds non-empty <value> elements"));
                    }
                    if values.contains(&v.text) {
                        return Err(v.issue(xml, format!("enum value {:?} is repeated", v.text)));
                    }
                    values.push(v.text.clone());
                }
                if values.is_empty() {
                    return Err(e.issue(xml, "an enum has at least one <value>"));
                }
                FieldKind::Enum { values }
            }
            Some("object") => FieldKind::Object,
            _ => {
                return Err(e.issue(
                    xml,
                    "expected <integer>, <float>, <boolean>, <string>, <enum> or <object>",
                ))
            }
        };
        let required = match e.attr("required").map(str::trim) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => return Err(e.issue(xml, format!("required={other:?} is not a boolean"))),
        };
        out.push(Field {
            name,
            required,
            unit: e.attr("unit").map(str::to_owned),
            kind,
        });
    }
    Ok(out)
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    xml: &[u8],
    e: &Element,
    min: Option<T>,
    max: Option<T>,
) -> Result<(), Issue> {
    match (min, max) {
        (Some(lo), Some(hi)) if lo > hi => Err(e.issue(
            xml,
            format!(
                "{:?}: min {lo} is above max {hi}",
                e.attr("name").unwrap_or("")
            ),
        )),
        _ => Ok(()),
    }
}

fn num_attr<T: std::str::FromStr>(xml: &[u8], e: &Element, key: &str) -> Result<Option<T>, Issue> {
    match e.attr(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| e.issue(xml, format!("{key}={v:?} is not a valid number here"))),
    }
}

/// A `name` attribute: 1 to 64 of `A-Z a-z 0-9 _ . -` (one MQTT topic level).
fn name_attr(xml: &[u8], e: &Element) -> Result<String, Issue> {
    let Some(name) = e.attr("name") else {
        return Err(e.issue(xml, format!("<{}> has no name", e.local)));
    };
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        return Err(e.issue(xml, format!("name {name:?}: 1 to 64 of A-Z a-z 0-9 _ . -")));
    }
    Ok(name.to_owned())
}

/// An element of the file: its namespace, local name, unprefixed
/// attributes, child elements and text (character data joined).
#[derive(Debug, Default)]
struct Element {
    ns: Option<String>,
    local: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
    /// Byte offset of its `<`.
    offset: usize,
}

impl Element {
    fn is(&self, ns: &str, local: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.local == local
    }

    /// Its local name when it is in utopia's namespace.
    fn ours(&self) -> Option<&str> {
        (self.ns.as_deref() == Some(NAMESPACE)).then_some(self.local.as_str())
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn issue(&self, xml: &[u8], reason: impl Into<String>) -> Issue {
        Issue::at(xml, self.offset, reason)
    }
}

/// Parses `xml` into a tree of [`Element`]s, bounded in depth and count.
fn parse_tree(xml: &[u8]) -> Result<Element, Issue> {
    if let Err(e) = std::str::from_utf8(xml) {
        return Err(Issue::at(xml, e.valid_up_to(), "not UTF-8"));
    }
    let mut reader = NsReader::from_reader(xml);
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let at = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let malformed = |reader: &NsReader<&[u8]>, e: &dyn std::fmt::Display| {
            let pos = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
            Issue::at(xml, pos, format!("malformed XML: {e}"))
        };
        let event = match reader.read_resolved_event() {
            Ok((ns, event)) => {
                let ns = match ns {
                    ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into()),
                    ResolveResult::Unbound => None,
                    ResolveResult::Unknown(p) => {
                        return Err(Issue::at(
                            xml,
                            at,
                            format!(
                                "namespace prefix {:?} is not declared",
                                String::from_utf8_lossy(&p)
                            ),
                        ))
                    }
                };
                (ns, event.into_owned())
            }
            Err(e) => return Err(malformed(&reader, &e)),
        };
        match event {
            (ns, Event::Start(start)) => {
                count += 1;
                if stack.len() >= DEPTH_MAX || count > ELEMENTS_MAX {
                    return Err(Issue::at(
                        xml,
                        at,
                        format!("more than {DEPTH_MAX} levels or {ELEMENTS_MAX} elements"),
                    ));
                }
                if root.is_some() {
                    return Err(Issue::at(xml, at, "more than one root element"));
                }
                let mut el = Element {
                    ns,
                    local: String::from_utf8_lossy(start.local_name().as_ref()).into(),
                    offset: at,
                    ..Element::default()
                };
                for a in start.attributes() {
                    let a = a.map_err(|e| malformed(&reader, &e))?;
                    if a.key.prefix().is_some() || a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let value = a
                        .unescape_value()
                        .map_err(|e| Issue::at(xml, at, format!("attribute value: {e}")))?;
                    el.attrs.push((
                        String::from_utf8_lossy(a.key.as_ref()).into(),
                        value.into_owned(),
                    ));
                }
                stack.push(el);
            }
            (_, Event::End(_)) => {
                let Some(done) = stack.pop() else {
                    return Err(Issue::at(xml, at, "end tag without a start tag"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            (_, Event::Text(t)) => {
                let text = t.decode().map_err(|e| malformed(&reader, &e))?;
                push_text(xml, at, &mut stack, &text)?;
            }
            (_, Event::CData(t)) => {
                let text = t.decode().map_err(|e| malformed(&reader, &e))?;
                push_text(xml, at, &mut stack, &text)?;
            }
            (_, Event::GeneralRef(r)) => {
                let text = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => return Err(Issue::at(xml, at, "invalid character reference")),
                    }
                } else {
                    let name = r.decode().map_err(|e| malformed(&reader, &e))?;
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => s.to_owned(),
                        None => {
                            return Err(Issue::at(
                                xml,
                                at,
                                format!("entity &{name}; is not allowed (entities are off)"),
                            ))
                        }
                    }
                };
                push_text(xml, at, &mut stack, &text)?;
            }
            (_, Event::DocType(_)) => {
                return Err(Issue::at(
                    xml,
                    at,
                    "DOCTYPE is not allowed (no DTD, no entity declarations)",
                ))
            }
            (_, Event::Decl(d)) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| malformed(&reader, &e))?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(Issue::at(
                            xml,
                            at,
                            format!(
                                "encoding {:?}: configuration files are UTF-8",
                                String::from_utf8_lossy(&enc)
                            ),
                        ));
                    }
                }
            }
            (_, Event::Comment(_)) | (_, Event::PI(_)) | (_, Event::Empty(_)) => {}
            (_, Event::Eof) => break,
        }
    }
    match (root, stack.is_empty()) {
        (Some(root), true) => Ok(root),
        _ => Err(Issue::at(
            xml,
            xml.len(),
            "malformed XML: the root element is not closed",
        )),
    }
}

/// Appends character data to the open element; outside the root only
/// whitespace may appear.
fn push_text(xml: &[u8], at: usize, stack: &mut [Element], text: &str) -> Result<(), Issue> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(Issue::at(xml, at, "text outside the root element")),
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;

//! A parser for the libconfig file syntax (the grammar of the C library
//! libconfig 1.7), producing a plain tree of [`Setting`]s with the file and
//! line each one came from.
//!
//! This module owns the *syntax* only: tokens, comments, `@include`, the
//! setting/group/array/list grammar, duplicate names and array element types.
//! What the settings *mean* is decided by the caller (see [`crate::config`]).
//!
//! Behaviour follows libconfig 1.7's scanner and grammar, including its
//! quirks:
//!
//! - a setting's terminator (`;` or `,`) is optional everywhere, so
//!   `a = 1 b = 2` is two settings;
//! - a hex integer without the `L`/`LL` suffix is 32 bits wide and wraps
//!   (`0xFFFFFFFF` is -1); with the suffix it is 64 bits wide and wraps the
//!   same way (`0xFFFFFFFFFFFFFFFFL` is -1);
//! - in arrays and lists, commas may repeat and may trail (`[1,,2,]`);
//! - an unknown escape in a string keeps its backslash (`"\q"` is `\q`);
//! - `true`/`false` (any case) are booleans, never setting names;
//! - `@include "path"` must start a line and is spliced in token by token, so
//!   it may appear wherever a token may.
//!
//! Where libconfig is silently lax this parser reports an error instead:
//! out-of-range numbers (libconfig truncates or saturates), a number glued to
//! a name (`1b`, `0b101` — binary and octal prefixes arrived in libconfig
//! 1.8), a lone `.` as a float, an unterminated `/* comment`, non-finite
//! floats and strings that are not UTF-8. An integer with a leading zero
//! and no `L` suffix (`010`) is refused: libconfig 1.7 reads it as octal
//! (8), 1.5 and 1.8 as decimal (10). Integers and 64-bit integers are
//! one type here, so `[1, 10000000000]` is a valid array (libconfig rejects
//! it as mixed `int`/`int64`). Includes resolve against the including file's
//! directory (libconfig uses a single configured include directory); cycles
//! are detected, nesting is limited to [`MAX_INCLUDE_DEPTH`] files.
//!
//! The file is long on purpose: the scanner and the grammar (about 1000
//! lines) are one unit that follows one reference, and the rest is their
//! table-driven tests, which read best next to the rules they pin down.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use winnow::ascii::{digit0, digit1, hex_digit1};
use winnow::combinator::{alt, opt, preceded};
use winnow::error::{ContextError, ErrMode};
use winnow::prelude::*;
use winnow::token::{one_of, take_till, take_until, take_while};

/// Largest file this parser reads (each file, includes too).
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Largest total of all files read for one parse, repeated includes counted
/// each time.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;
/// How many files may be open at once: the top file and nested includes
/// (libconfig's `MAX_INCLUDE_DEPTH`).
pub const MAX_INCLUDE_DEPTH: usize = 10;
/// How deeply groups, arrays and lists may nest.
pub const MAX_NESTING: usize = 100;

/// Where a setting or element starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: Arc<Path>,
    pub line: u32,
}

/// One named setting of a group (or of the file's top level).
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: String,
    pub value: Value,
    pub span: Span,
}

/// A setting's value. Array elements are scalars of one type; list elements
/// are any values (a group in a list is a `Group` with no name of its own).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Group(Vec<Setting>),
    Array(Vec<(Value, Span)>),
    List(Vec<(Value, Span)>),
}

impl Value {
    /// "an integer", "a group", …: for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::Group(_) => "a group",
            Value::Array(_) => "an array",
            Value::List(_) => "a list",
        }
    }
}

/// A syntax or include error. Line 0 means the file as a whole (unreadable,
/// too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ParseError {
    pub file: PathBuf,
    pub line: u32,
    pub message: String,
}

fn err_at(file: &Path, line: u32, message: impl Into<String>) -> ParseError {
    ParseError {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Parses `text` as the contents of `file`; `@include` paths resolve against
/// `file`'s directory.
pub fn parse_str(text: &str, file: &Path) -> Result<Vec<Setting>, ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(file, text.len()));
    }
    let lexer = Lexer::new(text.to_owned(), file)?;
    Grammar {
        lx: lexer,
        depth: 0,
    }
    .parse_file()
}

/// Reads and parses `path`.
pub fn parse_file(path: &Path) -> Result<Vec<Setting>, ParseError> {
    let bytes =
        read_bounded(path).map_err(|e| err_at(path, 0, format!("cannot read file: {e}")))?;
    parse_bytes(&bytes, path)
}

/// Parses file contents that may not be UTF-8 (an error names the line of
/// the first bad byte).
pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<Vec<Setting>, ParseError> {
    let text = to_text(bytes, file)?;
    parse_str(&text, file)
}

/// Reads at most [`MAX_FILE_BYTES`] + 1 bytes of `path` (one more, so that a
/// too-large file is noticed without reading all of it).
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

fn too_large(file: &Path, len: usize) -> ParseError {
    let shown = if len > MAX_FILE_BYTES {
        format!("more than {MAX_FILE_BYTES}")
    } else {
        len.to_string()
    };
    err_at(
        file,
        0,
        format!("file too large: {shown} bytes (the limit is {MAX_FILE_BYTES})"),
    )
}

fn to_text(bytes: &[u8], file: &Path) -> Result<String, ParseError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large(file, bytes.len()));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
            Err(err_at(file, line_u32(line), "file is not valid UTF-8"))
        }
    }
}

fn line_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Equals,
    Comma,
    Semi,
    GroupOpen,
    GroupClose,
    ArrayOpen,
    ArrayClose,
    ListOpen,
    ListClose,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    span: Span,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Name(n) => format!("name \"{n}\""),
        Tok::Bool(b) => format!("boolean {b}"),
        Tok::Int(i) => format!("integer {i}"),
        Tok::Float(f) => format!("float {f}"),
        Tok::Str(s) => {
            let short: String = s.chars().take(32).collect();
            let more = if short.len() < s.len() { "…" } else { "" };
            format!("string {:?}", format!("{short}{more}"))
        }
        Tok::Equals => "'='".into(),
        Tok::Comma => "','".into(),
        Tok::Semi => "';'".into(),
        Tok::GroupOpen => "'{'".into(),
        Tok::GroupClose => "'}'".into(),
        Tok::ArrayOpen => "'['".into(),
        Tok::ArrayClose => "']'".into(),
        Tok::ListOpen => "'('".into(),
        Tok::ListClose => "')'".into(),
        Tok::Eof => "end of file".into(),
    }
}

/// What one step of the scanner found at the current position.
#[derive(Debug, PartialEq)]
enum Raw {
    Tok(Tok),
    Include(String),
}

type PResult<O> = Result<O, ErrMode<ContextError>>;

// ---------------------------------------------------------------------------
// Scanner pieces (winnow). Each works on the rest of the current file and
// reports how much it consumed; the Lexer keeps position and line.

/// Skips whitespace and comments. Err(()) means an unterminated `/*`.
fn skip_trivia(input: &mut &str) -> Result<(), ()> {
    loop {
        let ws: PResult<&str> = take_while(1.., [' ', '\t', '\r', '\n', '\x0c']).parse_next(input);
        if ws.is_ok() {
            continue;
        }
        let line: PResult<&str> =
            preceded(alt(("#", "//")), take_till(0.., '\n')).parse_next(input);
        if line.is_ok() {
            continue;
        }
        if input.starts_with("/*") {
            let block: PResult<&str> = ("/*", take_until(0.., "*/"), "*/").take().parse_next(input);
            if block.is_err() {
                return Err(());
            }
            continue;
        }
        return Ok(());
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '*'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*')
}

fn name(input: &mut &str) -> PResult<String> {
    (one_of(is_name_start), take_while(0.., is_name_char))
        .take()
        .map(str::to_owned)
        .parse_next(input)
}

fn long_suffix(input: &mut &str) -> PResult<Option<&'static str>> {
    opt(alt(("LL".value("LL"), "L".value("L")))).parse_next(input)
}

/// `0x…` with optional `L`/`LL`: (digits, has suffix).
fn hex_number<'a>(input: &mut &'a str) -> PResult<(&'a str, bool)> {
    preceded(
        alt(("0x", "0X")),
        (hex_digit1, long_suffix.map(|s| s.is_some())),
    )
    .parse_next(input)
}

/// A decimal integer or float as libconfig's scanner delimits it:
/// (text, is float). The caller checks that there is a digit at all.
fn decimal_number<'a>(input: &mut &'a str) -> PResult<(&'a str, bool)> {
    type Parts<'s> = (
        Option<char>,
        &'s str,
        Option<(char, &'s str)>,
        Option<(char, Option<char>, &'s str)>,
    );
    let start = *input;
    let sign = opt(one_of(['+', '-']));
    let frac = opt(('.', digit0));
    let exp = opt((one_of(['e', 'E']), opt(one_of(['+', '-'])), digit1));
    let (_, _, f, e): Parts<'a> = (sign, digit0, frac, exp).parse_next(input)?;
    Ok((
        &start[..start.len() - input.len()],
        f.is_some() || e.is_some(),
    ))
}

/// Scans a number at the start of `input`.
fn number(input: &mut &str) -> Result<Tok, String> {
    let start = *input;
    let hex = hex_number(input);
    if hex.is_err() {
        *input = start;
    }
    let tok = if let Ok((digits, long)) = hex {
        let text = &start[..start.len() - input.len()];
        let v =
            u64::from_str_radix(digits, 16).map_err(|_| format!("integer out of range: {text}"))?;
        if long {
            Tok::Int(v as i64)
        } else {
            let v = u32::try_from(v).map_err(|_| {
                format!(
                    "integer out of range: {text} (a hex integer without the L suffix has 32 bits)"
                )
            })?;
            Tok::Int(i64::from(v as i32))
        }
    } else {
        let (text, is_float) =
            decimal_number(input).map_err(|_| "expected a number".to_string())?;
        if !text.bytes().any(|b| b.is_ascii_digit()) {
            return Err(format!(
                "unexpected character {:?}",
                start.chars().next().unwrap_or(' ')
            ));
        }
        if is_float {
            let v: f64 = text
                .parse()
                .map_err(|_| format!("invalid number {text:?}"))?;
            if !v.is_finite() {
                return Err(format!("float out of range: {text}"));
            }
            Tok::Float(v)
        } else {
            let long = long_suffix(input).map_err(|_| "expected a number".to_string())?;
            let digits = text.trim_start_matches(['+', '-']);
            if long.is_none() && digits.len() > 1 && digits.starts_with('0') {
                // libconfig 1.7 reads this as octal (strtoll base 0), 1.5
                // and 1.8 as decimal: refuse rather than guess.
                return Err(format!(
                    "ambiguous integer {text:?}: libconfig 1.7 reads a leading 0 as octal, other versions \
                     as decimal; drop the leading zeros (or write hex, 0x…)"
                ));
            }
            match text.parse::<i64>() {
                Ok(v) => Tok::Int(v),
                Err(e) => {
                    return Err(match e.kind() {
                        std::num::IntErrorKind::PosOverflow
                        | std::num::IntErrorKind::NegOverflow => {
                            format!("integer out of range: {text}")
                        }
                        _ => format!("invalid integer {text:?}"),
                    });
                }
            }
        }
    };
    if let Some(c) = input.chars().next() {
        if is_name_char(c) || c == '.' {
            let rest: String = input
                .chars()
                .take_while(|&c| is_name_char(c) || c == '.')
                .collect();
            let text = &start[..start.len() - input.len()];
            let hint = if text == "0" && matches!(c, 'b' | 'B' | 'o' | 'O' | 'q' | 'Q') {
                " (binary and octal prefixes need libconfig 1.8; this file follows libconfig 1.7)"
            } else {
                ""
            };
            return Err(format!("invalid number \"{text}{rest}\"{hint}"));
        }
    }
    Ok(tok)
}

/// Scans a string literal (the input starts at its opening quote).
fn string(input: &mut &str) -> Result<String, String> {
    let mut bytes: Vec<u8> = Vec::new();
    if let Some(rest) = input.strip_prefix('"') {
        *input = rest;
    }
    loop {
        let run: PResult<&str> = take_while(1.., |c| c != '"' && c != '\\').parse_next(input);
        if let Ok(run) = run {
            bytes.extend_from_slice(run.as_bytes());
        }
        let mut chars = input.chars();
        match chars.next() {
            None => return Err("unterminated string".into()),
            Some('"') => {
                *input = &input[1..];
                break;
            }
            Some(_) => {
                // A backslash.
                let esc = chars.next();
                let simple = match esc {
                    Some('n') => Some(b'\n'),
                    Some('r') => Some(b'\r'),
                    Some('t') => Some(b'\t'),
                    Some('f') => Some(b'\x0c'),
                    Some('\\') => Some(b'\\'),
                    Some('"') => Some(b'"'),
                    _ => None,
                };
                if let Some(b) = simple {
                    bytes.push(b);
                    *input = &input[2..];
                    continue;
                }
                if matches!(esc, Some('x' | 'X')) {
                    let hex = input
                        .get(2..4)
                        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                    if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        bytes.push(v);
                        *input = &input[4..];
                        continue;
                    }
                }
                // Unknown escape: libconfig keeps the backslash.
                bytes.push(b'\\');
                *input = &input[1..];
            }
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| "string is not valid UTF-8 (check its \\x escapes)".to_string())
}

/// Scans an `@include "path"` directive (the input starts at `@`).
fn include(input: &mut &str) -> Result<String, String> {
    let head: PResult<&str> = ("@include", take_while(1.., [' ', '\t']), '"')
        .take()
        .parse_next(input);
    if head.is_err() {
        return Err("unexpected character '@' (expected @include \"file\")".into());
    }
    let mut path = String::new();
    loop {
        let run: PResult<&str> = take_while(1.., |c| c != '"' && c != '\\').parse_next(input);
        if let Ok(run) = run {
            path.push_str(run);
        }
        if input.starts_with('"') {
            *input = &input[1..];
            return Ok(path);
        }
        if input.is_empty() {
            return Err("unterminated @include path".into());
        }
        if input.starts_with("\\\\") || input.starts_with("\\\"") {
            path.push_str(&input[1..2]);
            *input = &input[2..];
        } else {
            path.push('\\');
            *input = &input[1..];
        }
    }
}

/// Scans one token or directive. `at_line_start`: only blanks precede the
/// position on its line (where `@include` may appear).
fn scan(input: &mut &str, at_line_start: bool) -> Result<Raw, String> {
    let Some(c) = input.chars().next() else {
        return Ok(Raw::Tok(Tok::Eof));
    };
    let punct = match c {
        '=' | ':' => Some(Tok::Equals),
        ',' => Some(Tok::Comma),
        ';' => Some(Tok::Semi),
        '{' => Some(Tok::GroupOpen),
        '}' => Some(Tok::GroupClose),
        '[' => Some(Tok::ArrayOpen),
        ']' => Some(Tok::ArrayClose),
        '(' => Some(Tok::ListOpen),
        ')' => Some(Tok::ListClose),
        _ => None,
    };
    if let Some(t) = punct {
        *input = &input[1..];
        return Ok(Raw::Tok(t));
    }
    match c {
        '"' => string(input).map(|s| Raw::Tok(Tok::Str(s))),
        '@' if at_line_start => include(input).map(Raw::Include),
        '@' => Err("unexpected character '@' (an @include directive must start a line)".into()),
        c if c.is_ascii_digit() || matches!(c, '.' | '+' | '-') => number(input).map(Raw::Tok),
        c if is_name_start(c) => {
            let n = name(input).map_err(|_| "expected a name".to_string())?;
            Ok(Raw::Tok(if n.eq_ignore_ascii_case("true") {
                Tok::Bool(true)
            } else if n.eq_ignore_ascii_case("false") {
                Tok::Bool(false)
            } else {
                Tok::Name(n)
            }))
        }
        c => Err(format!("unexpected character {c:?}")),
    }
}

// ---------------------------------------------------------------------------
// Lexer: a stack of open files, like libconfig's include stack.

struct Frame {
    text: String,
    pos: usize,
    line: u32,
    file: Arc<Path>,
    /// Canonical path, for cycle detection (None for text with no file).
    canonical: Option<PathBuf>,
}

struct Lexer {
    frames: Vec<Frame>,
    total_bytes: usize,
    peeked: Option<Token>,
}

impl Lexer {
    fn new(text: String, file: &Path) -> Result<Lexer, ParseError> {
        let total_bytes = text.len();
        let frame = Frame {
            text,
            pos: 0,
            line: 1,
            file: Arc::from(file),
            canonical: file.canonicalize().ok(),
        };
        Ok(Lexer {
            frames: vec![frame],
            total_bytes,
            peeked: None,
        })
    }

    fn peek(&mut self) -> Result<&Token, ParseError> {
        if self.peeked.is_none() {
            let t = self.scan_token()?;
            self.peeked = Some(t);
        }
        match &self.peeked {
            Some(t) => Ok(t),
            None => Err(err_at(Path::new(""), 0, "internal error: no token")),
        }
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.scan_token(),
        }
    }

    fn scan_token(&mut self) -> Result<Token, ParseError> {
        loop {
            let depth = self.frames.len();
            let Some(fr) = self.frames.last_mut() else {
                return Err(err_at(Path::new(""), 0, "internal error: no input"));
            };
            let rest = fr.text.get(fr.pos..).unwrap_or("");
            let mut input = rest;
            let trivia = skip_trivia(&mut input);
            let skipped = &rest[..rest.len() - input.len()];
            let start_line = fr.line;
            fr.line = fr
                .line
                .saturating_add(line_u32(skipped.matches('\n').count()));
            fr.pos += skipped.len();
            if trivia.is_err() {
                return Err(err_at(
                    &fr.file,
                    start_line,
                    "unterminated comment: expected '*/'",
                ));
            }
            // Only `@` needs to know (scanning back on every token would be
            // quadratic on long lines).
            let at_line_start = input.starts_with('@')
                && fr.text[..fr.pos]
                    .bytes()
                    .rev()
                    .take_while(|&b| b != b'\n')
                    .all(|b| b == b' ' || b == b'\t');
            let rest = input;
            let span = Span {
                file: fr.file.clone(),
                line: fr.line,
            };
            let raw = scan(&mut input, at_line_start).map_err(|m| err_at(&fr.file, fr.line, m))?;
            let used = &rest[..rest.len() - input.len()];
            fr.line = fr.line.saturating_add(line_u32(used.matches('\n').count()));
            fr.pos += used.len();
            match raw {
                Raw::Tok(Tok::Eof) if depth > 1 => {
                    self.frames.pop();
                }
                Raw::Tok(tok) => return Ok(Token { tok, span }),
                Raw::Include(path) => self.push_include(&path, &span)?,
            }
        }
    }

    fn push_include(&mut self, path: &str, at: &Span) -> Result<(), ParseError> {
        let fail = |m: String| err_at(&at.file, at.line, m);
        if self.frames.len() >= MAX_INCLUDE_DEPTH {
            return Err(fail(format!(
                "include file nesting too deep: more than {MAX_INCLUDE_DEPTH} files open at once"
            )));
        }
        let rel = Path::new(path);
        let resolved = if rel.is_absolute() {
            rel.to_path_buf()
        } else {
            match at.file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.join(rel),
                _ => rel.to_path_buf(),
            }
        };
        let canonical = resolved.canonicalize().ok();
        if let Some(c) = &canonical {
            if self.frames.iter().any(|f| f.canonical.as_ref() == Some(c)) {
                return Err(fail(format!(
                    "include cycle: \"{}\" is already being read",
                    resolved.display()
                )));
            }
        }
        let bytes = read_bounded(&resolved).map_err(|e| {
            fail(format!(
                "cannot open include file \"{}\": {e}",
                resolved.display()
            ))
        })?;
        let text = to_text(&bytes, &resolved)?;
        self.total_bytes = self.total_bytes.saturating_add(text.len());
        if self.total_bytes > MAX_TOTAL_BYTES {
            return Err(fail(format!(
                "included files too large: more than {MAX_TOTAL_BYTES} bytes in all"
            )));
        }
        self.frames.push(Frame {
            text,
            pos: 0,
            line: 1,
            file: Arc::from(resolved.as_path()),
            canonical,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Grammar

struct Grammar {
    lx: Lexer,
    depth: usize,
}

fn perr(span: &Span, message: impl Into<String>) -> ParseError {
    err_at(&span.file, span.line, message)
}

fn where_(span: &Span, here: &Span) -> String {
    if span.file == here.file {
        format!("line {}", span.line)
    } else {
        format!("{}:{}", span.file.display(), span.line)
    }
}

fn scalar_kind(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Bool(_) => "boolean",
        Value::Str(_) => "string",
        Value::Group(_) => "group",
        Value::Array(_) => "array",
        Value::List(_) => "list",
    }
}

impl Grammar {
    fn parse_file(mut self) -> Result<Vec<Setting>, ParseError> {
        self.settings(None)
    }

    fn enter(&mut self, at: &Span) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(perr(
                at,
                format!(
                    "nesting too deep: more than {MAX_NESTING} levels of groups, arrays and lists"
                ),
            ));
        }
        Ok(())
    }

    /// A group's members (or the top level, `open` = None) up to and
    /// including the closing `}` (or end of file).
    fn settings(&mut self, open: Option<(&Span, &str)>) -> Result<Vec<Setting>, ParseError> {
        let mut out: Vec<Setting> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // The previous setting's name, if it had no terminator.
        let mut unterminated: Option<String> = None;
        loop {
            let t = self.lx.next()?;
            match t.tok {
                Tok::Eof => {
                    if let Some((span, label)) = open {
                        return Err(perr(
                            &t.span,
                            format!(
                                "expected '}}' to close {label} opened on {}, found end of file",
                                where_(span, &t.span)
                            ),
                        ));
                    }
                    return Ok(out);
                }
                Tok::GroupClose if open.is_some() => return Ok(out),
                Tok::Name(name) => {
                    let eq = self.lx.next()?;
                    if eq.tok != Tok::Equals {
                        return Err(perr(
                            &eq.span,
                            format!(
                                "expected '=' or ':' after setting name \"{name}\", found {}",
                                describe(&eq.tok)
                            ),
                        ));
                    }
                    let (value, _) = self.value(&format!("setting \"{name}\""), Some(&name))?;
                    if let Some(first) = seen.get(&name).and_then(|&i| out.get(i)) {
                        return Err(perr(
                            &t.span,
                            format!(
                                "duplicate setting \"{name}\" (first set on {})",
                                where_(&first.span, &t.span)
                            ),
                        ));
                    }
                    let next = self.lx.peek()?;
                    if matches!(next.tok, Tok::Semi | Tok::Comma) {
                        self.lx.next()?;
                        unterminated = None;
                    } else {
                        unterminated = Some(name.clone());
                    }
                    seen.insert(name.clone(), out.len());
                    out.push(Setting {
                        name,
                        value,
                        span: t.span,
                    });
                }
                other => {
                    let found = describe(&other);
                    let msg = match (&unterminated, &other) {
                        (Some(prev), _) => {
                            format!("expected ';' after setting \"{prev}\", found {found}")
                        }
                        (None, Tok::GroupClose) => "unexpected '}' (no group is open)".to_string(),
                        (None, Tok::Bool(_)) => {
                            format!(
                                "expected a setting name, found {found} (true and false cannot be names)"
                            )
                        }
                        (None, _) => format!("expected a setting name, found {found}"),
                    };
                    return Err(perr(&t.span, msg));
                }
            }
        }
    }

    /// One value. `what` names it in messages; `name` is the setting's name
    /// (None for elements).
    fn value(&mut self, what: &str, name: Option<&str>) -> Result<(Value, Span), ParseError> {
        let t = self.lx.next()?;
        let span = t.span;
        let v = match t.tok {
            Tok::Int(i) => Value::Int(i),
            Tok::Float(f) => Value::Float(f),
            Tok::Bool(b) => Value::Bool(b),
            Tok::Str(mut s) => {
                while let Tok::Str(_) = self.lx.peek()?.tok {
                    if let Tok::Str(more) = self.lx.next()?.tok {
                        s.push_str(&more);
                    }
                }
                Value::Str(s)
            }
            Tok::GroupOpen => {
                self.enter(&span)?;
                let label = match name {
                    Some(n) => format!("group \"{n}\""),
                    None => "group".to_string(),
                };
                let members = self.settings(Some((&span, &label)))?;
                self.depth -= 1;
                Value::Group(members)
            }
            Tok::ArrayOpen => {
                self.enter(&span)?;
                let v = Value::Array(self.elements(&span, true)?);
                self.depth -= 1;
                v
            }
            Tok::ListOpen => {
                self.enter(&span)?;
                let v = Value::List(self.elements(&span, false)?);
                self.depth -= 1;
                v
            }
            other => {
                return Err(perr(
                    &span,
                    format!("expected a value for {what}, found {}", describe(&other)),
                ));
            }
        };
        Ok((v, span))
    }

    /// Elements of an array (`[` already read) or list (`(` read), through
    /// the closing bracket.
    fn elements(&mut self, open: &Span, array: bool) -> Result<Vec<(Value, Span)>, ParseError> {
        let (kind, close, close_c) = if array {
            ("array", Tok::ArrayClose, ']')
        } else {
            ("list", Tok::ListClose, ')')
        };
        let mut out: Vec<(Value, Span)> = Vec::new();
        let mut after_comma = false;
        loop {
            // An element, or the end (empty, or after a trailing comma).
            let next = self.lx.peek()?;
            if next.tok == close {
                self.lx.next()?;
                return Ok(out);
            }
            if next.tok == Tok::Eof {
                let here = next.span.clone();
                return Err(perr(
                    &here,
                    format!(
                        "expected '{close_c}' to close {kind} opened on {}, found end of file",
                        where_(open, &here)
                    ),
                ));
            }
            if next.tok == Tok::Comma && after_comma {
                // libconfig accepts repeated commas.
                self.lx.next()?;
                continue;
            }
            if !array {
                let t = next;
                if !matches!(
                    t.tok,
                    Tok::Int(_)
                        | Tok::Float(_)
                        | Tok::Bool(_)
                        | Tok::Str(_)
                        | Tok::GroupOpen
                        | Tok::ArrayOpen
                        | Tok::ListOpen
                ) {
                    return Err(perr(
                        &t.span,
                        format!(
                            "expected a value or ')' in list, found {}",
                            describe(&t.tok)
                        ),
                    ));
                }
            } else {
                let t = next.clone();
                match t.tok {
                    Tok::Int(_) | Tok::Float(_) | Tok::Bool(_) | Tok::Str(_) => {}
                    Tok::GroupOpen | Tok::ArrayOpen | Tok::ListOpen => {
                        return Err(perr(
                            &t.span,
                            format!(
                                "an array holds only scalar values (found {}); use a list '( … )' for nested values",
                                describe(&t.tok)
                            ),
                        ));
                    }
                    other => {
                        return Err(perr(
                            &t.span,
                            format!(
                                "expected a scalar value or ']' in array, found {}",
                                describe(&other)
                            ),
                        ));
                    }
                }
            }
            let what = if array {
                "array element"
            } else {
                "list element"
            };
            let (v, span) = self.value(what, None)?;
            if array {
                if let Some((first, _)) = out.first() {
                    if std::mem::discriminant(first) != std::mem::discriminant(&v) {
                        return Err(perr(
                            &span,
                            format!(
                                "mismatched element type in array: expected {} (the type of the first element), found {}",
                                scalar_kind(first),
                                scalar_kind(&v)
                            ),
                        ));
                    }
                }
            }
            out.push((v, span));
            let t = self.lx.next()?;
            if t.tok == close {
                return Ok(out);
            }
            if t.tok == Tok::Eof {
                return Err(perr(
                    &t.span,
                    format!(
                        "expected '{close_c}' to close {kind} opened on {}, found end of file",
                        where_(open, &t.span)
                    ),
                ));
            }
            if t.tok != Tok::Comma {
                return Err(perr(
                    &t.span,
                    format!(
                        "expected ',' or '{close_c}' in {kind}, found {}",
                        describe(&t.tok)
                    ),
                ));
            }
            after_comma = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.cfg")
    }

    /// Renders settings compactly: `a=1; g={b="x"; }; ` etc.
    fn render(settings: &[Setting]) -> String {
        let mut s = String::new();
        for st in settings {
            s.push_str(&format!("{}={}; ", st.name, show(&st.value)));
        }
        s.trim_end().to_string()
    }

    fn show(v: &Value) -> String {
        match v {
            Value::Int(i) => format!("{i}"),
            Value::Float(x) => format!("{x:?}"),
            Value::Bool(b) => format!("{b}"),
            Value::Str(s) => format!("{s:?}"),
            Value::Group(g) => format!("{{ {} }}", render(g)).replace("{  }", "{ }"),
            Value::Array(a) | Value::List(a) => {
                let items: Vec<String> = a.iter().map(|(v, _)| show(v)).collect();
                let (o, c) = if matches!(v, Value::Array(_)) {
                    ('[', ']')
                } else {
                    ('(', ')')
                };
                format!("{o}{}{c}", items.join(", "))
            }
        }
    }

    /// `expected` is the rendered tree, or `ERR line: message-substring`.
    fn check(input: &str, expected: &str) {
        let got = match parse_str(input, p()) {
            Ok(s) => render(&s),
            Err(e) => format!("ERR {}: {}", e.line, e.message),
        };
        if let Some(want) = expected.strip_prefix("ERR ") {
            let (line, msg) = want.split_once(": ").unwrap_or((want, ""));
            let prefix = format!("ERR {line}: ");
            assert!(
                got.starts_with(&prefix) && got.contains(msg),
                "input {input:?}\n  want {expected:?}\n  got  {got:?}"
            );
        } else {
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    #[test]
    fn settings_and_terminators() {
        for (input, want) in [
            ("", ""),
            ("   \n# only a comment\n", ""),
            ("a = 1;", "a=1;"),
            ("a : 1;", "a=1;"),
            ("a = 1,", "a=1;"),
            ("a = 1", "a=1;"),
            ("a = 1 b = 2", "a=1; b=2;"),
            ("a=1;b=2;", "a=1; b=2;"),
            ("a = 1;;", "ERR 1: expected a setting name, found ';'"),
            (
                "a = 1 ;\n\n 5",
                "ERR 3: expected a setting name, found integer 5",
            ),
            (
                "listen = \"x\" 5;",
                "ERR 1: expected ';' after setting \"listen\", found integer 5",
            ),
            (
                "a 1;",
                "ERR 1: expected '=' or ':' after setting name \"a\", found integer 1",
            ),
            (
                "a = ;",
                "ERR 1: expected a value for setting \"a\", found ';'",
            ),
            (
                "a =",
                "ERR 1: expected a value for setting \"a\", found end of file",
            ),
            ("a = 1; }", "ERR 1: unexpected '}' (no group is open)"),
            ("true = 1;", "ERR 1: true and false cannot be names"),
            ("= 1;", "ERR 1: expected a setting name, found '='"),
            (
                "a = 1;\na = 2;",
                "ERR 2: duplicate setting \"a\" (first set on line 1)",
            ),
            ("a = 1; A = 2;", "a=1; A=2;"),
            ("g = { a = 1; }; h = { a = 2; };", "g={ a=1; }; h={ a=2; };"),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn names() {
        for (input, want) in [
            ("abc_1-x = 1;", "abc_1-x=1;"),
            ("*star = 1;", "*star=1;"),
            ("a*b = 1;", "a*b=1;"),
            ("trueish = 1;", "trueish=1;"),
            ("Z9 = 1;", "Z9=1;"),
            ("_a = 1;", "ERR 1: unexpected character '_'"),
            ("9a = 1;", "ERR 1: invalid number \"9a\""),
            ("-a = 1;", "ERR 1: unexpected character '-'"),
            ("a.b = 1;", "ERR 1: unexpected character '.'"),
            ("é = 1;", "ERR 1: unexpected character 'é'"),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn integers() {
        for (input, want) in [
            ("a = 0;", "a=0;"),
            ("a = 42;", "a=42;"),
            ("a = -42;", "a=-42;"),
            ("a = +42;", "a=42;"),
            ("a = 2147483648;", "a=2147483648;"),
            ("a = 9223372036854775807;", "a=9223372036854775807;"),
            ("a = -9223372036854775808;", "a=-9223372036854775808;"),
            ("a = 9223372036854775808;", "ERR 1: integer out of range"),
            (
                "a = 99999999999999999999999;",
                "ERR 1: integer out of range",
            ),
            ("a = 5L;", "a=5;"),
            ("a = 5LL;", "a=5;"),
            ("a = -5LL;", "a=-5;"),
            ("a = 9223372036854775808L;", "ERR 1: integer out of range"),
            ("a = 5l;", "ERR 1: invalid number \"5l\""),
            ("a = 5LLL;", "ERR 1: invalid number"),
            (
                "a = 010;",
                "ERR 1: ambiguous integer \"010\": libconfig 1.7 reads a leading 0 as octal",
            ),
            ("a = -010;", "ERR 1: ambiguous integer \"-010\""),
            ("a = 00;", "ERR 1: ambiguous integer \"00\""),
            ("a = 08;", "ERR 1: ambiguous integer \"08\""),
            ("a = -0;", "a=0;"),
            ("a = 010L;", "a=10;"),
            ("a = 0x1F;", "a=31;"),
            ("a = 0X1f;", "a=31;"),
            ("a = 0x7FFFFFFF;", "a=2147483647;"),
            ("a = 0xFFFFFFFF;", "a=-1;"),
            (
                "a = 0x100000000;",
                "ERR 1: integer out of range: 0x100000000 (a hex integer without the L suffix",
            ),
            ("a = 0x100000000L;", "a=4294967296;"),
            ("a = 0xFFFFFFFFFFFFFFFFLL;", "a=-1;"),
            ("a = 0x10000000000000000L;", "ERR 1: integer out of range"),
            ("a = 0x;", "ERR 1: invalid number \"0x\""),
            ("a = 0xG;", "ERR 1: invalid number \"0xG\""),
            ("a = -0x1;", "ERR 1: invalid number \"-0x1\""),
            (
                "a = 0b101;",
                "ERR 1: binary and octal prefixes need libconfig 1.8",
            ),
            (
                "a = 0o17;",
                "ERR 1: binary and octal prefixes need libconfig 1.8",
            ),
            (
                "a = 1 2;",
                "ERR 1: expected ';' after setting \"a\", found integer 2",
            ),
            ("a = [1,-2,+3];", "a=[1, -2, 3];"),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn floats() {
        for (input, want) in [
            ("a = 1.5;", "a=1.5;"),
            ("a = .5;", "a=0.5;"),
            ("a = -.5;", "a=-0.5;"),
            ("a = 1.;", "a=1.0;"),
            ("a = 1e3;", "a=1000.0;"),
            ("a = 1E3;", "a=1000.0;"),
            ("a = -2.5E-3;", "a=-0.0025;"),
            ("a = +2.5e+3;", "a=2500.0;"),
            ("a = 1.e2;", "a=100.0;"),
            ("a = 0.0;", "a=0.0;"),
            ("a = 007.5;", "a=7.5;"),
            ("a = 1e400;", "ERR 1: float out of range"),
            ("a = .;", "ERR 1: unexpected character '.'"),
            ("a = -;", "ERR 1: unexpected character '-'"),
            ("a = 1.5.3;", "ERR 1: invalid number \"1.5.3\""),
            ("a = 1.5L;", "ERR 1: invalid number \"1.5L\""),
            ("a = 1e;", "ERR 1: invalid number \"1e\""),
            ("a = 1e+;", "ERR 1: invalid number"),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn booleans() {
        for (input, want) in [
            ("a = true;", "a=true;"),
            ("a = false;", "a=false;"),
            ("a = TRUE;", "a=true;"),
            ("a = FaLsE;", "a=false;"),
            (
                "a = yes;",
                "ERR 1: expected a value for setting \"a\", found name \"yes\"",
            ),
            (
                "a = truex;",
                "ERR 1: expected a value for setting \"a\", found name \"truex\"",
            ),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn strings() {
        for (input, want) in [
            (r#"a = "hello";"#, r#"a="hello";"#),
            (r#"a = "";"#, r#"a="";"#),
            (r#"a = "q\"q";"#, r#"a="q\"q";"#),
            (r#"a = "b\\s";"#, r#"a="b\\s";"#),
            (r#"a = "\n\r\t\f";"#, r#"a="\n\r\t\u{c}";"#),
            (r#"a = "\x41\x7a";"#, r#"a="Az";"#),
            (r#"a = "\X41";"#, r#"a="A";"#),
            (r#"a = "\xZZ";"#, r#"a="\\xZZ";"#),
            (r#"a = "\x4";"#, r#"a="\\x4";"#),
            (r#"a = "\q";"#, r#"a="\\q";"#),
            (r#"a = "\xc3\xa9";"#, r#"a="é";"#),
            (r#"a = "\xff";"#, "ERR 1: string is not valid UTF-8"),
            (
                r#"a = "héllo # not a comment // nor this";"#,
                r#"a="héllo # not a comment // nor this";"#,
            ),
            (r#"a = "a" "b";"#, r#"a="ab";"#),
            ("a = \"a\"\n  \"b\" # c\n /* d */ \"c\";", r#"a="abc";"#),
            ("a = \"two\nlines\";", r#"a="two\nlines";"#),
            ("a = \"abc;\nb = 1;", "ERR 1: unterminated string"),
            ("\n\na = \"abc\\", "ERR 3: unterminated string"),
            (r#"a = ["x" "y", "z"];"#, r#"a=["xy", "z"];"#),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn comments() {
        for (input, want) in [
            ("# c\na = 1; # c\n", "a=1;"),
            ("// c\na = 1; // c", "a=1;"),
            ("/* c */ a /* c */ = /* c */ 1 /* c */;", "a=1;"),
            (
                "/* multi\nline\n*/\na = 1;\nb = ",
                "ERR 5: expected a value for setting \"b\"",
            ),
            ("a = 1; /* never closed\n", "ERR 1: unterminated comment"),
            (
                "a = 1; /* a /* b */ c */",
                "ERR 1: expected '=' or ':' after setting name \"c\", found name \"*\"",
            ),
            ("a = 1;#x", "a=1;"),
            ("a = \"x\"# y\n;", r#"a="x";"#),
            ("a = 1 / 2;", "ERR 1: unexpected character '/'"),
            ("a = 1;\r\nb = 2;\r\n", "a=1; b=2;"),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn groups_arrays_lists() {
        for (input, want) in [
            ("g = {};", "g={ };"),
            (
                "g = { a = 1; b = { c = \"x\" } };",
                "g={ a=1; b={ c=\"x\"; }; };",
            ),
            ("g = { a = 1, b = 2, };", "g={ a=1; b=2; };"),
            ("g = { a = 1 b = 2 }", "g={ a=1; b=2; };"),
            (
                "g = {\n a = 1;\n",
                "ERR 3: expected '}' to close group \"g\" opened on line 1, found end of file",
            ),
            ("g = { a = 1; a = 2; };", "ERR 1: duplicate setting \"a\""),
            (
                "g = { 1 };",
                "ERR 1: expected a setting name, found integer 1",
            ),
            ("a = [];", "a=[];"),
            ("a = [1, 2, 3];", "a=[1, 2, 3];"),
            ("a = [1, 2, 3,];", "a=[1, 2, 3];"),
            ("a = [1,,2];", "a=[1, 2];"),
            (
                "a = [,1];",
                "ERR 1: expected a scalar value or ']' in array, found ','",
            ),
            ("a = [1, 0x10, 5L];", "a=[1, 16, 5];"),
            ("a = [1.5, 2.0];", "a=[1.5, 2.0];"),
            ("a = [true, FALSE];", "a=[true, false];"),
            ("a = [\"x\", \"y\"];", "a=[\"x\", \"y\"];"),
            (
                "a = [1,\n \"x\"];",
                "ERR 2: mismatched element type in array: expected integer (the type of the first element), found string",
            ),
            (
                "a = [1, 2.0];",
                "ERR 1: mismatched element type in array: expected integer",
            ),
            (
                "a = [true, 1];",
                "ERR 1: mismatched element type in array: expected boolean",
            ),
            ("a = [[1]];", "ERR 1: an array holds only scalar values"),
            ("a = [{}];", "ERR 1: an array holds only scalar values"),
            ("a = [(1)];", "ERR 1: an array holds only scalar values"),
            (
                "a = [1 2];",
                "ERR 1: expected ',' or ']' in array, found integer 2",
            ),
            (
                "a = [1, 2",
                "ERR 1: expected ']' to close array opened on line 1, found end of file",
            ),
            (
                "a = [1, 2;",
                "ERR 1: expected ',' or ']' in array, found ';'",
            ),
            ("a = ();", "a=();"),
            (
                "a = (1, \"x\", 2.5, true, [1, 2], (3), { b = 4; });",
                "a=(1, \"x\", 2.5, true, [1, 2], (3), { b=4; });",
            ),
            ("a = (1, );", "a=(1);"),
            ("a = (1,,, 2);", "a=(1, 2);"),
            ("a = ({ b = 1; b = 2; });", "ERR 1: duplicate setting \"b\""),
            (
                "a = ({ b = 1; );",
                "ERR 1: expected a setting name, found ')'",
            ),
            (
                "a = (1 2);",
                "ERR 1: expected ',' or ')' in list, found integer 2",
            ),
            (
                "a = (;);",
                "ERR 1: expected a value or ')' in list, found ';'",
            ),
            (
                "a = (1, ;);",
                "ERR 1: expected a value or ')' in list, found ';'",
            ),
            (
                "a = (1, (;));",
                "ERR 1: expected a value or ')' in list, found ';'",
            ),
            (
                "a = ({ b = 1; ",
                "ERR 1: expected '}' to close group opened on line 1",
            ),
            (
                "a = (1,\n",
                "ERR 2: expected ')' to close list opened on line 1, found end of file",
            ),
            (
                "a = [1] ]",
                "ERR 1: expected ';' after setting \"a\", found ']'",
            ),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn garbage_characters() {
        for (input, want) in [
            ("a = 1; $", "ERR 1: unexpected character '$'"),
            ("a = 'x';", "ERR 1: unexpected character '\\''"),
            (
                "a = @include \"x\";",
                "ERR 1: unexpected character '@' (an @include directive must start a line)",
            ),
            (
                "@includex \"x\"",
                "ERR 1: unexpected character '@' (expected @include \"file\")",
            ),
            (
                "@include x",
                "ERR 1: unexpected character '@' (expected @include \"file\")",
            ),
            (
                "@include \"never closed",
                "ERR 1: unterminated @include path",
            ),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn spans() {
        let text = "a = 1;\n\ng = {\n  b = (\n    1,\n    [2, 3]\n  );\n};\n";
        let s = parse_str(text, p()).unwrap();
        assert_eq!(s[0].span.line, 1);
        assert_eq!(&*s[0].span.file, p());
        assert_eq!(s[1].span.line, 3);
        let Value::Group(g) = &s[1].value else {
            panic!("not a group")
        };
        assert_eq!(g[0].span.line, 4);
        let Value::List(items) = &g[0].value else {
            panic!("not a list")
        };
        assert_eq!(items[0].1.line, 5);
        assert_eq!(items[1].1.line, 6);
        let Value::Array(xs) = &items[1].0 else {
            panic!("not an array")
        };
        assert_eq!(xs[1].1.line, 6);
    }

    #[test]
    fn error_display() {
        let e = parse_str("a = 1;\nb = ;", Path::new("dir/x.conf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dir/x.conf:2: expected a value for setting \"b\", found ';'"
        );
    }

    #[test]
    fn nesting_limit() {
        let deep = format!(
            "a = {}1{};",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(parse_str(&deep, p()).is_ok());
        let deeper = format!("a = {}1{};", "(".repeat(100_000), ")".repeat(100_000));
        let e = parse_str(&deeper, p()).unwrap_err();
        assert!(e.message.contains("nesting too deep"), "{e}");
        let groups = "a = { ".repeat(50_000);
        assert!(parse_str(&groups, p())
            .unwrap_err()
            .message
            .contains("nesting too deep"));
    }

    #[test]
    fn size_limit() {
        let big = "#".repeat(MAX_FILE_BYTES + 1);
        let e = parse_str(&big, p()).unwrap_err();
        assert_eq!(e.line, 0);
        assert!(e.message.contains("file too large"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big.cfg");
        std::fs::write(&f, &big).unwrap();
        assert!(parse_file(&f)
            .unwrap_err()
            .message
            .contains("file too large"));
    }

    #[test]
    fn large_inputs_are_linear() {
        let started = std::time::Instant::now();
        let mut one_line = String::from("a = [");
        while one_line.len() < 1024 * 1024 {
            one_line.push_str("1,");
        }
        one_line.push_str("];");
        let s = parse_str(&one_line, p()).unwrap();
        assert!(matches!(&s[0].value, Value::Array(a) if a.len() > 500_000));
        let mut many = String::new();
        let mut i = 0;
        while many.len() < 1024 * 1024 {
            many.push_str(&format!("s{i}=1;"));
            i += 1;
        }
        assert_eq!(parse_str(&many, p()).unwrap().len(), i);
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn bytes_and_files() {
        let e = parse_bytes(b"a = 1;\nb = \"\xff\";", p()).unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "file is not valid UTF-8"));
        let e = parse_file(Path::new("/nonexistent/utopia.cfg")).unwrap_err();
        assert_eq!(e.line, 0);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/utopia.cfg:0: cannot read file:"),
            "{e}"
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let f = dir.join(name);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&f, text).unwrap();
        f
    }

    #[test]
    fn includes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "sub/limits.cfg", "x = 1;\n@include \"inner.cfg\"\n");
        write(d, "sub/inner.cfg", "# inner\ny = \"in\";\n");
        write(d, "value.cfg", "42");
        let main = write(
            d,
            "main.cfg",
            "a = 1;\ng = {\n  @include \"sub/limits.cfg\"\n  z = 3;\n};\nv =\n\t @include \"value.cfg\"\n;\n",
        );
        let s = parse_file(&main).unwrap();
        assert_eq!(render(&s), "a=1; g={ x=1; y=\"in\"; z=3; }; v=42;");
        let Value::Group(g) = &s[1].value else {
            panic!("not a group")
        };
        assert_eq!(&*g[0].span.file, d.join("sub/limits.cfg").as_path());
        assert_eq!(g[0].span.line, 1);
        assert_eq!(&*g[1].span.file, d.join("sub/inner.cfg").as_path());
        assert_eq!(g[1].span.line, 2);
        assert_eq!(&*g[2].span.file, main.as_path());
        assert_eq!(g[2].span.line, 4);
        assert_eq!(s[2].span.line, 6);

        // parse_str resolves against the given file's directory.
        let s = parse_str("@include \"value.cfg\"", &d.join("virtual.cfg"));
        assert_eq!(
            s.unwrap_err().message,
            "expected a setting name, found integer 42"
        );
        let s = parse_str("k = @include \"value.cfg\"", &d.join("virtual.cfg"));
        assert!(s.unwrap_err().message.contains("must start a line"));

        // Errors inside an included file name that file.
        write(d, "bad.cfg", "ok = 1;\nbad = ;\n");
        let e = parse_str("a = 1;\n@include \"bad.cfg\"\n", &d.join("m.cfg")).unwrap_err();
        assert_eq!(e.file, d.join("bad.cfg"));
        assert_eq!(e.line, 2);
        // Duplicates across files.
        write(d, "dup.cfg", "a = 2;\n");
        let e = parse_str("a = 1;\n@include \"dup.cfg\"\n", &d.join("m.cfg")).unwrap_err();
        assert_eq!((e.file.clone(), e.line), (d.join("dup.cfg"), 1));
        assert!(e.message.contains("first set on"), "{e}");
        // Missing include file.
        let e = parse_str("\n@include \"missing.cfg\"\n", &d.join("m.cfg")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.starts_with("cannot open include file"), "{e}");
        // Settings after an include continue at the right line.
        let s = parse_str("@include \"dup.cfg\"\n\nb = 2;", &d.join("m.cfg")).unwrap();
        assert_eq!(s[1].span.line, 3);
        // A string may span an include.
        write(d, "part.cfg", "\"b\"");
        let s = parse_str("s = \"a\"\n@include \"part.cfg\"\n\"c\";", &d.join("m.cfg")).unwrap();
        assert_eq!(render(&s), "s=\"abc\";");
    }

    #[test]
    fn include_cycles_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = write(d, "a.cfg", "x = 1;\n@include \"b.cfg\"\n");
        write(d, "b.cfg", "@include \"a.cfg\"\n");
        let e = parse_file(&a).unwrap_err();
        assert_eq!(e.file, d.join("b.cfg"));
        assert!(e.message.starts_with("include cycle"), "{e}");
        let selfy = write(d, "self.cfg", "@include \"./self.cfg\"\n");
        assert!(parse_file(&selfy)
            .unwrap_err()
            .message
            .starts_with("include cycle"));

        // A chain of distinct files: 10 open at once is the limit.
        for i in 0..12 {
            write(
                d,
                &format!("c{i}.cfg"),
                &format!("v{i} = {i};\n@include \"c{}.cfg\"\n", i + 1),
            );
        }
        write(d, "c12.cfg", "");
        let e = parse_file(&d.join("c0.cfg")).unwrap_err();
        assert!(e.message.contains("nesting too deep"), "{e}");
        assert_eq!(e.file, d.join("c9.cfg"));
        let s = parse_file(&d.join("c3.cfg")).unwrap();
        assert_eq!(s.len(), 9);

        // The same file included twice in a row is not a cycle.
        write(d, "one.cfg", "(1)");
        let s = parse_str(
            "l = (\n@include \"one.cfg\"\n,\n@include \"one.cfg\"\n);",
            &d.join("m.cfg"),
        )
        .unwrap();
        assert_eq!(render(&s), "l=((1), (1));");
    }

    /// Feeds truncated and garbled variants of a valid file: no panic, and
    /// errors have a line within the text.
    #[test]
    fn never_panics() {
        let valid = "# utopia\nnode_id = 0x1FL;\nname : \"a\\x41\\\"b\" \"c\";\n\
                     g = { f = -2.5E-3, b = TRUE; l = (1, [1.5, .5], { x = 10; }, ()); };\n\
                     /* block\n comment */ arr = [\"x\", \"y\",];\n// end\n";
        assert!(parse_str(valid, p()).is_ok());
        let specials = [
            "",
            "\"",
            "\\",
            "/*",
            "*/",
            "#",
            "@include \"",
            "{",
            "}",
            "[",
            "]",
            "(",
            ")",
            "0x",
            "1e",
            ".",
            "-",
            "\\x",
            "\u{0}",
            "é",
            "L",
            "\n",
            ";",
            ",",
            "=",
        ];
        let chars: Vec<(usize, char)> = valid.char_indices().collect();
        let mut n = 0;
        for &(i, _) in &chars {
            let variants = [
                valid[..i].to_string(),
                valid[i..].to_string(),
                format!(
                    "{}{}",
                    &valid[..i],
                    &valid[i..].chars().skip(1).collect::<String>()
                ),
            ];
            for v in variants.iter().cloned().chain(
                specials
                    .iter()
                    .map(|s| format!("{}{s}{}", &valid[..i], &valid[i..])),
            ) {
                n += 1;
                if let Err(e) = parse_str(&v, p()) {
                    let lines = line_u32(v.matches('\n').count() + 1);
                    assert!(
                        e.line >= 1 && e.line <= lines,
                        "line {} out of range for {v:?}: {e}",
                        e.line
                    );
                    assert!(!e.message.is_empty());
                }
            }
        }
        // Pseudo-random byte soup from the valid file's alphabet.
        let alphabet: Vec<char> = valid.chars().collect();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            let mut s = String::new();
            let len = (seed % 80) as usize;
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            n += 1;
            let _ = parse_str(&s, p());
        }
        assert!(n > 5000);
    }
}

//! `utopia config validate FILE...`: checks XML configuration files against
//! the embedded schemas ([`crate::xmlconf`]), without a server.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::Printer;
use super::CliError;
use crate::xmlconf::{self, Issue, Validated};

/// Largest `--file-bytes-max`, in bytes.
pub const FILE_BYTES_MAX_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate XML configuration files (device classes and schemas) against
    /// the schemas built into utopia; needs no server. One line per file;
    /// exit 1 if any file is invalid.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Refuse files larger than this many bytes (1 to 67108864).
    #[arg(long, default_value_t = xmlconf::FILE_BYTES_MAX, value_parser = parse_file_bytes_max)]
    pub file_bytes_max: usize,
}

fn parse_file_bytes_max(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=FILE_BYTES_MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected an integer from 1 to {FILE_BYTES_MAX_LIMIT}"
        )),
    }
}

/// One file's result with `--output json`; every field is always present.
#[derive(Debug, Serialize)]
pub struct ValidateJson {
    pub file: String,
    pub valid: bool,
    /// `config` or `schema` (valid files).
    #[serde(rename = "type")]
    pub file_type: Option<&'static str>,
    pub name: Option<String>,
    pub version: Option<u32>,
    /// Post types and commands of a valid configuration.
    pub post_types: Option<usize>,
    pub commands: Option<usize>,
    /// Where and why an invalid file is invalid (line and column when known).
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub reason: Option<String>,
}

pub fn run(out: &mut Printer, cmd: &ConfigCommand) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Validate(a) => validate(out, a),
    }
}

fn validate(out: &mut Printer, a: &ValidateArgs) -> Result<(), CliError> {
    let mut invalid = 0usize;
    for path in &a.files {
        let file = path.display().to_string();
        let result = read_bounded(path, a.file_bytes_max)
            .and_then(|bytes| xmlconf::validate(&bytes, a.file_bytes_max));
        if result.is_err() {
            invalid += 1;
        }
        if out.json {
            out.json_line(&json(file, &result))?;
        } else {
            out.line(text(&file, &result))?;
        }
    }
    match invalid {
        0 => Ok(()),
        n => Err(CliError::Invalid(format!(
            "{n} of {} files invalid",
            a.files.len()
        ))),
    }
}

/// Reads at most `bytes_max` bytes of `path` (one more tells it is larger).
fn read_bounded(path: &Path, bytes_max: usize) -> Result<Vec<u8>, Issue> {
    let cannot = |e: std::io::Error| Issue::file(format!("cannot read: {e}"));
    let f = std::fs::File::open(path).map_err(cannot)?;
    let len = f.metadata().map_err(cannot)?.len();
    if len > bytes_max as u64 {
        return Err(Issue::file(format!(
            "file is {len} bytes; the limit is {bytes_max} bytes"
        )));
    }
    let mut bytes = Vec::new();
    f.take(bytes_max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    Ok(bytes)
}

fn text(file: &str, result: &Result<Validated, Issue>) -> String {
    match result {
        Ok(Validated::Config(c)) => format!(
            "{file}: valid (class {} version {}, {} post types)",
            c.name,
            c.version,
            c.posts.len()
        ),
        Ok(Validated::Schema(e)) => {
            format!("{file}: valid (schema {} version {})", e.name, e.version)
        }
        Err(issue) => issue.display_for(file),
    }
}

fn json(file: String, result: &Result<Validated, Issue>) -> ValidateJson {
    let mut j = ValidateJson {
        file,
        valid: result.is_ok(),
        file_type: None,
        name: None,
        version: None,
        post_types: None,
        commands: None,
        line: None,
        column: None,
        reason: None,
    };
    match result {
        Ok(v) => {
            j.file_type = Some(v.file_type().as_str());
            j.name = Some(v.name().to_owned());
            j.version = Some(v.version());
            if let Validated::Config(c) = v {
                j.post_types = Some(c.posts.len());
                j.commands = Some(c.commands.len());
            }
        }
        Err(issue) => {
            j.line = issue.line;
            j.column = issue.column;
            j.reason = Some(issue.reason.clone());
        }
    }
    j
}

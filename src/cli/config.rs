//! `utopia config`: XML configuration files (device classes and schemas).
//!
//! - `validate FILE...` checks files against the embedded schemas
//!   ([`crate::xmlconf`]) without a server.
//! - `upload FILE` validates the file here first (the same messages as
//!   `validate`), sends it (`Configs.Upload`: the member's vote), and waits
//!   until the leader has decided the version, at most `--timeout` in all:
//!   exit 0 when this file's content was accepted, 1 when the file is
//!   invalid, the vote was refused, or another content won.
//! - `list` shows every version and rejected file (`Configs.List`, every
//!   page); `get NAME [--version V]` one version, by default the highest
//!   accepted one (`--output xml`: the file's exact bytes).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;
use utopia_proto::v1 as pb;
use utopia_storage::apply::xmlconf::{valid_name, NAME_BYTES_MAX};

use super::args::ConsistencyArg;
use super::client::{self, Client};
use super::output::Printer;
use super::{code_name, CliError};
use crate::xmlconf::{self, Issue, Validated};

/// Largest `--file-bytes-max`, in bytes.
pub const FILE_BYTES_MAX_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate XML configuration files (device classes and schemas) against
    /// the schemas built into utopia; needs no server. One line per file;
    /// exit 1 if any file is invalid.
    Validate(ValidateArgs),
    /// Upload a configuration file as a vote of the member that serves the
    /// request (Configs.Upload), then wait until the version is decided
    /// (at most --timeout in all). Exit 0: this file was accepted; 1: it is
    /// invalid, the vote was refused, or another content won.
    Upload(UploadArgs),
    /// List every configuration version and every rejected file: NAME TYPE
    /// VERSION HASH STATE VOTES FAILING.
    List(ListArgs),
    /// Show one configuration version, by default the highest accepted one
    /// (--output xml: the file's exact bytes; --output json: its summary
    /// and document).
    // `--version` is the configuration's: no `utopia --version` here.
    #[command(disable_version_flag = true)]
    Get(GetArgs),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The configuration file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Return once the vote is committed, without waiting for the decision.
    #[arg(long)]
    pub no_wait: bool,
    /// Refuse files larger than this many bytes before sending them (1 to
    /// 67108864; the server applies its own configs.file_bytes_max).
    #[arg(long, default_value_t = xmlconf::FILE_BYTES_MAX, value_parser = parse_file_bytes_max)]
    pub file_bytes_max: usize,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The configuration's name.
    pub name: String,
    /// This version (default: the highest accepted one).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub version: Option<u64>,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
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

/// Runs a command that needs a server.
pub async fn run(
    client: &mut Client,
    out: &mut Printer,
    cmd: ConfigCommand,
) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Validate(a) => validate(out, &a),
        ConfigCommand::Upload(a) => upload(client, out, a).await,
        ConfigCommand::List(a) => list(client, out, a).await,
        ConfigCommand::Get(a) => get(client, out, a).await,
    }
}

/// `config validate`, which needs no server.
pub fn validate(out: &mut Printer, a: &ValidateArgs) -> Result<(), CliError> {
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

// ---------------------------------------------------------------- upload

/// How often an upload that waits asks for the version's state, at first
/// and at most (doubling in between).
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// Pages `config list` follows before it stops (with a warning).
const LIST_PAGES_MAX: usize = 10_000;
/// Hex digits of a hash in tables and messages (the JSON has all 64).
const HASH_SHORT_CHARS: usize = 12;

/// `config upload` with `--output json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct UploadJson {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: String,
    pub version: u64,
    /// This file's hash.
    pub hash: String,
    /// What became of this file's content: `accepted`, `superseded`
    /// (another content won), `rejected`, or `proposed` (not waited for).
    pub outcome: &'static str,
    /// The version's state: proposed, accepted, superseded or rejected.
    pub state: String,
    /// The hash the version was decided for (null while undecided).
    pub decided_hash: Option<String>,
    pub decided_ms: Option<u64>,
    pub decide_after_ms: Option<u64>,
    pub reason: Option<String>,
}

async fn upload(client: &mut Client, out: &mut Printer, a: UploadArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let bytes = read_bounded(&a.file, a.file_bytes_max)
        .map_err(|issue| CliError::Invalid(issue.display_for(&file)))?;
    xmlconf::validate(&bytes, a.file_bytes_max)
        .map_err(|issue| CliError::Invalid(issue.display_for(&file)))?;
    let started = Instant::now();
    let req = pb::ConfigUploadRequest { xml: bytes };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::configs(ch).upload(req).await }
        })
        .await
        .map_err(refusal)?;
    let proposed = UploadJson {
        name: resp.name.clone(),
        file_type: resp.r#type.clone(),
        version: resp.version,
        hash: resp.hash.clone(),
        outcome: "proposed",
        state: resp.state.clone(),
        decided_hash: None,
        decided_ms: None,
        decide_after_ms: Some(resp.decide_after_ms).filter(|&ms| ms > 0),
        reason: None,
    };
    // A vote for a version decided already (the same content again) has
    // its outcome at once.
    if a.no_wait && resp.state == "proposed" {
        return print_upload(out, &proposed);
    }
    let config = wait_decided(client, &resp, started).await?;
    print_upload(out, &upload_outcome(proposed, &config))
}

/// An answer of Upload that judges the file or the vote (invalid, refused
/// by the log) rather than the server: exit 1, like an invalid file.
fn refusal(e: CliError) -> CliError {
    match e {
        CliError::Rpc(s)
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            ) =>
        {
            CliError::Invalid(format!("{}: {}", code_name(s.code()), s.message()))
        }
        other => other,
    }
}

/// Polls the version until it is decided, within `--timeout` of `started`.
async fn wait_decided(
    client: &mut Client,
    resp: &pb::ConfigUploadResponse,
    started: Instant,
) -> Result<pb::ConfigInfo, CliError> {
    let deadline = started + client.timeout();
    let req = pb::GetConfigRequest {
        name: resp.name.clone(),
        version: resp.version,
        consistency: pb::Consistency::Linearizable as i32,
    };
    let mut pause = POLL_FIRST;
    loop {
        let got = client
            .call(|ch| {
                let req = req.clone();
                async move { client::configs(ch).get(req).await }
            })
            .await?;
        let config = got.config.unwrap_or_default();
        if config.state != "proposed" {
            return Ok(config);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CliError::Rpc(tonic::Status::deadline_exceeded(format!(
                "{}@{} is still undecided after {:?} (--timeout); the vote is in: \
                 `utopia config get {} --version {}` shows the outcome",
                resp.name,
                resp.version,
                client.timeout(),
                resp.name,
                resp.version
            ))));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// What became of the uploaded content, from the decided version.
fn upload_outcome(mut j: UploadJson, config: &pb::ConfigInfo) -> UploadJson {
    j.state = config.state.clone();
    j.decided_ms = Some(config.decided_ms).filter(|&ms| ms > 0);
    j.reason = Some(config.reason.clone()).filter(|r| !r.is_empty());
    match config.state.as_str() {
        "rejected" => j.outcome = "rejected",
        _ => {
            j.decided_hash = Some(config.hash.clone());
            j.outcome = if config.hash == j.hash {
                "accepted"
            } else {
                "superseded"
            };
        }
    }
    j
}

fn print_upload(out: &mut Printer, j: &UploadJson) -> Result<(), CliError> {
    if out.json {
        out.json_line(j)?;
    } else {
        out.line(upload_text(j))?;
    }
    match j.outcome {
        "accepted" | "proposed" => Ok(()),
        // The line above says why; exit 1 as an invalid file does.
        _ => Err(CliError::Invalid(format!(
            "{}@{} was not accepted with this file's content",
            j.name, j.version
        ))),
    }
}

fn upload_text(j: &UploadJson) -> String {
    let id = format!("{}@{}", j.name, j.version);
    let hash = short(&j.hash);
    match j.outcome {
        "proposed" => format!(
            "{id} proposed (hash {hash}); the leader decides it once the agreement window is over: \
             `utopia config get {} --version {}`",
            j.name, j.version
        ),
        "accepted" if j.state == "superseded" => {
            format!("{id} accepted (hash {hash}), since superseded by a newer version")
        }
        "accepted" => format!("{id} accepted (hash {hash})"),
        "superseded" => format!(
            "{id} superseded by hash {} (this file's hash is {hash})",
            short(j.decided_hash.as_deref().unwrap_or(""))
        ),
        _ => format!(
            "{id} rejected: {}",
            j.reason.as_deref().unwrap_or("no reason recorded")
        ),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..HASH_SHORT_CHARS).unwrap_or(hash)
}

// ---------------------------------------------------------------- list, get

/// One version or rejected file with `--output json` (`config list`
/// entries and `config get`'s `config`).
#[derive(Debug, Serialize, PartialEq)]
pub struct ConfigJson {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: String,
    pub version: u64,
    pub hash: String,
    pub state: String,
    pub proposer: u64,
    pub votes: Vec<VoteJson>,
    pub failing: Vec<FailingJson>,
    pub proposed_ms: u64,
    pub decided_ms: Option<u64>,
    pub decide_after_ms: Option<u64>,
    /// A rejected file's name in its member's directory.
    pub file: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct VoteJson {
    pub node: u64,
    /// The member's configuration weight (`configs.weight`).
    pub weight: f64,
    pub hash: String,
    pub at_ms: u64,
    pub source: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FailingJson {
    pub node: u64,
    pub reason: String,
    pub since_ms: u64,
}

#[derive(Debug, Serialize)]
struct ListJson {
    configs: Vec<ConfigJson>,
}

#[derive(Debug, Serialize)]
struct GetJson {
    config: ConfigJson,
    /// The xml_configs document as stored.
    document: serde_json::Value,
}

pub fn config_json(c: &pb::ConfigInfo) -> ConfigJson {
    ConfigJson {
        id: c.id.clone(),
        name: c.name.clone(),
        file_type: c.r#type.clone(),
        version: c.version,
        hash: c.hash.clone(),
        state: c.state.clone(),
        proposer: c.proposer,
        votes: c
            .votes
            .iter()
            .map(|v| VoteJson {
                node: v.node,
                weight: f64::from(v.weight_milli) / 1000.0,
                hash: v.hash.clone(),
                at_ms: v.at_ms,
                source: v.source.clone(),
            })
            .collect(),
        failing: c
            .failing
            .iter()
            .map(|f| FailingJson {
                node: f.node,
                reason: f.reason.clone(),
                since_ms: f.since_ms,
            })
            .collect(),
        proposed_ms: c.proposed_ms,
        decided_ms: Some(c.decided_ms).filter(|&ms| ms > 0),
        decide_after_ms: Some(c.decide_after_ms).filter(|&ms| ms > 0),
        file: Some(c.file.clone()).filter(|f| !f.is_empty()),
        reason: Some(c.reason.clone()).filter(|r| !r.is_empty()),
    }
}

/// Versions by name, then version number; rejected files after them.
fn sort_configs(configs: &mut [pb::ConfigInfo]) {
    configs.sort_by(|a, b| {
        (!a.file.is_empty(), &a.name, a.version, &a.id).cmp(&(
            !b.file.is_empty(),
            &b.name,
            b.version,
            &b.id,
        ))
    });
}

async fn list(client: &mut Client, out: &mut Printer, a: ListArgs) -> Result<(), CliError> {
    let mut req = pb::ListConfigsRequest {
        limit: 0,
        page_token: String::new(),
        consistency: a.consistency.to_proto(),
    };
    let mut configs = Vec::new();
    for _ in 0..LIST_PAGES_MAX {
        let resp = client
            .call(|ch| {
                let req = req.clone();
                async move { client::configs(ch).list(req).await }
            })
            .await?;
        configs.extend(resp.configs);
        if resp.next_page_token.is_empty() || resp.next_page_token == req.page_token {
            req.page_token.clear();
            break;
        }
        req.page_token = resp.next_page_token;
    }
    if !req.page_token.is_empty() {
        eprintln!("warning: stopped after {LIST_PAGES_MAX} pages; the list is incomplete");
    }
    sort_configs(&mut configs);
    if out.json {
        out.json_line(&ListJson {
            configs: configs.iter().map(config_json).collect(),
        })?;
    } else {
        for line in table(&configs) {
            out.line(line)?;
        }
    }
    Ok(())
}

/// The text table of `config list`, header first, then what the table has
/// no room for: why members fail and why files were rejected.
pub fn table(configs: &[pb::ConfigInfo]) -> Vec<String> {
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "TYPE".into(),
        "VERSION".into(),
        "HASH".into(),
        "STATE".into(),
        "VOTES".into(),
        "FAILING".into(),
    ]];
    let mut notes = Vec::new();
    for c in configs {
        let name = if c.file.is_empty() {
            c.name.clone()
        } else {
            c.id.clone()
        };
        let version = if c.version == 0 {
            String::new()
        } else {
            c.version.to_string()
        };
        let votes: Vec<String> = c
            .votes
            .iter()
            .map(|v| {
                let mut s = format!("{}:{}", v.node, weight_text(v.weight_milli));
                if v.hash != c.hash {
                    s.push_str(&format!("({})", short(&v.hash)));
                }
                s
            })
            .collect();
        let failing: Vec<String> = c.failing.iter().map(|f| f.node.to_string()).collect();
        for f in &c.failing {
            notes.push(format!("{}: node {} failing: {}", c.id, f.node, f.reason));
        }
        if !c.reason.is_empty() {
            notes.push(format!("{}: {}: {}", c.id, c.state, c.reason));
        }
        rows.push([
            dash(name),
            dash(c.r#type.clone()),
            dash(version),
            dash(short(&c.hash).to_string()),
            dash(c.state.clone()),
            dash(votes.join(",")),
            dash(failing.join(",")),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            line
        })
        .collect();
    lines.extend(notes);
    lines
}

/// A weight in thousandths as `configs.weight` writes it: `1`, `1.5`,
/// `0.001`.
fn weight_text(milli: u32) -> String {
    let (whole, frac) = (milli / 1000, milli % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

async fn get(client: &mut Client, out: &mut Printer, a: GetArgs) -> Result<(), CliError> {
    if !valid_name(&a.name) {
        return Err(CliError::Usage(format!(
            "{:?} is not a configuration name (1 to {} of A-Z, a-z, 0-9, '_', '.', '-')",
            a.name, NAME_BYTES_MAX
        )));
    }
    let req = pb::GetConfigRequest {
        name: a.name,
        version: a.version.unwrap_or(0),
        consistency: a.consistency.to_proto(),
    };
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { client::configs(ch).get(req).await }
        })
        .await?;
    let config = resp.config.unwrap_or_default();
    if out.xml {
        // The file's bytes exactly: no newline added.
        out.bytes(&resp.xml)?;
    } else if out.json {
        let document =
            serde_json::from_str(&resp.json).unwrap_or(serde_json::Value::String(resp.json));
        out.json_line(&GetJson {
            config: config_json(&config),
            document,
        })?;
    } else {
        for line in describe(&config) {
            out.line(line)?;
        }
    }
    Ok(())
}

/// `config get` as text: one `field: value` line each, votes and failing
/// members one per line.
fn describe(c: &pb::ConfigInfo) -> Vec<String> {
    let mut lines = vec![
        format!("id:        {}", c.id),
        format!("name:      {}", c.name),
        format!("type:      {}", c.r#type),
        format!("version:   {}", c.version),
        format!("hash:      {}", c.hash),
        format!("state:     {}", c.state),
        format!("proposer:  {}", c.proposer),
        format!("proposed:  {}", utc(c.proposed_ms)),
    ];
    if c.decided_ms > 0 {
        lines.push(format!("decided:   {}", utc(c.decided_ms)));
    } else if c.decide_after_ms > 0 {
        lines.push(format!("decides:   after {}", utc(c.decide_after_ms)));
    }
    if !c.reason.is_empty() {
        lines.push(format!("reason:    {}", c.reason));
    }
    for v in &c.votes {
        lines.push(format!(
            "vote:      node {} weight {} hash {} ({}, {})",
            v.node,
            weight_text(v.weight_milli),
            v.hash,
            v.source,
            utc(v.at_ms)
        ));
    }
    for f in &c.failing {
        lines.push(format!(
            "failing:   node {} since {}: {}",
            f.node,
            utc(f.since_ms),
            f.reason
        ));
    }
    lines
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn utc(ms: u64) -> String {
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    // Howard Hinnant's civil-from-days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, name: &str, version: u64, hash: &str, state: &str) -> pb::ConfigInfo {
        pb::ConfigInfo {
            id: id.into(),
            name: name.into(),
            r#type: "config".into(),
            version,
            hash: hash.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    fn vote(node: u64, weight_milli: u32, hash: &str) -> pb::ConfigVoteInfo {
        pb::ConfigVoteInfo {
            node,
            weight_milli,
            hash: hash.into(),
            at_ms: 1,
            source: "upload".into(),
        }
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_796_139_845_123), "2026-12-01T15:44:05.123Z");
    }

    #[test]
    fn weights_as_configured() {
        assert_eq!(weight_text(1000), "1");
        assert_eq!(weight_text(1500), "1.5");
        assert_eq!(weight_text(1), "0.001");
        assert_eq!(weight_text(2250), "2.25");
        assert_eq!(weight_text(1_000_000), "1000");
    }

    #[test]
    fn versions_sort_by_number_and_rejected_files_last() {
        let mut c = vec![
            info("file/1/x.xml", "", 0, "", "rejected"),
            info("t@10", "t", 10, "a", "accepted"),
            info("t@2", "t", 2, "a", "superseded"),
            info("a@1", "a", 1, "a", "accepted"),
        ];
        c[0].file = "x.xml".into();
        sort_configs(&mut c);
        let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a@1", "t@2", "t@10", "file/1/x.xml"]);
    }

    #[test]
    fn the_table_marks_dissenting_votes_and_explains_failures() {
        let winner = "a".repeat(64);
        let loser = "b".repeat(64);
        let mut t = info("thermo@3", "thermo", 3, &winner, "accepted");
        t.votes = vec![vote(1, 1000, &winner), vote(2, 1500, &loser)];
        t.failing = vec![pb::ConfigFailingInfo {
            node: 3,
            reason: "read-only directory".into(),
            since_ms: 5,
        }];
        let mut f = info("file/2/bad.xml", "", 0, &loser, "rejected");
        f.r#type = String::new();
        f.file = "bad.xml".into();
        f.reason = "line 3, column 7: bad".into();
        let lines = table(&[t, f]);
        assert_eq!(
            lines,
            [
                "NAME            TYPE    VERSION  HASH          STATE     VOTES                    FAILING",
                "thermo          config  3        aaaaaaaaaaaa  accepted  1:1,2:1.5(bbbbbbbbbbbb)  3",
                "file/2/bad.xml  -       -        bbbbbbbbbbbb  rejected  -                        -",
                "thermo@3: node 3 failing: read-only directory",
                "file/2/bad.xml: rejected: line 3, column 7: bad",
            ]
        );
    }

    #[test]
    fn upload_outcomes() {
        let mine = "a".repeat(64);
        let other = "b".repeat(64);
        let proposed = || UploadJson {
            name: "t".into(),
            file_type: "config".into(),
            version: 2,
            hash: mine.clone(),
            outcome: "proposed",
            state: "proposed".into(),
            decided_hash: None,
            decided_ms: None,
            decide_after_ms: Some(9),
            reason: None,
        };
        let mut decided = info("t@2", "t", 2, &mine, "accepted");
        decided.decided_ms = 10;
        let j = upload_outcome(proposed(), &decided);
        assert_eq!(j.outcome, "accepted");
        assert_eq!(j.decided_ms, Some(10));
        assert_eq!(upload_text(&j), "t@2 accepted (hash aaaaaaaaaaaa)");

        decided.hash = other.clone();
        let j = upload_outcome(proposed(), &decided);
        assert_eq!(j.outcome, "superseded");
        assert_eq!(j.decided_hash.as_deref(), Some(other.as_str()));
        assert_eq!(
            upload_text(&j),
            "t@2 superseded by hash bbbbbbbbbbbb (this file's hash is aaaaaaaaaaaa)"
        );

        let mut later = info("t@2", "t", 2, &mine, "superseded");
        later.decided_ms = 10;
        let j = upload_outcome(proposed(), &later);
        assert_eq!(j.outcome, "accepted");
        assert!(upload_text(&j).contains("since superseded by a newer version"));

        let mut rejected = info("t@2", "t", 2, &mine, "rejected");
        rejected.reason = "why".into();
        let j = upload_outcome(proposed(), &rejected);
        assert_eq!(j.outcome, "rejected");
        assert_eq!(upload_text(&j), "t@2 rejected: why");
        assert!(upload_text(&proposed()).starts_with("t@2 proposed (hash aaaaaaaaaaaa)"));
    }

    #[test]
    fn refusals_exit_1_and_other_errors_keep_their_code() {
        use tonic::{Code, Status};
        let e = refusal(CliError::Rpc(Status::new(
            Code::FailedPrecondition,
            "the vote for t@1 was refused: a new version is needed",
        )));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.message().as_deref(),
            Some(
                "error: FAILED_PRECONDITION: the vote for t@1 was refused: a new version is needed"
            )
        );
        assert_eq!(
            refusal(CliError::Rpc(Status::new(Code::InvalidArgument, "x"))).exit_code(),
            1
        );
        assert_eq!(
            refusal(CliError::Rpc(Status::new(Code::PermissionDenied, "x"))).exit_code(),
            3
        );
        assert_eq!(refusal(CliError::Connect("x".into())).exit_code(), 3);
    }
}

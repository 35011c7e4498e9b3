//! Applying configuration agreement (seed 000): members' votes for the
//! content of `name@version`, the decision once the agreement window is
//! over, and the files a member refused.
//!
//! Everything is decided from the log alone: the window ends at the first
//! vote's `at_ms` plus its window, the winner is the hash whose voters'
//! weights sum highest (ties to the lower hash), so every replica accepts
//! the same bytes.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use utopia_raft::event::{ConfigVote, Outcome, Rejection};

use super::{content, Applier, ApplyError, StateRead};
use crate::apply::ingest::ClassRulesRecord;
use crate::codec;
use crate::documents::{
    ConfigCandidate, ConfigState, ConfigVoteRecord, Document, OtherFields, XmlConfig,
};
use crate::keys::{self, Cf};

/// Competing contents of one undecided version, at most.
pub const CANDIDATES_MAX: usize = 8;
/// Votes on one version, at most (one per member).
pub const VOTES_MAX: usize = 64;
/// Longest agreement window a vote may open, in milliseconds.
pub const WINDOW_MS_MAX: u64 = 600_000;
/// Longest configuration name (the envelope schema's bound).
pub const NAME_BYTES_MAX: usize = 64;
/// Longest file name a refusal is recorded under.
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Longest reason recorded for a refused file; the rest is cut.
pub const REASON_BYTES_MAX: usize = 1024;

/// The id of a refused file's record: `file/{node}/{file}`.
pub fn file_doc_id(node: u64, file: &str) -> String {
    format!("file/{node}/{file}")
}

/// Whether `name` is a configuration name: `[A-Za-z0-9_.-]{1,64}`, as the
/// envelope schema has it (it becomes a file name on every member).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The winning hash of `votes`: the highest sum of weights, ties to the
/// lower hash.
pub fn leading_hash(votes: &[ConfigVoteRecord]) -> Option<&str> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for v in votes {
        *sums.entry(v.hash.as_str()).or_default() += u64::from(v.weight_milli);
    }
    sums.into_iter()
        .max_by_key(|&(hash, sum)| (sum, Reverse(hash)))
        .map(|(hash, _)| hash)
}

fn refused(reason: String) -> Result<Outcome, ApplyError> {
    Ok(Outcome::Rejected(Rejection::Invalid(reason)))
}

/// `s` cut to at most `bytes_max` bytes, at a character boundary.
fn cut(s: &str, bytes_max: usize) -> &str {
    if s.len() <= bytes_max {
        return s;
    }
    let mut end = bytes_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// Every version of configuration `name`, in no particular order.
    fn config_versions(&self, name: &str) -> Result<Vec<XmlConfig>, ApplyError> {
        let prefix = format!("{name}@");
        let end = keys::prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        for (k, v) in self.scan(Cf::XmlConfigs, prefix.as_bytes(), end.as_deref(), 0)? {
            let id = keys::parse_document_key(Cf::XmlConfigs, &k)?;
            match XmlConfig::decode(id, &v) {
                Ok(doc) => out.push(doc),
                Err(e) => return content(e.to_string()),
            }
        }
        Ok(out)
    }

    /// Marks the accepted versions of `name` below `version` superseded.
    pub(super) fn supersede_older(
        &mut self,
        at_ms: u64,
        name: &str,
        version: u64,
    ) -> Result<(), ApplyError> {
        for mut other in self.config_versions(name)? {
            if other.version < version && other.state == ConfigState::Accepted {
                other.state = ConfigState::Superseded;
                other.decided_ms = Some(at_ms);
                let id = other.id.clone();
                self.put(
                    Cf::XmlConfigs,
                    keys::document_key(&id).to_vec(),
                    other.encode(),
                );
            }
        }
        Ok(())
    }

    pub(super) fn apply_config_vote(
        &mut self,
        at_ms: u64,
        v: &ConfigVote,
    ) -> Result<Outcome, ApplyError> {
        if !valid_name(&v.name) {
            return refused(format!(
                "configuration name {:?} is not 1 to {NAME_BYTES_MAX} of A-Z a-z 0-9 _ . -",
                v.name
            ));
        }
        if v.kind != "config" && v.kind != "schema" {
            return refused(format!(
                "configuration type {:?} is neither config nor schema",
                v.kind
            ));
        }
        if v.version == 0 {
            return refused("configuration versions start at 1".into());
        }
        if v.window_ms > WINDOW_MS_MAX {
            return refused(format!(
                "agreement window {} ms is above {WINDOW_MS_MAX} ms",
                v.window_ms
            ));
        }
        if blake3::hash(v.xml.as_bytes()).to_hex().as_str() != v.hash {
            return refused(format!(
                "hash {} of {}@{} is not the blake3 of its file",
                v.hash, v.name, v.version
            ));
        }
        let versions = self.config_versions(&v.name)?;
        if let Some(other) = versions.iter().find(|d| d.kind != v.kind) {
            return refused(format!("{} is a {}, not a {}", v.name, other.kind, v.kind));
        }
        let accepted = versions
            .iter()
            .filter(|d| d.state == ConfigState::Accepted)
            .map(|d| d.version)
            .max();
        let id = format!("{}@{}", v.name, v.version);
        let existing = versions.into_iter().find(|d| d.version == v.version);
        if let Some(doc) = &existing {
            if doc.state != ConfigState::Proposed {
                if doc.hash == v.hash {
                    return Ok(Outcome::Done);
                }
                return refused(format!(
                    "{id} was decided ({}) with hash {}; a new version is needed",
                    state_name(doc.state),
                    doc.hash
                ));
            }
        }
        if let Some(accepted) = accepted.filter(|&a| a > v.version) {
            return refused(format!(
                "{}@{accepted} is accepted; a vote must be for a version above it",
                v.name
            ));
        }
        let mut doc = match existing {
            Some(doc) if doc.decide_after_ms.is_none() => {
                // A proposal from before votes existed, decided by
                // ConfigAccepted or ConfigRejected.
                return refused(format!("{id} is proposed and awaits its decision"));
            }
            Some(doc) => doc,
            None => XmlConfig {
                id: id.clone(),
                name: v.name.clone(),
                kind: v.kind.clone(),
                version: v.version,
                hash: v.hash.clone(),
                xml: String::new(),
                proposer: v.proposer,
                // Votes carry their weights; this field is the single
                // proposal's weight of older logs.
                weight: 0,
                state: ConfigState::Proposed,
                proposed_ms: at_ms,
                decided_ms: None,
                reason: None,
                decide_after_ms: Some(at_ms.saturating_add(v.window_ms)),
                votes: Vec::new(),
                candidates: Vec::new(),
                rules: None,
                failing: Vec::new(),
                file: None,
                other: OtherFields::new(),
            },
        };
        let record = ConfigVoteRecord {
            node: v.proposer,
            weight_milli: v.weight_milli,
            hash: v.hash.clone(),
            at_ms,
            source: v.source,
        };
        let votes_len = doc.votes.len();
        match doc.votes.iter_mut().find(|r| r.node == v.proposer) {
            Some(r) if r.hash == v.hash && r.weight_milli == v.weight_milli => {
                return Ok(Outcome::Done)
            }
            Some(r) => *r = record,
            None if votes_len >= VOTES_MAX => {
                return refused(format!("{id} already has {VOTES_MAX} votes"));
            }
            None => doc.votes.push(record),
        }
        if !doc.candidates.iter().any(|c| c.hash == v.hash) {
            if doc.candidates.len() >= CANDIDATES_MAX {
                return refused(format!(
                    "{id} already has {CANDIDATES_MAX} competing contents"
                ));
            }
            doc.candidates.push(ConfigCandidate {
                hash: v.hash.clone(),
                xml: v.xml.clone(),
                rules: v.rules.clone(),
            });
        }
        // A content nobody votes for any more is dropped.
        let voted: Vec<String> = doc.votes.iter().map(|r| r.hash.clone()).collect();
        doc.candidates.retain(|c| voted.contains(&c.hash));
        show_leading(&mut doc);
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_config_decide(
        &mut self,
        at_ms: u64,
        name: &str,
        version: u64,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{name}@{version}");
        let Some(mut doc) = self.get_doc::<XmlConfig>(&id)? else {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "configuration {id}"
            ))));
        };
        if doc.state != ConfigState::Proposed {
            // Decided already (a leader may propose twice).
            return Ok(Outcome::Done);
        }
        let Some(after) = doc.decide_after_ms else {
            return refused(format!("{id} was not voted on; it awaits ConfigAccepted"));
        };
        if at_ms < after {
            return refused(format!(
                "the agreement window of {id} is open until {after} ms"
            ));
        }
        let Some(winner) = leading_hash(&doc.votes).map(str::to_owned) else {
            return content(format!("{id} has no votes"));
        };
        let Some(candidate) = doc.candidates.iter().find(|c| c.hash == winner).cloned() else {
            return content(format!("{id} has no content for hash {winner}"));
        };
        let newer_accepted = self
            .config_versions(name)?
            .iter()
            .filter(|d| d.state == ConfigState::Accepted && d.version > version)
            .map(|d| d.version)
            .max();
        doc.hash = candidate.hash;
        doc.xml = candidate.xml;
        doc.rules = candidate.rules;
        doc.candidates.clear();
        doc.decided_ms = Some(at_ms);
        if let Some(newer) = newer_accepted {
            // A later version was decided first: this one never takes
            // effect.
            doc.state = ConfigState::Superseded;
            doc.reason = Some(format!("{name}@{newer} was accepted first"));
            self.put_doc(&id, doc)?;
            return Ok(Outcome::Done);
        }
        doc.state = ConfigState::Accepted;
        self.supersede_older(at_ms, name, version)?;
        let class_key = keys::ingest::class_key(name);
        match (&doc.rules, doc.kind.as_str()) {
            (Some(rules), "config") => self.put(
                Cf::Ingest,
                class_key,
                codec::encode(&ClassRulesRecord {
                    version,
                    hash: doc.hash.clone(),
                    rules: rules.clone(),
                }),
            ),
            _ => self.delete(Cf::Ingest, class_key),
        }
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_config_file_rejected(
        &mut self,
        at_ms: u64,
        node: u64,
        file: &str,
        hash: &str,
        reason: &str,
    ) -> Result<Outcome, ApplyError> {
        if file.is_empty()
            || file.len() > FILE_NAME_BYTES_MAX
            || file.contains(['/', '\0'])
            || file == "."
            || file == ".."
        {
            return refused(format!(
                "file name {:?} is not 1 to {FILE_NAME_BYTES_MAX} bytes without / or NUL",
                cut(file, FILE_NAME_BYTES_MAX)
            ));
        }
        if hash.len() > 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return refused("a refused file's hash is blake3 hex".into());
        }
        let id = file_doc_id(node, file);
        let reason = cut(reason, REASON_BYTES_MAX);
        if let Some(doc) = self.get_doc::<XmlConfig>(&id)? {
            if doc.hash == hash && doc.reason.as_deref() == Some(reason) {
                return Ok(Outcome::Done);
            }
        }
        let doc = XmlConfig {
            id: id.clone(),
            name: file.to_owned(),
            kind: "file".into(),
            version: 0,
            hash: hash.to_owned(),
            xml: String::new(),
            proposer: node,
            weight: 0,
            state: ConfigState::Rejected,
            proposed_ms: at_ms,
            decided_ms: Some(at_ms),
            reason: Some(reason.to_owned()),
            decide_after_ms: None,
            votes: Vec::new(),
            candidates: Vec::new(),
            rules: None,
            failing: Vec::new(),
            file: Some(file.to_owned()),
            other: OtherFields::new(),
        };
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }
}

/// While undecided, the document's `hash` is the leading content's (its
/// `xml` stays empty: the contents are in `candidates`).
fn show_leading(doc: &mut XmlConfig) {
    if let Some(hash) = leading_hash(&doc.votes) {
        doc.hash = hash.to_owned();
    }
}

fn state_name(s: ConfigState) -> &'static str {
    match s {
        ConfigState::Proposed => "proposed",
        ConfigState::Accepted => "accepted",
        ConfigState::Superseded => "superseded",
        ConfigState::Rejected => "rejected",
    }
}

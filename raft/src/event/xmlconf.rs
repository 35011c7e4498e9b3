//! Events of XML configuration sync (seed 000): votes for a configuration
//! version, the decision once the agreement window is over, files a member
//! refused, and whether a member holds the accepted file on its disk.
//!
//! What the applier needs from a device-class configuration to type device
//! data ([`ClassRules`]) travels in the vote, read by the proposing server
//! after the XSD validation, so that applying never parses XML.

use serde::{Deserialize, Serialize};

/// One member's vote for the content of `name@version`: collected until the
/// agreement window that the first vote opened is over
/// ([`super::Event::ConfigDecide`]). A member has one vote per version; a
/// later vote of the same member replaces its earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigVote {
    pub name: String,
    /// `config` or `schema`.
    pub kind: String,
    pub version: u64,
    /// blake3 of the raw file bytes, hex.
    pub hash: String,
    /// The file, as it was read (valid UTF-8, checked by the proposer).
    pub xml: String,
    /// The member that votes.
    pub proposer: u64,
    /// The member's configuration weight in thousandths (`configs.weight`
    /// 1.5 is 1500): the hash whose voters' weights sum highest wins.
    pub weight_milli: u32,
    /// How long after the first vote the decision is taken, from the first
    /// voter's settings (later votes do not move it).
    pub window_ms: u64,
    /// Where the vote came from.
    pub source: VoteSource,
    /// For a device-class configuration: what ingest checks device data and
    /// commands against once this version is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ClassRules>,
}

/// Where a vote came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteSource {
    /// A file in the member's configuration directory.
    Dir,
    /// `utopia config upload`, through this member.
    Upload,
}

impl VoteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteSource::Dir => "dir",
            VoteSource::Upload => "upload",
        }
    }
}

/// A device class as ingest uses it: the post types it publishes and the
/// commands it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClassRules {
    pub posts: Vec<FieldRule>,
    pub commands: Vec<CommandRule>,
}

/// A post type, or one field of a command's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldRule {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    pub kind: FieldRuleKind,
}

/// A value type and its bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FieldRuleKind {
    Integer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    Float {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    Boolean,
    String {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        length_max: Option<u32>,
    },
    Enum {
        values: Vec<String>,
    },
    Object,
}

/// A command a class accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRule {
    pub name: String,
    pub payload: Vec<FieldRule>,
}

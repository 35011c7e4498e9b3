//! From a validated file to the vote a member proposes for it
//! ([`ConfigVote`]): the file's hash, and for a device class the rules
//! ingest checks device data and commands against ([`ClassRules`]).

use utopia_raft::event::{
    ClassRules, CommandRule, ConfigVote, FieldRule, FieldRuleKind, VoteSource,
};

use super::{ClassConfig, Field, FieldKind, Validated};

/// blake3 of a file's raw bytes, hex: how every member names a content.
pub fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Who votes, how heavily, and for how long votes are collected.
#[derive(Debug, Clone, Copy)]
pub struct Voter {
    pub node: u64,
    /// Configuration weight in thousandths.
    pub weight_milli: u32,
    pub window_ms: u64,
    pub source: VoteSource,
}

/// The vote for `file`, whose raw bytes `bytes` passed
/// [`validate`](super::validate()) as `validated` (so they are UTF-8).
pub fn vote(bytes: &[u8], validated: &Validated, voter: Voter) -> ConfigVote {
    ConfigVote {
        name: validated.name().to_owned(),
        kind: validated.file_type().as_str().to_owned(),
        version: u64::from(validated.version()),
        hash: hash(bytes),
        xml: String::from_utf8_lossy(bytes).into_owned(),
        proposer: voter.node,
        weight_milli: voter.weight_milli,
        window_ms: voter.window_ms,
        source: voter.source,
        rules: match validated {
            Validated::Config(class) => Some(rules(class)),
            Validated::Schema(_) => None,
        },
    }
}

/// What ingest uses of a device class.
pub fn rules(class: &ClassConfig) -> ClassRules {
    ClassRules {
        posts: class.posts.iter().map(field).collect(),
        commands: class
            .commands
            .iter()
            .map(|c| CommandRule {
                name: c.name.clone(),
                payload: c.payload.iter().map(field).collect(),
            })
            .collect(),
    }
}

fn field(f: &Field) -> FieldRule {
    FieldRule {
        name: f.name.clone(),
        required: f.required,
        kind: match &f.kind {
            FieldKind::Integer { min, max } => FieldRuleKind::Integer {
                min: *min,
                max: *max,
            },
            FieldKind::Float { min, max } => FieldRuleKind::Float {
                min: *min,
                max: *max,
            },
            FieldKind::Boolean => FieldRuleKind::Boolean,
            FieldKind::String { length_max } => FieldRuleKind::String {
                length_max: *length_max,
            },
            FieldKind::Enum { values } => FieldRuleKind::Enum {
                values: values.clone(),
            },
            FieldKind::Object => FieldRuleKind::Object,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_file_votes_with_its_hash_and_rules() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/examples/thermostat.xml"
        ))
        .unwrap();
        let validated = super::super::validate(&bytes, super::super::FILE_BYTES_MAX).unwrap();
        let v = vote(
            &bytes,
            &validated,
            Voter {
                node: 2,
                weight_milli: 1500,
                window_ms: 3000,
                source: VoteSource::Dir,
            },
        );
        assert_eq!(v.hash, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(v.kind, "config");
        assert_eq!(v.proposer, 2);
        let rules = v.rules.expect("a device class has rules");
        assert!(!rules.posts.is_empty());
    }
}

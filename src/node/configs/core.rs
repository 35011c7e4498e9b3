//! The decisions of configuration sync, without I/O: what the applied
//! `xml_configs` documents say about a file in the directory ([`judge`]),
//! whether the canonical file of an accepted configuration must be
//! (re)written ([`needs_write`]), which versions the leader may decide
//! ([`Applied::due`]), and the wait between write attempts
//! ([`retry_delay_ms`]).

use std::collections::BTreeMap;

use utopia_storage::documents::{ConfigState, XmlConfig};

/// The applied `xml_configs` documents, by id, and the accepted version of
/// every name.
#[derive(Debug, Default)]
pub struct Applied {
    by_id: BTreeMap<String, XmlConfig>,
    /// name -> id of its accepted (highest accepted) version.
    accepted: BTreeMap<String, String>,
}

impl Applied {
    pub fn new(docs: impl IntoIterator<Item = XmlConfig>) -> Self {
        let mut by_id = BTreeMap::new();
        let mut accepted: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for doc in docs {
            if doc.file.is_none() && doc.state == ConfigState::Accepted {
                let better = accepted
                    .get(&doc.name)
                    .is_none_or(|(version, _)| doc.version > *version);
                if better {
                    accepted.insert(doc.name.clone(), (doc.version, doc.id.clone()));
                }
            }
            by_id.insert(doc.id.clone(), doc);
        }
        Applied {
            by_id,
            accepted: accepted.into_iter().map(|(n, (_, id))| (n, id)).collect(),
        }
    }

    /// The accepted version of `name`.
    pub fn accepted(&self, name: &str) -> Option<&XmlConfig> {
        self.by_id.get(self.accepted.get(name)?)
    }

    /// Every accepted version, one per name.
    pub fn all_accepted(&self) -> impl Iterator<Item = &XmlConfig> {
        self.accepted.values().filter_map(|id| self.by_id.get(id))
    }

    /// Every version of every name (refused files left out).
    pub fn versions(&self) -> impl Iterator<Item = &XmlConfig> {
        self.by_id.values().filter(|d| d.file.is_none())
    }

    pub fn version(&self, name: &str, version: u64) -> Option<&XmlConfig> {
        self.by_id
            .get(&format!("{name}@{version}"))
            .filter(|d| d.file.is_none())
    }

    /// True when member `node`'s refusal of `file` with `hash` is recorded.
    pub fn file_rejected(&self, node: u64, file: &str, hash: &str) -> bool {
        self.by_id
            .get(&format!("file/{node}/{file}"))
            .is_some_and(|d| d.hash == hash)
    }

    /// Undecided versions whose agreement window is over at `now_ms`, at
    /// most `max`, and the earliest window end still ahead.
    pub fn due(&self, now_ms: u64, max: usize) -> (Vec<(String, u64)>, Option<u64>) {
        let mut due = Vec::new();
        let mut next = None::<u64>;
        for doc in self.by_id.values() {
            if doc.file.is_some() || doc.state != ConfigState::Proposed {
                continue;
            }
            let Some(after) = doc.decide_after_ms else {
                continue;
            };
            if after <= now_ms {
                if due.len() < max {
                    due.push((doc.name.clone(), doc.version));
                }
            } else {
                next = Some(next.map_or(after, |n| n.min(after)));
            }
        }
        (due, next)
    }
}

/// What to do about a valid file in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The log already has it (decided with this hash, or this member's
    /// vote for it).
    Nothing,
    /// Vote for it.
    Vote,
    /// Record it as refused, with why.
    Refuse(String),
    /// It is the canonical file of an accepted configuration holding other
    /// content: the writer puts the accepted content back.
    Restore,
}

/// The verdict on `file`, whose content is version `version` of `name`
/// with `hash`, for member `me`.
pub fn judge(
    applied: &Applied,
    me: u64,
    file: &str,
    name: &str,
    version: u64,
    hash: &str,
) -> Verdict {
    let canonical = file.strip_suffix(".xml") == Some(name);
    let accepted = applied.accepted(name);
    let refuse = |reason: String| {
        if canonical && accepted.is_some() {
            Verdict::Restore
        } else {
            Verdict::Refuse(reason)
        }
    };
    match applied.version(name, version) {
        Some(doc) if doc.state == ConfigState::Proposed => {
            if doc.votes.iter().any(|v| v.node == me && v.hash == hash) {
                Verdict::Nothing
            } else {
                Verdict::Vote
            }
        }
        Some(doc) if doc.hash == hash => Verdict::Nothing,
        Some(doc) => refuse(format!(
            "{name} version {version} is already decided with another content \
             (hash {}); a new version is needed",
            short(&doc.hash)
        )),
        None => match accepted {
            Some(a) if version <= a.version => refuse(format!(
                "{name} version {version} is not above the accepted version {}",
                a.version
            )),
            _ => Verdict::Vote,
        },
    }
}

/// What the canonical file `{name}.xml` holds, as the watcher last read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDisk<'a> {
    Missing,
    /// Not a valid configuration (or unreadable).
    Invalid {
        hash: &'a str,
    },
    Valid {
        hash: &'a str,
        name: &'a str,
        version: u64,
    },
}

/// Whether the canonical file of the accepted `accepted` must be written:
/// not when it holds that content, nor while it holds a newer version of
/// the same name that is still to be decided (an operator's edit in
/// progress through the vote).
pub fn needs_write(applied: &Applied, accepted: &XmlConfig, on_disk: OnDisk<'_>) -> bool {
    match on_disk {
        OnDisk::Missing => true,
        OnDisk::Invalid { hash } => hash != accepted.hash,
        OnDisk::Valid {
            hash,
            name,
            version,
        } => {
            if hash == accepted.hash {
                return false;
            }
            let pending = name == accepted.name
                && version > accepted.version
                && applied
                    .version(name, version)
                    .is_none_or(|d| d.state == ConfigState::Proposed);
            !pending
        }
    }
}

/// How long to wait after the `failures`-th failed write attempt in a row:
/// `backoff_ms` doubling per attempt while fewer than `attempts_max`
/// failed; after that `interval_ms` (the scan interval), and the second
/// value is true: the bounded retries are exhausted. The doubling stops at
/// the scan interval.
pub fn retry_delay_ms(
    failures: u32,
    attempts_max: u32,
    backoff_ms: u64,
    interval_ms: u64,
) -> (u64, bool) {
    if failures >= attempts_max {
        return (interval_ms, true);
    }
    let shift = failures.saturating_sub(1).min(20);
    // Never longer than the scan interval's wait (or the first backoff).
    let cap = interval_ms.max(backoff_ms);
    (backoff_ms.saturating_mul(1u64 << shift).min(cap), false)
}

/// A file name utopia writes: `{name}.xml` for a name of the envelope's
/// pattern `[A-Za-z0-9_.-]{1,64}` (so never a path).
pub fn canonical_file(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    ok.then(|| format!("{name}.xml"))
}

/// A file the watcher looks at: `*.xml`, not hidden (utopia's temporary
/// files are hidden).
pub fn watched_file(file: &str) -> bool {
    file.len() > 4 && file.ends_with(".xml") && !file.starts_with('.') && !file.contains('/')
}

/// The first 12 digits of a hash, for messages.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use utopia_raft::event::VoteSource;
    use utopia_storage::documents::ConfigVoteRecord;

    fn doc(name: &str, version: u64, hash: &str, state: ConfigState) -> XmlConfig {
        XmlConfig {
            id: format!("{name}@{version}"),
            name: name.into(),
            kind: "config".into(),
            version,
            hash: hash.into(),
            xml: String::new(),
            proposer: 1,
            weight: 1000,
            state,
            proposed_ms: 1,
            decided_ms: None,
            reason: None,
            decide_after_ms: Some(100),
            votes: vec![],
            candidates: vec![],
            rules: None,
            failing: vec![],
            file: None,
            other: Default::default(),
        }
    }

    fn vote(node: u64, hash: &str) -> ConfigVoteRecord {
        ConfigVoteRecord {
            node,
            weight_milli: 1000,
            hash: hash.into(),
            at_ms: 1,
            source: VoteSource::Dir,
        }
    }

    #[test]
    fn the_accepted_version_is_the_highest_accepted() {
        let a = Applied::new([
            doc("t", 1, "h1", ConfigState::Superseded),
            doc("t", 3, "h3", ConfigState::Accepted),
            doc("t", 2, "h2", ConfigState::Accepted),
            doc("t", 4, "h4", ConfigState::Proposed),
        ]);
        assert_eq!(a.accepted("t").unwrap().version, 3);
        assert!(a.accepted("u").is_none());
        assert_eq!(a.all_accepted().count(), 1);
    }

    #[test]
    fn a_new_version_is_voted_once() {
        let mut p = doc("t", 2, "", ConfigState::Proposed);
        p.votes.push(vote(1, "aa"));
        let a = Applied::new([doc("t", 1, "h1", ConfigState::Accepted), p]);
        assert_eq!(judge(&a, 2, "x.xml", "t", 2, "aa"), Verdict::Vote);
        assert_eq!(judge(&a, 1, "x.xml", "t", 2, "aa"), Verdict::Nothing);
        // Member 1 changes its mind: a vote for another hash.
        assert_eq!(judge(&a, 1, "x.xml", "t", 2, "bb"), Verdict::Vote);
        // A version nobody voted for yet.
        assert_eq!(judge(&a, 1, "x.xml", "t", 5, "cc"), Verdict::Vote);
        assert_eq!(judge(&a, 1, "x.xml", "new", 1, "cc"), Verdict::Vote);
    }

    #[test]
    fn decided_versions_are_left_alone_or_refused() {
        let a = Applied::new([
            doc("t", 1, "h1", ConfigState::Superseded),
            doc("t", 2, "h2", ConfigState::Accepted),
        ]);
        assert_eq!(judge(&a, 1, "t.xml", "t", 2, "h2"), Verdict::Nothing);
        assert_eq!(judge(&a, 1, "old.xml", "t", 1, "h1"), Verdict::Nothing);
        match judge(&a, 1, "other.xml", "t", 2, "zz") {
            Verdict::Refuse(r) => assert!(r.contains("a new version is needed"), "{r}"),
            v => panic!("{v:?}"),
        }
        match judge(&a, 1, "other.xml", "t", 1, "zz") {
            Verdict::Refuse(r) => assert!(r.contains("already decided"), "{r}"),
            v => panic!("{v:?}"),
        }
        // A rejected version below the accepted one that was never voted.
        let b = Applied::new([doc("t", 5, "h5", ConfigState::Accepted)]);
        match judge(&b, 1, "other.xml", "t", 4, "zz") {
            Verdict::Refuse(r) => {
                assert!(r.contains("not above the accepted version 5"), "{r}")
            }
            v => panic!("{v:?}"),
        }
        // The canonical file of an accepted configuration is restored.
        assert_eq!(judge(&a, 1, "t.xml", "t", 2, "zz"), Verdict::Restore);
        assert_eq!(judge(&b, 1, "t.xml", "t", 4, "zz"), Verdict::Restore);
    }

    #[test]
    fn the_canonical_file_is_written_unless_it_holds_the_content_or_a_pending_version() {
        let mut pending = doc("t", 3, "", ConfigState::Proposed);
        pending.votes.push(vote(1, "h3"));
        let a = Applied::new([
            doc("t", 2, "h2", ConfigState::Accepted),
            pending,
            doc("t", 4, "h4", ConfigState::Rejected),
        ]);
        let acc = a.accepted("t").unwrap().clone();
        assert!(needs_write(&a, &acc, OnDisk::Missing));
        assert!(!needs_write(&a, &acc, OnDisk::Invalid { hash: "h2" }));
        assert!(needs_write(&a, &acc, OnDisk::Invalid { hash: "junk" }));
        let valid = |hash, name, version| OnDisk::Valid {
            hash,
            name,
            version,
        };
        assert!(!needs_write(&a, &acc, valid("h2", "t", 2)));
        // Edited behind utopia's back, same version: restored.
        assert!(needs_write(&a, &acc, valid("x", "t", 2)));
        // An older version: restored.
        assert!(needs_write(&a, &acc, valid("x", "t", 1)));
        // Another class in this name's file: restored.
        assert!(needs_write(&a, &acc, valid("x", "u", 9)));
        // A newer version being voted, or not yet voted: left to the vote.
        assert!(!needs_write(&a, &acc, valid("h3", "t", 3)));
        assert!(!needs_write(&a, &acc, valid("h9", "t", 9)));
        // A newer version the log decided otherwise: restored.
        assert!(needs_write(&a, &acc, valid("x", "t", 4)));
    }

    #[test]
    fn due_lists_undecided_versions_whose_window_is_over() {
        let mut late = doc("u", 1, "", ConfigState::Proposed);
        late.decide_after_ms = Some(500);
        let a = Applied::new([
            doc("t", 1, "h", ConfigState::Proposed),
            doc("t", 2, "h", ConfigState::Accepted),
            late,
        ]);
        assert_eq!(a.due(200, 10), (vec![("t".to_string(), 1)], Some(500)));
        assert_eq!(a.due(600, 10).0.len(), 2);
        assert_eq!(a.due(600, 1).0.len(), 1, "bounded per tick");
    }

    #[test]
    fn file_rejections_are_matched_by_node_file_and_hash() {
        let mut f = doc("x", 0, "hh", ConfigState::Rejected);
        f.id = "file/2/a.xml".into();
        f.file = Some("a.xml".into());
        let a = Applied::new([f]);
        assert!(a.file_rejected(2, "a.xml", "hh"));
        assert!(!a.file_rejected(2, "a.xml", "other"));
        assert!(!a.file_rejected(3, "a.xml", "hh"));
        assert!(
            a.version("x", 0).is_none(),
            "a file record is not a version"
        );
    }

    #[test]
    fn retries_back_off_then_fall_back_to_the_scan_interval() {
        assert_eq!(retry_delay_ms(1, 3, 100, 5000), (100, false));
        assert_eq!(retry_delay_ms(2, 3, 100, 5000), (200, false));
        assert_eq!(retry_delay_ms(3, 3, 100, 5000), (5000, true));
        assert_eq!(retry_delay_ms(9, 3, 100, 5000), (5000, true));
        assert_eq!(retry_delay_ms(12, 100, 100, 5000), (5000, false));
        assert_eq!(retry_delay_ms(99, 100, u64::MAX, 1).0, u64::MAX);
    }

    #[test]
    fn names_and_files() {
        assert_eq!(
            canonical_file("door-sensor").as_deref(),
            Some("door-sensor.xml")
        );
        assert_eq!(canonical_file("a/b"), None);
        assert_eq!(canonical_file(""), None);
        assert_eq!(canonical_file(".."), None);
        assert_eq!(canonical_file(&"a".repeat(65)), None);
        assert!(watched_file("a.xml"));
        assert!(!watched_file(".a.xml.utopia-tmp"));
        assert!(!watched_file(".a.xml"));
        assert!(!watched_file("a.xsd"));
        assert!(!watched_file(".xml"));
    }
}

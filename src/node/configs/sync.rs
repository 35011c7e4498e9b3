//! The member's sync task: watches `configs.dir` (change notifications
//! through `notify`, and a full scan every `scan_interval_ms` in case one
//! was missed), votes for the valid files it finds, records the files it
//! refuses, and writes the accepted version of every configuration as
//! `{name}.xml`, verified, with bounded retries; a member that cannot is
//! recorded as failing for that configuration until it can again.
//!
//! A file is re-read only when its size, modification time or inode
//! changed; per file the task remembers the hash it last handled and what
//! it did about it, so the same bytes are voted for, or refused, once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use utopia_raft::event::{ConfigVote, Event, VoteSource};
use utopia_storage::documents::{Fellow, XmlConfig};

use super::core::{self, Applied, OnDisk, Verdict};
use super::disk::{self, Meta, Stat};
use super::{bounded_reason, propose, read_applied, TICK};
use crate::node::Node;
use crate::xmlconf::{self, Voter};

/// Files of the directory looked at, at most (the rest are skipped, with a
/// warning).
const FILES_MAX: usize = 1024;
/// Change notifications queued, at most; past that the next tick scans the
/// whole directory instead.
const NOTICES_QUEUED_MAX: usize = 256;
/// A file whose vote or refusal did not get through (no leader) is tried
/// again this often.
const UNSETTLED_RETRY: Duration = Duration::from_secs(1);

/// What a file held when it was last read.
#[derive(Debug)]
struct Seen {
    meta: Meta,
    hash: String,
    kind: Kind,
    /// This member's vote for `hash` was applied.
    voted: bool,
    /// The refusal of `hash` is recorded in the log.
    recorded: bool,
    /// The refusal was logged and counted.
    counted: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Why it is not a valid configuration (`file:line:col: reason`).
    Invalid(String),
    Valid {
        name: String,
        version: u64,
    },
}

/// What reading a file found.
enum Read {
    Gone,
    Unchanged,
    Failed(String),
    Content {
        meta: Meta,
        hash: String,
        kind: Kind,
        vote: Option<Box<ConfigVote>>,
    },
}

/// The writer's state for one accepted configuration.
#[derive(Debug)]
struct Writer {
    version: u64,
    hash: String,
    /// Failed attempts in a row.
    failures: u32,
    next_at: Instant,
    last_error: String,
    /// When this member last proposed its sync state, and which.
    reported: Option<(Instant, bool)>,
}

impl Writer {
    /// A writer for `version` with content `hash`, due now.
    fn new(version: u64, hash: &str, now: Instant) -> Self {
        Writer {
            version,
            hash: hash.to_owned(),
            failures: 0,
            next_at: now,
            last_error: String::new(),
            reported: None,
        }
    }
}

struct Sync {
    node: Arc<Node>,
    me: u64,
    dir: PathBuf,
    seen: BTreeMap<String, Seen>,
    /// Files to read again (their vote or refusal did not get through).
    unsettled: BTreeSet<String>,
    applied: Arc<Applied>,
    /// The applied index `applied` was read at.
    applied_at: Option<u64>,
    writers: BTreeMap<String, Writer>,
    /// Configurations this member's fellows document lists it failing.
    fellow_failing: BTreeSet<String>,
}

/// The member's sync task (see the module doc). Runs until the server
/// stops it.
pub async fn run(node: Arc<Node>) {
    let dir = node.configs.dir.clone();
    let scan_interval = Duration::from_millis(node.configs.scan_interval_ms);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "create the configuration directory");
    }
    let (tx, mut rx) = mpsc::channel::<String>(NOTICES_QUEUED_MAX);
    let overflow = Arc::new(AtomicBool::new(false));
    let mut watcher = None;
    let mut watched_dir = None;
    let mut sync = Sync {
        me: node.raft.id(),
        node,
        dir,
        seen: BTreeMap::new(),
        unsettled: BTreeSet::new(),
        applied: Arc::default(),
        applied_at: None,
        writers: BTreeMap::new(),
        fellow_failing: BTreeSet::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan_at = Instant::now();
    let mut unsettled_at = Instant::now();
    loop {
        let mut noticed = BTreeSet::new();
        tokio::select! {
            Some(file) = rx.recv() => {
                noticed.insert(file);
                while noticed.len() < FILES_MAX {
                    match rx.try_recv() {
                        Ok(file) => { noticed.insert(file); }
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {}
        }
        let applied_changed = sync.refresh_applied();
        let now = Instant::now();
        if now >= scan_at || overflow.swap(false, Ordering::AcqRel) {
            // A directory removed and made again is another inode: the old
            // watch sees nothing of it.
            let dir_id = disk::dir_id(&sync.dir);
            if dir_id != watched_dir {
                watcher = None;
            }
            if watcher.is_none() && dir_id.is_some() {
                watcher = watch(&sync.dir, tx.clone(), overflow.clone());
                watched_dir = dir_id;
            }
            sync.scan().await;
            scan_at = now + scan_interval;
        } else {
            for file in noticed {
                sync.handle(&file, false).await;
            }
        }
        if applied_changed {
            sync.rejudge().await;
        }
        if now >= unsettled_at && !sync.unsettled.is_empty() {
            for file in std::mem::take(&mut sync.unsettled) {
                sync.handle(&file, true).await;
            }
            unsettled_at = now + UNSETTLED_RETRY;
        }
        if sync.refresh_applied() {
            sync.rejudge().await;
        }
        sync.reconcile(scan_interval).await;
    }
}

/// Watches `dir` (not recursively): the names of changed files go into
/// `tx`; when it is full, or a notification was lost, `overflow` asks for
/// a full scan. `None` (and a warning) when the watch cannot be set up:
/// the scans still run, and the next one tries again.
fn watch(
    dir: &Path,
    tx: mpsc::Sender<String>,
    overflow: Arc<AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    let flag = overflow.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if event.need_rescan() {
                flag.store(true, Ordering::Release);
            }
            for path in event.paths {
                let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                    continue;
                };
                if core::watched_file(file) && tx.try_send(file.to_string()).is_err() {
                    flag.store(true, Ordering::Release);
                }
            }
        }
        Err(_) => flag.store(true, Ordering::Release),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "watch the configuration directory; scans only");
            return None;
        }
    };
    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e,
                "watch the configuration directory; scans only");
            None
        }
    }
}

impl Sync {
    /// Reads the applied documents again if the applied state moved; true
    /// when it did.
    fn refresh_applied(&mut self) -> bool {
        let index = self.node.raft.status().applied_index;
        if self.applied_at == Some(index) {
            return false;
        }
        match read_applied(&self.node) {
            Ok(a) => {
                self.applied = Arc::new(a);
                self.applied_at = Some(index);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration sync");
                false
            }
        }
    }

    /// Looks at every watched file of the directory, and forgets files that
    /// are gone.
    async fn scan(&mut self) {
        let dir = self.dir.clone();
        let listed = tokio::task::spawn_blocking(move || disk::list(&dir, FILES_MAX)).await;
        let files = match listed {
            Ok(Ok((files, more))) => {
                if more {
                    tracing::warn!(dir = %self.dir.display(), files_max = FILES_MAX,
                        "more configuration files than are looked at; the rest are skipped");
                }
                files
            }
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e,
                    "scan the configuration directory");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "scan the configuration directory");
                return;
            }
        };
        let listed: BTreeSet<&String> = files.iter().collect();
        self.seen.retain(|f, _| listed.contains(f));
        for file in &files {
            self.handle(file, false).await;
        }
    }

    /// Reads `file` if it changed (or `force`), and acts on what it holds.
    async fn handle(&mut self, file: &str, force: bool) {
        let prev = if force {
            None
        } else {
            self.seen.get(file).map(|s| s.meta.clone())
        };
        let path = self.dir.join(file);
        let bytes_max = self.node.configs.file_bytes_max;
        let voter = Voter {
            node: self.me,
            weight_milli: self.node.configs.weight_milli,
            window_ms: self.node.configs.agreement_window_ms,
            source: VoteSource::Dir,
        };
        let name = file.to_string();
        let read =
            tokio::task::spawn_blocking(move || read_file(&path, &name, prev, bytes_max, voter))
                .await
                .unwrap_or_else(|e| Read::Failed(e.to_string()));
        match read {
            Read::Unchanged => {}
            Read::Gone => {
                self.seen.remove(file);
                self.unsettled.remove(file);
            }
            Read::Failed(e) => {
                // Read again at the next scan.
                tracing::warn!(file = %self.dir.join(file).display(), error = %e,
                    "read a configuration file");
                self.seen.remove(file);
            }
            Read::Content {
                meta,
                hash,
                kind,
                vote,
            } => {
                match self.seen.get_mut(file) {
                    // The same bytes (touched, rewritten alike, or read
                    // again because what was done about them did not get
                    // through): done once.
                    Some(s) if s.hash == hash => {
                        s.meta = meta;
                        if !s.voted && !s.recorded {
                            self.act(file, vote).await;
                        }
                    }
                    _ => {
                        self.seen.insert(
                            file.to_string(),
                            Seen {
                                meta,
                                hash,
                                kind,
                                voted: false,
                                recorded: false,
                                counted: false,
                            },
                        );
                        self.act(file, vote).await;
                    }
                }
            }
        }
    }

    /// Judges every valid file again against the applied state (a vote
    /// decided against it is recorded as refused; a vote missing is cast
    /// after reading the file again).
    async fn rejudge(&mut self) {
        let files: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, s)| matches!(s.kind, Kind::Valid { .. }) && !s.recorded)
            .map(|(f, _)| f.clone())
            .collect();
        for file in files {
            self.act(&file, None).await;
        }
    }

    /// Acts on what `file` holds: votes (with `vote`, read just now; without
    /// it the file is read again), records a refusal, or leaves it.
    async fn act(&mut self, file: &str, vote: Option<Box<ConfigVote>>) {
        let Some(seen) = self.seen.get(file) else {
            return;
        };
        let hash = seen.hash.clone();
        let verdict = match &seen.kind {
            Kind::Invalid(reason) => Verdict::Refuse(reason.clone()),
            Kind::Valid { name, version } => {
                core::judge(&self.applied, self.me, file, name, *version, &hash)
            }
        };
        match verdict {
            Verdict::Nothing | Verdict::Restore => {}
            Verdict::Refuse(reason) => self.refuse(file, &hash, reason).await,
            Verdict::Vote if seen.voted => {}
            Verdict::Vote => {
                let Some(vote) = vote else {
                    self.unsettled.insert(file.to_string());
                    return;
                };
                let (name, version) = (vote.name.clone(), vote.version);
                match propose(&self.node, Event::ConfigVote(*vote)).await {
                    Ok(Ok(())) => {
                        self.node.metrics.config_votes_proposed.inc();
                        tracing::info!(file, name = %name, version, hash = core::short(&hash),
                            "voted for a configuration file");
                        if let Some(s) = self.seen.get_mut(file) {
                            s.voted = true;
                        }
                    }
                    Ok(Err(r)) => {
                        self.refuse(file, &hash, format!("{file}: the vote was refused: {r}"))
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(file, error = %e, "vote for a configuration file");
                        self.unsettled.insert(file.to_string());
                    }
                }
            }
        }
    }

    /// Logs, counts and records (once per file and hash) that `file` is not
    /// taken.
    async fn refuse(&mut self, file: &str, hash: &str, reason: String) {
        let me = self.me;
        let on_record = self.applied.file_rejected(me, file, hash);
        let Some(seen) = self.seen.get_mut(file) else {
            return;
        };
        if !seen.counted {
            seen.counted = true;
            self.node.metrics.config_files_rejected.inc();
            tracing::warn!(dir = %self.dir.display(), "configuration file refused: {reason}");
        }
        if seen.recorded || on_record {
            seen.recorded = true;
            return;
        }
        let event = Event::ConfigFileRejected {
            node: me,
            file: file.to_string(),
            hash: hash.to_string(),
            reason: bounded_reason(reason),
        };
        match propose(&self.node, event).await {
            Ok(outcome) => {
                if let Err(r) = outcome {
                    tracing::warn!(file, error = %r, "record a refused configuration file");
                }
                if let Some(s) = self.seen.get_mut(file) {
                    s.recorded = true;
                }
            }
            Err(e) => {
                tracing::debug!(file, error = %e, "record a refused configuration file");
                self.unsettled.insert(file.to_string());
            }
        }
    }

    /// Makes `{name}.xml` hold the accepted content of every configuration,
    /// and keeps this member's sync state in the log in step.
    async fn reconcile(&mut self, scan_interval: Duration) {
        let applied = self.applied.clone();
        let accepted: Vec<&XmlConfig> = applied.all_accepted().collect();
        self.fellow_failing = match self.node.reader.document::<Fellow>(&self.me.to_string()) {
            Ok(Some(f)) => f.config_failing.into_iter().map(|c| c.name).collect(),
            _ => BTreeSet::new(),
        };
        let names: BTreeSet<&str> = accepted.iter().map(|d| d.name.as_str()).collect();
        self.writers.retain(|n, _| names.contains(n.as_str()));
        for doc in &accepted {
            let Some(file) = core::canonical_file(&doc.name) else {
                continue;
            };
            let on_disk = match self.seen.get(&file) {
                None => OnDisk::Missing,
                Some(Seen {
                    hash,
                    kind: Kind::Invalid(_),
                    ..
                }) => OnDisk::Invalid { hash },
                Some(Seen {
                    hash,
                    kind: Kind::Valid { name, version },
                    ..
                }) => OnDisk::Valid {
                    hash,
                    name,
                    version: *version,
                },
            };
            let now = Instant::now();
            let writer = self
                .writers
                .entry(doc.name.clone())
                .or_insert_with(|| Writer::new(doc.version, &doc.hash, now));
            if writer.version != doc.version || writer.hash != doc.hash {
                *writer = Writer::new(doc.version, &doc.hash, now);
            }
            if !core::needs_write(&applied, doc, on_disk) {
                writer.failures = 0;
                self.report(doc, false, scan_interval).await;
                continue;
            }
            if now < writer.next_at {
                continue;
            }
            let dir = self.dir.clone();
            let (f, xml, hash) = (file.clone(), doc.xml.clone(), doc.hash.clone());
            let written = tokio::task::spawn_blocking(move || {
                disk::write_verified(&dir, &f, xml.as_bytes(), &hash)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            self.count_sync(&doc.name, written.is_err()).await;
            match written {
                Ok(meta) => {
                    self.node.metrics.config_files_written.inc();
                    tracing::info!(file = %file, version = doc.version,
                        hash = core::short(&doc.hash), "wrote the accepted configuration");
                    self.seen.insert(
                        file.clone(),
                        Seen {
                            meta,
                            hash: doc.hash.clone(),
                            kind: Kind::Valid {
                                name: doc.name.clone(),
                                version: doc.version,
                            },
                            voted: false,
                            recorded: false,
                            counted: false,
                        },
                    );
                    self.unsettled.remove(&file);
                    if let Some(w) = self.writers.get_mut(&doc.name) {
                        w.failures = 0;
                    }
                    self.report(doc, false, scan_interval).await;
                }
                Err(e) => {
                    self.node.metrics.config_write_failures.inc();
                    let c = &self.node.configs;
                    let Some(w) = self.writers.get_mut(&doc.name) else {
                        continue;
                    };
                    w.failures = w.failures.saturating_add(1);
                    let (delay_ms, exhausted) = core::retry_delay_ms(
                        w.failures,
                        c.write_attempts_max,
                        c.write_backoff_ms,
                        c.scan_interval_ms,
                    );
                    let now = Instant::now();
                    w.next_at = now
                        .checked_add(Duration::from_millis(delay_ms))
                        .unwrap_or(now + scan_interval);
                    w.last_error = e.clone();
                    tracing::warn!(file = %file, attempt = w.failures, error = %e,
                        "write the accepted configuration");
                    if exhausted {
                        self.report(doc, true, scan_interval).await;
                    }
                }
            }
        }
    }

    /// Counts a write of the accepted file of configuration `name` in its
    /// stats document (`config/{name}`): an attempt, and a failure when
    /// it `failed`. Writes are paced by the retry backoff, so these events
    /// are too.
    async fn count_sync(&self, name: &str, failed: bool) {
        use utopia_raft::event::StatCounter;
        let counters: &[StatCounter] = if failed {
            &[StatCounter::Attempts, StatCounter::Failures]
        } else {
            &[StatCounter::Attempts]
        };
        for &counter in counters {
            let event = Event::StatIncremented {
                id: name.to_owned(),
                kind: "config".to_owned(),
                counter,
                by: 1,
            };
            match propose(&self.node, event).await {
                Ok(Ok(())) => {}
                Ok(Err(r)) => tracing::warn!(name, error = %r, "count a configuration sync"),
                Err(e) => tracing::debug!(name, error = %e, "count a configuration sync"),
            }
        }
    }

    /// Proposes this member's sync state for the accepted `doc` when the
    /// log says otherwise (at most once per scan interval).
    async fn report(&mut self, doc: &XmlConfig, failing: bool, scan_interval: Duration) {
        // Listed on the version, or (for an older version of the name) in
        // this member's fellows document.
        let listed = doc.failing.iter().any(|f| f.node == self.me)
            || (!failing && self.fellow_failing.contains(&doc.name));
        if listed == failing {
            return;
        }
        let Some(w) = self.writers.get_mut(&doc.name) else {
            return;
        };
        let now = Instant::now();
        if w.reported
            .is_some_and(|(at, f)| f == failing && now < at + scan_interval)
        {
            return;
        }
        w.reported = Some((now, failing));
        let reason = if failing {
            bounded_reason(format!(
                "could not write and verify {} after {} attempts: {}",
                self.dir.join(format!("{}.xml", doc.name)).display(),
                w.failures,
                w.last_error
            ))
        } else {
            String::new()
        };
        let event = Event::ConfigSyncState {
            node: self.me,
            name: doc.name.clone(),
            version: doc.version,
            failing,
            reason: reason.clone(),
        };
        match propose(&self.node, event).await {
            Ok(Ok(())) if failing => {
                tracing::error!(name = %doc.name, version = doc.version, reason = %reason,
                    "this member is marked failing for the configuration")
            }
            Ok(Ok(())) => tracing::info!(name = %doc.name, version = doc.version,
                "this member holds the accepted configuration again"),
            Ok(Err(r)) => tracing::warn!(name = %doc.name, error = %r,
                "record this member's configuration sync state"),
            Err(e) => tracing::debug!(name = %doc.name, error = %e,
                "record this member's configuration sync state"),
        }
    }
}

/// Reads `path` (the file `file`) unless its metadata is still `prev`:
/// bounded to `bytes_max` + 1 bytes, hashed, validated; a valid file comes
/// with the vote for it.
fn read_file(path: &Path, file: &str, prev: Option<Meta>, bytes_max: u64, voter: Voter) -> Read {
    let meta = match disk::stat(path) {
        Ok(Stat::File(m)) => m,
        Ok(Stat::Missing | Stat::Other) => return Read::Gone,
        Err(e) => return Read::Failed(e.to_string()),
    };
    if prev.as_ref() == Some(&meta) {
        return Read::Unchanged;
    }
    let bytes = match disk::read_bounded(path, bytes_max) {
        Ok(b) => b,
        Err(e) => return Read::Failed(e.to_string()),
    };
    let hash = xmlconf::vote::hash(&bytes);
    if bytes.len() as u64 > bytes_max {
        return Read::Content {
            kind: Kind::Invalid(format!(
                "{file}: file is {} bytes; the limit is configs.file_bytes_max = {bytes_max}",
                meta.len.max(bytes.len() as u64)
            )),
            meta,
            hash,
            vote: None,
        };
    }
    match xmlconf::validate(&bytes, bytes_max as usize) {
        Ok(validated) => {
            let vote = xmlconf::vote(&bytes, &validated, voter);
            Read::Content {
                meta,
                hash,
                kind: Kind::Valid {
                    name: vote.name.clone(),
                    version: vote.version,
                },
                vote: Some(Box::new(vote)),
            }
        }
        Err(issue) => Read::Content {
            meta,
            hash,
            kind: Kind::Invalid(issue.display_for(file)),
            vote: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter() -> Voter {
        Voter {
            node: 1,
            weight_milli: 1000,
            window_ms: 100,
            source: VoteSource::Dir,
        }
    }

    fn example(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas/examples")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_file_is_read_with_its_vote_and_not_again_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.xml");
        std::fs::write(&p, example("thermostat.xml")).unwrap();
        let Read::Content {
            meta, kind, vote, ..
        } = read_file(&p, "t.xml", None, 1 << 20, voter())
        else {
            panic!("not read");
        };
        let vote = vote.expect("a vote");
        assert!(matches!(kind, Kind::Valid { ref name, .. } if *name == vote.name));
        assert!(matches!(
            read_file(&p, "t.xml", Some(meta), 1 << 20, voter()),
            Read::Unchanged
        ));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            read_file(&p, "t.xml", None, 1 << 20, voter()),
            Read::Gone
        ));
    }

    #[test]
    fn invalid_and_oversize_files_carry_file_line_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.xml");
        std::fs::write(&p, example("invalid-malformed.xml")).unwrap();
        let Read::Content {
            kind: Kind::Invalid(reason),
            vote: None,
            ..
        } = read_file(&p, "bad.xml", None, 1 << 20, voter())
        else {
            panic!("taken");
        };
        assert!(reason.starts_with("bad.xml:"), "{reason}");
        assert!(
            reason.split(':').nth(1).unwrap().parse::<u32>().is_ok(),
            "{reason}"
        );
        std::fs::write(&p, vec![b' '; 5000]).unwrap();
        let Read::Content {
            kind: Kind::Invalid(reason),
            ..
        } = read_file(&p, "bad.xml", None, 100, voter())
        else {
            panic!("taken");
        };
        assert!(
            reason.contains("5000 bytes") && reason.contains("file_bytes_max = 100"),
            "{reason}"
        );
    }
}

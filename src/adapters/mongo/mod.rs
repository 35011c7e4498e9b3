//! The MongoDB mirror (cargo feature `mongodb`, settings `mongodb = {...}`).
//!
//! While this member leads, one worker per MongoDB server of the
//! `db_servers` collection (type `mongodb`, state ok; `utopia db add`)
//! copies utopia's documents, and with `mirror_kv` its keys, into that
//! server's database: collections named as in seed 000 (`devices`,
//! `zones`, `fellows`, `nosql_servers` for db_servers, `xmlconfigurations`
//! for xml_configs, `stats`, and `kv`), each document upserted under its
//! id as `_id` (see `convert.rs`), deletions mirrored. Utopia decides
//! nothing from MongoDB: the mirror only publishes.
//!
//! # Tailing and the checkpoint
//!
//! Every node records which documents and keys each applied batch wrote,
//! by log index (storage's mirror feed). A worker reads its checkpoint
//! (the last log index mirrored, with the cluster id) from the same
//! database (collection `utopia_mirror`, `_id: "checkpoint"`), reads the
//! feed after it in whole log indexes up to `batch_docs_max` entries,
//! writes the *current* value of each named document (or deletes it) in
//! bulk `update`/`delete` commands of at most `batch_docs_max` documents
//! and `batch_bytes_max` bytes, verifies a sample, and only then advances
//! the checkpoint (`$max`, so it never moves back). A crash or a leader
//! change between the writes and the checkpoint replays the same entries,
//! which rewrite the same or newer values: nothing is skipped, and since
//! documents are keyed by id, nothing is duplicated. With no checkpoint,
//! one of another cluster, or one older than this node's feed (trimmed, or
//! replaced by an installed snapshot), the worker copies every collection
//! whole, deletes what utopia no longer holds, and checkpoints the log
//! index it started from.
//!
//! # Verification
//!
//! After each batch the worker reads back `verify_sample_docs` of its
//! documents (spread over the batch) and every accepted XML configuration
//! in it, and compares a canonical hash of each with what it wrote (whole
//! documents). While caught up it audits the collections round-robin,
//! the same number per round, and rewrites what differs (a document
//! changed behind utopia's back). A mismatch or a write MongoDB refuses is
//! retried after `retry_backoff_ms` (doubling) by rewriting the batch;
//! after `verify_attempts_max` failed attempts in a row the leader
//! proposes `DbServerProblematic` through the log, and every node stops
//! using the server until `utopia db add` makes it ok again. A server that
//! cannot be reached is not marked: it is logged, counted and retried.
//!
//! # Counters (`utopia status`, and so the metrics endpoint)
//!
//! Per server (`{server="HOST:PORT:TYPE"}`): `mongo_mirror_lag_log_entries`
//! and `mongo_mirror_lag_ms` (applied index minus checkpoint; age of the
//! oldest entry not yet mirrored), `mongo_mirror_checkpoint_index`,
//! `mongo_mirror_batches_total`, `mongo_mirror_docs_written_total`,
//! `mongo_mirror_docs_deleted_total`, `mongo_mirror_full_copies_total`,
//! `mongo_mirror_verify_mismatches_total`, `mongo_mirror_repaired_docs_total`,
//! `mongo_mirror_failures_total`, `mongo_mirror_unreachable_total`,
//! `mongo_mirror_marked_problematic_total`.

mod convert;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::{AbortHandle, JoinSet};
use utopia_raft::event::Event;
use utopia_storage::documents::{DbServer, DbServerState};
use utopia_storage::keys::mirror_feed::Target;
use utopia_storage::keys::Collection;
use utopia_storage::read::MirrorValue;

use crate::config::mongodb::RETRY_BACKOFF_MS_CAP;
use crate::config::MongoSettings;
use crate::metrics::{MirrorMetrics, ServerLabel};
use crate::node::Node;

/// The database server type the mirror serves.
pub const DB_TYPE: &str = "mongodb";
/// Where the checkpoint lives in the mirrored database.
pub const CHECKPOINT_COLLECTION: &str = "utopia_mirror";
pub const CHECKPOINT_ID: &str = "checkpoint";
/// Most db_servers documents the supervisor reads.
const DB_SERVERS_MAX: usize = 1_000;
/// Longest reason proposed with `DbServerProblematic`.
const REASON_BYTES_MAX: usize = 512;
/// How often the supervisor looks at leadership and db_servers.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(500);

/// Every target, in the order a whole copy and the audit walk them.
const DOCUMENT_TARGETS: [Target; 6] = [
    Target::Document(Collection::Devices),
    Target::Document(Collection::Zones),
    Target::Document(Collection::Fellows),
    Target::Document(Collection::DbServers),
    Target::Document(Collection::XmlConfigs),
    Target::Document(Collection::Stats),
];

/// The MongoDB collection a target is mirrored into (seed 000's names).
pub fn collection_name(target: Target) -> &'static str {
    match target {
        Target::Document(Collection::Devices) => "devices",
        Target::Document(Collection::Zones) => "zones",
        Target::Document(Collection::Fellows) => "fellows",
        Target::Document(Collection::DbServers) => "nosql_servers",
        Target::Document(Collection::XmlConfigs) => "xmlconfigurations",
        Target::Document(Collection::Stats) => "stats",
        Target::Kv => "kv",
    }
}

/// Starts the mirror's supervisor when `mongodb.enabled`.
pub fn start(node: &Arc<Node>, settings: &MongoSettings) {
    if !settings.enabled {
        return;
    }
    tracing::info!(
        database = %settings.database,
        "MongoDB mirror on: the leader mirrors into the db_servers of type mongodb"
    );
    node.tasks.spawn(
        "mongodb mirror",
        supervise(node.clone(), Arc::new(settings.clone())),
    );
}

/// Runs one worker per usable server while this member leads; stops them
/// when it does not, or when a server is removed or marked problematic.
/// Dropping it (the server stopping) aborts the workers.
async fn supervise(node: Arc<Node>, settings: Arc<MongoSettings>) {
    let mut workers: JoinSet<String> = JoinSet::new();
    let mut running: HashMap<String, AbortHandle> = HashMap::new();
    let mut tick = tokio::time::interval(SUPERVISE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while let Some(ended) = workers.try_join_next() {
            if let Ok(id) = ended {
                running.remove(&id);
            }
        }
        let leading = node.raft.status().leader == Some(node.raft.id());
        let wanted: BTreeMap<String, DbServer> = if leading {
            usable_servers(&node)
        } else {
            BTreeMap::new()
        };
        running.retain(|id, handle| {
            let keep = wanted.contains_key(id) && !handle.is_finished();
            if !keep {
                handle.abort();
                set_idle(&node, id);
            }
            keep
        });
        for (id, server) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let (node, settings) = (node.clone(), settings.clone());
            let handle = workers.spawn(async move {
                let id = server.id.clone();
                Worker::run(node, settings, server).await;
                id
            });
            running.insert(id, handle);
        }
    }
}

/// The mongodb servers in state ok.
fn usable_servers(node: &Node) -> BTreeMap<String, DbServer> {
    match node.reader.documents::<DbServer>(DB_SERVERS_MAX) {
        Ok(docs) => docs
            .into_iter()
            .filter_map(Result::ok)
            .filter(|s| s.kind == DB_TYPE && s.state == DbServerState::Ok)
            .map(|s| (s.id.clone(), s))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "MongoDB mirror: reading db_servers failed");
            BTreeMap::new()
        }
    }
}

fn set_idle(node: &Node, id: &str) {
    node.metrics
        .mirror
        .lag_log_entries
        .get_or_create(&server_label(id))
        .set(0);
    node.metrics
        .mirror
        .lag_ms
        .get_or_create(&server_label(id))
        .set(0);
}

fn server_label(server: &str) -> ServerLabel {
    ServerLabel {
        server: server.to_string(),
    }
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// The server could not be reached (or timed out): logged and retried,
    /// never marked problematic (seed 000: "if it can't connect, issue a
    /// warning in the local log").
    Unreachable(String),
    /// The server refused a write, or what it returns differs from what
    /// was written: counts towards marking it problematic.
    Refused(String),
    /// This node's own store failed.
    Store(String),
}

impl From<mongodb::error::Error> for Failure {
    fn from(e: mongodb::error::Error) -> Self {
        let text = e.to_string();
        match *e.kind {
            ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::DnsResolve { .. } => Failure::Unreachable(text),
            _ => Failure::Refused(text),
        }
    }
}

impl From<utopia_storage::StoreError> for Failure {
    fn from(e: utopia_storage::StoreError) -> Self {
        Failure::Store(e.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(m) => write!(f, "unreachable: {m}"),
            Failure::Refused(m) => write!(f, "{m}"),
            Failure::Store(m) => write!(f, "local store: {m}"),
        }
    }
}

/// What one step did.
enum Step {
    /// Wrote a batch (or copied whole): look for more at once.
    Progress,
    /// Caught up.
    Idle,
}

/// One write: the current value of a target's entry, or its deletion.
struct Op {
    target: Target,
    id: Bson,
    /// The document to upsert; `None`: delete.
    doc: Option<Document>,
    /// Bytes the document takes in a command (an estimate for deletes).
    bytes: usize,
    /// An accepted XML configuration: always verified.
    always_verify: bool,
}

/// Mirrors into one server.
struct Worker {
    node: Arc<Node>,
    settings: Arc<MongoSettings>,
    server: DbServer,
    db: mongodb::Database,
    timeout: Duration,
    /// The next entries the idle audit compares: target, and the last id
    /// audited in it.
    audit: (usize, Option<Vec<u8>>),
}

impl Worker {
    async fn run(node: Arc<Node>, settings: Arc<MongoSettings>, server: DbServer) {
        let id = server.id.clone();
        let uri = connection_string(&server, &settings);
        let timeout = Duration::from_millis(settings.timeout_ms);
        let client = match connect(&uri, timeout).await {
            Ok(c) => c,
            Err(e) => {
                // A connection string that does not parse (uri_options):
                // the operator's to fix; nothing to mirror until then.
                tracing::error!(server = %id, uri, error = %e, "MongoDB mirror: cannot use this server");
                node.metrics
                    .mirror
                    .failures
                    .get_or_create(&server_label(&id))
                    .inc();
                std::future::pending::<()>().await;
                return;
            }
        };
        let db = client.database(&settings.database);
        let mut worker = Worker {
            node,
            settings,
            server,
            db,
            timeout,
            audit: (0, None),
        };
        worker.mirror().await;
    }

    fn count(&self, metric: fn(&MirrorMetrics) -> &Family<ServerLabel, Counter>, n: u64) {
        if n > 0 {
            metric(&self.node.metrics.mirror)
                .get_or_create(&server_label(&self.server.id))
                .inc_by(n);
        }
    }

    fn gauge(&self, metric: fn(&MirrorMetrics) -> &Family<ServerLabel, Gauge>, v: u64) {
        metric(&self.node.metrics.mirror)
            .get_or_create(&server_label(&self.server.id))
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// Steps until the server is marked problematic (or the task is
    /// aborted).
    async fn mirror(&mut self) {
        let initial = Duration::from_millis(self.settings.retry_backoff_ms);
        let cap = Duration::from_millis(RETRY_BACKOFF_MS_CAP.max(self.settings.retry_backoff_ms));
        let mut backoff = initial;
        let mut refused = 0u32;
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            match self.step().await {
                Ok(Step::Progress) => {
                    refused = 0;
                    backoff = initial;
                }
                Ok(Step::Idle) => {
                    refused = 0;
                    backoff = initial;
                    tokio::time::sleep(poll).await;
                }
                Err(failure) => {
                    match &failure {
                        Failure::Unreachable(_) => {
                            self.count(|m| &m.unreachable, 1);
                        }
                        Failure::Refused(_) => {
                            refused += 1;
                            self.count(|m| &m.failures, 1);
                        }
                        Failure::Store(_) => {}
                    }
                    tracing::warn!(
                        server = %self.server.id,
                        attempt = refused,
                        error = %failure,
                        "MongoDB mirror: attempt failed; retrying"
                    );
                    if refused >= self.settings.verify_attempts_max {
                        let reason = format!(
                            "mirror failed {refused} times in a row; last: {}",
                            truncate(&failure.to_string(), REASON_BYTES_MAX)
                        );
                        if self.mark_problematic(reason).await {
                            return;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cap);
                }
            }
        }
    }

    /// Proposes `DbServerProblematic`; true once it is committed.
    async fn mark_problematic(&self, reason: String) -> bool {
        let event = Event::DbServerProblematic {
            host: self.server.host.clone(),
            port: self.server.port,
            kind: self.server.kind.clone(),
            reason: reason.clone(),
        };
        match self.node.propose(event).await {
            Ok(_) => {
                self.count(|m| &m.marked_problematic, 1);
                set_idle(&self.node, &self.server.id);
                tracing::error!(
                    server = %self.server.id,
                    reason,
                    "MongoDB mirror: server marked problematic; every member stops using it \
                     until `utopia db add` brings it back"
                );
                true
            }
            Err(e) => {
                tracing::warn!(server = %self.server.id, error = %e, "MongoDB mirror: marking the server problematic failed");
                false
            }
        }
    }

    /// One round: a batch from the feed, a whole copy, or (caught up) an
    /// audit.
    async fn step(&mut self) -> Result<Step, Failure> {
        let reader = &self.node.reader;
        let applied = reader.applied_index()?.unwrap_or(0);
        let checkpoint = self.checkpoint().await?;
        let feed_start = reader.mirror_feed_start()?;
        let Some(checkpoint) = checkpoint.filter(|c| c.saturating_add(1) >= feed_start) else {
            self.copy_whole(applied).await?;
            return Ok(Step::Progress);
        };
        self.gauge(|m| &m.checkpoint_index, checkpoint);
        if checkpoint >= applied {
            self.gauge(|m| &m.lag_log_entries, 0);
            self.gauge(|m| &m.lag_ms, 0);
            self.audit_round(applied).await?;
            return Ok(Step::Idle);
        }
        let entries_max = usize::try_from(self.settings.batch_docs_max).unwrap_or(usize::MAX);
        let feed = reader.mirror_feed(checkpoint, applied, entries_max)?;
        self.gauge(|m| &m.lag_log_entries, applied - checkpoint);
        if feed.first_at_ms > 0 {
            self.gauge(
                |m| &m.lag_ms,
                crate::now_ms().saturating_sub(feed.first_at_ms),
            );
        }
        let targets: BTreeSet<(Target, Vec<u8>)> = feed
            .changes
            .into_iter()
            .filter(|(t, _)| *t != Target::Kv || self.settings.mirror_kv)
            .collect();
        let mut ops = Vec::with_capacity(targets.len());
        for (target, id) in targets {
            let value = self.node.reader.mirror_value(target, &id)?;
            ops.push(op(target, &id, value)?);
        }
        self.write(&ops).await?;
        self.verify(&ops).await?;
        self.save_checkpoint(feed.through_index, false).await?;
        self.count(|m| &m.batches, 1);
        self.gauge(|m| &m.checkpoint_index, feed.through_index);
        self.gauge(
            |m| &m.lag_log_entries,
            applied.saturating_sub(feed.through_index),
        );
        Ok(Step::Progress)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = DOCUMENT_TARGETS.to_vec();
        if self.settings.mirror_kv {
            t.push(Target::Kv);
        }
        t
    }

    /// Copies every collection whole as of log index `from` (or later),
    /// deletes what utopia does not hold, and checkpoints `from`.
    async fn copy_whole(&mut self, from: u64) -> Result<(), Failure> {
        tracing::info!(
            server = %self.server.id,
            from_index = from,
            "MongoDB mirror: no usable checkpoint; copying every collection"
        );
        self.gauge(|m| &m.lag_log_entries, from);
        let page_max = usize::try_from(self.settings.batch_docs_max).unwrap_or(usize::MAX);
        for target in self.targets() {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self
                    .node
                    .reader
                    .mirror_page(target, after.as_deref(), page_max)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                let mut ops = Vec::with_capacity(page.len());
                for (id, value) in page {
                    ops.push(op(target, &id, Some(value))?);
                }
                self.write(&ops).await?;
                self.verify(&ops).await?;
            }
            self.delete_extras(target).await?;
        }
        self.save_checkpoint(from, true).await?;
        self.count(|m| &m.full_copies, 1);
        self.gauge(|m| &m.checkpoint_index, from);
        Ok(())
    }

    /// Deletes the documents of `target`'s collection that utopia does not
    /// hold (a copy over an older mirror).
    async fn delete_extras(&self, target: Target) -> Result<(), Failure> {
        let coll = self.db.collection::<Document>(collection_name(target));
        let mut cursor = self
            .timed(
                coll.find(doc! {})
                    .projection(doc! { "_id": 1 })
                    .batch_size(1000)
                    .into_future(),
            )
            .await?;
        let mut extra = Vec::new();
        while let Some(d) = self.timed(cursor.try_next()).await? {
            let Some(id) = d.get("_id") else { continue };
            let key = match id {
                Bson::String(s) => s.as_bytes().to_vec(),
                Bson::Binary(b) => b.bytes.clone(),
                _ => {
                    extra.push(id.clone());
                    continue;
                }
            };
            if self.node.reader.mirror_value(target, &key)?.is_none() {
                extra.push(id.clone());
            }
        }
        let page_max = usize::try_from(self.settings.batch_docs_max).unwrap_or(usize::MAX);
        for ids in extra.chunks(page_max.max(1)) {
            let deletes: Vec<Document> = ids
                .iter()
                .map(|id| doc! { "q": { "_id": id.clone() }, "limit": 1 })
                .collect();
            let n = deletes.len() as u64;
            self.command(doc! {
                "delete": collection_name(target),
                "deletes": deletes,
                "ordered": false,
                "writeConcern": write_concern(),
            })
            .await?;
            self.count(|m| &m.docs_deleted, n);
        }
        Ok(())
    }

    /// Runs `fut` within the timeout; running out is "unreachable".
    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = mongodb::error::Result<T>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(Failure::from),
            Err(_) => Err(Failure::Unreachable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Runs a write command and checks its reply for write errors.
    async fn command(&self, cmd: Document) -> Result<Document, Failure> {
        let what = cmd
            .iter()
            .next()
            .map(|(k, v)| format!("{k} {v}"))
            .unwrap_or_default();
        let reply = self.timed(self.db.run_command(cmd).into_future()).await?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            let first = errors
                .first()
                .and_then(Bson::as_document)
                .map(|e| {
                    format!(
                        "code {}: {}",
                        e.get("code").map(ToString::to_string).unwrap_or_default(),
                        e.get_str("errmsg").unwrap_or("")
                    )
                })
                .unwrap_or_default();
            return Err(Failure::Refused(format!(
                "MongoDB refused {} write(s) of {what}: {first}",
                errors.len()
            )));
        }
        if let Ok(e) = reply.get_document("writeConcernError") {
            return Err(Failure::Refused(format!(
                "write concern failed for {what}: {e}"
            )));
        }
        Ok(reply)
    }

    /// Writes `ops` in bulk commands bounded in documents and bytes, one
    /// collection at a time.
    async fn write(&self, ops: &[Op]) -> Result<(), Failure> {
        let docs_max = usize::try_from(self.settings.batch_docs_max).unwrap_or(usize::MAX);
        let bytes_max = usize::try_from(self.settings.batch_bytes_max).unwrap_or(usize::MAX);
        let mut by_target: BTreeMap<Target, (Vec<&Op>, Vec<&Op>)> = BTreeMap::new();
        for op in ops {
            let entry = by_target.entry(op.target).or_default();
            if op.doc.is_some() {
                entry.0.push(op);
            } else {
                entry.1.push(op);
            }
        }
        for (target, (upserts, deletes)) in by_target {
            let name = collection_name(target);
            for chunk in chunks(&upserts, docs_max, bytes_max) {
                let updates: Vec<Document> = chunk
                    .iter()
                    .filter_map(|op| {
                        op.doc.as_ref().map(|d| {
                            doc! { "q": { "_id": op.id.clone() }, "u": d.clone(), "upsert": true }
                        })
                    })
                    .collect();
                let n = updates.len() as u64;
                self.command(doc! {
                    "update": name,
                    "updates": updates,
                    "ordered": false,
                    "writeConcern": write_concern(),
                })
                .await?;
                self.count(|m| &m.docs_written, n);
            }
            for chunk in chunks(&deletes, docs_max, bytes_max) {
                let dels: Vec<Document> = chunk
                    .iter()
                    .map(|op| doc! { "q": { "_id": op.id.clone() }, "limit": 1 })
                    .collect();
                let n = dels.len() as u64;
                self.command(doc! {
                    "delete": name,
                    "deletes": dels,
                    "ordered": false,
                    "writeConcern": write_concern(),
                })
                .await?;
                self.count(|m| &m.docs_deleted, n);
            }
        }
        Ok(())
    }

    /// Reads back a sample of `ops` (and every one marked always) and
    /// compares each with what was written.
    async fn verify(&self, ops: &[Op]) -> Result<(), Failure> {
        let sample = usize::try_from(self.settings.verify_sample_docs).unwrap_or(usize::MAX);
        let chosen: Vec<&Op> = ops
            .iter()
            .enumerate()
            .filter(|(i, op)| op.always_verify || spread(*i, ops.len(), sample))
            .map(|(_, op)| op)
            .collect();
        let differ = self.differing(&chosen).await?;
        if differ.is_empty() {
            return Ok(());
        }
        self.count(|m| &m.verify_mismatches, differ.len() as u64);
        Err(Failure::Refused(format!(
            "{} of {} documents read back differ from what was written (first: {}/{})",
            differ.len(),
            chosen.len(),
            collection_name(differ[0].target),
            differ[0].id
        )))
    }

    /// The ops whose document in MongoDB is not what they say (present
    /// with other values, missing, or present though deleted).
    async fn differing<'o>(&self, ops: &[&'o Op]) -> Result<Vec<&'o Op>, Failure> {
        let mut by_target: BTreeMap<Target, Vec<&'o Op>> = BTreeMap::new();
        for op in ops {
            by_target.entry(op.target).or_default().push(op);
        }
        let mut differ = Vec::new();
        for (target, ops) in by_target {
            let ids: Vec<Bson> = ops.iter().map(|op| op.id.clone()).collect();
            let coll = self.db.collection::<Document>(collection_name(target));
            let mut cursor = self
                .timed(coll.find(doc! { "_id": { "$in": ids } }).into_future())
                .await?;
            let mut found: HashMap<String, [u8; 32]> = HashMap::new();
            while let Some(d) = self.timed(cursor.try_next()).await? {
                if let Some(id) = d.get("_id") {
                    found.insert(id.to_string(), convert::canonical_hash(&d));
                }
            }
            for op in ops {
                let stored = found.get(&op.id.to_string());
                let same = match (&op.doc, stored) {
                    (Some(d), Some(h)) => convert::canonical_hash(d) == *h,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    differ.push(op);
                }
            }
        }
        Ok(differ)
    }

    /// While caught up: compares the next `verify_sample_docs` entries of
    /// the collections (round-robin) with MongoDB and rewrites those that
    /// differ; a rewrite that does not hold is a failure.
    async fn audit_round(&mut self, applied: u64) -> Result<(), Failure> {
        let sample = usize::try_from(self.settings.verify_sample_docs).unwrap_or(usize::MAX);
        if sample == 0 {
            return Ok(());
        }
        let targets = self.targets();
        let (mut index, after) = self.audit.clone();
        index %= targets.len();
        let target = targets[index];
        let page = self
            .node
            .reader
            .mirror_page(target, after.as_deref(), sample)?;
        match page.last() {
            Some((last, _)) => self.audit = (index, Some(last.clone())),
            None => {
                self.audit = (index + 1, None);
                return Ok(());
            }
        }
        let mut ops = Vec::with_capacity(page.len());
        for (id, value) in page {
            ops.push(op(target, &id, Some(value))?);
        }
        let refs: Vec<&Op> = ops.iter().collect();
        let differ = self.differing(&refs).await?;
        if differ.is_empty() {
            return Ok(());
        }
        // Something applied since: the difference may be that change, not
        // yet mirrored; the next batch writes it.
        if self.node.reader.applied_index()?.unwrap_or(0) != applied {
            return Ok(());
        }
        let n = differ.len() as u64;
        let first = format!("{}/{}", collection_name(differ[0].target), differ[0].id);
        tracing::warn!(
            server = %self.server.id,
            documents = n,
            first,
            "MongoDB mirror: documents differ from utopia's (changed behind its back); rewriting"
        );
        self.count(|m| &m.verify_mismatches, n);
        let rewrite: Vec<Op> = differ
            .into_iter()
            .map(|op| Op {
                target: op.target,
                id: op.id.clone(),
                doc: op.doc.clone(),
                bytes: op.bytes,
                always_verify: true,
            })
            .collect();
        self.write(&rewrite).await?;
        let refs: Vec<&Op> = rewrite.iter().collect();
        let still = self.differing(&refs).await?;
        if !still.is_empty() {
            return Err(Failure::Refused(format!(
                "{} of {n} rewritten documents still differ (first: {first})",
                still.len()
            )));
        }
        self.count(|m| &m.repaired_docs, n);
        Ok(())
    }

    /// The checkpoint in MongoDB, if it is this cluster's.
    async fn checkpoint(&self) -> Result<Option<u64>, Failure> {
        let coll = self.db.collection::<Document>(CHECKPOINT_COLLECTION);
        let found = self
            .timed(coll.find_one(doc! { "_id": CHECKPOINT_ID }).into_future())
            .await?;
        let Some(d) = found else { return Ok(None) };
        let cluster = format!("{:016x}", self.node.peers.cluster().get());
        if d.get_str("cluster_id").ok() != Some(cluster.as_str()) {
            return Ok(None);
        }
        let index = match d.get("index") {
            Some(Bson::Int64(i)) => u64::try_from(*i).ok(),
            Some(Bson::Int32(i)) => u64::try_from(*i).ok(),
            _ => None,
        };
        Ok(index)
    }

    /// Advances the checkpoint to `index` (after a whole copy: sets it).
    async fn save_checkpoint(&self, index: u64, whole: bool) -> Result<(), Failure> {
        let cluster = format!("{:016x}", self.node.peers.cluster().get());
        let index = i64::try_from(index).unwrap_or(i64::MAX);
        let fields = doc! {
            "cluster_id": cluster,
            "updated_ms": i64::try_from(crate::now_ms()).unwrap_or(i64::MAX),
            "node": i64::try_from(self.node.raft.id()).unwrap_or(i64::MAX),
        };
        let update = if whole {
            let mut set = fields;
            set.insert("index", index);
            doc! { "$set": set }
        } else {
            doc! { "$set": fields, "$max": { "index": index } }
        };
        self.command(doc! {
            "update": CHECKPOINT_COLLECTION,
            "updates": [ { "q": { "_id": CHECKPOINT_ID }, "u": update, "upsert": true } ],
            "ordered": false,
            "writeConcern": write_concern(),
        })
        .await?;
        Ok(())
    }
}

/// Acknowledged by a majority of the replica set, journaled (a standalone
/// server: itself).
fn write_concern() -> Document {
    doc! { "w": "majority", "j": true }
}

/// The op that mirrors `value` of `target`'s `id` (`None`: a delete).
fn op(target: Target, id: &[u8], value: Option<MirrorValue>) -> Result<Op, Failure> {
    let store = |m: String| Failure::Store(m);
    let mongo_id = match target {
        Target::Kv => convert::key_id(id),
        Target::Document(_) => Bson::String(
            std::str::from_utf8(id)
                .map_err(|_| store(format!("document id {id:?} is not UTF-8")))?
                .to_string(),
        ),
    };
    let (doc, bytes, always_verify) = match value {
        None => (None, id.len() + 32, false),
        Some(MirrorValue::Document(json)) => {
            let accepted = target == Target::Document(Collection::XmlConfigs)
                && serde_json::from_slice::<serde_json::Value>(&json)
                    .is_ok_and(|v| v["state"] == "accepted");
            let doc = convert::document(&String::from_utf8_lossy(id), &json).map_err(store)?;
            (Some(doc), json.len() + 64, accepted)
        }
        Some(MirrorValue::Kv(kv)) => {
            let bytes = kv.key.len() + kv.value.len() + 96;
            (Some(convert::kv(&kv)), bytes, false)
        }
    };
    Ok(Op {
        target,
        id: mongo_id,
        doc,
        bytes,
        always_verify,
    })
}

/// Whether item `i` of `n` is among `sample` spread evenly over them.
fn spread(i: usize, n: usize, sample: usize) -> bool {
    if sample == 0 {
        return false;
    }
    if n <= sample {
        return true;
    }
    // Items at floor(k * n / sample) for k in 0..sample.
    let k = (i * sample).div_ceil(n);
    k < sample && k * n / sample == i
}

/// Consecutive runs of `ops` of at most `docs_max` items and, past the
/// first item of a run, at most `bytes_max` bytes.
fn chunks<'a>(ops: &'a [&'a Op], docs_max: usize, bytes_max: usize) -> Vec<&'a [&'a Op]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let full = i - start >= docs_max.max(1)
            || (i > start && bytes.saturating_add(op.bytes) > bytes_max);
        if full {
            out.push(&ops[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(op.bytes);
    }
    if start < ops.len() {
        out.push(&ops[start..]);
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `mongodb://HOST:PORT/?directConnection=true[&uri_options]`.
fn connection_string(server: &DbServer, settings: &MongoSettings) -> String {
    let mut uri = format!(
        "mongodb://{}:{}/?directConnection=true&appName=utopia",
        server.host, server.port
    );
    if !settings.uri_options.is_empty() {
        uri.push('&');
        uri.push_str(&settings.uri_options);
    }
    uri
}

async fn connect(uri: &str, timeout: Duration) -> Result<mongodb::Client, mongodb::error::Error> {
    let mut options = ClientOptions::parse(uri).await?;
    options.connect_timeout = Some(timeout);
    options.server_selection_timeout = Some(timeout);
    mongodb::Client::with_options(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_the_batch() {
        let picked = |n: usize, sample: usize| -> Vec<usize> {
            (0..n).filter(|i| spread(*i, n, sample)).collect()
        };
        assert_eq!(picked(5, 16), vec![0, 1, 2, 3, 4]);
        assert_eq!(picked(10, 0), Vec::<usize>::new());
        assert_eq!(picked(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(picked(7, 3).len(), 3);
        assert_eq!(picked(1000, 16).len(), 16);
    }

    #[test]
    fn bulk_writes_are_bounded_in_documents_and_bytes() {
        let op = |bytes| Op {
            target: Target::Kv,
            id: Bson::Null,
            doc: None,
            bytes,
            always_verify: false,
        };
        let ops: Vec<Op> = [10, 10, 10, 10, 10, 100, 10].into_iter().map(op).collect();
        let refs: Vec<&Op> = ops.iter().collect();
        let sizes = |docs, bytes| -> Vec<usize> {
            chunks(&refs, docs, bytes).iter().map(|c| c.len()).collect()
        };
        assert_eq!(sizes(3, 1000), vec![3, 3, 1]);
        assert_eq!(sizes(100, 35), vec![3, 2, 1, 1]);
        assert_eq!(sizes(100, 5), vec![1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn collections_keep_seed_000s_names() {
        let names: Vec<&str> = DOCUMENT_TARGETS
            .iter()
            .map(|t| collection_name(*t))
            .collect();
        assert_eq!(
            names,
            [
                "devices",
                "zones",
                "fellows",
                "nosql_servers",
                "xmlconfigurations",
                "stats"
            ]
        );
        assert_eq!(collection_name(Target::Kv), "kv");
    }
}

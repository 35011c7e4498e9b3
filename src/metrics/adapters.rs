//! What the optional adapters count: the ZooKeeper adapter and the
//! MongoDB mirror. Each registers its metrics into the server's registry
//! when its feature is built in.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label, `server`: a database server's id (`host:port:type`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

/// What the ZooKeeper adapter counts (registered in a build with the
/// `zookeeper` feature).
#[derive(Debug, Default)]
pub struct ZookeeperMetrics {
    pub sessions: Counter,
    pub connected: Gauge,
    pub writes: Counter,
    pub errors: Counter,
    pub fellow_nodes_undecodable: Counter,
}

/// What the MongoDB mirror counts, by server (a series appears once a
/// worker for that server runs).
#[derive(Debug, Default)]
pub struct MirrorMetrics {
    pub batches: Family<ServerLabel, Counter>,
    pub docs_written: Family<ServerLabel, Counter>,
    pub docs_deleted: Family<ServerLabel, Counter>,
    pub full_copies: Family<ServerLabel, Counter>,
    pub verify_mismatches: Family<ServerLabel, Counter>,
    pub repaired_docs: Family<ServerLabel, Counter>,
    pub failures: Family<ServerLabel, Counter>,
    pub unreachable: Family<ServerLabel, Counter>,
    pub marked_problematic: Family<ServerLabel, Counter>,
    pub checkpoint_index: Family<ServerLabel, Gauge>,
    pub lag_log_entries: Family<ServerLabel, Gauge>,
    pub lag_ms: Family<ServerLabel, Gauge>,
}

impl ZookeeperMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let adapter = "the ZooKeeper adapter on this member";
        for (name, help, m) in [
            ("zookeeper_sessions", "Sessions opened by", &self.sessions),
            ("zookeeper_writes", "Nodes written by", &self.writes),
            (
                "zookeeper_errors",
                "Failed sessions and requests of",
                &self.errors,
            ),
            (
                "zookeeper_fellow_nodes_undecodable",
                "Other members' nodes that did not decode, read by",
                &self.fellow_nodes_undecodable,
            ),
        ] {
            r.register(name, format!("{help} {adapter}"), m.clone());
        }
        r.register(
            "zookeeper_connected",
            format!("1 while {adapter} has a session"),
            self.connected.clone(),
        );
    }
}

impl MirrorMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        for (name, help, m) in [
            ("mongo_mirror_batches", "Batches mirrored", &self.batches),
            (
                "mongo_mirror_docs_written",
                "Documents written",
                &self.docs_written,
            ),
            (
                "mongo_mirror_docs_deleted",
                "Documents deleted",
                &self.docs_deleted,
            ),
            (
                "mongo_mirror_full_copies",
                "Whole copies started",
                &self.full_copies,
            ),
            (
                "mongo_mirror_verify_mismatches",
                "Documents read back that differed",
                &self.verify_mismatches,
            ),
            (
                "mongo_mirror_repaired_docs",
                "Documents rewritten after a mismatch",
                &self.repaired_docs,
            ),
            (
                "mongo_mirror_failures",
                "Failed mirror attempts",
                &self.failures,
            ),
            (
                "mongo_mirror_unreachable",
                "Attempts that could not reach the server",
                &self.unreachable,
            ),
            (
                "mongo_mirror_marked_problematic",
                "Times the server was marked problematic",
                &self.marked_problematic,
            ),
        ] {
            r.register(name, format!("{help}, by MongoDB server"), m.clone());
        }
        for (name, help, m) in [
            (
                "mongo_mirror_checkpoint_index",
                "Last log index mirrored",
                &self.checkpoint_index,
            ),
            (
                "mongo_mirror_lag_log_entries",
                "Applied index minus the checkpoint",
                &self.lag_log_entries,
            ),
            (
                "mongo_mirror_lag_ms",
                "Age of the oldest entry not yet mirrored",
                &self.lag_ms,
            ),
        ] {
            r.register(name, format!("{help}, by MongoDB server"), m.clone());
        }
    }
}

//! What is read at the moment of a scrape: Raft's state, the store's
//! sizes, the storage layer's atomics and the replicated cluster-wide
//! figures, in a registry of its own built for each scrape and rendered
//! after the one [`Metrics`](super::Metrics) keeps.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{exposition, AlarmName, Reading, Reason, PREFIX};
use crate::node::Node;

/// A RocksDB column family, by its name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColumnFamily {
    cf: &'static str,
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What is read at the moment of a scrape, in a registry of its own.
fn now_registry(node: &Node) -> Registry {
    let mut now = Registry::with_prefix(PREFIX);
    let st = node.raft.status();
    node.metrics.saw_raft(st.id, st.leader, st.term);
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    gauge(&mut now, "raft_term", "Current Raft term", as_i64(st.term));
    gauge(
        &mut now,
        "raft_leader",
        "Node id of the leader this member knows (0: none)",
        as_i64(st.leader.unwrap_or(0)),
    );
    gauge(
        &mut now,
        "raft_is_leader",
        "1 while this member leads",
        i64::from(st.leader == Some(st.id)),
    );
    for (name, help, v) in [
        (
            "raft_last_log_index",
            "Last index in this member's log",
            st.last_log_index,
        ),
        (
            "raft_applied_index",
            "Last index applied to the state machine",
            st.applied_index,
        ),
        (
            "raft_snapshot_index",
            "Last index of the current snapshot",
            st.snapshot_index,
        ),
        (
            "raft_purged_index",
            "Last index purged from the log",
            st.purged_index,
        ),
    ] {
        gauge(&mut now, name, help, as_i64(v));
    }
    let storage = &node.metrics.storage;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    counter(
        &mut now,
        "raft_snapshots_built",
        "Snapshots this member built of its state machine",
        storage.snapshots_built.load(relaxed),
    );
    counter(
        &mut now,
        "raft_snapshots_installed",
        "Snapshots from a leader this member installed",
        storage.snapshots_installed.load(relaxed),
    );
    let (sent, failed) = node.raft.snapshot_sends();
    counter(
        &mut now,
        "raft_snapshots_sent",
        "Snapshots this member sent to a follower that accepted them",
        sent,
    );
    counter(
        &mut now,
        "raft_snapshot_sends_failed",
        "Snapshots this member failed to send",
        failed,
    );
    gauge(
        &mut now,
        "db_size_bytes",
        "Size of this member's database files",
        as_i64(node.reader.db_size_bytes()),
    );
    let memtables = Family::<ColumnFamily, Gauge>::default();
    for (cf, bytes) in node.reader.memtable_bytes() {
        memtables
            .get_or_create(&ColumnFamily { cf: cf.name() })
            .set(as_i64(bytes));
    }
    now.register(
        "db_memtable_bytes",
        "Bytes each column family's memtables hold in memory",
        memtables,
    );
    gauge(
        &mut now,
        "db_block_cache_bytes",
        "Bytes the database's block cache holds",
        as_i64(node.reader.block_cache_bytes()),
    );
    gauge(
        &mut now,
        "db_key_cache_bytes",
        "Bytes the applier's cache of current keys' revisions takes",
        as_i64(storage.key_cache_bytes.load(relaxed)),
    );
    counter(
        &mut now,
        "db_key_cache_hits",
        "Puts whose key's revisions came from the key cache",
        storage.key_cache_hits.load(relaxed),
    );
    counter(
        &mut now,
        "db_key_cache_misses",
        "Puts that read their key's revisions from the store",
        storage.key_cache_misses.load(relaxed),
    );
    gauge(
        &mut now,
        "raft_log_bytes",
        "Bytes this member's Raft log takes (table files and memtables)",
        as_i64(node.reader.log_bytes()),
    );
    if let Ok((revision, compacted)) = node.reader.revisions() {
        gauge(&mut now, "revision", "Current key-value revision", revision);
        gauge(
            &mut now,
            "compact_revision",
            "Compacted revision",
            compacted,
        );
    }
    let refused = Family::<Reason, Counter>::default();
    for (why, n) in node.peers.refusals() {
        refused
            .get_or_create(&Reason { reason: why.name() })
            .inc_by(n);
    }
    now.register(
        "peer_messages_refused",
        "Messages the peer port refused, by reason",
        refused,
    );
    if let Ok(alarms) = node.reader.alarms() {
        let active = Family::<AlarmName, Gauge>::default();
        // Every kind, 0 when none is active (the only kind: NOSPACE).
        let kind = utopia_raft::event::AlarmKind::NoSpace;
        let n = alarms.iter().filter(|a| a.alarm == kind).count();
        active
            .get_or_create(&AlarmName { alarm: kind.name() })
            .set(as_i64(n as u64));
        now.register(
            "alarms_active",
            "Members with the alarm active (cluster-wide)",
            active,
        );
    }
    if let Ok(applied) = crate::node::configs::read_applied(node) {
        let versions = Family::<StateLabel, Gauge>::default();
        let mut failing = 0u64;
        for doc in applied.versions() {
            versions
                .get_or_create(&StateLabel {
                    state: config_state(doc.state),
                })
                .inc();
            failing += doc.failing.len() as u64;
        }
        now.register(
            "config_versions",
            "Configuration versions by state (cluster-wide)",
            versions,
        );
        gauge(
            &mut now,
            "config_members_failing",
            "Members that could not write an accepted configuration (cluster-wide)",
            as_i64(failing),
        );
    }
    cluster_figures(node, &mut now);
    now
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

fn config_state(s: utopia_storage::documents::ConfigState) -> &'static str {
    use utopia_storage::documents::ConfigState as S;
    match s {
        S::Proposed => "proposed",
        S::Accepted => "accepted",
        S::Superseded => "superseded",
        S::Rejected => "rejected",
    }
}

/// Cluster-wide figures from the replicated state.
fn cluster_figures(node: &Node, now: &mut Registry) {
    let counter = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let g = Gauge::<i64>::default();
        g.set(as_i64(v));
        registry.register(name, help, g);
    };
    if let Ok(t) = node.reader.ingest_totals() {
        for (name, help, v) in [
            (
                "cluster_ingest_applied",
                "Ingested items that became device events",
                t.applied,
            ),
            (
                "cluster_ingest_suppressed",
                "Redelivered copies suppressed",
                t.suppressed,
            ),
            ("cluster_ingest_dropped", "Ingest items dropped", t.dropped),
            (
                "cluster_ingest_stale_batches",
                "Ingest batches of an older owner epoch",
                t.stale_batches,
            ),
            (
                "cluster_ingest_replies_ignored",
                "Device replies ignored",
                t.replies_ignored,
            ),
            (
                "cluster_ingest_over_quota",
                "Ingest items over a quota",
                t.over_quota,
            ),
            (
                "cluster_ingest_class_refused",
                "Ingest items their class's rules refused",
                t.class_refused,
            ),
        ] {
            counter(now, name, &format!("{help} (cluster-wide)"), v);
        }
    }
    if let Ok(n) = node.reader.events_rejected() {
        counter(
            now,
            "cluster_events_rejected",
            "Events rejected alike on every replica (cluster-wide)",
            n,
        );
    }
    if let Ok(o) = node.reader.ingest_owners() {
        gauge(
            now,
            "cluster_ingest_owner_epoch",
            "Topic ownership epoch",
            o.epoch,
        );
        gauge(
            now,
            "cluster_ingest_owners",
            "Members owning ingest topics",
            o.members.len() as u64,
        );
        // Members a class's devices are kept from, because they cannot
        // hold its accepted configuration.
        gauge(
            now,
            "cluster_ingest_excluded_members",
            "Members kept from a class's devices",
            o.excluded.values().map(|m| m.len() as u64).sum(),
        );
    }
}

/// Everything at this moment, in the text format.
pub fn render(node: &Node) -> String {
    let now = now_registry(node);
    let mut out = String::new();
    // Writing into a String does not fail.
    let _ = encode_registry(&mut out, &node.metrics.registry);
    let _ = encode_registry(&mut out, &now);
    let _ = encode_eof(&mut out);
    out
}

/// The endpoint's figures, read back from what it renders now.
pub fn reading(node: &Node) -> Reading {
    exposition::parse(&render(node))
}

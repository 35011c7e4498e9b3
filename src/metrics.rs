//! Prometheus metrics (`metrics.listen`; off when empty), through the
//! `prometheus-client` crate, on `GET /metrics` in the text exposition
//! format; `utopia status` shows the same figures (it renders the same
//! registry and reads it back, [`reading`]).
//!
//! [`Metrics`] holds every metric the server counts, built and registered
//! once: callers increment its fields. What is read at every scrape (Raft's
//! state, the store's sizes, the replicated cluster-wide figures, the
//! storage layer's atomics) is added then, in [`render`] (`scrape.rs`).
//!
//! What is exported:
//! - gRPC per method: `utopia_grpc_requests_total{method,code}` and
//!   `utopia_grpc_request_duration_seconds{method}` (a layer on the client
//!   port; methods the server does not serve are counted as `other`);
//! - proposals made on this member: `utopia_proposals_total{event}`,
//!   `utopia_proposal_duration_seconds{event}` (propose → applied reply),
//!   `utopia_proposals_failed_total{event,reason}`;
//! - Raft: term, leader, whether this member leads, last log, applied,
//!   snapshot and purged index, leader changes and elections seen,
//!   snapshots built, sent and installed;
//! - storage: revision, compacted revision, database and log size, the
//!   log's fsync latency;
//! - ingest, configurations, backups, alarms, connections and refusals.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use utopia_storage::io_metrics::StorageMetrics;

use crate::mqtt::ingest::{Counted, LagHistogram};

mod adapters;
mod endpoint;
mod exposition;
mod histogram;
mod scrape;

pub use adapters::{MirrorMetrics, ServerLabel, ZookeeperMetrics};
pub use endpoint::{serve, GrpcMetrics, GrpcMetricsLayer};
pub use exposition::{HistogramSummary, Reading};
pub use histogram::ReadHistogram;
pub use scrape::{reading, render};

/// The prefix of every metric on the endpoint (not shown by status).
const PREFIX: &str = "utopia";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// One label, `reason`, from a fixed set of names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// One label, `event`: an event's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventName {
    pub event: &'static str,
}

/// A proposal that failed: its event and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventFailure {
    pub event: &'static str,
    pub reason: &'static str,
}

/// One label, `alarm`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmName {
    pub alarm: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Everything this member counts, registered once in `registry`.
pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    /// Served methods' paths as labels.
    method_labels: endpoint::MethodNames,

    /// Proposals this member made (through [`Node::propose`](crate::node::Node::propose)), by event.
    pub proposals: Family<EventName, Counter>,
    /// Propose → applied reply, by event, of proposals that got one.
    pub proposal_durations: Family<EventName, Histogram>,
    /// Proposals that failed, by event and reason (`rejected`: applied and
    /// refused by the state machine; `not_leader`: this member does not
    /// lead, the client is told where to go).
    pub proposals_failed: Family<EventFailure, Counter>,
    /// Events this member proposed that were applied, by event.
    pub events_applied: Family<EventName, Counter>,
    /// Events this member proposed that the state machine refused.
    pub events_rejected: Family<Reason, Counter>,
    /// Requests refused before they were proposed, by reason.
    pub requests_rejected: Family<Reason, Counter>,
    pub requests_timed_out: Counter,
    pub auth_failures: Family<Reason, Counter>,
    pub auth_tokens_issued: Counter,

    pub grpc_connections: Gauge,
    pub grpc_connections_waited: Counter,
    pub peer_connections: Gauge,
    pub peer_connections_waited: Counter,

    leader_changes: Counter,
    elections: Counter,
    elections_won: Counter,
    /// The leader and term last seen, for the three above.
    last_seen: Mutex<(Option<u64>, u64)>,

    pub leases_expired: Counter,
    pub compactions: Counter,
    pub db_space_used_bytes: Gauge,
    pub db_space_compactions: Counter,
    pub alarms_raised: Family<AlarmName, Counter>,

    pub config_votes_proposed: Counter,
    pub config_files_rejected: Counter,
    pub config_files_written: Counter,
    pub config_write_failures: Counter,

    pub backups_taken: Counter,
    pub backups_failed: Counter,
    pub backup_last_revision: Gauge,
    pub backup_last_bytes: Gauge,

    pub commands_published: Counter,
    pub commands_failed: Counter,

    /// The ingest core's counters, in [`Counted::PLAIN`]'s order.
    ingest: Vec<Counter>,
    mqtt_rejected: Family<Reason, Counter>,
    pub ingest_pending_messages: Gauge,
    ingest_lag: Arc<Mutex<LagHistogram>>,

    storage: Arc<StorageMetrics>,

    pub zookeeper: ZookeeperMetrics,
    pub mirror: MirrorMetrics,
}

impl Metrics {
    /// The metrics of a member whose storage counts into `storage`.
    pub fn new(storage: Arc<StorageMetrics>) -> Self {
        let mut r = Registry::with_prefix(PREFIX);
        fn reg<M: EncodeMetric + Clone + Send + Sync + std::fmt::Debug + 'static>(
            r: &mut Registry,
            name: &str,
            help: &str,
            m: M,
        ) -> M {
            r.register(name, help, m.clone());
            m
        }
        let histograms = || {
            Family::<EventName, Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            )
        };
        let requests = reg(
            &mut r,
            "grpc_requests",
            "gRPC requests on the client port, by method and status code",
            Family::default(),
        );
        let durations = reg(
            &mut r,
            "grpc_request_duration_seconds",
            "Time to the response headers of gRPC requests, by method",
            Family::<MethodLabels, Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
        );
        let ingest = Counted::PLAIN
            .iter()
            .map(|c| {
                reg(
                    &mut r,
                    c.metric(),
                    "MQTT ingest on this member",
                    Counter::default(),
                )
            })
            .collect();
        let ingest_lag = Arc::new(Mutex::new(LagHistogram::default()));
        let lag = ingest_lag.clone();
        r.register(
            "ingest_lag_seconds",
            "Ingest lag: a copy's arrival to its commit applied on this member",
            ReadHistogram(Arc::new(move || {
                histogram::lag_reading(
                    &lag.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                )
            })),
        );
        let fsync = storage.clone();
        r.register(
            "storage_fsync_duration_seconds",
            "Synced writes of the Raft log (a WAL sync per group of appends, vote writes)",
            ReadHistogram(Arc::new(move || fsync.log_fsync.read())),
        );
        let apply = storage.clone();
        r.register(
            "storage_apply_duration_seconds",
            "Applying one batch of committed entries to the state machine (entries committed after it wait)",
            ReadHistogram(Arc::new(move || apply.apply.read())),
        );
        let mut m = Metrics {
            requests,
            durations,
            method_labels: endpoint::MethodNames::default(),
            proposals: reg(
                &mut r,
                "proposals",
                "Proposals made on this member, by event",
                Family::default(),
            ),
            proposal_durations: reg(
                &mut r,
                "proposal_duration_seconds",
                "Proposals made on this member: propose to applied reply, by event",
                histograms(),
            ),
            proposals_failed: reg(
                &mut r,
                "proposals_failed",
                "Proposals made on this member that failed, by event and reason",
                Family::default(),
            ),
            events_applied: reg(
                &mut r,
                "events_applied",
                "Events proposed here and applied, by event",
                Family::default(),
            ),
            events_rejected: reg(
                &mut r,
                "events_rejected",
                "Events proposed here that the state machine refused, by reason",
                Family::default(),
            ),
            requests_rejected: reg(
                &mut r,
                "requests_rejected",
                "Requests refused before they were proposed, by reason",
                Family::default(),
            ),
            requests_timed_out: reg(
                &mut r,
                "requests_timed_out",
                "Requests that took longer than limits.request_timeout_ms",
                Counter::default(),
            ),
            auth_failures: reg(
                &mut r,
                "auth_failures",
                "Authentication and permission failures, by reason",
                Family::default(),
            ),
            auth_tokens_issued: reg(
                &mut r,
                "auth_tokens_issued",
                "Tokens issued",
                Counter::default(),
            ),
            grpc_connections: reg(
                &mut r,
                "grpc_connections",
                "Open connections on the client port",
                Gauge::default(),
            ),
            grpc_connections_waited: reg(
                &mut r,
                "grpc_connections_waited",
                "Client connections that waited for a free slot",
                Counter::default(),
            ),
            peer_connections: reg(
                &mut r,
                "peer_connections",
                "Open connections on the peer port",
                Gauge::default(),
            ),
            peer_connections_waited: reg(
                &mut r,
                "peer_connections_waited",
                "Peer connections that waited for a free slot",
                Counter::default(),
            ),
            leader_changes: reg(
                &mut r,
                "raft_leader_changes",
                "Changes of the leader this member saw (an election won by any member)",
                Counter::default(),
            ),
            elections: reg(
                &mut r,
                "raft_elections",
                "Elections this member saw start (terms it saw begin)",
                Counter::default(),
            ),
            elections_won: reg(
                &mut r,
                "raft_elections_won",
                "Elections this member won",
                Counter::default(),
            ),
            last_seen: Mutex::new((None, 0)),
            leases_expired: reg(
                &mut r,
                "leases_expired",
                "Leases this member expired as leader",
                Counter::default(),
            ),
            compactions: reg(
                &mut r,
                "compactions",
                "Automatic compaction entries this member proposed (steps of at most 1,000 revisions)",
                Counter::default(),
            ),
            db_space_used_bytes: reg(
                &mut r,
                "db_space_used_bytes",
                "State machine bytes on disk, as last measured",
                Gauge::default(),
            ),
            db_space_compactions: reg(
                &mut r,
                "db_space_compactions",
                "Compactions to make room before raising NOSPACE",
                Counter::default(),
            ),
            alarms_raised: reg(
                &mut r,
                "alarms_raised",
                "Alarms this member raised, by alarm",
                Family::default(),
            ),
            config_votes_proposed: reg(
                &mut r,
                "config_votes_proposed",
                "Configuration versions this member voted for",
                Counter::default(),
            ),
            config_files_rejected: reg(
                &mut r,
                "config_files_rejected",
                "Configuration files this member refused",
                Counter::default(),
            ),
            config_files_written: reg(
                &mut r,
                "config_files_written",
                "Accepted configurations written to this member's directory",
                Counter::default(),
            ),
            config_write_failures: reg(
                &mut r,
                "config_write_failures",
                "Failed writes of accepted configurations (sync failures)",
                Counter::default(),
            ),
            backups_taken: reg(
                &mut r,
                "backups_taken",
                "Scheduled backups taken",
                Counter::default(),
            ),
            backups_failed: reg(
                &mut r,
                "backups_failed",
                "Scheduled backups that failed",
                Counter::default(),
            ),
            backup_last_revision: reg(
                &mut r,
                "backup_last_revision",
                "Revision of the last scheduled backup",
                Gauge::default(),
            ),
            backup_last_bytes: reg(
                &mut r,
                "backup_last_bytes",
                "Size of the last scheduled backup",
                Gauge::default(),
            ),
            commands_published: reg(
                &mut r,
                "commands_published",
                "Device commands published",
                Counter::default(),
            ),
            commands_failed: reg(
                &mut r,
                "commands_failed",
                "Device commands that failed",
                Counter::default(),
            ),
            ingest,
            mqtt_rejected: reg(
                &mut r,
                "mqtt_rejected",
                "MQTT messages refused, by reason",
                Family::default(),
            ),
            ingest_pending_messages: reg(
                &mut r,
                "ingest_pending_messages",
                "Ingested messages awaiting commit",
                Gauge::default(),
            ),
            ingest_lag,
            storage,
            zookeeper: ZookeeperMetrics::default(),
            mirror: MirrorMetrics::default(),
            registry: r,
        };
        if cfg!(feature = "zookeeper") {
            m.zookeeper.register(&mut m.registry);
        }
        if cfg!(feature = "mongodb") {
            m.mirror.register(&mut m.registry);
        }
        m
    }

    fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        // A method the server does not serve is anything a client made up:
        // one label for all of them, so that labels stay bounded.
        let method = if code == tonic::Code::Unimplemented {
            "other"
        } else {
            self.method_labels.label(method)
        };
        let code = endpoint::code_label(code);
        self.requests
            .get_or_create(&CallLabels { method, code })
            .inc();
        self.durations
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts what the ingest core counted.
    pub fn ingest(&self, what: Counted, n: u64) {
        match (what, what.plain_index()) {
            (Counted::MqttRejected(reason), _) => {
                self.mqtt_rejected
                    .get_or_create(&Reason { reason })
                    .inc_by(n);
            }
            (_, Some(i)) => {
                self.ingest[i].inc_by(n);
            }
            (_, None) => {}
        }
    }

    /// The ingest lag histogram as the ingest driver computed it.
    pub fn set_ingest_lag(&self, lag: &LagHistogram) {
        *self
            .ingest_lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lag.clone();
    }

    /// Counts a proposal's outcome: `started` when it was made, `result`
    /// the reply (`Ok(None)`: applied; `Ok(Some(reason))`: applied and
    /// refused) or why it got none.
    pub fn proposed(
        &self,
        event: &'static str,
        started: Instant,
        result: Result<Option<&'static str>, &'static str>,
    ) {
        let labels = EventName { event };
        self.proposals.get_or_create(&labels).inc();
        match result {
            Ok(rejected) => {
                self.proposal_durations
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                match rejected {
                    None => {
                        self.events_applied.get_or_create(&labels).inc();
                    }
                    Some(reason) => {
                        self.events_rejected.get_or_create(&Reason { reason }).inc();
                        self.proposals_failed
                            .get_or_create(&EventFailure {
                                event,
                                reason: "rejected",
                            })
                            .inc();
                    }
                }
            }
            Err(reason) => {
                self.proposals_failed
                    .get_or_create(&EventFailure { event, reason })
                    .inc();
            }
        }
    }

    /// Counts leader changes and elections: called with this member's Raft
    /// state (by a watch every 100 ms, and at every scrape).
    pub fn saw_raft(&self, me: u64, leader: Option<u64>, term: u64) {
        let mut last = self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last_leader, last_term) = *last;
        if last_term != 0 && term > last_term {
            self.elections.inc_by(term - last_term);
        }
        if let Some(now) = leader {
            if last_leader != Some(now) {
                self.leader_changes.inc();
                if now == me && last_term != 0 {
                    self.elections_won.inc();
                }
            }
        }
        *last = (leader.or(last_leader), term.max(last_term));
    }
}

/// The reason label of a proposal that got no reply.
pub fn propose_failure(e: &utopia_raft::ProposeError) -> &'static str {
    use utopia_raft::ProposeError as E;
    match e {
        E::NotLeader { .. } => "not_leader",
        E::Unavailable(_) => "unavailable",
        E::Stopped(_) => "stopped",
        E::OutcomeUnknown(_) => "outcome_unknown",
        E::Conflict(_) => "conflict",
        E::Invalid(_) => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode_registry;

    use super::*;

    #[test]
    fn a_read_histogram_renders_as_a_histogram() {
        let storage = Arc::new(StorageMetrics::default());
        storage.log_fsync.observe(Duration::from_micros(300));
        storage.log_fsync.observe(Duration::from_micros(300));
        let m = Metrics::new(storage.clone());
        let mut out = String::new();
        encode_registry(&mut out, &m.registry).unwrap();
        let r = exposition::parse(&out);
        let fsync = r
            .histograms
            .iter()
            .find(|h| h.name == "storage_fsync_duration_seconds")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(fsync.count, 2);
        assert!(fsync.p50 > 0.0002 && fsync.p50 <= 0.0004, "{fsync:?}");
        // The ingest lag the driver publishes, cumulative in the core.
        let mut lag = LagHistogram::default();
        lag.observe(4);
        m.set_ingest_lag(&lag);
        let mut out = String::new();
        encode_registry(&mut out, &m.registry).unwrap();
        let r = exposition::parse(&out);
        let lag = r
            .histograms
            .iter()
            .find(|h| h.name == "ingest_lag_seconds")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(lag.count, 1);
        assert!(lag.p50 > 0.003 && lag.p50 <= 0.005, "{lag:?}");
    }

    #[test]
    fn grpc_labels_are_the_method_path_and_the_code_name_and_stay_bounded() {
        for i in 0..17 {
            let code = tonic::Code::from(i);
            assert_eq!(endpoint::code_label(code), format!("{code:?}"));
        }
        let m = Metrics::new(Arc::default());
        m.observe("/utopia.v1.KV/Put", tonic::Code::Ok, Duration::ZERO);
        m.observe("/utopia.v1.KV/Put", tonic::Code::NotFound, Duration::ZERO);
        m.observe("/made.up/Thing", tonic::Code::Unimplemented, Duration::ZERO);
        let mut out = String::new();
        encode_registry(&mut out, &m.registry).unwrap();
        for series in [
            r#"grpc_requests_total{method="/utopia.v1.KV/Put",code="Ok"} 1"#,
            r#"grpc_requests_total{method="/utopia.v1.KV/Put",code="NotFound"} 1"#,
            r#"grpc_requests_total{method="other",code="Unimplemented"} 1"#,
        ] {
            assert!(out.contains(series), "{series} in\n{out}");
        }
        // Past the bound every new path counts as `other`; known ones keep
        // their own label.
        for i in 0..endpoint::METHOD_LABELS_MAX {
            m.method_labels.label(&format!("/s/M{i}"));
        }
        assert_eq!(m.method_labels.label("/s/new"), "other");
        assert_eq!(
            m.method_labels.label("/utopia.v1.KV/Put"),
            "/utopia.v1.KV/Put"
        );
    }

    #[test]
    fn elections_and_leader_changes_follow_the_term_and_leader() {
        let m = Metrics::new(Arc::default());
        m.saw_raft(1, None, 1);
        m.saw_raft(1, Some(2), 1);
        assert_eq!((m.elections.get(), m.leader_changes.get()), (0, 1));
        m.saw_raft(1, None, 2);
        m.saw_raft(1, Some(1), 2);
        assert_eq!(m.elections.get(), 1);
        assert_eq!(m.leader_changes.get(), 2);
        assert_eq!(m.elections_won.get(), 1);
    }
}

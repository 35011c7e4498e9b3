//! The plain data the core takes and returns: the time, its configuration,
//! the actions it asks the driver for, and the figures it publishes.

use std::borrow::Cow;

use utopia_raft::event::Request;

use super::lag::LagHistogram;
use crate::config::mqtt::IngestSettings;
use crate::mqtt::bridge::AckToken;

/// A moment, as the driver read its clocks: a monotonic one for waits and
/// ages, and the wall clock for what goes into the log and for the store's
/// dedupe records (which are stamped with proposers' wall clocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

/// What the core needs to know about this node.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub node_id: u64,
    pub cluster_name: String,
    pub settings: IngestSettings,
    /// Per bridge: whether it carries device traffic.
    pub ingests: Vec<bool>,
    /// `limits.json_depth_max`, for payloads.
    pub json_depth_max: u64,
    /// `limits.document_bytes_max`, carried in every batch.
    pub document_bytes_max: u64,
}

/// What the driver does for the core.
#[derive(Debug, Clone)]
pub enum Action {
    /// Acknowledge to the broker (a void token, of an older connection,
    /// is dropped: the broker redelivers).
    Ack(AckToken),
    /// Acknowledge a copy whose commit was applied; if the token is void,
    /// report it with [`Core::on_ack_void`](super::Core::on_ack_void), so that the redelivery finds
    /// a tombstone.
    AckCommitted { token: AckToken, digest: [u8; 16] },
    /// Propose, from any member; answer with [`Core::on_proposed`](super::Core::on_proposed).
    Propose { batch: u64, request: Request },
    /// Read the ingest owners; answer with [`Core::on_owners`](super::Core::on_owners).
    ReadOwners,
    /// Read whether an alarm is active; answer with [`Core::on_alarms`](super::Core::on_alarms).
    ReadAlarms,
    /// Read whether each digest was committed at or after its `since_ms`;
    /// answer with [`Core::on_checked`](super::Core::on_checked).
    CheckCommitted { check: u64, lookups: Vec<Lookup> },
    /// The topic ownership weight this node should announce.
    SetWeight(u32),
    /// Device commands changed: the command driver should look.
    CommandsChanged,
    /// Add to a counter.
    Count(Counted, u64),
}

/// What the core counts; each is one metric (see [`Counted::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
    MqttConnects,
    MqttConnectionErrors,
    MqttMessagesReceived,
    MqttClusterMessages,
    MqttRedeliveries,
    /// A message refused, by reason.
    MqttRejected(&'static str),
    IngestResyncs,
    IngestCopiesAlreadyCommitted,
    IngestCopiesSettledByStore,
    IngestTombstonesEvicted,
    IngestBatches,
    IngestBatchMessages,
    IngestBatchesRefused,
    IngestBatchesRefusedAlarm,
    IngestBatchesStale,
    IngestAlarmPauses,
}

impl Counted {
    /// Every counter without a label, in the order metrics register them.
    pub const PLAIN: [Counted; 15] = [
        Counted::MqttConnects,
        Counted::MqttConnectionErrors,
        Counted::MqttMessagesReceived,
        Counted::MqttClusterMessages,
        Counted::MqttRedeliveries,
        Counted::IngestResyncs,
        Counted::IngestCopiesAlreadyCommitted,
        Counted::IngestCopiesSettledByStore,
        Counted::IngestTombstonesEvicted,
        Counted::IngestBatches,
        Counted::IngestBatchMessages,
        Counted::IngestBatchesRefused,
        Counted::IngestBatchesRefusedAlarm,
        Counted::IngestBatchesStale,
        Counted::IngestAlarmPauses,
    ];

    /// The metric's name without its `_total` suffix (a rejection: the
    /// family's name).
    pub fn metric(self) -> &'static str {
        match self {
            Counted::MqttConnects => "mqtt_connects",
            Counted::MqttConnectionErrors => "mqtt_connection_errors",
            Counted::MqttMessagesReceived => "mqtt_messages_received",
            Counted::MqttClusterMessages => "mqtt_cluster_messages",
            Counted::MqttRedeliveries => "mqtt_redeliveries",
            Counted::MqttRejected(_) => "mqtt_rejected",
            Counted::IngestResyncs => "ingest_resyncs",
            Counted::IngestCopiesAlreadyCommitted => "ingest_copies_already_committed",
            Counted::IngestCopiesSettledByStore => "ingest_copies_settled_by_store",
            Counted::IngestTombstonesEvicted => "ingest_tombstones_evicted",
            Counted::IngestBatches => "ingest_batches",
            Counted::IngestBatchMessages => "ingest_batch_messages",
            Counted::IngestBatchesRefused => "ingest_batches_refused",
            Counted::IngestBatchesRefusedAlarm => "ingest_batches_refused_alarm",
            Counted::IngestBatchesStale => "ingest_batches_stale",
            Counted::IngestAlarmPauses => "ingest_alarm_pauses",
        }
    }

    /// Its place in [`Counted::PLAIN`] (`None`: a labelled counter).
    pub fn plain_index(self) -> Option<usize> {
        Counted::PLAIN.iter().position(|c| *c == self)
    }

    /// The name `utopia status` shows it under.
    pub fn name(self) -> Cow<'static, str> {
        match self {
            Counted::MqttRejected(reason) => {
                Cow::Owned(format!("mqtt_rejected_total{{reason=\"{reason}\"}}"))
            }
            other => Cow::Owned(format!("{}_total", other.metric())),
        }
    }
}

/// One digest to look for in the store's dedupe records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub seq: u64,
    pub digest: [u8; 16],
    pub since_ms: u64,
}

/// The figures published to the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gauges {
    pub pending_messages: u64,
    pub lag: LagHistogram,
}

//! The document collections' types: one serde struct per kind, shared by
//! the applier (which writes them), the reader (which serves them) and the
//! edge (`src/`, which reads the fellows).
//!
//! # Stored bytes
//!
//! A document is stored as compact JSON whose object keys are in sorted
//! order, at every level: documents used to be built as `serde_json` maps
//! (sorted by key), and every replica and every data directory holds them
//! so. [`Document::encode`] therefore goes through a map (a struct would
//! serialize its fields in declaration order): the bytes do not depend on
//! how the fields are declared. `tests/golden.rs` holds what the maps wrote.
//!
//! # Fields this build does not know
//!
//! Every struct keeps the fields it does not know in `other` and writes
//! them back: a field written by a newer build (or by another event, such
//! as a fellow's `client_addr`) survives every rewrite. A field this build
//! writes only sometimes is an `Option` left out while `None`, so a
//! document that never had it does not gain it.
//!
//! # Decoding
//!
//! [`Document::decode`] refuses a document without a field every build
//! writes, or with a field of the wrong type, with a [`DocumentError`]
//! naming it: the applier rejects the event that touches it (the same on
//! every replica, see `apply`), a read reports a corrupt record.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utopia_raft::event::{ClassRules, FellowRole, VoteSource};

use crate::apply::CommandState;
use crate::keys::Collection;

/// Fields of a document this build does not know, kept as they are.
pub type OtherFields = Map<String, Value>;

/// A stored document that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {collection}/{id} cannot be decoded: {reason}", collection = .collection.name())]
pub struct DocumentError {
    pub collection: Collection,
    pub id: String,
    pub reason: String,
}

impl From<DocumentError> for crate::StoreError {
    fn from(e: DocumentError) -> Self {
        crate::StoreError::corrupt(
            e.collection.cf(),
            e.id.as_bytes(),
            format!("document cannot be decoded: {}", e.reason),
        )
    }
}

/// A kind of document: its collection, and its one encoder and decoder.
pub trait Document: Serialize + DeserializeOwned + Clone {
    const COLLECTION: Collection;

    /// The document as stored: compact JSON, keys sorted at every level.
    ///
    /// # Panics
    /// If the document cannot be represented in JSON (a map with keys that
    /// are not strings, a `Serialize` impl that fails): a bug in its type,
    /// never data. Documents are at most
    /// [`crate::apply::bounds::DOCUMENT_NESTING_MAX`] deep, so encoding
    /// (which recurses) is bounded.
    fn encode(&self) -> Vec<u8> {
        let encoded = serde_json::to_value(self).and_then(|map| serde_json::to_vec(&sorted(map)));
        match encoded {
            Ok(bytes) => bytes,
            Err(e) => panic!(
                "encoding a {} document failed, which it cannot: {e}",
                Self::COLLECTION.name()
            ),
        }
    }

    /// Decodes the stored document `id`.
    fn decode(id: &str, bytes: &[u8]) -> Result<Self, DocumentError> {
        serde_json::from_slice(bytes).map_err(|e| DocumentError {
            collection: Self::COLLECTION,
            id: id.to_string(),
            reason: e.to_string(),
        })
    }
}

/// `value` with every object's keys in sorted order, at every level.
///
/// serde_json's maps keep keys sorted unless its `preserve_order` feature is
/// on, and a dependency can turn that on for the whole build (the `mongodb`
/// feature's `bson` does): the stored bytes must not depend on which
/// features a build has. Without `preserve_order` this does no work.
/// Documents are at most [`crate::apply::bounds::DOCUMENT_NESTING_MAX`]
/// deep, so the recursion is bounded.
fn sorted(mut value: Value) -> Value {
    value.sort_all_objects();
    value
}

/// An entry of a document's map (a [`LastValue`], a [`DeviceCommand`]) as
/// stored: keys sorted, like the document's.
///
/// # Panics
/// If `entry` cannot be represented in JSON: a bug in its type.
pub fn entry<T: Serialize>(entry: &T) -> Value {
    serde_json::to_value(entry).map(sorted).unwrap_or_else(|e| {
        panic!(
            "encoding a {} failed, which it cannot: {e}",
            std::any::type_name::<T>()
        )
    })
}

/// A device, `${host}/${class}/${device_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The document id.
    pub id: String,
    pub host: String,
    pub class: String,
    pub device_id: String,
    /// The zone it was last seen in.
    pub zone: String,
    /// `/${host}/${zone}/${class}/${device_id}`.
    pub topic_focus: String,
    /// Everything it reported: `data[post_type][path...] = value`.
    pub data: Value,
    /// Per post type, a [`LastValue`].
    pub last: Map<String, Value>,
    /// Its latest commands by id (decimal), each a [`DeviceCommand`].
    pub commands: Map<String, Value>,
    /// The id of its stats document.
    pub stats: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// When a command of it last changed; absent before its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command_ms: Option<u64>,
    /// Values its class's accepted configuration refused; absent before
    /// the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_total: Option<u64>,
    /// The latest of those refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejected: Option<DeviceRejection>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// Why a device's value was last refused by its class, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRejection {
    pub reason: String,
    pub at_ms: u64,
}

impl Document for Device {
    const COLLECTION: Collection = Collection::Devices;
}

/// The last value a device reported for one post type (an entry of
/// [`Device::last`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastValue {
    pub path: Vec<String>,
    pub value: Value,
    pub at_ms: u64,
}

impl LastValue {
    /// The entry as stored, the same as [`entry`] makes of it, built
    /// without a round through serde: one is made for every message a
    /// device sends.
    pub fn into_entry(self) -> Value {
        // Inserted in sorted order, so that a build whose maps keep
        // insertion order (see `sorted`) writes the same bytes.
        let mut map = Map::new();
        map.insert("at_ms".into(), self.at_ms.into());
        map.insert("path".into(), self.path.into());
        map.insert("value".into(), sorted(self.value));
        Value::Object(map)
    }
}

/// A command as its device's document shows it (an entry of
/// [`Device::commands`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCommand {
    pub post_type: String,
    pub state: CommandState,
    pub attempts: u32,
    pub issued_ms: u64,
    pub last_attempt_ms: u64,
    pub settled_ms: u64,
    /// The device's reply, once acknowledged (`null` before).
    pub reply: Option<Value>,
    /// Why it failed (`null` unless it did).
    pub reason: Option<String>,
}

/// A zone. The ids of its devices are not stored here but in the zone
/// index, and served beside it ([`ZoneServed`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    pub zone: String,
    #[serde(default)]
    pub device_count: u64,
    #[serde(flatten)]
    pub other: OtherFields,
}

impl Document for Zone {
    const COLLECTION: Collection = Collection::Zones;
}

impl Zone {
    /// The device list zone documents carried before it moved to the zone
    /// index: dropped when such a document is rewritten.
    pub const LEGACY_DEVICES: &'static str = "devices";
}

/// A zone as served: the document and the ids of its devices, read from
/// the zone index within a byte bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneServed {
    #[serde(flatten)]
    pub zone: Zone,
    pub devices: Vec<String>,
    /// Whether ids were left out.
    pub devices_more: bool,
}

impl ZoneServed {
    /// `zone` served with these device ids (in place of a list it still
    /// carries from before the zone index).
    pub fn new(mut zone: Zone, devices: Vec<String>, devices_more: bool) -> Self {
        zone.other.remove(Zone::LEGACY_DEVICES);
        zone.other.remove("devices_more");
        Self {
            zone,
            devices,
            devices_more,
        }
    }

    /// The JSON text served, keys sorted like a stored document's.
    pub fn to_json(&self) -> String {
        let encoded = serde_json::to_value(self).map(|map| sorted(map).to_string());
        encoded.unwrap_or_else(|e| panic!("encoding a served zone failed, which it cannot: {e}"))
    }
}

/// A member of the cluster, by its Raft id. Every field but the id is
/// optional: the member's client address may be published before the
/// leader writes the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fellow {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<FellowRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_ms: Option<u64>,
    /// The id of its stats document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
    /// The address clients reach it at, as it published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// Configurations it could not write and verify: it ignores them (the
    /// warning the cluster sees).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_failing: Vec<FellowConfigFailing>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// A configuration a member could not write and verify, in its fellows
/// document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FellowConfigFailing {
    pub name: String,
    pub version: u64,
    pub reason: String,
    pub since_ms: u64,
}

impl Document for Fellow {
    const COLLECTION: Collection = Collection::Fellows;
}

impl Fellow {
    /// A member known by its id alone.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            host: None,
            addr: None,
            active: None,
            state: None,
            weight: None,
            last_active_ms: None,
            stats: None,
            client_addr: None,
            config_failing: Vec::new(),
            other: OtherFields::new(),
        }
    }
}

/// A database server ever used, `${host}:${port}:${type}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbServer {
    pub id: String,
    pub host: String,
    pub port: u16,
    /// `rocksdb`, `mongodb`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub state: DbServerState,
    /// Why it is problematic; absent while it is ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub first_seen_ms: u64,
    pub updated_ms: u64,
    #[serde(flatten)]
    pub other: OtherFields,
}

impl Document for DbServer {
    const COLLECTION: Collection = Collection::DbServers;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbServerState {
    Ok,
    Problematic,
}

/// A version of an XML configuration or schema, `${name}@${version}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XmlConfig {
    pub id: String,
    pub name: String,
    /// `config` or `schema`.
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    /// blake3 of `xml`, hex.
    pub hash: String,
    pub xml: String,
    /// The member that proposed it.
    pub proposer: u64,
    /// The proposer's configuration weight: of competing proposals for one
    /// name and version, the heaviest wins.
    pub weight: u32,
    pub state: ConfigState,
    pub proposed_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<u64>,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the agreement window of a voted version ends (the first vote's
    /// time plus its window); a [`ConfigDecide`] before it is refused.
    ///
    /// [`ConfigDecide`]: utopia_raft::event::Event::ConfigDecide
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide_after_ms: Option<u64>,
    /// The votes for this version, one per member, in the order they came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<ConfigVoteRecord>,
    /// The competing contents while the version is undecided, one per
    /// hash; at the decision the winner becomes `hash`, `xml` and `rules`
    /// and the list is emptied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<ConfigCandidate>,
    /// For an accepted device-class configuration: what ingest checks
    /// device data and commands against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ClassRules>,
    /// Members that could not write and verify this accepted version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<ConfigFailing>,
    /// For a refused file ([`ConfigFileRejected`]): its name in the
    /// member's configuration directory.
    ///
    /// [`ConfigFileRejected`]: utopia_raft::event::Event::ConfigFileRejected
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// One member's vote in an [`XmlConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVoteRecord {
    pub node: u64,
    /// Configuration weight in thousandths.
    pub weight_milli: u32,
    pub hash: String,
    pub at_ms: u64,
    pub source: VoteSource,
}

/// One competing content of an undecided [`XmlConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigCandidate {
    pub hash: String,
    pub xml: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ClassRules>,
}

/// A member that could not write and verify an accepted version, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFailing {
    pub node: u64,
    pub reason: String,
    pub since_ms: u64,
}

impl Document for XmlConfig {
    const COLLECTION: Collection = Collection::XmlConfigs;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    Proposed,
    Accepted,
    Superseded,
    Rejected,
}

/// Statistics of one (type, id) pair, `${type}/${id}` (seed 000): the
/// uses (time and command, newest kept), today's attempts and failures,
/// and their averages per day, ISO week, month and year, counted in UTC
/// from the first counted day to the day of the latest event, idle ones
/// included. The state behind them is bounded: totals, the first and the
/// current day, and a few named counters (see `apply/stats.rs` and the
/// README's "Statistics").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The time of the latest event counted.
    pub used_ms: u64,
    /// What the (type, id) was used for, oldest first, at most
    /// [`crate::apply::STATS_USED_MAX`].
    #[serde(default)]
    pub used: Vec<StatUse>,
    pub today_attempts: u64,
    pub today_failures: u64,
    /// Averages: the totals over the calendar days, ISO weeks, months and
    /// years from `since` to `date`, both included.
    pub daily_attempts: f64,
    pub daily_failures: f64,
    pub weekly_attempts: f64,
    pub weekly_failures: f64,
    pub monthly_attempts: f64,
    pub monthly_failures: f64,
    pub yearly_attempts: f64,
    pub yearly_failures: f64,
    #[serde(default)]
    pub total_attempts: u64,
    #[serde(default)]
    pub total_failures: u64,
    /// The first day counted, in days since 1970-01-01 (UTC); `None` in a
    /// document of a build before it (which has `days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_day: Option<u64>,
    /// The day `today_*` counts, in days since 1970-01-01 (UTC).
    #[serde(default)]
    pub day: u64,
    /// `first_day` and `day` as dates (`YYYY-MM-DD`), for readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// The divisors of the averages.
    #[serde(default)]
    pub periods: StatPeriods,
    /// What the attempts and failures are made of, by name (`messages`,
    /// `commands_failed`, ...), with the same averages.
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, StatCount>,
    /// Per-day counts, as builds before the totals kept them: folded into
    /// the totals by the next event that counts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<StatDay>>,
    #[serde(flatten)]
    pub other: OtherFields,
}

impl Document for Stats {
    const COLLECTION: Collection = Collection::Stats;
}

/// One use of a (type, id): when, and what (for a device command, its id,
/// as in the device document's `commands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatUse {
    pub at_ms: u64,
    pub command: String,
}

/// The calendar periods from the first counted day to the current one,
/// both included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatPeriods {
    pub days: u64,
    pub weeks: u64,
    pub months: u64,
    pub years: u64,
}

/// One named counter of a [`Stats`] document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatCount {
    pub today: u64,
    pub total: u64,
    pub daily: f64,
    pub weekly: f64,
    pub monthly: f64,
    pub yearly: f64,
}

/// One day's counts in a [`Stats`] document of an older build (days since
/// the Unix epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatDay {
    pub day: u64,
    pub attempts: u64,
    pub failures: u64,
    #[serde(flatten)]
    pub other: OtherFields,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes `text` as a `D`, encodes it back, and checks the bytes are
    /// the text: the sorted form every build wrote, every field kept.
    fn round_trip<D: Document + std::fmt::Debug>(text: &str) -> D {
        let doc = D::decode("id", text.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(doc.encode()).unwrap(), text, "{doc:?}");
        let length = crate::apply::bounds::json_encoded_bytes(&doc);
        assert_eq!(length, text.len() as u64, "the size check counts the bytes");
        doc
    }

    #[test]
    fn every_kind_reads_and_writes_back_the_bytes_it_was_stored_as() {
        let device: Device = round_trip(
            r#"{"a_newer_field":{"a":[2],"z":1},"class":"thermo","commands":{"1":{"attempts":1,"extra":"e","issued_ms":5,"last_attempt_ms":6,"post_type":"set","reason":null,"reply":{"ok":true},"settled_ms":7,"state":"acknowledged"}},"data":{"cfg":{"a":{"x":[1,2.5,"s"],"y":null}},"temp":22},"device_id":"7","first_seen_ms":1,"host":"gw1","id":"gw1/thermo/7","last":{"temp":{"at_ms":3,"path":[],"value":22}},"last_command_ms":7,"last_seen_ms":3,"stats":"device/gw1/thermo/7","topic_focus":"/gw1/hall/thermo/7","zone":"hall"}"#,
        );
        assert_eq!(device.other["a_newer_field"], json!({"a": [2], "z": 1}));
        round_trip::<Device>(
            r#"{"class":"c","commands":{},"data":{},"device_id":"1","first_seen_ms":1,"host":"h","id":"h/c/1","last":{},"last_seen_ms":1,"stats":"device/h/c/1","topic_focus":"/h/z/c/1","zone":"z"}"#,
        );
        round_trip::<Zone>(r#"{"device_count":3,"x_extra":true,"zone":"hall"}"#);
        let fellow: Fellow = round_trip(r#"{"client_addr":"127.0.0.1:7702","id":2}"#);
        assert_eq!(fellow.client_addr.as_deref(), Some("127.0.0.1:7702"));
        round_trip::<Fellow>(
            r#"{"active":true,"addr":"127.0.0.1:7801","b_new":"x","client_addr":"127.0.0.1:7701","host":"n1","id":1,"last_active_ms":1,"state":"leader","stats":"fellow/1","weight":1}"#,
        );
        round_trip::<DbServer>(
            r#"{"first_seen_ms":1,"host":"db1","id":"db1:27017:mongodb","port":27017,"reason":"verify failed","state":"problematic","type":"mongodb","updated_ms":2,"zz":1}"#,
        );
        round_trip::<XmlConfig>(
            r#"{"hash":"aa","id":"a@1","name":"a","proposed_ms":1,"proposer":2,"state":"proposed","type":"config","version":1,"weight":2,"xml":"<config name=\"a\"/>"}"#,
        );
        round_trip::<XmlConfig>(
            r#"{"decided_ms":2,"hash":"aa","id":"a@1","name":"a","note":"n","proposed_ms":1,"proposer":2,"reason":"r","state":"rejected","type":"config","version":1,"weight":2,"xml":"<x/>"}"#,
        );
        round_trip::<Stats>(
            r#"{"counters":{"messages":{"daily":1.0,"monthly":2.0,"today":1,"total":2,"weekly":2.0,"yearly":2.0}},"daily_attempts":1.0,"daily_failures":0.0,"date":"2026-01-02","day":20455,"first_day":20454,"id":"1","monthly_attempts":2.0,"monthly_failures":0.0,"new":[],"periods":{"days":2,"months":1,"weeks":1,"years":1},"since":"2026-01-01","today_attempts":1,"today_failures":0,"total_attempts":2,"total_failures":0,"type":"device","used":[{"at_ms":5,"command":"data/t"}],"used_ms":5,"weekly_attempts":2.0,"weekly_failures":0.0,"yearly_attempts":2.0,"yearly_failures":0.0}"#,
        );
        // A stats document of a build that kept per-day counts and whole
        // weekly to yearly counts still decodes; its days are kept until
        // the next count folds them in (`apply/stats.rs`).
        let old = Stats::decode(
            "fellow/1",
            br#"{"daily_attempts":2.0,"daily_failures":0.3333333333333333,"days":[{"attempts":3,"day":20454,"failures":1},{"attempts":2,"day":20455,"extra":1,"failures":0}],"id":"1","monthly_attempts":5,"monthly_failures":1,"new":[],"today_attempts":2,"today_failures":0,"type":"fellow","used_ms":1,"weekly_attempts":5,"weekly_failures":1,"yearly_attempts":5,"yearly_failures":1}"#,
        )
        .unwrap();
        assert_eq!(old.weekly_attempts, 5.0);
        assert_eq!(old.days.as_ref().map(Vec::len), Some(2));
        assert!(old.used.is_empty() && old.first_day.is_none());
    }

    #[test]
    fn entries_are_written_in_the_stored_form() {
        let last = LastValue {
            path: vec!["a".into()],
            value: json!(1),
            at_ms: 2,
        };
        assert_eq!(
            entry(&last).to_string(),
            r#"{"at_ms":2,"path":["a"],"value":1}"#
        );
        for value in [
            json!(1),
            json!(null),
            json!({"z": [1, {"b": 2, "a": 1}], "a": "x"}),
        ] {
            let last = LastValue {
                path: vec!["a".into(), "b".into()],
                value,
                at_ms: 7,
            };
            assert_eq!(last.clone().into_entry(), entry(&last));
            assert_eq!(
                last.clone().into_entry().to_string(),
                entry(&last).to_string()
            );
        }
        let command = DeviceCommand {
            post_type: "set".into(),
            state: CommandState::Pending,
            attempts: 0,
            issued_ms: 1,
            last_attempt_ms: 0,
            settled_ms: 0,
            reply: None,
            reason: None,
        };
        assert_eq!(
            entry(&command).to_string(),
            r#"{"attempts":0,"issued_ms":1,"last_attempt_ms":0,"post_type":"set","reason":null,"reply":null,"settled_ms":0,"state":"pending"}"#
        );
        let served = ZoneServed {
            zone: Zone::decode("z", br#"{"device_count":2,"zone":"z"}"#).unwrap(),
            devices: vec!["h/c/1".into(), "h/c/2".into()],
            devices_more: false,
        };
        assert_eq!(
            served.to_json(),
            r#"{"device_count":2,"devices":["h/c/1","h/c/2"],"devices_more":false,"zone":"z"}"#
        );
    }

    #[test]
    fn documents_missing_what_every_build_writes_are_refused_with_their_name() {
        for (text, what) in [
            (r#"{"zone":"z","device_count":-1}"#, "-1"),
            (r#"{"device_count":1}"#, "zone"),
            ("[]", "struct"),
            ("{", "EOF"),
        ] {
            let err = Zone::decode("z1", text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("zones/z1") && err.contains(what), "{err}");
        }
        let err = Fellow::decode("3", br#"{"id":3,"state":"boss"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fellows/3") && err.contains("boss"), "{err}");
    }
}

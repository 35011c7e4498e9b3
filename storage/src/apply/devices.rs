//! Applying device events: registration in a zone (the zone and device
//! indexes, the zone's count), and the data devices report.

use serde_json::{Map, Value};
use utopia_raft::event::{DeviceData, Outcome, Rejection};

use super::class_rules::{self, ClassCheck};
use super::documents::{document_too_large, CachedBefore};
use super::json_path;
use super::stats::{Counter, StatDelta};
use super::{bounds, content, Applier, ApplyError, StateRead};
use crate::codec;
use crate::documents::{Device, DeviceRejection, LastValue, OtherFields, Zone};
use crate::keys::{self, Cf, DeviceIndex};

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// Registers a device in a zone if it is new there. Returns the device id
    /// and its document, which is written here only with `write_doc` (a
    /// caller that changes it further writes it once itself); or, for a
    /// new device of a host at its quota, why it is refused (nothing is
    /// written then).
    pub(super) fn register_device(
        &mut self,
        at_ms: u64,
        host: &str,
        zone: &str,
        class: &str,
        device_id: &str,
        write_doc: bool,
    ) -> Result<Result<Registered, Rejection>, ApplyError> {
        let id = device_doc_id(host, class, device_id);
        let (mut doc, old_zone) = match self.get_doc::<Device>(&id)? {
            Some(doc) => {
                let old_zone = doc.zone.clone();
                (doc, Some(old_zone))
            }
            None => {
                if let Some(why) = self.device_refusal(host)? {
                    return Ok(Err(Rejection::Quota(why)));
                }
                self.count_new_device(host)?;
                // Its zone, topic focus and last sighting are set below.
                let doc = Device {
                    id: id.clone(),
                    host: host.to_string(),
                    class: class.to_string(),
                    device_id: device_id.to_string(),
                    zone: String::new(),
                    topic_focus: String::new(),
                    data: Value::Object(Map::new()),
                    last: Map::new(),
                    commands: Map::new(),
                    stats: format!("device/{id}"),
                    first_seen_ms: at_ms,
                    last_seen_ms: at_ms,
                    last_command_ms: None,
                    rejected_total: None,
                    last_rejected: None,
                    other: OtherFields::new(),
                };
                self.put(
                    Cf::DeviceIndex,
                    keys::device_index_key(DeviceIndex::Class, class, &id),
                    Vec::new(),
                );
                self.put(
                    Cf::DeviceIndex,
                    keys::device_index_key(DeviceIndex::Host, host, &id),
                    Vec::new(),
                );
                (doc, None)
            }
        };
        if old_zone.as_deref() != Some(zone) {
            if let Some(old) = &old_zone {
                self.delete(
                    Cf::DeviceIndex,
                    keys::device_index_key(DeviceIndex::Zone, old, &id),
                );
                self.zone_membership(old, false)?;
            }
            self.put(
                Cf::DeviceIndex,
                keys::device_index_key(DeviceIndex::Zone, zone, &id),
                Vec::new(),
            );
            self.zone_membership(zone, true)?;
            doc.zone = zone.to_string();
            doc.topic_focus = format!("/{host}/{zone}/{class}/{device_id}");
        }
        doc.last_seen_ms = at_ms;
        if write_doc {
            self.put_doc(&id, doc.clone())?;
        }
        Ok(Ok((id, doc)))
    }

    /// Counts a device in or out of a zone's document. The document keeps
    /// only the count: which devices are in the zone is the zone index
    /// (`Cf::DeviceIndex`), which readers serve the list from, so a new
    /// device rewrites a document of constant size rather than the whole
    /// list. Called only when the device's zone changes.
    pub(super) fn zone_membership(&mut self, zone: &str, present: bool) -> Result<(), ApplyError> {
        let mut doc = self.get_doc::<Zone>(zone)?.unwrap_or_else(|| Zone {
            zone: zone.to_string(),
            device_count: 0,
            other: OtherFields::new(),
        });
        // Documents stored before the list moved to the index carry it (and
        // its count): the list goes, the count stays.
        doc.other.remove(Zone::LEGACY_DEVICES);
        doc.device_count = if present {
            doc.device_count + 1
        } else {
            doc.device_count.saturating_sub(1)
        };
        self.put_doc(zone, doc)?;
        Ok(())
    }

    /// Device data reported through the API ([`Event::DeviceDataUpdated`]);
    /// a refusal by the device's class is counted like an ingest item's.
    ///
    /// [`Event::DeviceDataUpdated`]: utopia_raft::event::Event::DeviceDataUpdated
    pub(super) fn apply_device_data(
        &mut self,
        at_ms: u64,
        d: &DeviceData,
    ) -> Result<Outcome, ApplyError> {
        let applied = self.device_data(at_ms, d)?;
        let id = device_doc_id(&d.host, &d.class, &d.device_id);
        let mut tally = DeviceTally::default();
        tally.message(&d.post_type, !matches!(applied, DataApplied::Stored(_)));
        self.count_device_messages(at_ms, &id, &tally)?;
        Ok(match applied {
            DataApplied::Stored(id) => Outcome::Device { id },
            DataApplied::Refused(rejection) => Outcome::Rejected(rejection),
            DataApplied::ClassRefused(rejection) => {
                let mut totals = self.ingest_totals()?;
                totals.class_refused += 1;
                self.put(
                    Cf::Ingest,
                    keys::ingest::TOTALS.to_vec(),
                    codec::encode(&totals),
                );
                Outcome::Rejected(rejection)
            }
        })
    }

    /// Stores a device's data (registering the device where it is new),
    /// typed by its class when the class has an accepted configuration. A
    /// value the class refuses changes nothing but the device's refusal
    /// count and last refusal, when the device exists; counting it
    /// cluster-wide is the caller's.
    pub(super) fn device_data(
        &mut self,
        at_ms: u64,
        d: &DeviceData,
    ) -> Result<DataApplied, ApplyError> {
        // The entrances check these first; a committed entry may still come
        // from an older build or a forwarded proposal.
        bounds::check_path_segments(d.path.len())
            .or_else(|e| content(format!("device path: {e}")))?;
        bounds::check_json_depth(&d.json, bounds::JSON_DEPTH_MAX)
            .or_else(|e| content(format!("device value: {e}")))?;
        let value: Value = match serde_json::from_str(&d.json) {
            Ok(v) => v,
            Err(e) => return content(format!("device value is not JSON: {e}")),
        };
        if d.post_type.is_empty() {
            return content("empty post_type");
        }
        let typed = match self.class_check(&d.class)? {
            ClassCheck::Untyped => Ok(value),
            ClassCheck::Refused(reason) => Err(Rejection::FailedPrecondition(reason)),
            ClassCheck::Typed(record) => {
                class_rules::type_post(&d.class, &record, &d.post_type, &d.path, value)
                    .map_err(Rejection::Invalid)
            }
        };
        let value = match typed {
            Ok(value) => value,
            Err(rejection) => {
                let id = device_doc_id(&d.host, &d.class, &d.device_id);
                let reason = match &rejection {
                    Rejection::Invalid(r) | Rejection::FailedPrecondition(r) => r.clone(),
                    other => other.to_string(),
                };
                self.note_device_refusal(at_ms, &id, &reason)?;
                return Ok(DataApplied::ClassRefused(rejection));
            }
        };
        let path: Vec<&str> = std::iter::once(d.post_type.as_str())
            .chain(d.path.iter().map(String::as_str))
            .collect();
        let last = LastValue {
            path: d.path.clone(),
            value: value.clone(),
            at_ms,
        }
        .into_entry();
        let id = device_doc_id(&d.host, &d.class, &d.device_id);
        let Some((value, last)) = self.store_in_place(at_ms, &id, &d.zone, &path, value, last)?
        else {
            return Ok(DataApplied::Stored(id));
        };
        let (id, mut doc) =
            match self.register_device(at_ms, &d.host, &d.zone, &d.class, &d.device_id, false)? {
                Ok(registered) => registered,
                Err(rejection) => return Ok(DataApplied::Refused(rejection)),
            };
        json_path::set_path(&mut doc.data, &path, value);
        doc.last.insert(d.post_type.clone(), last);
        self.put_doc(&id, doc)?;
        Ok(DataApplied::Stored(id))
    }

    /// Stores a value of a device the batch already holds, in the zone it
    /// is in: in place, journaling only what the value replaced (not a copy
    /// of the document), and taking it back if the document would be too
    /// large. What registering would do to such a device is only its last
    /// sighting. Hands the value and its `last` entry back when the batch
    /// does not hold the device in `zone`.
    fn store_in_place(
        &mut self,
        at_ms: u64,
        id: &str,
        zone: &str,
        path: &[&str],
        value: Value,
        last: Value,
    ) -> Result<Option<(Value, Value)>, ApplyError> {
        let known_bytes = self.docs.device_bytes(id);
        let Some(doc) = self.docs.device_in(id, zone) else {
            return Ok(Some((value, last)));
        };
        let growth = known_bytes.map(|_| in_place_growth_bytes(path, &value, &last));
        let post_type = path.first().copied().unwrap_or_default().to_string();
        let data = json_path::set_path(&mut doc.data, path, value);
        let undo = ValueUndo {
            path: path.iter().map(|s| (*s).to_string()).collect(),
            data,
            last: doc.last.insert(post_type, last),
            last_seen_ms: std::mem::replace(&mut doc.last_seen_ms, at_ms),
        };
        // The document is encoded to count it only when what is known of
        // its size leaves the limit in doubt; a size over the limit is
        // always the counted one.
        let bytes = match known_bytes.zip(growth) {
            Some((known, growth)) if known.saturating_add(growth) <= self.document_bytes_max => {
                known + growth
            }
            _ => bounds::json_encoded_bytes(&*doc),
        };
        if bytes > self.document_bytes_max {
            undo.restore(doc);
            return document_too_large(
                keys::Collection::Devices,
                id,
                bytes,
                self.document_bytes_max,
            );
        }
        if self.journal {
            self.undo
                .docs
                .push(CachedBefore::DeviceValue(id.to_string(), undo));
        }
        // Taking the value back (`ValueUndo::restore`) puts the document
        // back to a size this bound was already at least.
        self.docs.set_device_bytes(id, bytes);
        Ok(None)
    }

    /// Counts a refusal of device data by its class in the device's
    /// document, if the device exists (a refused value registers nothing).
    fn note_device_refusal(
        &mut self,
        at_ms: u64,
        id: &str,
        reason: &str,
    ) -> Result<(), ApplyError> {
        let Some(mut doc) = self.get_doc::<Device>(id)? else {
            return Ok(());
        };
        doc.rejected_total = Some(doc.rejected_total.unwrap_or(0).saturating_add(1));
        doc.last_rejected = Some(DeviceRejection {
            reason: reason.to_string(),
            at_ms,
        });
        self.put_doc(id, doc)?;
        Ok(())
    }
}

/// The most storing `value` at `path` (post type first) in place, with its
/// `last` entry, can add to a device's encoded document: the value, its
/// `last` entry, each key on the path with the braces, colon and comma of
/// an object around it (a key escapes to at most six bytes per byte, plus
/// its quotes), the post type's key in `last`, and the digits of the new
/// last sighting. What the value replaces only makes it smaller.
fn in_place_growth_bytes(path: &[&str], value: &Value, last: &Value) -> u64 {
    let key = |k: &str| 6 * k.len() as u64 + 2;
    let path_keys: u64 = path.iter().map(|k| key(k) + 4).sum();
    let last_key = path.first().map_or(0, |k| key(k) + 2);
    bounds::json_encoded_bytes(value)
        + bounds::json_encoded_bytes(last)
        + path_keys
        + last_key
        + U64_DIGITS_MAX
}

/// The most digits a `u64` is written with (`u64::MAX`, 20).
const U64_DIGITS_MAX: u64 = 20;

/// The messages of one device in an event or an ingest batch, counted
/// into its stats once.
#[derive(Debug, Default)]
pub(super) struct DeviceTally {
    messages: u64,
    rejected: u64,
    used: StatDelta,
}

impl DeviceTally {
    /// A message with `post_type` (empty: not known, such as a message
    /// refused by its owner), `rejected` or not.
    pub(super) fn message(&mut self, post_type: &str, rejected: bool) {
        self.messages += 1;
        let what = if post_type.is_empty() {
            "message"
        } else {
            post_type
        };
        if rejected {
            self.rejected += 1;
            self.used.used_as("rejected/", what);
        } else {
            self.used.used_as("data/", what);
        }
    }

    /// A device's reply to command `id`.
    pub(super) fn reply(&mut self, id: u64) {
        self.messages += 1;
        self.used.used(format!("reply/{id}"));
    }
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// Counts a device's messages in its stats, if the device exists (a
    /// message refused before registering its device counts nowhere).
    pub(super) fn count_device_messages(
        &mut self,
        at_ms: u64,
        device: &str,
        tally: &DeviceTally,
    ) -> Result<(), ApplyError> {
        if tally.messages == 0 || !self.has_doc::<Device>(device)? {
            return Ok(());
        }
        let mut delta = tally.used.clone();
        delta
            .add(Counter::Messages, tally.messages)
            .add(Counter::MessagesRejected, tally.rejected);
        self.count_stats(at_ms, "device", device, &delta)
    }
}

/// What device data came to.
pub(super) enum DataApplied {
    /// Stored in the device's document (its id).
    Stored(String),
    /// Refused by a quota; nothing written.
    Refused(Rejection),
    /// Refused by the device's class: a value it does not allow
    /// (`Invalid`), or no accepted configuration under
    /// `configs.require_class` (`FailedPrecondition`); only the device's
    /// refusal count written.
    ClassRefused(Rejection),
}

/// A registered device: its document id and its document.
type Registered = (String, Device);

/// A device's document id: `${host}/${class}/${id}`.
pub fn device_doc_id(host: &str, class: &str, device_id: &str) -> String {
    // Not `format!`: every server computes it for every copy of every
    // message, and formatting costs several times as much as a join.
    [host, class, device_id].join("/")
}

/// What storing a value in place replaced in a device's document (see
/// `store_in_place`).
#[derive(Debug)]
pub(super) struct ValueUndo {
    /// The post type, then the path below it.
    path: Vec<String>,
    data: json_path::PathUndo,
    /// The post type's entry in `last` before.
    last: Option<Value>,
    last_seen_ms: u64,
}

impl ValueUndo {
    /// Puts `doc` back as it was before the value, which must be the last
    /// thing stored in it.
    pub(super) fn restore(self, doc: &mut Device) {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        json_path::undo_path(&mut doc.data, &path, self.data);
        if let Some(post_type) = self.path.first() {
            match self.last {
                Some(v) => doc.last.insert(post_type.clone(), v),
                None => doc.last.remove(post_type),
            };
        }
        doc.last_seen_ms = self.last_seen_ms;
    }
}

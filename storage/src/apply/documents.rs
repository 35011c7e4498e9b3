//! Documents: how the applier reads and writes them (the batch's cache of
//! decoded devices, zones and stats, the size limit), and applying the events of
//! the cluster's own collections (fellows, database servers, XML
//! configurations). The document types are [`crate::documents`].

use std::collections::HashMap;

use utopia_raft::event::{AlarmKind, ConfigVersion, FellowState, Outcome, Quotas, Rejection};

use super::devices::ValueUndo;
use super::{bounds, content, Applier, ApplyError, StateRead};
use crate::documents::{
    ConfigState, DbServer, DbServerState, Device, Document, Fellow, OtherFields, Stats, XmlConfig,
    Zone,
};
use crate::keys::{self, Cf, Collection};

/// Device, zone and stats documents written in this batch, decoded: an ingest
/// batch updates each device many times, and each document is parsed once
/// and encoded once (into the writes, when the batch finishes). Nothing in
/// the applier reads these collections but through [`Applier::get_doc`].
#[derive(Default)]
pub(super) struct DocCache {
    devices: HashMap<String, Device>,
    /// At least the encoded size of cached devices, where known: a value
    /// stored in place adds to it what the value can add (see
    /// `Applier::store_in_place`), so a message is checked against the
    /// size limit for its own size, not its document's. Writing a device
    /// whole sets its entry; taking a write back forgets it.
    device_bytes: HashMap<String, u64>,
    zones: HashMap<String, Zone>,
    /// Counted into by many events of a batch, in place (see `stats`).
    pub(super) stats: HashMap<String, Stats>,
}

/// Device, zone and stats documents as the batches applied so far left
/// them, decoded, for the batches after: an ingest batch updates the
/// devices (and their stats) the batch before it did, and reading and
/// decoding them again was a tenth of applying it.
///
/// It only ever holds what the store holds: a batch reads from it a
/// document it has not written itself (a copy), and when the batch is
/// written, every document it wrote in these collections is dropped from
/// it and the documents in the batch's cache, as written, are taken in.
/// A batch that is not written leaves it empty, as does installing a
/// snapshot; a document it does not hold is read from the store. JSON
/// numbers are parsed exactly, so what it holds is what decoding the
/// stored bytes gives: a member that restarted (and holds nothing) writes
/// the same bytes as one that did not.
///
/// It carries the same way what every batch reads of the state machine's
/// metadata, once a batch has read it: the quotas, the first active alarm
/// and the term last counted in stats. All three are written only by
/// applying, so a batch that wrote one left the value it read after its
/// last write (or nothing).
#[derive(Default)]
pub struct CarriedDocs {
    docs: DocCache,
    /// The encoded bytes of the documents taken in since it was last
    /// emptied (documents taken in again count again).
    bytes: u64,
    /// `meta::STATS_TERM` as the last batch read or wrote it, if it did.
    pub(super) stats_term: Option<u64>,
    /// `meta::QUOTAS` as the last batch read it, if it did.
    pub(super) quotas: Option<Quotas>,
    /// The first active alarm as the last batch read it (`Some(None)`:
    /// none), if it did.
    pub(super) first_alarm: Option<Option<(u64, AlarmKind)>>,
}

/// The encoded bytes [`CarriedDocs`] takes in before it starts again empty.
const CARRIED_DOC_BYTES_MAX: u64 = 8 << 20;

impl CarriedDocs {
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Drops document `key` of column family `cf`, written by a batch.
    fn forget(&mut self, cf: Cf, key: &[u8]) {
        let Ok(id) = std::str::from_utf8(key) else {
            return;
        };
        match cf {
            Cf::Devices => {
                self.docs.devices.remove(id);
            }
            Cf::Zones => {
                self.docs.zones.remove(id);
            }
            Cf::Stats => {
                self.docs.stats.remove(id);
            }
            _ => {}
        }
    }

    /// Takes in a written batch's documents, `bytes` encoded (not the
    /// bounds on devices' sizes: a batch counts its own).
    fn take_in(&mut self, batch: DocCache, bytes: u64) {
        if self.bytes.saturating_add(bytes) > CARRIED_DOC_BYTES_MAX {
            self.clear();
        }
        self.bytes += bytes;
        self.docs.devices.extend(batch.devices);
        self.docs.zones.extend(batch.zones);
        self.docs.stats.extend(batch.stats);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.docs.devices.len() + self.docs.zones.len() + self.docs.stats.len()
    }
}

/// One document's write: its column family and key, and its bytes.
type DocWrite = ((Cf, Vec<u8>), Vec<u8>);

/// What the cache held for a document before a write. Entries live in the
/// journal until their event is settled; boxing the larger one would cost
/// an allocation per device write.
#[allow(clippy::large_enum_variant)]
pub(super) enum CachedBefore {
    Device(String, Option<Device>),
    /// A value stored in place in a device the cache holds.
    DeviceValue(String, ValueUndo),
    Zone(String, Option<Zone>),
    Stats(String, Option<Stats>),
}

impl DocCache {
    /// Device `id` as the cache holds it, if it holds it in `zone`.
    pub(super) fn device_in(&mut self, id: &str, zone: &str) -> Option<&mut Device> {
        self.devices.get_mut(id).filter(|doc| doc.zone == zone)
    }

    /// At least the encoded size of cached device `id`, if known.
    pub(super) fn device_bytes(&self, id: &str) -> Option<u64> {
        self.device_bytes.get(id).copied()
    }

    pub(super) fn set_device_bytes(&mut self, id: &str, bytes: u64) {
        match self.device_bytes.get_mut(id) {
            Some(b) => *b = bytes,
            None => {
                self.device_bytes.insert(id.to_string(), bytes);
            }
        }
    }

    /// Every document in the cache, encoded: the batch's writes of them.
    pub(super) fn writes(&self) -> Vec<DocWrite> {
        fn encoded<D: Document>(id: &str, doc: &D) -> DocWrite {
            ((D::COLLECTION.cf(), id.as_bytes().to_vec()), doc.encode())
        }
        let mut writes =
            Vec::with_capacity(self.devices.len() + self.zones.len() + self.stats.len());
        writes.extend(self.devices.iter().map(|(id, doc)| encoded(id, doc)));
        writes.extend(self.zones.iter().map(|(id, doc)| encoded(id, doc)));
        writes.extend(self.stats.iter().map(|(id, doc)| encoded(id, doc)));
        writes
    }

    /// Puts back what a document was before a write.
    pub(super) fn restore(&mut self, before: CachedBefore) {
        fn put_back<D>(docs: &mut HashMap<String, D>, id: String, old: Option<D>) {
            match old {
                Some(doc) => docs.insert(id, doc),
                None => docs.remove(&id),
            };
        }
        match before {
            CachedBefore::Device(id, old) => {
                self.device_bytes.remove(&id);
                put_back(&mut self.devices, id, old);
            }
            CachedBefore::DeviceValue(id, undo) => {
                if let Some(doc) = self.devices.get_mut(&id) {
                    undo.restore(doc);
                }
            }
            CachedBefore::Zone(id, old) => put_back(&mut self.zones, id, old),
            CachedBefore::Stats(id, old) => put_back(&mut self.stats, id, old),
        }
    }
}

/// How the applier keeps one kind of document: in the batch's cache
/// (devices, zones and stats), or written to the overlay at once (the rest).
pub(super) trait Stored: Document {
    fn cached(_docs: &DocCache) -> Option<&HashMap<String, Self>> {
        None
    }

    /// The cache's documents of this kind, and how to record what one held
    /// before a write.
    #[allow(clippy::type_complexity)]
    fn cached_mut(
        _docs: &mut DocCache,
    ) -> Option<(
        &mut HashMap<String, Self>,
        fn(String, Option<Self>) -> CachedBefore,
    )> {
        None
    }
}

impl Stored for Device {
    fn cached(docs: &DocCache) -> Option<&HashMap<String, Self>> {
        Some(&docs.devices)
    }

    fn cached_mut(
        docs: &mut DocCache,
    ) -> Option<(
        &mut HashMap<String, Self>,
        fn(String, Option<Self>) -> CachedBefore,
    )> {
        Some((&mut docs.devices, CachedBefore::Device))
    }
}

impl Stored for Zone {
    fn cached(docs: &DocCache) -> Option<&HashMap<String, Self>> {
        Some(&docs.zones)
    }

    fn cached_mut(
        docs: &mut DocCache,
    ) -> Option<(
        &mut HashMap<String, Self>,
        fn(String, Option<Self>) -> CachedBefore,
    )> {
        Some((&mut docs.zones, CachedBefore::Zone))
    }
}

impl Stored for Fellow {}
impl Stored for DbServer {}
impl Stored for XmlConfig {}
impl Stored for Stats {
    fn cached(docs: &DocCache) -> Option<&HashMap<String, Self>> {
        Some(&docs.stats)
    }

    fn cached_mut(
        docs: &mut DocCache,
    ) -> Option<(
        &mut HashMap<String, Self>,
        fn(String, Option<Self>) -> CachedBefore,
    )> {
        Some((&mut docs.stats, CachedBefore::Stats))
    }
}

/// The content error of a write that would leave document `id` of
/// `collection` at `bytes`, over `max`.
pub(super) fn document_too_large<T>(
    collection: Collection,
    id: &str,
    bytes: u64,
    max: u64,
) -> Result<T, ApplyError> {
    content(format!(
        "document {}/{id} would be {bytes} bytes; the limit is {max} bytes (document_bytes_max)",
        collection.name()
    ))
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// A document as the batch left it. One that does not decode was
    /// written that way by every replica: a content error.
    pub(super) fn get_doc<D: Stored>(&self, id: &str) -> Result<Option<D>, ApplyError> {
        if let Some(doc) = D::cached(&self.docs).and_then(|docs| docs.get(id)) {
            return Ok(Some(doc.clone()));
        }
        if let Some(doc) = self.carried_doc::<D>(id) {
            return Ok(Some(doc.clone()));
        }
        match self.get(D::COLLECTION.cf(), keys::document_key(id))? {
            None => Ok(None),
            Some(bytes) => match D::decode(id, &bytes) {
                Ok(doc) => Ok(Some(doc)),
                Err(e) => content(e.to_string()),
            },
        }
    }

    /// Whether a document exists as the batch left it, without decoding
    /// (or copying) it when the batch holds it decoded.
    pub(super) fn has_doc<D: Stored>(&self, id: &str) -> Result<bool, ApplyError> {
        if D::cached(&self.docs).is_some_and(|docs| docs.contains_key(id))
            || self.carried_doc::<D>(id).is_some()
        {
            return Ok(true);
        }
        Ok(self
            .get(D::COLLECTION.cf(), keys::document_key(id))?
            .is_some())
    }

    /// Document `id` as the batches before this one left it, if they
    /// left it decoded and this batch has not written it.
    fn carried_doc<D: Stored>(&self, id: &str) -> Option<&D> {
        let doc = D::cached(&self.carried.docs)?.get(id)?;
        let written = self
            .overlay
            .contains(D::COLLECTION.cf(), keys::document_key(id));
        (!written).then_some(doc)
    }

    /// Writes the documents the batch holds decoded into its writes, and
    /// hands back what the next batch starts from: the documents carried
    /// into this one, less those it wrote, and the ones it holds. To be
    /// kept only once the writes are.
    pub(super) fn write_docs(&mut self) -> CarriedDocs {
        let docs = std::mem::take(&mut self.docs);
        let writes = docs.writes();
        let mut carried = std::mem::take(&mut self.carried);
        for (cf, key, _) in self.overlay.iter() {
            carried.forget(cf, key);
        }
        let bytes = writes.iter().map(|(_, b)| b.len() as u64).sum();
        for ((cf, key), bytes) in writes {
            self.overlay.insert(cf, key, Some(bytes));
        }
        carried.take_in(docs, bytes);
        // Read after the batch's last write of them, if read at all (a
        // write or a rollback forgets them).
        carried.stats_term = self.stats_term;
        carried.quotas = self.quotas.get();
        carried.first_alarm = self.first_alarm.get();
        carried
    }

    /// Writes a document, unless it is larger than the event may leave a
    /// document: then the event is rejected.
    pub(super) fn put_doc<D: Stored>(&mut self, id: &str, doc: D) -> Result<(), ApplyError> {
        let max = self.document_bytes_max;
        let too_large = |bytes: u64| document_too_large(D::COLLECTION, id, bytes, max);
        let journal = self.journal;
        if let Some((docs, before)) = D::cached_mut(&mut self.docs) {
            let bytes = bounds::json_encoded_bytes(&doc);
            if bytes > max {
                return too_large(bytes);
            }
            let old = docs.insert(id.to_string(), doc);
            if journal {
                self.undo.docs.push(before(id.to_string(), old));
            }
            if D::COLLECTION == Collection::Devices {
                self.docs.set_device_bytes(id, bytes);
            }
            return Ok(());
        }
        let bytes = doc.encode();
        if bytes.len() as u64 > max {
            return too_large(bytes.len() as u64);
        }
        self.put(D::COLLECTION.cf(), keys::document_key(id).to_vec(), bytes);
        Ok(())
    }

    pub(super) fn apply_fellow(
        &mut self,
        at_ms: u64,
        f: &FellowState,
    ) -> Result<Outcome, ApplyError> {
        let id = f.node_id.to_string();
        let mut doc = self
            .get_doc::<Fellow>(&id)?
            .unwrap_or_else(|| Fellow::new(f.node_id));
        doc.id = f.node_id;
        doc.host = Some(f.host.clone());
        doc.addr = Some(f.addr.clone());
        doc.active = Some(f.active);
        doc.state = Some(f.role);
        doc.weight = Some(f.weight);
        if f.active {
            doc.last_active_ms = Some(at_ms);
        }
        doc.stats = Some(format!("fellow/{id}"));
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }

    /// Records the address clients reach member `node_id` at, in its
    /// fellows document (the leader's fellow updates keep it).
    pub(super) fn apply_client_address(
        &mut self,
        node_id: u64,
        addr: &str,
    ) -> Result<Outcome, ApplyError> {
        let id = node_id.to_string();
        let mut doc = self
            .get_doc::<Fellow>(&id)?
            .unwrap_or_else(|| Fellow::new(node_id));
        doc.client_addr = Some(addr.to_string());
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_db_server(
        &mut self,
        at_ms: u64,
        host: &str,
        port: u16,
        kind: &str,
        problem: Option<&String>,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{host}:{port}:{kind}");
        let existing = self.get_doc::<DbServer>(&id)?;
        if existing.is_none() && problem.is_some() {
            // A mirror's late report about a server an operator removed
            // must not bring it back.
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "database server {id}"
            ))));
        }
        let mut doc = existing.unwrap_or_else(|| DbServer {
            id: id.clone(),
            host: host.to_string(),
            port,
            kind: kind.to_string(),
            state: DbServerState::Ok,
            reason: None,
            first_seen_ms: at_ms,
            updated_ms: at_ms,
            other: OtherFields::new(),
        });
        match problem {
            None => {
                doc.state = DbServerState::Ok;
                doc.reason = None;
            }
            Some(reason) => {
                doc.state = DbServerState::Problematic;
                doc.reason = Some(reason.clone());
            }
        }
        doc.updated_ms = at_ms;
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }

    /// `utopia db remove`: the server's document is deleted.
    pub(super) fn apply_db_server_removed(
        &mut self,
        host: &str,
        port: u16,
        kind: &str,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{host}:{port}:{kind}");
        if self.get_doc::<DbServer>(&id)?.is_none() {
            return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                "database server {id}"
            ))));
        }
        self.delete(Cf::DbServers, keys::document_key(&id).to_vec());
        Ok(Outcome::Done)
    }

    /// A proposed configuration version. A proposal that wins over another
    /// one for the same name and version replaces it whole.
    pub(super) fn apply_config_proposed(
        &mut self,
        at_ms: u64,
        c: &ConfigVersion,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{}@{}", c.name, c.version);
        if let Some(existing) = self.get_doc::<XmlConfig>(&id)? {
            // Competing proposals for one name and version: the higher
            // weight wins, then the smaller hash, so every replica agrees.
            let wins = (c.weight, std::cmp::Reverse(c.hash.as_str()))
                > (existing.weight, std::cmp::Reverse(existing.hash.as_str()));
            if existing.state != ConfigState::Proposed || !wins {
                return Ok(Outcome::Done);
            }
        }
        let doc = XmlConfig {
            id: id.clone(),
            name: c.name.clone(),
            kind: c.kind.clone(),
            version: c.version,
            hash: c.hash.clone(),
            xml: c.xml.clone(),
            proposer: c.proposer,
            weight: c.weight,
            state: ConfigState::Proposed,
            proposed_ms: at_ms,
            decided_ms: None,
            reason: None,
            decide_after_ms: None,
            votes: Vec::new(),
            candidates: Vec::new(),
            rules: None,
            failing: Vec::new(),
            file: None,
            other: OtherFields::new(),
        };
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }

    pub(super) fn apply_config_decision(
        &mut self,
        at_ms: u64,
        name: &str,
        version: u64,
        hash: &str,
        rejected: Option<&String>,
    ) -> Result<Outcome, ApplyError> {
        let id = format!("{name}@{version}");
        let Some(mut doc) = self.get_doc::<XmlConfig>(&id)? else {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "no configuration {id} was proposed"
            ))));
        };
        if doc.hash != hash {
            return Ok(Outcome::Rejected(Rejection::Invalid(format!(
                "configuration {id} has another hash"
            ))));
        }
        match rejected {
            Some(reason) => {
                doc.state = ConfigState::Rejected;
                doc.reason = Some(reason.clone());
            }
            None => {
                // Earlier accepted versions of the same name are superseded.
                self.supersede_older(at_ms, name, version)?;
                doc.state = ConfigState::Accepted;
            }
        }
        doc.decided_ms = Some(at_ms);
        self.put_doc(&id, doc)?;
        Ok(Outcome::Done)
    }
}

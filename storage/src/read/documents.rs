//! Reads of documents: one by id (a zone served with its devices from
//! the zone index), pages of a collection or of an index within a byte
//! bound, and typed documents for the server's own use.

use super::{Reader, RESPONSE_ITEM_OVERHEAD_BYTES};
use crate::apply::StateRead;
use crate::documents::{ConfigState, Document, XmlConfig, Zone, ZoneServed};
use crate::keys::{self, Cf, Collection, DeviceIndex};
use crate::StoreError;

/// One page of documents.
#[derive(Debug, Clone, Default)]
pub struct DocPage {
    /// (id, JSON text).
    pub documents: Vec<(String, String)>,
    /// Resume after this token; `None` at the end.
    pub next_page_token: Option<String>,
}

/// What a page of documents may still hold.
struct PageBudget {
    bytes: usize,
    bytes_max: usize,
    limit: usize,
}

impl PageBudget {
    /// Whether a document of `size` bytes (id and JSON) still fits in
    /// `page`, counting it in if so; the first always fits, so that paging
    /// makes progress.
    fn fits(&mut self, page: &DocPage, size: usize) -> bool {
        let size = size + RESPONSE_ITEM_OVERHEAD_BYTES;
        if page.documents.len() >= self.limit
            || (!page.documents.is_empty() && self.bytes.saturating_add(size) > self.bytes_max)
        {
            return false;
        }
        self.bytes += size;
        true
    }

    fn left(&self) -> usize {
        self.bytes_max.saturating_sub(self.bytes)
    }
}

impl DocPage {
    /// Ends the page before a document that did not fit: the next page
    /// starts after the last one in this page.
    fn end_before_next(&mut self) {
        self.next_page_token = self.documents.last().map(|(id, _)| id.clone());
    }
}

impl Reader {
    /// A document as served: its stored JSON, and for a zone the ids of
    /// its devices from the zone index (the stored zone document keeps
    /// only their count), at most `bytes_max` bytes of them, with
    /// `devices_more` saying whether ids were left out.
    pub fn get_document(
        &self,
        collection: Collection,
        id: &str,
        bytes_max: usize,
    ) -> Result<Option<String>, StoreError> {
        let cf = collection.cf();
        match self.db.get(cf, id.as_bytes())? {
            None => Ok(None),
            Some(b) => self.served(collection, id, b, bytes_max).map(Some),
        }
    }

    /// A document, decoded (a zone without its devices).
    pub fn document<D: Document>(&self, id: &str) -> Result<Option<D>, StoreError> {
        let cf = D::COLLECTION.cf();
        match self.db.get(cf, keys::document_key(id))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(D::decode(id, &bytes)?)),
        }
    }

    /// The first `max` documents of a kind, in id order, each decoded: one
    /// that does not decode is its error, and the others are still read.
    pub fn documents<D: Document>(
        &self,
        max: usize,
    ) -> Result<Vec<Result<D, StoreError>>, StoreError> {
        let cf = D::COLLECTION.cf();
        let mut out = Vec::new();
        for item in self.db.scan(cf, &[], None) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item?;
            let id = keys::parse_document_key(cf, &k)?;
            out.push(D::decode(id, &v).map_err(StoreError::from));
        }
        Ok(out)
    }

    /// The accepted version of configuration `name` with the highest
    /// version number (an older accepted one is superseded when a newer is
    /// accepted, so normally there is one), decoded. Reads the versions of
    /// that name one at a time, never more than one in memory.
    pub fn accepted_config(&self, name: &str) -> Result<Option<XmlConfig>, StoreError> {
        let cf = Collection::XmlConfigs.cf();
        // `@` cannot occur in a name: the prefix holds only `name`'s versions.
        let prefix = format!("{name}@");
        let end = keys::prefix_end(prefix.as_bytes());
        let mut best: Option<XmlConfig> = None;
        for item in self.db.scan(cf, prefix.as_bytes(), end.as_deref()) {
            let (k, v) = item?;
            let id = keys::parse_document_key(cf, &k)?;
            let doc = XmlConfig::decode(id, &v)?;
            if doc.state == ConfigState::Accepted
                && best.as_ref().is_none_or(|b| doc.version > b.version)
            {
                best = Some(doc);
            }
        }
        Ok(best)
    }

    /// The stored bytes of a document, as served (see
    /// [`Reader::get_document`]).
    pub(super) fn served(
        &self,
        collection: Collection,
        id: &str,
        stored: Vec<u8>,
        bytes_max: usize,
    ) -> Result<String, StoreError> {
        let cf = collection.cf();
        let json = String::from_utf8(stored)
            .map_err(|_| StoreError::corrupt(cf, id.as_bytes(), "not UTF-8"))?;
        if collection != Collection::Zones {
            return Ok(json);
        }
        let zone = Zone::decode(id, json.as_bytes())?;
        // The two fields' names and punctuation come out of it too.
        let framing = r#","devices":[],"devices_more":false"#.len();
        let budget = bytes_max.saturating_sub(json.len() + framing);
        let (devices, more) = self.zone_devices(id, budget)?;
        Ok(ZoneServed::new(zone, devices, more).to_json())
    }

    /// The ids of the devices in `zone`, in order, until the next one
    /// would pass `bytes_max`; and whether any were left out.
    fn zone_devices(
        &self,
        zone: &str,
        bytes_max: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let prefix = keys::device_index_prefix(DeviceIndex::Zone, zone);
        let end = keys::prefix_end(&prefix);
        let mut it = self.db.raw_range(Cf::DeviceIndex, &prefix, end.as_deref());
        let mut ids = Vec::new();
        let mut bytes = 0usize;
        while let Some(k) = it.key() {
            let (_, _, id) = keys::parse_device_index_key(k)?;
            // Quotes and a comma around each id in the JSON list.
            let size = id.len() + 3;
            if bytes + size > bytes_max {
                return Ok((ids, true));
            }
            bytes += size;
            ids.push(id.to_string());
            it.next();
        }
        it.status().map_err(StoreError::from)?;
        Ok((ids, false))
    }

    /// Lists documents in id order, optionally only devices matching an
    /// index, starting after `page_token`: at most `limit` of them and,
    /// past the first, at most `bytes_max` bytes of ids and JSON.
    pub fn list_documents(
        &self,
        collection: Collection,
        filter: Option<(DeviceIndex, &str)>,
        limit: usize,
        bytes_max: usize,
        page_token: Option<&str>,
    ) -> Result<DocPage, StoreError> {
        let limit = limit.max(1);
        let after = |id: &str| {
            let mut k = id.as_bytes().to_vec();
            k.push(0);
            k
        };
        let mut page = DocPage::default();
        let mut budget = PageBudget {
            bytes: 0,
            bytes_max,
            limit,
        };
        match filter {
            None => {
                let cf = collection.cf();
                let start = page_token.map(after).unwrap_or_default();
                let mut it = self.db.raw_range(cf, &start, None);
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    if !budget.fits(&page, k.len() + v.len()) {
                        page.end_before_next();
                        break;
                    }
                    let id = keys::parse_document_key(cf, k)?.to_string();
                    let json = self.served(collection, &id, v.to_vec(), budget.left())?;
                    // A zone's device list came out of what was left.
                    budget.bytes += json.len().saturating_sub(v.len());
                    page.documents.push((id, json));
                    it.next();
                }
                it.status().map_err(StoreError::from)?;
            }
            Some((index, value)) => {
                let prefix = keys::device_index_prefix(index, value);
                let mut start = prefix.clone();
                if let Some(t) = page_token {
                    start.extend_from_slice(&after(t));
                }
                let end = keys::prefix_end(&prefix);
                let mut it = self.db.raw_range(Cf::DeviceIndex, &start, end.as_deref());
                while let Some(k) = it.key() {
                    let id = keys::parse_device_index_key(k)?.2.to_string();
                    let Some(json) = self.db.get(Cf::Devices, id.as_bytes())? else {
                        return Err(StoreError::corrupt(
                            Cf::DeviceIndex,
                            k,
                            "indexes a missing device",
                        ));
                    };
                    if !budget.fits(&page, id.len() + json.len()) {
                        page.end_before_next();
                        break;
                    }
                    let json = self.served(Collection::Devices, &id, json, 0)?;
                    page.documents.push((id, json));
                    it.next();
                }
                it.status().map_err(StoreError::from)?;
            }
        }
        Ok(page)
    }
}

//! Reads for the MongoDB mirror: this node's mirror feed (which documents
//! and keys each applied batch wrote, by log index; see
//! [`keys::mirror_feed`]), the applied log index, and the current value of
//! what the feed names, one by one or a collection in pages (for a mirror
//! that must copy whole).

use utopia_raft::event::KeyValue;

use super::Reader;
use crate::apply::StateRead;
use crate::codec;
use crate::keys::{self, meta, mirror_feed, mirror_feed::Target, Cf, Collection};
use crate::StoreError;

/// Bytes of device ids a zone is mirrored with (the zone's document as
/// served, [`Reader::get_document`]); more are left out (`devices_more`).
pub const MIRROR_ZONE_DEVICES_BYTES_MAX: usize = 1 << 20;

/// The current value of a feed target.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorValue {
    /// A document's JSON as served (a zone with its devices).
    Document(Vec<u8>),
    Kv(KeyValue),
}

/// Feed entries after a checkpoint: whole log indexes only.
#[derive(Debug, Clone, Default)]
pub struct FeedRead {
    /// (target, id) in feed order; the same one may come more than once.
    pub changes: Vec<(Target, Vec<u8>)>,
    /// Every write up to this log index is in `changes` (or was already
    /// behind the checkpoint).
    pub through_index: u64,
    /// The proposal time of the first entry read (0: none read).
    pub first_at_ms: u64,
}

impl Reader {
    /// The last log index applied on this node (`None`: nothing yet).
    pub fn applied_index(&self) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.db.get(Cf::SmMeta, meta::APPLIED)? else {
            return Ok(None);
        };
        let applied: Option<utopia_raft::openraft_api::LogIdOf<utopia_raft::TypeConfig>> =
            codec::decode(Cf::SmMeta, meta::APPLIED, &bytes)?;
        Ok(applied.map(|l| l.index()))
    }

    /// The lowest log index from which this node's mirror feed holds every
    /// write: a reader whose checkpoint is further behind must copy whole
    /// ([`mirror_feed::START_OFF`] on a member that keeps no feed).
    pub fn mirror_feed_start(&self) -> Result<u64, StoreError> {
        crate::state_machine::read_mirror_feed_start(&self.db)
    }

    /// The feed's entries of log indexes `after + 1 ..= upto`, whole
    /// indexes only: reading stops at the first index boundary once
    /// `entries_max` entries are read (one index may hold more: an applied
    /// batch's writes are read together).
    pub fn mirror_feed(
        &self,
        after: u64,
        upto: u64,
        entries_max: usize,
    ) -> Result<FeedRead, StoreError> {
        let mut out = FeedRead {
            through_index: upto,
            ..FeedRead::default()
        };
        if upto <= after {
            out.through_index = after;
            return Ok(out);
        }
        let start = mirror_feed::index_start(after + 1);
        let end = mirror_feed::index_start(upto.saturating_add(1));
        let mut current = None;
        for item in self.db.scan(Cf::MirrorFeed, &start, Some(&end)) {
            let (k, v) = item?;
            let (index, target, id) = mirror_feed::parse_change_key(&k)?;
            if current != Some(index) {
                if out.changes.len() >= entries_max {
                    if let Some(done) = current {
                        out.through_index = done;
                    }
                    break;
                }
                current = Some(index);
            }
            if out.changes.is_empty() {
                out.first_at_ms = v
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::corrupt(Cf::MirrorFeed, &k, "not a u64 time"))?;
            }
            out.changes.push((target, id.to_vec()));
        }
        Ok(out)
    }

    /// What `target` holds under `id` now (`None`: nothing, deleted).
    pub fn mirror_value(
        &self,
        target: Target,
        id: &[u8],
    ) -> Result<Option<MirrorValue>, StoreError> {
        Ok(match target {
            Target::Document(c) => match self.db.get(c.cf(), id)? {
                None => None,
                Some(stored) => Some(self.mirrored_document(c, id, stored)?),
            },
            Target::Kv => match self.db.get(Cf::Kv, id)? {
                None => None,
                Some(bytes) => Some(MirrorValue::Kv(codec::decode(Cf::Kv, id, &bytes)?)),
            },
        })
    }

    fn mirrored_document(
        &self,
        collection: Collection,
        id: &[u8],
        stored: Vec<u8>,
    ) -> Result<MirrorValue, StoreError> {
        if collection != Collection::Zones {
            return Ok(MirrorValue::Document(stored));
        }
        let id = keys::parse_document_key(collection.cf(), id)?;
        let served = self.served(collection, id, stored, MIRROR_ZONE_DEVICES_BYTES_MAX)?;
        Ok(MirrorValue::Document(served.into_bytes()))
    }

    /// Up to `limit` entries of `target` after id `after` (`None`: from the
    /// first), in id order.
    pub fn mirror_page(
        &self,
        target: Target,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, MirrorValue)>, StoreError> {
        let cf = match target {
            Target::Document(c) => c.cf(),
            Target::Kv => Cf::Kv,
        };
        let start = match after {
            // The smallest key after `after`.
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for item in self.db.scan(cf, &start, None) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let value = match target {
                Target::Document(c) => {
                    keys::parse_document_key(c.cf(), &k)?;
                    self.mirrored_document(c, &k, v)?
                }
                Target::Kv => MirrorValue::Kv(codec::decode(Cf::Kv, &k, &v)?),
            };
            out.push((k, value));
        }
        Ok(out)
    }
}

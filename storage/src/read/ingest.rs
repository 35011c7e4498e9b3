//! Reads of the MQTT ingest state and device commands, for the bridges
//! and the command publisher.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Reader;
use crate::apply::StateRead;
use crate::apply::{CommandRecord, IngestOwners, IngestTotals};
use crate::codec;
use crate::keys::{self, Cf};
use crate::StoreError;

/// The part of a dedupe record reads need.
#[derive(Deserialize)]
struct DedupeSeen {
    committed_ms: u64,
}

impl Reader {
    /// The members that own topics now.
    pub fn ingest_owners(&self) -> Result<IngestOwners, StoreError> {
        match self.db.get(Cf::Ingest, keys::ingest::OWNERS)? {
            Some(b) => codec::decode(Cf::Ingest, keys::ingest::OWNERS, &b),
            None => Ok(IngestOwners::default()),
        }
    }

    /// Cluster-wide ingest counts.
    pub fn ingest_totals(&self) -> Result<IngestTotals, StoreError> {
        match self.db.get(Cf::Ingest, keys::ingest::TOTALS)? {
            Some(b) => codec::decode(Cf::Ingest, keys::ingest::TOTALS, &b),
            None => Ok(IngestTotals::default()),
        }
    }

    /// The weight each member asked for in topic ownership.
    pub fn ingest_weights(&self) -> Result<BTreeMap<u64, u32>, StoreError> {
        let (start, end) = keys::tag_bounds(keys::ingest::WEIGHT_PREFIX);
        let mut out = BTreeMap::new();
        for item in self.db.scan(Cf::Ingest, &start, Some(&end)) {
            let (k, v) = item?;
            let node = keys::ingest::parse_weight_key(&k)?;
            out.insert(node, codec::decode(Cf::Ingest, &k, &v)?);
        }
        Ok(out)
    }

    /// Whether a message with this digest was committed at or after
    /// `since_ms` (and is still remembered).
    pub fn ingest_committed_since(&self, digest: &[u8], since_ms: u64) -> Result<bool, StoreError> {
        let Ok(digest) = <&keys::ingest::Digest>::try_from(digest) else {
            return Ok(false);
        };
        let key = keys::ingest::dedupe_key(digest);
        Ok(match self.db.get(Cf::Ingest, &key)? {
            Some(b) => {
                let rec: DedupeSeen = codec::decode(Cf::Ingest, &key, &b)?;
                rec.committed_ms >= since_ms
            }
            None => false,
        })
    }

    /// A command by id.
    pub fn command(&self, id: u64) -> Result<Option<CommandRecord>, StoreError> {
        let key = keys::commands::record_key(id);
        match self.db.get(Cf::Commands, &key)? {
            Some(b) => Ok(Some(codec::decode(Cf::Commands, &key, &b)?)),
            None => Ok(None),
        }
    }

    /// Pending commands in id order, at most `max`.
    pub fn pending_commands(&self, max: usize) -> Result<Vec<CommandRecord>, StoreError> {
        let (start, end) = keys::tag_bounds(keys::commands::PENDING_PREFIX);
        let mut out = Vec::new();
        for item in self.db.scan(Cf::Commands, &start, Some(&end)) {
            if out.len() >= max {
                break;
            }
            let (k, _) = item?;
            let id = keys::commands::parse_pending_key(&k)?;
            if let Some(c) = self.command(id)? {
                out.push(c);
            }
        }
        Ok(out)
    }
}

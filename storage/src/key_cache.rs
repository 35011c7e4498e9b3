//! What the applier knows about current keys without reading them.
//!
//! A put carries its key's `create_revision`, `version` and lease forward
//! and records the `mod_revision` it supersedes, so applying one used to
//! begin with a point read of the key: a search of every memtable and, for
//! a key written before the last flush, of table files. The state machine
//! keeps those four numbers of the keys its batches wrote, in memory and
//! bounded, and a put that does not ask for the previous pair (`prev_kv`)
//! reads them here instead.
//!
//! The cache only ever holds what the key-value column family holds: it is
//! filled from the key changes of batches already written, a deletion
//! removes its key, and installing a snapshot empties it. A key it does
//! not hold is read from the store as before; nothing about a key's
//! absence is kept.
//!
//! Its bound is in bytes, split between two generations: new entries go to
//! the young one, and when that reaches half the bound the old one is
//! dropped and the young one takes its place. A key written again lands in
//! the young generation, so the keys being written stay, at the cost of
//! one hash lookup per generation.

use std::cell::Cell;
use std::collections::HashMap;

use utopia_raft::event::KeyValue;

use crate::apply::{FeedChange, ScanIter, StateRead};
use crate::keys::Cf;
use crate::{Db, StoreError};

/// A current key's revisions and lease: what a put needs of the pair it
/// replaces, when it does not return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFacts {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl KeyFacts {
    pub fn of(kv: &KeyValue) -> Self {
        Self {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// Bytes one entry is counted for beyond its key: the map's slot (the
/// key's pointer and length, the facts, its control byte, the free slots a
/// map keeps) and the key's own allocation.
const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// The cache's memory bound when none is given: see
/// [`crate::OpenOptions::key_cache_bytes_max`].
pub const KEY_CACHE_BYTES_MAX_DEFAULT: u64 = 16 << 20;

/// The current keys' facts, as of the last batch written; see the module
/// documentation.
#[derive(Debug)]
pub(crate) struct KeyCache {
    young: HashMap<Box<[u8]>, KeyFacts>,
    old: HashMap<Box<[u8]>, KeyFacts>,
    young_bytes: u64,
    old_bytes: u64,
    generation_bytes_max: u64,
}

impl KeyCache {
    /// A cache of at most `bytes_max` bytes (0: none is kept).
    pub(crate) fn new(bytes_max: u64) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            young_bytes: 0,
            old_bytes: 0,
            generation_bytes_max: bytes_max / 2,
        }
    }

    /// `key`'s facts, if the cache holds them.
    pub(crate) fn get(&self, key: &[u8]) -> Option<KeyFacts> {
        self.young.get(key).or_else(|| self.old.get(key)).copied()
    }

    /// Takes in the key changes of a batch that was just written, in
    /// revision order.
    pub(crate) fn note(&mut self, changes: &[FeedChange]) {
        if self.generation_bytes_max == 0 {
            return;
        }
        for c in changes {
            let key = &c.change.kv.key[..];
            let bytes = key.len() as u64 + ENTRY_OVERHEAD_BYTES;
            if c.change.deleted {
                if self.young.remove(key).is_some() {
                    self.young_bytes -= bytes;
                }
                if self.old.remove(key).is_some() {
                    self.old_bytes -= bytes;
                }
                continue;
            }
            let facts = KeyFacts::of(&c.change.kv);
            if let Some(held) = self.young.get_mut(key) {
                *held = facts;
                continue;
            }
            if self.young_bytes + bytes > self.generation_bytes_max {
                self.old = std::mem::take(&mut self.young);
                self.old_bytes = std::mem::take(&mut self.young_bytes);
            }
            // The old generation may hold an older state: the young one is
            // read first, and replaces it whole when it is full.
            self.young.insert(key.into(), facts);
            self.young_bytes += bytes;
        }
    }

    /// Bytes the entries held are counted at.
    pub(crate) fn bytes(&self) -> u64 {
        self.young_bytes + self.old_bytes
    }

    /// Forgets everything (the key-value state was replaced).
    pub(crate) fn clear(&mut self) {
        self.young = HashMap::new();
        self.old = HashMap::new();
        self.young_bytes = 0;
        self.old_bytes = 0;
    }

    /// Entries held, both generations (a key in both counts twice).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// The database as the applier reads it: the key cache in front of the
/// current keys, with its lookups counted for the metrics.
pub(crate) struct CachedState<'a> {
    db: &'a Db,
    keys: &'a KeyCache,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl<'a> CachedState<'a> {
    pub(crate) fn new(db: &'a Db, keys: &'a KeyCache) -> Self {
        Self {
            db,
            keys,
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    /// Lookups so far that found their key, and those that did not.
    pub(crate) fn lookups(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }
}

impl StateRead for CachedState<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(cf, key)
    }

    fn scan<'a>(&'a self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'a> {
        self.db.scan(cf, start, end)
    }

    fn key_facts(&self, key: &[u8]) -> Option<KeyFacts> {
        let facts = self.keys.get(key);
        let counter = if facts.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.set(counter.get() + 1);
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ChangeRecord;
    use utopia_raft::event::Bytes;

    fn put(key: &str, rev: i64, version: i64) -> FeedChange {
        FeedChange {
            revision: rev,
            sub: 0,
            change: ChangeRecord {
                deleted: false,
                kv: KeyValue {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: Bytes::from_static(b"v"),
                    create_revision: 1,
                    mod_revision: rev,
                    version,
                    lease: 0,
                },
                prev_revision: None,
            },
        }
    }

    fn del(key: &str, rev: i64) -> FeedChange {
        FeedChange {
            revision: rev,
            sub: 0,
            change: ChangeRecord {
                deleted: true,
                kv: KeyValue {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    mod_revision: rev,
                    ..Default::default()
                },
                prev_revision: Some(rev - 1),
            },
        }
    }

    #[test]
    fn holds_the_newest_facts_and_forgets_deleted_keys() {
        let mut cache = KeyCache::new(1 << 20);
        cache.note(&[put("a", 1, 1), put("b", 2, 1), put("a", 3, 2)]);
        assert_eq!(
            cache.get(b"a").map(|f| (f.mod_revision, f.version)),
            Some((3, 2))
        );
        cache.note(&[del("a", 4)]);
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.bytes(), 1 + ENTRY_OVERHEAD_BYTES, "b alone");
        assert_eq!(cache.get(b"b").map(|f| f.mod_revision), Some(2));
        cache.clear();
        assert_eq!(cache.get(b"b"), None);
    }

    /// Past half its bound the young generation becomes the old one, and
    /// what was old is dropped: the cache never holds more than its bound,
    /// and a key written again is found in its newest state.
    #[test]
    fn stays_within_its_bound_and_keeps_the_keys_written_last() {
        let per_entry = 2 + ENTRY_OVERHEAD_BYTES;
        let mut cache = KeyCache::new(20 * per_entry);
        for i in 0..100i64 {
            cache.note(&[put(&format!("{i:02}"), i + 1, 1)]);
            assert!(cache.len() <= 20, "{} entries", cache.len());
            assert!(cache.bytes() <= 20 * per_entry, "{} bytes", cache.bytes());
        }
        assert_eq!(cache.get(b"99").map(|f| f.mod_revision), Some(100));
        assert_eq!(cache.get(b"00"), None);
        // "95" is old now; written again it is found in its new state even
        // after the generation holding the old one is dropped.
        cache.note(&[put("95", 101, 2)]);
        for i in 0..10i64 {
            cache.note(&[put(&format!("x{i}"), 102 + i, 1)]);
        }
        assert_eq!(
            cache.get(b"95").map(|f| (f.mod_revision, f.version)),
            Some((101, 2))
        );
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut cache = KeyCache::new(0);
        cache.note(&[put("a", 1, 1)]);
        assert_eq!(cache.get(b"a"), None);
    }
}

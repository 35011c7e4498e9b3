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
//! Its bound is in bytes, and nothing is dropped while there is room: a
//! set of keys that fits is held whole however its writes are spread. The
//! entries are in two generations: a key written goes to the young one
//! (moving out of the old one if it was there), so the old one holds the
//! keys not written since the last eviction. When a new key finds the
//! cache full, the old generation goes, if the young one holds at least
//! half the bound, and the young one becomes the old; otherwise half of
//! the old generation goes, the first half in the map's order (by the
//! keys' hashes). Either way about half the bound or more stays, and the
//! keys written last are kept.

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

/// Bytes an entry for `key` is counted at.
fn entry_bytes(key: &[u8]) -> u64 {
    key.len() as u64 + ENTRY_OVERHEAD_BYTES
}

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
    bytes_max: u64,
}

impl KeyCache {
    /// A cache of at most `bytes_max` bytes (0: none is kept).
    pub(crate) fn new(bytes_max: u64) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            young_bytes: 0,
            old_bytes: 0,
            bytes_max,
        }
    }

    /// `key`'s facts, if the cache holds them.
    pub(crate) fn get(&self, key: &[u8]) -> Option<KeyFacts> {
        self.young.get(key).or_else(|| self.old.get(key)).copied()
    }

    /// Takes in the key changes of a batch that was just written, in
    /// revision order.
    pub(crate) fn note(&mut self, changes: &[FeedChange]) {
        if self.bytes_max == 0 {
            return;
        }
        for c in changes {
            let key = &c.change.kv.key[..];
            let bytes = entry_bytes(key);
            if c.change.deleted {
                if self.young.remove(key).is_some() {
                    self.young_bytes -= bytes;
                }
                self.take_old(key, bytes);
                continue;
            }
            let facts = KeyFacts::of(&c.change.kv);
            if let Some(held) = self.young.get_mut(key) {
                *held = facts;
                continue;
            }
            if !self.take_old(key, bytes) {
                if bytes > self.bytes_max {
                    continue;
                }
                self.make_room(bytes);
            }
            self.young.insert(key.into(), facts);
            self.young_bytes += bytes;
        }
    }

    /// Evicts until an entry of `bytes` (at most the bound) fits.
    fn make_room(&mut self, bytes: u64) {
        while self.young_bytes + self.old_bytes + bytes > self.bytes_max {
            if self.old.is_empty() || self.young_bytes >= self.bytes_max / 2 {
                self.old = std::mem::take(&mut self.young);
                self.old_bytes = std::mem::take(&mut self.young_bytes);
            } else {
                // Half of it, the first half in the map's order: by the
                // keys' hashes, so no particular keys.
                let keep = self.old.len() / 2;
                let mut seen = 0;
                self.old.retain(|_, _| {
                    seen += 1;
                    seen <= keep
                });
                self.old_bytes = self.old.keys().map(|k| entry_bytes(k)).sum();
                self.old.shrink_to_fit();
            }
        }
    }

    /// Drops `key` (counted at `bytes`) from the old generation; whether it
    /// was there. A map keeps its table as entries leave it: the old
    /// generation's is made smaller once it is three quarters empty.
    fn take_old(&mut self, key: &[u8], bytes: u64) -> bool {
        if self.old.remove(key).is_none() {
            return false;
        }
        self.old_bytes -= bytes;
        if self.old.capacity() > 64 && self.old.len() * 4 < self.old.capacity() {
            self.old.shrink_to_fit();
        }
        true
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

    /// Entries held, both generations (a key is in one of them).
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

    /// A full cache evicts: it never holds more than its bound, the keys
    /// written last stay, and a key written again is found in its newest
    /// state.
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

    /// Keys that fit are all held, however often and in whatever order
    /// they are written: nothing is evicted while there is room.
    #[test]
    fn a_set_of_keys_that_fits_is_held_whole() {
        let per_entry = 3 + ENTRY_OVERHEAD_BYTES;
        let mut cache = KeyCache::new(150 * per_entry);
        let mut last = std::collections::BTreeMap::new();
        // 100 keys in a pseudo-random order (a linear congruential
        // sequence), so that some go unwritten for several hundred writes.
        let mut x: u64 = 1;
        for rev in 1..=3000i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) % 100;
            cache.note(&[put(&format!("{k:03}"), rev, 1)]);
            last.insert(k, rev);
        }
        assert_eq!(last.len(), 100);
        assert_eq!(cache.len(), 100);
        assert_eq!(cache.bytes(), 100 * per_entry);
        for (k, rev) in last {
            assert_eq!(
                cache
                    .get(format!("{k:03}").as_bytes())
                    .map(|f| f.mod_revision),
                Some(rev),
                "key {k:03}"
            );
        }
    }

    /// Past its bound the cache keeps about half of it or more, the newest
    /// keys among them, whatever the order of the writes.
    #[test]
    fn a_larger_set_keeps_about_half_the_bound() {
        let per_entry = 4 + ENTRY_OVERHEAD_BYTES;
        let mut cache = KeyCache::new(100 * per_entry);
        let mut rev = 0;
        for round in 0..10i64 {
            for i in 0..1000i64 {
                rev += 1;
                let k = (i * 7 + round * 13) % 1000;
                cache.note(&[put(&format!("{k:04}"), rev, round + 1)]);
                assert!(cache.bytes() <= 100 * per_entry, "{} bytes", cache.bytes());
                if rev > 100 {
                    assert!(cache.len() >= 40, "{} entries after {rev}", cache.len());
                }
                let key = format!("{k:04}");
                assert_eq!(
                    cache.get(key.as_bytes()).map(|f| f.mod_revision),
                    Some(rev),
                    "the key just written"
                );
            }
        }
    }

    #[test]
    fn a_key_larger_than_the_bound_is_not_held() {
        let mut cache = KeyCache::new(ENTRY_OVERHEAD_BYTES + 1);
        cache.note(&[put("a", 1, 1), put("bb", 2, 1)]);
        assert_eq!(cache.get(b"a").map(|f| f.mod_revision), Some(1));
        assert_eq!(cache.get(b"bb"), None);
        assert_eq!(cache.bytes(), 1 + ENTRY_OVERHEAD_BYTES);
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut cache = KeyCache::new(0);
        cache.note(&[put("a", 1, 1)]);
        assert_eq!(cache.get(b"a"), None);
    }
}

//! The writes of an applied batch, by column family.
//!
//! Every write of a batch goes here first (later reads in the batch see
//! it), then into one RocksDB write batch. A put writes three or four keys
//! and reads some back, so this map is on every put's path: one ordered
//! map per column family compares keys alone (not the column family
//! first), holds fewer keys per map, and is read by a borrowed key, with
//! no copy of it made to look it up.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::keys::Cf;

type Map = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a batch wrote: `None` deletes the key. Iterated by column family
/// in [`Cf`]'s order, then by key, as one map keyed by both would be.
#[derive(Debug, Default)]
pub struct Writes {
    by_cf: [Map; Cf::ALL.len()],
}

impl Writes {
    fn map(&self, cf: Cf) -> &Map {
        &self.by_cf[cf as usize]
    }

    /// What the batch wrote at `key`: `Some(None)` if it deleted it.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.map(cf).get(key)
    }

    pub fn contains(&self, cf: Cf, key: &[u8]) -> bool {
        self.map(cf).contains_key(key)
    }

    /// Whether the batch wrote anything in `cf`.
    pub fn touches(&self, cf: Cf) -> bool {
        !self.map(cf).is_empty()
    }

    /// Records a write; returns the one it replaced, if any.
    pub(super) fn insert(
        &mut self,
        cf: Cf,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Option<Option<Vec<u8>>> {
        self.by_cf[cf as usize].insert(key, value)
    }

    pub(super) fn remove(&mut self, cf: Cf, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.by_cf[cf as usize].remove(key)
    }

    /// The writes of `cf` from `start` on, in key order.
    pub(super) fn range_from<'a>(
        &'a self,
        cf: Cf,
        start: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> {
        self.map(cf)
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
    }

    /// Every write, by column family, then key.
    pub fn iter(&self) -> impl Iterator<Item = (Cf, &Vec<u8>, &Option<Vec<u8>>)> {
        Cf::ALL
            .into_iter()
            .flat_map(|cf| self.map(cf).iter().map(move |(k, v)| (cf, k, v)))
    }
}

impl IntoIterator for Writes {
    type Item = ((Cf, Vec<u8>), Option<Vec<u8>>);
    type IntoIter = Box<dyn Iterator<Item = Self::Item>>;

    /// Every write, by column family, then key.
    fn into_iter(self) -> Self::IntoIter {
        Box::new(
            Cf::ALL
                .into_iter()
                .zip(self.by_cf)
                .flat_map(|(cf, map)| map.into_iter().map(move |(k, v)| ((cf, k), v))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_families_are_listed_in_their_order_at_their_index() {
        for (i, cf) in Cf::ALL.into_iter().enumerate() {
            assert_eq!(cf as usize, i, "{cf:?}");
        }
        assert!(Cf::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn writes_come_out_as_one_map_by_column_family_and_key_would_give_them() {
        let mut writes = Writes::default();
        let mut one_map = BTreeMap::new();
        for (i, cf) in [Cf::Stats, Cf::Kv, Cf::SmMeta, Cf::Kv, Cf::Auth, Cf::Kv]
            .into_iter()
            .enumerate()
        {
            for key in [b"b".to_vec(), b"a".to_vec(), vec![b'a', i as u8]] {
                let value = (i % 3 != 0).then(|| vec![i as u8]);
                let replaced = writes.insert(cf, key.clone(), value.clone());
                assert_eq!(replaced, one_map.insert((cf, key), value));
            }
        }
        assert_eq!(
            writes.remove(Cf::Kv, b"a"),
            one_map.remove(&(Cf::Kv, b"a".to_vec()))
        );
        assert_eq!(
            writes.get(Cf::Kv, b"b"),
            one_map.get(&(Cf::Kv, b"b".to_vec()))
        );
        assert!(!writes.contains(Cf::Kv, b"a") && writes.contains(Cf::Kv, b"b"));
        assert!(writes.touches(Cf::Auth) && !writes.touches(Cf::Leases));
        let from: Vec<_> = writes.range_from(Cf::Kv, b"a\x01").collect();
        let expected: Vec<_> = one_map
            .range((Cf::Kv, b"a\x01".to_vec())..)
            .take_while(|((cf, _), _)| *cf == Cf::Kv)
            .map(|((_, k), v)| (k, v))
            .collect();
        assert_eq!(from, expected);
        let listed: Vec<_> = writes
            .iter()
            .map(|(cf, k, v)| ((cf, k.clone()), v.clone()))
            .collect();
        assert_eq!(listed, one_map.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(
            writes.into_iter().collect::<Vec<_>>(),
            one_map.into_iter().collect::<Vec<_>>()
        );
    }
}

//! The held copies of each digest, oldest first.
//!
//! Every message a server holds is looked up by digest twice (when it
//! arrives, and when its commit is applied), and nearly every digest has
//! one copy held: a second comes only from a redelivery while the first is
//! still waiting. So one copy is kept inline, without a queue of its own to
//! allocate, and each operation hashes the digest once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

#[derive(Default)]
pub(super) struct CopiesByDigest {
    map: HashMap<[u8; 16], Copies>,
}

enum Copies {
    One(u64),
    /// Two or more, oldest first.
    More(VecDeque<u64>),
}

impl CopiesByDigest {
    /// Adds `seq`, the newest copy of `digest`.
    pub(super) fn push(&mut self, digest: [u8; 16], seq: u64) {
        match self.map.entry(digest) {
            Entry::Vacant(v) => {
                v.insert(Copies::One(seq));
            }
            Entry::Occupied(mut o) => match o.get_mut() {
                Copies::One(first) => {
                    let first = *first;
                    o.insert(Copies::More(VecDeque::from([first, seq])));
                }
                Copies::More(seqs) => seqs.push_back(seq),
            },
        }
    }

    /// Takes the oldest copy of `digest`.
    pub(super) fn pop_oldest(&mut self, digest: &[u8; 16]) -> Option<u64> {
        let Entry::Occupied(mut o) = self.map.entry(*digest) else {
            return None;
        };
        match o.get_mut() {
            Copies::One(seq) => {
                let seq = *seq;
                o.remove();
                Some(seq)
            }
            Copies::More(seqs) => {
                let seq = seqs.pop_front();
                Self::shrink(o);
                seq
            }
        }
    }

    /// Drops copy `seq` of `digest`, if held.
    pub(super) fn remove(&mut self, digest: &[u8; 16], seq: u64) {
        let Entry::Occupied(mut o) = self.map.entry(*digest) else {
            return;
        };
        match o.get_mut() {
            Copies::One(s) => {
                if *s == seq {
                    o.remove();
                }
            }
            Copies::More(seqs) => {
                seqs.retain(|s| *s != seq);
                Self::shrink(o);
            }
        }
    }

    /// The copies of `digest`, oldest first.
    pub(super) fn seqs(&self, digest: &[u8; 16]) -> impl Iterator<Item = u64> + '_ {
        let (one, more) = match self.map.get(digest) {
            None => (None, None),
            Some(Copies::One(seq)) => (Some(*seq), None),
            Some(Copies::More(seqs)) => (None, Some(seqs.iter().copied())),
        };
        one.into_iter().chain(more.into_iter().flatten())
    }

    /// Back to one inline copy, or none, when a queue has shrunk to that.
    fn shrink(mut o: std::collections::hash_map::OccupiedEntry<'_, [u8; 16], Copies>) {
        if let Copies::More(seqs) = o.get() {
            match seqs.len() {
                0 => {
                    o.remove();
                }
                1 => {
                    let last = seqs[0];
                    o.insert(Copies::One(last));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_come_out_oldest_first_and_removals_keep_the_order() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut c = CopiesByDigest::default();
        assert_eq!(c.pop_oldest(&a), None);
        c.push(a, 1);
        c.push(b, 2);
        assert_eq!(c.seqs(&a).collect::<Vec<_>>(), [1]);
        assert_eq!(c.pop_oldest(&a), Some(1));
        assert_eq!(c.pop_oldest(&a), None);
        for seq in [3, 4, 5, 6] {
            c.push(a, seq);
        }
        assert_eq!(c.seqs(&a).collect::<Vec<_>>(), [3, 4, 5, 6]);
        c.remove(&a, 5);
        c.remove(&a, 9);
        assert_eq!(c.pop_oldest(&a), Some(3));
        assert_eq!(c.seqs(&a).collect::<Vec<_>>(), [4, 6]);
        c.remove(&a, 4);
        assert_eq!(c.seqs(&a).collect::<Vec<_>>(), [6]);
        c.push(a, 7);
        assert_eq!(c.seqs(&a).collect::<Vec<_>>(), [6, 7]);
        c.remove(&a, 6);
        c.remove(&a, 7);
        assert_eq!(c.seqs(&a).count(), 0);
        assert!(!c.map.contains_key(&a));
        c.remove(&b, 3);
        assert_eq!(c.seqs(&b).collect::<Vec<_>>(), [2]);
        c.remove(&b, 2);
        assert!(c.map.is_empty());
    }
}

//! Encodings of entries a follower received from its leader, held until
//! it appends them: the follower's log then stores the leader's bytes
//! instead of encoding every entry once more (see
//! [`EncodedEntries::received`](utopia_raft::EncodedEntries::received)).

use std::collections::VecDeque;
use std::sync::Arc;

use utopia_raft::openraft_api::{EntryPayload, RaftEntry};

use super::Entry;

/// Encoded bytes held, at most: a few AppendEntries messages (each within
/// `REPLICATION_BATCH_BYTES_MAX`), the ones Raft may decode ahead of the
/// append it is doing. An older encoding is dropped first; its entry is
/// then encoded when appended, as without this holder. (Each is held with
/// its entry, whose event is shared with Raft's own copy.)
pub(super) const RECEIVED_BYTES_MAX: usize = 16 << 20;

/// Received encodings in index order, each with the entry decoded from it.
#[derive(Default)]
pub(super) struct Received {
    entries: VecDeque<(Entry, Vec<u8>)>,
    bytes: usize,
}

/// Whether `appended` is `decoded` itself (or a copy of it): for an entry
/// with an event, the same shared event, so that bytes are stored only
/// for the entry decoded from them, never for another one a message
/// carried under the same log id.
fn same_entry(decoded: &Entry, appended: &Entry) -> bool {
    if decoded.log_id != appended.log_id {
        return false;
    }
    match (&decoded.payload, &appended.payload) {
        (EntryPayload::Normal(a), EntryPayload::Normal(b)) => Arc::ptr_eq(&a.event, &b.event),
        _ => decoded == appended,
    }
}

impl Received {
    /// Holds `encodings`, consecutive entries from one message. What an
    /// earlier message held from their first index on is dropped: the
    /// leader sent those indexes again, perhaps as other entries.
    pub(super) fn hold(&mut self, encodings: Vec<(Entry, Vec<u8>)>) {
        let Some((first, _)) = encodings.first() else {
            return;
        };
        let first = first.index();
        while self
            .entries
            .back()
            .is_some_and(|(held, _)| held.index() >= first)
        {
            self.pop_back();
        }
        for (entry, bytes) in encodings {
            let follows = self
                .entries
                .back()
                .is_none_or(|(last, _)| last.index() < entry.index());
            if !follows {
                break;
            }
            self.bytes += bytes.len();
            self.entries.push_back((entry, bytes));
        }
        while self.bytes > RECEIVED_BYTES_MAX {
            self.pop_front();
        }
    }

    /// The received encoding of `entry`, if it was decoded from one held.
    /// Appends come in index order, so what is held for earlier indexes is
    /// dropped.
    pub(super) fn take(&mut self, entry: &Entry) -> Option<Vec<u8>> {
        while self
            .entries
            .front()
            .is_some_and(|(held, _)| held.index() < entry.index())
        {
            self.pop_front();
        }
        if !same_entry(&self.entries.front()?.0, entry) {
            return None;
        }
        let (_, bytes) = self.entries.pop_front()?;
        self.bytes -= bytes.len();
        Some(bytes)
    }

    fn pop_front(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes -= bytes.len();
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_back() {
            self.bytes -= bytes.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use utopia_raft::event::{self, Event, Request};
    use utopia_raft::openraft_api::LogIdOf;
    use utopia_raft::TypeConfig;

    use super::*;

    fn id(term: u64, index: u64) -> LogIdOf<TypeConfig> {
        let leader = openraft::vote::leader_id_adv::LeaderId { term, node_id: 1 };
        LogIdOf::<TypeConfig>::new(leader, index)
    }

    /// An entry as decoded once from a message.
    fn decoded(term: u64, index: u64) -> Entry {
        Entry {
            log_id: id(term, index),
            payload: EntryPayload::Normal(Request::new(index, Event::LeaseRevoke { id: 7 })),
        }
    }

    thread_local! {
        static DECODED: RefCell<HashMap<(u64, u64), Entry>> = RefCell::default();
    }

    /// The entry decoded from the message that sent (term, index): the
    /// same one (sharing its event) each time it is asked for.
    fn entry(term: u64, index: u64) -> Entry {
        DECODED.with_borrow_mut(|d| {
            d.entry((term, index))
                .or_insert_with(|| decoded(term, index))
                .clone()
        })
    }

    fn encodings(term: u64, indexes: std::ops::Range<u64>) -> Vec<(Entry, Vec<u8>)> {
        indexes
            .map(|i| (entry(term, i), event::encode(&entry(term, i)).unwrap()))
            .collect()
    }

    #[test]
    fn an_entry_is_given_the_encoding_held_under_its_log_id() {
        let mut r = Received::default();
        r.hold(encodings(2, 5..9));
        r.hold(encodings(2, 9..12));
        assert_eq!(
            r.take(&entry(2, 5)),
            Some(event::encode(&entry(2, 5)).unwrap())
        );
        // Index 6 appended from elsewhere (not held under term 3): nothing,
        // and the encoding for (2, 6) is gone.
        assert_eq!(r.take(&entry(3, 6)), None);
        // Skipped indexes are dropped on the way.
        assert_eq!(
            r.take(&entry(2, 10)),
            Some(event::encode(&entry(2, 10)).unwrap())
        );
        assert_eq!(r.take(&entry(2, 9)), None);
        // An entry under the held log id but not decoded from those bytes
        // (equal here, yet another decoding): nothing.
        assert_eq!(r.take(&decoded(2, 11)), None);
        assert!(r.take(&entry(2, 11)).is_some());
        assert_eq!((r.entries.len(), r.bytes), (0, 0));
    }

    #[test]
    fn a_later_message_replaces_what_it_sends_again() {
        let mut r = Received::default();
        r.hold(encodings(2, 5..12));
        // A new leader sends 8.. again under its term.
        r.hold(encodings(3, 8..10));
        assert!(r.take(&entry(2, 7)).is_some());
        assert_eq!(r.take(&entry(2, 8)), None);
        let mut r = Received::default();
        r.hold(encodings(2, 5..12));
        r.hold(encodings(3, 8..10));
        assert_eq!(
            r.take(&entry(3, 8)),
            Some(event::encode(&entry(3, 8)).unwrap())
        );
        // What the old leader sent after the new one's entries is gone.
        assert_eq!(r.take(&entry(2, 10)), None);
        assert_eq!((r.entries.len(), r.bytes), (0, 0));
        // Out of order within a message: held up to where order breaks.
        let mut r = Received::default();
        let mut odd = encodings(4, 20..23);
        odd.swap(1, 2);
        r.hold(odd);
        assert_eq!(r.entries.len(), 2);
    }

    #[test]
    fn held_bytes_are_bounded() {
        let mut r = Received::default();
        let big = |i: u64| (entry(2, i), vec![0u8; RECEIVED_BYTES_MAX / 3]);
        r.hold((1..5).map(big).collect());
        assert_eq!(r.entries.len(), 3);
        assert_eq!(r.entries.front().map(|(e, _)| e.index()), Some(2));
        assert!(r.bytes <= RECEIVED_BYTES_MAX);
        // One encoding over the bound is not held at all.
        r.hold(vec![(entry(2, 9), vec![0u8; RECEIVED_BYTES_MAX + 1])]);
        assert_eq!((r.entries.len(), r.bytes), (0, 0));
    }
}

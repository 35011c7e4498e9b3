//! AppendEntries built from the entries' encodings the log already made.
//!
//! The leader encodes every entry it appends (its log stores CBOR), and
//! then encoded it once more for every follower it replicated it to: a
//! fifth of the leader's own encoding and decoding work under puts. The
//! log keeps the encodings of its newest entries ([`EncodedEntries`]), and
//! a replication stream writes those bytes into the request instead.
//!
//! The request's bytes are exactly what serde writes for it (a test
//! compares them), so followers decode them as before: CBOR is
//! self-delimiting, and an entry's encoding inside the request's array is
//! its encoding alone.

use ciborium_ll::{Encoder, Header};
use openraft::raft::AppendEntriesRequest;

use crate::event::{self, CodecError};
use crate::TypeConfig;

type Entry = openraft::alias::EntryOf<TypeConfig>;

/// Encodings of log entries, kept by whoever encoded them.
pub trait EncodedEntries: Send + Sync {
    /// Appends to `out` the encoding (`event::encode`) of each of
    /// `entries`, in order, and returns true; or returns false, with `out`
    /// as it may be half-written, when it does not hold every one of them
    /// (an entry is held only under its own log id).
    fn append_encoded(&self, entries: &[Entry], out: &mut Vec<u8>) -> bool;

    /// Takes the encodings of entries this member received from its leader
    /// (each with the entry decoded from it, in index order), for the
    /// append of those very entries to store instead of encoding them
    /// again: an entry decoded from another message, even under the same
    /// log id, is encoded as before (see `received`).
    fn received(&self, encodings: Vec<(Entry, Vec<u8>)>);
}

/// `event::encode(req)`, with the entries' encodings taken from `held`
/// when it has all of them.
pub(super) fn encode_append(
    req: &AppendEntriesRequest<TypeConfig>,
    held: Option<&dyn EncodedEntries>,
) -> Result<Vec<u8>, CodecError> {
    let Some(held) = held else {
        return event::encode(req);
    };
    if req.entries.is_empty() {
        return event::encode(req);
    }
    // The fields in the order serde's derive writes them.
    let mut out = Vec::with_capacity(256);
    head(&mut out, Header::Map(Some(4)));
    field(&mut out, "vote", &req.vote)?;
    field(&mut out, "prev_log_id", &req.prev_log_id)?;
    key(&mut out, "entries");
    head(&mut out, Header::Array(Some(req.entries.len())));
    if !held.append_encoded(&req.entries, &mut out) {
        return event::encode(req);
    }
    field(&mut out, "leader_commit", &req.leader_commit)?;
    Ok(out)
}

/// Appends a CBOR head (ciborium's, in its shortest form).
fn head(out: &mut Vec<u8>, header: Header) {
    // Writing to a Vec cannot fail.
    let _ = Encoder::from(&mut *out).push(header);
}

/// Appends a map key: the text `name`.
fn key(out: &mut Vec<u8>, name: &str) {
    head(out, Header::Text(Some(name.len())));
    out.extend_from_slice(name.as_bytes());
}

/// Appends a map entry: the key `name`, then `value` as serde writes it.
fn field<T: serde::Serialize>(out: &mut Vec<u8>, name: &str, value: &T) -> Result<(), CodecError> {
    key(out, name);
    ciborium::into_writer(value, &mut *out).map_err(|e| CodecError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use openraft::entry::RaftEntry;
    use openraft::EntryPayload;

    use super::super::fixtures::{log_id, request};
    use super::*;
    use crate::event::{Event, PutOp, Request};

    fn put(index: u64, value_bytes: usize) -> Entry {
        let event = Event::Put(PutOp {
            key: format!("key/{index}").into_bytes().into(),
            value: vec![7u8; value_bytes].into(),
            lease: 0,
            prev_kv: index.is_multiple_of(2),
        });
        Entry {
            log_id: log_id(3, index),
            payload: EntryPayload::Normal(Request::new(1_700_000_000_000 + index, event)),
        }
    }

    /// Entries' encodings by index, as a log would keep them.
    #[derive(Default)]
    struct Held(BTreeMap<u64, (Entry, Vec<u8>)>);

    impl Held {
        fn keep(&mut self, e: &Entry) {
            self.0
                .insert(e.index(), (e.clone(), event::encode(e).unwrap()));
        }
    }

    impl EncodedEntries for Held {
        fn append_encoded(&self, entries: &[Entry], out: &mut Vec<u8>) -> bool {
            for e in entries {
                match self.0.get(&e.index()) {
                    Some((held, bytes)) if held.log_id == e.log_id => out.extend_from_slice(bytes),
                    _ => return false,
                }
            }
            true
        }

        fn received(&self, _: Vec<(Entry, Vec<u8>)>) {}
    }

    #[test]
    fn requests_built_from_held_encodings_are_what_serde_writes() {
        let mut held = Held::default();
        // Batch lengths across every width of the array's head, values
        // across the byte strings' head widths.
        for (first, len) in [
            (1, 1),
            (2, 23),
            (30, 24),
            (60, 255),
            (400, 256),
            (1_000, 300),
        ] {
            let entries: Vec<Entry> = (first..first + len)
                .map(|i| put(i, (i as usize * 37) % 300))
                .collect();
            for e in &entries {
                held.keep(e);
            }
            for commit in [None, Some(first), Some(1u64 << 40)] {
                let req = request(entries.clone(), commit);
                let serde = event::encode(&req).unwrap();
                assert_eq!(
                    encode_append(&req, Some(&held)).unwrap(),
                    serde,
                    "{len} entries from {first}, commit {commit:?}"
                );
                let back: AppendEntriesRequest<TypeConfig> = event::decode(&serde).unwrap();
                assert_eq!(back.entries, req.entries);
            }
        }
        // A blank entry and a membership entry are encoded like any other.
        let mut odd = vec![Entry::new_blank(log_id(4, 5000))];
        odd.push(Entry::new_membership(
            log_id(4, 5001),
            openraft::Membership::new_with_defaults(vec![[1, 2, 3].into()], []),
        ));
        for e in &odd {
            held.keep(e);
        }
        let req = request(odd, Some(5000));
        assert_eq!(
            encode_append(&req, Some(&held)).unwrap(),
            event::encode(&req).unwrap()
        );
    }

    #[test]
    fn an_entry_not_held_under_its_own_log_id_is_encoded_anew() {
        let mut held = Held::default();
        let entries: Vec<Entry> = (10..20).map(|i| put(i, 16)).collect();
        for e in &entries[..9] {
            held.keep(e);
        }
        // Missing: the last entry.
        let req = request(entries.clone(), Some(12));
        assert_eq!(
            encode_append(&req, Some(&held)).unwrap(),
            event::encode(&req).unwrap()
        );
        // Held under another term (a log that was truncated and written
        // again): not used.
        let mut stale = put(19, 16);
        stale.log_id = log_id(2, 19);
        held.0
            .insert(19, (stale.clone(), event::encode(&stale).unwrap()));
        assert_eq!(
            encode_append(&req, Some(&held)).unwrap(),
            event::encode(&req).unwrap()
        );
        // Nothing held, or no entries: serde's encoding.
        assert_eq!(
            encode_append(&req, None).unwrap(),
            event::encode(&req).unwrap()
        );
        let heartbeat = request(vec![], Some(19));
        let held: Arc<dyn EncodedEntries> = Arc::new(Held::default());
        assert_eq!(
            encode_append(&heartbeat, Some(&*held)).unwrap(),
            event::encode(&heartbeat).unwrap()
        );
    }
}

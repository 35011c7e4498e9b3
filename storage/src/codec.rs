//! The encoding of the state machine's own records: CBOR, one encoder and
//! one decoder.
//!
//! Records (key-value pairs, history, the change feed, leases, ingest and
//! command state, metadata) are the store's own plain data types: encoding
//! one into a `Vec` cannot fail, so a failure is a programmer error (a
//! `Serialize` impl that refuses) and [`encode`] panics, naming the type,
//! rather than write empty bytes in its place. Decoding reads bytes from
//! the disk: a record that does not decode is a corrupt record, reported
//! with its column family and key by [`decode`], never a panic.
//!
//! Documents are JSON, with their own encoder and decoder
//! ([`crate::documents::Document`]).

use serde::de::DeserializeOwned;
use serde::Serialize;
use utopia_raft::event;

use crate::keys::Cf;
use crate::StoreError;

/// Encodes one of the store's records.
///
/// # Panics
/// If `value`'s `Serialize` impl fails: a bug, never data (see the module
/// documentation).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of one of the store's records (or of a field of
/// one built by hand) to `out`.
///
/// # Panics
/// As [`encode`].
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    if let Err(e) = ciborium::into_writer(value, out) {
        panic!(
            "encoding a {} record failed, which it cannot: {e}",
            std::any::type_name::<T>()
        )
    }
}

/// Decodes a record read from `key` in `cf`.
pub fn decode<T: DeserializeOwned>(cf: Cf, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    event::decode(bytes).map_err(|e| StoreError::corrupt(cf, key, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_name_their_key() {
        let bytes = encode(&(7u64, "x".to_string()));
        assert_eq!(
            decode::<(u64, String)>(Cf::SmMeta, b"k", &bytes).unwrap(),
            (7, "x".to_string())
        );
        let err = decode::<(u64, String)>(Cf::Leases, b"k\x01", b"\xff")
            .unwrap_err()
            .to_string();
        assert!(err.contains("leases") && err.contains("k\\x01"), "{err}");
    }

    struct Refuses;

    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }

    #[test]
    #[should_panic(expected = "Refuses record failed")]
    fn a_record_that_cannot_be_encoded_is_a_loud_bug_not_empty_bytes() {
        encode(&Refuses);
    }
}

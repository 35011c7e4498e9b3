//! AppendEntries as a follower decodes them, and requests forwarded to the
//! leader as it decodes them.
//!
//! A follower decodes every entry the leader sends it. Through serde's
//! generic CBOR path (a visitor per map, field names matched one by one,
//! every byte string copied twice, each head read through a generic reader)
//! that was a tenth of each follower's CPU under puts, about 1.4 µs per put
//! entry; read here, about 0.3 µs. The shapes serde writes for the frequent
//! entries (a put, a delete, device data or a batch of ingested device
//! data, in a `Normal` payload) are read here directly from the message's
//! bytes. Everything else (another event, a blank or membership entry,
//! another field order, a head this reader does not expect) is decoded by
//! serde from where it starts: an unexpected event by the event decoder an
//! entry uses, an unexpected entry by the entry decoder, an unexpected
//! message by the message decoder. A value read here is therefore the value
//! serde reads from the same bytes (the tests compare both, on encoded and
//! on corrupted messages), and a message serde refuses is refused with
//! serde's error.

use std::ops::Range;
use std::sync::Arc;

use ciborium_ll::{simple, Decoder, Header};
use openraft::raft::AppendEntriesRequest;
use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::event::{
    self, CodecError, DeleteOp, DeviceData, Event, IngestBody, IngestItem, PutOp, Request,
};
use crate::TypeConfig;

type Entry = openraft::alias::EntryOf<TypeConfig>;
type LogId = openraft::alias::LogIdOf<TypeConfig>;

/// Decodes an AppendEntries request: the same value, or the same error, as
/// `event::decode`; with where each entry's encoding lies in `bytes` (none
/// when the message as a whole was left to serde).
pub(super) fn decode_append(
    bytes: &[u8],
) -> Result<(AppendEntriesRequest<TypeConfig>, Vec<Range<usize>>), CodecError> {
    match Reader::new(bytes).append() {
        Some(decoded) => Ok(decoded),
        None => Ok((event::decode(bytes)?, Vec::new())),
    }
}

/// Decodes a request a member forwarded to this leader: the same value, or
/// the same error, as `event::decode_request`. Under MQTT ingest most
/// batches are proposed by a member that is not the leader.
pub(super) fn decode_request(bytes: &[u8]) -> Result<Request, CodecError> {
    match Reader::new(bytes).request(0) {
        Some(request) => event::check_version(request),
        None => event::decode_request(bytes),
    }
}

/// An event decoded as a log entry's request decodes it (see
/// `event::tagged`).
#[derive(Deserialize)]
#[serde(transparent)]
struct SharedEvent(#[serde(deserialize_with = "event::deserialize_shared")] Arc<Event>);

/// The nesting of maps, arrays and enums `event::decode` allows (ciborium's
/// default).
const NESTING_MAX: usize = 256;

/// How deep the values decoded by serde sit in a message: the message's
/// fields in its map; an entry in the map and the entries' array; a
/// request in those, the entry's map and its payload (a forwarded
/// request: at the top); its event in the request's map.
const FIELD_DEPTH: usize = 1;
const ENTRY_DEPTH: usize = 2;
const ENTRY_REQUEST_DEPTH: usize = 4;

/// A position in a message; every read returns None, with the position
/// unspecified, when the bytes there are not what it reads.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The next head. Those of integers, and of strings, arrays and maps of
    /// a definite length, nearly every head of a message, are read here:
    /// through `ciborium_ll::Decoder` each cost about as much as the rest
    /// of an entry's decoding. Any other (a float, a simple value, a tag,
    /// an indefinite length, a reserved value) is ciborium_ll's to read.
    fn head(&mut self) -> Option<Header> {
        let initial = *self.bytes.get(self.pos)?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let argument_bytes = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return self.pull(),
        };
        if major > 5 {
            return self.pull();
        }
        let start = self.pos + 1;
        let argument = match self.bytes.get(start..start + argument_bytes)? {
            [] => u64::from(info),
            big_endian => big_endian.iter().fold(0, |n, b| n << 8 | u64::from(*b)),
        };
        self.pos = start + argument_bytes;
        let len = || usize::try_from(argument).ok();
        Some(match major {
            0 => Header::Positive(argument),
            1 => Header::Negative(argument),
            2 => Header::Bytes(Some(len()?)),
            3 => Header::Text(Some(len()?)),
            4 => Header::Array(Some(len()?)),
            _ => Header::Map(Some(len()?)),
        })
    }

    /// The next head, read by ciborium_ll.
    fn pull(&mut self) -> Option<Header> {
        let mut decoder = Decoder::from(self.bytes.get(self.pos..)?);
        let header = decoder.pull().ok()?;
        self.pos += decoder.offset();
        Some(header)
    }

    /// A definite-length map of `len` entries.
    fn map(&mut self, len: usize) -> Option<()> {
        matches!(self.head()?, Header::Map(Some(n)) if n == len).then_some(())
    }

    /// A definite-length text equal to `name`.
    fn key(&mut self, name: &str) -> Option<()> {
        let Header::Text(Some(len)) = self.head()? else {
            return None;
        };
        (self.take(len)? == name.as_bytes()).then_some(())
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let taken = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        match self.head()? {
            Header::Positive(n) => Some(n),
            _ => None,
        }
    }

    fn i64(&mut self) -> Option<i64> {
        match self.head()? {
            Header::Positive(n) => i64::try_from(n).ok(),
            // CBOR's negative n is -1 - n.
            Header::Negative(n) => i64::try_from(n).ok().map(|n| -1 - n),
            _ => None,
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.head()? {
            Header::Simple(simple::FALSE) => Some(false),
            Header::Simple(simple::TRUE) => Some(true),
            _ => None,
        }
    }

    /// A definite-length byte string.
    fn bytes(&mut self) -> Option<bytes::Bytes> {
        let Header::Bytes(Some(len)) = self.head()? else {
            return None;
        };
        Some(bytes::Bytes::copy_from_slice(self.take(len)?))
    }

    /// A definite-length text.
    fn text(&mut self) -> Option<String> {
        let Header::Text(Some(len)) = self.head()? else {
            return None;
        };
        let utf8 = std::str::from_utf8(self.take(len)?).ok()?;
        Some(utf8.to_owned())
    }

    /// The room to reserve for `len` values of `T` not yet read: a count
    /// in a message is not trusted, so at most one per byte left in it and
    /// at most 1 MiB (the vector grows past that if the values are there).
    fn room<T>(&self, len: usize) -> usize {
        let left = self.bytes.len() - self.pos;
        len.min(left)
            .min((1 << 20) / std::mem::size_of::<T>().max(1))
    }

    /// A definite-length array of what `item` reads.
    fn array<T>(&mut self, item: fn(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let Header::Array(Some(len)) = self.head()? else {
            return None;
        };
        let mut items = Vec::with_capacity(self.room::<T>(len));
        for _ in 0..len {
            items.push(item(self)?);
        }
        Some(items)
    }

    /// One value decoded by serde from here, `depth` maps and arrays deep
    /// in the message: with the nesting serde would have left there, so
    /// that a value nested too deep is refused here as it is there.
    fn serde<T: DeserializeOwned>(&mut self, depth: usize) -> Option<T> {
        let mut rest = self.bytes.get(self.pos..)?;
        let limit = NESTING_MAX.checked_sub(depth)?;
        let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, limit).ok()?;
        self.pos = self.bytes.len() - rest.len();
        Some(value)
    }

    /// The request, with its fields in the order serde writes them.
    fn append(mut self) -> Option<(AppendEntriesRequest<TypeConfig>, Vec<Range<usize>>)> {
        self.map(4)?;
        self.key("vote")?;
        let vote = self.serde(FIELD_DEPTH)?;
        self.key("prev_log_id")?;
        let prev_log_id = self.serde(FIELD_DEPTH)?;
        self.key("entries")?;
        let Header::Array(Some(len)) = self.head()? else {
            return None;
        };
        let mut entries = Vec::with_capacity(self.room::<Entry>(len));
        let mut encodings = Vec::with_capacity(self.room::<Range<usize>>(len));
        for _ in 0..len {
            let start = self.pos;
            let entry = match self.entry() {
                Some(entry) => entry,
                None => {
                    self.pos = start;
                    self.serde::<Entry>(ENTRY_DEPTH)?
                }
            };
            entries.push(entry);
            encodings.push(start..self.pos);
        }
        self.key("leader_commit")?;
        let leader_commit = self.serde(FIELD_DEPTH)?;
        let request = AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        };
        Some((request, encodings))
    }

    /// An entry with a `Normal` payload.
    fn entry(&mut self) -> Option<Entry> {
        self.map(2)?;
        self.key("log_id")?;
        let log_id = self.log_id()?;
        self.key("payload")?;
        self.map(1)?;
        self.key("Normal")?;
        Some(Entry {
            log_id,
            payload: EntryPayload::Normal(self.request(ENTRY_REQUEST_DEPTH)?),
        })
    }

    fn log_id(&mut self) -> Option<LogId> {
        self.map(2)?;
        self.key("leader_id")?;
        self.map(2)?;
        self.key("term")?;
        let term = self.u64()?;
        self.key("node_id")?;
        let node_id = self.u64()?;
        self.key("index")?;
        let index = self.u64()?;
        let leader = openraft::vote::leader_id_adv::LeaderId { term, node_id };
        Some(LogId::new(leader, index))
    }

    /// A request `depth` deep in the message.
    fn request(&mut self, depth: usize) -> Option<Request> {
        let Header::Map(Some(len @ (3 | 4))) = self.head()? else {
            return None;
        };
        self.key("v")?;
        let version = u16::try_from(self.u64()?).ok()?;
        self.key("t")?;
        let at_ms = self.u64()?;
        self.key("e")?;
        let start = self.pos;
        let event = match self.event() {
            Some(event) => Arc::new(event),
            None => {
                self.pos = start;
                self.serde::<SharedEvent>(depth + 1)?.0
            }
        };
        let document_bytes_max = if len == 4 {
            self.key("d")?;
            Some(self.u64()?)
        } else {
            None
        };
        Some(Request {
            version,
            at_ms,
            event,
            document_bytes_max,
        })
    }

    /// A put, a delete, device data or a batch of ingested device data.
    fn event(&mut self) -> Option<Event> {
        let Header::Map(Some(len)) = self.head()? else {
            return None;
        };
        self.key(event::TAG)?;
        let Header::Text(Some(tag_bytes)) = self.head()? else {
            return None;
        };
        match (self.take(tag_bytes)?, len) {
            (b"put", 5) => {
                self.key("key")?;
                let key = self.bytes()?;
                self.key("value")?;
                let value = self.bytes()?;
                self.key("lease")?;
                let lease = self.i64()?;
                self.key("prev_kv")?;
                let prev_kv = self.bool()?;
                Some(Event::Put(PutOp {
                    key,
                    value,
                    lease,
                    prev_kv,
                }))
            }
            (b"delete", 4) => {
                self.key("key")?;
                let key = self.bytes()?;
                self.key("range_end")?;
                let range_end = self.bytes()?;
                self.key("prev_kv")?;
                let prev_kv = self.bool()?;
                Some(Event::Delete(DeleteOp {
                    key,
                    range_end,
                    prev_kv,
                }))
            }
            (b"device_data_updated", 8) => Some(Event::DeviceDataUpdated(self.device_data()?)),
            (b"ingest_batch", 4) => {
                self.key("epoch")?;
                let epoch = self.u64()?;
                self.key("proposer")?;
                let proposer = self.u64()?;
                self.key("items")?;
                let items = self.array(Self::ingest_item)?;
                Some(Event::IngestBatch {
                    epoch,
                    proposer,
                    items,
                })
            }
            _ => None,
        }
    }

    /// An ingested message with device data (other bodies are rare: their
    /// batch is left to serde).
    fn ingest_item(&mut self) -> Option<IngestItem> {
        self.map(3)?;
        self.key("digest")?;
        let digest = self.bytes()?;
        self.key("redelivered")?;
        let redelivered = self.bool()?;
        self.key("body")?;
        self.map(8)?;
        self.key(event::TAG)?;
        self.key("data")?;
        Some(IngestItem {
            digest,
            redelivered,
            body: IngestBody::Data(self.device_data()?),
        })
    }

    /// `DeviceData`'s fields, after its map's head (and tag).
    fn device_data(&mut self) -> Option<DeviceData> {
        self.key("host")?;
        let host = self.text()?;
        self.key("zone")?;
        let zone = self.text()?;
        self.key("class")?;
        let class = self.text()?;
        self.key("device_id")?;
        let device_id = self.text()?;
        self.key("post_type")?;
        let post_type = self.text()?;
        self.key("path")?;
        let path = self.array(Self::text)?;
        self.key("json")?;
        let json = self.text()?;
        Some(DeviceData {
            host,
            zone,
            class,
            device_id,
            post_type,
            path,
            json,
        })
    }
}

#[cfg(test)]
mod tests;

//! Column families and key encodings.
//!
//! Every byte layout on disk is defined here, so that a reader can check the
//! whole format in one file, and no other file builds or slices a key by
//! offset: each layout has an encoder and a parser, and the parser refuses
//! a malformed key with a [`KeyError`] naming it (never a panic, never a
//! key read by its first bytes). Integers are big-endian so that RocksDB's
//! bytewise order is numeric order. User keys embedded in composite keys are
//! escaped (`0x00` → `0x00 0xFF`, terminated by `0x00 0x01`) so that the
//! composite order is the user-key order, then the suffix order.
//!
//! | column family | key | encoder / parser |
//! | --- | --- | --- |
//! | `raft_log` | index | [`log_key`] / [`parse_log_key`] |
//! | `raft_meta`, `sm_meta` | names | [`raft_meta`], [`meta`] |
//! | `kv` | the user key itself | |
//! | `kv_history` | escaped user key ++ revision | [`history_key`] / [`parse_history_key`] |
//! | `kv_changes` | revision ++ index in the revision | [`change_key`] / [`parse_change_key`] |
//! | `leases` | lease id | [`lease_id_key`] / [`parse_lease_id_key`] |
//! | `lease_keys` | lease id ++ user key | [`lease_key`] / [`parse_lease_key`] |
//! | `lease_deadlines` | deadline ms ++ lease id | [`deadline_key`] / [`parse_deadline_key`] |
//! | the six collections | document id, UTF-8 | [`document_key`] / [`parse_document_key`] |
//! | `device_index` | tag ++ escaped value ++ device id | [`device_index_key`] / [`parse_device_index_key`] |
//! | `device_index` | `n` ++ escaped host | [`host_devices_key`] / [`parse_host_devices_key`] |
//! | `ingest` | names, `w` ++ node, `d` ++ digest, `x` ++ ms ++ digest | [`ingest`] |
//! | `commands` | names, `c` / `p` ++ id, `s` ++ ms ++ id | [`commands`] |

use crate::StoreError;

/// The column families of a utopia data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Raft log: index → CBOR log entry.
    RaftLog,
    /// Raft metadata: vote, last purged log id.
    RaftMeta,
    /// State machine metadata: applied log id, membership, revisions.
    SmMeta,
    /// Current key-value pairs: user key → CBOR `KeyValue`.
    Kv,
    /// Key history: escaped key ++ revision → CBOR `HistoryRecord`.
    KvHistory,
    /// Change feed: revision ++ sub-index → CBOR `ChangeRecord`.
    KvChanges,
    /// Leases: id → CBOR `LeaseRecord`.
    Leases,
    /// Lease keys: lease id ++ user key → empty.
    LeaseKeys,
    /// Lease deadlines: deadline ms ++ lease id → empty.
    LeaseDeadlines,
    Devices,
    Zones,
    Fellows,
    DbServers,
    XmlConfigs,
    Stats,
    /// Secondary indexes on devices: tag ++ escaped value ++ device id → empty.
    DeviceIndex,
    /// MQTT ingest state; see [`ingest`].
    Ingest,
    /// Device commands; see [`commands`].
    Commands,
}

impl Cf {
    pub const ALL: [Cf; 18] = [
        Cf::RaftLog,
        Cf::RaftMeta,
        Cf::SmMeta,
        Cf::Kv,
        Cf::KvHistory,
        Cf::KvChanges,
        Cf::Leases,
        Cf::LeaseKeys,
        Cf::LeaseDeadlines,
        Cf::Devices,
        Cf::Zones,
        Cf::Fellows,
        Cf::DbServers,
        Cf::XmlConfigs,
        Cf::Stats,
        Cf::DeviceIndex,
        Cf::Ingest,
        Cf::Commands,
    ];

    /// The column families that make up the state machine (everything but
    /// the Raft log and its metadata); a snapshot holds exactly these.
    pub const STATE_MACHINE: [Cf; 16] = [
        Cf::SmMeta,
        Cf::Kv,
        Cf::KvHistory,
        Cf::KvChanges,
        Cf::Leases,
        Cf::LeaseKeys,
        Cf::LeaseDeadlines,
        Cf::Devices,
        Cf::Zones,
        Cf::Fellows,
        Cf::DbServers,
        Cf::XmlConfigs,
        Cf::Stats,
        Cf::DeviceIndex,
        Cf::Ingest,
        Cf::Commands,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::SmMeta => "sm_meta",
            Cf::Kv => "kv",
            Cf::KvHistory => "kv_history",
            Cf::KvChanges => "kv_changes",
            Cf::Leases => "leases",
            Cf::LeaseKeys => "lease_keys",
            Cf::LeaseDeadlines => "lease_deadlines",
            Cf::Devices => "devices",
            Cf::Zones => "zones",
            Cf::Fellows => "fellows",
            Cf::DbServers => "db_servers",
            Cf::XmlConfigs => "xml_configs",
            Cf::Stats => "stats",
            Cf::DeviceIndex => "device_index",
            Cf::Ingest => "ingest",
            Cf::Commands => "commands",
        }
    }

    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.name() == name)
    }
}

/// The document collections served over the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Devices,
    Zones,
    Fellows,
    DbServers,
    XmlConfigs,
    Stats,
}

impl Collection {
    pub const ALL: [Collection; 6] = [
        Collection::Devices,
        Collection::Zones,
        Collection::Fellows,
        Collection::DbServers,
        Collection::XmlConfigs,
        Collection::Stats,
    ];

    pub fn parse(name: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.cf().name()
    }

    pub fn cf(self) -> Cf {
        match self {
            Collection::Devices => Cf::Devices,
            Collection::Zones => Cf::Zones,
            Collection::Fellows => Cf::Fellows,
            Collection::DbServers => Cf::DbServers,
            Collection::XmlConfigs => Cf::XmlConfigs,
            Collection::Stats => Cf::Stats,
        }
    }
}

/// Keys in [`Cf::SmMeta`].
pub mod meta {
    pub const APPLIED: &[u8] = b"applied";
    /// Present while a snapshot is being installed: the snapshot's
    /// metadata. The state machine is partly written until it is gone.
    pub const INSTALLING: &[u8] = b"installing";
    pub const MEMBERSHIP: &[u8] = b"membership";
    pub const REVISION: &[u8] = b"revision";
    pub const COMPACT_REVISION: &[u8] = b"compact_revision";
    /// CBOR u64: events (and ingest items) rejected because their content
    /// could not be applied (see `apply`'s module documentation).
    pub const EVENTS_REJECTED: &[u8] = b"events_rejected";
    /// CBOR `AlarmState`: the active alarms, and the disarms applied.
    pub const ALARMS: &[u8] = b"alarms";
    /// CBOR `Quotas`: the quotas applied.
    pub const QUOTAS: &[u8] = b"quotas";
    /// CBOR u64: leases granted and not yet revoked or expired.
    pub const LEASE_COUNT: &[u8] = b"lease_count";
}

/// Keys in [`Cf::RaftMeta`].
pub mod raft_meta {
    pub const VOTE: &[u8] = b"vote";
    pub const LAST_PURGED: &[u8] = b"last_purged";
    /// Which node this data directory belongs to, and the cluster it was
    /// created for.
    pub const IDENTITY: &[u8] = b"identity";
}

/// A key that does not have the layout of its column family: a damaged
/// store or a bug, never user input (every key is built by an encoder
/// here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {layout} key {} in {}: {reason}", crate::printable_key(.key), .cf.name())]
pub struct KeyError {
    pub cf: Cf,
    /// The layout the key should have had.
    pub layout: &'static str,
    pub key: Vec<u8>,
    pub reason: &'static str,
}

impl From<KeyError> for StoreError {
    fn from(e: KeyError) -> Self {
        StoreError::corrupt(
            e.cf,
            &e.key,
            format!("not a {} key: {}", e.layout, e.reason),
        )
    }
}

/// Reads one key field by field, refusing what its layout does not allow.
struct Cursor<'a> {
    cf: Cf,
    layout: &'static str,
    key: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(cf: Cf, layout: &'static str, key: &'a [u8]) -> Self {
        Self {
            cf,
            layout,
            key,
            rest: key,
        }
    }

    fn error(&self, reason: &'static str) -> KeyError {
        KeyError {
            cf: self.cf,
            layout: self.layout,
            key: self.key.to_vec(),
            reason,
        }
    }

    fn tag(&mut self, tag: u8) -> Result<(), KeyError> {
        match self.rest.split_first() {
            Some((&t, rest)) if t == tag => {
                self.rest = rest;
                Ok(())
            }
            Some(_) => Err(self.error("wrong tag")),
            None => Err(self.error("empty")),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KeyError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(self.error("too short"));
        };
        self.rest = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, KeyError> {
        self.array::<8>().map(u64::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, KeyError> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    fn escaped(&mut self) -> Result<Vec<u8>, KeyError> {
        let (key, rest) = split_escaped(self.rest).ok_or_else(|| self.error("bad escaping"))?;
        self.rest = rest;
        Ok(key)
    }

    fn escaped_str(&mut self) -> Result<String, KeyError> {
        String::from_utf8(self.escaped()?).map_err(|_| self.error("not UTF-8"))
    }

    /// The rest of the key.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn rest_str(&mut self) -> Result<&'a str, KeyError> {
        let rest = self.rest();
        std::str::from_utf8(rest).map_err(|_| self.error("not UTF-8"))
    }

    /// Checks that the whole key was read.
    fn end<T>(&self, value: T) -> Result<T, KeyError> {
        if self.rest.is_empty() {
            Ok(value)
        } else {
            Err(self.error("too long"))
        }
    }
}

/// Keys in [`Cf::Ingest`].
pub mod ingest {
    use super::{Cf, Cursor, KeyError};

    /// CBOR `IngestOwners`: the current ownership epoch and its members.
    pub const OWNERS: &[u8] = b"o";
    /// CBOR `IngestTotals`: items applied, suppressed and rejected.
    pub const TOTALS: &[u8] = b"t";
    /// `w` ++ node id → CBOR u32: the weight a member asked for.
    pub const WEIGHT_PREFIX: u8 = b'w';
    /// `d` ++ digest (16 bytes) → CBOR `DedupeRecord`.
    pub const DEDUPE_PREFIX: u8 = b'd';
    /// `x` ++ committed ms ++ digest → empty: dedupe records by age.
    pub const EXPIRY_PREFIX: u8 = b'x';

    /// A message's digest (see `crate::ingest::digest`).
    pub type Digest = [u8; 16];

    pub fn weight_key(node: u64) -> [u8; 9] {
        let mut out = [WEIGHT_PREFIX; 9];
        out[1..].copy_from_slice(&node.to_be_bytes());
        out
    }

    pub fn parse_weight_key(key: &[u8]) -> Result<u64, KeyError> {
        let mut c = Cursor::new(Cf::Ingest, "ingest weight", key);
        c.tag(WEIGHT_PREFIX)?;
        let node = c.u64()?;
        c.end(node)
    }

    pub fn dedupe_key(digest: &Digest) -> [u8; 17] {
        let mut out = [DEDUPE_PREFIX; 17];
        out[1..].copy_from_slice(digest);
        out
    }

    pub fn parse_dedupe_key(key: &[u8]) -> Result<Digest, KeyError> {
        let mut c = Cursor::new(Cf::Ingest, "ingest dedupe", key);
        c.tag(DEDUPE_PREFIX)?;
        let digest = c.array()?;
        c.end(digest)
    }

    pub fn expiry_key(at_ms: u64, digest: &Digest) -> [u8; 25] {
        let mut out = [EXPIRY_PREFIX; 25];
        out[1..9].copy_from_slice(&at_ms.to_be_bytes());
        out[9..].copy_from_slice(digest);
        out
    }

    /// The first expiry key of records committed at `at_ms` (a bound for
    /// scans by age).
    pub fn expiry_bound(at_ms: u64) -> [u8; 9] {
        let mut out = [EXPIRY_PREFIX; 9];
        out[1..].copy_from_slice(&at_ms.to_be_bytes());
        out
    }

    /// (committed ms, digest).
    pub fn parse_expiry_key(key: &[u8]) -> Result<(u64, Digest), KeyError> {
        let mut c = Cursor::new(Cf::Ingest, "ingest expiry", key);
        c.tag(EXPIRY_PREFIX)?;
        let at_ms = c.u64()?;
        let digest = c.array()?;
        c.end((at_ms, digest))
    }
}

/// Keys in [`Cf::Commands`].
pub mod commands {
    use super::{Cf, Cursor, KeyError};

    /// CBOR u64: the last command id given out.
    pub const LAST_ID: &[u8] = b"n";
    /// `c` ++ id → CBOR `CommandRecord`.
    pub const RECORD_PREFIX: u8 = b'c';
    /// `p` ++ id → empty: commands still pending.
    pub const PENDING_PREFIX: u8 = b'p';
    /// CBOR u64: how many commands are pending.
    pub const PENDING_COUNT: &[u8] = b"m";
    /// `s` ++ settled ms ++ id → empty: settled commands by age.
    pub const SETTLED_PREFIX: u8 = b's';

    fn id_key(prefix: u8, id: u64) -> [u8; 9] {
        let mut out = [prefix; 9];
        out[1..].copy_from_slice(&id.to_be_bytes());
        out
    }

    fn parse_id_key(layout: &'static str, prefix: u8, key: &[u8]) -> Result<u64, KeyError> {
        let mut c = Cursor::new(Cf::Commands, layout, key);
        c.tag(prefix)?;
        let id = c.u64()?;
        c.end(id)
    }

    pub fn record_key(id: u64) -> [u8; 9] {
        id_key(RECORD_PREFIX, id)
    }

    pub fn parse_record_key(key: &[u8]) -> Result<u64, KeyError> {
        parse_id_key("command record", RECORD_PREFIX, key)
    }

    pub fn pending_key(id: u64) -> [u8; 9] {
        id_key(PENDING_PREFIX, id)
    }

    pub fn parse_pending_key(key: &[u8]) -> Result<u64, KeyError> {
        parse_id_key("pending command", PENDING_PREFIX, key)
    }

    pub fn settled_key(settled_ms: u64, id: u64) -> [u8; 17] {
        let mut out = [SETTLED_PREFIX; 17];
        out[1..9].copy_from_slice(&settled_ms.to_be_bytes());
        out[9..].copy_from_slice(&id.to_be_bytes());
        out
    }

    /// (settled ms, id).
    pub fn parse_settled_key(key: &[u8]) -> Result<(u64, u64), KeyError> {
        let mut c = Cursor::new(Cf::Commands, "settled command", key);
        c.tag(SETTLED_PREFIX)?;
        let at_ms = c.u64()?;
        let id = c.u64()?;
        c.end((at_ms, id))
    }
}

/// `raft_log` key: the entry's index.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn parse_log_key(key: &[u8]) -> Result<u64, KeyError> {
    let mut c = Cursor::new(Cf::RaftLog, "raft log", key);
    let index = c.u64()?;
    c.end(index)
}

/// `leases` key: the lease id.
pub fn lease_id_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

pub fn parse_lease_id_key(key: &[u8]) -> Result<i64, KeyError> {
    let mut c = Cursor::new(Cf::Leases, "lease", key);
    let id = c.u64()? as i64;
    c.end(id)
}

/// Appends `key`, escaped and terminated, to `out`.
pub fn push_escaped(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

pub fn escaped(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    push_escaped(&mut out, key);
    out
}

/// Splits an escaped, terminated key off the front of `bytes`, returning the
/// user key and the rest. `None` if `bytes` is not a valid encoding.
pub fn split_escaped(bytes: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0 {
            match bytes.get(i + 1)? {
                0xFF => key.push(0),
                0x01 => return Some((key, &bytes[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    None
}

/// `kv_history` key: escaped user key ++ revision.
pub fn history_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut out = escaped(key);
    out.extend_from_slice(&(revision as u64).to_be_bytes());
    out
}

/// (user key, revision).
pub fn parse_history_key(key: &[u8]) -> Result<(Vec<u8>, i64), KeyError> {
    let mut c = Cursor::new(Cf::KvHistory, "key history", key);
    let user_key = c.escaped()?;
    let revision = c.u64()? as i64;
    c.end((user_key, revision))
}

/// `kv_changes` key: revision ++ position within the revision.
pub fn change_key(revision: i64, sub: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

/// (revision, position within the revision).
pub fn parse_change_key(key: &[u8]) -> Result<(i64, u32), KeyError> {
    let mut c = Cursor::new(Cf::KvChanges, "change feed", key);
    let revision = c.u64()? as i64;
    let sub = c.u32()?;
    c.end((revision, sub))
}

/// `lease_keys` key: lease id ++ user key. The keys of one lease share the
/// prefix [`lease_id_key`].
pub fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&lease_id_key(lease));
    out.extend_from_slice(key);
    out
}

/// (lease id, user key).
pub fn parse_lease_key(key: &[u8]) -> Result<(i64, &[u8]), KeyError> {
    let mut c = Cursor::new(Cf::LeaseKeys, "lease key", key);
    let lease = c.u64()? as i64;
    Ok((lease, c.rest()))
}

/// `lease_deadlines` key: deadline ++ lease id.
pub fn deadline_key(deadline_ms: u64, lease: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&deadline_ms.to_be_bytes());
    out[8..].copy_from_slice(&(lease as u64).to_be_bytes());
    out
}

/// (deadline ms, lease id).
pub fn parse_deadline_key(key: &[u8]) -> Result<(u64, i64), KeyError> {
    let mut c = Cursor::new(Cf::LeaseDeadlines, "lease deadline", key);
    let deadline_ms = c.u64()?;
    let lease = c.u64()? as i64;
    c.end((deadline_ms, lease))
}

/// A document's key in its collection's column family: its id.
pub fn document_key(id: &str) -> &[u8] {
    id.as_bytes()
}

pub fn parse_document_key(cf: Cf, key: &[u8]) -> Result<&str, KeyError> {
    Cursor::new(cf, "document", key).rest_str()
}

/// The secondary indexes on devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIndex {
    Zone,
    Class,
    Host,
}

/// The tag of [`host_devices_key`] (no index tag is `n`).
const HOST_DEVICES_TAG: u8 = b'n';

impl DeviceIndex {
    const ALL: [DeviceIndex; 3] = [DeviceIndex::Zone, DeviceIndex::Class, DeviceIndex::Host];

    fn tag(self) -> u8 {
        match self {
            DeviceIndex::Zone => b'z',
            DeviceIndex::Class => b'c',
            DeviceIndex::Host => b'h',
        }
    }
}

/// Prefix of every index entry for `value`: tag ++ escaped value.
pub fn device_index_prefix(index: DeviceIndex, value: &str) -> Vec<u8> {
    let mut out = vec![index.tag()];
    push_escaped(&mut out, value.as_bytes());
    out
}

pub fn device_index_key(index: DeviceIndex, value: &str, device: &str) -> Vec<u8> {
    let mut out = device_index_prefix(index, value);
    out.extend_from_slice(device.as_bytes());
    out
}

/// (index, indexed value, device id).
pub fn parse_device_index_key(key: &[u8]) -> Result<(DeviceIndex, String, &str), KeyError> {
    let mut c = Cursor::new(Cf::DeviceIndex, "device index", key);
    let tag = c.array::<1>()?[0];
    let index = DeviceIndex::ALL
        .into_iter()
        .find(|i| i.tag() == tag)
        .ok_or_else(|| c.error("unknown index tag"))?;
    let value = c.escaped_str()?;
    let device = c.rest_str()?;
    Ok((index, value, device))
}

/// `n` ++ escaped host → CBOR u64: how many devices the host has (beside
/// the indexes in [`Cf::DeviceIndex`]).
pub fn host_devices_key(host: &str) -> Vec<u8> {
    let mut out = vec![HOST_DEVICES_TAG];
    push_escaped(&mut out, host.as_bytes());
    out
}

pub fn parse_host_devices_key(key: &[u8]) -> Result<String, KeyError> {
    let mut c = Cursor::new(Cf::DeviceIndex, "host device count", key);
    c.tag(HOST_DEVICES_TAG)?;
    let host = c.escaped_str()?;
    c.end(host)
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for key in [&b""[..], b"a", b"\0", b"a\0b", b"\0\0\xff\x01", b"\xff\xff"] {
            let mut enc = escaped(key);
            enc.extend_from_slice(b"rest");
            let (back, rest) = split_escaped(&enc).unwrap();
            assert_eq!(back, key);
            assert_eq!(rest, b"rest");
        }
    }

    #[test]
    fn escaped_order_is_key_order_then_revision() {
        let keys: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"ab"];
        let mut encoded = vec![];
        for k in keys {
            for rev in [1i64, 2, 300] {
                encoded.push((history_key(k, rev), (k, rev)));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<_> = sorted.into_iter().map(|e| e.1).collect();
        let expected: Vec<_> = encoded.into_iter().map(|e| e.1).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        for bad in [&b"a"[..], b"a\0", b"a\0\x02", b"\0"] {
            assert!(split_escaped(bad).is_none(), "{bad:?}");
        }
        assert!(parse_history_key(&escaped(b"k")).is_err());
    }

    #[test]
    fn change_and_history_keys_parse_back() {
        assert_eq!(parse_change_key(&change_key(42, 3)), Ok((42, 3)));
        assert_eq!(
            parse_history_key(&history_key(b"k\0", 9)),
            Ok((b"k\0".to_vec(), 9))
        );
        assert!(change_key(1, 9) < change_key(2, 0));
    }

    /// Checks that `parse` gives back what `key` was encoded from.
    fn check<T: PartialEq + std::fmt::Debug>(
        key: &[u8],
        parse: impl Fn(&[u8]) -> Result<T, KeyError>,
        want: T,
    ) {
        assert_eq!(parse(key), Ok(want), "{}", crate::printable_key(key));
    }

    #[test]
    fn every_layout_parses_back_what_it_encodes() {
        let digest = [7u8; 16];
        check(&log_key(0), parse_log_key, 0);
        check(&log_key(u64::MAX), parse_log_key, u64::MAX);
        check(&lease_id_key(5), parse_lease_id_key, 5);
        check(&lease_id_key(i64::MAX), parse_lease_id_key, i64::MAX);
        for user_key in [&b""[..], b"k", b"\0\xff\0", b"a/b"] {
            check(
                &history_key(user_key, 3),
                parse_history_key,
                (user_key.to_vec(), 3),
            );
            check(
                &lease_key(9, user_key),
                |k| parse_lease_key(k).map(|(l, u)| (l, u.to_vec())),
                (9, user_key.to_vec()),
            );
        }
        check(&change_key(0, 0), parse_change_key, (0, 0));
        check(
            &change_key(i64::MAX, u32::MAX),
            parse_change_key,
            (i64::MAX, u32::MAX),
        );
        check(&deadline_key(1_000, 4), parse_deadline_key, (1_000, 4));
        for id in ["", "gw1/thermo/7", "é"] {
            check(
                document_key(id),
                |k| parse_document_key(Cf::Devices, k).map(str::to_string),
                id.to_string(),
            );
        }
        for (index, value, device) in [
            (DeviceIndex::Zone, "hall", "gw1/thermo/7"),
            (DeviceIndex::Class, "", "x"),
            (DeviceIndex::Host, "h\0st", ""),
        ] {
            check(
                &device_index_key(index, value, device),
                |k| parse_device_index_key(k).map(|(i, v, d)| (i, v, d.to_string())),
                (index, value.to_string(), device.to_string()),
            );
            assert!(device_index_key(index, value, device)
                .starts_with(&device_index_prefix(index, value)));
        }
        check(
            &host_devices_key("gw\0x"),
            parse_host_devices_key,
            "gw\0x".to_string(),
        );
        check(&ingest::weight_key(3), ingest::parse_weight_key, 3);
        check(
            &ingest::dedupe_key(&digest),
            ingest::parse_dedupe_key,
            digest,
        );
        check(
            &ingest::expiry_key(12, &digest),
            ingest::parse_expiry_key,
            (12, digest),
        );
        assert!(ingest::expiry_bound(12)[..] <= ingest::expiry_key(12, &[0; 16])[..]);
        assert!(ingest::expiry_key(11, &[0xff; 16])[..] < ingest::expiry_bound(12)[..]);
        check(&commands::record_key(8), commands::parse_record_key, 8);
        check(&commands::pending_key(8), commands::parse_pending_key, 8);
        check(
            &commands::settled_key(5, 8),
            commands::parse_settled_key,
            (5, 8),
        );
    }

    /// Garbage is refused with the layout and the key named, never a panic.
    #[test]
    fn malformed_keys_are_refused_never_a_panic() {
        type Parser = fn(&[u8]) -> Result<(), KeyError>;
        let parsers: [(&str, Parser); 14] = [
            ("raft log", |k| parse_log_key(k).map(drop)),
            ("lease", |k| parse_lease_id_key(k).map(drop)),
            ("key history", |k| parse_history_key(k).map(drop)),
            ("change feed", |k| parse_change_key(k).map(drop)),
            ("lease key", |k| parse_lease_key(k).map(drop)),
            ("lease deadline", |k| parse_deadline_key(k).map(drop)),
            ("device index", |k| parse_device_index_key(k).map(drop)),
            ("host device count", |k| parse_host_devices_key(k).map(drop)),
            ("ingest weight", |k| ingest::parse_weight_key(k).map(drop)),
            ("ingest dedupe", |k| ingest::parse_dedupe_key(k).map(drop)),
            ("ingest expiry", |k| ingest::parse_expiry_key(k).map(drop)),
            ("command record", |k| {
                commands::parse_record_key(k).map(drop)
            }),
            ("pending command", |k| {
                commands::parse_pending_key(k).map(drop)
            }),
            ("settled command", |k| {
                commands::parse_settled_key(k).map(drop)
            }),
        ];
        let garbage: [&[u8]; 7] = [
            b"",
            b"x",
            b"\0\x01",
            b"w\0\0\0\0\0\0\0",
            b"z\xff\0\x02",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"n\xc3\0\x01",
        ];
        for (layout, parse) in parsers {
            for key in garbage {
                if let Err(e) = parse(key) {
                    assert_eq!(e.layout, layout);
                    assert_eq!(e.key, key);
                    let text = StoreError::from(e).to_string();
                    assert!(text.contains(layout), "{text}");
                }
            }
        }
        // Each garbage key is refused by the parsers it cannot belong to.
        let refused = |parse: Parser, keys: &[&[u8]]| {
            for key in keys {
                assert!(parse(key).is_err(), "{}", crate::printable_key(key));
            }
        };
        refused(
            |k| parse_log_key(k).map(drop),
            &[b"", b"1234567", b"123456789"],
        );
        refused(
            |k| parse_change_key(k).map(drop),
            &[b"12345678", b"1234567890123"],
        );
        refused(
            |k| parse_history_key(k).map(drop),
            &[b"k\0\x01", b"k\0\x011234567", b"k"],
        );
        refused(|k| parse_lease_key(k).map(drop), &[b"1234567"]);
        refused(
            |k| parse_device_index_key(k).map(drop),
            &[b"", b"q\0\x01", b"z\xff\0\x01", b"zv\0\x01\xff"],
        );
        refused(
            |k| parse_host_devices_key(k).map(drop),
            &[b"h\0\x01", b"nx\0\x01!", b"n\xc3\0\x01"],
        );
        refused(
            |k| ingest::parse_weight_key(k).map(drop),
            &[b"w", b"w12345678!", b"d12345678"],
        );
        refused(
            |k| ingest::parse_dedupe_key(k).map(drop),
            &[b"d", b"d123456789012345", b"d12345678901234567"],
        );
        refused(
            |k| ingest::parse_expiry_key(k).map(drop),
            &[b"x", b"x12345678", b"x123456781234567890123456!"],
        );
        refused(
            |k| commands::parse_settled_key(k).map(drop),
            &[b"s", b"s1234567812345678!", b"c1234567812345678"],
        );
        refused(
            |k| commands::parse_pending_key(k).map(drop),
            &[b"p12345678!", b"c12345678"],
        );
        assert!(parse_document_key(Cf::Zones, b"\xff").is_err());
    }

    #[test]
    fn prefix_end_cases() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn collections_and_cfs_parse_by_name() {
        for c in Collection::ALL {
            assert_eq!(Collection::parse(c.name()), Some(c));
        }
        assert_eq!(Collection::parse("nope"), None);
        for cf in Cf::ALL {
            assert_eq!(Cf::from_name(cf.name()), Some(cf));
        }
    }
}

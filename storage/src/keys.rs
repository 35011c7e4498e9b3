//! Column families and key encodings.
//!
//! Every byte layout on disk is defined here, so that a reader can check the
//! whole format in one file. Integers are big-endian so that RocksDB's
//! bytewise order is numeric order. User keys embedded in composite keys are
//! escaped (`0x00` → `0x00 0xFF`, terminated by `0x00 0x01`) so that the
//! composite order is the user-key order, then the suffix order.

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
    /// Users, roles and whether authentication is on; see [`auth`].
    Auth,
}

impl Cf {
    pub const ALL: [Cf; 19] = [
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
        Cf::Auth,
    ];

    /// The column families that make up the state machine (everything but
    /// the Raft log and its metadata); a snapshot holds exactly these.
    pub const STATE_MACHINE: [Cf; 17] = [
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
        Cf::Auth,
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
            Cf::Auth => "auth",
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

/// Keys in [`Cf::Ingest`].
pub mod ingest {
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

    pub fn weight_key(node: u64) -> [u8; 9] {
        let mut out = [WEIGHT_PREFIX; 9];
        out[1..].copy_from_slice(&node.to_be_bytes());
        out
    }

    pub fn dedupe_key(digest: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + digest.len());
        out.push(DEDUPE_PREFIX);
        out.extend_from_slice(digest);
        out
    }

    pub fn expiry_key(at_ms: u64, digest: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + digest.len());
        out.push(EXPIRY_PREFIX);
        out.extend_from_slice(&at_ms.to_be_bytes());
        out.extend_from_slice(digest);
        out
    }
}

/// Keys in [`Cf::Commands`].
pub mod commands {
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

    pub fn settled_key(settled_ms: u64, id: u64) -> [u8; 17] {
        let mut out = [SETTLED_PREFIX; 17];
        out[1..9].copy_from_slice(&settled_ms.to_be_bytes());
        out[9..].copy_from_slice(&id.to_be_bytes());
        out
    }

    pub fn record_key(id: u64) -> [u8; 9] {
        let mut out = [RECORD_PREFIX; 9];
        out[1..].copy_from_slice(&id.to_be_bytes());
        out
    }

    pub fn pending_key(id: u64) -> [u8; 9] {
        let mut out = [PENDING_PREFIX; 9];
        out[1..].copy_from_slice(&id.to_be_bytes());
        out
    }
}

/// Keys in [`Cf::Auth`].
pub mod auth {
    /// CBOR `AuthMeta`: enabled, the token-signing key, the auth revision.
    pub const META: &[u8] = b"m";
    /// `u` ++ user name → CBOR `UserRecord`.
    pub const USER_PREFIX: u8 = b'u';
    /// `r` ++ role name → CBOR `RoleRecord`.
    pub const ROLE_PREFIX: u8 = b'r';

    pub fn user_key(name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + name.len());
        out.push(USER_PREFIX);
        out.extend_from_slice(name.as_bytes());
        out
    }

    pub fn role_key(name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + name.len());
        out.push(ROLE_PREFIX);
        out.extend_from_slice(name.as_bytes());
        out
    }
}

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn parse_u64_key(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
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

pub fn parse_history_key(bytes: &[u8]) -> Option<(Vec<u8>, i64)> {
    let (key, rest) = split_escaped(bytes)?;
    if rest.len() != 8 {
        return None;
    }
    Some((key, parse_u64_key(rest)? as i64))
}

/// `kv_changes` key: revision ++ position within the revision.
pub fn change_key(revision: i64, sub: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

pub fn parse_change_key(bytes: &[u8]) -> Option<(i64, u32)> {
    if bytes.len() != 12 {
        return None;
    }
    let rev = parse_u64_key(&bytes[..8])? as i64;
    let sub = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
    Some((rev, sub))
}

/// `lease_keys` key: lease id ++ user key.
pub fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&(lease as u64).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// `lease_deadlines` key: deadline ++ lease id.
pub fn deadline_key(deadline_ms: u64, lease: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&deadline_ms.to_be_bytes());
    out[8..].copy_from_slice(&(lease as u64).to_be_bytes());
    out
}

/// The secondary indexes on devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIndex {
    Zone,
    Class,
    Host,
}

impl DeviceIndex {
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

/// `n` ++ escaped host → CBOR u64: how many devices the host has (beside
/// the indexes in [`Cf::DeviceIndex`]; no index tag is `n`).
pub fn host_devices_key(host: &str) -> Vec<u8> {
    let mut out = vec![b'n'];
    push_escaped(&mut out, host.as_bytes());
    out
}

pub fn device_index_key(index: DeviceIndex, value: &str, device: &str) -> Vec<u8> {
    let mut out = device_index_prefix(index, value);
    out.extend_from_slice(device.as_bytes());
    out
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
        assert!(parse_history_key(&escaped(b"k")).is_none());
    }

    #[test]
    fn change_and_history_keys_parse_back() {
        assert_eq!(parse_change_key(&change_key(42, 3)), Some((42, 3)));
        assert_eq!(
            parse_history_key(&history_key(b"k\0", 9)),
            Some((b"k\0".to_vec(), 9))
        );
        assert!(change_key(1, 9) < change_key(2, 0));
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

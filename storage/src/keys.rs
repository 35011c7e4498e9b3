//! Column families and key encodings.
//!
//! Every byte layout on disk is defined here, so that a reader can check the
//! whole format in one file (which is why it is longer than most), and no
//! other file builds or slices a key by offset: each layout has an encoder
//! and a parser, and the parser refuses
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
//! | `auth` | `m`, `u` ++ user name, `r` ++ role name | [`auth`] |
//! | `mirror_feed` (this node's, not replicated) | `s`, `c` ++ log index ++ target ++ id | [`mirror_feed`] |
//!
//! This file is longer than most on purpose: the whole on-disk format in
//! one place. Its tests are in `keys/tests.rs`.

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
    /// Users, roles and whether authentication is on; see [`auth`].
    Auth,
    /// Which documents and keys each applied batch wrote, by log index:
    /// what the MongoDB mirror tails. This node's own record (not part of
    /// the state machine, snapshots or backups); see [`mirror_feed`].
    MirrorFeed,
}

impl Cf {
    pub const ALL: [Cf; 20] = [
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
        Cf::MirrorFeed,
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
            Cf::MirrorFeed => "mirror_feed",
        }
    }

    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.name() == name)
    }
}

/// The document collections served over the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// CBOR u64: the term of the last log entry applied, whose election
    /// is counted in its leader's stats (`apply/stats.rs`).
    pub const STATS_TERM: &[u8] = b"stats_term";
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
    /// `c` ++ class name (UTF-8) → CBOR `ClassRulesRecord`: the accepted
    /// configuration of a device class, as ingest checks data against it.
    pub const CLASS_PREFIX: u8 = b'c';

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

    pub fn class_key(class: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + class.len());
        out.push(CLASS_PREFIX);
        out.extend_from_slice(class.as_bytes());
        out
    }

    pub fn parse_class_key(key: &[u8]) -> Result<&str, KeyError> {
        let mut c = Cursor::new(Cf::Ingest, "ingest class", key);
        c.tag(CLASS_PREFIX)?;
        let class = c.rest_str()?;
        c.end(class)
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

/// Keys in [`Cf::MirrorFeed`]: for every applied batch, one key per
/// document or key-value pair it wrote, under the batch's last log index,
/// so that a reader resuming after index N finds everything written since.
/// Node-local: a node that installs a snapshot restarts its feed after the
/// snapshot's index (`START` says from which index it is complete). Kept
/// only on members opened with the feed (`mongodb.enabled`); elsewhere it
/// is empty and its `START` is [`START_OFF`](mirror_feed::START_OFF).
pub mod mirror_feed {
    use super::{Cf, Collection, Cursor, KeyError};

    /// u64 big-endian: the lowest log index from which the feed holds
    /// every write (older entries were trimmed, or replaced by a snapshot).
    pub const START: &[u8] = b"s";
    /// The `START` of a member that keeps no feed (opened without it): no
    /// log index reaches it, so no mirror resumes from this member's feed,
    /// and a member that turns the feed on starts it after what it has
    /// applied.
    pub const START_OFF: u64 = u64::MAX;
    /// `c` ++ log index ++ target tag ++ id → u64 big-endian: the proposal
    /// time (`at_ms`) of the batch's last event.
    pub const CHANGE_PREFIX: u8 = b'c';

    /// What a feed entry names: a document of a collection, or a key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Target {
        Document(Collection),
        Kv,
    }

    impl Target {
        fn tag(self) -> u8 {
            match self {
                Target::Document(Collection::Devices) => b'd',
                Target::Document(Collection::Zones) => b'z',
                Target::Document(Collection::Fellows) => b'f',
                Target::Document(Collection::DbServers) => b'b',
                Target::Document(Collection::XmlConfigs) => b'x',
                Target::Document(Collection::Stats) => b's',
                Target::Kv => b'k',
            }
        }

        fn of_tag(tag: u8) -> Option<Target> {
            [
                Collection::Devices,
                Collection::Zones,
                Collection::Fellows,
                Collection::DbServers,
                Collection::XmlConfigs,
                Collection::Stats,
            ]
            .into_iter()
            .map(Target::Document)
            .chain([Target::Kv])
            .find(|t| t.tag() == tag)
        }

        /// The target a write to `cf` is, if the feed records it.
        pub fn of_cf(cf: Cf) -> Option<Target> {
            if cf == Cf::Kv {
                return Some(Target::Kv);
            }
            Collection::ALL
                .into_iter()
                .find(|c| c.cf() == cf)
                .map(Target::Document)
        }
    }

    pub fn change_key(index: u64, target: Target, id: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + id.len());
        out.push(CHANGE_PREFIX);
        out.extend_from_slice(&index.to_be_bytes());
        out.push(target.tag());
        out.extend_from_slice(id);
        out
    }

    /// The first key of log index `index`'s entries.
    pub fn index_start(index: u64) -> [u8; 9] {
        let mut out = [CHANGE_PREFIX; 9];
        out[1..].copy_from_slice(&index.to_be_bytes());
        out
    }

    /// (log index, target, id).
    pub fn parse_change_key(key: &[u8]) -> Result<(u64, Target, &[u8]), KeyError> {
        let mut c = Cursor::new(Cf::MirrorFeed, "mirror feed change", key);
        c.tag(CHANGE_PREFIX)?;
        let index = c.u64()?;
        let [tag] = c.array::<1>()?;
        let target = Target::of_tag(tag).ok_or_else(|| c.error("unknown target"))?;
        Ok((index, target, c.rest()))
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

/// Keys in [`Cf::Auth`].
pub mod auth {
    use super::{Cf, Cursor, KeyError};

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

    /// The user name of a [`user_key`].
    pub fn parse_user_key(key: &[u8]) -> Result<String, KeyError> {
        let mut c = Cursor::new(Cf::Auth, "auth user", key);
        c.tag(USER_PREFIX)?;
        let name = c.rest_str()?.to_string();
        c.end(name)
    }

    /// The role name of a [`role_key`].
    pub fn parse_role_key(key: &[u8]) -> Result<String, KeyError> {
        let mut c = Cursor::new(Cf::Auth, "auth role", key);
        c.tag(ROLE_PREFIX)?;
        let name = c.rest_str()?.to_string();
        c.end(name)
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

/// The bounds `[start, end)` of every key that starts with the one-byte
/// `tag` (the keys of one layout in [`ingest`] or [`commands`]).
pub fn tag_bounds(tag: u8) -> ([u8; 1], [u8; 1]) {
    debug_assert!(tag < 0xFF, "no tag is 0xFF");
    ([tag], [tag + 1])
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
mod tests;

//! What the adapter writes into ZooKeeper, as pure functions of utopia's
//! state: the paths, a member's own node, and the leader's shared nodes.
//! No I/O here; [`super`] does the talking.
//!
//! Under `/utopia/<cluster_name>` (inside the configured chroot):
//!
//! | node | kind | written by | data |
//! | --- | --- | --- | --- |
//! | `fellows/<node_id>` | ephemeral | that member | [`FellowNode`], JSON |
//! | `mqtt_servers` | persistent | the leader | entries, one a line; a child node per entry |
//! | `db_servers` | persistent | the leader | entries, one a line; a child node per entry |
//! | `warnings/config_failing` | persistent, only while a member fails | the leader | [`ConfigWarning`]s, a JSON array |
//! | `<initial_cluster_node>` | persistent | the operator | `ID=HOST:PORT,...` |
//!
//! An entry is seed 000's `host:port:type`: `10.0.0.3:27017:mongodb` for
//! a database server, `10.0.0.5:1883:mqtt` (or `:mqtts` over TLS) for a
//! broker.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utopia_storage::documents::{DbServer, DbServerState, Fellow};

/// Most entries in one list node; more are left out and counted.
pub const ENTRIES_MAX: usize = 1000;
/// Most fellows read, by the leader from ZooKeeper or from the fellows
/// collection.
pub const FELLOWS_MAX: usize = 1000;
/// Largest node this adapter reads, in bytes: ZooKeeper's own default
/// (`jute.maxbuffer`) is 1 MiB.
pub const NODE_BYTES_MAX: usize = 1 << 20;

/// The paths of one cluster's nodes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub base: String,
    pub fellows: String,
    pub mqtt_servers: String,
    pub db_servers: String,
    pub warnings: String,
    pub config_failing: String,
}

impl Paths {
    /// The paths of cluster `cluster_name` (a node name, checked with the
    /// settings).
    pub fn new(cluster_name: &str) -> Paths {
        let base = format!("/utopia/{cluster_name}");
        Paths {
            fellows: format!("{base}/fellows"),
            mqtt_servers: format!("{base}/mqtt_servers"),
            db_servers: format!("{base}/db_servers"),
            warnings: format!("{base}/warnings"),
            config_failing: format!("{base}/warnings/config_failing"),
            base,
        }
    }

    pub fn fellow(&self, node_id: u64) -> String {
        format!("{}/{node_id}", self.fellows)
    }

    /// The node holding the initial cluster, named by the settings.
    pub fn initial_cluster(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

/// A member's own node, `fellows/<node_id>`: what seed 000's fellows
/// table holds of it, and the brokers it is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FellowNode {
    pub id: u64,
    /// The host clients reach it at.
    pub host: String,
    pub client_addr: String,
    /// Its address in the membership (empty: not a member yet).
    pub peer_addr: String,
    /// `leader`, `follower`, `learner`, `candidate`, or `none` (not a
    /// member yet).
    pub role: String,
    /// `active` (a member that knows its leader), `no_leader`, or
    /// `joining` (waiting to be added to a cluster).
    pub state: String,
    /// The leader it knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// Its MQTT brokers, as entries (`host:port:mqtt` or `:mqtts`).
    #[serde(default)]
    pub mqtt_servers: Vec<String>,
}

impl FellowNode {
    /// This member's node from its Raft status (its peer address is its
    /// address in the membership) and the address clients reach it at.
    pub fn of(
        status: &utopia_raft::NodeStatus,
        client_addr: &str,
        mqtt_servers: Vec<String>,
    ) -> FellowNode {
        use utopia_raft::Role;
        let member = status.members.get(&status.id);
        let role = match (member, status.role) {
            (None, _) => "none",
            (Some(_), Role::Leader) => "leader",
            (Some(_), Role::Candidate) => "candidate",
            (Some((_, false)), _) => "learner",
            (Some((_, true)), _) => "follower",
        };
        let state = match (member, status.leader) {
            (None, _) => "joining",
            (Some(_), Some(_)) => "active",
            (Some(_), None) => "no_leader",
        };
        FellowNode {
            id: status.id,
            host: host_of(client_addr).to_string(),
            client_addr: client_addr.to_string(),
            peer_addr: member.map(|(a, _)| a.clone()).unwrap_or_default(),
            role: role.to_string(),
            state: state.to_string(),
            leader: status.leader,
            mqtt_servers,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always encodes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The host of `HOST:PORT` (brackets of an IPv6 address kept).
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// An entry is also a node name under its list: no `/`, not `.` or `..`,
/// printable, bounded.
pub fn is_entry(entry: &str) -> bool {
    !entry.is_empty()
        && entry.len() <= 255
        && entry != "."
        && entry != ".."
        && entry.chars().all(|c| c.is_ascii_graphic() && c != '/')
}

/// This member's brokers (host, port, over TLS) as entries:
/// `host:port:mqtt`, or `:mqtts` over TLS. A host that cannot be an entry
/// is left out (and returned apart).
pub fn mqtt_entries<'a>(
    brokers: impl IntoIterator<Item = (&'a str, u16, bool)>,
) -> (Vec<String>, Vec<String>) {
    let mut entries = BTreeSet::new();
    let mut refused = Vec::new();
    for (host, port, tls) in brokers {
        let kind = if tls { "mqtts" } else { "mqtt" };
        let entry = format!("{host}:{port}:{kind}");
        if is_entry(&entry) {
            entries.insert(entry);
        } else {
            refused.push(entry);
        }
    }
    (entries.into_iter().collect(), refused)
}

/// The cluster's brokers: the union of what the members' nodes say, at
/// most [`ENTRIES_MAX`]. A node that does not decode is skipped (and
/// counted by the caller through the returned number).
pub fn cluster_mqtt_entries<'a>(
    nodes: impl IntoIterator<Item = &'a [u8]>,
) -> (BTreeSet<String>, usize) {
    let mut entries = BTreeSet::new();
    let mut undecodable = 0;
    for data in nodes {
        match serde_json::from_slice::<FellowNode>(data) {
            Ok(f) => {
                for e in f.mqtt_servers.into_iter().filter(|e| is_entry(e)) {
                    if entries.len() < ENTRIES_MAX {
                        entries.insert(e);
                    }
                }
            }
            Err(_) => undecodable += 1,
        }
    }
    (entries, undecodable)
}

/// The database servers known alive (state ok), as entries: seed 000's
/// "currently-known-as-alive db servers", `host:port:type`.
pub fn db_entries<'a>(servers: impl IntoIterator<Item = &'a DbServer>) -> BTreeSet<String> {
    servers
        .into_iter()
        .filter(|s| s.state == DbServerState::Ok)
        .map(|s| format!("{}:{}:{}", s.host, s.port, s.kind))
        .filter(|e| is_entry(e))
        .take(ENTRIES_MAX)
        .collect()
}

/// A list node's data: its entries, one a line.
pub fn list_data(entries: &BTreeSet<String>) -> Vec<u8> {
    let mut out = String::new();
    for e in entries {
        out.push_str(e);
        out.push('\n');
    }
    out.into_bytes()
}

/// A configuration a member could not write and verify, and ignores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWarning {
    pub node: u64,
    pub name: String,
    pub version: u64,
    pub reason: String,
    pub since_ms: u64,
}

/// The warnings for configurations members fail to apply, from the
/// fellows collection; `None` when there are none (the node is removed).
pub fn config_warnings<'a>(fellows: impl IntoIterator<Item = &'a Fellow>) -> Option<Vec<u8>> {
    let warnings: Vec<ConfigWarning> = fellows
        .into_iter()
        .flat_map(|f| {
            f.config_failing.iter().map(|c| ConfigWarning {
                node: f.id,
                name: c.name.clone(),
                version: c.version,
                reason: c.reason.clone(),
                since_ms: c.since_ms,
            })
        })
        .take(ENTRIES_MAX)
        .collect();
    if warnings.is_empty() {
        return None;
    }
    serde_json::to_vec(&warnings).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use utopia_storage::documents::{FellowConfigFailing, OtherFields};

    fn db(host: &str, port: u16, kind: &str, state: DbServerState) -> DbServer {
        DbServer {
            id: format!("{host}:{port}:{kind}"),
            host: host.into(),
            port,
            kind: kind.into(),
            state,
            reason: None,
            first_seen_ms: 1,
            updated_ms: 2,
            other: OtherFields::new(),
        }
    }

    #[test]
    fn db_servers_are_the_ok_ones_in_seed_form() {
        let servers = [
            db("10.0.0.3", 12345, "mongodb", DbServerState::Ok),
            db("10.0.0.4", 27017, "mongodb", DbServerState::Problematic),
            db("bad/host", 1, "mongodb", DbServerState::Ok),
        ];
        let entries = db_entries(&servers);
        assert_eq!(
            entries.into_iter().collect::<Vec<_>>(),
            vec!["10.0.0.3:12345:mongodb".to_string()]
        );
    }

    #[test]
    fn brokers_are_entries_with_their_transport() {
        let plain = ("10.0.0.5", 1883, false);
        let tls = ("broker.example.com", 8883, true);
        let odd = ("a/b", 1, false);
        let (entries, refused) = mqtt_entries([plain, tls, plain, odd]);
        assert_eq!(
            entries,
            vec!["10.0.0.5:1883:mqtt", "broker.example.com:8883:mqtts"]
        );
        assert_eq!(refused, vec!["a/b:1:mqtt"]);
    }

    #[test]
    fn the_cluster_brokers_are_the_union_of_the_members_and_garbage_is_counted() {
        let node = |id: u64, mqtt: &[&str]| {
            FellowNode {
                id,
                host: "h".into(),
                client_addr: "h:1".into(),
                peer_addr: "h:2".into(),
                role: "follower".into(),
                state: "active".into(),
                leader: Some(1),
                mqtt_servers: mqtt.iter().map(|s| s.to_string()).collect(),
            }
            .encode()
        };
        let a = node(1, &["b1:1883:mqtt", "b2:1883:mqtt"]);
        let b = node(2, &["b2:1883:mqtt", "x/y:1:mqtt"]);
        let (entries, bad) = cluster_mqtt_entries([&a[..], &b[..], b"not json"]);
        assert_eq!(
            entries.into_iter().collect::<Vec<_>>(),
            vec!["b1:1883:mqtt", "b2:1883:mqtt"]
        );
        assert_eq!(bad, 1);
    }

    #[test]
    fn list_data_is_one_entry_a_line() {
        let e: BTreeSet<String> = ["b:1:mqtt".to_string(), "a:1:mqtt".to_string()].into();
        assert_eq!(list_data(&e), b"a:1:mqtt\nb:1:mqtt\n");
        assert_eq!(list_data(&BTreeSet::new()), b"");
    }

    #[test]
    fn config_warnings_name_the_member_and_the_version_or_are_none() {
        let mut f = Fellow::new(2);
        assert_eq!(config_warnings([&f]), None);
        f.config_failing.push(FellowConfigFailing {
            name: "thermo".into(),
            version: 3,
            reason: "hash mismatch".into(),
            since_ms: 7,
        });
        let data = config_warnings([&Fellow::new(1), &f]).expect("a warning");
        let w: Vec<ConfigWarning> = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            w,
            vec![ConfigWarning {
                node: 2,
                name: "thermo".into(),
                version: 3,
                reason: "hash mismatch".into(),
                since_ms: 7
            }]
        );
    }

    #[test]
    fn entries_are_node_names() {
        for ok in ["10.0.0.3:12345:mongodb", "[::1]:1883:mqtt"] {
            assert!(is_entry(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b:1:mqtt", "a b:1:mqtt"] {
            assert!(!is_entry(bad), "{bad:?}");
        }
    }
}

//! The `zookeeper` group of `utopiad.conf`: the ZooKeeper adapter (the
//! `zookeeper` cargo feature, `src/adapters/zookeeper/`). The settings
//! exist in every build; a binary built without the feature refuses to
//! start when `hosts` is set ([`ZookeeperSettings::problem`]).

use serde::{de, Deserialize, Deserializer, Serialize};

use super::rules::In;

/// Most ZooKeeper hosts in `hosts`.
pub const HOSTS_MAX: usize = 64;
/// ZooKeeper's own session bounds are 2 to 20 ticks of the server; these
/// are the widest any server grants.
pub const SESSION_TIMEOUT_MS_MIN: u64 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: u64 = 600_000;
/// Longest wait for anything ZooKeeper is asked (a connection, a read, a
/// write), and longest backoff between attempts: ten minutes.
pub const WAIT_MS_MAX: u64 = 600_000;

/// Everything under `zookeeper = { ... }`. Off while `hosts` is empty.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZookeeperSettings {
    /// The ZooKeeper servers, `HOST:PORT` each; the client fails over
    /// between them. Empty: the adapter is off.
    #[serde(deserialize_with = "hosts")]
    pub hosts: Vec<String>,
    /// A path every node of the adapter lives under (ZooKeeper's chroot),
    /// such as `/site-a`; empty: the root.
    #[serde(deserialize_with = "chroot")]
    pub chroot: String,
    /// The session timeout asked of ZooKeeper, in milliseconds: this
    /// member's node disappears this long after it stops answering.
    #[serde(deserialize_with = "In::<SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX>::de")]
    pub session_timeout_ms: u64,
    /// How long one connection attempt (to every host in turn) may take,
    /// and each request after it, in milliseconds.
    #[serde(deserialize_with = "In::<100, WAIT_MS_MAX>::de")]
    pub request_timeout_ms: u64,
    /// How often this member compares what ZooKeeper holds with what it
    /// should hold (and rewrites what differs), in milliseconds.
    #[serde(deserialize_with = "In::<100, WAIT_MS_MAX>::de")]
    pub refresh_interval_ms: u64,
    /// Wait after the first failed session before the next attempt, in
    /// milliseconds; doubles per failure up to `retry_backoff_ms_max`.
    #[serde(deserialize_with = "In::<10, WAIT_MS_MAX>::de")]
    pub retry_backoff_ms: u64,
    #[serde(deserialize_with = "In::<10, WAIT_MS_MAX>::de")]
    pub retry_backoff_ms_max: u64,
    /// The name of a node under `/utopia/<cluster_name>/` holding the
    /// initial cluster (`ID=HOST:PORT,...`) a new data directory starts
    /// with, when neither `initial_cluster` nor `--join` is given. Empty:
    /// never read.
    #[serde(deserialize_with = "node_name")]
    pub initial_cluster_node: String,
    /// How long a new member waits for that node to exist before it
    /// refuses to start, in milliseconds.
    #[serde(deserialize_with = "In::<0, WAIT_MS_MAX>::de")]
    pub initial_cluster_wait_ms: u64,
}

impl Default for ZookeeperSettings {
    fn default() -> Self {
        ZookeeperSettings {
            hosts: Vec::new(),
            chroot: String::new(),
            session_timeout_ms: 10_000,
            request_timeout_ms: 5_000,
            refresh_interval_ms: 1_000,
            retry_backoff_ms: 200,
            retry_backoff_ms_max: 10_000,
            initial_cluster_node: String::new(),
            initial_cluster_wait_ms: 60_000,
        }
    }
}

impl ZookeeperSettings {
    pub fn enabled(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The connection string of the client: `h1:p1,h2:p2/chroot`.
    pub fn connect_string(&self) -> String {
        format!("{}{}", self.hosts.join(","), self.chroot)
    }

    /// What is wrong with this combination of settings in a binary built
    /// with (`built_in`) or without the `zookeeper` feature, for a cluster
    /// named `cluster_name` (a node name in ZooKeeper), if anything.
    pub fn problem(&self, built_in: bool, cluster_name: &str) -> Option<String> {
        if self.enabled() && !built_in {
            return Some(
                "zookeeper.hosts is set, but this utopiad was built without the `zookeeper` \
                 feature: build it with `cargo build --features zookeeper`, or leave \
                 zookeeper.hosts empty"
                    .to_string(),
            );
        }
        if self.retry_backoff_ms > self.retry_backoff_ms_max {
            return Some(format!(
                "zookeeper.retry_backoff_ms ({}) must not be greater than zookeeper.retry_backoff_ms_max ({})",
                self.retry_backoff_ms, self.retry_backoff_ms_max
            ));
        }
        if self.enabled() && !is_node_name(cluster_name) {
            return Some(format!(
                "cluster_name {cluster_name:?} names the ZooKeeper node /utopia/<cluster_name>: \
                 it must be letters, digits, . _ - (at most 255, not . or ..)"
            ));
        }
        if !self.initial_cluster_node.is_empty() && !self.enabled() {
            return Some("zookeeper.initial_cluster_node needs zookeeper.hosts".to_string());
        }
        None
    }
}

/// `hosts`: `HOST:PORT` each (a name or an IP address, and a port
/// 1..=65535), at most [`HOSTS_MAX`], none twice.
fn hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let hosts = Vec::<String>::deserialize(d)?;
    if hosts.len() > HOSTS_MAX {
        return Err(de::Error::custom(format_args!(
            "at most {HOSTS_MAX} hosts, found {}",
            hosts.len()
        )));
    }
    for (i, h) in hosts.iter().enumerate() {
        check_host(h).map_err(de::Error::custom)?;
        if hosts[..i].contains(h) {
            return Err(de::Error::custom(format_args!("host {h:?} appears twice")));
        }
    }
    Ok(hosts)
}

/// One ZooKeeper host, `HOST:PORT` (an IPv6 address in brackets).
pub fn check_host(h: &str) -> Result<(), String> {
    let (host, port) = h
        .rsplit_once(':')
        .ok_or_else(|| format!("host {h:?} is not HOST:PORT such as 127.0.0.1:2181"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("host {h:?}: port {port:?} is not 1..65535")),
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let name_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !name_ok || h.contains([',', '/']) {
        return Err(format!(
            "host {h:?}: {host:?} is not a host name or an IP address"
        ));
    }
    Ok(())
}

/// `chroot`: empty, or an absolute ZooKeeper path without a trailing `/`.
fn chroot<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(s);
    }
    if !s.starts_with('/') || s.ends_with('/') || s.len() > 1024 {
        return Err(de::Error::custom(format_args!(
            "chroot {s:?} must be an absolute path such as \"/site-a\", without a trailing /"
        )));
    }
    if s.split('/').skip(1).any(|part| !is_node_name(part)) {
        return Err(de::Error::custom(format_args!(
            "chroot {s:?}: every part must be a node name (letters, digits, . _ -), not . or .."
        )));
    }
    Ok(s)
}

/// `initial_cluster_node`: empty, or one node name.
fn node_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.is_empty() && !is_node_name(&s) {
        return Err(de::Error::custom(format_args!(
            "{s:?} is not a node name (letters, digits, . _ -, at most 255, not . or ..)"
        )));
    }
    Ok(s)
}

/// A ZooKeeper node name this adapter writes or reads: a conservative
/// subset of what ZooKeeper allows.
pub fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_host_and_port() {
        for ok in ["127.0.0.1:2181", "zk-1.example.com:2181", "[::1]:2181"] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "zk:0",
            "zk:99999",
            ":2181",
            "a,b:2181",
            "zk/x:2181",
            "z k:2181",
        ] {
            assert!(check_host(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn without_the_feature_hosts_are_refused_by_name() {
        let s = ZookeeperSettings {
            hosts: vec!["127.0.0.1:2181".into()],
            ..Default::default()
        };
        let problem = s.problem(false, "utopia").expect("refused");
        assert!(problem.contains("`zookeeper` feature"), "{problem}");
        assert_eq!(s.problem(true, "utopia"), None);
        assert_eq!(ZookeeperSettings::default().problem(false, "utopia"), None);
        assert!(
            s.problem(true, "a/b").is_some(),
            "a cluster name with a slash"
        );
        assert_eq!(ZookeeperSettings::default().problem(true, "a/b"), None);
    }

    #[test]
    fn connect_string_joins_hosts_and_chroot() {
        let s = ZookeeperSettings {
            hosts: vec!["a:1".into(), "b:2".into()],
            chroot: "/site".into(),
            ..Default::default()
        };
        assert_eq!(s.connect_string(), "a:1,b:2/site");
    }
}

#[cfg(test)]
mod file_tests {
    use std::path::Path;

    use crate::config::Settings;

    /// Bad values are refused when the file is read, with the line and
    /// the setting, in builds with or without the feature.
    #[test]
    fn bad_values_are_refused_with_their_place() {
        for (text, says) in [
            ("zookeeper = { hosts = ( \"zk1\" ); };", "not HOST:PORT"),
            (
                "zookeeper = { hosts = ( \"zk1:2181\", \"zk1:2181\" ); };",
                "appears twice",
            ),
            ("zookeeper = { chroot = \"site\"; };", "absolute path"),
            ("zookeeper = { chroot = \"/site/\"; };", "absolute path"),
            ("zookeeper = { chroot = \"/a/../b\"; };", "node name"),
            ("zookeeper = { session_timeout_ms = 10; };", "between 1000"),
            (
                "zookeeper = { initial_cluster_node = \"a/b\"; };",
                "not a node name",
            ),
            (
                "zookeeper = { retry_backoff_ms = 500; retry_backoff_ms_max = 100; };",
                "must not be greater",
            ),
            (
                "zookeeper = { initial_cluster_node = \"ic\"; };",
                "needs zookeeper.hosts",
            ),
        ] {
            let e = Settings::from_str(text, Path::new("u.conf"))
                .expect_err(text)
                .to_string();
            assert!(e.starts_with("u.conf:1: "), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}

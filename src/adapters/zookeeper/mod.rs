//! The ZooKeeper adapter (cargo feature `zookeeper`): publishes the
//! cluster into ZooKeeper for the sites and tools of seed 000, and decides
//! nothing. [`layout`] says what is written where.
//!
//! - Every member keeps its own ephemeral node, `fellows/<node_id>`, and
//!   rewrites it when its role or state changes.
//! - The leader (only the leader) keeps the shared nodes: `mqtt_servers`
//!   (the brokers the members' own nodes name: the members' MQTT settings
//!   are known nowhere else), `db_servers` (the ok ones of the
//!   `db_servers` collection) and `warnings/config_failing` (from the
//!   fellows collection's `config_failing`).
//! - A new data directory may take its initial cluster from a node the
//!   operator writes ([`initial_cluster`]).
//!
//! One task ([`start`]) holds one session at a time. When the session
//! expires, or ZooKeeper forgets it (a restart with its data lost), the
//! task opens a new one and writes everything again; failures wait a
//! backoff that doubles up to `retry_backoff_ms_max`. Every request has a
//! deadline (`request_timeout_ms`). Errors are logged and counted
//! (`zookeeper_errors_total`), never fatal to the server.
//!
//! Counters (`utopia status`): `zookeeper_sessions_total` (sessions
//! opened), `zookeeper_connected` (1 while a session is usable),
//! `zookeeper_writes_total`, `zookeeper_errors_total`.

pub mod layout;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use utopia_storage::documents::{DbServer, Fellow};
use zookeeper_client as zk;

use self::layout::{FellowNode, Paths};
use crate::config::{Settings, ZookeeperSettings};
use crate::node::Node;

/// Starts the adapter as a task the node owns, when `zookeeper.hosts` is
/// set. `client_addr` is the address clients reach this member at.
pub fn start(node: &Arc<Node>, settings: &Settings, client_addr: &str) {
    if !settings.zookeeper.enabled() {
        return;
    }
    let (mqtt, refused) = layout::mqtt_entries(
        settings
            .mqtt
            .bridges
            .iter()
            .map(|b| (b.host.as_str(), b.port, b.tls.is_some())),
    );
    for entry in refused {
        tracing::warn!(entry = %entry, "an MQTT broker that cannot be a ZooKeeper node name is not published");
    }
    let adapter = Adapter {
        node: node.clone(),
        settings: settings.zookeeper.clone(),
        paths: Paths::new(&settings.cluster_name),
        client_addr: client_addr.to_string(),
        mqtt,
    };
    tracing::info!(hosts = ?settings.zookeeper.hosts, chroot = %settings.zookeeper.chroot, base = %adapter.paths.base, "ZooKeeper adapter on");
    node.tasks
        .spawn_graceful("zookeeper", move |stop| adapter.run(stop));
}

struct Adapter {
    node: Arc<Node>,
    settings: ZookeeperSettings,
    paths: Paths,
    client_addr: String,
    /// This member's brokers, as entries.
    mqtt: Vec<String>,
}

/// Why a session ended.
enum Ended {
    /// The server stops.
    Stopped,
    /// ZooKeeper ended it (expired, closed, authentication failed), or it
    /// could not be opened: a new one is needed.
    Lost(String),
}

fn wait(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Runs `op` with a deadline; a late answer is a timeout error.
async fn timed<T>(ms: u64, op: impl Future<Output = Result<T, zk::Error>>) -> Result<T, zk::Error> {
    tokio::time::timeout(wait(ms), op)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

impl Adapter {
    async fn run(self, stop: CancellationToken) {
        let mut backoff_ms = self.settings.retry_backoff_ms;
        loop {
            match self.session(&stop).await {
                Ended::Stopped => return,
                Ended::Lost(why) => {
                    self.node.metrics.zookeeper.connected.set(0);
                    self.node.metrics.zookeeper.errors.inc();
                    tracing::warn!(reason = %why, retry_in_ms = backoff_ms, "ZooKeeper session lost; opening a new one");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait(backoff_ms)) => {}
            }
            backoff_ms = (backoff_ms * 2).min(self.settings.retry_backoff_ms_max);
        }
    }

    /// Opens a session and keeps this member's nodes (and, while it leads,
    /// the shared ones) until the session ends or the server stops.
    async fn session(&self, stop: &CancellationToken) -> Ended {
        let client = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            c = connect(&self.settings) => match c {
                Ok(c) => c,
                Err(e) => return Ended::Lost(format!("connect to {}: {e:#}", self.settings.connect_string())),
            },
        };
        self.node.metrics.zookeeper.sessions.inc();
        self.node.metrics.zookeeper.connected.set(1);
        let session_id = client.session_id().0;
        tracing::info!(session = %client.session_id(), "ZooKeeper session open");
        let mut state = client.state_watcher();
        let mut tick = tokio::time::interval(wait(self.settings.refresh_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the last round went through: a failed one is logged
        // once, not at every tick.
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    // Gone at once rather than at the session timeout: the
                    // session closes when the client drops.
                    let own = self.paths.fellow(self.node.raft.id());
                    let _ = timed(self.settings.request_timeout_ms.min(500), client.delete(&own, None)).await;
                    self.node.metrics.zookeeper.connected.set(0);
                    return Ended::Stopped;
                }
                s = state.changed() => {
                    use zk::SessionState::*;
                    match s {
                        Expired | Closed | AuthFailed => return Ended::Lost(format!("session {s}")),
                        Disconnected => {
                            self.node.metrics.zookeeper.connected.set(0);
                            tracing::info!("ZooKeeper disconnected; the client reconnects");
                        }
                        SyncConnected | ConnectedReadOnly => {
                            self.node.metrics.zookeeper.connected.set(1);
                        }
                    }
                }
                _ = tick.tick() => {
                    match self.round(&client, session_id).await {
                        Ok(()) => {
                            if failing {
                                tracing::info!("ZooKeeper nodes in step again");
                            }
                            failing = false;
                        }
                        Err(zk::Error::SessionExpired) => return Ended::Lost("session expired".to_string()),
                        Err(e) => {
                            self.node.metrics.zookeeper.errors.inc();
                            if !failing {
                                tracing::warn!(error = %e, "update ZooKeeper nodes; retrying every refresh");
                            }
                            failing = true;
                        }
                    }
                }
            }
        }
    }

    /// One comparison of what ZooKeeper holds with what it should hold.
    async fn round(&self, client: &zk::Client, session_id: i64) -> Result<(), zk::Error> {
        let status = self.node.raft.status();
        let own = FellowNode::of(&status, &self.client_addr, self.mqtt.clone());
        self.put_own(client, session_id, &own.encode()).await?;
        if status.leader == Some(status.id) && self.node.raft.is_leader() {
            self.put_shared(client).await?;
        }
        Ok(())
    }

    /// Keeps `fellows/<id>` this session's ephemeral node holding `data`.
    async fn put_own(
        &self,
        client: &zk::Client,
        session_id: i64,
        data: &[u8],
    ) -> Result<(), zk::Error> {
        let t = self.settings.request_timeout_ms;
        let path = self.paths.fellow(self.node.raft.id());
        match timed(t, client.get_data(&path)).await {
            Ok((current, stat)) if stat.ephemeral_owner == session_id => {
                if current != data {
                    timed(t, client.set_data(&path, data, Some(stat.version))).await?;
                    self.node.metrics.zookeeper.writes.inc();
                    tracing::debug!(path = %path, "this member's node updated");
                }
                return Ok(());
            }
            Ok((_, stat)) => {
                // Left by an earlier session of this member (a crash, a
                // restart): it would go at that session's timeout.
                match timed(t, client.delete(&path, Some(stat.version))).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        match timed(t, client.create(&path, data, &ephemeral)).await {
            Ok(_) => {}
            Err(zk::Error::NoNode) => {
                self.mkdir(client, &self.paths.fellows).await?;
                timed(t, client.create(&path, data, &ephemeral)).await?;
            }
            Err(e) => return Err(e),
        }
        self.node.metrics.zookeeper.writes.inc();
        tracing::info!(path = %path, "this member's node created");
        Ok(())
    }

    async fn mkdir(&self, client: &zk::Client, path: &str) -> Result<(), zk::Error> {
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        timed(
            self.settings.request_timeout_ms,
            client.mkdir(path, &persistent),
        )
        .await
    }

    /// The leader's nodes: the brokers the members' nodes name, the
    /// database servers known alive, and the configuration warnings.
    async fn put_shared(&self, client: &zk::Client) -> Result<(), zk::Error> {
        let t = self.settings.request_timeout_ms;
        // Brokers: from the members' own nodes, this one's included.
        let mut names = match timed(t, client.list_children(&self.paths.fellows)).await {
            Ok(names) => names,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(e),
        };
        names.truncate(layout::FELLOWS_MAX);
        let mut datas = Vec::with_capacity(names.len());
        for name in names {
            match timed(
                t,
                client.get_data(&format!("{}/{name}", self.paths.fellows)),
            )
            .await
            {
                Ok((data, _)) if data.len() <= layout::NODE_BYTES_MAX => datas.push(data),
                // Gone meanwhile (that member's session ended), or too
                // large to be one of ours.
                Ok(_) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
        let (mqtt, undecodable) = layout::cluster_mqtt_entries(datas.iter().map(Vec::as_slice));
        if undecodable > 0 {
            self.node
                .metrics
                .zookeeper
                .fellow_nodes_undecodable
                .inc_by(undecodable as u64);
        }
        self.put_list(client, &self.paths.mqtt_servers, &mqtt)
            .await?;

        // Database servers: the collection, read locally (the leader's
        // copy is current).
        match self.node.reader.documents::<DbServer>(layout::ENTRIES_MAX) {
            Ok(docs) => {
                let servers: Vec<DbServer> = docs.into_iter().filter_map(Result::ok).collect();
                let entries = layout::db_entries(&servers);
                self.put_list(client, &self.paths.db_servers, &entries)
                    .await?;
            }
            Err(e) => {
                self.node.metrics.zookeeper.errors.inc();
                tracing::error!(error = %e, "read the db_servers collection");
            }
        }

        // Warnings: configurations members fail to apply.
        match self.node.reader.documents::<Fellow>(layout::FELLOWS_MAX) {
            Ok(docs) => {
                let fellows: Vec<Fellow> = docs.into_iter().filter_map(Result::ok).collect();
                let warnings = layout::config_warnings(&fellows);
                self.put_warning(client, warnings.as_deref()).await?;
            }
            Err(e) => {
                self.node.metrics.zookeeper.errors.inc();
                tracing::error!(error = %e, "read the fellows collection");
            }
        }
        Ok(())
    }

    /// Makes the list node at `path` hold `entries`: its data one a line,
    /// and a child per entry.
    async fn put_list(
        &self,
        client: &zk::Client,
        path: &str,
        entries: &BTreeSet<String>,
    ) -> Result<(), zk::Error> {
        let t = self.settings.request_timeout_ms;
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let data = layout::list_data(entries);
        match timed(t, client.get_data(path)).await {
            Ok((current, stat)) => {
                if current != data {
                    timed(t, client.set_data(path, &data, Some(stat.version))).await?;
                    self.node.metrics.zookeeper.writes.inc();
                }
            }
            Err(zk::Error::NoNode) => {
                self.mkdir(client, &self.paths.base).await?;
                match timed(t, client.create(path, &data, &persistent)).await {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e),
                }
                self.node.metrics.zookeeper.writes.inc();
            }
            Err(e) => return Err(e),
        }
        let children: BTreeSet<String> = timed(t, client.list_children(path))
            .await?
            .into_iter()
            .collect();
        for gone in children.difference(entries) {
            match timed(t, client.delete(&format!("{path}/{gone}"), None)).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
            self.node.metrics.zookeeper.writes.inc();
        }
        for new in entries.difference(&children) {
            match timed(t, client.create(&format!("{path}/{new}"), &[], &persistent)).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(e),
            }
            self.node.metrics.zookeeper.writes.inc();
        }
        Ok(())
    }

    /// `warnings/config_failing` holds `data`, or is absent with none.
    async fn put_warning(&self, client: &zk::Client, data: Option<&[u8]>) -> Result<(), zk::Error> {
        let t = self.settings.request_timeout_ms;
        let path = &self.paths.config_failing;
        let current = match timed(t, client.get_data(path)).await {
            Ok(found) => Some(found),
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(e),
        };
        match (current, data) {
            (None, None) => return Ok(()),
            (Some((_, stat)), None) => {
                match timed(t, client.delete(path, Some(stat.version))).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(e),
                }
                tracing::info!(path = %path, "no member fails a configuration any more");
            }
            (Some((current, stat)), Some(data)) => {
                if current == data {
                    return Ok(());
                }
                timed(t, client.set_data(path, data, Some(stat.version))).await?;
            }
            (None, Some(data)) => {
                self.mkdir(client, &self.paths.warnings).await?;
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                timed(t, client.create(path, data, &persistent)).await?;
                tracing::warn!(path = %path, "members fail to apply configurations: warning published");
            }
        }
        self.node.metrics.zookeeper.writes.inc();
        Ok(())
    }
}

/// A new session on the configured hosts (the client tries them in turn),
/// rooted at the chroot, which is created when missing.
async fn connect(s: &ZookeeperSettings) -> anyhow::Result<zk::Client> {
    let hosts = s.hosts.join(",");
    let connecting = zk::Client::connector()
        .with_session_timeout(wait(s.session_timeout_ms))
        .with_connection_timeout(wait(s.request_timeout_ms))
        .connect(&hosts);
    // Every host may be tried in turn, each within the connection timeout.
    let whole = s
        .request_timeout_ms
        .saturating_mul(s.hosts.len().max(1) as u64);
    let client = tokio::time::timeout(wait(whole), connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {whole} ms"))??;
    if s.chroot.is_empty() {
        return Ok(client);
    }
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    timed(s.request_timeout_ms, client.mkdir(&s.chroot, &persistent))
        .await
        .with_context(|| format!("create the chroot {}", s.chroot))?;
    client
        .chroot(s.chroot.as_str())
        .map_err(|_| anyhow::anyhow!("chroot {:?} refused by the client", s.chroot))
}

/// At the first start of a data directory (no identity recorded yet),
/// without `initial_cluster` or `--join`, and with
/// `zookeeper.initial_cluster_node` set: reads the initial cluster
/// (`ID=HOST:PORT,...`) from `/utopia/<cluster_name>/<initial_cluster_node>`,
/// waiting up to `initial_cluster_wait_ms` for it, and returns the
/// settings with it. Otherwise returns them unchanged. A cluster that
/// cannot be read, does not parse or leaves this node out is an error:
/// the node would otherwise start a cluster of its own.
pub async fn initial_cluster(
    mut settings: Settings,
    db: &utopia_storage::Db,
) -> anyhow::Result<Settings> {
    let zk = &settings.zookeeper;
    if zk.initial_cluster_node.is_empty() || !settings.initial_cluster.is_empty() || settings.join {
        return Ok(settings);
    }
    if db
        .identity()
        .context("read the data directory's identity")?
        .is_some()
    {
        return Ok(settings);
    }
    let path = Paths::new(&settings.cluster_name).initial_cluster(&zk.initial_cluster_node);
    let whole = format!("{}{path}", zk.connect_string());
    let deadline = tokio::time::Instant::now() + wait(zk.initial_cluster_wait_ms);
    let mut backoff_ms = zk.retry_backoff_ms;
    let text = loop {
        let read = async {
            let client = connect(zk).await?;
            let (data, _) = timed(zk.request_timeout_ms, client.get_data(&path)).await?;
            anyhow::Ok(data)
        };
        match read.await {
            Ok(data) => break data,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!(
                    "read the initial cluster from ZooKeeper node {whole}: {e:#} (waited {} ms, \
                     zookeeper.initial_cluster_wait_ms); write it there (\"ID=HOST:PORT,...\"), \
                     or start with --initial-cluster or --join",
                    zk.initial_cluster_wait_ms
                );
            }
            Err(e) => {
                tracing::info!(node = %whole, error = %e, "waiting for the initial cluster in ZooKeeper");
                tokio::time::sleep(wait(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(zk.retry_backoff_ms_max);
            }
        }
    };
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("ZooKeeper node {whole}: the initial cluster is not UTF-8"))?;
    let members = crate::config::parse_initial_cluster(text.trim())
        .map_err(|e| anyhow::anyhow!("ZooKeeper node {whole}: initial cluster {text:?}: {e}"))?;
    let own = members.get(&settings.node_id).ok_or_else(|| {
        anyhow::anyhow!(
            "ZooKeeper node {whole}: the initial cluster {text:?} does not name node {}; \
             start it with --join to be added to that cluster later",
            settings.node_id
        )
    })?;
    if !settings.peer_advertise.is_empty() && *own != settings.peer_advertise {
        anyhow::bail!(
            "ZooKeeper node {whole}: node {}'s address in the initial cluster ({own}) differs from \
             its peer advertise address {}",
            settings.node_id,
            settings.peer_advertise
        );
    }
    tracing::info!(node = %whole, members = %text.trim(), "initial cluster read from ZooKeeper");
    settings.initial_cluster = members;
    Ok(settings)
}

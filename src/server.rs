//! The `utopiad` process: open storage, start Raft, serve gRPC, reap
//! expired leases, and shut down cleanly.
//!
//! [`run`] takes the listener's settings and a shutdown future, so the binary
//! and tests share one entry point.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use utopia_proto::v1 as pb;
use utopia_raft::event::Event;
use utopia_raft::{RaftNode, RaftTimings};

use crate::api::{self, Node};
use crate::config::Settings;

/// Leases expired per reaper tick, at most; the rest wait for the next tick.
const LEASES_EXPIRED_PER_TICK_MAX: usize = 256;

/// How long to wait for a leader to be known before serving anyway
/// (requests then get UNAVAILABLE until there is one).
const LEADER_WAIT: Duration = Duration::from_secs(30);

fn timings(settings: &Settings) -> RaftTimings {
    RaftTimings {
        heartbeat_interval_ms: settings.raft.heartbeat_interval_ms,
        election_timeout_ms_min: settings.raft.election_timeout_ms_min,
        election_timeout_ms_max: settings.raft.election_timeout_ms_max,
        snapshot_log_entries: settings.raft.snapshot_log_entries,
        log_entries_kept_after_snapshot: settings.raft.log_entries_kept_after_snapshot,
        proposals_in_flight_max: settings.limits.proposals_in_flight_max,
    }
}

/// Runs a server until `shutdown` completes. `ready` is called once with the
/// bound address when the server accepts requests. `tls` (from
/// [`crate::tls::load_server`]) secures the listener and the connections to
/// peers.
pub async fn run(
    settings: Settings,
    tls: Option<crate::tls::NodeTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let store = utopia_storage::open(&data_dir)
        .with_context(|| format!("open data directory {}", data_dir.display()))?;
    check_identity(&store.db, &settings)?;
    // Subscribed before Raft applies anything, so MQTT ingest sees every
    // committed batch.
    let ingest_applied = store.reader.subscribe_ingest();
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    let addr = listener.local_addr().context("read the bound address")?;

    // The address this node is known by when it forms a cluster of its own.
    let advertised = if settings.advertise.is_empty() {
        if addr.ip().is_unspecified() {
            tracing::warn!(
                listen = %addr,
                "listening on an unspecified address without an advertise address: \
                 a one-member cluster started now records {addr} as this node's address"
            );
        }
        addr.to_string()
    } else {
        settings.advertise.clone()
    };
    let (raft, transport) = RaftNode::start(
        settings.node_id,
        &advertised,
        &settings.cluster_name,
        &timings(&settings),
        &settings.initial_cluster,
        settings.join,
        utopia_raft::TransportSettings {
            // Peers see this node connect from the address it listens on.
            source_ip: Some(addr.ip()),
            tls: tls.as_ref().map(|t| t.peer.clone()),
            ..Default::default()
        },
        store.log_store,
        store.state_machine,
        data_dir.join("snapshots").join("incoming"),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let node = Node::new(
        raft.clone(),
        store.reader,
        settings.limits.clone(),
        data_dir.display().to_string(),
        settings.mqtt.commands.attempts_max.min(u64::from(u32::MAX)) as u32,
        api::access::AuthGate::new(settings.auth.token_ttl_s, settings.tls.client_cert_required),
    );
    let max_msg = settings.limits.request_bytes_max as usize;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::kv_server::KvServer<api::kv::KvService>>()
        .await;
    health_reporter
        .set_serving::<pb::watch_server::WatchServer<api::watch::WatchService>>()
        .await;
    health_reporter
        .set_serving::<pb::lease_server::LeaseServer<api::lease::LeaseService>>()
        .await;
    health_reporter
        .set_serving::<pb::documents_server::DocumentsServer<api::documents::DocumentsService>>()
        .await;
    health_reporter.set_serving::<pb::maintenance_server::MaintenanceServer<api::maintenance::MaintenanceService>>().await;
    health_reporter
        .set_serving::<pb::cluster_server::ClusterServer<api::maintenance::ClusterService>>()
        .await;
    health_reporter
        .set_serving::<pb::auth_server::AuthServer<api::auth::AuthService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build the reflection service")?;

    crate::mqtt::start(node.clone(), &settings, ingest_applied).context("start MQTT bridges")?;

    let reaper = tokio::spawn(housekeeping(
        node.clone(),
        Duration::from_millis(settings.raft.lease_check_interval_ms),
    ));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });

    // Small replies must not wait for Nagle's algorithm and the peer's
    // delayed ACK (~40 ms each on Linux): every accepted socket is NODELAY.
    let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        conn.and_then(|s| {
            s.set_nodelay(true)?;
            Ok(s)
        })
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server)
            .context("configure TLS on the listener")?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(
            utopia_proto::raft_v1::raft_transport_server::RaftTransportServer::new(transport)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(reflection)
        .add_service(
            pb::kv_server::KvServer::new(api::kv::KvService::new(node.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg.max(64 << 20)),
        )
        .add_service(
            pb::watch_server::WatchServer::new(api::watch::WatchService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            pb::lease_server::LeaseServer::new(api::lease::LeaseService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            pb::documents_server::DocumentsServer::new(api::documents::DocumentsService::new(
                node.clone(),
            ))
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg.max(64 << 20)),
        )
        .add_service(pb::cluster_server::ClusterServer::new(
            api::maintenance::ClusterService::new(node.clone()),
        ))
        .add_service(pb::maintenance_server::MaintenanceServer::new(
            api::maintenance::MaintenanceService::new(node.clone()),
        ))
        .add_service(
            pb::auth_server::AuthServer::new(api::auth::AuthService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });

    // Serve first: peers need this node's transport to elect a leader.
    let server = tokio::spawn(server);
    if !raft.is_initialized().await {
        tracing::info!("not a member of any cluster yet: add this node with `utopia cluster add`");
    } else if let Err(e) = raft.wait_for_leader(LEADER_WAIT).await {
        tracing::warn!(error = %e, "no leader known yet; serving anyway");
    }
    ready(addr);
    let served = server.await.context("join the gRPC server")?;
    tracing::info!("shutting down");
    reaper.abort();
    raft.shutdown().await;
    store
        .db
        .sync_wal()
        .context("sync the write-ahead log at shutdown")?;
    served.context("serve gRPC")?;
    Ok(())
}

/// Refuses to start a data directory as another node, or with an initial
/// cluster other than the one it was created with; records the identity of
/// a new one.
fn check_identity(db: &utopia_storage::Db, settings: &Settings) -> anyhow::Result<()> {
    let dir = settings.data_dir.display();
    match db
        .identity()
        .context("read the data directory's identity")?
    {
        Some(id) => {
            if id.node_id != settings.node_id {
                anyhow::bail!(
                    "data directory {dir} belongs to node {}, not node {}; start it with --node-id {} or use another directory",
                    id.node_id,
                    settings.node_id,
                    id.node_id
                );
            }
            if !settings.initial_cluster.is_empty()
                && settings.initial_cluster != id.initial_cluster
            {
                let show = |m: &std::collections::BTreeMap<u64, String>| {
                    m.iter()
                        .map(|(i, a)| format!("{i}={a}"))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                anyhow::bail!(
                    "--initial-cluster {} conflicts with the cluster data directory {dir} was created with ({}); \
                     a restarted node needs no --initial-cluster",
                    show(&settings.initial_cluster),
                    if id.initial_cluster.is_empty() { "none".to_string() } else { show(&id.initial_cluster) }
                );
            }
            Ok(())
        }
        None => db
            .set_identity(&utopia_storage::NodeIdentity {
                node_id: settings.node_id,
                initial_cluster: settings.initial_cluster.clone(),
            })
            .context("record the data directory's identity"),
    }
}

/// While this node leads: expires leases and compacts old key history.
/// Both go through the log, so every replica makes the same change at the
/// same revision.
async fn housekeeping(node: Arc<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.raft.is_leader() {
            continue;
        }
        reap_leases(&node).await;
        compact_history(&node).await;
        sync_fellows(&node).await;
    }
}

/// A follower that has not acknowledged a heartbeat for this long is shown
/// as inactive in the fellows collection.
const FELLOW_INACTIVE_AFTER_MS: u64 = 3_000;
/// Fellows documents read per housekeeping tick, at most.
const FELLOWS_MAX: usize = 1000;
/// Active fellows' `last_active_ms` is refreshed at most this often.
const FELLOW_REFRESH_MS: u64 = 30_000;

/// Keeps the fellows collection in step with the cluster: while this node
/// leads, it proposes a FellowStateChanged event for every member whose
/// role, address or liveness differs from its document (and, for active
/// members, at least every `FELLOW_REFRESH_MS`), and marks removed members
/// inactive.
async fn sync_fellows(node: &Node) {
    use utopia_raft::event::{FellowRole, FellowState};
    let st = node.raft.status();
    let mut wanted: Vec<FellowState> = st
        .members
        .iter()
        .map(|(id, (addr, voter))| {
            let role = if st.leader == Some(*id) {
                FellowRole::Leader
            } else if *voter {
                FellowRole::Follower
            } else {
                FellowRole::Learner
            };
            let active = *id == st.id
                || st
                    .heartbeat_age_ms
                    .get(id)
                    .is_some_and(|age| *age < FELLOW_INACTIVE_AFTER_MS);
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .to_string();
            FellowState {
                node_id: *id,
                host,
                addr: addr.clone(),
                active,
                role,
                weight: 1,
            }
        })
        .collect();
    // One read of the collection: the documents to compare against, and
    // members that left (they stay in the collection, inactive).
    let current: std::collections::BTreeMap<u64, serde_json::Value> = match node
        .reader
        .list_documents(
            utopia_storage::keys::Collection::Fellows,
            None,
            FELLOWS_MAX,
            None,
        ) {
        Ok(page) => page
            .documents
            .into_iter()
            .filter_map(|(id, json)| Some((id.parse().ok()?, serde_json::from_str(&json).ok()?)))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "read the fellows collection");
            return;
        }
    };
    for (id, doc) in &current {
        if st.members.contains_key(id) || doc["active"].as_bool() == Some(false) {
            continue;
        }
        let role: FellowRole =
            serde_json::from_value(doc["state"].clone()).unwrap_or(FellowRole::Follower);
        wanted.push(FellowState {
            node_id: *id,
            host: doc["host"].as_str().unwrap_or_default().to_string(),
            addr: doc["addr"].as_str().unwrap_or_default().to_string(),
            active: false,
            role,
            weight: doc["weight"].as_u64().unwrap_or(1) as u32,
        });
    }
    let now = crate::now_ms();
    for f in wanted {
        let unchanged = current.get(&f.node_id).is_some_and(|d| {
            d["addr"].as_str() == Some(f.addr.as_str())
                && d["active"].as_bool() == Some(f.active)
                && d["state"] == serde_json::to_value(f.role).unwrap_or_default()
                && d["weight"].as_u64() == Some(f.weight as u64)
                && (!f.active
                    || d["last_active_ms"]
                        .as_u64()
                        .is_some_and(|t| now.saturating_sub(t) < FELLOW_REFRESH_MS))
        });
        if unchanged {
            continue;
        }
        let id = f.node_id;
        if let Err(e) = node.propose(Event::FellowStateChanged(f)).await {
            tracing::debug!(node = id, error = %e.message(), "update fellow");
        }
    }
}

/// Proposes an expiry for every lease whose deadline has passed, at most
/// `LEASES_EXPIRED_PER_TICK_MAX` per call.
async fn reap_leases(node: &Node) {
    let expired = match node
        .reader
        .expired_leases(crate::now_ms(), LEASES_EXPIRED_PER_TICK_MAX)
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "read lease deadlines");
            return;
        }
    };
    for id in expired {
        match node.propose(Event::LeaseExpired { id }).await {
            Ok(_) => {
                node.counters.add("leases_expired_total", 1);
                tracing::debug!(lease = id, "lease expired");
            }
            Err(e) => tracing::warn!(lease = id, error = %e.message(), "expire lease"),
        }
    }
}

/// Keeps at most `history_revisions_max` revisions of key history, plus a
/// tenth so that compactions come in batches rather than one per write.
async fn compact_history(node: &Node) {
    let kept = node.limits.history_revisions_max as i64;
    let (current, compacted) = match node.reader.revisions() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "read revisions");
            return;
        }
    };
    if current - compacted <= kept + (kept / 10).max(1) {
        return;
    }
    let revision = current - kept;
    match node.propose(Event::Compact { revision }).await {
        Ok(_) => {
            node.counters.add("compactions_total", 1);
            tracing::info!(revision, "compacted key history");
        }
        Err(e) => tracing::warn!(revision, error = %e.message(), "compact key history"),
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "install SIGTERM handler");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

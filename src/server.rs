//! The `utopiad` process: open storage, start Raft, serve clients on the
//! client port and the other members on the peer port, reap expired leases,
//! and shut down cleanly.
//!
//! [`run`] takes the settings and a shutdown future, so the binary and
//! tests share one entry point.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use utopia_proto::v1 as pb;
use utopia_raft::{ClusterId, NodeConfig, PeerPolicy, RaftNode, RaftTimings};

use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::Settings;
use crate::listener::{Deadline, Shutdown};
use crate::node::{access::AuthGate, housekeeping, Node};

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

/// Node-local storage options: the mirror feed only where the MongoDB
/// mirror runs (a build with the feature, and `mongodb.enabled`), and what
/// the database may hold in memory.
fn store_options(settings: &Settings) -> utopia_storage::OpenOptions {
    utopia_storage::OpenOptions {
        mirror_feed: cfg!(feature = "mongodb") && settings.mongodb.enabled,
        memtable_bytes_max: settings.limits.memtable_bytes_max,
        block_cache_bytes_max: settings.limits.block_cache_bytes_max,
        key_cache_bytes_max: settings.limits.key_cache_bytes_max,
    }
}

/// The addresses a running server is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The client port.
    pub client: SocketAddr,
    /// The peer port.
    pub peer: SocketAddr,
}

/// Runs a server until `shutdown` completes. `ready` is called once with the
/// bound addresses when the server accepts requests. `tls` (from
/// [`crate::tls::load_server`]) secures both listeners and the connections
/// to peers.
pub async fn run(
    settings: Settings,
    tls: Option<crate::tls::NodeTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let store = utopia_storage::open_with(&data_dir, store_options(&settings))
        .with_context(|| format!("open data directory {}", data_dir.display()))?;
    // A new data directory may take its initial cluster from ZooKeeper.
    #[cfg(feature = "zookeeper")]
    let settings = crate::adapters::zookeeper::initial_cluster(settings, &store.db).await?;
    let identity = check_identity(&store.db, &settings)?;
    // Subscribed before Raft applies anything, so MQTT ingest sees every
    // committed batch.
    let ingest_applied = store.reader.subscribe_ingest();
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    let addr = listener.local_addr().context("read the bound address")?;
    let peer_listener = TcpListener::bind(&settings.peer_listen)
        .await
        .with_context(|| format!("listen for peers on {}", settings.peer_listen))?;
    let peer_addr = peer_listener
        .local_addr()
        .context("read the bound peer address")?;
    if tls.is_none() {
        tracing::warn!(
            peer_listen = %peer_addr,
            "the peer port has no TLS: any process that reaches it can act as a member of \
             this cluster; keep it on a network only the members can reach, or set tls"
        );
    }
    let client_advertised = advertised(&settings.advertise, addr, "advertise");
    let peer_advertised = advertised(&settings.peer_advertise, peer_addr, "peer_advertise");

    let cluster_id = {
        let db = store.db.clone();
        let recorded = identity.clone();
        ClusterId::new(identity.cluster_id, move |id| {
            db.set_identity(&utopia_storage::NodeIdentity {
                cluster_id: id,
                ..recorded.clone()
            })
            .map_err(|e| e.to_string())
        })
    };
    let (raft, transport) = RaftNode::start(
        NodeConfig {
            id: settings.node_id,
            peer_addr: peer_advertised,
            cluster_name: settings.cluster_name.clone(),
            timings: timings(&settings),
            // The members the data directory was created with (by the
            // flags at its first start, or by `utopia snapshot restore`).
            initial_members: identity.initial_cluster.clone(),
            join: settings.join,
            transport: utopia_raft::TransportSettings {
                // Peers see this node connect from the address it listens on.
                source_ip: Some(peer_addr.ip()),
                tls: tls.as_ref().map(|t| t.peer.clone()),
                ..Default::default()
            },
            peers: PeerPolicy {
                cluster_id,
                certificate_required: tls.is_some(),
                allowed_names: settings.tls.peer_allowed_names.clone(),
                snapshot_bytes_max: settings.raft.snapshot_bytes_max,
                forward_check: crate::node::forward::check(
                    settings.limits.clone(),
                    settings.raft.forwarded_clock_skew_ms_max,
                ),
            },
            incoming_snapshot_dir: data_dir.join("snapshots").join("incoming"),
        },
        store.log_store,
        store.state_machine,
    )
    .await?;
    let peer_guard = transport.guard();
    let node = Node::new(
        raft.clone(),
        store.reader,
        &settings,
        peer_guard,
        AuthGate::new(settings.auth.token_ttl_s, settings.tls.client_cert_required),
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
    health_reporter
        .set_serving::<pb::configs_server::ConfigsServer<api::configs::ConfigsService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build the reflection service")?;

    // The signal begins the stop; everything else follows the node's stop
    // token.
    node.tasks.spawn("shutdown signal", {
        let tasks = node.tasks.clone();
        async move {
            shutdown.await;
            tasks.begin_stop();
        }
    });
    let stop = node.tasks.stopping();

    crate::mqtt::start(node.clone(), &settings, ingest_applied).context("start MQTT bridges")?;
    node.tasks.spawn(
        "space monitor",
        crate::space::watch(node.clone(), settings.limits.db_bytes_max),
    );
    // A new cluster's members other than its lowest id wait to be reached
    // by its leader, and form it themselves only if none does.
    node.tasks.spawn("cluster formation", {
        let raft = node.raft.clone();
        async move {
            if let Err(e) = raft.form_if_unreached().await {
                tracing::error!(error = %e, "could not form the new cluster");
            }
        }
    });
    node.tasks.spawn(
        "housekeeping",
        housekeeping::run(
            node.clone(),
            Duration::from_millis(settings.raft.lease_check_interval_ms),
        ),
    );
    if !settings.metrics.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&settings.metrics.listen)
            .await
            .with_context(|| format!("bind the metrics port {}", settings.metrics.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics on GET /metrics");
        node.tasks.spawn(
            "metrics endpoint",
            crate::metrics::serve(node.clone(), listener),
        );
    }
    // Leader changes and elections, for the metrics and `utopia status`.
    node.tasks.spawn("leader watch", {
        let node = node.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let st = node.raft.status();
                node.metrics.saw_raft(st.id, st.leader, st.term);
            }
        }
    });
    // XML configuration sync: the leader's decisions, and with a
    // `configs.dir` this member's watcher and writer.
    crate::node::configs::start(&node);
    if settings.backups.interval_s > 0 {
        let dir = if settings.backups.dir.as_os_str().is_empty() {
            settings.data_dir.join("backups")
        } else {
            settings.backups.dir.clone()
        };
        node.tasks.spawn(
            "scheduled backups",
            crate::node::backups::run(node.clone(), dir),
        );
    }
    #[cfg(feature = "mongodb")]
    crate::adapters::mongo::start(&node, &settings.mongodb);
    node.tasks.spawn(
        "client address publisher",
        housekeeping::publish_client_address(node.clone(), client_advertised.clone()),
    );
    #[cfg(feature = "zookeeper")]
    crate::adapters::zookeeper::start(&node, &settings, &client_advertised);

    let mut peer_builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        peer_builder = peer_builder
            .tls_config(tls.peer_server.clone())
            .context("configure TLS on the peer listener")?;
    }
    let limits = &settings.limits;
    // The peer port has the same bounds as the client port: it is reachable
    // before any caller is known to be a peer. It serves until Raft has
    // stopped, so that this member takes part in committing what its
    // clients are still waiting for.
    let peer_port = Shutdown::default();
    let peer_incoming = crate::listener::incoming(
        peer_listener,
        crate::listener::Port::Peer,
        limits.connections_max as usize,
        Duration::from_millis(limits.tcp_keepalive_ms),
        node.clone(),
        peer_port.closed.clone(),
        false,
    );
    let mut peer_builder = http2_bounds(peer_builder, limits);
    let peer_server = peer_builder
        .add_service(
            utopia_proto::raft_v1::raft_transport_server::RaftTransportServer::new(transport)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(peer_incoming, peer_port.draining.clone().cancelled_owned());

    // The client port drains as soon as the stop begins.
    let client_port = Shutdown {
        draining: stop.clone(),
        closed: CancellationToken::new(),
    };
    let incoming = crate::listener::incoming(
        listener,
        crate::listener::Port::Client,
        limits.connections_max as usize,
        Duration::from_millis(limits.tcp_keepalive_ms),
        node.clone(),
        client_port.closed.clone(),
        tls.is_none(),
    );
    let deadline = Duration::from_millis(limits.request_timeout_ms);
    let mut builder = http2_bounds(tonic::transport::Server::builder(), limits);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server)
            .context("configure TLS on the listener")?;
    }
    let server = builder
        .layer(crate::metrics::GrpcMetricsLayer(node.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(Deadline::new(
            pb::kv_server::KvServer::new(api::kv::KvService::new(node.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg.max(64 << 20)),
            deadline,
            node.clone(),
        ))
        .add_service(
            pb::watch_server::WatchServer::new(api::watch::WatchService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(Deadline::new(
            pb::lease_server::LeaseServer::new(api::lease::LeaseService::new(node.clone()))
                .max_decoding_message_size(max_msg),
            deadline,
            node.clone(),
        ))
        .add_service(Deadline::new(
            pb::documents_server::DocumentsServer::new(api::documents::DocumentsService::new(
                node.clone(),
            ))
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg.max(64 << 20)),
            deadline,
            node.clone(),
        ))
        .add_service(pb::cluster_server::ClusterServer::new(
            api::maintenance::ClusterService::new(node.clone()),
        ))
        .add_service(Deadline::new(
            pb::maintenance_server::MaintenanceServer::new(
                api::maintenance::MaintenanceService::new(node.clone()),
            ),
            deadline,
            node.clone(),
        ))
        .add_service(
            pb::auth_server::AuthServer::new(api::auth::AuthService::new(node.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(Deadline::new(
            pb::configs_server::ConfigsServer::new(api::configs::ConfigsService::new(node.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg.max(64 << 20)),
            deadline,
            node.clone(),
        ))
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());

    // Serve first: peers need this node's transport to elect a leader. The
    // two servers are this function's own tasks, joined below.
    let mut peer_server = tokio::spawn(peer_server);
    let mut server = tokio::spawn(server);
    tokio::select! {
        () = stop.cancelled() => {}
        () = become_ready(&node, &raft, &client_advertised, settings.node_id, peer_addr) => {
            ready(Bound {
                client: addr,
                peer: peer_addr,
            });
        }
    }
    // Until the signal, or a port that stopped serving by itself.
    let (mut served, mut peers_served) = (None, None);
    // A port also stops once the signal came (it drains on the same
    // token): that is the shutdown asked for, not a failure.
    tokio::select! {
        () = stop.cancelled() => {}
        joined = &mut server => {
            if !stop.is_cancelled() {
                tracing::error!(outcome = ?joined, "the client port stopped serving; shutting down");
            }
            served = Some(joined);
        }
        joined = &mut peer_server => {
            if !stop.is_cancelled() {
                tracing::error!(outcome = ?joined, "the peer port stopped serving; shutting down");
            }
            peers_served = Some(joined);
        }
    }

    // Shutting down: nothing new is accepted, and nothing acknowledged
    // before it is committed and fsynced still holds.
    tracing::info!("shutting down");
    let stopping = tokio::time::Instant::now();
    node.tasks.begin_stop();
    // 1. The tasks end (loops, MQTT bridges and ingest, watchers, whose
    //    streams end with them) while the client port drains: requests in
    //    flight are answered, then the connections close.
    node.tasks.stop(TASKS_STOP_GRACE).await;
    let served = match served {
        Some(served) => served,
        None => {
            client_port
                .stop(server, stopping + REQUESTS_DRAIN_GRACE, "client")
                .await
        }
    };
    // 2. Raft: nothing is proposed any more.
    raft.shutdown().await;
    // 3. The peer port: the leader's streams to this member end once they
    //    find Raft stopped.
    let peers_served = match peers_served {
        Some(served) => served,
        None => {
            let deadline = tokio::time::Instant::now() + PEERS_DRAIN_GRACE;
            peer_port.stop(peer_server, deadline, "peer").await
        }
    };
    // 4. The database.
    store
        .db
        .sync_wal()
        .context("sync the write-ahead log at shutdown")?;
    tracing::info!(
        took_ms = stopping.elapsed().as_millis() as u64,
        "stopped serving"
    );
    tracing::debug!(
        holders = Arc::strong_count(&node) - 1,
        "node state still held elsewhere (requests finishing)"
    );
    drop(node);
    served
        .context("join the gRPC server")?
        .context("serve gRPC")?;
    peers_served
        .context("join the peer server")?
        .context("serve peers")?;
    Ok(())
}

/// How long the tasks have to end by themselves once the stop begins,
/// before they are aborted.
const TASKS_STOP_GRACE: Duration = Duration::from_secs(1);
/// How long the client port has, from the stop, to answer the requests in
/// flight; the connections still open then are closed (a write in flight
/// may still commit, as after any deadline).
const REQUESTS_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long the peer port has, after Raft stopped, before its connections
/// are closed.
const PEERS_DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Waits until this member is ready to serve: a member of a cluster that
/// knows its leader and has recorded this member's client address (a
/// follower can then send clients on to it). Gives up on each after a
/// while and serves anyway (requests get UNAVAILABLE until there is a
/// leader).
async fn become_ready(
    node: &Node,
    raft: &RaftNode<utopia_storage::StateMachine>,
    client_addr: &str,
    node_id: u64,
    peer_addr: SocketAddr,
) {
    if !raft.is_initialized().await && !raft.joins_new_cluster() {
        tracing::info!(
            peer_addr = %peer_addr,
            "not a member of any cluster yet: add this node with `utopia cluster add {node_id} {peer_addr}`",
        );
    } else if let Err(e) = raft.wait_for_leader(LEADER_WAIT).await {
        tracing::warn!(error = %e, "no leader known yet; serving anyway");
    } else {
        let deadline = tokio::time::Instant::now() + housekeeping::PUBLISH_WAIT;
        while !housekeeping::publish(node, client_addr).await {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("the cluster has not recorded this member's client address yet");
                break;
            }
            tokio::time::sleep(housekeeping::PUBLISH_RETRY).await;
        }
    }
}

/// HTTP/2's own bounds on a server: concurrent streams per connection,
/// keep-alive pings, and streams opened and reset at once (the "rapid
/// reset" flood).
fn http2_bounds(
    builder: tonic::transport::Server,
    limits: &crate::config::Limits,
) -> tonic::transport::Server {
    builder
        .max_concurrent_streams(limits.streams_per_connection_max as u32)
        .http2_keepalive_interval(Some(Duration::from_millis(limits.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(limits.keepalive_timeout_ms)))
        .http2_max_pending_accept_reset_streams(Some(limits.streams_per_connection_max as usize))
}

/// The address a bound listener is known by: `configured` (the setting
/// named `setting`), or the bound address.
fn advertised(configured: &str, bound: SocketAddr, setting: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    if bound.ip().is_unspecified() {
        tracing::warn!(
            listen = %bound,
            "listening on an unspecified address without {setting}: others are told {bound}, \
             which they cannot reach; set {setting}"
        );
    }
    bound.to_string()
}

/// Refuses to start a data directory as another node, or with an initial
/// cluster other than the one it was created with; records the identity of
/// a new one, with the id of the cluster it starts (or none yet, for a node
/// that waits to join one). Returns the identity.
fn check_identity(
    db: &utopia_storage::Db,
    settings: &Settings,
) -> anyhow::Result<utopia_storage::NodeIdentity> {
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
            if id.cluster_id != 0 || id.initial_cluster.is_empty() {
                return Ok(id);
            }
            // Written before cluster ids: the members it was started with
            // derive the same id, as they would have at bootstrap.
            let id = utopia_storage::NodeIdentity {
                cluster_id: derived_cluster_id(&settings.cluster_name, &id.initial_cluster),
                ..id
            };
            db.set_identity(&id)
                .context("record the data directory's cluster id")?;
            Ok(id)
        }
        None => {
            let cluster_id = if settings.join {
                0
            } else if settings.initial_cluster.is_empty() {
                random_cluster_id()
            } else {
                derived_cluster_id(&settings.cluster_name, &settings.initial_cluster)
            };
            let id = utopia_storage::NodeIdentity {
                node_id: settings.node_id,
                initial_cluster: settings.initial_cluster.clone(),
                cluster_id,
            };
            db.set_identity(&id)
                .context("record the data directory's identity")?;
            Ok(id)
        }
    }
}

/// The id every member of a new cluster computes alike from its name and
/// initial members, without talking to each other.
fn derived_cluster_id(name: &str, members: &std::collections::BTreeMap<u64, String>) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"utopia cluster id v1\0");
    h.update(name.as_bytes());
    for (id, addr) in members {
        h.update(format!("\0{id}={addr}").as_bytes());
    }
    let bytes = h.finalize();
    let id = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
    id.max(1)
}

/// A new one-member cluster's id: nobody else needs to agree on it.
fn random_cluster_id() -> u64 {
    use std::hash::BuildHasher;
    // RandomState is keyed from the operating system's random source.
    let seed = (
        std::process::id(),
        crate::now_ms(),
        std::time::Instant::now(),
    );
    std::collections::hash_map::RandomState::new()
        .hash_one(format!("{seed:?}"))
        .max(1)
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called (within a runtime), not when the future is first polled: a
/// signal that arrives while the server is still starting then begins its
/// stop as soon as it can, instead of killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let installed = signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
        async move {
            match installed {
                Ok((mut term, mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "install the SIGTERM and SIGINT handlers");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

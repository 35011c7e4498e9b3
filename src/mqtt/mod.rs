//! MQTT: bridges to brokers, device ingest exactly once across the
//! cluster, device commands, and the cluster topics.
//!
//! - [`bridge`]: one rumqttc connection per configured broker bridge.
//! - [`topic`]: what a device message means (topic layout, payload rules).
//! - [`ingest`]: holds every received message until it is in the committed
//!   log, lets the owner of each device propose it in batches, and
//!   acknowledges to the broker only after commit.
//! - [`owners`]: topic ownership agreed through the log.
//! - [`commands`]: publishing device commands and retrying them.

pub mod bridge;
pub mod commands;
pub mod ingest;
pub mod owners;
pub mod topic;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::mqtt::BridgeRole;
use crate::config::Settings;
use crate::node::Node;

/// Events from all bridges queued for the ingest core, at most.
const BRIDGE_EVENTS_MAX: usize = 10_000;

/// Makes ring rustls's process-wide crypto provider (once).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// This machine's host name, for the cluster topics.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Starts ownership upkeep (on every node: whichever leads keeps it) and,
/// when bridges are configured, the bridges, the ingest core and the
/// command driver, all as tasks the node owns ([`Node::tasks`]): they stop
/// when the server does.
pub fn start(
    node: Arc<Node>,
    settings: &Settings,
    applied: tokio::sync::broadcast::Receiver<Arc<utopia_storage::apply::IngestEffects>>,
) -> anyhow::Result<()> {
    let mqtt = &settings.mqtt;
    let tasks = node.tasks.clone();
    tasks.spawn(
        "ingest owners",
        owners::maintain(
            node.clone(),
            mqtt.ingest.owner_timeout_ms,
            mqtt.ingest.dedupe_window_ms,
        ),
    );
    let ingests: Vec<bool> = mqtt
        .bridges
        .iter()
        .map(|b| b.role != BridgeRole::Cluster)
        .collect();
    // Weight 0 until the device bridges are connected.
    let (weight_tx, weight_rx) = watch::channel(0u32);
    tasks.spawn(
        "ingest weight",
        owners::keep_weight(node.clone(), settings.node_id, weight_rx),
    );
    if mqtt.bridges.is_empty() {
        return Ok(());
    }
    let cluster_topics = vec![
        format!("/{}/{}", settings.cluster_name, hostname()),
        format!("/{}/{}", settings.cluster_name, settings.node_id),
    ];
    let (tx, rx) = mpsc::channel(BRIDGE_EVENTS_MAX);
    let mut handles = Vec::new();
    for (i, b) in mqtt.bridges.iter().enumerate() {
        handles.push(bridge::start(
            i,
            b,
            settings.node_id,
            &cluster_topics,
            tx.clone(),
            &tasks,
        )?);
        tracing::info!(bridge = %b.name, host = %b.host, port = b.port, tls = b.tls.is_some(), "MQTT bridge configured");
    }
    let (commands_tx, commands_rx) = watch::channel(0u64);
    if let Some(h) = handles
        .iter()
        .zip(&ingests)
        .find(|(_, i)| **i)
        .map(|(h, _)| h.clone())
    {
        tasks.spawn(
            "device commands",
            commands::run(
                node.clone(),
                mqtt.commands.clone(),
                settings.node_id,
                h,
                commands_rx,
            ),
        );
    }
    let config = ingest::CoreConfig {
        node_id: settings.node_id,
        cluster_name: settings.cluster_name.clone(),
        settings: mqtt.ingest.clone(),
        ingests,
        json_depth_max: node.limits.json_depth_max,
        document_bytes_max: node.limits.document_bytes_max,
    };
    let driver = ingest::Driver::new(node, handles, commands_tx, weight_tx);
    tasks.spawn_graceful("mqtt ingest", move |stop| {
        driver.run(config, rx, applied, stop)
    });
    Ok(())
}

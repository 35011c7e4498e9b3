//! Device commands: the owner of a device publishes its pending commands
//! and retries them with backoff until the device replies or the attempts
//! run out.
//!
//! Convention: a command goes to `${topic_focus}/cmd/${post_type}`, i.e.
//! `/${host}/${zone}/${class}/${id}/cmd/${post_type}`, with the JSON payload
//! `{"id": COMMAND_ID, "payload": ...}`. The device answers on
//! `/${host}/${zone}/${class}/${id}/reply/${COMMAND_ID}` with any payload
//! (decoded like device data); the reply settles the command as
//! acknowledged. Every attempt is an event (`CommandAttempted`) recorded
//! before the publish, so after a handover the new owner continues the
//! count; a command whose last attempt went unanswered is marked failed.
//! Attempts and failures land in the device's stats document.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use utopia_raft::event::{Event, Request};
use utopia_storage::apply::CommandRecord;

use super::bridge::BridgeHandle;
use crate::config::mqtt::CommandSettings;
use crate::node::Node;

/// Pending commands looked at per pass, at most.
const COMMANDS_PER_PASS_MAX: usize = 1000;
/// How often pending commands are looked at without a change.
const PASS_INTERVAL: Duration = Duration::from_millis(100);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait after attempt `attempts` (>= 1) before the next one.
pub fn backoff_ms(s: &CommandSettings, attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(32);
    s.retry_initial_ms
        .saturating_mul(1u64 << shift)
        .min(s.retry_max_ms)
}

/// Runs the command driver for this node until the process stops.
pub async fn run(
    node: Arc<Node>,
    settings: CommandSettings,
    node_id: u64,
    bridge: BridgeHandle,
    mut changed: watch::Receiver<u64>,
) {
    loop {
        tokio::select! {
            // Once the ingest core is gone nothing signals: pass on the
            // interval only (an `Err` here returns at once, every time).
            Ok(()) = changed.changed() => {},
            _ = tokio::time::sleep(PASS_INTERVAL) => {},
        }
        let owners = match node.reader.ingest_owners() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "read topic owners");
                continue;
            }
        };
        if owners.epoch == 0 {
            continue;
        }
        let pending = match node.reader.pending_commands(COMMANDS_PER_PASS_MAX) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "read pending commands");
                continue;
            }
        };
        for c in pending {
            if owners.owner(&c.device) != Some(node_id) {
                continue;
            }
            let now = crate::now_ms();
            if c.attempts > 0 && now < c.last_attempt_ms + backoff_ms(&settings, c.attempts) {
                continue;
            }
            if c.attempts >= c.attempts_max {
                let reason = format!("no reply after {} attempts", c.attempts);
                let req = Request::new(now, Event::CommandFailed { id: c.id, reason });
                match node.raft.propose_anywhere(req, PROPOSE_TIMEOUT).await {
                    Ok(_) => {
                        node.metrics.commands_failed.inc();
                        tracing::info!(command = c.id, device = %c.device, "command failed: no reply");
                    }
                    Err(e) => tracing::debug!(command = c.id, error = %e, "mark command failed"),
                }
                continue;
            }
            attempt(&node, &settings, &bridge, &c, now).await;
        }
    }
}

async fn attempt(
    node: &Node,
    settings: &CommandSettings,
    bridge: &BridgeHandle,
    c: &CommandRecord,
    now: u64,
) {
    let attempt = c.attempts + 1;
    let req = Request::new(now, Event::CommandAttempted { id: c.id, attempt });
    if let Err(e) = node.raft.propose_anywhere(req, PROPOSE_TIMEOUT).await {
        tracing::debug!(command = c.id, error = %e, "record command attempt");
        return;
    }
    let payload: serde_json::Value =
        serde_json::from_str(&c.json).unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({ "id": c.id, "payload": payload }).to_string();
    let topic = format!("{}/cmd/{}", c.focus, c.post_type);
    match bridge
        .publish(topic.clone(), body.into_bytes(), settings.qos)
        .await
    {
        Ok(()) => {
            node.metrics.commands_published.inc();
            tracing::debug!(command = c.id, attempt, %topic, "command published");
        }
        Err(e) => tracing::warn!(command = c.id, error = %e, "publish command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = CommandSettings {
            attempts_max: 5,
            retry_initial_ms: 100,
            retry_max_ms: 1000,
            qos: 1,
        };
        let waits: Vec<u64> = (1..=6).map(|a| backoff_ms(&s, a)).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_ms(&s, u32::MAX), 1000);
    }
}

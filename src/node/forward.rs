//! What the leader checks on a proposal another member forwards over the
//! peer port, before it proposes it.
//!
//! Members forward only what their MQTT bridges and their own bookkeeping
//! (client address, space alarms, configuration sync and its statistics) produce; everything clients send is proposed by the member they reached
//! after the API's checks, and never forwarded. So a forwarded proposal
//! must be one of those kinds, within the same bounds the API enforces,
//! and stamped near the leader's clock (apply takes time from the stamp:
//! a lease expiry or a rate window must not be moved by a peer's clock or a
//! forged stamp).

use std::sync::Arc;

use utopia_raft::event::{DeviceData, Event, IngestBody};
use utopia_raft::{ForwardCheck, Request};
use utopia_storage::apply::bounds;

use crate::config::{configs, Limits};

/// Most items one forwarded ingest batch may carry (`batch_messages_max`
/// is bounded far below this).
const INGEST_BATCH_ITEMS_MAX: usize = 65_536;
/// Longest topic level, as MQTT topics are checked.
const LEVEL_BYTES_MAX: usize = 256;
/// Longest free-text reason a member may record.
const REASON_BYTES_MAX: usize = 1024;
/// Highest ingest weight a member may ask for (`mqtt.ingest.weight`).
const INGEST_WEIGHT_MAX: u32 = 1000;

/// The check the transport runs on every forwarded proposal.
pub fn check(limits: Limits, clock_skew_ms_max: u64) -> ForwardCheck {
    Arc::new(move |req: &Request| check_request(req, &limits, clock_skew_ms_max, crate::now_ms()))
}

fn check_request(
    req: &Request,
    limits: &Limits,
    clock_skew_ms_max: u64,
    now_ms: u64,
) -> Result<(), String> {
    let skew = req.at_ms.abs_diff(now_ms);
    if skew > clock_skew_ms_max {
        return Err(format!(
            "stamped at {} ms, {skew} ms from this node's clock ({now_ms} ms); \
             the limit is raft.forwarded_clock_skew_ms_max = {clock_skew_ms_max}",
            req.at_ms
        ));
    }
    if let Some(bytes) = req.document_bytes_max {
        if bytes > limits.document_bytes_max {
            return Err(format!(
                "asks for documents of up to {bytes} bytes; the limit is document_bytes_max = {}",
                limits.document_bytes_max
            ));
        }
    }
    match &*req.event {
        Event::IngestBatch { items, .. } => {
            if items.len() > INGEST_BATCH_ITEMS_MAX {
                return Err(format!(
                    "{} items; at most {INGEST_BATCH_ITEMS_MAX}",
                    items.len()
                ));
            }
            for item in items {
                if item.digest.len() != 16 {
                    return Err(format!(
                        "digest of {} bytes; expected 16",
                        item.digest.len()
                    ));
                }
                match &item.body {
                    IngestBody::Data(d) => device_data(d, limits)?,
                    IngestBody::Reply {
                        host,
                        zone,
                        class,
                        device_id,
                        json,
                        ..
                    } => {
                        for (what, v) in [
                            ("host", host),
                            ("zone", zone),
                            ("class", class),
                            ("device_id", device_id),
                        ] {
                            level(what, v)?;
                        }
                        json_text(json, limits)?;
                    }
                    IngestBody::Dropped { device, reason } => {
                        bounded("device", device, 4 * LEVEL_BYTES_MAX)?;
                        bounded("reason", reason, REASON_BYTES_MAX)?;
                    }
                }
            }
            Ok(())
        }
        Event::IngestWeight { weight, .. } => {
            if *weight > INGEST_WEIGHT_MAX {
                return Err(format!("weight {weight}; at most {INGEST_WEIGHT_MAX}"));
            }
            Ok(())
        }
        Event::CommandAttempted { .. } => Ok(()),
        // A member whose database passed its quota raises NOSPACE.
        Event::AlarmRaised { .. } => Ok(()),
        Event::CommandFailed { reason, .. } => bounded("reason", reason, REASON_BYTES_MAX),
        Event::ClientAddressPublished { addr, .. } => addr
            .parse::<std::net::SocketAddr>()
            .map(|_| ())
            .map_err(|e| format!("address {addr:?}: {e}")),
        // XML configuration sync: a member's votes for the files of its
        // directory, the files it refused, whether it holds the accepted
        // files.
        Event::ConfigVote(v) => {
            config_name(&v.name)?;
            config_hash(&v.hash)?;
            if v.kind != "config" && v.kind != "schema" {
                return Err(format!("kind {:?}; expected config or schema", v.kind));
            }
            bounded("xml", &v.xml, configs::FILE_BYTES_MAX_LIMIT as usize)?;
            if !(configs::WEIGHT_MILLI_MIN..=configs::WEIGHT_MILLI_MAX).contains(&v.weight_milli) {
                return Err(format!(
                    "weight of {} thousandths; {} to {}",
                    v.weight_milli,
                    configs::WEIGHT_MILLI_MIN,
                    configs::WEIGHT_MILLI_MAX
                ));
            }
            if v.window_ms > configs::AGREEMENT_WINDOW_MS_MAX {
                return Err(format!(
                    "agreement window of {} ms; at most {}",
                    v.window_ms,
                    configs::AGREEMENT_WINDOW_MS_MAX
                ));
            }
            Ok(())
        }
        Event::ConfigFileRejected {
            file, hash, reason, ..
        } => {
            if file.is_empty() || file.len() > LEVEL_BYTES_MAX || file.contains(['/', '\0']) {
                return Err(format!(
                    "file name {:?} must be 1..={LEVEL_BYTES_MAX} bytes without '/' or NUL",
                    file.chars().take(64).collect::<String>()
                ));
            }
            config_hash(hash)?;
            bounded("reason", reason, REASON_BYTES_MAX)
        }
        Event::ConfigSyncState { name, reason, .. } => {
            config_name(name)?;
            bounded("reason", reason, REASON_BYTES_MAX)
        }
        // A member's write of an accepted file, counted in the
        // configuration's stats; apply counts everything else itself.
        Event::StatIncremented { id, kind, by, .. } => {
            if kind != "config" {
                return Err(format!(
                    "statistics of type {:?}; members count only config",
                    kind.chars().take(64).collect::<String>()
                ));
            }
            config_name(id)?;
            if *by != 1 {
                return Err(format!(
                    "a count of {by}; members count one write at a time"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "{} is not an event members forward; clients' requests are proposed where they arrive",
            other.name()
        )),
    }
}

fn device_data(d: &DeviceData, limits: &Limits) -> Result<(), String> {
    for (what, v) in [
        ("host", &d.host),
        ("zone", &d.zone),
        ("class", &d.class),
        ("device_id", &d.device_id),
        ("post_type", &d.post_type),
    ] {
        level(what, v)?;
    }
    bounds::check_path_segments(d.path.len())?;
    for p in &d.path {
        level("data level", p)?;
    }
    json_text(&d.json, limits)
}

/// A topic level: non-empty, bounded, no `/`, MQTT wildcards or NUL.
fn level(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > LEVEL_BYTES_MAX || v.contains(['/', '+', '#', '\0']) {
        return Err(format!(
            "{what} {:?} must be 1..={LEVEL_BYTES_MAX} bytes without '/', '+', '#' or NUL",
            v.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// A configuration name, as the envelope's XSD has it:
/// `[A-Za-z0-9_.-]{1,64}`.
fn config_name(name: &str) -> Result<(), String> {
    if crate::node::configs::core::canonical_file(name).is_none() {
        return Err(format!(
            "configuration name {:?} must match [A-Za-z0-9_.-]{{1,64}}",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// blake3, hex.
fn config_hash(hash: &str) -> Result<(), String> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "hash {:?} is not 64 hex digits",
            hash.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

fn bounded(what: &str, v: &str, max: usize) -> Result<(), String> {
    if v.len() > max {
        return Err(format!("{what} of {} bytes; at most {max}", v.len()));
    }
    Ok(())
}

fn json_text(json: &str, limits: &Limits) -> Result<(), String> {
    bounded("value", json, limits.value_bytes_max as usize)?;
    let max = limits.json_depth_max as usize;
    if bounds::json_text_depth(json.as_bytes(), max) > max {
        return Err(format!(
            "value is nested more than {max} levels deep; the limit is json_depth_max = {max}"
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map(|_| ())
        .map_err(|e| format!("value is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use utopia_raft::event::{IngestItem, PutOp};

    fn data(path: usize, json: &str) -> Event {
        Event::IngestBatch {
            epoch: 1,
            proposer: 2,
            items: vec![IngestItem {
                digest: vec![0u8; 16].into(),
                redelivered: false,
                body: IngestBody::Data(DeviceData {
                    host: "h".into(),
                    zone: "z".into(),
                    class: "c".into(),
                    device_id: "1".into(),
                    post_type: "temp".into(),
                    path: vec!["p".into(); path],
                    json: json.into(),
                }),
            }],
        }
    }

    #[test]
    fn forwarded_proposals_pass_the_api_bounds_and_a_clock_window() {
        let limits = Limits::default();
        let now = 1_800_000_000_000;
        let at = |ms: u64, e: Event| check_request(&Request::new(ms, e), &limits, 60_000, now);
        assert!(at(now, data(2, "21.5")).is_ok());
        assert!(at(now - 59_000, data(0, "{}")).is_ok());
        // A stamp far from the leader's clock (a lease "expired" at 2^63).
        assert!(at(1 << 63, data(0, "1")).unwrap_err().contains("clock"));
        assert!(at(now - 61_000, data(0, "1")).is_err());
        assert!(at(now, data(17, "1")).unwrap_err().contains("segments"));
        assert!(at(now, data(1, "{")).unwrap_err().contains("not JSON"));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(at(now, data(1, &deep))
            .unwrap_err()
            .contains("json_depth_max"));
        let mut big = Request::new(now, data(0, "1"));
        big.document_bytes_max = Some(1 << 40);
        assert!(check_request(&big, &limits, 60_000, now)
            .unwrap_err()
            .contains("document_bytes_max"));
        // Clients' kinds of events are never forwarded.
        let put = Event::Put(PutOp {
            key: vec![b'k'; 10].into(),
            value: vec![].into(),
            lease: 0,
            prev_kv: false,
        });
        assert!(at(now, put)
            .unwrap_err()
            .contains("not an event members forward"));
        assert!(at(now, Event::LeaseExpired { id: 1 }).is_err());
        assert!(at(
            now,
            Event::ClientAddressPublished {
                node_id: 1,
                addr: "127.0.0.1:7700".into()
            }
        )
        .is_ok());
        assert!(at(
            now,
            Event::ClientAddressPublished {
                node_id: 1,
                addr: "nowhere".into()
            }
        )
        .is_err());
    }

    fn vote(name: &str, hash: &str, xml: &str, weight_milli: u32) -> Event {
        Event::ConfigVote(utopia_raft::event::ConfigVote {
            name: name.into(),
            kind: "config".into(),
            version: 1,
            hash: hash.into(),
            xml: xml.into(),
            proposer: 2,
            weight_milli,
            window_ms: 1000,
            source: utopia_raft::event::VoteSource::Dir,
            rules: None,
        })
    }

    #[test]
    fn members_forward_their_configuration_votes_refusals_sync_state_and_counts_bounded() {
        let limits = Limits::default();
        let now = 1_800_000_000_000;
        let at = |e: Event| check_request(&Request::new(now, e), &limits, 60_000, now);
        let hash = "a".repeat(64);
        assert!(at(vote("thermostat", &hash, "<x/>", 1500)).is_ok());
        assert!(at(vote("../etc", &hash, "<x/>", 1500))
            .unwrap_err()
            .contains("name"));
        assert!(at(vote("t", "zz", "<x/>", 1500))
            .unwrap_err()
            .contains("hash"));
        assert!(at(vote("t", &hash, "<x/>", 0))
            .unwrap_err()
            .contains("weight"));
        let file = |file: &str, reason: &str| Event::ConfigFileRejected {
            node: 2,
            file: file.into(),
            hash: hash.clone(),
            reason: reason.into(),
        };
        assert!(at(file("bad.xml", "bad.xml:1:2: oops")).is_ok());
        assert!(at(file("a/b.xml", "r")).unwrap_err().contains("file"));
        assert!(at(file("bad.xml", &"r".repeat(5000)))
            .unwrap_err()
            .contains("reason"));
        let state = |name: &str| Event::ConfigSyncState {
            node: 2,
            name: name.into(),
            version: 1,
            failing: true,
            reason: "read-only".into(),
        };
        assert!(at(state("thermostat")).is_ok());
        assert!(at(state("")).is_err());
        // A member counts its writes of an accepted file, one at a time;
        // other statistics are counted by apply itself.
        let stat = |kind: &str, id: &str, by: u64| Event::StatIncremented {
            id: id.into(),
            kind: kind.into(),
            counter: utopia_raft::event::StatCounter::Failures,
            by,
        };
        assert!(at(stat("config", "thermostat", 1)).is_ok());
        assert!(at(stat("config", "../x", 1)).unwrap_err().contains("name"));
        assert!(at(stat("config", "thermostat", 2))
            .unwrap_err()
            .contains("one"));
        assert!(at(stat("device", "h/c/1", 1))
            .unwrap_err()
            .contains("config"));
        // Deciding is the leader's own: never forwarded.
        assert!(at(Event::ConfigDecide {
            name: "t".into(),
            version: 1
        })
        .is_err());
    }
}

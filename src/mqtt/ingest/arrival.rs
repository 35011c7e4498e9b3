//! What one message from a broker is, decided from its bridge, topic and
//! payload alone: a cluster-topic message, something not to ingest, a bad
//! message (with the reason it is counted under), or a device message with
//! the body it becomes in the log and the digest it is known by.

use utopia_raft::event::{DeviceData, IngestBody};

use crate::mqtt::bridge::Incoming;
use crate::mqtt::topic::{self, BadMessage};

pub(super) enum Arrival {
    /// Under `/${cluster_name}/`: logged and counted, not ingested.
    Cluster,
    /// From a bridge without device traffic, a broker's `$` topic, or a
    /// command to a device (possibly our own publish): not data.
    NotData,
    Bad(BadMessage),
    Device(DeviceMessage),
}

pub(super) struct DeviceMessage {
    /// The device's document id (ownership is decided by it).
    pub device: String,
    pub digest: [u8; 16],
    pub body: IngestBody,
}

pub(super) struct Rules<'a> {
    /// `/${cluster_name}/`.
    pub cluster_prefix: &'a str,
    pub payload_bytes_max: usize,
    pub json_depth_max: usize,
}

pub(super) fn classify(m: &Incoming, carries_devices: bool, rules: &Rules) -> Arrival {
    if m.topic.starts_with(rules.cluster_prefix) {
        return Arrival::Cluster;
    }
    if !carries_devices || m.topic.starts_with('$') {
        return Arrival::NotData;
    }
    let parsed = match topic::parse_topic(&m.topic) {
        Ok(t) => t,
        Err(bad) => return Arrival::Bad(bad),
    };
    if parsed.post_type == "cmd" {
        return Arrival::NotData;
    }
    let json = match topic::payload_json(&m.payload, rules.payload_bytes_max, rules.json_depth_max)
    {
        Ok(json) => json,
        Err(bad) => return Arrival::Bad(bad),
    };
    let body = if parsed.post_type == "reply" {
        let Some(id) = parsed
            .path
            .first()
            .filter(|_| parsed.path.len() == 1)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Arrival::Bad(BadMessage::BadReply(topic::shown(&m.topic)));
        };
        IngestBody::Reply {
            host: parsed.host.to_string(),
            zone: parsed.zone.to_string(),
            class: parsed.class.to_string(),
            device_id: parsed.device_id.to_string(),
            command_id: id,
            json,
        }
    } else {
        IngestBody::Data(DeviceData {
            host: parsed.host.to_string(),
            zone: parsed.zone.to_string(),
            class: parsed.class.to_string(),
            device_id: parsed.device_id.to_string(),
            post_type: parsed.post_type.to_string(),
            path: parsed.path.iter().map(|s| s.to_string()).collect(),
            json,
        })
    };
    Arrival::Device(DeviceMessage {
        device: parsed.device(),
        digest: utopia_storage::ingest::digest(&m.topic, &m.payload),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(topic: &str, payload: &[u8], carries_devices: bool, expected: &str) {
        let m = Incoming {
            bridge: 0,
            topic: topic.to_string(),
            payload: bytes::Bytes::copy_from_slice(payload),
            qos: 1,
            dup: false,
            ack: None,
        };
        let rules = Rules {
            cluster_prefix: "/utopia/",
            payload_bytes_max: 16,
            json_depth_max: 4,
        };
        let got = match classify(&m, carries_devices, &rules) {
            Arrival::Cluster => "cluster".to_string(),
            Arrival::NotData => "not data".to_string(),
            Arrival::Bad(bad) => format!("bad {}", bad.reason()),
            Arrival::Device(d) => match d.body {
                IngestBody::Data(data) => format!("data {} {}", d.device, data.json),
                IngestBody::Reply {
                    command_id, json, ..
                } => format!("reply {} {command_id} {json}", d.device),
                IngestBody::Dropped { .. } => "dropped".to_string(),
            },
        };
        assert_eq!(got, expected, "{topic} {payload:?}");
    }

    #[test]
    fn messages_are_classified_by_bridge_topic_and_payload() {
        check("/utopia/host1", b"hi", true, "cluster");
        check("/utopia/1/x", b"hi", false, "cluster");
        check("/h/z/c/1/temp", b"21.5", false, "not data");
        check("$SYS/broker/uptime", b"1", true, "not data");
        check("/h/z/c/1/cmd/reboot", b"{}", true, "not data");
        check("/h/z/c/1/temp", b"21.5", true, "data h/c/1 21.5");
        check("/h/z/c/1/reply/7", b"\"ok\"", true, "reply h/c/1 7 \"ok\"");
        check("/h/z/c/1/reply/x", b"1", true, "bad bad_reply");
        check("/h/z/c/1/reply/7/8", b"1", true, "bad bad_reply");
        check("/h/z/c", b"1", true, "bad topic_too_few_levels");
        check("/h/z/c/1/temp", b"{\"a\":", true, "bad bad_json");
        check("/h/z/c/1/temp", &[b'1'; 17], true, "bad payload_too_large");
        check("/h/z/c/1/temp", b"[[[[[1]]]]]", true, "bad too_deep");
    }

    #[test]
    fn the_digest_is_of_topic_and_payload() {
        let digest = |topic: &str, payload: &[u8]| {
            let m = Incoming {
                bridge: 0,
                topic: topic.to_string(),
                payload: bytes::Bytes::copy_from_slice(payload),
                qos: 1,
                dup: true,
                ack: None,
            };
            let rules = Rules {
                cluster_prefix: "/utopia/",
                payload_bytes_max: 16,
                json_depth_max: 4,
            };
            match classify(&m, true, &rules) {
                Arrival::Device(d) => d.digest,
                _ => panic!("not a device message"),
            }
        };
        assert_eq!(digest("/h/z/c/1/t", b"1"), digest("/h/z/c/1/t", b"1"));
        assert_ne!(digest("/h/z/c/1/t", b"1"), digest("/h/z/c/1/t", b"2"));
        assert_ne!(digest("/h/z/c/1/t", b"1"), digest("/h/z/c/2/t", b"1"));
    }
}

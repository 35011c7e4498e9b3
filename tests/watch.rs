//! Watches deliver every change of a revision, however many keys it
//! touched: a transaction of 700 puts and a prefix delete of 700 keys,
//! watched live and caught up from a revision before them.

mod common;

use std::time::Duration;

use common::{temp_dir, Server};
use utopia_proto::v1 as pb;

/// Keys the transaction writes and the prefix delete removes: more than one
/// catch-up read of the change feed holds (512).
const KEYS: usize = 700;

/// The (type, key, mod_revision) of every event `stream` sends, until the
/// marker key arrives.
async fn events_until_marker(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    marker: &[u8],
) -> Vec<(i32, Vec<u8>, i64)> {
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no marker within 30 s; {} events so far", seen.len()))
            .expect("watch stream open")
            .expect("watch stream not ended");
        for ev in msg.events {
            let kv = ev.kv.expect("event with a key");
            if kv.key == marker {
                return seen;
            }
            seen.push((ev.r#type, kv.key, kv.mod_revision));
        }
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("p/{i:04}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_every_change_of_revisions_larger_than_one_read() {
    let dir = temp_dir();
    let conf = dir.path().join("utopiad.conf");
    std::fs::write(&conf, format!("limits = {{ txn_ops_max = {KEYS}; }};\n")).unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let ch = tonic::transport::Endpoint::new(s.endpoint())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    let mut watch = pb::watch_client::WatchClient::new(ch);
    let prefix = pb::WatchRequest {
        key: b"p/".to_vec(),
        range_end: b"p0".to_vec(),
        ..Default::default()
    };

    // One revision before the big ones, to start catching up from.
    let first = kv
        .put(pb::PutRequest {
            key: b"p/first".to_vec(),
            value: b"0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let mut live = watch.watch(prefix.clone()).await.unwrap().into_inner();

    // One revision of 700 puts, one of 700 deletes, then a marker.
    let puts = (0..KEYS)
        .map(|i| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key(i),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        })
        .collect();
    let txn = kv
        .txn(pb::TxnRequest {
            compare: vec![],
            success: puts,
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(txn.succeeded);
    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b"p/0".to_vec(),
            range_end: b"p/1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, KEYS as i64);
    let marker = b"p/zz-marker".to_vec();
    kv.put(pb::PutRequest {
        key: marker.clone(),
        value: b"end".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    let expected: Vec<(i32, Vec<u8>, i64)> = (0..KEYS)
        .map(|i| (pb::event::EventType::Put as i32, key(i), first + 1))
        .chain((0..KEYS).map(|i| (pb::event::EventType::Delete as i32, key(i), first + 2)))
        .collect();

    // Live: every change, in feed order.
    let seen = events_until_marker(&mut live, &marker).await;
    assert_eq!(seen.len(), 2 * KEYS);
    assert_eq!(seen, expected);

    // Caught up from the change feed, starting before both revisions and
    // starting at each of them.
    for (start, skip) in [(first, 1), (first + 1, 0), (first + 2, KEYS)] {
        let mut req = prefix.clone();
        req.start_revision = start;
        let mut stream = watch.watch(req).await.unwrap().into_inner();
        let seen = events_until_marker(&mut stream, &marker).await;
        let want: Vec<_> = if start == first {
            std::iter::once((pb::event::EventType::Put as i32, b"p/first".to_vec(), first))
                .chain(expected.iter().cloned())
                .collect()
        } else {
            expected[skip..].to_vec()
        };
        assert_eq!(
            seen.iter()
                .filter(|e| e.0 == pb::event::EventType::Delete as i32)
                .count(),
            want.iter()
                .filter(|e| e.0 == pb::event::EventType::Delete as i32)
                .count(),
            "delete events from revision {start}"
        );
        assert_eq!(seen, want, "events from revision {start}");
    }

    // The CLI the same way: every delete of the prefix delete.
    let out = s.cli_ok(&[
        "--output",
        "json",
        "watch",
        "p/",
        "--prefix",
        "--rev",
        &(first + 2).to_string(),
        "--count",
        &(KEYS + 1).to_string(),
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), KEYS + 1);
    assert!(
        lines[..KEYS].iter().all(|l| l["type"] == "DELETE"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[KEYS]["kv"]["key"], "p/zz-marker");
}

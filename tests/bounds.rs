//! Bounded by bytes, not counts: responses stop at `response_bytes_max`
//! and say there is more, through the real server.

mod common;

use common::{temp_dir, Server};
use utopia_proto::v1 as pb;

const MIB: usize = 1 << 20;
/// The default `limits.response_bytes_max`.
const RESPONSE_BYTES_MAX: usize = 4 * MIB;
/// Larger than any response the server may send, so that an unbounded one
/// arrives (and fails the test's checks) instead of failing to decode.
const CLIENT_DECODING_BYTES_MAX: usize = 256 * MIB;

async fn kv_client(s: &Server) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    pb::kv_client::KvClient::connect(s.endpoint())
        .await
        .expect("connect")
        .max_decoding_message_size(CLIENT_DECODING_BYTES_MAX)
        .max_encoding_message_size(CLIENT_DECODING_BYTES_MAX)
}

async fn docs_client(
    s: &Server,
) -> pb::documents_client::DocumentsClient<tonic::transport::Channel> {
    pb::documents_client::DocumentsClient::connect(s.endpoint())
        .await
        .expect("connect")
        .max_decoding_message_size(CLIENT_DECODING_BYTES_MAX)
}

fn range(key: &[u8], range_end: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_over_large_values_is_paged_by_response_bytes() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let mut kv = kv_client(&s).await;
    let keys: Vec<Vec<u8>> = (0..6).map(|i| format!("big/{i}").into_bytes()).collect();
    for (i, key) in keys.iter().enumerate() {
        kv.put(pb::PutRequest {
            key: key.clone(),
            value: vec![b'a' + i as u8; MIB - 64],
            ..Default::default()
        })
        .await
        .expect("put a value just under 1 MiB");
    }

    let first = kv
        .range(range(b"big/", b"big0"))
        .await
        .unwrap()
        .into_inner();
    let bytes: usize = first
        .kvs
        .iter()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum();
    assert_eq!(first.count, 6, "count is every key in the range");
    assert!(
        !first.kvs.is_empty() && first.kvs.len() < 6 && first.more,
        "the first page holds part of the range and says there is more: {} pairs, more = {}",
        first.kvs.len(),
        first.more
    );
    assert!(
        bytes <= RESPONSE_BYTES_MAX,
        "{bytes} bytes in a page bounded by {RESPONSE_BYTES_MAX}"
    );

    // Page by page, from after the last key, the whole range comes back.
    let mut seen = Vec::new();
    let mut from = b"big/".to_vec();
    loop {
        let page = kv.range(range(&from, b"big0")).await.unwrap().into_inner();
        assert!(!page.kvs.is_empty(), "every page makes progress");
        for pair in &page.kvs {
            assert_eq!(pair.value.len(), MIB - 64);
            seen.push(pair.key.clone());
        }
        if !page.more {
            break;
        }
        from = page.kvs.last().unwrap().key.clone();
        from.push(0);
    }
    assert_eq!(seen, keys);

    // Keys only and count only: small, so one page and no values.
    let mut req = range(b"big/", b"big0");
    req.keys_only = true;
    let names = kv.range(req).await.unwrap().into_inner();
    assert_eq!(names.kvs.len(), 6);
    assert!(!names.more && names.kvs.iter().all(|kv| kv.value.is_empty()));
    let mut req = range(b"big/", b"big0");
    req.count_only = true;
    let counted = kv.range(req).await.unwrap().into_inner();
    assert_eq!((counted.count, counted.kvs.len()), (6, 0));

    // A past revision pages the same way.
    let mut req = range(b"big/", b"big0");
    req.revision = 6;
    let past = kv.range(req).await.unwrap().into_inner();
    assert_eq!(past.count, 6);
    assert!(past.more && past.kvs.len() < 6, "{} pairs", past.kvs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_list_is_paged_by_response_bytes() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let mut docs = docs_client(&s).await;
    let text = "x".repeat(200 << 10);
    let devices = 40;
    for i in 0..devices {
        docs.report(pb::DeviceReport {
            host: "gw".into(),
            zone: "hall".into(),
            class: "cam".into(),
            device_id: format!("{i:02}"),
            post_type: "frame".into(),
            path: vec![],
            json: format!("\"{text}\""),
        })
        .await
        .expect("report");
    }

    for zone in ["", "hall"] {
        let mut token = String::new();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = docs
                .list(pb::ListDocumentsRequest {
                    collection: "devices".into(),
                    zone: zone.into(),
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let bytes: usize = page.documents.iter().map(|d| d.json.len()).sum();
            assert!(
                bytes <= RESPONSE_BYTES_MAX,
                "zone {zone:?}: a page of {bytes} bytes, bounded by {RESPONSE_BYTES_MAX}"
            );
            assert!(!page.documents.is_empty());
            seen.extend(page.documents.into_iter().map(|d| d.id));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let expected: Vec<String> = (0..devices).map(|i| format!("gw/cam/{i:02}")).collect();
        assert_eq!(seen, expected, "zone {zone:?}");
        assert!(
            pages > 1,
            "zone {zone:?}: 8 MiB of documents take more than one page"
        );
    }
}

/// What no node may reach while refusing the transaction below.
const RSS_BYTES_MAX: u64 = 256 * MIB as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_reading_gigabytes_is_refused_before_it_is_proposed() {
    let dir = temp_dir();
    let (nodes, _) = common::start_cluster(dir.path(), 3, &[]);
    let leader = common::wait_for("a leader", std::time::Duration::from_secs(30), || {
        common::leader_id(&nodes)
    });
    let leader = &nodes[leader as usize - 1];
    let mut kv = kv_client(leader).await;
    for i in 0..4 {
        kv.put(pb::PutRequest {
            key: format!("blob/{i}").into_bytes(),
            value: vec![b'z'; MIB - 64],
            ..Default::default()
        })
        .await
        .expect("put a value just under 1 MiB");
    }
    let before: Vec<u64> = nodes.iter().map(|n| n.peak_rss_bytes()).collect();
    for (i, rss) in before.iter().enumerate() {
        assert!(*rss < RSS_BYTES_MAX, "node {} starts at {rss} bytes", i + 1);
    }

    // 128 ranges over the 4 MiB prefix: 512 MiB of reads in one
    // transaction, applied on every replica if it reached the log.
    let ranges = (0..128)
        .map(|_| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(range(
                b"blob/", b"blob0",
            ))),
        })
        .collect();
    let result = kv
        .txn(pb::TxnRequest {
            compare: vec![],
            success: ranges,
            failure: vec![],
        })
        .await;
    for (i, n) in nodes.iter().enumerate() {
        let rss = n.peak_rss_bytes();
        eprintln!("node {}: peak RSS {} MiB", i + 1, rss >> 20);
        assert!(
            rss < RSS_BYTES_MAX,
            "node {}: peak RSS {rss} bytes after the transaction, bounded by {RSS_BYTES_MAX}",
            i + 1
        );
    }
    let err = result.expect_err("a transaction reading 512 MiB is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("txn_bytes_max"),
        "names the limit: {}",
        err.message()
    );

    // Refused before it was proposed: the leader applied no transaction.
    let counters = &leader.cli_json(&["status"])["counters"];
    assert!(
        counters["events_applied_total{event=\"txn\"}"].is_null(),
        "{counters}"
    );
    assert_eq!(
        counters["requests_rejected_total{reason=\"txn_too_large\"}"].as_u64(),
        Some(1),
        "{counters}"
    );

    // A transaction within the bound goes through, and so does a write.
    let ranges = (0..2)
        .map(|_| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(range(
                b"blob/", b"blob0",
            ))),
        })
        .collect();
    let ok = kv
        .txn(pb::TxnRequest {
            compare: vec![],
            success: ranges,
            failure: vec![],
        })
        .await
        .expect("two ranges over 4 MiB are within the bound")
        .into_inner();
    assert!(ok.succeeded);
    assert_eq!(ok.responses.len(), 2);
    kv.put(pb::PutRequest {
        key: b"after".to_vec(),
        value: b"ok".to_vec(),
        ..Default::default()
    })
    .await
    .expect("writes go on");

    // A delete that would send back 17 MiB of previous pairs is refused the
    // same way; without them it touches only keys, and goes through.
    for i in 4..17 {
        kv.put(pb::PutRequest {
            key: format!("blob/{i:02}").into_bytes(),
            value: vec![b'z'; MIB - 64],
            ..Default::default()
        })
        .await
        .expect("put a value just under 1 MiB");
    }
    let delete = |prev_kv| pb::DeleteRangeRequest {
        key: b"blob/".to_vec(),
        range_end: b"blob0".to_vec(),
        prev_kv,
    };
    let err = kv
        .delete_range(delete(true))
        .await
        .expect_err("17 MiB of previous pairs is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("txn_bytes_max"), "{}", err.message());
    let deleted = kv
        .delete_range(delete(false))
        .await
        .expect("a delete of 17 keys")
        .into_inner();
    assert_eq!(deleted.deleted, 17);
    for (i, n) in nodes.iter().enumerate() {
        let rss = n.peak_rss_bytes();
        assert!(rss < RSS_BYTES_MAX, "node {}: peak RSS {rss} bytes", i + 1);
    }
}

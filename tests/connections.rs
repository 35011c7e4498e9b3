//! Bounds on connections and requests through the real server: open
//! connections, HTTP/2 streams per connection, and deadlines on unary
//! requests that do not cut Watch streams short.

mod common;

use std::time::Duration;

use common::{start_cluster, temp_dir, wait_for, Server};
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use utopia_proto::v1 as pb;

const DEADLINE: Duration = Duration::from_secs(60);

fn write_config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("utopiad.conf");
    std::fs::write(&path, body).expect("write the configuration");
    path.display().to_string()
}

async fn status(ch: Channel) -> Result<pb::StatusResponse, tonic::Status> {
    pb::maintenance_client::MaintenanceClient::new(ch)
        .status(pb::StatusRequest {})
        .await
        .map(|r| r.into_inner())
}

/// A channel whose connection and calls give up after `timeout`.
async fn channel(s: &Server, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(s.endpoint())
        .expect("endpoint")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_and_streams_per_connection_are_bounded() {
    let dir = temp_dir();
    let conf = write_config(
        dir.path(),
        "limits = { connections_max = 2; streams_per_connection_max = 3; };\n",
    );
    let s = Server::start_with(&dir.path().join("data"), &["--config", &conf]);

    // One raw HTTP/2 connection: after one call, the server's settings
    // are known, and they bound the streams it accepts on a connection.
    let tcp = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let (mut h2, mut conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{}/grpc.health.v1.Health/Check", s.endpoint()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut body) = h2.send_request(request, false).expect("open a stream");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send an empty message");
    let answer = tokio::select! {
        a = answer => a.expect("an answer"),
        c = &mut conn => panic!("the connection ended first: {c:?}"),
    };
    assert_eq!(answer.status(), 200);
    assert_eq!(
        conn.max_concurrent_send_streams(),
        3,
        "the server advertises streams_per_connection_max"
    );
    let raw = tokio::spawn(conn);

    // A second connection is taken; a third waits to be accepted.
    let second = channel(&s, Duration::from_secs(5)).await.expect("connect");
    status(second.clone())
        .await
        .expect("the second connection is served");
    let third = match channel(&s, Duration::from_secs(1)).await {
        Ok(ch) => status(ch).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(
        third.is_err(),
        "a third connection is not served while two are open"
    );
    let counters = status(second.clone()).await.unwrap().counters;
    assert_eq!(counters.get("grpc_connections"), Some(&2), "{counters:?}");
    assert!(
        counters
            .get("grpc_connections_waited_total")
            .copied()
            .unwrap_or(0)
            >= 1,
        "{counters:?}"
    );

    // Once one closes, new connections are served again.
    drop(h2);
    raw.abort();
    let served = async {
        loop {
            if let Ok(ch) = channel(&s, Duration::from_secs(2)).await {
                if status(ch).await.is_ok() {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("a new connection is served once one closed");
}

#[test]
fn a_unary_request_past_request_timeout_ms_is_cut_and_a_watch_is_not() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = temp_dir();
    let conf = write_config(dir.path(), "limits = { request_timeout_ms = 500; };\n");
    let (nodes, _) = start_cluster(dir.path(), 3, &["--config", &conf]);
    let leader = wait_for("a leader", DEADLINE, || common::leader_id(&nodes)) as usize - 1;
    let endpoint = nodes[leader].endpoint();

    rt.block_on(async {
        let mut watch = pb::watch_client::WatchClient::connect(endpoint.clone())
            .await
            .unwrap();
        let mut events = watch
            .watch(pb::WatchRequest {
                key: b"w".to_vec(),
                ..Default::default()
            })
            .await
            .expect("a watch")
            .into_inner();

        // Without the followers the leader cannot commit: the put is cut at
        // the server's deadline, not left waiting.
        for (i, n) in nodes.iter().enumerate() {
            if i != leader {
                n.signal("STOP");
            }
        }
        let mut kv = pb::kv_client::KvClient::connect(endpoint.clone())
            .await
            .unwrap();
        let put = kv.put(pb::PutRequest {
            key: b"w".to_vec(),
            value: b"stuck".to_vec(),
            ..Default::default()
        });
        let err = tokio::time::timeout(DEADLINE, put)
            .await
            .expect("the server answers within its deadline")
            .expect_err("the put cannot commit");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(
            err.message().contains("request_timeout_ms = 500"),
            "{}",
            err.message()
        );
        for (i, n) in nodes.iter().enumerate() {
            if i != leader {
                n.signal("CONT");
            }
        }

        // The watch, open longer than the deadline, still delivers.
        let committed = async {
            loop {
                let r = kv
                    .put(pb::PutRequest {
                        key: b"w".to_vec(),
                        value: b"after".to_vec(),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    return;
                }
            }
        };
        tokio::time::timeout(DEADLINE, committed)
            .await
            .expect("writes commit again");
        let delivered = async {
            while let Some(batch) = events.message().await.expect("the watch stays open") {
                if batch
                    .events
                    .iter()
                    .any(|e| e.kv.as_ref().is_some_and(|kv| kv.value == b"after"))
                {
                    return;
                }
            }
            panic!("the watch ended");
        };
        tokio::time::timeout(DEADLINE, delivered)
            .await
            .expect("the watch delivers the put");
    });
    let timed_out =
        nodes[leader].cli_json(&["status"])["counters"]["requests_timed_out_total"].as_u64();
    assert!(timed_out >= Some(1), "{timed_out:?}");
}

//! Peers apart from clients: the Raft transport is served on the peer port
//! only, every peer message carries the cluster id, and messages forged by
//! a caller that is not a member change nothing.

mod common;

use std::time::Duration;

use common::forge::{self, Seen};
use common::{start_cluster, temp_dir, wait_for, Server};

/// Every forged message was refused, with one of `codes`.
fn all_refused(results: &[(&str, Result<(), tonic::Status>)], codes: &[tonic::Code]) {
    for (what, r) in results {
        match r {
            Ok(()) => panic!("{what}: the node took a forged message"),
            Err(s) => assert!(
                codes.contains(&s.code()),
                "{what}: refused with {:?} ({}), expected one of {codes:?}",
                s.code(),
                s.message()
            ),
        }
    }
}

/// `key` is not on `node` (a local read).
fn assert_absent(node: &Server, key: &str) {
    let out = node.cli(&["get", "--consistency", "serializable", key]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{key} is on {}: {}",
        node.addr,
        String::from_utf8_lossy(&out.stdout)
    );
}

fn status(node: &Server) -> serde_json::Value {
    node.cli_json(&["status"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_no_peer_transport() {
    let dir = temp_dir();
    let s = Server::start(&dir.path().join("data"));
    let st = status(&s);
    let cluster_id = st["cluster_id"].as_u64().expect("cluster id");
    assert_ne!(cluster_id, 0, "a new cluster has an id: {st}");
    let seen = Seen::from_status(&st);
    // Even with the right cluster id, the client port has no transport.
    let results = forge::send_all(&s.endpoint(), None, cluster_id, seen, 9).await;
    all_refused(&results, &[tonic::Code::Unimplemented]);

    // Its reflection lists the client services, not the transport.
    assert_absent(&s, "forged/unary");
    let listed = reflection_services(&s.endpoint()).await;
    assert!(
        listed.iter().any(|n| n == "utopia.v1.KV"),
        "reflection lists the client API: {listed:?}"
    );
    assert!(
        !listed.iter().any(|n| n.contains("raft")),
        "reflection on the client port lists no peer service: {listed:?}"
    );
}

async fn reflection_services(endpoint: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect for reflection");
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    match replies.message().await.expect("reflection reply") {
        Some(r) => match r.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection reply {other:?}"),
        },
        None => panic!("no reflection reply"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_messages_are_refused_and_change_nothing() {
    let dir = temp_dir();
    let (nodes, _) = start_cluster(dir.path(), 3, &[]);
    let before = status(&nodes[0]);
    let cluster_id = before["cluster_id"].as_u64().expect("cluster id");
    assert_ne!(cluster_id, 0);
    for n in &nodes {
        assert_eq!(
            status(n)["cluster_id"].as_u64(),
            Some(cluster_id),
            "every member of a new cluster has the same id"
        );
    }
    let seen = Seen::from_status(&before);
    let leader = seen.leader as usize - 1;
    let follower = (leader + 1) % 3;
    let incoming = |n: &Server| n.data_dir.join("snapshots").join("incoming");

    // A caller that does not know the cluster id, and one that names
    // another cluster, at the leader's and a follower's peer port.
    for target in [leader, follower] {
        let endpoint = format!("http://{}", nodes[target].peer_addr);
        for id in [0, cluster_id ^ 0x5a5a] {
            let results = forge::send_all(&endpoint, None, id, seen, 3).await;
            all_refused(&results, &[tonic::Code::PermissionDenied]);
        }
        // Nothing of the snapshot reached the disk.
        let left: Vec<_> = std::fs::read_dir(incoming(&nodes[target]))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "snapshot files left behind: {left:?}");
    }

    // Even with the cluster id, a snapshot must come under a leader's vote
    // (openraft would take any vote as the leader's).
    let mut client = utopia_proto::raft_v1::raft_transport_client::RaftTransportClient::connect(
        format!("http://{}", nodes[follower].peer_addr),
    )
    .await
    .expect("connect to a follower's peer port");
    let err = client
        .install_snapshot(futures::stream::iter(forge::snapshot_uncommitted(
            cluster_id, seen,
        )))
        .await
        .expect_err("a snapshot under a candidate's vote is refused");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );

    // The leader refuses a forwarded proposal that members never forward
    // (a client's Put, which skipped the API), even from a caller with the
    // cluster id: a proposal is not a way around the API's checks.
    let endpoint = format!("http://{}", nodes[leader].peer_addr);
    let mut client =
        utopia_proto::raft_v1::raft_transport_client::RaftTransportClient::connect(endpoint)
            .await
            .expect("connect to the leader's peer port");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let put = utopia_raft::event::Event::Put(utopia_raft::event::PutOp {
        key: vec![b'k'; 100_000].into(),
        value: b"x".to_vec().into(),
        lease: 0,
        prev_kv: false,
    });
    let err = client
        .propose(forge::proposal(cluster_id, now, put))
        .await
        .expect_err("a forwarded Put is refused");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    // ... and one stamped far from its clock (a lease "expired" at 2^63).
    let expire = utopia_raft::event::Event::LeaseExpired { id: 1 };
    let err = client
        .propose(forge::proposal(cluster_id, 1 << 63, expire))
        .await
        .expect_err("a far-stamped proposal is refused");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );

    // Nothing changed: the same leader and term everywhere, no forged key,
    // and writes go on.
    for n in &nodes {
        let st = status(n);
        assert_eq!(st["leader"], before["leader"], "{st}");
        assert_eq!(st["raft_term"], before["raft_term"], "{st}");
        for key in ["forged/unary", "forged/stream", "forged/proposal"] {
            assert_absent(n, key);
        }
    }
    let counted: u64 = nodes
        .iter()
        .map(|n| {
            status(n)["counters"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with("peer_messages_refused_total"))
                .map(|(_, v)| v.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(counted >= 20, "refusals are counted ({counted})");
    nodes[follower].cli_ok(&["put", "after", "1"]);
    wait_for("the write on every node", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| {
                n.cli_ok(&["get", "--consistency", "serializable", "after"])
                    .contains('1')
            })
            .then_some(())
    });
}

#[test]
fn a_joining_node_takes_the_cluster_id_of_the_leader_that_adds_it() {
    let dir = temp_dir();
    let (nodes, _) = start_cluster(dir.path(), 3, &[]);
    let cluster_id = status(&nodes[0])["cluster_id"].as_u64().unwrap();
    let node4 = Server::start_at(
        &dir.path().join("node4"),
        "127.0.0.1:0",
        &["--node-id", "4", "--join"],
    );
    assert_eq!(
        status(&node4)["cluster_id"].as_u64(),
        Some(0),
        "not known before it is added"
    );
    nodes[0].cli_ok(&["cluster", "add", "4", &node4.peer_addr, "--learner"]);
    wait_for(
        "node 4 to take the cluster id",
        Duration::from_secs(20),
        || (status(&node4)["cluster_id"].as_u64() == Some(cluster_id)).then_some(()),
    );
    // It is recorded: a restart keeps it.
    let mut node4 = node4;
    node4.kill9();
    node4.restart();
    assert_eq!(status(&node4)["cluster_id"].as_u64(), Some(cluster_id));
    // Members publish their client addresses; a follower names the leader's.
    wait_for(
        "every member's client address",
        Duration::from_secs(20),
        || {
            let st = status(&node4);
            st["members"]
                .as_array()?
                .iter()
                .all(|m| !m["client_addr"].as_str().unwrap_or("").is_empty())
                .then_some(())
        },
    );
}

//! The mosquitto test harness itself (no utopiad): each listener lets in
//! exactly the clients it should, and messages flow through the broker.

mod common;

use std::time::Duration;

use common::mosquitto::{publish_all, try_connect, Endpoint, Mosquitto, QoS, Subscriber};

/// A safety net for waits that should end almost at once.
const WAIT: Duration = Duration::from_secs(30);

fn messages(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}/{i}"), format!("payload {i}").into_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_delivers_published_messages() {
    let broker = Mosquitto::start();
    let mut sub = Subscriber::start(broker.plain, "devices/#", QoS::AtLeastOnce).await;
    let sent = messages("devices/d1", 200);
    let acked = publish_all(broker.plain, &sent, QoS::AtLeastOnce).await;
    assert!(
        acked.iter().all(|a| *a),
        "unacknowledged: {:?}\n{}",
        acked.iter().filter(|a| !**a).count(),
        broker.log()
    );
    let got = sub.collect(sent.len(), WAIT).await;
    let got: Vec<(String, Vec<u8>)> = got.into_iter().map(|m| (m.topic, m.payload)).collect();
    // One publisher, one subscriber, QoS 1: in order, each exactly once.
    assert_eq!(got, sent, "subscriber error: {:?}", sub.error());

    // QoS 0 and QoS 2 go through too; a topic outside the filter does not.
    let qos0 = messages("devices/d2", 3);
    assert_eq!(
        publish_all(broker.plain, &qos0, QoS::AtMostOnce).await,
        [true; 3]
    );
    let qos2 = messages("devices/d3", 3);
    assert_eq!(
        publish_all(broker.plain, &qos2, QoS::ExactlyOnce).await,
        [true; 3]
    );
    let other = vec![("elsewhere/x".to_string(), b"no".to_vec())];
    assert_eq!(
        publish_all(broker.plain, &other, QoS::AtLeastOnce).await,
        [true]
    );
    // A last message on the filter: once it arrives, everything before it
    // has (one subscription, per-publisher order).
    let last = vec![("devices/last".to_string(), b"end".to_vec())];
    assert_eq!(
        publish_all(broker.plain, &last, QoS::AtLeastOnce).await,
        [true]
    );
    let got = sub.collect(7, WAIT).await;
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    let mut want: Vec<String> = qos0.iter().chain(&qos2).map(|(t, _)| t.clone()).collect();
    want.push("devices/last".into());
    assert_eq!(topics, want);
    assert!(sub.drain().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_accepts_a_client_trusting_the_test_ca() {
    let broker = Mosquitto::start();
    try_connect(broker.tls_endpoint())
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}\n{}", broker.log()));
    // Messages flow over TLS too.
    let mut sub = Subscriber::start(broker.tls_endpoint(), "t/#", QoS::AtLeastOnce).await;
    let sent = messages("t", 5);
    assert_eq!(
        publish_all(broker.tls_endpoint(), &sent, QoS::AtLeastOnce).await,
        [true; 5]
    );
    assert_eq!(sub.collect(5, WAIT).await.len(), 5);

    // A client that does not trust the CA is refused by its own TLS check.
    let other_ca = std::fs::read(broker.dir.join("client.crt")).unwrap();
    let e = try_connect(Endpoint::plain(broker.tls).with_ca(other_ca))
        .await
        .expect_err("a client trusting another CA must not connect");
    assert!(e.contains("TLS") || e.contains("certificate"), "{e}");
    // Plain MQTT on the TLS port gets nowhere.
    assert!(try_connect(broker.tls).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_listener_lets_in_only_alice_with_her_password() {
    let broker = Mosquitto::start();
    let wrong = Endpoint::plain(broker.auth).with_credentials("alice", "wrong");
    let e = try_connect(wrong).await.expect_err("wrong password");
    assert!(e.contains("refused"), "{e}");
    let e = try_connect(broker.auth).await.expect_err("anonymous");
    assert!(e.contains("refused"), "{e}");
    let e = try_connect(Endpoint::plain(broker.auth).with_credentials("bob", "s3cret"))
        .await
        .expect_err("unknown user");
    assert!(e.contains("refused"), "{e}");
    try_connect(broker.auth_endpoint())
        .await
        .unwrap_or_else(|e| panic!("alice: {e}\n{}", broker.log()));
    let acked = publish_all(broker.auth_endpoint(), &messages("a", 3), QoS::AtLeastOnce).await;
    assert_eq!(acked, [true; 3]);
    // Refused publishes are reported as not acknowledged.
    let wrong = Endpoint::plain(broker.auth).with_credentials("alice", "wrong");
    assert_eq!(
        publish_all(wrong, &messages("a", 3), QoS::AtLeastOnce).await,
        [false; 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_requires_a_client_certificate() {
    let broker = Mosquitto::start();
    let no_cert = Endpoint::plain(broker.mtls).with_ca(std::fs::read(&broker.ca_file).unwrap());
    let e = try_connect(no_cert)
        .await
        .expect_err("a client without a certificate must be refused");
    // Refused in the TLS handshake (a fatal alert), not by a timeout.
    assert!(e.contains("alert"), "{e}");
    try_connect(broker.mtls_endpoint())
        .await
        .unwrap_or_else(|e| panic!("with the client certificate: {e}\n{}", broker.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_refuses_and_restarts_on_the_same_ports() {
    let mut broker = Mosquitto::start();
    let plain = broker.plain;
    broker.kill();
    assert!(!broker.is_running());
    assert!(try_connect(plain).await.is_err());
    broker.restart();
    assert_eq!(broker.plain, plain);
    try_connect(plain)
        .await
        .unwrap_or_else(|e| panic!("after restart: {e}\n{}", broker.log()));
}

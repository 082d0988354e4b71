#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The adapter against the embedded rumqttd broker: one broadcast to several
//! receivers, and duplicate / redelivery / reordering / gap handling.

mod common;

use std::time::Duration;

use common::*;
use sealcast_mqtt::{EmbeddedBroker, MqttClient, MqttConfig, TopicScheme};

/// Every test has its own broker (rumqttd cannot be shut down; each lives
/// until the test process ends) and a hard time limit.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_one_broadcast_to_four_receivers() {
    let broker = EmbeddedBroker::start().unwrap();
    assert!(broker.url().starts_with("mqtt://127.0.0.1:"));
    assert_eq!(broker.addr().ip().to_string(), "127.0.0.1");
    let scheme = TopicScheme::new();
    tokio::time::timeout(LIMIT, one_broadcast_to_many(&broker.url(), &scheme, 4))
        .await
        .expect("test exceeded its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_duplicates_redelivery_reordering_gaps() {
    let broker = EmbeddedBroker::start().unwrap();
    let scheme = TopicScheme::with_prefix(&unique("dup")).unwrap();
    tokio::time::timeout(
        LIMIT,
        duplicates_reordering_and_gaps(&broker.url(), &scheme),
    )
    .await
    .expect("test exceeded its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_gives_up_after_bounded_attempts() {
    // A port nobody listens on (bound, read, released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg =
        MqttConfig::new("127.0.0.1", port, "nobody-home").with_backoff(sealcast_mqtt::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            max_attempts: Some(3),
        });
    let (client, mut sub) = MqttClient::connect(cfg).unwrap();
    let err = client
        .wait_connected(Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(err, sealcast_mqtt::Error::Closed), "{err:?}");
    let status = client.status();
    assert!(status.closed && !status.connected && status.connections == 0);
    assert!(status.last_error.is_some());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sub.next_message())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        client.publish("a/b", sealcast_mqtt::Bytes::new()).await,
        Err(sealcast_mqtt::Error::Closed)
    ));
}

#[tokio::test]
async fn invalid_configurations_and_topics_are_refused_without_panics() {
    for cfg in [
        MqttConfig::new("127.0.0.1", 1883, ""),
        MqttConfig::new("127.0.0.1", 1883, "c").with_keep_alive(Duration::from_millis(10)),
        MqttConfig::new("127.0.0.1", 1883, "c").with_inflight(0),
    ] {
        assert!(matches!(
            MqttClient::connect(cfg),
            Err(sealcast_mqtt::Error::InvalidConfig(_))
        ));
    }
    // mqtts:// without the broker's CA is refused, never plain TCP.
    assert!(matches!(
        MqttClient::connect(MqttConfig::from_url("mqtts://127.0.0.1:8883", "c").unwrap()),
        Err(sealcast_mqtt::Error::InvalidConfig(_))
    ));
    // A client that never connects still refuses bad topic names up front.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (client, _sub) = MqttClient::connect(MqttConfig::new("127.0.0.1", port, "c")).unwrap();
    for bad in ["", "a/+", "a/#", "x\0y"] {
        assert!(matches!(
            client.publish(bad, sealcast_mqtt::Bytes::new()).await,
            Err(sealcast_mqtt::Error::InvalidTopic(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_added_at_run_time_receives_from_its_suback_on() {
    let broker = EmbeddedBroker::start().unwrap();
    let scheme = TopicScheme::with_prefix(&unique("sub")).unwrap();
    tokio::time::timeout(
        LIMIT,
        subscriptions_added_at_run_time(&broker.url(), &scheme, None),
    )
    .await
    .expect("test exceeded its time limit");
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Liveness under a flood (issue #11, item 1). A receiver whose runtime
//! acknowledges every message and publishes one of its own per message (as
//! a device sends acks and pulls) is flooded faster than it can keep up,
//! with small queues so the pressure is immediate. It used to deadlock: the
//! connection task waited to hand over the next message while the runtime
//! waited for room to queue its acknowledgement — a request only the
//! connection task would ever drain. Now the message after the flood still
//! arrives, on the embedded broker and (with `SEALCAST_MQTT_URL`) on
//! Mosquitto.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use sealcast_mqtt::{Bytes, EmbeddedBroker, TopicFilter};

const FLOOD: usize = 3_000;

async fn flood_then_one_more(url: &str) {
    let id = unique("flood");
    let topic = format!("{id}/cmd");
    let echo = format!("{id}/echo");
    let receiver_cfg = config(url, &format!("{id}-rx"))
        .with_subscription(TopicFilter::new(&topic).unwrap())
        .with_incoming_capacity(4)
        .with_request_capacity(2);
    let (rx_client, mut inbox) = connect(receiver_cfg).await;
    let watcher = rx_client.clone();
    let received = Arc::new(AtomicU64::new(0));
    let (marker_tx, mut marker_rx) = tokio::sync::mpsc::unbounded_channel();
    let counter = received.clone();
    let runtime = tokio::spawn(async move {
        while let Some(m) = inbox.next_message().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let last = m.payload.as_ref() == b"the genuine command";
            // What a device does per message: acknowledge, and publish.
            let _ = m.ack.ack().await;
            let _ = rx_client
                .publish(echo.clone(), Bytes::from_static(b"ack"))
                .await;
            if last {
                let _ = marker_tx.send(());
            }
        }
    });

    let (tx_client, _tx_inbox) = connect(config(url, &format!("{id}-tx"))).await;
    for i in 0..FLOOD {
        let garbage = vec![(i % 251) as u8; 1 + i % 300];
        tx_client
            .publish(topic.clone(), Bytes::from(garbage))
            .await
            .unwrap();
    }
    tx_client.flush(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx_client
        .publish(topic.clone(), Bytes::from_static(b"the genuine command"))
        .await
        .unwrap();
    let arrived = tokio::time::timeout(Duration::from_secs(60), marker_rx.recv()).await;
    assert!(
        matches!(arrived, Ok(Some(()))),
        "the receiver froze after {} of {FLOOD} messages; its connection: {:?}",
        received.load(Ordering::SeqCst),
        watcher.status()
    );
    runtime.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_never_freezes_the_receiver_embedded() {
    let broker = tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap();
    flood_then_one_more(&broker.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_never_freezes_the_receiver_mosquitto() {
    let Some(url) = sealcast_testkit::require(
        "SEALCAST_MQTT_URL",
        "a_flood_never_freezes_the_receiver_mosquitto",
        "an MQTT broker such as Mosquitto (CI: mqtt://127.0.0.1:1883)",
    ) else {
        return;
    };
    flood_then_one_more(&url).await;
}

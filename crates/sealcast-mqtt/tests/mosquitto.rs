#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The same scenarios against an external broker such as Mosquitto
//! (`SEALCAST_MQTT_URL`, CI: mqtt://127.0.0.1:1883). Each run uses its own
//! topic prefix and client ids, so parallel runs on one broker do not
//! collide.

mod common;

use std::time::Duration;

use common::*;
use sealcast_mqtt::TopicScheme;

const LIMIT: Duration = Duration::from_secs(120);

fn broker_url(test: &str) -> Option<String> {
    let url = sealcast_testkit::require(
        "SEALCAST_MQTT_URL",
        test,
        "an MQTT broker such as Mosquitto (CI: mqtt://127.0.0.1:1883)",
    )?;
    assert!(
        url.starts_with("mqtt://127.0.0.1")
            || url.starts_with("mqtt://localhost")
            || url.starts_with("mqtt://[::1]"),
        "tests talk to 127.0.0.1 only, not {url}"
    );
    Some(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_one_broadcast_to_four_receivers() {
    let Some(url) = broker_url("mosquitto_one_broadcast_to_four_receivers") else {
        return;
    };
    let scheme = TopicScheme::with_prefix(&unique("ci-bc")).unwrap();
    tokio::time::timeout(LIMIT, one_broadcast_to_many(&url, &scheme, 4))
        .await
        .expect("test exceeded its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_duplicates_redelivery_reordering_gaps() {
    let Some(url) = broker_url("mosquitto_duplicates_redelivery_reordering_gaps") else {
        return;
    };
    let scheme = TopicScheme::with_prefix(&unique("ci-dup")).unwrap();
    tokio::time::timeout(LIMIT, duplicates_reordering_and_gaps(&url, &scheme))
        .await
        .expect("test exceeded its time limit");
}

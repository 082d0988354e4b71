#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The fire-safety deployment end to end over real sockets on loopback:
//! with the embedded broker (always), over CoAP (unicast CON and multicast
//! pinned to 127.0.0.1, always) and with the machine's Mosquitto (CI).

use sealcast_demo::fire_safety::{FireSafetyConfig, fire_safety};
use sealcast_node::link::Transport;

async fn run(config: FireSafetyConfig) {
    let mut lines = Vec::new();
    let report = fire_safety(config, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    for c in &report.checks {
        assert!(
            c.passed(),
            "{} expected {} observed {}\n{}",
            c.what,
            c.expected,
            c.observed,
            lines.join("\n")
        );
    }
    assert!(report.passed());
    assert!(report.checks.len() >= 10, "every step was checked");
    // The pipeline is timed by the instants the runtimes reported: the
    // gateway verified the alert before any device acted on the commands it
    // issued, and the first device acted no later than the last.
    let p = report.pipeline.expect("the fire was timed");
    assert!(p.alert_to_gateway <= p.alert_to_first_action, "{p:?}");
    assert!(p.alert_to_first_action <= p.alert_to_last_action, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_safety_on_the_embedded_broker() {
    run(FireSafetyConfig {
        devices: 8,
        broker: None,
        transport: Transport::Mqtt,
        bearer: false,
        ..FireSafetyConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_safety_over_coap() {
    let run = run(FireSafetyConfig {
        devices: 8,
        broker: None,
        transport: Transport::Coap,
        bearer: false,
        ..FireSafetyConfig::default()
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the CoAP demo finished within 120 s");
}

/// The same deployment with its group channels on the MBMS-like bearer:
/// every check (deliveries, commands, and every attack refused) holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_safety_over_coap_on_the_bearer() {
    let run = run(FireSafetyConfig {
        devices: 8,
        broker: None,
        transport: Transport::Coap,
        bearer: true,
        ..FireSafetyConfig::default()
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the CoAP demo on the bearer finished within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_safety_on_mosquitto() {
    let Some(url) = sealcast_testkit::require(
        "SEALCAST_MQTT_URL",
        "fire_safety_on_mosquitto",
        "an MQTT broker such as Mosquitto (CI: mqtt://127.0.0.1:1883)",
    ) else {
        return;
    };
    run(FireSafetyConfig {
        devices: 10,
        broker: Some(url),
        transport: Transport::Mqtt,
        bearer: false,
        ..FireSafetyConfig::default()
    })
    .await;
}

async fn smart_meter_on(transport: Transport, meters: usize) {
    use sealcast_demo::smart_meter::{SmartMeterConfig, smart_meter};
    let mut lines = Vec::new();
    let config = SmartMeterConfig {
        meters,
        reports_per_meter: 2,
        broker: None,
        transport,
        ..SmartMeterConfig::default()
    };
    let report = smart_meter(config, &mut |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    for c in &report.checks {
        assert!(
            c.passed(),
            "{transport}: {} expected {} observed {}\n{}",
            c.what,
            c.expected,
            c.observed,
            lines.join("\n")
        );
    }
    assert!(report.passed());
    assert!(report.rate.is_some_and(|r| r > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_meter_on_the_embedded_broker() {
    smart_meter_on(Transport::Mqtt, 40).await;
}

/// The same deployment through the same link over CoAP: meters' reports
/// by confirmable unicast to the DAP, batches and announcements to the
/// headend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_meter_over_coap() {
    // 600 meters × 2 reports through one sending link: more than a CoAP
    // peer's queue holds (1 024), so the sender must pace itself.
    smart_meter_on(Transport::Coap, 600).await;
}

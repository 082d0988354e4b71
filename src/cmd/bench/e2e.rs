//! The fire-safety deployment timed end to end, beside its transport floor.

use super::*;

/// The fire-safety pipeline end to end: a sensor's alert through the
/// gateway to every door and extinguisher, over the embedded MQTT broker.
#[derive(Debug)]
pub(super) struct EndToEnd {
    pub(super) devices: usize,
    /// Broadcasts opened on the way (the alert at the gateway, the command at
    /// each door and extinguisher).
    pub(super) opens: usize,
    /// The fastest run's alert → last device acting.
    pub(super) alert_to_last: Duration,
    /// The same run's alert → the gateway having verified it.
    pub(super) alert_to_gateway: Duration,
    /// The same run's alert → the first door or extinguisher acting.
    pub(super) alert_to_first: Duration,
    /// One open of a 16-byte broadcast on one core, from this run's open
    /// measurement (the commands are that short).
    pub(super) single_open_s: f64,
    pub(super) cores: usize,
    pub(super) runs: usize,
    /// The same fan-out with no cryptography at all: one client publishes
    /// the two commands over the embedded broker to `devices` subscribers,
    /// each subscribed to its own group's topics as the devices are, each
    /// acknowledges; time to the last door's or extinguisher's receipt
    /// (fastest run).
    pub(super) transport_floor: Duration,
}

impl EndToEnd {
    /// The security overhead factor: (alert → last − transport floor) ÷
    /// (opens × one open ÷ cores), all from this run. What the security
    /// adds to the fan-out's time, in units of the least its cryptography
    /// needs on these cores: 1.0 when the system adds nothing beyond its
    /// opens. The headline end-to-end figure (docs/PERFORMANCE.md).
    pub(super) fn security_overhead_factor(&self) -> f64 {
        ratio(
            self.alert_to_last.as_secs_f64() - self.transport_floor.as_secs_f64(),
            self.opens as f64 * self.single_open_s / self.cores.max(1) as f64,
        )
    }

    /// (opens × single-open time) ÷ (wall time × cores): the share of the
    /// machine's cores the pipeline spent on the opens themselves, 1.0 when
    /// the messaging, scheduling and gateway hop cost nothing.
    pub(super) fn efficiency(&self) -> f64 {
        ratio(
            self.opens as f64 * self.single_open_s,
            self.alert_to_last.as_secs_f64() * self.cores as f64,
        )
    }
}

/// Runs the fire-safety deployment `runs` times with `devices` devices and
/// keeps the fastest alert → last action.
pub(super) fn end_to_end(devices: usize, runs: usize, results: &Results) -> Result<EndToEnd> {
    use sealcast_demo::fire_safety::{FireSafetyConfig, fire_safety};
    let single_open_s = results
        .open
        .iter()
        .find(|o| o.payload == 16)
        .map_or(0.0, |o| ratio(1.0, o.open_per_sec));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))?;
    let mut best: Option<sealcast_demo::fire_safety::Pipeline> = None;
    for _ in 0..runs.max(1) {
        let config = FireSafetyConfig {
            devices,
            ..FireSafetyConfig::default()
        };
        let report = rt
            .block_on(fire_safety(config, &mut |_| {}))
            .map_err(|e| CliError::other(format!("the end-to-end fire-safety run failed: {e}")))?;
        if !report.passed() {
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.passed())
                .map(|c| format!("{} (expected {}, saw {})", c.what, c.expected, c.observed))
                .collect();
            return Err(CliError::other(format!(
                "the end-to-end fire-safety run failed its checks: {}; run 'sealcast demo fire-safety --devices {devices}' to see its timeline",
                failed.join("; ")
            )));
        }
        let pipeline = report.pipeline.ok_or_else(|| {
            CliError::other("the fire-safety run reported no pipeline timing (this is a bug)")
        })?;
        if best.is_none_or(|b| pipeline.alert_to_last_action < b.alert_to_last_action) {
            best = Some(pipeline);
        }
    }
    let best = best.ok_or_else(|| CliError::other("no end-to-end run (this is a bug)"))?;
    // One broker for all the transport-only runs (rumqttd cannot be shut
    // down; the fire-safety runs started one each).
    let broker = rt
        .block_on(async { tokio::task::spawn_blocking(sealcast_mqtt::EmbeddedBroker::start).await })
        .map_err(|e| CliError::other(format!("broker thread: {e}")))?
        .map_err(|e| CliError::other(format!("cannot start the embedded broker: {e}")))?;
    let mut floor: Option<Duration> = None;
    for run in 0..runs.max(1) {
        let t = rt
            .block_on(transport_floor(&broker.url(), devices, run))
            .map_err(|e| CliError::other(format!("the transport-only fan-out failed: {e}")))?;
        floor = Some(floor.map_or(t, |f| f.min(t)));
    }
    Ok(EndToEnd {
        transport_floor: floor.unwrap_or_default(),
        devices,
        opens: best.opens,
        alert_to_last: best.alert_to_last_action,
        alert_to_gateway: best.alert_to_gateway,
        alert_to_first: best.alert_to_first_action,
        single_open_s,
        cores,
        runs: runs.max(1),
    })
}

/// The fire-safety fan-out without the security: `subscribers` MQTT
/// clients on the embedded broker, split into sensors, doors and
/// extinguishers as the deployment splits its devices, each subscribed to
/// its own group's topics as the devices are; one publisher sending the two
/// 64-byte commands (doors, extinguishers) after a warm-up message to each
/// group; the time from the first timed publish to the last door or
/// extinguisher having received and acknowledged its command.
pub(super) async fn transport_floor(
    url: &str,
    subscribers: usize,
    run: usize,
) -> std::result::Result<Duration, String> {
    use sealcast_mqtt::{Bytes, MqttClient, MqttConfig, TopicFilter};
    const GROUPS: [&str; 3] = ["sensors", "doors", "extinguishers"];
    // The deployment's split (sealcast_demo::fire_safety).
    let sensors = (subscribers / 4).max(1);
    let doors = (subscribers.saturating_sub(sensors) / 2).max(1);
    let (warm_tx, mut warm_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut clients = Vec::with_capacity(subscribers);
    let mut commanded = 0;
    for i in 0..subscribers {
        let group = match i {
            i if i < sensors => GROUPS[0],
            i if i < sensors + doors => GROUPS[1],
            _ => GROUPS[2],
        };
        let filter =
            TopicFilter::new(&format!("floor{run}/{group}/+")).map_err(|e| e.to_string())?;
        let config = MqttConfig::from_url(url, format!("floor{run}-{i}"))
            .map_err(|e| e.to_string())?
            .with_subscription(filter);
        let (client, mut inbox) = MqttClient::connect(config).map_err(|e| e.to_string())?;
        client
            .wait_subscribed(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        // One warm-up message (the deployment's key traffic warms its
        // connections the same way), then the command, for doors and
        // extinguishers.
        let messages = if group == GROUPS[0] { 1 } else { 2 };
        commanded += messages - 1;
        let (warm, done) = (warm_tx.clone(), done_tx.clone());
        tokio::spawn(async move {
            for i in 0..messages {
                let Some(m) = inbox.next_message().await else {
                    return;
                };
                std::hint::black_box(&m.payload);
                let _ = m.ack.ack().await;
                if i == 0 {
                    let _ = warm.send(());
                }
            }
            if messages > 1 {
                let _ = done.send(Instant::now());
            }
        });
        clients.push(client);
    }
    let (publisher, _inbox) = MqttClient::connect(
        MqttConfig::from_url(url, format!("floor{run}-publisher")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    for group in GROUPS {
        publisher
            .publish(
                format!("floor{run}/{group}/warm-up"),
                Bytes::from(vec![0u8; 64]),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    for _ in 0..subscribers {
        match tokio::time::timeout(Duration::from_secs(60), warm_rx.recv()).await {
            Ok(Some(())) => {}
            _ => return Err("not every subscriber received the warm-up within 60 s".into()),
        }
    }
    let start = Instant::now();
    for group in &GROUPS[1..] {
        publisher
            .publish(
                format!("floor{run}/{group}/cmd"),
                Bytes::from(vec![0u8; 64]),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    // Read the receipts as the deployment's supervisor reads its events:
    // woken by one, then letting more gather for a millisecond, so that the
    // observer costs both runs the same (each time is taken where the
    // receipt happened).
    let mut last = start;
    for received in 1..=commanded {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(t)) => last = last.max(t),
            _ => {
                return Err(
                    "not every door and extinguisher received its command within 60 s".into(),
                );
            }
        }
        if received < commanded && done_rx.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for c in clients {
        let _ = c.disconnect(Duration::from_secs(1)).await;
    }
    let _ = publisher.disconnect(Duration::from_secs(1)).await;
    Ok(last.duration_since(start))
}

//! A gateway under a sustained alert load, for `sealcast bench`.
//!
//! The deployment is real: the embedded MQTT broker on loopback, the
//! manager (SQLite store and audit log in a temporary directory), `sensors`
//! sensor nodes and one gateway node, the sensors' group keys delivered and
//! acknowledged. Then `alerts` alerts, sealed in advance by the sensors'
//! keys (about the same number each, sequence numbers in order), are
//! published as fast as one MQTT connection takes them to the sensors'
//! alert topic, and the gateway opens them all — the broker hands it up to
//! its inflight window (100) unacknowledged, so a queue stands in front of
//! the gateway for the whole run. The gateway runs alone on a thread of its
//! own (a current-thread runtime: its MQTT connection, its link and its
//! node), and that thread's CPU time is what is measured, from the first
//! publish to its last alert verified: opens per CPU-second of the gateway,
//! everything it does for a message included (MQTT decoding, PUBACK,
//! topic, replay window and its state file, events).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sealcast_core::broadcast::BroadcastSender;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, GroupId, SeqNum};
use sealcast_core::target::GroupChannel;
use sealcast_group::manager::{EntityKind, Manager, RekeyScheme, Role};
use sealcast_store::{AuditLog, SqliteStore};
use tokio::sync::{mpsc, oneshot};

use sealcast_node::device::NodeConfig;
use sealcast_node::link::{LinkConfig, Transport};
use sealcast_node::runtime::{Event, EventKind, now, os_rng};
use sealcast_node::{device, manager};

use crate::{Error, Result};

/// What to load the gateway with.
#[derive(Clone, Copy, Debug)]
pub struct AlertLoad {
    /// Sensors sending (each a node that installs its key).
    pub sensors: usize,
    /// Alerts in all.
    pub alerts: usize,
    /// The gateway's `max_burst` (1: every alert opened alone).
    pub max_burst: usize,
}

/// What the gateway did under the load.
#[derive(Clone, Copy, Debug)]
pub struct LoadReport {
    /// Alerts verified (always `alerts`; anything else is an error).
    pub opened: usize,
    /// CPU time of the gateway's thread from the first publish to the last
    /// alert verified (wall time where the OS has no thread clock).
    pub gateway_cpu: Duration,
    /// Wall time of the same span.
    pub wall: Duration,
    /// Bursts the gateway opened, and the alerts they took.
    pub bursts: usize,
    /// Alerts opened in bursts.
    pub in_bursts: usize,
}

impl LoadReport {
    /// Alerts opened per second of the gateway's CPU.
    pub fn opens_per_cpu_second(&self) -> f64 {
        let s = self.gateway_cpu.as_secs_f64();
        if s > 0.0 { self.opened as f64 / s } else { 0.0 }
    }
}

/// A stopwatch of the calling thread's CPU time, or of wall time.
fn thread_clock() -> impl Fn() -> Duration {
    let cpu = cpu_time::ThreadTime::try_now().ok();
    let wall = Instant::now();
    move || match &cpu {
        Some(t) => t.elapsed(),
        None => wall.elapsed(),
    }
}

fn id(s: &str) -> Result<EntityId> {
    Ok(EntityId::new(s)?)
}

fn runtime_err(e: impl std::fmt::Display) -> Error {
    Error::Runtime(e.to_string())
}

/// Where a load runs: the embedded MQTT broker on loopback, the link to it,
/// the topics, and a temporary directory removed on drop.
struct Site {
    _transport: crate::DemoTransport,
    link: LinkConfig,
    url: String,
    topics: sealcast_core::target::TopicScheme,
    dir: std::path::PathBuf,
    _remove: crate::fire_safety::RemoveOnDrop,
}

impl Site {
    async fn start(tag: &str) -> Result<Self> {
        let (transport, link) = crate::demo_link(
            Transport::Mqtt,
            None,
            &crate::OneM2mOptions::default(),
            crate::DEMO_MANAGER,
            &mut |_| {},
        )
        .await?;
        let LinkConfig::Mqtt { broker_url, .. } = &link else {
            return Err(Error::Runtime("the load runs on MQTT".into()));
        };
        let url = broker_url.clone();
        let dir = std::env::temp_dir().join(format!(
            "sealcast-{tag}-{}-{}",
            std::process::id(),
            now().get()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Self {
            _transport: transport,
            link,
            url,
            topics: crate::demo_topics(false)?,
            _remove: crate::fire_safety::RemoveOnDrop(dir.clone()),
            dir,
        })
    }

    /// A connected MQTT client of its own (`client_id`).
    async fn client(&self, client_id: &str) -> Result<sealcast_mqtt::MqttClient> {
        let (client, _inbox) = sealcast_mqtt::MqttClient::connect(
            sealcast_mqtt::MqttConfig::from_url(&self.url, client_id).map_err(runtime_err)?,
        )
        .map_err(runtime_err)?;
        client
            .wait_connected(Duration::from_secs(10))
            .await
            .map_err(runtime_err)?;
        Ok(client)
    }
}

/// Publishes `messages` to `topic` as fast as the connection takes them.
fn publish_all(
    publisher: &sealcast_mqtt::MqttClient,
    topic: String,
    messages: Vec<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    let publisher = publisher.clone();
    tokio::spawn(async move {
        for bytes in messages {
            if publisher
                .publish(topic.clone(), sealcast_mqtt::Bytes::from(bytes))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// A service alone on a thread of its own (a current-thread runtime, so its
/// connection, link and tasks all run there), and that thread's CPU clock.
struct Measured<H> {
    handle: H,
    start: Option<oneshot::Sender<()>>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<Duration>>,
}

impl<H: Send + 'static> Measured<H> {
    /// Starts `spawn()` on a new thread named `name`; returns once the
    /// service runs.
    async fn spawn<F, Fut>(name: &str, spawn: F) -> Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<H>>,
    {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<H>>();
        let (start, start_rx) = oneshot::channel::<()>();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || -> Result<Duration> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Runtime(format!("cannot start a runtime: {e}")))?;
                rt.block_on(async move {
                    match spawn().await {
                        Ok(h) => {
                            let _ = ready_tx.send(Ok(h));
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(Duration::ZERO);
                        }
                    }
                    if start_rx.await.is_err() {
                        return Ok(Duration::ZERO);
                    }
                    let clock = thread_clock();
                    let _ = stop_rx.await;
                    Ok(clock())
                })
                // Dropping the runtime ends the service's tasks.
            })
            .map_err(|e| Error::Runtime(format!("cannot start the thread {name}: {e}")))?;
        let handle = ready_rx
            .await
            .map_err(|_| Error::Runtime(format!("the thread {name} ended")))??;
        Ok(Self {
            handle,
            start: Some(start),
            stop,
            thread,
        })
    }

    /// Starts the clock.
    fn start_clock(&mut self) -> Result<()> {
        match self.start.take().map(|s| s.send(())) {
            Some(Ok(())) => Ok(()),
            _ => Err(Error::Runtime("a measured thread ended".into())),
        }
    }

    /// Stops the clock and the service: the thread's CPU time since
    /// [`Self::start`].
    async fn finish(self) -> Result<Duration> {
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(runtime_err)?
            .map_err(|_| Error::Runtime("a measured thread panicked".into()))?
    }
}

/// Runs the deployment and the load (see the module documentation).
pub async fn gateway_under_load(load: AlertLoad) -> Result<LoadReport> {
    if load.sensors == 0 || load.alerts == 0 {
        return Err(Error::Runtime("a load needs sensors and alerts".into()));
    }
    let site = Site::start("load").await?;
    let (link, topics) = (&site.link, &site.topics);
    let store = SqliteStore::open(
        site.dir.join("manager.db"),
        sealcast_store::Kek::generate()?,
    )?;
    let audit = AuditLog::open(site.dir.join("audit.jsonl"))?;
    let mut rng = os_rng()?;
    let manager_cred = EntityCredential::generate(id(crate::DEMO_MANAGER)?, &mut rng);
    let manager_pub = manager_cred.public();
    let m = manager::spawn_on(
        Manager::new(manager_cred),
        Box::new(store),
        audit,
        BTreeMap::new(),
        link,
        topics.clone(),
    )
    .await?;
    let group = GroupId::new(b"fire-sensors")?;
    let gateway = id("gateway")?;
    let gw_cred = EntityCredential::generate(gateway.clone(), &mut rng);
    let sensors: Vec<EntityCredential> = (1..=load.sensors)
        .map(|i| {
            Ok(EntityCredential::generate(
                id(&format!("sensor-{i}"))?,
                &mut rng,
            ))
        })
        .collect::<Result<_>>()?;
    let mut enrol = vec![(gw_cred.public(), EntityKind::Agent, None)];
    enrol.extend(
        sensors
            .iter()
            .map(|c| (c.public(), EntityKind::Device, None)),
    );
    m.enrol_many(enrol).await?;

    // The gateway, alone on its thread, with its state file as the service
    // runs it: the windows reach it before an alert is acknowledged.
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let config = NodeConfig {
        state_file: Some(sealcast_store::DeviceStateFile::new(
            site.dir.join("gateway.cbor"),
        )),
        max_burst: load.max_burst,
        ..crate::plain_node(
            gw_cred,
            manager_pub.clone(),
            link.clone(),
            topics.clone(),
            events_tx.clone(),
        )
    };
    let mut gw = Measured::spawn("loaded-gateway", move || device::spawn(config)).await?;

    // The sensors, then the group and its keys.
    let mut nodes = Vec::with_capacity(sensors.len());
    for c in &sensors {
        nodes.push(
            device::spawn(crate::plain_node(
                crate::fire_safety::copy_credential(c)?,
                manager_pub.clone(),
                link.clone(),
                topics.clone(),
                events_tx.clone(),
            ))
            .await?,
        );
    }
    m.create_group(group.clone(), AeadAlg::A128Gcm, RekeyScheme::PointToPoint)
        .await?;
    let mut members: Vec<(EntityId, Role)> = sensors
        .iter()
        .map(|c| (c.id().clone(), Role::Sender))
        .collect();
    members.push((gateway.clone(), Role::Receiver));
    m.add_members(group.clone(), members).await?;
    m.wait_converged(&group, Duration::from_secs(60)).await?;
    // The sensors were needed to acknowledge their keys; every device hears
    // the group's alerts, so left running they would open the load too.
    for n in nodes {
        n.stop().await;
    }
    let material =
        gw.handle.material(&group).await?.ok_or_else(|| {
            Error::Runtime("the gateway holds no key of the sensors' group".into())
        })?;

    // The alerts, sealed in advance: round robin over the sensors.
    let target = topics.group(&group, GroupChannel::Alert);
    let at = now();
    let senders: Vec<BroadcastSender> = sensors
        .iter()
        .map(|c| BroadcastSender::new(&material, c.id(), c.signing_key()))
        .collect::<std::result::Result<_, _>>()?;
    let mut sealed = Vec::with_capacity(load.alerts);
    for i in 0..load.alerts {
        let (s, n) = (i % senders.len(), i / senders.len() + 1);
        let seq = SeqNum::new(n as u64)?;
        let sender = senders
            .get(s)
            .ok_or_else(|| Error::Runtime("no sender".into()))?;
        sealed.push(sender.seal(seq, at, &target, b"smoke in zone 3!")?);
    }
    // Key traffic is over; what the events said so far is not the load.
    while events.try_recv().is_ok() {}

    let publisher = site.client("load-publisher").await?;
    let wall = Instant::now();
    gw.start_clock()?;
    let publishing = publish_all(&publisher, target, sealed);
    let (mut opened, mut bursts, mut in_bursts, mut refused) = (0, 0, 0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while opened < load.alerts {
        let event = tokio::time::timeout_at(deadline, events.recv()).await;
        let Ok(Some(e)) = event else {
            break;
        };
        if e.who != gateway {
            continue;
        }
        match e.kind {
            EventKind::Executed { .. } => opened += 1,
            EventKind::Burst { size, .. } => {
                bursts += 1;
                in_bursts += size;
            }
            EventKind::Rejected { .. } => refused += 1,
            _ => {}
        }
    }
    let wall = wall.elapsed();
    let gateway_cpu = gw.finish().await?;
    publishing.abort();
    let _ = publisher.disconnect(Duration::from_secs(1)).await;
    if opened != load.alerts {
        return Err(Error::Runtime(format!(
            "the loaded gateway verified {opened} of {} alerts ({refused} refused) within 120 s",
            load.alerts
        )));
    }
    Ok(LoadReport {
        opened,
        gateway_cpu,
        wall,
        bursts,
        in_bursts,
    })
}

/// What to load a DAP with.
#[derive(Clone, Copy, Debug)]
pub struct DapLoad {
    /// Meters the DAP serves.
    pub meters: usize,
    /// Reports in all (round robin over the meters, sequence numbers in
    /// order), forged ones included.
    pub reports: usize,
    /// Forged reports per thousand: a known meter's id and a fresh
    /// sequence number, signed by another key (they cost the DAP signature
    /// work and break its batches).
    pub forged_per_mille: usize,
    /// Reports per batch (the service's default: 64).
    pub batch_size: usize,
}

/// What the DAP service did under the load.
#[derive(Clone, Copy, Debug)]
pub struct DapLoadReport {
    /// Reports sent to it.
    pub reports: usize,
    /// Forged ones among them.
    pub forged: usize,
    /// Reports it forwarded in signed batches, and forgeries it dropped.
    pub forwarded: u64,
    /// Forgeries it dropped.
    pub dropped_forged: u64,
    /// Signed batches it sent to the headend.
    pub batches: u64,
    /// CPU time of the DAP's thread from the first publish to the last
    /// report handled (wall time where the OS has no thread clock).
    pub dap_cpu: Duration,
    /// Wall time of the same span.
    pub wall: Duration,
}

impl DapLoadReport {
    /// Reports handled per second of the DAP's CPU.
    pub fn reports_per_cpu_second(&self) -> f64 {
        let s = self.dap_cpu.as_secs_f64();
        if s > 0.0 {
            self.reports as f64 / s
        } else {
            0.0
        }
    }
}

/// The DAP service under a stream of meter reports: the embedded MQTT
/// broker on loopback; the DAP runtime (`sealcast_node::dap`, its state
/// file written as the service writes it, before the meters' messages are
/// acknowledged) alone on a thread of its own; the reports sealed in
/// advance by `meters` meters for their headend and published as fast as
/// one MQTT connection takes them to the DAP's report topic; a headend
/// subscriber taking the signed batches. Measured: the DAP thread's CPU
/// time from the first publish until every report was handled.
pub async fn dap_under_load(load: DapLoad) -> Result<DapLoadReport> {
    use sealcast_core::report::{PairwiseKey, seal_report};
    use sealcast_core::target::AgentChannel;
    if load.meters == 0 || load.reports == 0 || load.forged_per_mille > 1000 {
        return Err(Error::Runtime(
            "a DAP load needs meters, reports and at most 1000 forgeries per mille".into(),
        ));
    }
    let site = Site::start("dap-load").await?;
    let topics = &site.topics;
    let mut rng = os_rng()?;
    let headend = EntityCredential::generate(id("headend")?, &mut rng);
    let dap_cred = EntityCredential::generate(id("dap-1")?, &mut rng);
    let dap_id = dap_cred.id().clone();
    let forger = EntityCredential::generate(id("forger")?, &mut rng);
    let meters: Vec<EntityCredential> = (1..=load.meters)
        .map(|i| {
            Ok(EntityCredential::generate(
                id(&format!("meter-{i}"))?,
                &mut rng,
            ))
        })
        .collect::<Result<_>>()?;
    let pairwise: Vec<PairwiseKey> = meters
        .iter()
        .map(|m| {
            PairwiseKey::derive(
                AeadAlg::A128Gcm,
                m.agreement_secret(),
                headend.public().agreement_key(),
                m.id(),
                headend.id(),
            )
        })
        .collect::<std::result::Result<_, _>>()?;
    let at = now();
    let every = match load.forged_per_mille {
        0 => usize::MAX,
        n => (1000 / n).max(1),
    };
    let mut sealed = Vec::with_capacity(load.reports);
    let mut forged = 0;
    for i in 0..load.reports {
        let k = i % meters.len();
        let (Some(meter), Some(key)) = (meters.get(k), pairwise.get(k)) else {
            return Err(Error::Runtime("no meter".into()));
        };
        let is_forged = every != usize::MAX && i % every == every / 2;
        let (signer, seq) = if is_forged {
            forged += 1;
            (forger.signing_key(), 1_000_000 + i as u64)
        } else {
            (meter.signing_key(), (i / meters.len()) as u64 + 1)
        };
        sealed.push(seal_report(
            meter.id(),
            signer,
            headend.id(),
            key,
            SeqNum::new(seq)?,
            at,
            b"{\"kwh\": 1234.5}",
        )?);
    }
    let core = sealcast_metering::dap::DapCore::new(
        dap_cred,
        headend.public(),
        "bench".into(),
        meters.iter().map(EntityCredential::public).collect(),
    )?;
    drop(meters);

    // The headend's side: a subscriber taking the batches.
    let (headend_client, mut batches) = sealcast_mqtt::MqttClient::connect(
        sealcast_mqtt::MqttConfig::from_url(&site.url, "load-headend")
            .map_err(runtime_err)?
            .with_subscription(
                sealcast_mqtt::TopicFilter::new(&topics.agent(&dap_id, AgentChannel::Batch))
                    .map_err(runtime_err)?,
            ),
    )
    .map_err(runtime_err)?;
    headend_client
        .wait_subscribed(Duration::from_secs(10))
        .await
        .map_err(runtime_err)?;
    let taking = tokio::spawn(async move {
        while let Some(m) = batches.next_message().await {
            let _ = m.ack.ack().await;
        }
    });

    // The DAP, alone on its thread.
    let (dap_events, _) = mpsc::unbounded_channel();
    let config = sealcast_node::dap::DapConfig {
        core,
        link: site.link.clone(),
        topics: topics.clone(),
        batch_size: load.batch_size,
        max_batch_delay: Duration::from_millis(200),
        state_file: Some(sealcast_store::DeviceStateFile::new(
            site.dir.join("dap.cbor"),
        )),
        events: dap_events,
        pool: None,
        audit: None,
        report_interval: None,
    };
    let mut dap = Measured::spawn("loaded-dap", move || sealcast_node::dap::spawn(config)).await?;

    let publisher = site.client("load-meters").await?;
    let wall = Instant::now();
    dap.start_clock()?;
    let publishing = publish_all(
        &publisher,
        topics.agent(&dap_id, AgentChannel::Report),
        sealed,
    );
    let total = load.reports as u64;
    let stats = dap
        .handle
        .wait_for(Duration::from_secs(300), |s| s.received >= total)
        .await;
    let wall = wall.elapsed();
    let dap_cpu = dap.finish().await?;
    publishing.abort();
    taking.abort();
    let _ = publisher.disconnect(Duration::from_secs(1)).await;
    let _ = headend_client.disconnect(Duration::from_secs(1)).await;
    let genuine = (load.reports - forged) as u64;
    if stats.received < total || stats.forwarded != genuine || stats.forged != forged as u64 {
        return Err(Error::Runtime(format!(
            "the loaded DAP handled {} of {total} reports (forwarded {}, expected {genuine}; forged {}, expected {forged}; replayed {}, unknown {}) within 300 s",
            stats.received, stats.forwarded, stats.forged, stats.replayed, stats.unknown
        )));
    }
    Ok(DapLoadReport {
        reports: load.reports,
        forged,
        forwarded: stats.forwarded,
        dropped_forged: stats.forged,
        batches: stats.batches,
        dap_cpu,
        wall,
    })
}

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
//! topic, replay window, events).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealcast_core::broadcast::BroadcastSender;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, GroupId, SeqNum};
use sealcast_core::target::GroupChannel;
use sealcast_group::manager::{EntityKind, Manager, RekeyScheme, Role};
use sealcast_store::{AuditLog, SqliteStore};
use tokio::sync::{mpsc, oneshot};

use sealcast_node::device::{LogHandler, NodeConfig, NodeHandle};
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

/// Runs the deployment and the load (see the module documentation).
pub async fn gateway_under_load(load: AlertLoad) -> Result<LoadReport> {
    if load.sensors == 0 || load.alerts == 0 {
        return Err(Error::Runtime("a load needs sensors and alerts".into()));
    }
    let (_transport, link) = crate::demo_link(
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
    let topics = crate::demo_topics(false)?;
    let dir = std::env::temp_dir().join(format!(
        "sealcast-load-{}-{}",
        std::process::id(),
        now().get()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", dir.display())))?;
    let _remove = crate::fire_safety::RemoveOnDrop(dir.clone());
    let store = SqliteStore::open(dir.join("manager.db"), sealcast_store::Kek::generate()?)?;
    let audit = AuditLog::open(dir.join("audit.jsonl"))?;
    let mut rng = os_rng()?;
    let manager_cred = EntityCredential::generate(id(crate::DEMO_MANAGER)?, &mut rng);
    let manager_pub = manager_cred.public();
    let m = manager::spawn_on(
        Manager::new(manager_cred),
        Box::new(store),
        audit,
        BTreeMap::new(),
        &link,
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

    // The gateway, alone on its thread.
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<NodeHandle>>();
    let (start_tx, start_rx) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = NodeConfig {
        credential: gw_cred,
        manager: manager_pub.clone(),
        link: link.clone(),
        topics: topics.clone(),
        rules: Vec::new(),
        relays_for: Vec::new(),
        handler: Arc::new(LogHandler),
        events: events_tx.clone(),
        state_file: None,
        no_key_warning: None,
        replay: device::ReplayPolicies::default(),
        audit: None,
        accept_access_tokens: false,
        access: Default::default(),
        misbehaviour: Default::default(),
        max_burst: load.max_burst,
    };
    let thread = std::thread::Builder::new()
        .name("loaded-gateway".into())
        .spawn(move || -> Result<Duration> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Runtime(format!("cannot start the gateway's runtime: {e}")))?;
            rt.block_on(async move {
                let handle = match device::spawn(config).await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(Duration::ZERO);
                    }
                };
                let _ = ready_tx.send(Ok(handle.clone()));
                if start_rx.await.is_err() {
                    return Ok(Duration::ZERO);
                }
                let clock = thread_clock();
                let _ = stop_rx.await;
                let spent = clock();
                handle.stop().await;
                Ok(spent)
            })
        })
        .map_err(|e| Error::Runtime(format!("cannot start the gateway's thread: {e}")))?;
    let gw = ready_rx
        .await
        .map_err(|_| Error::Runtime("the gateway's thread ended".into()))??;

    // The sensors, then the group and its keys.
    let mut nodes = Vec::with_capacity(sensors.len());
    for c in &sensors {
        nodes.push(
            device::spawn(NodeConfig {
                credential: crate::fire_safety::copy_credential(c)?,
                manager: manager_pub.clone(),
                link: link.clone(),
                topics: topics.clone(),
                rules: Vec::new(),
                relays_for: Vec::new(),
                handler: Arc::new(LogHandler),
                events: events_tx.clone(),
                state_file: None,
                no_key_warning: None,
                replay: device::ReplayPolicies::default(),
                audit: None,
                accept_access_tokens: false,
                access: Default::default(),
                misbehaviour: Default::default(),
                max_burst: device::BURST_MAX,
            })
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
    let material = gw
        .material(&group)
        .await?
        .ok_or_else(|| Error::Runtime("the gateway holds no key of the sensors' group".into()))?;

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

    let (publisher, _inbox) = sealcast_mqtt::MqttClient::connect(
        sealcast_mqtt::MqttConfig::from_url(&url, "load-publisher")
            .map_err(|e| Error::Runtime(e.to_string()))?,
    )
    .map_err(|e| Error::Runtime(e.to_string()))?;
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let wall = Instant::now();
    start_tx
        .send(())
        .map_err(|_| Error::Runtime("the gateway's thread ended".into()))?;
    let topic = target;
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for bytes in sealed {
                if publisher
                    .publish(topic.clone(), sealcast_mqtt::Bytes::from(bytes))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
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
    let _ = stop_tx.send(());
    let gateway_cpu = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| Error::Runtime(format!("gateway thread: {e}")))?
        .map_err(|_| Error::Runtime("the gateway's thread panicked".into()))??;
    publishing.abort();
    let _ = publisher.disconnect(Duration::from_secs(1)).await;
    for n in nodes {
        n.stop().await;
    }
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

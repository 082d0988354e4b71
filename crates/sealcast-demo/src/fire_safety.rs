//! End-to-end demos over real sockets on loopback.
//!
//! [`fire_safety`], on MQTT or CoAP ([`FireSafetyConfig::transport`]): an
//! embedded MQTT broker — or, on CoAP, a unicast endpoint per entity on
//! 127.0.0.1 and a multicast group pinned to 127.0.0.1 — the manager (SQLite store and
//! audit log in a temporary directory), a gateway agent that is the group
//! controller, fire sensors (group 1), door controllers (group 2) and
//! extinguishers (group 3). A sensor's signed alert reaches the gateway,
//! which commands "unlock" to group 2 and "extinguish" to group 3; every
//! device hears both, only members open them. Then the attacks: a forged
//! command, a replay, a command re-wrapped into another group, and an
//! evicted door trying to follow a command sent after its eviction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealcast_core::broadcast::{broadcast_context, peek_broadcast, seal_broadcast};
use sealcast_core::cose;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::{AeadAlg, AeadKey, NONCE_LEN};
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, GroupId, SeqNum};
use sealcast_core::kdf::{self, KdfType};
use sealcast_core::target::GroupChannel;
use sealcast_group::manager::{EntityKind, Manager, RekeyScheme, Role};
use sealcast_store::{AuditLog, SqliteStore};
use tokio::sync::mpsc;

use crate::{Error, Result};
use rand::rngs::StdRng;
use sealcast_core::credential::PublicCredential;
use sealcast_core::target::TopicScheme;
use sealcast_node::link::Inbox;
use sealcast_node::link::bearer::BearerControl;
use sealcast_node::manager::ManagerHandle;

mod attacks;
use sealcast_node::device::{NodeConfig, NodeHandle, Rule};
use sealcast_node::link::bearer::{BearerRole, ServiceSetup};
use sealcast_node::link::{Interest, Link, LinkConfig, Transport};
use sealcast_node::runtime::{Event, EventKind, now, os_rng};
use sealcast_node::{device, manager};

/// Settings of the fire-safety demo.
#[derive(Clone, Debug)]
pub struct FireSafetyConfig {
    /// Field devices (sensors, doors, extinguishers; at least 3).
    pub devices: usize,
    /// An external MQTT broker URL; `None` starts the embedded one (MQTT
    /// only).
    pub broker: Option<String>,
    /// The transport: MQTT (the default) or CoAP (unicast CON per entity,
    /// multicast NON per group, everything on 127.0.0.1).
    pub transport: Transport,
    /// CoAP only: the group channels run on the MBMS-like bearer, the
    /// gateway its service ([`sealcast_node::link::bearer`]).
    pub bearer: bool,
    /// oneM2M only: the CSEs and the serialization.
    pub onem2m: crate::OneM2mOptions,
}

impl Default for FireSafetyConfig {
    fn default() -> Self {
        Self {
            devices: 12,
            broker: None,
            transport: Transport::Mqtt,
            bearer: false,
            onem2m: crate::OneM2mOptions::default(),
        }
    }
}

/// One line of the summary table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was expected.
    pub what: String,
    /// Expected count.
    pub expected: usize,
    /// Observed count.
    pub observed: usize,
}

impl Check {
    /// Whether the observation matches.
    pub fn passed(&self) -> bool {
        self.expected == self.observed
    }
}

/// What the demo did.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Steps and how long each took.
    pub steps: Vec<(String, Duration)>,
    /// Expectations and observations.
    pub checks: Vec<Check>,
    /// A throughput figure, where the demo measures one (reports/s).
    pub rate: Option<f64>,
    /// The fire-safety pipeline: time from the sensor's alert to the last
    /// device acting on its command, and how many broadcasts were opened on
    /// the way (the gateway's alert plus every device's command).
    pub pipeline: Option<Pipeline>,
}

/// The fire-safety pipeline's timing, for the end-to-end benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pipeline {
    /// From just before the sensor sealed its alert to the last door's or
    /// extinguisher's runtime reporting the command executed (the instant
    /// it reported, not when the supervisor read it).
    pub alert_to_last_action: Duration,
    /// From the same start to the gateway reporting the alert verified.
    pub alert_to_gateway: Duration,
    /// From the same start to the first door or extinguisher acting.
    pub alert_to_first_action: Duration,
    /// Broadcasts opened and verified on the way: 1 alert at the gateway and
    /// one command at each door and extinguisher.
    pub opens: usize,
}

impl DemoReport {
    /// True when every expected action happened and every attack failed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }
}

/// A copy of a credential (through its COSE_KeySet), for a MUK derivation
/// that outlives the runtime the credential moves into.
pub(crate) fn copy_credential(c: &EntityCredential) -> Result<EntityCredential> {
    Ok(EntityCredential::from_cose_key_set(&c.to_cose_key_set()?)?)
}

/// A device's place on the bearer of `service`.
fn member_of(
    service: &EntityId,
    service_pub: &sealcast_core::credential::PublicCredential,
    own: &EntityCredential,
) -> Result<BearerRole> {
    let own = copy_credential(own)?;
    let service_pub = service_pub.clone();
    Ok(BearerRole::Member {
        service: service.clone(),
        muk: Arc::new(move || sealcast_bearer::Muk::for_device(&own, &service_pub)),
    })
}

fn id(s: &str) -> Result<EntityId> {
    Ok(EntityId::new(s)?)
}

/// How long the supervisor lets events gather before it reads them again
/// while they keep coming. Woken once per event, it cost the runtimes a
/// system call each (waking its thread) and competed with them for the
/// cores: about a tenth of the CPU of a 1 000-device fan-out. No timing
/// depends on it: an event carries the instant its runtime reported it.
const GATHER: Duration = Duration::from_millis(1);

struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    seen: Vec<Event>,
    start: Instant,
}

impl Events {
    /// Collects events until `target` of all seen match `wanted` (true), or
    /// `timeout` passes (false). Each event is looked at once (the supervisor must
    /// not slow down as the fleet grows), and while they keep coming the
    /// supervisor reads them once per [`GATHER`], not once per event.
    async fn until(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
        target: usize,
        log: &mut dyn FnMut(&str),
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut matched = self.count(&wanted);
        while matched < target {
            let e = match self.rx.try_recv() {
                Ok(e) => e,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing queued: wait for the next event, then let
                    // more gather before reading again (below).
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(e)) => e,
                        _ => break,
                    }
                }
            };
            log(&self.describe(&e));
            if wanted(&e) {
                matched += 1;
            }
            self.seen.push(e);
            if matched < target && self.rx.is_empty() {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + GATHER)).await;
            }
        }
        matched >= target
    }

    /// When the last event matching `f` was reported (by the runtime's own
    /// clock reading, see [`Event::instant`]).
    fn last_reported(&self, f: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.seen.iter().filter(|e| f(e)).map(|e| e.instant).max()
    }

    /// When the first event matching `f` was reported.
    fn first_reported(&self, f: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.seen.iter().filter(|e| f(e)).map(|e| e.instant).min()
    }

    /// Drains what arrives within `quiet`.
    async fn settle(&mut self, quiet: Duration, log: &mut dyn FnMut(&str)) {
        while let Ok(Some(e)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            log(&self.describe(&e));
            self.seen.push(e);
        }
    }

    fn describe(&self, e: &Event) -> String {
        let t = self.start.elapsed().as_millis();
        let what = match &e.kind {
            EventKind::Installed { group, epoch } => {
                format!("installed key of group {} epoch {epoch}", show(group))
            }
            EventKind::Current { group, epoch } => {
                format!(
                    "key of group {} epoch {epoch} confirmed current",
                    show(group)
                )
            }
            EventKind::Executed {
                group,
                signer,
                payload,
            } => {
                format!(
                    "EXECUTED {:?} from {signer} (group {})",
                    String::from_utf8_lossy(payload),
                    show(group)
                )
            }
            EventKind::NotMember { group } => {
                format!("cannot open: not a member of group {}", show(group))
            }
            EventKind::Rejected { group, reason } => {
                format!("REJECTED on group {}: {reason}", show(group))
            }
            EventKind::CannotOpenDelivery { recipient } => {
                format!("relays a key delivery for {recipient} it cannot open")
            }
            EventKind::Issued { group, payload } => {
                format!(
                    "issues {:?} to group {}",
                    String::from_utf8_lossy(payload),
                    show(group)
                )
            }
            EventKind::Burst { group, size } => {
                format!(
                    "opened {size} queued messages of group {} as one burst",
                    show(group)
                )
            }
            other => format!("{other:?}"),
        };
        format!("  {t:>6} ms  {:<10} {what}", e.who.as_str())
    }

    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| f(e)).count()
    }
}

fn show(group: &GroupId) -> String {
    String::from_utf8_lossy(group.as_bytes()).into_owned()
}

fn executed(e: &Event, group: &GroupId, payload: &[u8]) -> bool {
    matches!(&e.kind, EventKind::Executed { group: g, payload: p, .. } if g == group && p == payload)
}

fn rejected_with(e: &Event, group: &GroupId, needle: &str) -> bool {
    matches!(&e.kind, EventKind::Rejected { group: g, reason } if g == group && reason.contains(needle))
}

/// Runs the fire-safety deployment and the attacks; `log` receives the
/// timeline as it happens.
pub async fn fire_safety(
    config: FireSafetyConfig,
    log: &mut dyn FnMut(&str),
) -> Result<DemoReport> {
    if config.devices < 3 {
        return Err(Error::Runtime(
            "the fire-safety demo needs at least 3 devices".into(),
        ));
    }
    if config.bearer && config.transport != Transport::Coap {
        return Err(Error::Runtime(
            "the bearer runs under CoAP multicast: use it with the CoAP transport".into(),
        ));
    }
    let mut report = DemoReport::default();
    let mut steps = Steps::start();
    let mut d = Deployment::start(&config, log).await?;
    d.enrol(log).await?;
    steps.done(
        &mut report,
        &format!(
            "enrolment: manager, gateway and {} devices connected and enrolled",
            d.devices.len()
        ),
        log,
    );
    d.distribute_keys(&mut report, log).await?;
    steps.done(
        &mut report,
        "key distribution: 3 groups, every member acknowledged its epoch",
        log,
    );
    let p = d.the_fire(&mut report, log).await?;
    steps.done(
        &mut report,
        &format!(
            "alert → unlock + extinguish: last device acted {} ms after the alert (the gateway verified it after {:.1} ms, the first device acted after {:.1} ms)",
            p.alert_to_last_action.as_millis(),
            p.alert_to_gateway.as_secs_f64() * 1e3,
            p.alert_to_first_action.as_secs_f64() * 1e3,
        ),
        log,
    );
    attacks::run(&mut d, &mut report, log).await?;
    steps.done(
        &mut report,
        "attacks: forged, replayed, re-wrapped, after eviction",
        log,
    );
    Ok(report)
}

/// The link of an entity in `role`: on the bearer when the demo runs one.
fn link_for(link: &LinkConfig, bearer: bool, role: BearerRole) -> LinkConfig {
    if bearer {
        link.with_bearer(role)
    } else {
        link.clone()
    }
}

/// The timeline: each step's name and how long it took.
struct Steps {
    start: Instant,
}

impl Steps {
    fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn done(&mut self, report: &mut DemoReport, name: &str, log: &mut dyn FnMut(&str)) {
        report.steps.push((name.to_owned(), self.start.elapsed()));
        self.start = Instant::now();
        log(&format!(
            "== {name} ({} ms)",
            report.steps.last().map_or(0, |s| s.1.as_millis())
        ));
    }
}

/// The three groups.
struct Groups {
    sensors: GroupId,
    doors: GroupId,
    exts: GroupId,
}

/// Everything running: the transport, the manager, the gateway and the
/// devices, the events they report, and what the attacks need.
struct Deployment {
    /// Keeps the embedded broker (MQTT) alive.
    _transport: crate::DemoTransport,
    link: LinkConfig,
    bearer: bool,
    topics: TopicScheme,
    /// Removed however the demo ends, a failure included.
    _remove_dir: RemoveOnDrop,
    rng: StdRng,
    manager: ManagerHandle,
    manager_pub: PublicCredential,
    g: Groups,
    gateway: EntityId,
    gw_pub: PublicCredential,
    sensors: Vec<EntityId>,
    doors: Vec<EntityId>,
    exts: Vec<EntityId>,
    mallory: EntityId,
    devices: Vec<EntityId>,
    events: Events,
    events_tx: mpsc::UnboundedSender<Event>,
    nodes: BTreeMap<EntityId, NodeHandle>,
    bearer_control: BearerControl,
    bearer_devices: Vec<PublicCredential>,
    /// The attacker's tap (see `attacks`): on the bearer an insider there
    /// too, entitled like any device, so its attacks reach every door's
    /// end-to-end layer.
    tap_cred: EntityCredential,
    /// How long any one wait may take.
    wait: Duration,
}

impl Deployment {
    /// The transport, the manager (SQLite store and audit log in a
    /// temporary directory) and the gateway agent, with its bearer service.
    async fn start(config: &FireSafetyConfig, log: &mut dyn FnMut(&str)) -> Result<Self> {
        let (transport, link) = crate::demo_link(
            config.transport,
            config.broker.as_deref(),
            &config.onem2m,
            crate::DEMO_MANAGER,
            log,
        )
        .await?;
        let topics = crate::demo_topics(config.broker.is_some())?;
        if config.broker.is_some() {
            log(&format!("topic prefix {} (this demo's own)", topics.root()));
        }
        let dir = std::env::temp_dir().join(format!(
            "sealcast-demo-{}-{}",
            std::process::id(),
            now().get()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", dir.display())))?;
        let remove_dir = RemoveOnDrop(dir.clone());
        let kek = sealcast_store::Kek::generate()?;
        let store = SqliteStore::open(dir.join("manager.db"), kek)?;
        let audit = AuditLog::open(dir.join("audit.jsonl"))?;
        log(&format!(
            "manager state: SQLite {} and audit log {}",
            dir.join("manager.db").display(),
            dir.join("audit.jsonl").display()
        ));

        let mut rng = os_rng()?;
        let gateway = id("gateway")?;
        let on_bearer = |role: BearerRole| link_for(&link, config.bearer, role);
        let manager_cred = EntityCredential::generate(id(crate::DEMO_MANAGER)?, &mut rng);
        let manager_pub = manager_cred.public();
        let manager = manager::spawn_on(
            Manager::new(manager_cred),
            Box::new(store),
            audit,
            BTreeMap::new(),
            &on_bearer(BearerRole::Sender {
                service: gateway.clone(),
            }),
            topics.clone(),
        )
        .await?;

        let g = Groups {
            sensors: GroupId::new(b"fire-sensors")?,
            doors: GroupId::new(b"fire-doors")?,
            exts: GroupId::new(b"extinguishers")?,
        };
        let n_sensors = (config.devices / 4).max(1);
        let n_doors = ((config.devices - n_sensors) / 2).max(1);
        let n_ext = config.devices - n_sensors - n_doors;
        let names = |prefix: &str, n: usize| -> Result<Vec<EntityId>> {
            (1..=n).map(|i| id(&format!("{prefix}-{i}"))).collect()
        };
        let sensors = names("sensor", n_sensors)?;
        let doors = names("door", n_doors)?;
        let exts = names("ext", n_ext)?;
        let mallory = id("mallory")?;
        let devices: Vec<EntityId> = sensors
            .iter()
            .chain(&doors)
            .chain(&exts)
            .chain(std::iter::once(&mallory))
            .cloned()
            .collect();

        let (events_tx, rx) = mpsc::unbounded_channel();
        let events = Events {
            rx,
            seen: Vec::new(),
            start: Instant::now(),
        };
        let gw_cred = EntityCredential::generate(gateway.clone(), &mut rng);
        let gw_pub = gw_cred.public();
        manager
            .enrol(gw_cred.public(), EntityKind::Agent, None)
            .await?;
        // The bearer service entitles the devices once they listen.
        let (service, bearer_control) = ServiceSetup::new(
            Vec::new(),
            {
                let gw = copy_credential(&gw_cred)?;
                Arc::new(move |device: &PublicCredential| {
                    sealcast_bearer::Muk::for_service(&gw, device)
                })
            },
            sealcast_node::link::bearer::DEFAULT_REDELIVER,
            None,
        );
        let gw = device::spawn(NodeConfig {
            rules: vec![
                Rule {
                    on_alert_from: g.sensors.clone(),
                    then_command: g.doors.clone(),
                    command: b"unlock".to_vec(),
                },
                Rule {
                    on_alert_from: g.sensors.clone(),
                    then_command: g.exts.clone(),
                    command: b"extinguish".to_vec(),
                },
            ],
            relays_for: devices.clone(),
            ..crate::plain_node(
                gw_cred,
                manager_pub.clone(),
                on_bearer(BearerRole::Service(service)),
                topics.clone(),
                events_tx.clone(),
            )
        })
        .await?;
        let mut nodes = BTreeMap::new();
        nodes.insert(gateway.clone(), gw);
        let tap_cred = EntityCredential::generate(id("tap")?, &mut rng);
        Ok(Self {
            _transport: transport,
            link,
            bearer: config.bearer,
            topics,
            _remove_dir: remove_dir,
            rng,
            manager,
            manager_pub,
            g,
            gateway,
            gw_pub,
            sensors,
            doors,
            exts,
            mallory,
            devices,
            events,
            events_tx,
            nodes,
            bearer_control,
            bearer_devices: Vec::new(),
            tap_cred,
            wait: Duration::from_secs(20),
        })
    }

    /// The link of an entity in `role` on the bearer, or the plain link.
    fn on_bearer(&self, role: BearerRole) -> LinkConfig {
        link_for(&self.link, self.bearer, role)
    }

    /// One batch enrolment of the devices (one store transaction, one audit
    /// flush), then they connect; large fleets report their progress.
    async fn enrol(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let creds: Vec<EntityCredential> = self
            .devices
            .iter()
            .map(|d| EntityCredential::generate(d.clone(), &mut self.rng))
            .collect();
        self.bearer_devices = creds.iter().map(EntityCredential::public).collect();
        self.manager
            .enrol_many(
                creds
                    .iter()
                    .map(|c| (c.public(), EntityKind::Device, Some(self.gateway.clone())))
                    .collect(),
            )
            .await?;
        let total = self.devices.len();
        let tenth = (total / 10).max(1);
        for (i, cred) in creds.into_iter().enumerate() {
            let d = cred.id().clone();
            if total >= 100 && (i + 1) % tenth == 0 {
                log(&format!("  … {} of {total} devices connected", i + 1));
            }
            let link = self.on_bearer(member_of(&self.gateway, &self.gw_pub, &cred)?);
            // A sensor sends alerts to its group and acts on none: it
            // keeps the group's key current without hearing the other
            // sensors' alerts.
            let send_only = if self.sensors.contains(&d) {
                std::iter::once(self.g.sensors.clone()).collect()
            } else {
                Default::default()
            };
            let handle = device::spawn(NodeConfig {
                send_only,
                ..crate::plain_node(
                    cred,
                    self.manager_pub.clone(),
                    link,
                    self.topics.clone(),
                    self.events_tx.clone(),
                )
            })
            .await?;
            self.nodes.insert(d, handle);
        }
        if self.bearer {
            let change = self
                .bearer_control
                .set_devices(self.bearer_devices.clone())
                .await?;
            log(&format!(
                "bearer: the gateway entitled {} devices (MSK by unicast under each one's MUK); group traffic leaves as padded, encrypted bearer frames",
                change.entitled.len()
            ));
        }
        Ok(())
    }

    /// The three groups created, their members added, and every member's
    /// key delivered through the gateway and acknowledged.
    async fn distribute_keys(
        &mut self,
        report: &mut DemoReport,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let (m, g, gateway) = (&self.manager, &self.g, &self.gateway);
        m.create_group(
            g.sensors.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::PointToPoint,
        )
        .await?;
        m.create_group(g.doors.clone(), AeadAlg::A128Gcm, RekeyScheme::Tree)
            .await?;
        m.create_group(g.exts.clone(), AeadAlg::A128Gcm, RekeyScheme::PointToPoint)
            .await?;
        let mut sensor_members: Vec<(EntityId, Role)> = self
            .sensors
            .iter()
            .map(|s| (s.clone(), Role::Sender))
            .collect();
        sensor_members.push((gateway.clone(), Role::Receiver));
        let mut door_members: Vec<(EntityId, Role)> = vec![(gateway.clone(), Role::Sender)];
        door_members.extend(self.doors.iter().map(|d| (d.clone(), Role::Receiver)));
        door_members.push((self.mallory.clone(), Role::Receiver));
        let mut ext_members: Vec<(EntityId, Role)> = vec![(gateway.clone(), Role::Sender)];
        ext_members.extend(self.exts.iter().map(|d| (d.clone(), Role::Receiver)));
        ext_members.push((self.mallory.clone(), Role::Receiver));
        let memberships = sensor_members.len() + door_members.len() + ext_members.len();
        m.add_members(g.sensors.clone(), sensor_members).await?;
        m.add_members(g.doors.clone(), door_members).await?;
        m.add_members(g.exts.clone(), ext_members).await?;
        for group in [&g.sensors, &g.doors, &g.exts] {
            m.wait_converged(group, self.wait).await?;
        }
        self.events.settle(Duration::from_millis(200), log).await;
        report.checks.push(Check {
            what: "group keys installed end to end (member × group)".into(),
            expected: memberships,
            observed: self
                .events
                .count(|e| matches!(e.kind, EventKind::Installed { .. })),
        });
        // On oneM2M the CSEs relay key deliveries into each device's inbox;
        // the gateway sees none of them.
        let onem2m = matches!(self.link, LinkConfig::OneM2m(_));
        report.checks.push(Check {
            what: if onem2m {
                "key deliveries the gateway saw (oneM2M: the CSEs relay them)".into()
            } else {
                "key deliveries the gateway relayed but could not open".into()
            },
            expected: if onem2m { 0 } else { memberships - 3 },
            observed: self
                .events
                .count(|e| matches!(e.kind, EventKind::CannotOpenDelivery { .. })),
        });
        Ok(())
    }

    /// A sensor's alert: the gateway verifies it and commands "unlock" to
    /// the doors and "extinguish" to the extinguishers. Returns its timing.
    async fn the_fire(
        &mut self,
        report: &mut DemoReport,
        log: &mut dyn FnMut(&str),
    ) -> Result<Pipeline> {
        let alert_at = Instant::now();
        let sensor = self
            .sensors
            .first()
            .and_then(|s| self.nodes.get(s))
            .ok_or_else(|| Error::Runtime("no sensors".into()))?;
        sensor
            .send(&self.g.sensors, GroupChannel::Alert, b"smoke in zone 3")
            .await?;
        let (nd, ne) = (self.doors.len(), self.exts.len());
        let (dg, eg) = (&self.g.doors, &self.g.exts);
        let dl: BTreeSet<&EntityId> = self.doors.iter().collect();
        let el: BTreeSet<&EntityId> = self.exts.iter().collect();
        let acted = |e: &Event| {
            (dl.contains(&e.who) && executed(e, dg, b"unlock"))
                || (el.contains(&e.who) && executed(e, eg, b"extinguish"))
        };
        let all_acted = self.events.until(self.wait, acted, nd + ne, log).await;
        // The last device acted when its runtime reported it, whenever the
        // supervisor read that (the transport floor times its receipts the
        // same way); if some never did, the wait is the time.
        let since_alert = |t: Instant| t.saturating_duration_since(alert_at);
        let alert_to_last = match self.events.last_reported(acted) {
            Some(t) if all_acted => since_alert(t),
            _ => alert_at.elapsed(),
        };
        let (gateway, sg) = (&self.gateway, &self.g.sensors);
        let pipeline = Pipeline {
            alert_to_last_action: alert_to_last,
            alert_to_gateway: self
                .events
                .first_reported(|e| e.who == *gateway && executed(e, sg, b"smoke in zone 3"))
                .map_or(alert_to_last, since_alert),
            alert_to_first_action: self
                .events
                .first_reported(acted)
                .map_or(alert_to_last, since_alert),
            opens: 1 + nd + ne,
        };
        report.pipeline = Some(pipeline);
        self.events.settle(Duration::from_millis(200), log).await;
        report.checks.push(Check {
            what: "gateway verified the sensor's alert".into(),
            expected: 1,
            observed: self
                .events
                .count(|e| e.who == *gateway && executed(e, sg, b"smoke in zone 3")),
        });
        report.checks.push(Check {
            what: "doors that executed \"unlock\"".into(),
            expected: nd,
            observed: self
                .events
                .count(|e| dl.contains(&e.who) && executed(e, dg, b"unlock")),
        });
        report.checks.push(Check {
            what: "extinguishers that executed \"extinguish\"".into(),
            expected: ne,
            observed: self
                .events
                .count(|e| el.contains(&e.who) && executed(e, eg, b"extinguish")),
        });
        // On CoAP the multicast group carries every group's traffic: every
        // device hears "unlock", and those outside the door group (all but
        // the doors, mallory — an insider — and the gateway, the sender)
        // hold no key of it. On MQTT a device subscribes to the groups it
        // holds keys of, and on oneM2M the door group's <group> fans out
        // to its members: none of them is delivered "unlock".
        let outsiders = self.devices.len() + 1 - (nd + 2);
        let (what, expected) = match self.link {
            LinkConfig::Coap(_) => (
                "devices that heard \"unlock\" but hold no door key (CoAP multicast)",
                outsiders,
            ),
            LinkConfig::OneM2m(_) => (
                "devices outside the door group the CSE fanned \"unlock\" out to",
                0,
            ),
            LinkConfig::Mqtt { .. } => (
                "devices outside the door group the broker delivered \"unlock\" to",
                0,
            ),
        };
        report.checks.push(Check {
            what: what.into(),
            expected,
            observed: self
                .events
                .count(|e| matches!(&e.kind, EventKind::NotMember { group } if group == dg)),
        });
        Ok(pipeline)
    }
}

/// Removes a demo's temporary directory when dropped.
#[derive(Debug)]
pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The insider's re-wrap: open the outer layer of `bytes` (sealed for group
/// A) with the group key it holds, and encrypt the untouched inner COSE_Sign1
/// for group B as the same sender with a fresh sequence number.
fn rewrap(
    bytes: &[u8],
    from: &GroupKeyMaterial,
    from_target: &str,
    to: &GroupKeyMaterial,
    signer: &EntityId,
    to_target: &str,
) -> Result<Vec<u8>> {
    let header = peek_broadcast(bytes)?;
    let outer = cose::parse_encrypt0(bytes, sealcast_core::broadcast::MAX_BROADCAST_LEN)?;
    let protected = outer.protected.original_data.clone().unwrap_or_default();
    let key_iv = |m: &GroupKeyMaterial, sid: &[u8]| -> Result<(AeadKey, Vec<u8>)> {
        let ctx = Some(m.group().as_bytes());
        let alg = m.alg().cose_id();
        let key = kdf::derive(
            m.master_secret(),
            m.master_salt(),
            sid,
            ctx,
            alg,
            KdfType::Key,
            m.alg().key_len(),
        )?;
        let iv = kdf::derive(
            m.master_secret(),
            m.master_salt(),
            &[],
            ctx,
            alg,
            KdfType::Iv,
            NONCE_LEN,
        )?;
        Ok((AeadKey::new(m.alg(), &key)?, iv.to_vec()))
    };
    let (key_a, iv_a) = key_iv(from, header.sender_id.as_bytes())?;
    let context_a = broadcast_context(
        &header.group,
        header.epoch,
        &header.sender_id,
        header.seq,
        header.timestamp,
        from_target,
    );
    let nonce_a = kdf::nonce(&iv_a, header.sender_id.as_bytes(), &header.seq.partial_iv())?;
    let inner = key_a.open(
        &nonce_a,
        &cose::enc_structure("Encrypt0", &protected, &context_a),
        outer.ciphertext.as_deref().unwrap_or(&[]),
    )?;

    let sid_b = to
        .signers()
        .iter()
        .find(|s| s.entity == *signer)
        .map(|s| s.sender_id.clone())
        .ok_or_else(|| Error::Runtime("signer is not a sender of the target group".into()))?;
    let (key_b, iv_b) = key_iv(to, sid_b.as_bytes())?;
    let seq = SeqNum::new(header.seq.get() + 1000)?;
    let ts = now();
    let context_b = broadcast_context(to.group(), to.epoch(), &sid_b, seq, ts, to_target);
    let protected_b = vec![0xa1, 0x01, AeadAlg::A128Gcm.cose_id() as u8];
    let nonce_b = kdf::nonce(&iv_b, sid_b.as_bytes(), &seq.partial_iv())?;
    let ciphertext = key_b.seal(
        &nonce_b,
        &cose::enc_structure("Encrypt0", &protected_b, &context_b),
        &inner,
    )?;
    let msg = coset::CoseEncrypt0Builder::new()
        .protected(
            coset::HeaderBuilder::new()
                .algorithm(coset::iana::Algorithm::A128GCM)
                .build(),
        )
        .unprotected(
            coset::HeaderBuilder::new()
                .key_id(sid_b.as_bytes().to_vec())
                .partial_iv(seq.partial_iv())
                .value(
                    cose::HDR_KID_CONTEXT,
                    ciborium::Value::Bytes(to.group().as_bytes().to_vec()),
                )
                .value(cose::HDR_EPOCH, ciborium::Value::from(to.epoch().get()))
                .value(cose::HDR_TIMESTAMP, ciborium::Value::from(ts.get()))
                .build(),
        )
        .ciphertext(ciphertext)
        .build();
    coset::TaggedCborSerializable::to_tagged_vec(msg)
        .map_err(|_| Error::Runtime("cannot encode the re-wrapped object".into()))
}

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
use sealcast_node::device::{LogHandler, NodeConfig, NodeHandle, Rule};
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
}

impl Default for FireSafetyConfig {
    fn default() -> Self {
        Self {
            devices: 12,
            broker: None,
            transport: Transport::Mqtt,
            bearer: false,
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
    /// From just before the sensor sealed its alert to the supervisor seeing
    /// the last device's execution (an upper bound of the last action).
    pub alert_to_last_action: Duration,
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
fn copy_credential(c: &EntityCredential) -> Result<EntityCredential> {
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

struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    seen: Vec<Event>,
    start: Instant,
}

impl Events {
    /// Collects events until `target` of all seen match `wanted`, or
    /// `timeout` passes. Each event is looked at once (the supervisor must
    /// not slow down as the fleet grows: it times the pipeline).
    async fn until(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
        target: usize,
        log: &mut dyn FnMut(&str),
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut matched = self.count(&wanted);
        while matched < target {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    log(&self.describe(&e));
                    if wanted(&e) {
                        matched += 1;
                    }
                    self.seen.push(e);
                }
                _ => break,
            }
        }
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
    let mut report = DemoReport::default();
    let mut step_start = Instant::now();
    let mut step = |report: &mut DemoReport, name: &str, log: &mut dyn FnMut(&str)| {
        report.steps.push((name.to_owned(), step_start.elapsed()));
        step_start = Instant::now();
        log(&format!(
            "== {name} ({} ms)",
            report.steps.last().map_or(0, |s| s.1.as_millis())
        ));
    };

    // --- infrastructure ---------------------------------------------------
    if config.bearer && config.transport != Transport::Coap {
        return Err(Error::Runtime(
            "the bearer runs under CoAP multicast: use it with the CoAP transport".into(),
        ));
    }
    let (_transport, link) =
        crate::demo_link(config.transport, config.broker.as_deref(), log).await?;
    let gateway = id("gateway")?;
    let on_bearer = |role: BearerRole| -> LinkConfig {
        if config.bearer {
            link.with_bearer(role)
        } else {
            link.clone()
        }
    };
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
    // Removed however the demo ends, a failure included.
    let _remove_dir = RemoveOnDrop(dir.clone());
    let kek = sealcast_store::Kek::generate()?;
    let store = SqliteStore::open(dir.join("manager.db"), kek)?;
    let audit = AuditLog::open(dir.join("audit.jsonl"))?;
    log(&format!(
        "manager state: SQLite {} and audit log {}",
        dir.join("manager.db").display(),
        dir.join("audit.jsonl").display()
    ));

    let mut rng = os_rng()?;
    let manager_cred = EntityCredential::generate(id("manager")?, &mut rng);
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

    let sensors_g = GroupId::new(b"fire-sensors")?;
    let doors_g = GroupId::new(b"fire-doors")?;
    let ext_g = GroupId::new(b"extinguishers")?;
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

    let (tx, rx) = mpsc::unbounded_channel();
    let mut events = Events {
        rx,
        seen: Vec::new(),
        start: Instant::now(),
    };
    let mut nodes: BTreeMap<EntityId, NodeHandle> = BTreeMap::new();
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
            Arc::new(
                move |device: &sealcast_core::credential::PublicCredential| {
                    sealcast_bearer::Muk::for_service(&gw, device)
                },
            )
        },
        sealcast_node::link::bearer::DEFAULT_REDELIVER,
        None,
    );
    let gw = device::spawn(NodeConfig {
        credential: gw_cred,
        manager: manager_pub.clone(),
        link: on_bearer(BearerRole::Service(service)),
        topics: topics.clone(),
        rules: vec![
            Rule {
                on_alert_from: sensors_g.clone(),
                then_command: doors_g.clone(),
                command: b"unlock".to_vec(),
            },
            Rule {
                on_alert_from: sensors_g.clone(),
                then_command: ext_g.clone(),
                command: b"extinguish".to_vec(),
            },
        ],
        relays_for: devices.clone(),
        handler: Arc::new(LogHandler),
        events: tx.clone(),
        state_file: None,
        no_key_warning: None,
        replay: device::ReplayPolicies::default(),
    })
    .await?;
    nodes.insert(gateway.clone(), gw.clone());
    // One batch enrolment (one store transaction, one audit flush), then
    // the devices connect; large fleets report their progress.
    let creds: Vec<EntityCredential> = devices
        .iter()
        .map(|d| EntityCredential::generate(d.clone(), &mut rng))
        .collect();
    // The attacker's tap (below): on the bearer an insider there too,
    // entitled like any device, so its attacks reach every door's
    // end-to-end layer.
    let tap_id = id("tap")?;
    let tap_cred = EntityCredential::generate(tap_id.clone(), &mut rng);
    let mut bearer_devices: Vec<_> = creds.iter().map(EntityCredential::public).collect();
    manager
        .enrol_many(
            creds
                .iter()
                .map(|c| (c.public(), EntityKind::Device, Some(gateway.clone())))
                .collect(),
        )
        .await?;
    let tenth = (devices.len() / 10).max(1);
    for (i, cred) in creds.into_iter().enumerate() {
        let d = cred.id().clone();
        if devices.len() >= 100 && (i + 1) % tenth == 0 {
            log(&format!(
                "  … {} of {} devices connected",
                i + 1,
                devices.len()
            ));
        }
        let link = on_bearer(member_of(&gateway, &gw_pub, &cred)?);
        let handle = device::spawn(NodeConfig {
            credential: cred,
            manager: manager_pub.clone(),
            link,
            topics: topics.clone(),
            rules: Vec::new(),
            relays_for: Vec::new(),
            handler: Arc::new(LogHandler),
            events: tx.clone(),
            state_file: None,
            no_key_warning: None,
            replay: device::ReplayPolicies::default(),
        })
        .await?;
        nodes.insert(d, handle);
    }
    if config.bearer {
        let change = bearer_control.set_devices(bearer_devices.clone()).await?;
        log(&format!(
            "bearer: the gateway entitled {} devices (MSK by unicast under each one's MUK); group traffic leaves as padded, encrypted bearer frames",
            change.entitled.len()
        ));
    }
    step(
        &mut report,
        &format!(
            "enrolment: manager, gateway and {} devices connected and enrolled",
            devices.len()
        ),
        log,
    );

    // --- groups and key distribution through the gateway ------------------
    manager
        .create_group(
            sensors_g.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::PointToPoint,
        )
        .await?;
    manager
        .create_group(doors_g.clone(), AeadAlg::A128Gcm, RekeyScheme::Tree)
        .await?;
    manager
        .create_group(ext_g.clone(), AeadAlg::A128Gcm, RekeyScheme::PointToPoint)
        .await?;
    let mut sensor_members: Vec<(EntityId, Role)> =
        sensors.iter().map(|s| (s.clone(), Role::Sender)).collect();
    sensor_members.push((gateway.clone(), Role::Receiver));
    let mut door_members: Vec<(EntityId, Role)> = vec![(gateway.clone(), Role::Sender)];
    door_members.extend(doors.iter().map(|d| (d.clone(), Role::Receiver)));
    door_members.push((mallory.clone(), Role::Receiver));
    let mut ext_members: Vec<(EntityId, Role)> = vec![(gateway.clone(), Role::Sender)];
    ext_members.extend(exts.iter().map(|d| (d.clone(), Role::Receiver)));
    ext_members.push((mallory.clone(), Role::Receiver));
    manager
        .add_members(sensors_g.clone(), sensor_members.clone())
        .await?;
    manager
        .add_members(doors_g.clone(), door_members.clone())
        .await?;
    manager
        .add_members(ext_g.clone(), ext_members.clone())
        .await?;
    let wait = Duration::from_secs(20);
    for g in [&sensors_g, &doors_g, &ext_g] {
        manager.wait_converged(g, wait).await?;
    }
    events.settle(Duration::from_millis(200), log).await;
    let memberships = sensor_members.len() + door_members.len() + ext_members.len();
    report.checks.push(Check {
        what: "group keys installed end to end (member × group)".into(),
        expected: memberships,
        observed: events.count(|e| matches!(e.kind, EventKind::Installed { .. })),
    });
    report.checks.push(Check {
        what: "key deliveries the gateway relayed but could not open".into(),
        expected: memberships - 3,
        observed: events.count(|e| matches!(e.kind, EventKind::CannotOpenDelivery { .. })),
    });
    step(
        &mut report,
        "key distribution: 3 groups, every member acknowledged its epoch",
        log,
    );

    // --- the fire ---------------------------------------------------------
    let alert_at = Instant::now();
    nodes[&sensors[0]]
        .send(&sensors_g, GroupChannel::Alert, b"smoke in zone 3")
        .await?;
    let (nd, ne) = (doors.len(), exts.len());
    let (dg, eg) = (doors_g.clone(), ext_g.clone());
    let (dl, el): (BTreeSet<EntityId>, BTreeSet<EntityId>) = (
        doors.iter().cloned().collect(),
        exts.iter().cloned().collect(),
    );
    let by = |list: &BTreeSet<EntityId>, e: &Event| list.contains(&e.who);
    events
        .until(
            wait,
            |e| {
                (by(&dl, e) && executed(e, &dg, b"unlock"))
                    || (by(&el, e) && executed(e, &eg, b"extinguish"))
            },
            nd + ne,
            log,
        )
        .await;
    let alert_to_last = alert_at.elapsed();
    report.pipeline = Some(Pipeline {
        alert_to_last_action: alert_to_last,
        opens: 1 + nd + ne,
    });
    events.settle(Duration::from_millis(200), log).await;
    report.checks.push(Check {
        what: "gateway verified the sensor's alert".into(),
        expected: 1,
        observed: events.count(|e| e.who == gateway && executed(e, &sensors_g, b"smoke in zone 3")),
    });
    report.checks.push(Check {
        what: "doors that executed \"unlock\"".into(),
        expected: nd,
        observed: events.count(|e| dl.contains(&e.who) && executed(e, &doors_g, b"unlock")),
    });
    report.checks.push(Check {
        what: "extinguishers that executed \"extinguish\"".into(),
        expected: ne,
        observed: events.count(|e| el.contains(&e.who) && executed(e, &ext_g, b"extinguish")),
    });
    // Everyone subscribed hears the door topic; the door-group members are
    // the doors, mallory (an insider) and the gateway (the sender).
    let outsiders = devices.len() + 1 - (doors.len() + 2);
    report.checks.push(Check {
        what: "devices that heard \"unlock\" but hold no door key".into(),
        expected: outsiders,
        observed: events
            .count(|e| matches!(&e.kind, EventKind::NotMember { group } if *group == doors_g)),
    });
    step(
        &mut report,
        &format!(
            "alert → unlock + extinguish: last device acted {} ms after the alert",
            alert_to_last.as_millis()
        ),
        log,
    );

    // --- attacks ------------------------------------------------------------
    // The attacker's tap: subscribed to the door topics (MQTT) or joined to
    // the group address (CoAP); it publishes where everyone does.
    let (tap, mut tap_inbox) = Link::connect(
        &tap_id,
        &on_bearer(member_of(&gateway, &gw_pub, &tap_cred)?),
        topics.clone(),
        Interest {
            filters: vec![topics.group_filter(&doors_g)],
            multicast: true,
            ..Interest::default()
        },
    )
    .await?;
    if config.bearer {
        bearer_devices.push(tap_cred.public());
        bearer_control.set_devices(bearer_devices).await?;
    }
    let door_topic = topics.group(&doors_g, GroupChannel::Command);
    let ext_topic = topics.group(&ext_g, GroupChannel::Command);

    // 1. Forged command: mallory, an insider of the door group, seals "open
    //    all" under the gateway's sender key and signs it with its own key.
    let doors_material = nodes[&mallory]
        .material(&doors_g)
        .await?
        .ok_or_else(|| Error::Runtime("mallory holds no door key".into()))?;
    let gw_signer = doors_material
        .signers()
        .iter()
        .find(|s| s.entity == gateway)
        .cloned()
        .ok_or_else(|| Error::Runtime("gateway is not a door signer".into()))?;
    let mallory_key = ed25519_dalek_key(&mut rng);
    let fake = GroupKeyMaterial::new(
        doors_g.clone(),
        doors_material.epoch(),
        doors_material.alg(),
        doors_material.master_secret(),
        doors_material.master_salt(),
        vec![AuthorizedSigner {
            sender_id: gw_signer.sender_id.clone(),
            entity: mallory.clone(),
            verifying_key: mallory_key.verifying_key(),
        }],
        None,
    )?;
    let forged = seal_broadcast(
        &GroupContext::new(&fake)?,
        &mallory,
        &mallory_key,
        SeqNum::new(500)?,
        now(),
        &door_topic,
        b"open all",
    )?;
    tap.publish_group(&doors_g, GroupChannel::Command, forged)
        .await?;
    let bad_sig = "signature";
    let nd_honest = doors.len();
    events
        .until(
            wait,
            |e| by(&dl, e) && rejected_with(e, &dg, bad_sig),
            nd,
            log,
        )
        .await;
    events.settle(Duration::from_millis(100), log).await;
    report.checks.push(Check {
        what: "attack 1, forged command: doors that refused it".into(),
        expected: nd_honest,
        observed: events.count(|e| dl.contains(&e.who) && rejected_with(e, &doors_g, bad_sig)),
    });

    // 2. Replay: the genuine "unlock" captured off the broker and published again.
    let mut unlock = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // The tap subscribed after the unlock went out; ask the gateway for one
    // more "unlock", capture it, let it execute, then replay it.
    nodes[&gateway]
        .send(&doors_g, GroupChannel::Command, b"unlock")
        .await?;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, tap_inbox.next_message()).await {
        let payload = m.payload.clone();
        let on_door_topic = m.target == door_topic;
        m.ack.ack().await;
        if on_door_topic
            && peek_broadcast(&payload)
                .is_ok_and(|h| h.sender_id == gw_signer.sender_id && h.seq.get() < 500)
        {
            unlock = Some(payload);
            break;
        }
    }
    let unlock =
        unlock.ok_or_else(|| Error::Runtime("did not capture an unlock command".into()))?;
    events
        .until(
            wait,
            |e| by(&dl, e) && executed(e, &dg, b"unlock"),
            2 * nd,
            log,
        )
        .await;
    events.settle(Duration::from_millis(100), log).await;
    tap.publish_group(&doors_g, GroupChannel::Command, unlock.to_vec())
        .await?;
    events
        .until(
            wait,
            |e| by(&dl, e) && rejected_with(e, &dg, "replay"),
            nd,
            log,
        )
        .await;
    events.settle(Duration::from_millis(100), log).await;
    report.checks.push(Check {
        what: "attack 2, replayed \"unlock\": doors that refused it".into(),
        expected: nd_honest,
        observed: events.count(|e| dl.contains(&e.who) && rejected_with(e, &doors_g, "replay")),
    });

    // 3. Re-wrap: mallory, a member of both groups, decrypts the genuine
    //    "unlock" and re-encrypts the gateway-signed inner object for the
    //    extinguisher group under a fresh sequence number.
    let ext_material = nodes[&mallory]
        .material(&ext_g)
        .await?
        .ok_or_else(|| Error::Runtime("mallory holds no extinguisher key".into()))?;
    let rewrapped = rewrap(
        &unlock,
        &doors_material,
        &door_topic,
        &ext_material,
        &gateway,
        &ext_topic,
    )?;
    tap.publish_group(&ext_g, GroupChannel::Command, rewrapped)
        .await?;
    events
        .until(
            wait,
            |e| by(&el, e) && rejected_with(e, &eg, bad_sig),
            ne,
            log,
        )
        .await;
    events.settle(Duration::from_millis(100), log).await;
    report.checks.push(Check {
        what: "attack 3, \"unlock\" re-wrapped for extinguishers: extinguishers that refused it"
            .into(),
        expected: exts.len(),
        observed: events.count(|e| el.contains(&e.who) && rejected_with(e, &ext_g, bad_sig)),
    });
    report.checks.push(Check {
        what: "extinguishers that executed \"unlock\" (must be none)".into(),
        expected: 0,
        observed: events.count(|e| executed(e, &ext_g, b"unlock")),
    });

    // 4. Eviction: the last door is evicted (tree rekey: one broadcast); a
    //    command sent afterwards is for everyone but it.
    let evicted = doors
        .last()
        .cloned()
        .ok_or_else(|| Error::Runtime("no doors".into()))?;
    manager.evict(doors_g.clone(), evicted.clone()).await?;
    manager.wait_converged(&doors_g, wait).await?;
    events.settle(Duration::from_millis(200), log).await;
    nodes[&gateway]
        .send(&doors_g, GroupChannel::Command, b"lock")
        .await?;
    events
        .until(
            wait,
            |e| by(&dl, e) && executed(e, &dg, b"lock"),
            nd - 1,
            log,
        )
        .await;
    events.settle(Duration::from_millis(300), log).await;
    report.checks.push(Check {
        what: "attack 4, evicted door: doors that executed \"lock\" (all but the evicted one)"
            .into(),
        expected: nd - 1,
        observed: events.count(|e| dl.contains(&e.who) && executed(e, &doors_g, b"lock")),
    });
    report.checks.push(Check {
        what: "attack 4, evicted door: times it executed \"lock\" (must be none)".into(),
        expected: 0,
        observed: events.count(|e| e.who == evicted && executed(e, &doors_g, b"lock")),
    });
    step(
        &mut report,
        "attacks: forged, replayed, re-wrapped, after eviction",
        log,
    );
    tap.close(Duration::from_secs(1)).await;
    Ok(report)
}

/// Removes a demo's temporary directory when dropped.
#[derive(Debug)]
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ed25519_dalek_key(rng: &mut rand::rngs::StdRng) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::generate(rng)
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

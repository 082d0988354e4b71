//! The smart-metering deployment: meters report through a Data Aggregation
//! Point (DAP) to the utility headend, over MQTT or CoAP (the same link as
//! the fire-safety deployment).
//!
//! Each meter encrypts its reading for the headend (pairwise key from
//! static-static X25519, no handshake) and signs the result. The DAP verifies
//! the meters' signatures in batches **without being able to read the
//! readings**, drops forgeries and replays (a sequence window per meter), and
//! forwards each batch signed by itself. The headend checks the DAP's
//! signature once per batch and decrypts every report end to end; the AEAD
//! under the pairwise key still authenticates each meter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::EntityId;
use sealcast_core::target::AgentChannel;
use sealcast_node::link::{Interest, Link, Transport};

use crate::{Check, DemoReport};
use crate::{Error, Result};
use sealcast_core::ids::GroupId;
use sealcast_node::dap::{self, DapConfig, DapCore};
use sealcast_node::downlink::DownlinkConfig;
use sealcast_node::headend::{self, HeadendConfig, HeadendCore, Reading, ReadingHandler};
use sealcast_node::meter::Meter;
use sealcast_node::runtime::{now, os_rng};

/// Label of the DAP's signed batches (see [`sealcast_metering::wire`]).
pub use sealcast_metering::wire::LABEL_BATCH;

/// Reports per DAP batch in the demo.
const DEMO_BATCH: usize = 64;

/// The headend: on oneM2M the AE on the IN-CSE.
const HEADEND: &str = "headend";

/// The demo counts readings through the headend's stats; it does not print
/// each one.
struct DiscardReadings;

impl ReadingHandler for DiscardReadings {
    fn reading(&self, _: &Reading) {}
}

/// Settings of the smart-meter demo.
#[derive(Clone, Debug)]
pub struct SmartMeterConfig {
    /// Meters (at least 2).
    pub meters: usize,
    /// Reports each meter sends.
    pub reports_per_meter: usize,
    /// An external MQTT broker URL; `None` starts the embedded one.
    pub broker: Option<String>,
    /// MQTT (default), CoAP or oneM2M.
    pub transport: Transport,
    /// oneM2M only: the CSEs (the headend registers on the IN-CSE, the DAP
    /// and every meter on the MN-CSE) and the serialization.
    pub onem2m: crate::OneM2mOptions,
}

impl Default for SmartMeterConfig {
    fn default() -> Self {
        Self {
            meters: 200,
            reports_per_meter: 3,
            broker: None,
            transport: Transport::Mqtt,
            onem2m: crate::OneM2mOptions::default(),
        }
    }
}

/// Runs the smart-meter deployment; `log` receives progress lines.
pub async fn smart_meter(
    config: SmartMeterConfig,
    log: &mut dyn FnMut(&str),
) -> Result<DemoReport> {
    if config.meters < 2 || config.reports_per_meter == 0 {
        return Err(Error::Runtime(
            "the smart-meter demo needs at least 2 meters and 1 report each".into(),
        ));
    }
    let mut report = DemoReport::default();
    let started = Instant::now();
    let (_transport, link) = crate::demo_link(
        config.transport,
        config.broker.as_deref(),
        &config.onem2m,
        HEADEND,
        log,
    )
    .await?;
    let onem2m = config.transport == Transport::OneM2m;
    let topics = crate::demo_topics(config.broker.is_some())?;
    if config.broker.is_some() {
        log(&format!("topic prefix {} (this demo's own)", topics.root()));
    }
    let mut rng = os_rng()?;
    let meter_group = GroupId::new(METER_GROUP)?;
    let headend = EntityCredential::generate(EntityId::new(HEADEND)?, &mut rng);
    let dap = EntityCredential::generate(EntityId::new("dap-1")?, &mut rng);
    let meters: Vec<EntityCredential> = (0..config.meters)
        .map(|i| {
            Ok(EntityCredential::generate(
                EntityId::new(&format!("meter-{i:05}"))?,
                &mut rng,
            ))
        })
        .collect::<Result<_>>()?;
    // Enrolment (what the manager provisions): the DAP knows the meters'
    // signature keys; the headend knows the meters' credentials and the DAP.
    let meter_publics: Vec<PublicCredential> =
        meters.iter().map(EntityCredential::public).collect();
    let headend_public = headend.public();
    let dap_public = dap.public();
    report.steps.push((
        format!("enrolment: {} meters, a DAP and a headend", meters.len()),
        started.elapsed(),
    ));
    log(&format!("== {}", report.steps[0].0));

    // The headend and the DAP run as the services do (sealcast headend serve,
    // sealcast agent serve with [dap]), with their state in memory.
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let mut headend_handle = headend::spawn(HeadendConfig {
        core: HeadendCore::new(headend, vec![dap_public], meter_publics.clone(), false)?,
        link: link.clone(),
        topics: topics.clone(),
        handler: Arc::new(DiscardReadings),
        state_file: None,
        events,
        audit: None,
        policy: Vec::new(),
        downlink: (!onem2m).then(|| DownlinkConfig {
            group: meter_group.clone(),
            state_file: None,
            // Long enough that a delivery still in flight to hundreds of
            // meters sharing one endpoint is not sent again on top.
            retry: Duration::from_millis(1000),
            sa_max_age: None,
        }),
    })
    .await?;
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let dap_id = dap.id().clone();
    let mut dap_handle = dap::spawn(DapConfig {
        core: DapCore::new(dap, headend_public.clone(), "meters".into(), meter_publics)?,
        link: link.clone(),
        topics: topics.clone(),
        batch_size: DEMO_BATCH,
        max_batch_delay: Duration::from_millis(20),
        state_file: None,
        events,
        pool: None,
        audit: None,
        report_interval: None,
    })
    .await?;
    let announced = headend_handle
        .wait_for(Duration::from_secs(10), |s| s.announcements >= 1)
        .await
        .announcements;
    log(&format!(
        "DAP announced its {} meters to the headend ({announced} announcement)",
        config.meters
    ));

    let report_topic = topics.agent(&dap_id, AgentChannel::Report);
    // The meters share one sending link (in the field each has its own);
    // on CoAP with many reports in flight, as the DAP answers each only
    // once its batch was forwarded. On oneM2M each meter is an AE of its
    // own: the DAP checks that a report's originator is its meter.
    let (meter_link, _) = Link::connect(
        &EntityId::new("meters")?,
        &link.with_nstart(DEMO_BATCH * 2),
        topics.clone(),
        Interest::send_only(),
    )
    .await?;
    let mut meter_links = BTreeMap::new();
    if onem2m {
        for m in &meters {
            let (l, _) =
                Link::connect(m.id(), &link, topics.clone(), Interest::send_only()).await?;
            meter_links.insert(m.id().clone(), l);
        }
        log(&format!("{} meters registered as AEs", meter_links.len()));
    }

    // Meters report; an attacker adds forgeries and replays.
    let sent_at = Instant::now();
    let mut genuine = 0usize;
    let mut first_reports = Vec::new();
    let mut sealers = meters
        .into_iter()
        .map(|m| meter_sealer(m, &headend_public, 0))
        .collect::<Result<Vec<_>>>()?;
    let mut sending = Paced {
        link: &meter_link,
        own: &meter_links,
        to: &dap_id,
        target: &report_topic,
        sent: 0,
    };
    for round in 0..config.reports_per_meter {
        for (i, m) in sealers.iter_mut().enumerate() {
            let reading = format!("{} kWh", 1000 + i * 7 + round);
            let (_, bytes) = m.seal(reading.as_bytes(), now())?;
            if round == 0 && i < 5 {
                first_reports.push(bytes.clone());
            }
            sending.send(m.id(), bytes).await?;
            genuine += 1;
        }
    }
    let forgeries = (config.meters / 20).max(2);
    for i in 0..forgeries {
        // Claims to be meter i, signed with the forger's key.
        let victim = sealers[i % sealers.len()].id().clone();
        let forger = EntityCredential::generate(victim, &mut rng);
        let mut forger = meter_sealer(forger, &headend_public, 10_000 + i as u64)?;
        let (_, bytes) = forger.seal(b"0 kWh", now())?;
        // On oneM2M through the victim's own AE: a CSE that believes
        // X-M2M-Origin lets anyone claim it.
        let victim = forger.id().clone();
        sending.send(&victim, bytes).await?;
    }
    let replays = first_reports.len();
    for (i, r) in first_reports.iter().enumerate() {
        sending.send(sealers[i].id(), r.clone()).await?;
    }
    // oneM2M: a genuine, fresh report of meter 0 posted by meter 1's AE.
    let mut impostors = 0;
    if onem2m {
        let (_, bytes) = sealers[0].seal(b"1 kWh", now())?;
        let other = sealers[1].id().clone();
        sending.send(&other, bytes).await?;
        impostors = 1;
    }
    // Every report was taken (the broker's PUBACKs; on CoAP the DAP's
    // answers, 2.04 for the genuine, forged and replayed alike).
    meter_link.flush(Duration::from_secs(60)).await?;
    for l in meter_links.values() {
        l.flush(Duration::from_secs(60)).await?;
    }
    let expected_in = genuine + forgeries + replays + impostors;
    log(&format!(
        "meters sent {genuine} reports; the attacker {forgeries} forgeries and {replays} replays"
    ));

    // The DAP: batches of up to 64, verified together, forwarded signed.
    let dap_stats = dap_handle
        .wait_for(Duration::from_secs(60), |s| {
            s.received >= expected_in as u64
        })
        .await;
    let verify_rate = dap_stats.verify_rate().unwrap_or(0.0);
    let dap_done = sent_at.elapsed();
    report.steps.push((
        "meters report; DAP: batch verification, forgeries and replays dropped".into(),
        dap_done,
    ));
    log(&format!(
        "== DAP verified {} reports in batches of up to {DEMO_BATCH} ({verify_rate:.0} reports/s of signature work)",
        dap_stats.received
    ));

    // The headend: one DAP check per batch, then end-to-end decryption.
    let forwarded = dap_stats.forwarded;
    let headend_stats = headend_handle
        .wait_for(Duration::from_secs(30), |s| {
            s.readings + s.undecryptable + s.replayed + s.not_announced >= forwarded
        })
        .await;
    report.steps.push((
        "headend: DAP checked once per batch, reports decrypted end to end".into(),
        sent_at.elapsed().saturating_sub(dap_done),
    ));
    log(&format!(
        "== headend decrypted {} readings ({:.0} ms after the first report)",
        headend_stats.readings,
        sent_at.elapsed().as_millis()
    ));
    // The downlink: the headend re-configures every meter at once through
    // the DAP, which relays without reading; each meter applies and
    // confirms. (Not on oneM2M yet: the DAP's group publish there needs the
    // meters' <group> resource.)
    let downlink = if onem2m {
        log("downlink: not run on the oneM2M transport (see ARCHITECTURE.md)");
        None
    } else {
        Some(
            run_downlink(
                &mut headend_handle,
                &link,
                &topics,
                &meter_group,
                &headend_public,
                &mut sealers,
                &mut sending,
                log,
            )
            .await?,
        )
    };
    if let Some(d) = &downlink {
        report.steps.push((
            "downlink: configuration broadcast via the DAP, applied and confirmed by every meter"
                .into(),
            d.took,
        ));
    }
    meter_link.flush(Duration::from_secs(30)).await?;
    dap_handle.stop().await;
    headend_handle.stop().await;
    meter_link.close(Duration::from_secs(2)).await;
    for l in meter_links.values() {
        l.close(Duration::from_secs(2)).await;
    }

    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    report.checks.push(Check {
        what: "DAP announcements the headend accepted".into(),
        expected: 1,
        observed: count(headend_stats.announcements),
    });
    report.checks.push(Check {
        what: "reports the DAP received".into(),
        expected: expected_in,
        observed: count(dap_stats.received),
    });
    report.checks.push(Check {
        what: "genuine reports the DAP forwarded".into(),
        expected: genuine,
        observed: count(dap_stats.forwarded),
    });
    report.checks.push(Check {
        what: "forged reports the DAP dropped".into(),
        expected: forgeries,
        observed: count(dap_stats.forged),
    });
    report.checks.push(Check {
        what: "replayed reports the DAP dropped".into(),
        expected: replays,
        observed: count(dap_stats.replayed),
    });
    if onem2m {
        report.checks.push(Check {
            what: "oneM2M: a genuine report posted by another meter's AE, dropped as impersonation"
                .into(),
            expected: impostors,
            observed: count(dap_stats.impersonated),
        });
    }
    report.checks.push(Check {
        what: "readings the headend decrypted".into(),
        expected: genuine,
        observed: count(headend_stats.readings),
    });
    report.checks.push(Check {
        what: "reports the headend could not decrypt (must be none)".into(),
        expected: 0,
        observed: count(
            headend_stats.undecryptable + headend_stats.replayed + headend_stats.not_announced,
        ),
    });
    if let Some(d) = downlink {
        report.checks.push(Check {
            what: "meters that applied the headend's configuration".into(),
            expected: config.meters,
            observed: d.applied,
        });
        report.checks.push(Check {
            what: "meters whose confirmation the headend holds".into(),
            expected: config.meters,
            observed: d.confirmed,
        });
        report.checks.push(Check {
            what: "meters that refused a command forged under the group's name".into(),
            expected: config.meters,
            observed: d.forged_refused,
        });
    }
    report.rate = Some(verify_rate);
    Ok(report)
}

/// The meter group of the demo's downlink.
const METER_GROUP: &str = "meters";

/// What the downlink phase saw.
struct DownlinkOutcome {
    applied: usize,
    confirmed: usize,
    forged_refused: usize,
    took: Duration,
}

/// The downlink phase: the meters (one receiving link for all of them, as
/// they share one sending link; in the field each listens on its own) take
/// the group key and the configuration the DAP relays, confirm in a
/// report, and refuse a command an attacker seals under a group key of its
/// own with the group's name.
#[allow(clippy::too_many_arguments)]
async fn run_downlink(
    headend: &mut sealcast_node::headend::HeadendHandle,
    link: &sealcast_node::link::LinkConfig,
    topics: &sealcast_core::target::TopicScheme,
    group: &GroupId,
    headend_public: &PublicCredential,
    sealers: &mut [Meter],
    sending: &mut Paced<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<DownlinkOutcome> {
    use sealcast_core::target::{DeviceChannel, GroupChannel, Topic, TopicFilter};
    use sealcast_metering::downlink::{HeadendDownlink, MeterDownlink, MeterUpdate};
    let started = Instant::now();
    let command_topic = topics.group(group, GroupChannel::Command);
    let interest = Interest {
        filters: vec![
            topics.all_devices_filter(DeviceChannel::Delivery),
            TopicFilter::new(&command_topic)?,
        ],
        multicast: true,
        ..Interest::default()
    };
    let (rx, mut inbox) =
        Link::connect(&EntityId::new("meters-rx")?, link, topics.clone(), interest).await?;
    if let Some(endpoint) = rx.endpoint() {
        for m in sealers.iter() {
            link.register_endpoint(m.id().clone(), endpoint);
        }
    }
    let index: BTreeMap<EntityId, usize> = sealers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id().clone(), i))
        .collect();
    let mut states = vec![MeterDownlink::default(); sealers.len()];
    let settings: BTreeMap<String, String> = [
        ("report_interval_s".to_owned(), "900".to_owned()),
        ("tariff".to_owned(), "night-saver".to_owned()),
    ]
    .into();
    let version = headend.configure_meters(settings).await?;
    log(&format!(
        "headend issued meter configuration version {version} to group {METER_GROUP}"
    ));
    let mut applied = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while applied < sealers.len() {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, inbox.next_message()).await else {
            break;
        };
        let mut confirm = Vec::new();
        if m.target == command_topic {
            for (i, st) in states.iter_mut().enumerate() {
                if st.epoch() == 0 {
                    continue;
                }
                if let Ok((next, update)) = st.on_command(&m.payload, &command_topic, now()) {
                    *st = next;
                    // Changes are confirmed (a listener also re-confirms
                    // what it held, at most every half minute).
                    if matches!(update, MeterUpdate::Applied(_)) {
                        applied += 1;
                        confirm.push(i);
                    }
                }
            }
        } else if let Ok(Topic::Device { device, .. }) = topics.parse(&m.target)
            && let Some(&i) = index.get(&device)
        {
            let opened = states[i].on_delivery(
                sealers[i].credential(),
                headend_public.id(),
                headend_public.verifying_key(),
                group,
                &m.payload,
            );
            if let Ok((next, update)) = opened {
                states[i] = next;
                if matches!(update, MeterUpdate::KeyInstalled(_)) {
                    confirm.push(i);
                }
            }
        }
        m.ack.ack().await;
        for i in confirm {
            let ack = states[i].ack().encode()?;
            let (_, bytes) = sealers[i].seal(&ack, now())?;
            let id = sealers[i].id().clone();
            sending.send(&id, bytes).await?;
        }
    }
    sending.link.flush(Duration::from_secs(30)).await?;
    let n = sealers.len() as u64;
    let stats = headend
        .wait_for(Duration::from_secs(30), |s| {
            s.downlink_version == version && s.downlink_confirmed >= n
        })
        .await;
    let took = started.elapsed();
    log(&format!(
        "== {applied} meters applied configuration version {version}; the headend holds {} confirmations ({:.0} ms)",
        stats.downlink_confirmed,
        took.as_secs_f64() * 1000.0
    ));
    // An attacker who knows the group's name seals a command under a key
    // of its own and publishes it where the DAP would.
    let mut rng = os_rng()?;
    let forger = EntityCredential::generate(headend_public.id().clone(), &mut rng);
    let (forged_state, seq) = HeadendDownlink::create(group.clone(), &forger, &mut rng)?
        .with_config([("tariff".to_owned(), "free".to_owned())].into())?
        .take_seq()?;
    let forged = forged_state.seal_command(&forger, seq, now(), &command_topic)?;
    let forged_refused = states
        .iter()
        .filter(|st| st.on_command(&forged, &command_topic, now()).is_err())
        .count();
    log(&format!(
        "a command forged under the group's name: refused by {forged_refused} meters"
    ));
    rx.close(Duration::from_secs(2)).await;
    Ok(DownlinkOutcome {
        applied,
        confirmed: usize::try_from(stats.downlink_confirmed).unwrap_or(usize::MAX),
        forged_refused,
        took,
    })
}

/// Sends to one peer, waiting for what is in flight every
/// [`sealcast_node::link::SEND_WINDOW`] messages.
struct Paced<'a> {
    link: &'a Link,
    /// oneM2M: each meter's own link (its AE).
    own: &'a BTreeMap<EntityId, Link>,
    to: &'a EntityId,
    target: &'a str,
    sent: usize,
}

impl Paced<'_> {
    async fn send(&mut self, meter: &EntityId, bytes: Vec<u8>) -> Result<()> {
        let link = self.own.get(meter).unwrap_or(self.link);
        if self.sent > 0 && self.sent.is_multiple_of(sealcast_node::link::SEND_WINDOW) {
            self.link.flush(Duration::from_secs(60)).await?;
            for l in self.own.values() {
                l.flush(Duration::from_secs(60)).await?;
            }
        }
        self.sent += 1;
        link.send_to(self.to, self.target.to_owned(), bytes).await
    }
}

/// A meter's sealer with a reservation made at once (the demo keeps no
/// state on disk).
fn meter_sealer(
    credential: EntityCredential,
    headend: &PublicCredential,
    from: u64,
) -> Result<Meter> {
    let mut meter = Meter::new(credential, headend, from)?;
    if let Some(limit) = meter.reservation_request() {
        meter.confirm_reservation(limit)?;
    }
    Ok(meter)
}

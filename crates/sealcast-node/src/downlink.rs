//! The smart-meter downlink as services (`sealcast_metering::downlink`):
//! the headend's side ([`HeadendDownlinkRun`], driven by the headend
//! runtime) and the meter's listener ([`listen`], behind
//! `sealcast device listen`).
//!
//! The headend sends each announced DAP what its meters lack — the current
//! group key for meters that have not confirmed its epoch, the
//! configuration command while any of them has not confirmed its version —
//! and sends it again with a back-off (the retry interval, doubling per
//! unanswered try, at most ten minutes) until each meter confirms. A meter
//! confirms in an ordinary report, so a confirmation crosses the DAP
//! exactly as a reading does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_core::target::{DeviceChannel, GroupChannel, TopicFilter, TopicScheme};
use sealcast_metering::downlink::{
    Bundle, HeadendDownlink, MAX_BUNDLE_DELIVERIES, MeterAck, MeterDownlink, MeterUpdate,
};
use sealcast_metering::sa::{MeterSa, SaUpdate};
use sealcast_store::DeviceStateFile;
use tracing::{debug, info, warn};

use crate::link::{Interest, Link, LinkConfig};
use crate::runtime::{now, os_rng};
use crate::{Error, Result};

/// Key-delivery bytes in one bundle, at most (the command and the
/// signature come on top): a bundle fits a CoAP body of 64 KiB.
const BUNDLE_DELIVERY_BYTES: usize = 40 * 1024;
/// How often a meter confirms again what it held already.
const RECONFIRM_EVERY: Duration = Duration::from_secs(30);
/// The longest wait between two tries for one meter.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// File name of the headend's downlink state (holds the group key: 0600).
pub const HEADEND_DOWNLINK_FILE: &str = "downlink.cbor";
/// File name of a meter's downlink state (holds the group key: 0600).
pub const METER_DOWNLINK_FILE: &str = "downlink.cbor";

/// The headend's downlink settings.
#[derive(Clone, Debug)]
pub struct DownlinkConfig {
    /// The meter group (its id is the command's target group).
    pub group: GroupId,
    /// Where the group key, the command numbers, the configuration and the
    /// confirmations persist (None: in memory, as in the demo).
    pub state_file: Option<DeviceStateFile>,
    /// How soon an unconfirmed meter is served again (doubling per try).
    pub retry: Duration,
    /// Refresh each meter's security association once it is this old
    /// (epoch 0, from enrolment, counts as due at once); None: only by hand.
    pub sa_max_age: Option<Duration>,
}

/// One meter's tries since it last confirmed something new.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    next: Instant,
    tries: u32,
}

/// What the headend sends one DAP in one round.
#[derive(Debug, Default)]
pub struct DapRound {
    /// Signed bundles for the DAP (the first carries the command).
    pub bundles: Vec<Vec<u8>>,
    /// Meters given the key.
    pub deliveries: usize,
    /// Whether the command went along.
    pub command: bool,
    /// Meters given per-meter items (association updates, transmission
    /// orders).
    pub items: Vec<EntityId>,
}

/// The headend's downlink while it runs.
pub struct HeadendDownlinkRun {
    state: HeadendDownlink,
    file: Option<DeviceStateFile>,
    retry: Duration,
    sa_max_age: Option<Duration>,
    backoff: BTreeMap<EntityId, Backoff>,
    /// Sealed deliveries of the current epoch, re-sent as they are.
    sealed: BTreeMap<EntityId, (u32, Vec<u8>)>,
    rng: StdRng,
}

impl core::fmt::Debug for HeadendDownlinkRun {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeadendDownlinkRun")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl HeadendDownlinkRun {
    /// Restores the state (or creates the group at epoch 1, saved before
    /// anything is sent). Call under the headend state file's lock.
    pub fn open(config: DownlinkConfig, headend: &EntityCredential) -> Result<Self> {
        let mut rng = os_rng()?;
        let state = match config.state_file.as_ref().map(DeviceStateFile::read) {
            Some(Ok(Some(bytes))) => {
                let s = HeadendDownlink::import(&bytes, headend)?;
                if *s.group() != config.group {
                    return Err(Error::Runtime(format!(
                        "the saved meter group is {}, the config names {}: keep the group name, or move {} aside to start a new group",
                        s.group().name(),
                        config.group.name(),
                        config
                            .state_file
                            .as_ref()
                            .map_or_else(String::new, |f| f.path().display().to_string())
                    )));
                }
                s
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(None)) | None => {
                let s = HeadendDownlink::create(config.group.clone(), headend, &mut rng)?;
                if let Some(f) = &config.state_file {
                    f.write(&s.export()?)?;
                }
                s
            }
        };
        Ok(Self {
            state,
            file: config.state_file,
            retry: config.retry.max(Duration::from_millis(50)),
            sa_max_age: config.sa_max_age,
            backoff: BTreeMap::new(),
            sealed: BTreeMap::new(),
            rng,
        })
    }

    /// How soon an unconfirmed meter is served again.
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// The age at which associations are refreshed (None: by hand only).
    pub fn sa_max_age(&self) -> Option<Duration> {
        self.sa_max_age
    }

    /// The state in force.
    pub fn state(&self) -> &HeadendDownlink {
        &self.state
    }

    /// Saves `next`, then keeps it (check → persist → apply).
    fn commit(&mut self, next: HeadendDownlink) -> Result<()> {
        if let Some(f) = &self.file {
            f.write(&next.export()?)?;
        }
        self.state = next;
        Ok(())
    }

    /// Issues the next configuration; every meter is due at once.
    pub fn configure(&mut self, settings: BTreeMap<String, String>) -> Result<u64> {
        let next = self.state.with_config(settings)?;
        self.commit(next)?;
        self.backoff.clear();
        Ok(self.state.version())
    }

    /// Moves the group to a new key (meters were evicted); every meter is
    /// due at once. `evicted` lose what they confirmed.
    pub fn rekey(&mut self, headend: &EntityCredential, evicted: &[EntityId]) -> Result<u32> {
        let mut next = self.state.rekeyed(headend, &mut self.rng)?;
        for m in evicted {
            next.forget(m);
        }
        self.commit(next)?;
        self.backoff.clear();
        self.sealed.clear();
        Ok(self.state.epoch().get())
    }

    /// Records a meter's confirmation (saved when it is news). Returns
    /// whether it changed anything.
    pub fn on_ack(&mut self, meter: &EntityId, ack: MeterAck) -> Result<bool> {
        // A meter that speaks is reachable now: what it lacks is due at
        // once (a listener confirms what it holds when it starts).
        self.backoff.remove(meter);
        let mut next = self.state.clone();
        if !next.record_ack(meter, ack) {
            return Ok(false);
        }
        self.commit(next)?;
        Ok(true)
    }

    /// Serves `meter` at the next round whatever its back-off (an
    /// operator's change for it).
    pub fn due_now(&mut self, meter: &EntityId) {
        self.backoff.remove(meter);
    }

    /// Whether `meter` holds the current key and configuration.
    pub fn is_current(&self, meter: &EntityId) -> bool {
        self.state.is_current(meter) == (true, true)
    }

    /// Builds what each DAP must relay now: for its `meters` (announced,
    /// known, not listed) whose turn it is, the key they lack, and the
    /// command if any of them lacks the configuration. One command
    /// sequence number serves the round (saved before use).
    pub fn round(
        &mut self,
        headend: &EntityCredential,
        daps: &[(EntityId, Vec<(EntityId, x25519_dalek::PublicKey)>)],
        command_target: &str,
        items: &BTreeMap<EntityId, Vec<Vec<u8>>>,
    ) -> Result<Vec<(EntityId, DapRound)>> {
        let clock = Instant::now();
        let at = now();
        let due = |b: &BTreeMap<EntityId, Backoff>, m: &EntityId| {
            b.get(m).is_none_or(|b| b.next <= clock)
        };
        let mut plan = Vec::new();
        let mut touched = BTreeSet::new();
        let mut need_command = false;
        for (dap, meters) in daps {
            let mut keys = Vec::new();
            let mut sas = Vec::new();
            let mut cmd = false;
            for (m, key) in meters {
                if !due(&self.backoff, m) {
                    continue;
                }
                let (key_ok, config_ok) = self.state.is_current(m);
                if !key_ok {
                    keys.push((m.clone(), *key));
                }
                if !config_ok && self.state.version() > 0 {
                    cmd = true;
                }
                let sa = items.get(m);
                if let Some(list) = sa {
                    sas.extend(list.iter().map(|b| (m.clone(), b.clone())));
                }
                if !key_ok || !config_ok || sa.is_some() {
                    touched.insert(m.clone());
                }
            }
            need_command |= cmd;
            if !keys.is_empty() || !sas.is_empty() || cmd {
                plan.push((dap.clone(), keys, sas, cmd));
            }
        }
        let command = if need_command {
            let (next, seq) = self.state.take_seq()?;
            self.commit(next)?;
            Some(self.state.seal_command(headend, seq, at, command_target)?)
        } else {
            None
        };
        let epoch = self.state.epoch().get();
        let mut out = Vec::new();
        for (dap, keys, sas, cmd) in plan {
            let mut deliveries = Vec::with_capacity(keys.len() + sas.len());
            for (m, key) in keys {
                let bytes = match self.sealed.get(&m) {
                    Some((e, b)) if *e == epoch => b.clone(),
                    _ => {
                        let b = self.state.seal_delivery(headend, &m, &key, &mut self.rng)?;
                        self.sealed.insert(m.clone(), (epoch, b.clone()));
                        b
                    }
                };
                deliveries.push((m, bytes));
            }
            let mut round = DapRound {
                deliveries: deliveries.len(),
                command: cmd,
                items: sas
                    .iter()
                    .map(|(m, _)| m.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                ..DapRound::default()
            };
            // Association updates and transmission orders ride as per-meter
            // items beside the key deliveries; the DAP relays all alike.
            deliveries.extend(sas);
            // Bundles small enough for one CoAP body (block-wise up to
            // 64 KiB) and one MQTT packet.
            let mut chunks: Vec<Vec<(EntityId, Vec<u8>)>> = vec![Vec::new()];
            let mut bytes_in_chunk = 0usize;
            for d in deliveries {
                let len = d.1.len() + d.0.as_str().len() + 8;
                let full = chunks.last().is_some_and(|c| {
                    c.len() >= MAX_BUNDLE_DELIVERIES
                        || (!c.is_empty() && bytes_in_chunk + len > BUNDLE_DELIVERY_BYTES)
                });
                if full {
                    chunks.push(Vec::new());
                    bytes_in_chunk = 0;
                }
                bytes_in_chunk += len;
                if let Some(c) = chunks.last_mut() {
                    c.push(d);
                }
            }
            for (i, chunk) in chunks.into_iter().enumerate() {
                let bundle = Bundle {
                    headend: headend.id().clone(),
                    dap: dap.clone(),
                    issued: at,
                    deliveries: chunk,
                    command: if i == 0 && cmd { command.clone() } else { None },
                };
                round.bundles.push(bundle.seal(headend.signing_key())?);
            }
            out.push((dap, round));
        }
        for m in touched {
            let b = self.backoff.entry(m).or_insert(Backoff {
                next: clock,
                tries: 0,
            });
            b.tries = b.tries.saturating_add(1);
            let wait = self
                .retry
                .saturating_mul(1u32 << b.tries.saturating_sub(1).min(12))
                .min(MAX_BACKOFF);
            b.next = clock + wait;
        }
        Ok(out)
    }
}

/// What a meter's listener needs.
pub struct MeterListenConfig {
    /// The meter's credential.
    pub credential: EntityCredential,
    /// The headend (signer of the group and its commands).
    pub headend: PublicCredential,
    /// The meter group.
    pub group: GroupId,
    /// How it listens (MQTT subscription or CoAP endpoint and group).
    pub link: LinkConfig,
    /// Topic scheme.
    pub topics: TopicScheme,
    /// Its downlink state (`downlink.cbor`, 0600).
    pub state_file: DeviceStateFile,
    /// How confirmations go out: the meter's one-shot report path (its
    /// sequence state and its DAP).
    pub report: crate::meter::MeterConfig,
    /// Its audit log (None: none).
    pub audit: Option<crate::audit::AuditConfig>,
}

impl core::fmt::Debug for MeterListenConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MeterListenConfig")
            .field("id", self.credential.id())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Reads a meter's saved downlink state (None: it never received any).
pub fn read_meter_state(file: &DeviceStateFile) -> Result<Option<MeterDownlink>> {
    match file.read()? {
        Some(bytes) => Ok(Some(MeterDownlink::import(&bytes)?)),
        None => Ok(None),
    }
}

/// Runs a meter's downlink listener until `stop` resolves: confirms what it
/// holds when it starts (so the headend serves it at once), installs the
/// group key its DAP relays, applies newer configurations, saves each
/// change before it counts, and confirms each at once; what it held
/// already it confirms again at most every 30 s (so a lost confirmation is
/// repaired by one of the headend's later tries).
/// `applied` is told of every configuration applied.
pub async fn listen(
    config: MeterListenConfig,
    stop: impl std::future::Future<Output = ()>,
    mut applied: impl FnMut(&sealcast_metering::downlink::ConfigCommand),
) -> Result<()> {
    let MeterListenConfig {
        credential,
        headend,
        group,
        link,
        topics,
        state_file,
        report,
        audit,
    } = config;
    let id = credential.id().clone();
    // One listener per meter: the downlink state's lock, held while it runs.
    let _lock = state_file.lock(crate::device::STATE_LOCK_WAIT)?;
    let mut state = read_meter_state(&state_file)?.unwrap_or_default();
    let mut audit = audit
        .as_ref()
        .map(crate::audit::NodeAudit::open)
        .transpose()?;
    let delivery_topic = topics.device(&id, DeviceChannel::Delivery);
    let command_topic = topics.group(&group, GroupChannel::Command);
    let interest = Interest {
        filters: vec![
            TopicFilter::new(&delivery_topic)?,
            TopicFilter::new(&command_topic)?,
        ],
        multicast: true,
        ..Interest::default()
    };
    let (link, mut inbox) = Link::connect(&id, &link, topics, interest).await?;
    info!(meter = %id, group = %group.name(), epoch = state.epoch(), version = state.version(), "meter listening for the headend's downlink");
    tokio::pin!(stop);
    confirm(&id, &report, state.ack()).await;
    let mut last_confirmed = Some(Instant::now());
    let mut sa_reconfirmed = None;
    let mut order_reconfirmed = None;
    // Refusals are counted and written to the audit log in bursts.
    let mut audit_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let m = tokio::select! {
            () = &mut stop => break,
            _ = audit_tick.tick() => {
                if let Some(a) = &mut audit {
                    a.tick();
                }
                continue;
            }
            m = inbox.next_message() => match m {
                Some(m) => m,
                None => break,
            },
        };
        if m.target == delivery_topic
            && sealcast_group::transmission::TransmissionOrder::looks_like(&m.payload)
        {
            on_order(
                &credential,
                &headend,
                &report,
                &m.payload,
                audit.as_mut(),
                &mut order_reconfirmed,
            )
            .await;
            m.ack.ack().await;
            continue;
        }
        if m.target == delivery_topic && SaUpdate::looks_like(&m.payload) {
            on_sa_update(
                &credential,
                &headend,
                &report,
                &m.payload,
                state.ack(),
                audit.as_mut(),
                &mut sa_reconfirmed,
            )
            .await;
            m.ack.ack().await;
            continue;
        }
        let result = if m.target == delivery_topic {
            state.on_delivery(
                &credential,
                headend.id(),
                headend.verifying_key(),
                &group,
                &m.payload,
            )
        } else if m.target == command_topic {
            state.on_command(&m.payload, &command_topic, now())
        } else {
            debug!(meter = %id, target = %m.target, "message on an unexpected target dropped");
            m.ack.ack().await;
            continue;
        };
        let (next, update) = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(meter = %id, target = %m.target, error = %e, "downlink refused (forged, replayed, for another meter, or no key yet)");
                if let Some(a) = &mut audit {
                    a.refused(Some(&group), format!("downlink on {}: {e}", m.target));
                }
                m.ack.ack().await;
                continue;
            }
        };
        // Saved before it counts, and before the confirmation.
        if let Err(e) = state_file.write(&next.export()?) {
            warn!(meter = %id, error = %e, "downlink state not saved: not applied (the headend sends it again)");
            m.ack.ack().await;
            continue;
        }
        state = next;
        m.ack.ack().await;
        let what = match &update {
            MeterUpdate::KeyInstalled(e) => {
                info!(meter = %id, epoch = e, "meter group key installed");
                format!("meter group {} key epoch {e} installed", group.name())
            }
            MeterUpdate::KeyHeld(e) => format!("meter group key epoch {e} held already"),
            MeterUpdate::Applied(c) => {
                let names: Vec<&str> = c.settings.keys().map(String::as_str).collect();
                info!(meter = %id, version = c.version, settings = %names.join(","), "meter configuration applied");
                debug!(meter = %id, settings = ?c.settings, "meter configuration content");
                applied(c);
                format!(
                    "configuration version {} applied ({} settings)",
                    c.version,
                    c.settings.len()
                )
            }
            MeterUpdate::AlreadyApplied(v) => format!("configuration version {v} held already"),
        };
        if let Some(a) = &mut audit {
            let record = match update {
                MeterUpdate::KeyInstalled(_) => crate::audit::Record::Installed,
                MeterUpdate::Applied(_) => crate::audit::Record::Order,
                _ => crate::audit::Record::Received,
            };
            a.record(record, Some(&group), Some(headend.id()), what);
        }
        // A change is confirmed at once; what it held already (the
        // command sent again for other meters) at most once a while, so a
        // broadcast repeated for a few meters does not make every meter
        // report.
        let changed = matches!(
            update,
            MeterUpdate::KeyInstalled(_) | MeterUpdate::Applied(_)
        );
        if changed || last_confirmed.is_none_or(|t: Instant| t.elapsed() >= RECONFIRM_EVERY) {
            confirm(&id, &report, state.ack()).await;
            last_confirmed = Some(Instant::now());
        }
    }
    if let Some(a) = &mut audit {
        a.flush_refused();
    }
    link.close(Duration::from_secs(2)).await;
    Ok(())
}

/// Checks a security association update (the headend's signature, this
/// meter, a newer epoch, a usable key) and saves it under the meter's
/// report lock, so no report is sealed halfway through the change.
fn apply_sa_update(
    credential: &EntityCredential,
    headend: &PublicCredential,
    report: &crate::meter::MeterConfig,
    bytes: &[u8],
) -> Result<(MeterSa, bool)> {
    let update = SaUpdate::open(
        bytes,
        credential.id(),
        headend.id(),
        headend.verifying_key(),
    )?;
    let _lock = report.state_file.lock(crate::device::STATE_LOCK_WAIT)?;
    let held = crate::meter::read_sa(&report.state_file)?;
    if held.holds(&update) {
        return Ok((held, false));
    }
    let next = held.apply(&update)?;
    if !next.is_removed() {
        next.pairwise(credential, headend)?;
    }
    crate::meter::sa_file(&report.state_file).write(&next.encode()?)?;
    Ok((next, true))
}

/// A security association update on the meter's delivery target: saved,
/// audited, and (unless it is a removal) confirmed at once by a report
/// under the new epoch, which is what the headend waits for.
async fn on_sa_update(
    credential: &EntityCredential,
    headend: &PublicCredential,
    report: &crate::meter::MeterConfig,
    bytes: &[u8],
    ack: MeterAck,
    audit: Option<&mut crate::audit::NodeAudit>,
    last_reconfirmed: &mut Option<Instant>,
) {
    let id = credential.id();
    match apply_sa_update(credential, headend, report, bytes) {
        Ok((sa, false)) => {
            // Sent again: the confirmation was lost. Confirmed again, at
            // most once a while (a replayed copy cannot make it chatter).
            debug!(meter = %id, epoch = sa.epoch, "security association update held already");
            if !sa.is_removed()
                && last_reconfirmed.is_none_or(|t: Instant| t.elapsed() >= RECONFIRM_EVERY)
            {
                *last_reconfirmed = Some(Instant::now());
                confirm(id, report, ack).await;
            }
        }
        Ok((sa, true)) if sa.is_removed() => {
            warn!(meter = %id, epoch = sa.epoch, "the headend removed this meter's security association: no reports until it establishes a new one");
            if let Some(a) = audit {
                a.record(
                    crate::audit::Record::Order,
                    None,
                    Some(headend.id()),
                    format!("security association removed (epoch {})", sa.epoch),
                );
            }
        }
        Ok((sa, true)) => {
            info!(meter = %id, epoch = sa.epoch, "security association with the headend refreshed");
            if let Some(a) = audit {
                a.record(
                    crate::audit::Record::Installed,
                    None,
                    Some(headend.id()),
                    format!("security association epoch {} installed", sa.epoch),
                );
            }
            // Confirmed by the first report under it: the downlink's
            // confirmation, sealed under the new epoch.
            confirm(id, report, ack).await;
        }
        Err(e) => {
            warn!(meter = %id, error = %e, "security association update refused (forged, replayed, or for another meter)");
            if let Some(a) = audit {
                a.refused(None, format!("security association update: {e}"));
            }
        }
    }
}

/// Checks the headend's transmission order (signed by the headend as the
/// meters' manager, for this meter, issued within ten minutes of its clock,
/// newer than the one held) and saves it under the report lock before it
/// counts. Returns the order and whether it changed anything.
fn apply_order(
    credential: &EntityCredential,
    headend: &PublicCredential,
    report: &crate::meter::MeterConfig,
    bytes: &[u8],
) -> Result<(sealcast_group::transmission::TransmissionOrder, bool)> {
    use sealcast_group::transmission::{Applied, TransmissionOrder};
    let order = TransmissionOrder::open(
        bytes,
        headend,
        credential.id(),
        now(),
        crate::device::ORDER_MAX_AGE_MS,
    )?;
    let _lock = report.state_file.lock(crate::device::STATE_LOCK_WAIT)?;
    let control = crate::meter::read_transmission(&report.state_file)?;
    match control.check(&order)? {
        Applied::Repeated => Ok((order, false)),
        Applied::Changed(o) => {
            let mut next = control.clone();
            next.commit(o.clone());
            crate::meter::write_transmission(&report.state_file, &next)?;
            Ok((o, true))
        }
    }
}

/// A transmission order on the meter's delivery target: saved, audited and
/// acknowledged through the DAP (a repeat at most every 30 s).
async fn on_order(
    credential: &EntityCredential,
    headend: &PublicCredential,
    report: &crate::meter::MeterConfig,
    bytes: &[u8],
    audit: Option<&mut crate::audit::NodeAudit>,
    last_reconfirmed: &mut Option<Instant>,
) {
    let id = credential.id();
    match apply_order(credential, headend, report, bytes) {
        Ok((order, changed)) => {
            let stopped = sealcast_group::transmission::describe(&order.stopped);
            if changed {
                if order.stopped.is_empty() {
                    info!(meter = %id, version = order.version, "the headend re-activated this meter: readings are sent again");
                } else {
                    warn!(meter = %id, version = order.version, stopped = %stopped, "the headend deactivated this meter: its readings are not sent until it re-activates it");
                }
                if let Some(a) = audit {
                    a.record(
                        crate::audit::Record::Order,
                        None,
                        Some(headend.id()),
                        format!(
                            "transmission order version {}: stopped {stopped}",
                            order.version
                        ),
                    );
                }
            } else if last_reconfirmed.is_some_and(|t: Instant| t.elapsed() < RECONFIRM_EVERY) {
                debug!(meter = %id, version = order.version, "transmission order held already; acknowledged recently");
                return;
            }
            *last_reconfirmed = Some(Instant::now());
            let ack = sealcast_metering::downlink::TransmissionAck {
                version: order.version,
            };
            send_confirmation(id, report, ack.encode(), "transmission order").await;
        }
        Err(e) => {
            warn!(meter = %id, error = %e, "transmission order refused (forged, replayed, stale, or for another meter)");
            if let Some(a) = audit {
                a.refused(None, format!("transmission order: {e}"));
            }
        }
    }
}

/// Sends `ack` to the headend as one report through the meter's DAP.
async fn confirm(id: &EntityId, report: &crate::meter::MeterConfig, ack: MeterAck) {
    debug!(meter = %id, epoch = ack.epoch, version = ack.version, "confirming the downlink");
    send_confirmation(id, report, ack.encode(), "downlink").await;
}

/// Sends one confirmation's plaintext as a report through the meter's DAP.
async fn send_confirmation(
    id: &EntityId,
    report: &crate::meter::MeterConfig,
    plaintext: sealcast_metering::Result<Vec<u8>>,
    what: &str,
) {
    let sent = match (plaintext, report.copy()) {
        (Ok(bytes), Ok(config)) => crate::meter::report_confirmation(config, bytes).await,
        (Err(e), _) => Err(e.into()),
        (_, Err(e)) => Err(e),
    };
    match sent {
        Ok(sent) => {
            let seq = sent.first().map_or(0, |s| s.0);
            debug!(meter = %id, seq, "{what} confirmation sent");
        }
        Err(e) => {
            warn!(meter = %id, error = %e, "{what} confirmation not sent; the headend asks again")
        }
    }
}

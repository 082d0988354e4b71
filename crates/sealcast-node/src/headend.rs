//! The utility headend: receives the DAPs' signed report batches, checks
//! the DAP once per batch, and decrypts every report end to end.
//!
//! A DAP first **announces** the meters it serves (a signed
//! `sealcast_metering::wire::Announcement`); the headend keeps the newest announcement of each DAP
//! it knows and accepts reports from a DAP only for meters it announced. A
//! batch from a DAP not announced yet is held (bounded) and processed once
//! the announcement arrives; the headend asks each DAP to announce at start
//! (a signed request on the DAP's `solicit` topic) and again while it has
//! none.
//!
//! Per batch ([`HeadendCore::handle_batch`]): the DAP's signature → the
//! batch names this headend → the DAP announced → the batch sequence window
//! of that DAP (a replayed batch stops here, before any decryption) → per
//! report: announced meter → the meter's sequence window → decryption with
//! the meter's pairwise key (the AEAD authenticates the meter; the policy
//! may also re-verify its signature) → commit the window → reading.
//!
//! The runtime saves the windows and announcements after each batch (before
//! handing the readings on and acknowledging the MQTT message), so a
//! restarted headend accepts no replay. A crash between the save and the
//! handler loses that batch's readings rather than delivering them twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::audit::Record;
use crate::link::{Inbox, Incoming, Interest, Link, LinkConfig};
use sealcast_core::ids::EntityId;
use sealcast_core::target::{AgentChannel, Topic, TopicFilter, TopicScheme};
use sealcast_metering::Error as MeteringError;
pub use sealcast_metering::headend::{
    AnnouncementAccepted, BatchOutcome, HeadendCore, MetersChanged, Reading, ReportDrop,
};
use sealcast_store::{DeviceStateFile, StateLock};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::Result;
use crate::runtime::now;

/// Batches held per DAP while its announcement is awaited.
const MAX_HELD_BATCHES: usize = 64;
/// How often the headend asks an unannounced DAP again.
const SOLICIT_RETRY: Duration = Duration::from_secs(2);

/// What a headend does with each reading. The default logs it.
pub trait ReadingHandler: Send + Sync {
    /// Called once per reading, after the windows were saved.
    fn reading(&self, reading: &Reading);
}

/// Logs every reading.
#[derive(Debug, Default)]
pub struct LogReadings;

impl ReadingHandler for LogReadings {
    fn reading(&self, r: &Reading) {
        // The reading is what the end-to-end encryption protects: its
        // content only at DEBUG.
        info!(meter = %r.meter, dap = %r.dap, seq = r.seq.get(), len = r.value.len(), implausible = r.implausible.map_or("-", |w| w.as_str()), "reading");
        debug!(meter = %r.meter, seq = r.seq.get(), reading = %String::from_utf8_lossy(&r.value).escape_debug(), "reading content");
    }
}

/// What the headend counted so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadendStats {
    /// Announcements accepted.
    pub announcements: u64,
    /// Batches accepted.
    pub batches: u64,
    /// Batches refused whole (signature, replay, unknown DAP, garbage).
    pub batches_refused: u64,
    /// Readings decrypted and handed on.
    pub readings: u64,
    /// Reports dropped as replays.
    pub replayed: u64,
    /// Reports of meters their DAP did not announce.
    pub not_announced: u64,
    /// Reports that could not be decrypted (or malformed, or unknown meter).
    pub undecryptable: u64,
    /// Genuine readings a plausibility rule dropped.
    pub implausible: u64,
    /// Genuine readings a plausibility rule flagged (handed on, marked).
    pub flagged: u64,
    /// Downlink: the meter group's key epoch (0: no downlink).
    pub downlink_epoch: u64,
    /// Downlink: the configuration version in force (0: none issued).
    pub downlink_version: u64,
    /// Downlink: meters that confirmed the current key and configuration.
    pub downlink_confirmed: u64,
    /// Downlink: meters' confirmations received.
    pub confirmations: u64,
}

/// Something the headend did.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadendEvent {
    /// An announcement accepted.
    Announced(AnnouncementAccepted),
    /// A batch accepted.
    Batch {
        /// The DAP.
        dap: EntityId,
        /// Readings decrypted.
        readings: usize,
        /// Reports dropped.
        dropped: usize,
    },
    /// A whole batch refused (the local reason).
    BatchRefused(String),
    /// The headend stopped on an error it cannot continue from.
    Failed(String),
}

/// An operator's listing of one meter: suspended or revoked (`Some`), or
/// reinstated (`None`), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorListing {
    /// The meter.
    pub meter: EntityId,
    /// Its status (None: reinstated).
    pub status: Option<sealcast_group::status::Status>,
    /// Why.
    pub reason: String,
}

/// Configuration of a headend runtime.
pub struct HeadendConfig {
    /// The protocol state.
    pub core: HeadendCore,
    /// How it reaches its DAPs (MQTT or CoAP; services keep a persistent
    /// MQTT session, so the broker queues batches while the headend is down
    /// and redelivers unacknowledged ones).
    pub link: LinkConfig,
    /// Topic scheme.
    pub topics: TopicScheme,
    /// What to do with each reading.
    pub handler: Arc<dyn ReadingHandler>,
    /// Where windows and announcements persist (None: in memory).
    pub state_file: Option<DeviceStateFile>,
    /// Where to report events.
    pub events: mpsc::UnboundedSender<HeadendEvent>,
    /// Its audit log (None: none, as in the demo).
    pub audit: Option<crate::audit::AuditConfig>,
    /// What it does on its DAPs' misbehaviour reports and on implausible
    /// readings (the headend issues its meters' status list; empty: reports
    /// are audited, nothing more).
    pub policy: Vec<sealcast_group::status::PolicyRule>,
    /// The downlink to its meters (None: none).
    pub downlink: Option<crate::downlink::DownlinkConfig>,
}

impl core::fmt::Debug for HeadendConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeadendConfig")
            .field("core", &self.core)
            .field("transport", &self.link.transport())
            .finish_non_exhaustive()
    }
}

/// A handle to a running headend.
#[derive(Debug)]
pub struct HeadendHandle {
    id: EntityId,
    stop: mpsc::Sender<Request>,
    stats: watch::Receiver<HeadendStats>,
}

/// Requests to a running headend.
enum Request {
    Stop(oneshot::Sender<()>),
    OperatorStatus(Vec<OperatorListing>, oneshot::Sender<Result<bool>>),
    SetMeters(
        Vec<sealcast_core::credential::PublicCredential>,
        oneshot::Sender<Result<MetersChanged>>,
    ),
    ConfigureMeters(BTreeMap<String, String>, oneshot::Sender<Result<u64>>),
    ChangeSa(
        sealcast_metering::headend::SaChange,
        Vec<EntityId>,
        oneshot::Sender<Result<Vec<String>>>,
    ),
    Transmission(
        bool,
        Vec<EntityId>,
        Vec<sealcast_group::transmission::Scope>,
        oneshot::Sender<Result<Vec<String>>>,
    ),
}

impl HeadendHandle {
    /// Sends the running headend a request and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.stop
            .send(request(reply))
            .await
            .map_err(|_| crate::Error::Runtime("the headend stopped".into()))?;
        rx.await
            .map_err(|_| crate::Error::Runtime("the headend stopped".into()))?
    }

    /// The headend's id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Its counters so far.
    pub fn stats(&self) -> HeadendStats {
        self.stats.borrow().clone()
    }

    /// Waits until `done(stats)` holds or `timeout` passes; the last stats.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(&HeadendStats) -> bool,
    ) -> HeadendStats {
        let _ = tokio::time::timeout(timeout, self.stats.wait_for(|s| done(s))).await;
        self.stats()
    }

    /// Stops after the message in hand (state is saved after every batch)
    /// and disconnects.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.stop.send(Request::Stop(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Applies an operator's listings (`[[meter_status]]`): each meter
    /// suspended, revoked or reinstated (None) by hand. A changed list is
    /// signed, saved, then sent to every DAP; true when it changed.
    pub async fn set_operator_status(&self, listings: Vec<OperatorListing>) -> Result<bool> {
        self.ask(|reply| Request::OperatorStatus(listings, reply))
            .await
    }

    /// Issues the next configuration of every meter (the downlink): saved,
    /// then sent through each DAP until each meter confirms. Returns its
    /// version.
    pub async fn configure_meters(&self, settings: BTreeMap<String, String>) -> Result<u64> {
        self.ask(|reply| Request::ConfigureMeters(settings, reply))
            .await
    }

    /// Refreshes, removes or establishes the security association of each
    /// of `meters` (all or nothing: each change saved before the next; a
    /// meter refused stops the list there, earlier ones stand). The update
    /// goes to each meter through its DAP with the downlink. Returns one
    /// line per meter.
    pub async fn change_sa(
        &self,
        change: sealcast_metering::headend::SaChange,
        meters: Vec<EntityId>,
    ) -> Result<Vec<String>> {
        self.ask(|reply| Request::ChangeSa(change, meters, reply))
            .await
    }

    /// Deactivates (`deactivate`) or re-activates `meters` for `scopes`
    /// (none: everything they send but confirmations): one new order per
    /// meter, saved, then sent to each meter through its DAP until it
    /// acknowledges. Returns one line per meter.
    pub async fn transmission(
        &self,
        deactivate: bool,
        meters: Vec<EntityId>,
        scopes: Vec<sealcast_group::transmission::Scope>,
    ) -> Result<Vec<String>> {
        self.ask(|reply| Request::Transmission(deactivate, meters, scopes, reply))
            .await
    }

    /// Replaces the meters it decrypts for, while it runs
    /// (`HeadendCore::set_meters`); saved before it answers.
    pub async fn set_meters(
        &self,
        meters: Vec<sealcast_core::credential::PublicCredential>,
    ) -> Result<MetersChanged> {
        self.ask(|reply| Request::SetMeters(meters, reply)).await
    }
}

struct Headend {
    core: HeadendCore,
    link: Link,
    topics: TopicScheme,
    handler: Arc<dyn ReadingHandler>,
    state_file: Option<DeviceStateFile>,
    /// The state file's exclusive lock, held while the service runs.
    _state_lock: Option<StateLock>,
    events: mpsc::UnboundedSender<HeadendEvent>,
    stats: HeadendStats,
    stats_tx: watch::Sender<HeadendStats>,
    held: BTreeMap<EntityId, VecDeque<Incoming>>,
    /// What it received (metadata only, never a reading).
    audit: Option<crate::audit::NodeAudit>,
    /// The status list of its meters, which it issues (`status.cbor`).
    status: crate::status_store::StatusStore,
    policy: sealcast_group::status::MisbehaviourPolicy,
    /// The newest report number taken from each DAP.
    report_seqs: BTreeMap<EntityId, u64>,
    /// The downlink to its meters.
    downlink: Option<crate::downlink::HeadendDownlinkRun>,
    /// Revoked meters the meter group still has to be rekeyed without
    /// (a rekey whose state could not be saved is tried again each round;
    /// no configuration is issued meanwhile).
    rekey_pending: Vec<EntityId>,
    /// Signed association updates by meter (the epoch each is for), sent
    /// with the downlink until the meter reports under the new epoch.
    sa_sealed: BTreeMap<EntityId, (u32, Vec<u8>)>,
    /// Removed meters still to be told (at the removal, and again when a
    /// report of theirs arrives).
    sa_notice: BTreeSet<EntityId>,
    /// The transmission order of each meter (`meter-transmission.cbor`).
    orders: crate::meter_orders::MeterOrders,
    orders_file: Option<DeviceStateFile>,
    /// When each DAP's unacknowledged order is sent next, and how many
    /// times it was (2 s, doubling up to 10 min: a DAP away for long does
    /// not find thousands of copies queued for it).
    dap_order_backoff: BTreeMap<EntityId, (tokio::time::Instant, u32)>,
}

/// Connects the headend, restores its state, subscribes to its DAPs'
/// batches and announcements, asks each DAP to announce, and starts it.
pub async fn spawn(config: HeadendConfig) -> Result<HeadendHandle> {
    let HeadendConfig {
        mut core,
        link,
        topics,
        handler,
        state_file,
        events,
        audit,
        policy,
        downlink,
    } = config;
    let policy = sealcast_group::status::MisbehaviourPolicy::new(policy)?;
    let state_lock = crate::runtime::lock_and_restore(state_file.as_ref(), |bytes| {
        Ok(core.restore_state(bytes)?)
    })?;
    let audit = audit
        .as_ref()
        .map(crate::audit::NodeAudit::open)
        .transpose()?;
    let id = core.id().clone();
    // Under the state file's lock too.
    let status = crate::status_store::StatusStore::open(
        state_file.as_ref(),
        crate::status_store::STATUS_FILE,
        &id,
    )?;
    let downlink = downlink
        .map(|d| crate::downlink::HeadendDownlinkRun::open(d, core.credential()))
        .transpose()?;
    // Under the state file's lock too.
    let orders_file = state_file
        .as_ref()
        .map(crate::meter_orders::MeterOrders::file_beside);
    let orders = match &orders_file {
        Some(f) => crate::meter_orders::MeterOrders::read(f)?,
        None => crate::meter_orders::MeterOrders::default(),
    };
    let mut filters = Vec::new();
    for dap in core.daps() {
        filters.push(TopicFilter::new(&topics.agent(dap, AgentChannel::Batch))?);
        filters.push(TopicFilter::new(
            &topics.agent(dap, AgentChannel::Announce),
        )?);
    }
    let interest = Interest {
        filters,
        ..Interest::default()
    };
    let (link, inbox) = Link::connect(&id, &link, topics.clone(), interest).await?;
    let (stats_tx, stats_rx) = watch::channel(HeadendStats::default());
    let mut headend = Headend {
        core,
        link,
        topics,
        handler,
        state_file,
        _state_lock: state_lock,
        events,
        stats: HeadendStats::default(),
        stats_tx,
        held: BTreeMap::new(),
        audit,
        status,
        policy,
        report_seqs: BTreeMap::new(),
        downlink,
        rekey_pending: Vec::new(),
        sa_sealed: BTreeMap::new(),
        sa_notice: BTreeSet::new(),
        orders,
        orders_file,
        dap_order_backoff: BTreeMap::new(),
    };
    // A revocation saved in the status list whose rekey was not (the
    // headend stopped, or the disk refused it): the revoked meter's
    // confirmation is still on file. Rekeyed before anything is sent.
    if let Some(d) = &headend.downlink {
        headend.rekey_pending = d
            .state()
            .acks()
            .keys()
            .filter(|m| {
                headend.status.status_of(m) == Some(sealcast_group::status::Status::Revoked)
            })
            .cloned()
            .collect();
    }
    headend.downlink_stats();
    // Every DAP announces again (its meter set may have changed while we
    // were away), whether or not we hold an older announcement.
    let daps: Vec<EntityId> = headend.core.daps().cloned().collect();
    for dap in &daps {
        headend.solicit(dap).await?;
    }
    info!(headend = %id, daps = daps.len(), meters = headend.core.meter_count(), "headend running");
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(headend.run(inbox, rx));
    Ok(HeadendHandle {
        id,
        stop: tx,
        stats: stats_rx,
    })
}

impl Headend {
    async fn run(mut self, mut inbox: Inbox, mut stop: mpsc::Receiver<Request>) {
        let mut retry = tokio::time::interval(SOLICIT_RETRY);
        retry.tick().await;
        let mut downlink_tick = tokio::time::interval(
            self.downlink
                .as_ref()
                .map_or(Duration::from_secs(3600), |d| d.retry()),
        );
        downlink_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = loop {
            let result = tokio::select! {
                msg = inbox.next_message() => match msg {
                    Some(m) => self.on_message(m).await,
                    None => break None,
                },
                req = stop.recv() => match req {
                    Some(Request::Stop(reply)) => break Some(reply),
                    Some(Request::OperatorStatus(listings, reply)) => {
                        let r = self.operator_status(&listings).await;
                        let _ = reply.send(r);
                        Ok(())
                    }
                    Some(Request::ConfigureMeters(settings, reply)) => {
                        let r = self.configure_meters(settings);
                        let ok = r.is_ok();
                        let _ = reply.send(r);
                        if ok { self.serve_downlink().await; }
                        Ok(())
                    }
                    Some(Request::ChangeSa(change, meters, reply)) => {
                        let r = self.change_sa(change, &meters);
                        let ok = r.is_ok();
                        let _ = reply.send(r);
                        if ok { self.serve_downlink().await; }
                        Ok(())
                    }
                    Some(Request::Transmission(deactivate, meters, scopes, reply)) => {
                        let r = self.order_meters(deactivate, &meters, &scopes);
                        let ok = r.is_ok();
                        let _ = reply.send(r);
                        if ok {
                            self.send_dap_orders().await;
                            self.serve_downlink().await;
                        }
                        Ok(())
                    }
                    Some(Request::SetMeters(meters, reply)) => {
                        // Check → persist → apply: the state file is
                        // written with the new set before it is used.
                        let r = self.core.set_meters(meters).map_err(crate::Error::from);
                        let r = match r {
                            Ok((changed, before)) => match self.persist() {
                                Ok(()) => Ok(changed),
                                Err(e) => {
                                    self.core.restore_meters(before);
                                    Err(e)
                                }
                            },
                            Err(e) => Err(e),
                        };
                        let _ = reply.send(r);
                        Ok(())
                    }
                    None => break None,
                },
                _ = downlink_tick.tick(), if self.downlink.is_some() => {
                    self.refresh_aged_associations();
                    if !self.rekey_pending.is_empty() {
                        let pending = std::mem::take(&mut self.rekey_pending);
                        self.evict_from_downlink(&pending).await;
                    }
                    self.serve_downlink().await;
                    Ok(())
                }
                _ = retry.tick() => {
                    if let Some(a) = &mut self.audit {
                        a.tick();
                    }
                    self.send_dap_orders().await;
                    self.solicit_unannounced().await
                }
            };
            if let Err(e) = result {
                warn!(headend = %self.core.id(), error = %e, "headend stopping");
                let _ = self.events.send(HeadendEvent::Failed(e.to_string()));
                break None;
            }
        };
        self.link.close(Duration::from_secs(2)).await;
        if let Some(a) = &mut self.audit {
            a.flush_refused();
        }
        debug!(headend = %self.core.id(), "headend stopped");
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    fn persist(&self) -> Result<()> {
        match &self.state_file {
            Some(file) => Ok(file.write(&self.core.export_state()?)?),
            None => Ok(()),
        }
    }

    fn publish_stats(&self) {
        self.stats_tx.send_replace(self.stats.clone());
    }

    async fn solicit(&mut self, dap: &EntityId) -> Result<()> {
        let bytes = self.core.solicit(dap, now())?;
        // A DAP out of reach now is asked again by the retry timer while
        // it has not announced.
        match self
            .link
            .send_to(dap, self.topics.agent(dap, AgentChannel::Solicit), bytes)
            .await
        {
            Ok(()) => debug!(headend = %self.core.id(), %dap, "asked the DAP to announce"),
            Err(e) => {
                warn!(headend = %self.core.id(), %dap, error = %e, "cannot ask the DAP to announce yet; will ask again")
            }
        }
        Ok(())
    }

    async fn solicit_unannounced(&mut self) -> Result<()> {
        let waiting: Vec<EntityId> = self
            .core
            .daps()
            .filter(|d| !self.core.is_announced(d))
            .cloned()
            .collect();
        for dap in waiting {
            self.solicit(&dap).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, m: Incoming) -> Result<()> {
        match self.topics.parse(&m.target) {
            Ok(Topic::Agent {
                agent,
                channel: AgentChannel::Announce,
            }) if sealcast_group::transmission::OrderAck::looks_like(&m.payload) => {
                self.on_dap_order_ack(&agent, &m.payload);
                m.ack.ack().await;
                Ok(())
            }
            Ok(Topic::Agent {
                agent,
                channel: AgentChannel::Announce,
            }) if sealcast_group::status::MisbehaviourReport::claimed_reporter(&m.payload)
                .is_some() =>
            {
                self.on_report(&agent, &m.payload).await;
                m.ack.ack().await;
                Ok(())
            }
            Ok(Topic::Agent {
                agent,
                channel: AgentChannel::Announce,
            }) => self.on_announcement(&agent, m).await,
            Ok(Topic::Agent {
                agent,
                channel: AgentChannel::Batch,
            }) => self.on_batch(&agent, m).await,
            _ => {
                debug!(target = %m.target, "message on an unexpected target dropped");
                m.ack.ack().await;
                Ok(())
            }
        }
    }

    async fn on_announcement(&mut self, topic_dap: &EntityId, m: Incoming) -> Result<()> {
        let result = self.core.handle_announcement(&m.payload);
        match result {
            Ok(a) if a.dap == *topic_dap => {
                self.persist()?;
                m.ack.ack().await;
                info!(headend = %self.core.id(), dap = %a.dap, group = %a.group, meters = a.meters, unknown_meters = a.unknown, version = a.version, "DAP announcement accepted");
                if let Some(audit) = &mut self.audit {
                    audit.record(
                        Record::Received,
                        None,
                        Some(&a.dap),
                        format!(
                            "announcement version {} of group {}: {} meters",
                            a.version, a.group, a.meters
                        ),
                    );
                }
                if a.unknown > 0 {
                    warn!(dap = %a.dap, unknown_meters = a.unknown, "the DAP announced meters this headend holds no credential for; their reports will be dropped");
                }
                self.stats.announcements += 1;
                self.publish_stats();
                let _ = self.events.send(HeadendEvent::Announced(a.clone()));
                // A DAP that (re)started gets the current status list.
                self.send_status(&a.dap).await;
                // And the downlink its meters lack.
                self.serve_downlink().await;
                // Batches that arrived before the announcement.
                let held = self.held.remove(&a.dap).unwrap_or_default();
                for h in held {
                    self.on_batch(&a.dap, h).await?;
                }
                Ok(())
            }
            Ok(a) => {
                // Verified, but on another DAP's topic: harmless, ignored.
                warn!(dap = %a.dap, target = %m.target, "announcement on another DAP's target");
                m.ack.ack().await;
                Ok(())
            }
            Err(e) => {
                warn!(headend = %self.core.id(), error = %e, "announcement refused");
                if let Some(a) = &mut self.audit {
                    a.refused(None, format!("announcement: {e}"));
                }
                m.ack.ack().await;
                Ok(())
            }
        }
    }

    async fn on_batch(&mut self, topic_dap: &EntityId, m: Incoming) -> Result<()> {
        if self.orders.stops_reports(topic_dap) {
            // A DAP ordered to stop forwarding: what it sends anyway is
            // not taken (windows untouched).
            warn!(dap = %topic_dap, "batch of a deactivated DAP refused");
            m.ack.ack().await;
            self.refused("DAP deactivated by a transmission order");
            return Ok(());
        }
        match self.core.handle_batch(&m.payload) {
            Ok(mut outcome) => {
                // Windows on disk before anything is handed on or acked.
                self.persist()?;
                // Readings of listed meters are not handed on.
                let (listed, readings): (Vec<_>, Vec<_>) = std::mem::take(&mut outcome.readings)
                    .into_iter()
                    .partition(|r| self.status.status_of(&r.meter).is_some());
                // Nor readings of meters ordered to stop reporting.
                let (stopped, readings): (Vec<_>, Vec<_>) = readings
                    .into_iter()
                    .partition(|r| self.orders.stops_reports(&r.meter));
                outcome.readings = readings;
                for r in &stopped {
                    warn!(dap = %outcome.dap, meter = %r.meter, seq = r.seq.get(), "reading of a deactivated meter dropped");
                    if let Some(a) = &mut self.audit {
                        a.refused(
                            None,
                            format!("report of {}#{}: deactivated", r.meter, r.seq.get()),
                        );
                    }
                }
                let tx_acks = std::mem::take(&mut outcome.transmission_acks);
                self.on_transmission_acks(&outcome.dap, tx_acks);
                for r in &listed {
                    warn!(dap = %outcome.dap, meter = %r.meter, seq = r.seq.get(), "reading of a suspended or revoked meter dropped");
                    if let Some(a) = &mut self.audit {
                        a.refused(
                            None,
                            format!("report of {}#{}: listed", r.meter, r.seq.get()),
                        );
                    }
                }
                for r in &outcome.readings {
                    self.handler.reading(r);
                }
                for (meter, epoch) in std::mem::take(&mut outcome.associations) {
                    self.sa_sealed.remove(&meter);
                    info!(%meter, epoch, "security association in use: the meter reported under the refreshed epoch; the previous key is erased");
                    if let Some(a) = &mut self.audit {
                        a.record(
                            Record::Received,
                            None,
                            Some(&meter),
                            format!("security association epoch {epoch} in use (first report under it); previous epoch retired"),
                        );
                    }
                }
                for (meter, why) in &outcome.dropped {
                    if let (Some(m), ReportDrop::AssociationRemoved) = (meter, why) {
                        self.sa_notice.insert(m.clone());
                    }
                }
                let acks = std::mem::take(&mut outcome.acks);
                // A meter that still lacks something is due at the next
                // downlink round (its back-off was reset): not served from
                // here, or every batch of confirmations would send the
                // command again.
                self.on_acks(&outcome.dap, acks);
                m.ack.ack().await;
                if let Some(a) = &mut self.audit {
                    let ids: Vec<String> = outcome
                        .readings
                        .iter()
                        .map(|r| match r.implausible {
                            None => format!("{}#{}", r.meter, r.seq.get()),
                            Some(w) => {
                                format!("{}#{} (flagged: {})", r.meter, r.seq.get(), w.as_str())
                            }
                        })
                        .collect();
                    a.record(
                        Record::Received,
                        None,
                        Some(&outcome.dap),
                        format!(
                            "batch seq={}: {} readings decrypted: {}",
                            outcome.seq.get(),
                            ids.len(),
                            crate::audit::list(&ids)
                        ),
                    );
                    for (meter, why) in &outcome.dropped {
                        a.refused(
                            None,
                            format!(
                                "report of {} via {}: {why:?}",
                                meter.as_ref().map_or("?", EntityId::as_str),
                                outcome.dap
                            ),
                        );
                    }
                }
                for (meter, why) in &outcome.dropped {
                    match why {
                        ReportDrop::Replayed => self.stats.replayed += 1,
                        ReportDrop::NotAnnounced => self.stats.not_announced += 1,
                        ReportDrop::Implausible(_) => self.stats.implausible += 1,
                        _ => self.stats.undecryptable += 1,
                    }
                    warn!(dap = %outcome.dap, meter = ?meter.as_ref().map(EntityId::as_str), reason = ?why, "report dropped at the headend");
                }
                for r in outcome.readings.iter().filter(|r| r.implausible.is_some()) {
                    warn!(dap = %outcome.dap, meter = %r.meter, seq = r.seq.get(), reason = r.implausible.map_or("", |w| w.as_str()), "implausible reading flagged");
                    self.stats.flagged += 1;
                }
                // Implausible verified readings are the meter's own doing:
                // evidence for the headend's own policy.
                let implausible: Vec<EntityId> = outcome
                    .readings
                    .iter()
                    .filter(|r| r.implausible.is_some())
                    .map(|r| r.meter.clone())
                    .chain(outcome.dropped.iter().filter_map(|(m, why)| {
                        matches!(why, ReportDrop::Implausible(_))
                            .then(|| m.clone())
                            .flatten()
                    }))
                    .collect();
                for meter in implausible {
                    let item = sealcast_group::status::EvidenceItem {
                        subject: meter,
                        evidence: sealcast_group::status::Evidence::Implausible,
                        count: 1,
                        first: now(),
                        last: now(),
                    };
                    self.weigh(&item, self.core.id().clone()).await;
                }
                self.stats.batches += 1;
                self.stats.readings += outcome.readings.len() as u64;
                self.publish_stats();
                debug!(dap = %outcome.dap, seq = outcome.seq.get(), readings = outcome.readings.len(), "batch accepted");
                let _ = self.events.send(HeadendEvent::Batch {
                    dap: outcome.dap,
                    readings: outcome.readings.len(),
                    dropped: outcome.dropped.len(),
                });
            }
            Err(MeteringError::NotAnnounced(dap)) if dap == *topic_dap && !m.can_wait() => {
                // CoAP: the DAP waits for this answer before it answers its
                // meters; holding it would hold the DAP. Refused (5.03), so
                // the DAP and its meters see it, and the DAP is asked to
                // announce.
                debug!(%dap, "batch of an unannounced DAP refused until it announces");
                drop(m);
                self.refused("DAP not announced");
                self.solicit(&dap).await?;
            }
            Err(MeteringError::NotAnnounced(dap)) if dap == *topic_dap => {
                let queue = self.held.entry(dap.clone()).or_default();
                if queue.len() < MAX_HELD_BATCHES {
                    debug!(%dap, "batch held until the DAP announces");
                    queue.push_back(m);
                    if queue.len() == 1 {
                        self.solicit(&dap).await?;
                    }
                } else {
                    warn!(%dap, "too many batches held for an unannounced DAP; dropped");
                    m.ack.ack().await;
                    self.refused("DAP not announced; hold queue full");
                }
            }
            Err(e) => {
                warn!(headend = %self.core.id(), target = %m.target, error = %e, "batch refused");
                m.ack.ack().await;
                self.refused(&e.to_string());
            }
        }
        Ok(())
    }

    /// A DAP's signed misbehaviour report: verified with the DAP's key,
    /// taken once (its number grows), audited, weighed by the policy.
    async fn on_report(&mut self, topic_dap: &EntityId, bytes: &[u8]) {
        let Some(key) = self.core.dap_key(topic_dap).copied() else {
            debug!(dap = %topic_dap, "misbehaviour report from an unknown DAP dropped");
            return;
        };
        let report = match sealcast_group::status::MisbehaviourReport::open_with(
            bytes,
            topic_dap,
            &key,
            self.core.id(),
            now(),
            crate::manager::STATUS_MAX_AGE_MS,
        ) {
            Ok(r) => r,
            Err(e) => {
                debug!(dap = %topic_dap, error = %e, "misbehaviour report refused");
                if let Some(a) = &mut self.audit {
                    a.refused(None, format!("misbehaviour report on {topic_dap}'s target"));
                }
                return;
            }
        };
        if self
            .report_seqs
            .get(topic_dap)
            .is_some_and(|last| report.seq <= *last)
        {
            debug!(dap = %topic_dap, seq = report.seq, "misbehaviour report seen before: not counted again");
            return;
        }
        self.report_seqs.insert(topic_dap.clone(), report.seq);
        for item in &report.items {
            info!(dap = %topic_dap, meter = %item.subject, evidence = %item.evidence, count = item.count, "misbehaviour reported");
            if let Some(a) = &mut self.audit {
                a.record(
                    Record::Flagged,
                    None,
                    Some(&item.subject),
                    format!(
                        "misbehaviour: {} x{} reported by {topic_dap}",
                        item.evidence, item.count
                    ),
                );
            }
            self.weigh(item, topic_dap.clone()).await;
        }
    }

    /// Counts one item of evidence; when a rule calls for it, lists the
    /// meter: the new status list is signed, saved, then sent to every DAP.
    async fn weigh(&mut self, item: &sealcast_group::status::EvidenceItem, by: EntityId) {
        // Only meters it serves are listed (a report naming made-up ids
        // must not grow the list).
        if !self.core.knows_meter(&item.subject) {
            return;
        }
        let at = now();
        let Some((action, why)) = self.policy.record(item, at) else {
            return;
        };
        if self
            .status
            .status_of(&item.subject)
            .is_some_and(|s| s >= action)
        {
            return;
        }
        let reason = format!("{why}; reported by {by}");
        if self
            .change_status(&[(item.subject.clone(), Some(action))], &reason)
            .await
            .is_ok_and(|changed| changed)
        {
            self.policy.forget(&item.subject);
            warn!(meter = %item.subject, status = %action, reported_by = %by, "misbehaviour policy acted: {why}");
        }
    }

    /// An operator's listings: applied as one change of the list.
    async fn operator_status(&mut self, listings: &[OperatorListing]) -> Result<bool> {
        let changes: Vec<(EntityId, Option<sealcast_group::status::Status>)> = listings
            .iter()
            .map(|l| (l.meter.clone(), l.status))
            .collect();
        let reasons: Vec<String> = listings
            .iter()
            .map(|l| {
                format!(
                    "{} {}: {}",
                    l.meter,
                    l.status.map_or("reinstated", |s| s.as_str()),
                    l.reason
                )
            })
            .collect();
        self.change_status(
            &changes,
            &format!("by the operator: {}", reasons.join("; ")),
        )
        .await
    }

    /// Lists (`Some`) or lifts (`None`) meters in one new version of the
    /// list: signed, saved (`status.cbor`), audited, then sent to every
    /// DAP. `Ok(false)`: nothing changed.
    async fn change_status(
        &mut self,
        changes: &[(EntityId, Option<sealcast_group::status::Status>)],
        reason: &str,
    ) -> Result<bool> {
        let at = now();
        let mut list =
            self.status
                .held()
                .cloned()
                .unwrap_or_else(|| sealcast_group::status::StatusList {
                    manager: self.core.id().clone(),
                    version: 0,
                    issued: at,
                    listed: Default::default(),
                });
        let before = list.listed.clone();
        for (meter, status) in changes {
            match status {
                Some(s) => {
                    if list.listed.len() >= sealcast_group::status::MAX_LISTED
                        && !list.listed.contains_key(meter)
                    {
                        warn!(%meter, "status list full: the meter is not listed");
                        continue;
                    }
                    list.listed.insert(meter.clone(), *s);
                }
                None => {
                    list.listed.remove(meter);
                }
            }
        }
        if list.listed == before {
            return Ok(false);
        }
        list.version = sealcast_group::transmission::next_version(Some(list.version), at);
        list.issued = at;
        let version = list.version;
        let listed = list.listed.len();
        if let Err(e) = self.status.apply(list) {
            warn!(error = %e, "status list not saved: nothing listed or lifted");
            return Err(e);
        }
        info!(version, listed, reason, "meters' status list changed");
        if let Some(a) = &mut self.audit {
            a.record(
                Record::Order,
                None,
                None,
                format!("status list version {version} ({listed} listed): {reason}"),
            );
        }
        let daps: Vec<EntityId> = self.core.daps().cloned().collect();
        for dap in &daps {
            self.send_status(dap).await;
        }
        let revoked: Vec<EntityId> = changes
            .iter()
            .filter(|(_, s)| *s == Some(sealcast_group::status::Status::Revoked))
            .map(|(m, _)| m.clone())
            .collect();
        if !revoked.is_empty() {
            self.evict_from_downlink(&revoked).await;
        }
        Ok(true)
    }

    /// Signs the current status list afresh and sends it to `dap` (on its
    /// solicit target).
    async fn send_status(&mut self, dap: &EntityId) {
        let Some(list) = self.status.held().cloned() else {
            return;
        };
        let fresh = sealcast_group::status::StatusList {
            issued: now(),
            ..list
        };
        match fresh.sign(self.core.credential()) {
            Ok(bytes) => {
                let target = self.topics.agent(dap, AgentChannel::Solicit);
                if let Err(e) = self.link.send_to(dap, target, bytes).await {
                    warn!(%dap, error = %e, "status list not sent; it goes again with the DAP's next announcement");
                }
            }
            Err(e) => warn!(error = %e, "status list not signed"),
        }
    }

    /// New transmission orders for `meters` (all of them on one copy,
    /// saved, then kept: all or nothing).
    fn order_meters(
        &mut self,
        deactivate: bool,
        meters: &[EntityId],
        scopes: &[sealcast_group::transmission::Scope],
    ) -> Result<Vec<String>> {
        let is_dap = |id: &EntityId| self.core.dap_key(id).is_some();
        if self.downlink.is_none() && meters.iter().any(|m| !is_dap(m)) {
            return Err(crate::Error::Runtime(
                "transmission orders reach meters with the downlink: add a [downlink] section to the headend's config (and run `sealcast device listen` at the meters)".into(),
            ));
        }
        let at = now();
        let mut next = self.orders.clone();
        let mut lines = Vec::with_capacity(meters.len());
        let mut issued = Vec::with_capacity(meters.len());
        for meter in meters {
            if !self.core.knows_meter(meter) && !is_dap(meter) {
                return Err(crate::Error::Runtime(format!(
                    "{meter}: neither a meter nor a DAP of this headend; nothing ordered"
                )));
            }
            let (n, order) = next.changed(self.core.id(), meter, deactivate, scopes, at);
            next = n;
            let stopped = sealcast_group::transmission::describe(&order.stopped);
            lines.push(format!(
                "{meter}: transmission order version {} (stopped: {stopped}); sent until the meter acknowledges",
                order.version
            ));
            issued.push((meter.clone(), order.version, stopped));
            // A new order for a DAP goes at once.
            self.dap_order_backoff.remove(meter);
        }
        if let Some(f) = &self.orders_file {
            next.write(f).map_err(|e| {
                crate::Error::Runtime(format!(
                    "the orders could not be saved ({e}); nothing ordered"
                ))
            })?;
        }
        self.orders = next;
        for (meter, version, stopped) in issued {
            if let Some(d) = &mut self.downlink {
                d.due_now(&meter);
            }
            warn!(%meter, version, stopped = %stopped, "transmission order issued by the operator");
            if let Some(a) = &mut self.audit {
                a.record(
                    Record::Order,
                    None,
                    Some(&meter),
                    format!("transmission order version {version}: stopped {stopped}"),
                );
            }
        }
        Ok(lines)
    }

    /// Sends each DAP's unacknowledged order (signed afresh) on its
    /// solicit target; repeated every couple of seconds until it answers.
    async fn send_dap_orders(&mut self) {
        let at = now();
        let due: Vec<sealcast_group::transmission::TransmissionOrder> = self
            .orders
            .pending()
            .filter(|o| self.core.dap_key(&o.node).is_some())
            .cloned()
            .collect();
        let clock = tokio::time::Instant::now();
        for order in due {
            let dap = order.node.clone();
            let tries = match self.dap_order_backoff.get(&dap) {
                Some((next, _)) if *next > clock => continue,
                Some((_, tries)) => *tries,
                None => 0,
            };
            let wait = SOLICIT_RETRY
                .saturating_mul(1u32 << tries.min(9))
                .min(Duration::from_secs(600));
            self.dap_order_backoff
                .insert(dap.clone(), (clock + wait, tries.saturating_add(1)));
            let fresh = sealcast_group::transmission::TransmissionOrder {
                issued: at,
                ..order
            };
            let bytes = match fresh.sign(self.core.credential()) {
                Ok(b) => b,
                Err(e) => {
                    warn!(%dap, error = %e, "transmission order not signed");
                    continue;
                }
            };
            let target = self.topics.agent(&dap, AgentChannel::Solicit);
            if let Err(e) = self.link.send_to(&dap, target, bytes).await {
                debug!(%dap, error = %e, "transmission order not sent yet; sent again");
            }
        }
    }

    /// A DAP's acknowledgement of its order (on its announce target):
    /// verified with the DAP's key, saved, then kept.
    fn on_dap_order_ack(&mut self, dap: &EntityId, bytes: &[u8]) {
        let Some(key) = self.core.dap_key(dap).copied() else {
            return;
        };
        let ack = match sealcast_group::transmission::OrderAck::open_with_key(
            bytes,
            dap,
            &key,
            self.core.id(),
        ) {
            Ok(a) => a,
            Err(e) => {
                warn!(%dap, error = %e, "transmission acknowledgement refused");
                if let Some(a) = &mut self.audit {
                    a.refused(
                        None,
                        format!("transmission acknowledgement on {dap}'s target: {e}"),
                    );
                }
                return;
            }
        };
        let Some(next) = self.orders.acknowledged(dap, ack.version) else {
            debug!(%dap, version = ack.version, "transmission acknowledgement with nothing new");
            return;
        };
        if let Some(f) = &self.orders_file
            && let Err(e) = next.write(f)
        {
            warn!(%dap, error = %e, "acknowledgement not saved; the order is sent again");
            return;
        }
        self.orders = next;
        self.dap_order_backoff.remove(dap);
        info!(%dap, version = ack.version, "DAP acknowledged its transmission order");
        if let Some(a) = &mut self.audit {
            a.record(
                Record::Received,
                None,
                Some(dap),
                format!("transmission order version {} acknowledged", ack.version),
            );
        }
    }

    /// Meters' acknowledgements of their orders: saved, then kept.
    fn on_transmission_acks(
        &mut self,
        dap: &EntityId,
        acks: Vec<(EntityId, sealcast_metering::downlink::TransmissionAck)>,
    ) {
        for (meter, ack) in acks {
            let Some(next) = self.orders.acknowledged(&meter, ack.version) else {
                debug!(%meter, version = ack.version, "transmission acknowledgement with nothing new");
                continue;
            };
            if let Some(f) = &self.orders_file
                && let Err(e) = next.write(f)
            {
                warn!(%meter, error = %e, "acknowledgement not saved; the order is sent again");
                continue;
            }
            self.orders = next;
            info!(%meter, %dap, version = ack.version, "meter acknowledged its transmission order");
            if let Some(a) = &mut self.audit {
                a.record(
                    Record::Received,
                    None,
                    Some(&meter),
                    format!(
                        "transmission order version {} acknowledged via {dap}",
                        ack.version
                    ),
                );
            }
        }
    }

    /// Changes each meter's association: all in memory, saved once, then
    /// kept — all or nothing (a meter refused, or a state that cannot be
    /// saved, puts every one back). One write for any number of meters.
    fn change_sa(
        &mut self,
        change: sealcast_metering::headend::SaChange,
        meters: &[EntityId],
    ) -> Result<Vec<String>> {
        use sealcast_metering::headend::SaChange;
        if self.downlink.is_none() {
            return Err(crate::Error::Runtime(
                "security association updates travel with the downlink: add a [downlink] section to the headend's config (and run `sealcast device listen` at the meters)".into(),
            ));
        }
        let mut rng = crate::runtime::os_rng()?;
        let at = now();
        let mut changed = Vec::with_capacity(meters.len());
        let mut failure = None;
        for meter in meters {
            match self.core.sa_change(meter, change, at, &mut rng) {
                Ok((before, update)) => changed.push((meter.clone(), before, update.epoch)),
                Err(e) => {
                    failure = Some(format!("{meter}: {e}; no association was changed"));
                    break;
                }
            }
        }
        if failure.is_none()
            && let Err(e) = self.persist()
        {
            failure = Some(format!(
                "the state could not be saved ({e}); no association was changed"
            ));
        }
        if let Some(why) = failure {
            for (meter, before, _) in changed.into_iter().rev() {
                self.core.sa_restore(&meter, before)?;
            }
            return Err(crate::Error::Runtime(why));
        }
        let verb = match change {
            SaChange::Refresh => "refreshed",
            SaChange::Establish => "established",
            SaChange::Remove => "removed",
        };
        let mut lines = Vec::with_capacity(changed.len());
        for (meter, _, epoch) in &changed {
            self.sa_sealed.remove(meter);
            if let Some(d) = &mut self.downlink {
                d.due_now(meter);
            }
            if change == SaChange::Remove {
                self.sa_notice.insert(meter.clone());
            } else {
                self.sa_notice.remove(meter);
            }
            lines.push(match change {
                SaChange::Refresh => format!(
                    "{meter}: refreshed to epoch {epoch} (pending until the meter reports under it)"
                ),
                SaChange::Establish => format!(
                    "{meter}: established at epoch {epoch} (pending until the meter reports under it)"
                ),
                SaChange::Remove => format!(
                    "{meter}: removed (epoch {epoch}); its reports are refused from now on"
                ),
            });
        }
        let names: Vec<String> = changed
            .iter()
            .map(|(m, _, e)| format!("{m} (epoch {e})"))
            .collect();
        warn!(
            meters = changed.len(),
            "security associations {verb} by the operator: {}",
            crate::audit::list(&names)
        );
        if let Some(a) = &mut self.audit {
            // One record per meter, written together.
            let entries: Vec<_> = changed
                .iter()
                .map(|(meter, _, epoch)| {
                    crate::audit::entry(
                        Record::Order,
                        None,
                        Some(meter),
                        format!("security association {verb}: epoch {epoch}"),
                    )
                })
                .collect();
            a.record_all(&entries);
        }
        Ok(lines)
    }

    /// Refreshes associations older than `[downlink] sa_refresh_s` (at most
    /// 256 a round, saved together; nothing changes if they cannot be).
    fn refresh_aged_associations(&mut self) {
        let Some(max_age) = self.downlink.as_ref().and_then(|d| d.sa_max_age()) else {
            return;
        };
        let at = now();
        let age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = sealcast_core::ids::UnixMillis::new(at.get().saturating_sub(age_ms));
        let due = self.core.sa_older_than(cutoff, 256);
        if due.is_empty() {
            return;
        }
        let mut rng = match crate::runtime::os_rng() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "associations not refreshed");
                return;
            }
        };
        let mut before = Vec::with_capacity(due.len());
        for meter in &due {
            match self.core.sa_change(
                meter,
                sealcast_metering::headend::SaChange::Refresh,
                at,
                &mut rng,
            ) {
                Ok((b, update)) => before.push((meter.clone(), b, update.epoch)),
                Err(e) => warn!(%meter, error = %e, "association not refreshed"),
            }
        }
        if let Err(e) = self.persist() {
            warn!(error = %e, "aged associations not refreshed: the state could not be saved; tried again next round");
            for (meter, b, _) in before.into_iter().rev() {
                if let Err(e) = self.core.sa_restore(&meter, b) {
                    warn!(%meter, error = %e, "association not put back");
                }
            }
            return;
        }
        for (meter, _, _) in &before {
            self.sa_sealed.remove(meter);
            if let Some(d) = &mut self.downlink {
                d.due_now(meter);
            }
        }
        info!(
            meters = before.len(),
            max_age_s = max_age.as_secs(),
            "security associations past their age refreshed"
        );
        if let Some(a) = &mut self.audit {
            // One record per meter, written together.
            let entries: Vec<_> = before
                .iter()
                .map(|(meter, _, epoch)| {
                    crate::audit::entry(
                        Record::Order,
                        None,
                        Some(meter),
                        format!(
                            "security association refreshed (older than {} s): epoch {epoch}",
                            max_age.as_secs()
                        ),
                    )
                })
                .collect();
            a.record_all(&entries);
        }
    }

    /// The signed association updates due now: pending refreshes and
    /// removals still to be told, by meter.
    fn sa_items(&mut self) -> BTreeMap<EntityId, Vec<u8>> {
        let due: Vec<EntityId> = self
            .core
            .sa_pending()
            .cloned()
            .chain(self.sa_notice.iter().cloned())
            .collect();
        let mut out = BTreeMap::new();
        for meter in due {
            let Some(update) = self.core.sa_update(&meter) else {
                self.sa_notice.remove(&meter);
                continue;
            };
            let bytes = match self.sa_sealed.get(&meter) {
                Some((e, b)) if *e == update.epoch => b.clone(),
                _ => match update.seal(self.core.credential().signing_key()) {
                    Ok(b) => {
                        self.sa_sealed
                            .insert(meter.clone(), (update.epoch, b.clone()));
                        b
                    }
                    Err(e) => {
                        warn!(%meter, error = %e, "association update not signed");
                        continue;
                    }
                },
            };
            out.insert(meter, bytes);
        }
        out
    }

    fn configure_meters(&mut self, settings: BTreeMap<String, String>) -> Result<u64> {
        if !self.rekey_pending.is_empty() {
            return Err(crate::Error::Runtime(format!(
                "the meter group is still to be rekeyed without revoked meters ({} pending; its state could not be saved: check the state directory's disk), so no configuration is issued",
                self.rekey_pending.len()
            )));
        }
        let Some(d) = &mut self.downlink else {
            return Err(crate::Error::Runtime(
                "this headend has no downlink: add a [downlink] section to its config".into(),
            ));
        };
        let names: Vec<String> = settings.keys().cloned().collect();
        let version = d.configure(settings)?;
        info!(version, settings = %names.join(","), "meter configuration issued");
        if let Some(a) = &mut self.audit {
            a.record(
                Record::Order,
                Some(d.state().group()),
                None,
                format!(
                    "meter configuration version {version} issued: settings {}",
                    crate::audit::list(&names)
                ),
            );
        }
        self.downlink_stats();
        Ok(version)
    }

    /// Revoked meters leave the meter group: a new key, sent to every
    /// other meter (they cannot follow).
    async fn evict_from_downlink(&mut self, revoked: &[EntityId]) {
        let Some(d) = &mut self.downlink else {
            return;
        };
        match d.rekey(self.core.credential(), revoked) {
            Ok(epoch) => {
                let names: Vec<String> = revoked.iter().map(ToString::to_string).collect();
                warn!(epoch, evicted = %names.join(","), "meter group rekeyed: revoked meters evicted");
                if let Some(a) = &mut self.audit {
                    a.record(
                        Record::Order,
                        Some(d.state().group()),
                        None,
                        format!(
                            "meter group rekeyed to epoch {epoch}: evicted {}",
                            crate::audit::list(&names)
                        ),
                    );
                }
                self.downlink_stats();
                self.serve_downlink().await;
            }
            Err(e) => {
                warn!(error = %e, "meter group not rekeyed (state not saved): tried again each round, no configuration issued meanwhile; revoked meters' reports are still refused");
                for m in revoked {
                    if !self.rekey_pending.contains(m) {
                        self.rekey_pending.push(m.clone());
                    }
                }
            }
        }
    }

    /// Meters' confirmations, arrived as reports.
    fn on_acks(
        &mut self,
        dap: &EntityId,
        acks: Vec<(EntityId, sealcast_metering::downlink::MeterAck)>,
    ) {
        if acks.is_empty() {
            return;
        }
        self.stats.confirmations += acks.len() as u64;
        let Some(d) = &mut self.downlink else {
            debug!(
                confirmations = acks.len(),
                "meters' confirmations, but this headend has no downlink"
            );
            return;
        };
        for (meter, ack) in acks {
            // A suspended or revoked meter's word is not taken (its readings
            // are not either).
            if self.status.status_of(&meter).is_some() {
                debug!(%meter, "confirmation of a listed meter ignored");
                continue;
            }
            match d.on_ack(&meter, ack) {
                Ok(true) => {
                    info!(%meter, %dap, epoch = ack.epoch, version = ack.version, "meter confirmed the downlink");
                    if let Some(a) = &mut self.audit {
                        a.record(
                            Record::Received,
                            Some(d.state().group()),
                            Some(&meter),
                            format!(
                                "confirmation via {dap}: key epoch {}, configuration version {}",
                                ack.epoch, ack.version
                            ),
                        );
                    }
                }
                Ok(false) => debug!(%meter, "confirmation with nothing new"),
                Err(e) => {
                    warn!(%meter, error = %e, "confirmation not saved; the meter confirms again")
                }
            }
        }
        self.downlink_stats();
    }

    fn downlink_stats(&mut self) {
        let Some(d) = &self.downlink else {
            return;
        };
        let s = d.state();
        self.stats.downlink_epoch = u64::from(s.epoch().get());
        self.stats.downlink_version = s.version();
        self.stats.downlink_confirmed = s
            .acks()
            .keys()
            .filter(|m| self.status.status_of(m).is_none() && s.is_current(m) == (true, true))
            .count() as u64;
        self.publish_stats();
    }

    /// Sends each announced DAP what its meters lack (see
    /// [`crate::downlink`]).
    async fn serve_downlink(&mut self) {
        if self.downlink.is_none() {
            return;
        }
        let daps: Vec<(EntityId, Vec<(EntityId, x25519_dalek::PublicKey)>)> = self
            .core
            .daps()
            .filter(|d| self.core.is_announced(d))
            .map(|d| {
                let meters = self
                    .core
                    .announced_meters(d)
                    .filter(|m| self.status.status_of(m).is_none())
                    .filter_map(|m| self.core.meter_agreement_key(m).map(|k| (m.clone(), *k)))
                    .collect();
                (d.clone(), meters)
            })
            .collect();
        let mut items: BTreeMap<EntityId, Vec<Vec<u8>>> = self
            .sa_items()
            .into_iter()
            .map(|(m, b)| (m, vec![b]))
            .collect();
        // Orders signed afresh each round (a meter refuses one issued more
        // than ten minutes from its clock).
        let at = now();
        for order in self.orders.pending() {
            let fresh = sealcast_group::transmission::TransmissionOrder {
                issued: at,
                ..order.clone()
            };
            match fresh.sign(self.core.credential()) {
                Ok(b) => items.entry(order.node.clone()).or_default().push(b),
                Err(e) => warn!(meter = %order.node, error = %e, "transmission order not signed"),
            }
        }
        let Some(d) = &mut self.downlink else {
            return;
        };
        let target = self.topics.group(
            d.state().group(),
            sealcast_core::target::GroupChannel::Command,
        );
        let rounds = match d.round(self.core.credential(), &daps, &target, &items) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "downlink not sent (state not saved); tries again");
                return;
            }
        };
        let group = d.state().group().clone();
        let onem2m = self.link.transport() == crate::link::Transport::OneM2m;
        if onem2m {
            // The meter group's <group> holds every meter a DAP announced
            // (the headend its only sender), so the command fans out.
            let members: BTreeSet<EntityId> = daps
                .iter()
                .flat_map(|(_, ms)| ms.iter().map(|(m, _)| m.clone()))
                .collect();
            let senders: BTreeSet<EntityId> = [self.core.id().clone()].into();
            if let Err(e) = self
                .link
                .set_group_members(&group, &members, &senders)
                .await
            {
                warn!(group = %group.name(), error = %e, "cannot set the meter group's members on the CSE; tries again");
            }
        }
        let mut command_published = false;
        for (dap, round) in rounds {
            let topic = self.topics.agent(&dap, AgentChannel::Solicit);
            let mut sent = true;
            for b in round.bundles {
                let r = if onem2m {
                    // The CSEs are the relay on oneM2M (as for the
                    // manager's key deliveries): what the bundle holds goes
                    // to each meter's inbox and the command to the group.
                    self.send_bundle_through_cses(&dap, &group, &b, &mut command_published)
                        .await
                } else {
                    self.link.send_to(&dap, topic.clone(), b).await
                };
                if let Err(e) = r {
                    warn!(%dap, error = %e, "downlink not sent to the DAP; tries again");
                    sent = false;
                    break;
                }
            }
            if sent {
                for m in &round.items {
                    if self.sa_notice.remove(m) {
                        debug!(meter = %m, "removal notice sent");
                    }
                }
                debug!(%dap, deliveries = round.deliveries, command = round.command, "downlink sent to the DAP");
                if let Some(a) = &mut self.audit {
                    a.record(
                        Record::Sent,
                        Some(&group),
                        Some(&dap),
                        format!(
                            "downlink: {} key deliveries, items (association updates, transmission orders) for {} meters{}",
                            round.deliveries,
                            round.items.len(),
                            if round.command {
                                ", configuration command"
                            } else {
                                ""
                            }
                        ),
                    );
                }
            }
        }
    }

    /// oneM2M: the items of one of the bundles meant for `dap`, written
    /// straight to each meter's inbox (its delivery target), and the
    /// command published once to the meter group's `<group>`. The signed
    /// items are the same bytes a DAP would relay; the CSEs can read and
    /// drop them but not forge them.
    async fn send_bundle_through_cses(
        &mut self,
        dap: &EntityId,
        group: &sealcast_core::ids::GroupId,
        bundle: &[u8],
        command_published: &mut bool,
    ) -> Result<()> {
        let own = self.core.credential().public();
        let opened = sealcast_metering::downlink::Bundle::open(
            bundle,
            dap,
            self.core.id(),
            own.verifying_key(),
            now(),
        )?;
        for (meter, bytes) in opened.deliveries {
            let target = self
                .topics
                .device(&meter, sealcast_core::target::DeviceChannel::Delivery);
            self.link.send_to(&meter, target, bytes).await?;
        }
        if let Some(command) = opened.command
            && !*command_published
        {
            self.link
                .publish_group(group, sealcast_core::target::GroupChannel::Command, command)
                .await?;
            *command_published = true;
        }
        Ok(())
    }

    fn refused(&mut self, why: &str) {
        if let Some(a) = &mut self.audit {
            a.refused(None, format!("batch: {why}"));
        }
        self.stats.batches_refused += 1;
        self.publish_stats();
        let _ = self.events.send(HeadendEvent::BatchRefused(why.to_owned()));
    }
}

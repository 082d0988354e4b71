//! The Data Aggregation Point (DAP): a group agent for the headend.
//!
//! Meters publish sealed reports (encrypted for the headend, then signed) to
//! the DAP's `report` topic. The DAP collects them into batches (up to a
//! size, or after a delay), verifies the meters' signatures in one batch
//! check **without being able to read the readings**, drops forgeries,
//! unknown meters and replays (a sequence window per meter), and forwards
//! what remains as one batch signed by itself on its `batch` topic.
//!
//! Instead of one handshake per meter, the DAP **announces its group** to
//! the headend: one signed statement naming the DAP, its meter group and
//! the meters it serves ([`sealcast_metering::wire::Announcement`]), sent at start,
//! whenever the set changes ([`DapHandle::set_meters`]) and when the headend
//! asks (a signed request on the `solicit` topic, e.g. after a restart).
//!
//! [`DapCore`] (in `sealcast-metering`) is the sans-IO part (verification,
//! windows, batch and announcement sealing, state encoding); [`spawn`] runs
//! it as a tokio task over the link. Order per batch: verify and commit the
//! windows in memory, send the signed batch, persist the windows that moved
//! (one record appended to the state file's journal and fsynced:
//! [`sealcast_store::JournaledStateFile`]), then acknowledge the meters'
//! messages — on CoAP only once the headend
//! answered the batch — so a crash before the save re-forwards (the
//! headend's own windows drop the copies) rather than losing reports.

use std::time::{Duration, Instant};

use crate::link::{Inbox, Incoming, Interest, Link, LinkConfig};
use sealcast_core::credential::PublicCredential;
use sealcast_core::ids::EntityId;
use sealcast_core::target::{AgentChannel, DeviceChannel, GroupChannel, TopicFilter, TopicScheme};
pub use sealcast_metering::dap::{DapCore, RateLimit, ReportVerdict, SealedBatches};
use sealcast_store::{DeviceStateFile, JournaledStateFile, StateLock};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::runtime::now;
use crate::{Error, Result};

/// What the DAP counted so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DapStats {
    /// Reports received.
    pub received: u64,
    /// Reports forwarded.
    pub forwarded: u64,
    /// Forgeries and malformed reports dropped.
    pub forged: u64,
    /// Reports of unknown meters dropped.
    pub unknown: u64,
    /// Replays dropped.
    pub replayed: u64,
    /// Reports whose transport originator (a oneM2M AE) is not the meter
    /// that signed them, dropped before any signature work (TS-0003 §7.2).
    pub impersonated: u64,
    /// Genuine reports dropped because their meter was over its rate
    /// (`[dap] max_reports_per_meter_per_minute`).
    pub rate_limited: u64,
    /// Reports dropped because their timestamp was implausibly far from the
    /// DAP's clock (`[dap] max_report_drift_s`).
    pub implausible: u64,
    /// Reports of meters the headend suspended or revoked, dropped before
    /// any signature work.
    pub listed: u64,
    /// Reports not forwarded: the headend deactivated this DAP.
    pub deactivated: u64,
    /// Forwarded reports whose meter skipped more sequence numbers than
    /// `[dap] max_seq_gap` allows (flagged, not dropped).
    pub seq_gaps: u64,
    /// Signed batches published.
    pub batches: u64,
    /// Announcements published.
    pub announcements: u64,
    /// Time spent verifying meter signatures.
    pub verify_time: Duration,
}

impl DapStats {
    /// Reports per second of signature verification (None before any).
    pub fn verify_rate(&self) -> Option<f64> {
        (!self.verify_time.is_zero()).then(|| self.received as f64 / self.verify_time.as_secs_f64())
    }
}

/// Something the DAP did.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum DapEvent {
    /// An announcement published.
    Announced {
        /// Its version.
        version: u64,
        /// Meters named.
        meters: usize,
    },
    /// A batch of reports handled.
    Batch {
        /// Reports received in it.
        received: usize,
        /// Forwarded.
        forwarded: usize,
        /// Forgeries dropped.
        forged: usize,
        /// Unknown meters dropped.
        unknown: usize,
        /// Replays dropped.
        replayed: usize,
    },
    /// The DAP stopped on an error it cannot continue from (the reason).
    Failed(String),
}

/// Configuration of a DAP runtime.
pub struct DapConfig {
    /// The protocol state (with the DAP's credential, headend and meters).
    pub core: DapCore,
    /// How it reaches meters and headend (MQTT or CoAP; services keep a
    /// persistent MQTT session, so the broker queues reports while the DAP
    /// is down and redelivers unacknowledged ones).
    pub link: LinkConfig,
    /// Topic scheme.
    pub topics: TopicScheme,
    /// Most reports per batch (1..=4096).
    pub batch_size: usize,
    /// Longest a report waits for its batch to fill.
    pub max_batch_delay: Duration,
    /// Where windows, batch reservations and the announcement version
    /// persist (None: in memory, as in the demo). Restored at start.
    pub state_file: Option<DeviceStateFile>,
    /// Where to report events (a closed receiver is fine).
    pub events: mpsc::UnboundedSender<DapEvent>,
    /// A report pool this DAP takes a share of: meters configured with the
    /// pool's name as their DAP publish to the pool's report topic, and
    /// every DAP of the pool subscribes to it as an MQTT shared
    /// subscription (`$share/<pool>/…`), so the broker hands each report
    /// to one of them (MQTT only). Each DAP keeps its own id, key, state and batch
    /// numbers (the headend enrols each); a report replayed to another DAP
    /// of the pool passes that DAP's window and is refused by the
    /// headend's end-to-end window.
    pub pool: Option<EntityId>,
    /// Its audit log (None: none, as in the demo).
    pub audit: Option<crate::audit::AuditConfig>,
    /// Misbehaviour the DAP sees (over-rate meters, forgeries and replays
    /// naming a meter) is reported to the headend, which issues the meters'
    /// status list, at most this often (None: no reports).
    pub report_interval: Option<Duration>,
}

impl core::fmt::Debug for DapConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DapConfig")
            .field("core", &self.core)
            .field("transport", &self.link.transport())
            .field("batch_size", &self.batch_size)
            .field("max_batch_delay", &self.max_batch_delay)
            .finish_non_exhaustive()
    }
}

enum Request {
    SetMeters(Vec<PublicCredential>, oneshot::Sender<Result<bool>>),
    Stop(oneshot::Sender<()>),
}

/// A handle to a running DAP.
#[derive(Debug)]
pub struct DapHandle {
    id: EntityId,
    requests: mpsc::Sender<Request>,
    stats: watch::Receiver<DapStats>,
}

impl core::fmt::Debug for Request {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Request::SetMeters(m, _) => write!(f, "SetMeters({} meters)", m.len()),
            Request::Stop(_) => f.write_str("Stop"),
        }
    }
}

impl DapHandle {
    /// The DAP's id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Its counters so far.
    pub fn stats(&self) -> DapStats {
        self.stats.borrow().clone()
    }

    /// Waits until `done(stats)` holds or `timeout` passes; the last stats.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(&DapStats) -> bool,
    ) -> DapStats {
        let _ = tokio::time::timeout(timeout, self.stats.wait_for(|s| done(s))).await;
        self.stats()
    }

    /// Replaces the meters it serves; announces if the set changed (true).
    pub async fn set_meters(&self, meters: Vec<PublicCredential>) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::SetMeters(meters, reply))
            .await
            .map_err(|_| Error::Runtime(format!("DAP {} stopped", self.id)))?;
        rx.await
            .map_err(|_| Error::Runtime(format!("DAP {} stopped", self.id)))?
    }

    /// Forwards what it holds, saves its state, disconnects, then returns.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.requests.send(Request::Stop(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Dap {
    core: DapCore,
    link: Link,
    report_topic: String,
    /// The report topic of its pool, if it has one.
    pool_topic: Option<String>,
    solicit_topic: String,
    batch_topic: String,
    announce_topic: String,
    batch_size: usize,
    max_batch_delay: Duration,
    /// The state file and its journal (None: in memory).
    journal: Option<JournaledStateFile>,
    /// The state file's exclusive lock, held while the service runs.
    _state_lock: Option<StateLock>,
    events: mpsc::UnboundedSender<DapEvent>,
    stats: DapStats,
    stats_tx: watch::Sender<DapStats>,
    pending: Vec<Incoming>,
    /// Reports that arrived while a flush waited on the transport.
    arrived: Vec<Incoming>,
    deadline: Option<tokio::time::Instant>,
    /// What it received and forwarded (metadata only).
    audit: Option<crate::audit::NodeAudit>,
    /// The headend's status list of meters (`status.cbor`).
    status: crate::status_store::StatusStore,
    /// Evidence for the next misbehaviour report to the headend.
    evidence: sealcast_group::status::EvidenceBuffer,
    report_interval: Option<Duration>,
    report_seq: u64,
    /// How to connect the downlink relay (a link of its own, opened at the
    /// first bundle: relaying never holds up the report path).
    relay_config: LinkConfig,
    topics: TopicScheme,
    relay: Option<mpsc::Sender<RelayJob>>,
    /// Digests of the bundles relayed, with when each was issued: a copy
    /// within the bundles' freshness bound is refused, not relayed again.
    relayed_bundles: std::collections::BTreeMap<[u8; 32], u64>,
    /// The headend's transmission order for this DAP
    /// (`dap-transmission.cbor`): what it must stop sending.
    transmission: sealcast_group::transmission::TransmissionControl,
    transmission_file: Option<DeviceStateFile>,
}

/// File name of the transmission order a DAP holds from its headend.
pub const DAP_TRANSMISSION_FILE: &str = "dap-transmission.cbor";

/// Most bundle digests a DAP remembers (the headend sends a few per
/// retry round; a full memory forgets the oldest half).
pub const MAX_REMEMBERED_BUNDLES: usize = 4096;

/// What the relay task passes on: key deliveries and a command.
struct RelayJob {
    deliveries: Vec<(EntityId, Vec<u8>)>,
    command: Option<(sealcast_core::ids::GroupId, Vec<u8>)>,
}

/// Sends what the DAP relays on a link of its own, so the DAP's own link
/// never waits for meters. The command goes first (one multicast or
/// publish for every meter), then the key deliveries; nothing waits for a
/// meter's answer: one out of reach must not hold up the others (CoAP
/// retransmits to it on its own; the headend sends again until each meter
/// confirms).
async fn relay_task(dap: EntityId, link: Link, mut jobs: mpsc::Receiver<RelayJob>) {
    let mut warn_limit = crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY);
    while let Some(job) = jobs.recv().await {
        if let Some((group, command)) = job.command
            && let Err(e) = link
                .publish_group(&group, GroupChannel::Command, command)
                .await
        {
            warn!(%dap, error = %e, "configuration command not relayed; the headend sends it again");
        }
        for (meter, delivery) in job.deliveries {
            let target = link.topics().device(&meter, DeviceChannel::Delivery);
            if let Err(e) = link.send_to(&meter, target, delivery).await
                && let Some(held_back) = warn_limit.allow()
            {
                warn!(%dap, %meter, error = %e, held_back, "key delivery not relayed (CoAP: is the meter in [[coap.endpoint]]?); the headend sends it again");
            }
        }
    }
    link.close(Duration::from_secs(2)).await;
}

/// Connects the DAP, restores its state, subscribes, announces itself to
/// the headend and starts it on the current tokio runtime.
pub async fn spawn(config: DapConfig) -> Result<DapHandle> {
    let DapConfig {
        mut core,
        link,
        topics,
        batch_size,
        max_batch_delay,
        state_file,
        events,
        pool,
        audit,
        report_interval,
    } = config;
    if batch_size == 0 || batch_size > sealcast_metering::wire::MAX_BATCH_REPORTS {
        return Err(Error::Runtime("batch size must be 1..=4096".into()));
    }
    // The windows: the snapshot and the journal of the batches since.
    let (state_lock, journal) = match &state_file {
        Some(file) => {
            let lock = file.lock(crate::device::STATE_LOCK_WAIT)?;
            let mut journal = JournaledStateFile::new(file.clone());
            let loaded = journal.load()?;
            if let Some(snapshot) = &loaded.snapshot {
                core.restore_state(snapshot)?;
            }
            for record in &loaded.records {
                core.apply_changes(record)?;
            }
            if loaded.dropped_torn_record {
                info!(dap = %core.id(), journal = %journal.journal_path().display(), "the last journal record was cut short by a crash (never acknowledged): dropped");
            }
            if loaded.ignored_stale_journal {
                info!(dap = %core.id(), journal = %journal.journal_path().display(), "a journal of an earlier snapshot was left by a crash: ignored (the snapshot holds it)");
            }
            debug!(dap = %core.id(), records = loaded.records.len(), "state restored from its snapshot and journal");
            (Some(lock), Some(journal))
        }
        None => (None, None),
    };
    let audit = audit
        .as_ref()
        .map(crate::audit::NodeAudit::open)
        .transpose()?;
    // Under the state file's lock too.
    let status = crate::status_store::StatusStore::open(
        state_file.as_ref(),
        crate::status_store::DAP_STATUS_FILE,
        core.headend(),
    )?;
    // Under the state file's lock too.
    let transmission_file = state_file
        .as_ref()
        .map(|f| DeviceStateFile::new(f.path().with_file_name(DAP_TRANSMISSION_FILE)));
    let transmission = match &transmission_file {
        Some(f) => crate::meter::read_order_file(f)?,
        None => sealcast_group::transmission::TransmissionControl::new(),
    };
    let id = core.id().clone();
    let report_topic = topics.agent(&id, AgentChannel::Report);
    let solicit_topic = topics.agent(&id, AgentChannel::Solicit);
    let pool_topic = pool.as_ref().map(|p| topics.agent(p, AgentChannel::Report));
    let mut filters = vec![
        TopicFilter::new(&report_topic)?,
        TopicFilter::new(&solicit_topic)?,
    ];
    if let (Some(pool), Some(topic)) = (&pool, &pool_topic) {
        if link.transport() != crate::link::Transport::Mqtt {
            return Err(Error::Runtime(format!(
                "DAP pool {pool}: a pool shares one report topic through the MQTT broker; on CoAP give each DAP its own meters"
            )));
        }
        filters.push(TopicFilter::new(topic)?.shared(pool.as_str())?);
    }
    let interest = Interest {
        filters,
        // Hold a full batch (plus requests) without stalling the connection.
        capacity: Some(batch_size.max(256) + 64),
        ..Interest::default()
    };
    let link_config = link;
    let (link, inbox) = Link::connect(&id, &link_config, topics.clone(), interest).await?;
    let (stats_tx, stats_rx) = watch::channel(DapStats::default());
    let mut dap = Dap {
        core,
        link,
        report_topic,
        pool_topic,
        solicit_topic,
        batch_topic: topics.agent(&id, AgentChannel::Batch),
        announce_topic: topics.agent(&id, AgentChannel::Announce),
        batch_size,
        max_batch_delay,
        journal,
        _state_lock: state_lock,
        events,
        stats: DapStats::default(),
        stats_tx,
        pending: Vec::new(),
        arrived: Vec::new(),
        deadline: None,
        audit,
        status,
        evidence: sealcast_group::status::EvidenceBuffer::new(),
        report_interval,
        report_seq: 0,
        relay_config: link_config,
        topics: topics.clone(),
        relay: None,
        relayed_bundles: std::collections::BTreeMap::new(),
        transmission,
        transmission_file,
    };
    dap.announce().await?;
    info!(dap = %id, headend = %dap.core.headend(), meters = dap.core.meter_count(), batch_size, "DAP running");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(dap.run(inbox, rx));
    Ok(DapHandle {
        id,
        requests: tx,
        stats: stats_rx,
    })
}

impl Dap {
    async fn run(mut self, mut inbox: Inbox, mut requests: mpsc::Receiver<Request>) {
        let mut report_tick =
            tokio::time::interval(self.report_interval.unwrap_or(Duration::from_secs(3600)));
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = loop {
            let deadline = self.deadline;
            let result = tokio::select! {
                _ = report_tick.tick(), if self.report_interval.is_some() => {
                    self.send_report().await;
                    Ok(())
                }
                msg = inbox.next_message() => match msg {
                    Some(m) => self.on_message(m, &mut inbox).await,
                    None => break None,
                },
                req = requests.recv() => match req {
                    Some(Request::Stop(reply)) => break Some(reply),
                    Some(Request::SetMeters(meters, reply)) => {
                        let changed = self.core.set_meters(meters);
                        let r = if changed { self.announce().await.map(|()| true) } else { Ok(false) };
                        let failed = r.as_ref().err().map(ToString::to_string);
                        let _ = reply.send(r);
                        match failed { Some(e) => Err(Error::Runtime(e)), None => Ok(()) }
                    }
                    None => break None,
                },
                () = sleep_until(deadline) => self.flush(&mut inbox).await,
            };
            if let Err(e) = result {
                warn!(dap = %self.core.id(), error = %e, "DAP stopping");
                let _ = self.events.send(DapEvent::Failed(e.to_string()));
                break None;
            }
        };
        if let Err(e) = self.flush(&mut inbox).await {
            warn!(dap = %self.core.id(), error = %e, "reports held at stop not forwarded; the broker redelivers them");
        }
        if let Some(a) = &mut self.audit {
            a.flush_refused();
        }
        self.link.close(Duration::from_secs(2)).await;
        debug!(dap = %self.core.id(), "DAP stopped");
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    /// Saves what changed: the windows that moved appended to the journal
    /// (one record per batch, fsynced), or the whole state as a new
    /// snapshot when the journal has outgrown it.
    fn persist(&mut self) -> Result<()> {
        if let Some(journal) = &mut self.journal {
            if journal.wants_snapshot() {
                journal.replace(&self.core.export_state()?)?;
            } else {
                journal.append(&self.core.export_changes()?)?;
            }
        }
        self.core.changes_saved();
        Ok(())
    }

    async fn announce(&mut self) -> Result<()> {
        let bytes = self.core.announce(now())?;
        // The version reaches the disk before the announcement leaves.
        self.persist()?;
        let headend = self.core.headend().clone();
        if let Err(e) = self
            .link
            .send_to(&headend, self.announce_topic.clone(), bytes)
            .await
        {
            // The headend asks again (a solicit) while it has not heard
            // from this DAP.
            warn!(dap = %self.core.id(), %headend, error = %e, "announcement not sent; the headend will ask for it");
            return Ok(());
        }
        self.stats.announcements += 1;
        self.stats_tx.send_replace(self.stats.clone());
        info!(dap = %self.core.id(), headend = %self.core.headend(), meters = self.core.meter_count(), "announced the meter group to the headend");
        let _ = self.events.send(DapEvent::Announced {
            version: self.core.announce_version(),
            meters: self.core.meter_count(),
        });
        Ok(())
    }

    /// A report: on the DAP's own report topic or its pool's.
    fn is_report(&self, topic: &str) -> bool {
        topic == self.report_topic || self.pool_topic.as_deref() == Some(topic)
    }

    async fn on_message(&mut self, m: Incoming, inbox: &mut Inbox) -> Result<()> {
        if self.is_report(&m.target) && !self.forwards_reports() {
            // Deactivated by the headend: meters' reports are not
            // forwarded. CoAP: refused (the meter sees it and keeps its
            // reading); MQTT: taken and dropped, counted.
            self.stats.deactivated += 1;
            self.stats_tx.send_replace(self.stats.clone());
            if let Some(a) = &mut self.audit {
                a.refused(
                    None,
                    "report: this DAP is deactivated by the headend".into(),
                );
            }
            if self.link.transport() == crate::link::Transport::Mqtt {
                m.ack.ack().await;
            } else {
                drop(m);
            }
            return Ok(());
        }
        if self.is_report(&m.target) {
            if self.pending.is_empty() {
                self.deadline = Some(tokio::time::Instant::now() + self.max_batch_delay);
            }
            self.pending.push(m);
            if self.pending.len() >= self.batch_size {
                self.flush(inbox).await?;
            }
            return Ok(());
        }
        // MQTT: a message of the headend while reports wait for their
        // batch: the batch goes first, so acknowledgements leave in the
        // order the messages arrived (MQTT §4.6; the embedded broker drops a
        // client that acknowledges out of order). CoAP answers and oneM2M
        // notifications have no such order: handled at once there.
        if self.link.transport() != crate::link::Transport::Mqtt || self.pending.is_empty() {
            return self.on_headend_message(m).await;
        }
        Box::pin(self.flush_once(inbox)).await?;
        // What arrived during that flush came after this message: handled
        // after it (reports join the next batch), never left behind.
        let later = std::mem::take(&mut self.arrived);
        let handled = self.on_headend_message(m).await;
        for x in later {
            Box::pin(self.on_message(x, inbox)).await?;
        }
        handled
    }

    /// A message on the DAP's solicit target (status list, downlink bundle
    /// or announce request), or on an unexpected one.
    async fn on_headend_message(&mut self, m: Incoming) -> Result<()> {
        if m.target == self.solicit_topic
            && sealcast_group::transmission::TransmissionOrder::looks_like(&m.payload)
        {
            self.on_order(&m.payload).await;
            m.ack.ack().await;
            return Ok(());
        }
        if m.target == self.solicit_topic
            && sealcast_group::status::StatusList::looks_like(&m.payload)
        {
            self.on_status_list(&m.payload);
            m.ack.ack().await;
            return Ok(());
        }
        if m.target == self.solicit_topic
            && sealcast_metering::downlink::Bundle::looks_like(&m.payload)
        {
            let r = self.on_bundle(&m.payload).await;
            m.ack.ack().await;
            return r;
        }
        if m.target == self.solicit_topic {
            let answer = self.core.handle_solicit(&m.payload, now());
            m.ack.ack().await;
            match answer {
                Ok(true) => {
                    info!(dap = %self.core.id(), "the headend asked for an announcement");
                    self.announce().await?;
                }
                Ok(false) => {
                    debug!(dap = %self.core.id(), "announce request within the minimum interval ignored")
                }
                Err(e) => warn!(dap = %self.core.id(), error = %e, "announce request refused"),
            }
            return Ok(());
        }
        debug!(dap = %self.core.id(), target = %m.target, "message on an unexpected target dropped");
        m.ack.ack().await;
        Ok(())
    }

    /// Flushes the pending reports, then those that arrived meanwhile,
    /// while they fill whole batches (bounded: each round takes what the
    /// broker delivered during the previous one).
    async fn flush(&mut self, inbox: &mut Inbox) -> Result<()> {
        self.flush_once(inbox).await?;
        loop {
            let arrived = std::mem::take(&mut self.arrived);
            for m in arrived {
                if self.is_report(&m.target) {
                    if self.pending.is_empty() {
                        self.deadline = Some(tokio::time::Instant::now() + self.max_batch_delay);
                    }
                    self.pending.push(m);
                } else {
                    // A solicit: handled like any message, after this batch.
                    Box::pin(self.on_message(m, inbox)).await?;
                }
            }
            if self.pending.len() < self.batch_size {
                return Ok(());
            }
            self.flush_once(inbox).await?;
        }
    }

    /// Verifies the pending reports, forwards the genuine ones in signed
    /// batches, saves the windows and acknowledges the meters' messages.
    async fn flush_once(&mut self, inbox: &mut Inbox) -> Result<()> {
        self.deadline = None;
        if let Some(a) = &mut self.audit {
            a.tick();
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        // AE impersonation: a report whose transport originator is another
        // entity than the meter it names is dropped before any signature
        // work (a malformed one goes on, to be refused as forged).
        let headend = self.core.headend().clone();
        let (pending, impostors): (Vec<Incoming>, Vec<Incoming>) =
            pending.into_iter().partition(|m| {
                m.origin.as_ref().is_none_or(|origin| {
                    sealcast_core::report::peek_report(&m.payload, &headend)
                        .map_or(true, |h| h.reporter == *origin)
                })
            });
        if !impostors.is_empty() {
            warn!(dap = %self.core.id(), reports = impostors.len(), "reports whose originator is not their meter dropped (impersonation)");
            if let Some(a) = &mut self.audit {
                for m in &impostors {
                    a.refused(
                        None,
                        format!(
                            "report posted by {}: impersonation",
                            m.origin.as_ref().map_or("?", EntityId::as_str)
                        ),
                    );
                }
            }
            self.stats.received += impostors.len() as u64;
            self.stats.impersonated += impostors.len() as u64;
            for m in impostors {
                draining(m.ack.ack(), inbox, &mut self.arrived).await;
            }
            self.stats_tx.send_replace(self.stats.clone());
        }
        // Meters the headend listed: dropped before any signature work
        // (with nobody listed, no report is parsed for it).
        let nobody_listed = self.status.held().is_none_or(|list| list.listed.is_empty());
        let (listed, pending): (Vec<Incoming>, Vec<Incoming>) =
            pending.into_iter().partition(|m| {
                !nobody_listed
                    && sealcast_core::report::peek_report(&m.payload, &headend)
                        .is_ok_and(|h| self.status.status_of(&h.reporter).is_some())
            });
        if !listed.is_empty() {
            warn!(dap = %self.core.id(), reports = listed.len(), "reports of meters the headend suspended or revoked dropped");
            if let Some(a) = &mut self.audit {
                for m in &listed {
                    if let Ok(h) = sealcast_core::report::peek_report(&m.payload, &headend) {
                        a.refused(
                            None,
                            format!("report claiming {}: listed by the headend", h.reporter),
                        );
                    }
                }
            }
            self.stats.received += listed.len() as u64;
            self.stats.listed += listed.len() as u64;
            for m in listed {
                draining(m.ack.ack(), inbox, &mut self.arrived).await;
            }
            self.stats_tx.send_replace(self.stats.clone());
        }
        if pending.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[u8]> = pending.iter().map(|m| m.payload.as_ref()).collect();
        let started = Instant::now();
        let verdicts = self.core.verify(&refs, now());
        self.stats.verify_time += started.elapsed();
        let gaps = self.core.take_gaps();
        if !gaps.is_empty() {
            self.stats.seq_gaps += gaps.len() as u64;
            warn!(dap = %self.core.id(), meters = gaps.len(), first = %gaps[0].meter, from = gaps[0].from, to = gaps[0].to, "sequence gaps: reports forwarded, but numbers in between never arrived");
            if let Some(a) = &mut self.audit {
                let entries: Vec<_> = gaps
                    .iter()
                    .map(|g| {
                        crate::audit::entry(
                            crate::audit::Record::Flagged,
                            None,
                            Some(&g.meter),
                            format!("sequence gap: from {} to {}", g.from, g.to),
                        )
                    })
                    .collect();
                a.record_all(&entries);
            }
        }
        let (mut forged, mut unknown, mut replayed, mut limited) = (0usize, 0usize, 0usize, 0usize);
        let mut implausible = 0usize;
        let mut forward: Vec<&[u8]> = Vec::new();
        // Metadata for the audit log: which meter (as the report claims)
        // and sequence number, never the reading.
        let mut forwarded_ids: Vec<String> = Vec::new();
        for (bytes, verdict) in refs.iter().zip(&verdicts) {
            let claimed = || {
                sealcast_core::report::peek_report(bytes, &headend).map_or_else(
                    |_| ("?".to_owned(), 0),
                    |h| (h.reporter.to_string(), h.seq.get()),
                )
            };
            let refusal = match verdict {
                ReportVerdict::Forward => {
                    forward.push(*bytes);
                    if self.audit.is_some() {
                        let (meter, seq) = claimed();
                        forwarded_ids.push(format!("{meter}#{seq}"));
                    }
                    None
                }
                ReportVerdict::Forged(reason) => {
                    forged += 1;
                    debug!(dap = %self.core.id(), reason = %reason, "forged report dropped");
                    Some("forged")
                }
                ReportVerdict::UnknownMeter => {
                    unknown += 1;
                    Some("unknown meter")
                }
                ReportVerdict::Replayed => {
                    replayed += 1;
                    Some("replay")
                }
                ReportVerdict::RateLimited => {
                    limited += 1;
                    Some("over the rate cap")
                }
                ReportVerdict::Implausible => {
                    implausible += 1;
                    Some("implausible timestamp")
                }
            };
            if let (Some(why), Some(a)) = (refusal, &mut self.audit) {
                a.refused(None, format!("report claiming {}: {why}", claimed().0));
            }
            // Evidence for the headend: over the rate cap is the meter's own
            // verified doing; forgeries and replays only name it.
            let evidence = match verdict {
                ReportVerdict::RateLimited => Some(sealcast_group::status::Evidence::Flood),
                ReportVerdict::Forged(_) => Some(sealcast_group::status::Evidence::Forgery),
                ReportVerdict::Replayed => Some(sealcast_group::status::Evidence::Replay),
                _ => None,
            };
            if let (Some(e), Some(_)) = (evidence, self.report_interval)
                && let Ok(h) = sealcast_core::report::peek_report(bytes, &headend)
            {
                self.evidence.add(&h.reporter, e, now());
            }
        }
        if !forward.is_empty() {
            let sealed = self.core.seal_batches(&forward, now())?;
            if sealed.persist_first {
                self.persist()?;
            }
            let headend = self.core.headend().clone();
            let batches = sealed.batches.len();
            for batch in sealed.batches {
                let send = self.link.send_to(&headend, self.batch_topic.clone(), batch);
                draining(send, inbox, &mut self.arrived).await?;
                self.stats.batches += 1;
            }
            if let Some(a) = &mut self.audit {
                a.record_all(&[
                    crate::audit::entry(
                        crate::audit::Record::Received,
                        None,
                        None,
                        format!(
                            "{} reports verified: {}",
                            forwarded_ids.len(),
                            crate::audit::list(&forwarded_ids)
                        ),
                    ),
                    crate::audit::entry(
                        crate::audit::Record::Sent,
                        None,
                        Some(&headend),
                        format!(
                            "{batches} signed batch(es) of {} reports",
                            forwarded_ids.len()
                        ),
                    ),
                ]);
            }
        }
        // A meter that waits for the answer itself (CoAP) is answered only
        // once the headend took the batch. Reports the broker keeps (MQTT)
        // are acknowledged once the batch is queued: a broker may withhold
        // its PUBACK of the batch until we acknowledged what it sent us
        // (rumqttd does), so waiting for it here would wait forever.
        let senders_wait = pending.iter().any(|m| !m.can_wait());
        let taken = if forward.is_empty() || !senders_wait {
            Ok(())
        } else {
            draining(
                self.link.flush(BATCH_CONFIRM_WAIT),
                inbox,
                &mut self.arrived,
            )
            .await
        };
        self.persist()?;
        let forwarded = forward.len();
        drop(refs);
        drop(forward);
        match taken {
            Ok(()) => {
                for m in pending {
                    draining(m.ack.ack(), inbox, &mut self.arrived).await;
                }
            }
            Err(e) => {
                // Not acknowledged: CoAP meters are answered 5.03 and report
                // again; MQTT redelivers on the next session.
                warn!(dap = %self.core.id(), error = %e, reports = pending.len(), "the headend's side did not take the batch; the reports are not acknowledged");
                drop(pending);
            }
        }
        let received = verdicts.len();
        self.stats.received += received as u64;
        self.stats.forwarded += forwarded as u64;
        self.stats.forged += forged as u64;
        self.stats.unknown += unknown as u64;
        self.stats.replayed += replayed as u64;
        self.stats.rate_limited += limited as u64;
        self.stats.implausible += implausible as u64;
        self.stats_tx.send_replace(self.stats.clone());
        if forged + unknown + replayed + limited + implausible > 0 {
            warn!(dap = %self.core.id(), received, forwarded, forged, unknown, replayed, rate_limited = limited, implausible, "reports dropped");
        } else {
            debug!(dap = %self.core.id(), received, forwarded, "batch forwarded");
        }
        let _ = self.events.send(DapEvent::Batch {
            received,
            forwarded,
            forged,
            unknown,
            replayed,
        });
        Ok(())
    }
}

impl Dap {
    /// The headend's status list of meters (on the solicit target):
    /// verified with the headend's key, refused if older than the one held,
    /// persisted before it takes effect.
    fn on_status_list(&mut self, bytes: &[u8]) {
        let headend = self.core.headend_credential().clone();
        let r = sealcast_group::status::StatusList::open(
            bytes,
            &headend,
            now(),
            crate::manager::STATUS_MAX_AGE_MS,
        )
        .map_err(|e| e.to_string())
        .and_then(|list| {
            let (version, n) = (list.version, list.listed.len());
            self.status
                .apply(list)
                .map(|changed| (changed, version, n))
                .map_err(|e| e.to_string())
        });
        match r {
            Ok((true, version, listed)) => {
                info!(dap = %self.core.id(), version, listed, "status list applied: reports of listed meters are dropped");
                if let Some(a) = &mut self.audit {
                    a.record(
                        crate::audit::Record::Order,
                        None,
                        Some(&headend.id().clone()),
                        format!("status list version {version} applied: {listed} listed"),
                    );
                }
            }
            Ok((false, _, _)) => {}
            Err(e) => {
                warn!(dap = %self.core.id(), error = %e, "status list refused (forged, older than the one held, stale, or not saved)");
                if let Some(a) = &mut self.audit {
                    a.refused(None, "status list".to_owned());
                }
            }
        }
    }

    /// The headend's downlink for its meters: checked (the headend's
    /// signature, for this DAP, fresh), then relayed unchanged — the
    /// configuration command to the meter group's target (the group named
    /// in its header; MQTT: one publish, CoAP: one multicast), each key
    /// delivery to its meter if this DAP serves it. The DAP reads neither:
    /// the command is encrypted under the meter group's key, each delivery
    /// under its meter's key.
    async fn on_bundle(&mut self, bytes: &[u8]) -> Result<()> {
        let headend = self.core.headend_credential().clone();
        let bundle = match sealcast_metering::downlink::Bundle::open(
            bytes,
            self.core.id(),
            headend.id(),
            headend.verifying_key(),
            now(),
        ) {
            Ok(b) => b,
            Err(e) => {
                warn!(dap = %self.core.id(), error = %e, "downlink refused (not the headend's, for another DAP, or stale): nothing relayed");
                if let Some(a) = &mut self.audit {
                    a.refused(None, format!("downlink: {e}"));
                }
                return Ok(());
            }
        };
        // A genuine bundle replayed within its freshness bound: the meters
        // would refuse what it carries (their windows), but relaying it
        // again would cost every meter a message. Refused, once remembered.
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(bytes).into();
        let now_ms = now().get();
        self.relayed_bundles.retain(|_, issued| {
            issued.saturating_add(sealcast_metering::downlink::BUNDLE_MAX_AGE_MS) >= now_ms
        });
        if self.relayed_bundles.contains_key(&digest) {
            warn!(dap = %self.core.id(), issued_ms = bundle.issued.get(), "downlink bundle replayed (relayed before): nothing relayed");
            if let Some(a) = &mut self.audit {
                a.refused(None, "downlink: bundle replayed".to_owned());
            }
            return Ok(());
        }
        if self.relayed_bundles.len() >= MAX_REMEMBERED_BUNDLES {
            let mut by_age: Vec<u64> = self.relayed_bundles.values().copied().collect();
            by_age.sort_unstable();
            let cut = by_age[by_age.len() / 2];
            self.relayed_bundles.retain(|_, issued| *issued > cut);
        }
        self.relayed_bundles.insert(digest, bundle.issued.get());
        let mut relayed = Vec::new();
        let mut skipped = 0usize;
        let mut deliveries = Vec::new();
        for (meter, delivery) in bundle.deliveries {
            if self.core.serves(&meter) {
                relayed.push(meter.to_string());
                deliveries.push((meter, delivery));
            } else {
                skipped += 1;
            }
        }
        let mut command = None;
        let mut job_command = None;
        if let Some(c) = bundle.command {
            match sealcast_core::broadcast::peek_broadcast(&c) {
                Ok(h) => {
                    command = Some(format!(
                        "{} epoch {} seq {}",
                        h.group.name(),
                        h.epoch,
                        h.seq.get()
                    ));
                    job_command = Some((h.group, c));
                }
                Err(e) => {
                    warn!(dap = %self.core.id(), error = %e, "the headend's command is not a group broadcast: not relayed");
                }
            }
        }
        let job = RelayJob {
            deliveries,
            command: job_command,
        };
        if self.relay_config.transport() == crate::link::Transport::OneM2m {
            // Its group publish needs the meters' <group> resource, which
            // nothing creates yet (the headend refuses [downlink] there).
            warn!(dap = %self.core.id(), "the downlink is not relayed on the oneM2M transport");
            return Ok(());
        }
        let relay = match &self.relay {
            Some(r) if !r.is_closed() => r.clone(),
            _ => {
                let id = self.core.id().clone();
                let config = self
                    .relay_config
                    .with_mqtt_client_id(&self.topics.client_id(&format!("{id}-downlink")))
                    .with_persistent_session(false);
                let (link, _inbox) =
                    Link::connect(&id, &config, self.topics.clone(), Interest::send_only()).await?;
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(relay_task(id, link, rx));
                self.relay = Some(tx.clone());
                tx
            }
        };
        if relay.try_send(job).is_err() {
            warn!(dap = %self.core.id(), "downlink relay busy: this bundle is dropped; the headend sends it again");
            return Ok(());
        }
        info!(dap = %self.core.id(), deliveries = relayed.len(), not_served = skipped, command = command.as_deref().unwrap_or("-"), "relayed the headend's downlink");
        if let Some(a) = &mut self.audit {
            a.record(
                crate::audit::Record::Relayed,
                None,
                Some(headend.id()),
                format!(
                    "downlink relayed: per-meter deliveries (keys, association updates) to {}; command {}",
                    crate::audit::list(&relayed),
                    command.as_deref().unwrap_or("none")
                ),
            );
        }
        Ok(())
    }

    /// Sends the evidence gathered since the last report to the headend.
    /// Whether the headend's order lets it forward meters' reports.
    fn forwards_reports(&self) -> bool {
        self.transmission
            .allows(sealcast_group::transmission::TxKind::Report, None)
    }

    /// The headend's transmission order for this DAP: checked (signed by
    /// its headend, for this DAP, ±10 min, newer than the one held), saved
    /// before it counts, then acknowledged on the announce target.
    async fn on_order(&mut self, bytes: &[u8]) {
        use sealcast_group::transmission::{Applied, OrderAck, TransmissionOrder};
        let checked = TransmissionOrder::open(
            bytes,
            self.core.headend_credential(),
            self.core.id(),
            now(),
            crate::device::ORDER_MAX_AGE_MS,
        )
        .map_err(crate::Error::from)
        .and_then(|o| Ok((self.transmission.check(&o)?, o)));
        let order = match checked {
            Ok((Applied::Repeated, o)) => o,
            Ok((Applied::Changed(o), _)) => {
                let mut next = self.transmission.clone();
                next.commit(o.clone());
                if let Some(f) = &self.transmission_file
                    && let Err(e) = crate::meter::write_order_file(f, &next)
                {
                    warn!(dap = %self.core.id(), error = %e, "transmission order not saved: not applied (the headend sends it again)");
                    return;
                }
                self.transmission = next;
                let stopped = sealcast_group::transmission::describe(&o.stopped);
                if o.stopped.is_empty() {
                    info!(dap = %self.core.id(), version = o.version, "the headend re-activated this DAP: meters' reports are forwarded again");
                } else {
                    warn!(dap = %self.core.id(), version = o.version, stopped = %stopped, "the headend deactivated this DAP");
                }
                if let Some(a) = &mut self.audit {
                    a.record(
                        crate::audit::Record::Order,
                        None,
                        Some(self.core.headend()),
                        format!(
                            "transmission order version {}: stopped {stopped}",
                            o.version
                        ),
                    );
                }
                o
            }
            Err(e) => {
                warn!(dap = %self.core.id(), error = %e, "transmission order refused (forged, replayed, stale, or for another DAP)");
                if let Some(a) = &mut self.audit {
                    a.refused(None, format!("transmission order: {e}"));
                }
                return;
            }
        };
        let ack = OrderAck {
            node: self.core.id().clone(),
            manager: self.core.headend().clone(),
            version: order.version,
        };
        match ack.sign(self.core.credential()) {
            Ok(bytes) => {
                let headend = self.core.headend().clone();
                if let Err(e) = self
                    .link
                    .send_to(&headend, self.announce_topic.clone(), bytes)
                    .await
                {
                    warn!(dap = %self.core.id(), error = %e, "transmission acknowledgement not sent; the headend sends the order again");
                }
            }
            Err(e) => {
                warn!(dap = %self.core.id(), error = %e, "transmission acknowledgement not signed")
            }
        }
    }

    async fn send_report(&mut self) {
        if self.evidence.is_empty() {
            return;
        }
        if !self
            .transmission
            .allows(sealcast_group::transmission::TxKind::Report, None)
        {
            debug!(dap = %self.core.id(), "deactivated: misbehaviour evidence kept, not sent");
            return;
        }
        let (items, dropped) = self.evidence.take();
        let at = now();
        self.report_seq = self.report_seq.saturating_add(1).max(at.get());
        let report = sealcast_group::status::MisbehaviourReport {
            reporter: self.core.id().clone(),
            manager: self.core.headend().clone(),
            seq: self.report_seq,
            issued: at,
            items,
        };
        let bytes = match report.sign(self.core.credential()) {
            Ok(b) => b,
            Err(e) => {
                warn!(dap = %self.core.id(), error = %e, "misbehaviour report not signed");
                return;
            }
        };
        let headend = self.core.headend().clone();
        match self
            .link
            .send_to(&headend, self.announce_topic.clone(), bytes)
            .await
        {
            Ok(()) => {
                info!(dap = %self.core.id(), items = report.items.len(), dropped, "misbehaviour report sent to the headend");
                if let Some(a) = &mut self.audit {
                    a.record(
                        crate::audit::Record::Sent,
                        None,
                        Some(&headend),
                        format!(
                            "misbehaviour report: {}",
                            sealcast_group::status::describe_items(&report.items)
                        ),
                    );
                }
            }
            Err(e) => {
                warn!(dap = %self.core.id(), error = %e, "misbehaviour report not sent; its evidence goes with the next one");
                self.evidence.put_back(report.items);
            }
        }
    }
}

/// Awaits `fut` (a send or an acknowledgement, which may wait for room in
/// the MQTT client's request queue) while taking what the transport
/// delivers meanwhile: the connection task waits for room in our inbox, so
/// not reading it while waiting on the client could stall both for good.
async fn draining<F: std::future::Future>(
    fut: F,
    inbox: &mut Inbox,
    arrived: &mut Vec<Incoming>,
) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            m = inbox.next_message() => match m {
                Some(m) => arrived.push(m),
                None => return fut.await,
            },
        }
    }
}

/// How long the DAP waits for its batches to be taken before it leaves
/// the meters' reports unacknowledged.
const BATCH_CONFIRM_WAIT: Duration = Duration::from_secs(30);

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

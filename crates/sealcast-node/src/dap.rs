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
//! the meters it serves ([`crate::metering::Announcement`]), sent at start,
//! whenever the set changes ([`DapHandle::set_meters`]) and when the headend
//! asks (a signed request on the `solicit` topic, e.g. after a restart).
//!
//! [`DapCore`] is the sans-IO part (verification, windows, batch and
//! announcement sealing, state encoding); [`spawn`] runs it as a tokio task
//! over MQTT. Order per batch: verify and commit the windows in memory,
//! publish the signed batch, persist the windows, then acknowledge the
//! meters' MQTT messages — so a crash before the save re-forwards (the
//! headend's own windows drop the copies) rather than losing reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::link::{Inbox, Incoming, Interest, Link, LinkConfig};
use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::replay::{SeqAllocator, SeqWindow};
use sealcast_core::report::verify_reports_batch;
use sealcast_core::target::{AgentChannel, TopicFilter, TopicScheme};
use sealcast_store::{DeviceStateFile, StateLock};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::metering::{Announcement, open_solicit, seal_batch, split_for_batches};
use crate::runtime::now;
use crate::{Error, Result};

/// Batch sequence numbers reserved at a time.
const BATCH_SEQ_BLOCK: u64 = 256;
/// Announce requests older or newer than this are ignored.
const SOLICIT_SKEW_MS: u64 = 5 * 60 * 1000;
/// At most one announcement per this interval in answer to requests.
const SOLICIT_MIN_INTERVAL_MS: u64 = 500;
const STATE_VERSION: u64 = 1;

/// What the DAP decided about one report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportVerdict {
    /// Genuine and fresh: forwarded.
    Forward,
    /// Signature or format wrong (the local reason).
    Forged(String),
    /// The reporter is not one of this DAP's meters.
    UnknownMeter,
    /// Its sequence number was seen before (or is too old).
    Replayed,
}

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

/// A sealed batch and whether state must reach the disk before it leaves.
#[derive(Debug)]
pub struct SealedBatches {
    /// The signed batches (more than one only if the reports did not fit one).
    pub batches: Vec<Vec<u8>>,
    /// A new batch-sequence reservation was made: persist before publishing.
    pub persist_first: bool,
}

/// The DAP's protocol state, without I/O.
pub struct DapCore {
    credential: EntityCredential,
    headend: PublicCredential,
    group: String,
    meters: BTreeMap<EntityId, VerifyingKey>,
    windows: BTreeMap<EntityId, SeqWindow>,
    batch_seq: SeqAllocator,
    announce_version: u64,
    last_solicited_answer: Option<UnixMillis>,
}

impl core::fmt::Debug for DapCore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DapCore")
            .field("id", self.credential.id())
            .field("headend", self.headend.id())
            .field("group", &self.group)
            .field("meters", &self.meters.len())
            .field("announce_version", &self.announce_version)
            .finish_non_exhaustive()
    }
}

fn state_err(what: &str) -> Error {
    Error::State(format!("DAP state: {what}"))
}

impl DapCore {
    /// A DAP for `headend` serving `meters` (their Ed25519 keys are what it
    /// verifies), under the meter-group name `group`.
    pub fn new(
        credential: EntityCredential,
        headend: PublicCredential,
        group: String,
        meters: Vec<PublicCredential>,
    ) -> Result<Self> {
        let mut core = Self {
            credential,
            headend,
            group,
            meters: BTreeMap::new(),
            windows: BTreeMap::new(),
            batch_seq: SeqAllocator::new(BATCH_SEQ_BLOCK)?,
            announce_version: 0,
            last_solicited_answer: None,
        };
        core.set_meters(meters);
        Ok(core)
    }

    /// The DAP's id.
    pub fn id(&self) -> &EntityId {
        self.credential.id()
    }

    /// The headend's id.
    pub fn headend(&self) -> &EntityId {
        self.headend.id()
    }

    /// How many meters it serves.
    pub fn meter_count(&self) -> usize {
        self.meters.len()
    }

    /// Replaces the set of meters; true if it changed (then announce).
    /// Windows of meters that stay are kept.
    pub fn set_meters(&mut self, meters: Vec<PublicCredential>) -> bool {
        let new: BTreeMap<EntityId, VerifyingKey> = meters
            .into_iter()
            .map(|m| (m.id().clone(), *m.verifying_key()))
            .collect();
        let changed = new != self.meters;
        self.meters = new;
        changed
    }

    /// Verifies `reports` in one batch and checks and commits each genuine
    /// one's window (in memory; see [`DapCore::export_state`]), in order, so
    /// a second copy inside the same batch is a replay too.
    pub fn verify(&mut self, reports: &[&[u8]]) -> Vec<ReportVerdict> {
        let meters = &self.meters;
        let verdicts = verify_reports_batch(reports, self.headend.id(), |id| meters.get(id));
        verdicts
            .into_iter()
            .map(|v| match v {
                Ok(report) => {
                    let h = report.header();
                    let window = self.windows.entry(h.reporter.clone()).or_default();
                    match window.check(h.seq).and_then(|t| window.commit(t)) {
                        Ok(()) => ReportVerdict::Forward,
                        Err(_) => ReportVerdict::Replayed,
                    }
                }
                Err(sealcast_core::Error::UnknownSender) => ReportVerdict::UnknownMeter,
                Err(e) => ReportVerdict::Forged(e.to_string()),
            })
            .collect()
    }

    /// Signs `reports` (already verified) into one or more batches for the
    /// headend.
    pub fn seal_batches(&mut self, reports: &[&[u8]], at: UnixMillis) -> Result<SealedBatches> {
        let mut persist_first = false;
        let mut batches = Vec::new();
        for chunk in split_for_batches(reports)? {
            if let Some(limit) = self.batch_seq.reservation_request() {
                self.batch_seq.confirm_reservation(limit)?;
                persist_first = true;
            }
            let seq = self.batch_seq.next()?;
            batches.push(seal_batch(
                self.credential.id(),
                self.credential.signing_key(),
                self.headend.id(),
                seq,
                at,
                &chunk,
            )?);
        }
        Ok(SealedBatches {
            batches,
            persist_first,
        })
    }

    /// A fresh signed announcement (its version is above every earlier
    /// one: persist the state before publishing it).
    pub fn announce(&mut self, at: UnixMillis) -> Result<Vec<u8>> {
        self.announce_version = self.announce_version.saturating_add(1).max(at.get());
        Announcement {
            dap: self.credential.id().clone(),
            headend: self.headend.id().clone(),
            group: self.group.clone(),
            version: self.announce_version,
            issued: at,
            meters: self.meters.keys().cloned().collect::<BTreeSet<_>>(),
        }
        .seal(self.credential.signing_key())
    }

    /// Checks a headend's request to announce: true if the DAP should
    /// announce now (genuine, fresh, and not answered within the last
    /// moment — requests cannot make it sign in a loop).
    pub fn handle_solicit(&mut self, bytes: &[u8], at: UnixMillis) -> Result<bool> {
        let issued = open_solicit(
            bytes,
            self.credential.id(),
            self.headend.id(),
            self.headend.verifying_key(),
        )?;
        if issued.get().abs_diff(at.get()) > SOLICIT_SKEW_MS {
            return Err(Error::Refused("announce request outside the clock skew"));
        }
        if let Some(last) = self.last_solicited_answer
            && at.get().saturating_sub(last.get()) < SOLICIT_MIN_INTERVAL_MS
        {
            return Ok(false);
        }
        self.last_solicited_answer = Some(at);
        Ok(true)
    }

    /// The state to persist: each meter's window, the batch-sequence
    /// reservation and the announcement version. CBOR:
    /// `[1, [[meter, window]...], batch_reserved_limit, announce_version]`.
    pub fn export_state(&self) -> Result<Vec<u8>> {
        use ciborium::Value;
        let windows = self
            .windows
            .iter()
            .map(|(m, w)| {
                Value::Array(vec![
                    Value::Text(m.as_str().to_owned()),
                    Value::Bytes(w.to_bytes()),
                ])
            })
            .collect();
        let value = Value::Array(vec![
            Value::Integer(STATE_VERSION.into()),
            Value::Array(windows),
            Value::Integer(self.batch_seq.reserved_limit().into()),
            Value::Integer(self.announce_version.into()),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&value, &mut out).map_err(|e| state_err(&e.to_string()))?;
        Ok(out)
    }

    /// Restores what [`DapCore::export_state`] wrote: windows, the batch
    /// sequence (resumed above the stored reservation) and the version.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        use ciborium::Value;
        let value: Value = ciborium::from_reader(bytes).map_err(|_| state_err("not CBOR"))?;
        let Some([version, windows, limit, announced]) = value.as_array().map(Vec::as_slice) else {
            return Err(state_err("malformed"));
        };
        if int_of(version)? != STATE_VERSION {
            return Err(state_err("unsupported version"));
        }
        let mut restored = BTreeMap::new();
        for w in windows.as_array().ok_or_else(|| state_err("malformed"))? {
            let Some([Value::Text(meter), Value::Bytes(window)]) = w.as_array().map(Vec::as_slice)
            else {
                return Err(state_err("malformed window"));
            };
            restored.insert(EntityId::new(meter)?, SeqWindow::from_bytes(window)?);
        }
        self.windows = restored;
        self.batch_seq = SeqAllocator::resume(int_of(limit)?, BATCH_SEQ_BLOCK)?;
        self.announce_version = int_of(announced)?;
        Ok(())
    }
}

fn int_of(v: &ciborium::Value) -> Result<u64> {
    crate::cbor::u64_of(v).ok_or_else(|| state_err("malformed integer"))
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
    state_file: Option<DeviceStateFile>,
    /// The state file's exclusive lock, held while the service runs.
    _state_lock: Option<StateLock>,
    events: mpsc::UnboundedSender<DapEvent>,
    stats: DapStats,
    stats_tx: watch::Sender<DapStats>,
    pending: Vec<Incoming>,
    /// Reports that arrived while a flush waited on the transport.
    arrived: Vec<Incoming>,
    deadline: Option<tokio::time::Instant>,
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
    } = config;
    if batch_size == 0 || batch_size > crate::metering::MAX_BATCH_REPORTS {
        return Err(Error::Runtime("batch size must be 1..=4096".into()));
    }
    let state_lock =
        crate::runtime::lock_and_restore(state_file.as_ref(), |bytes| core.restore_state(bytes))?;
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
    let (link, inbox) = Link::connect(&id, &link, topics.clone(), interest).await?;
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
        state_file,
        _state_lock: state_lock,
        events,
        stats: DapStats::default(),
        stats_tx,
        pending: Vec::new(),
        arrived: Vec::new(),
        deadline: None,
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
        let stopped = loop {
            let deadline = self.deadline;
            let result = tokio::select! {
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
        self.link.close(Duration::from_secs(2)).await;
        debug!(dap = %self.core.id(), "DAP stopped");
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
            version: self.core.announce_version,
            meters: self.core.meter_count(),
        });
        Ok(())
    }

    /// A report: on the DAP's own report topic or its pool's.
    fn is_report(&self, topic: &str) -> bool {
        topic == self.report_topic || self.pool_topic.as_deref() == Some(topic)
    }

    async fn on_message(&mut self, m: Incoming, inbox: &mut Inbox) -> Result<()> {
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
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let refs: Vec<&[u8]> = pending.iter().map(|m| m.payload.as_ref()).collect();
        let started = Instant::now();
        let verdicts = self.core.verify(&refs);
        self.stats.verify_time += started.elapsed();
        let (mut forged, mut unknown, mut replayed) = (0usize, 0usize, 0usize);
        let mut forward: Vec<&[u8]> = Vec::new();
        for (bytes, verdict) in refs.iter().zip(&verdicts) {
            match verdict {
                ReportVerdict::Forward => forward.push(*bytes),
                ReportVerdict::Forged(reason) => {
                    forged += 1;
                    debug!(dap = %self.core.id(), reason = %reason, "forged report dropped");
                }
                ReportVerdict::UnknownMeter => unknown += 1,
                ReportVerdict::Replayed => replayed += 1,
            }
        }
        if !forward.is_empty() {
            let sealed = self.core.seal_batches(&forward, now())?;
            if sealed.persist_first {
                self.persist()?;
            }
            let headend = self.core.headend().clone();
            for batch in sealed.batches {
                let send = self.link.send_to(&headend, self.batch_topic.clone(), batch);
                draining(send, inbox, &mut self.arrived).await?;
                self.stats.batches += 1;
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
        self.stats_tx.send_replace(self.stats.clone());
        if forged + unknown + replayed > 0 {
            warn!(dap = %self.core.id(), received, forwarded, forged, unknown, replayed, "reports dropped");
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::meter::Meter;
    use crate::metering::open_batch;
    use sealcast_core::testrng::TestRng;

    struct World {
        headend: EntityCredential,
        dap: DapCore,
        meters: Vec<Meter>,
        mallory: Meter,
    }

    fn world() -> World {
        let mut rng = TestRng::new(11);
        let headend = EntityCredential::generate(EntityId::new("headend").unwrap(), &mut rng);
        let dap_cred = EntityCredential::generate(EntityId::new("dap-1").unwrap(), &mut rng);
        let creds: Vec<EntityCredential> = (0..3)
            .map(|i| {
                EntityCredential::generate(EntityId::new(&format!("meter-{i}")).unwrap(), &mut rng)
            })
            .collect();
        let dap = DapCore::new(
            dap_cred,
            headend.public(),
            "street-7".into(),
            creds.iter().map(EntityCredential::public).collect(),
        )
        .unwrap();
        let meters = creds
            .into_iter()
            .map(|c| {
                let mut m = Meter::new(c, &headend.public(), 0).unwrap();
                let l = m.reservation_request().unwrap();
                m.confirm_reservation(l).unwrap();
                m
            })
            .collect();
        // Claims to be meter-0 with its own key.
        let forger = EntityCredential::generate(EntityId::new("meter-0").unwrap(), &mut rng);
        let mut mallory = Meter::new(forger, &headend.public(), 1000).unwrap();
        let l = mallory.reservation_request().unwrap();
        mallory.confirm_reservation(l).unwrap();
        World {
            headend,
            dap,
            meters,
            mallory,
        }
    }

    #[test]
    fn drops_forgeries_unknowns_and_replays_in_one_batch() {
        let mut w = world();
        let at = UnixMillis::new(1_000);
        let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
        let (_, b) = w.meters[1].seal(b"2 kWh", at).unwrap();
        let (_, forged) = w.mallory.seal(b"0 kWh", at).unwrap();
        let mut flipped = b.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 0x40;
        let mut rng = TestRng::new(99);
        let stranger_cred =
            EntityCredential::generate(EntityId::new("meter-99").unwrap(), &mut rng);
        let mut stranger = Meter::new(stranger_cred, &w.headend.public(), 0).unwrap();
        let l = stranger.reservation_request().unwrap();
        stranger.confirm_reservation(l).unwrap();
        let (_, unknown) = stranger.seal(b"9 kWh", at).unwrap();
        let batch: Vec<&[u8]> = vec![&a, &b, &forged, &flipped, &unknown, &a, b"junk"];
        let verdicts = w.dap.verify(&batch);
        assert_eq!(verdicts[0], ReportVerdict::Forward);
        assert_eq!(verdicts[1], ReportVerdict::Forward);
        assert!(matches!(verdicts[2], ReportVerdict::Forged(_)));
        assert!(matches!(verdicts[3], ReportVerdict::Forged(_)));
        assert_eq!(verdicts[4], ReportVerdict::UnknownMeter);
        assert_eq!(verdicts[5], ReportVerdict::Replayed);
        assert!(matches!(verdicts[6], ReportVerdict::Forged(_)));
        // In a later batch as well.
        assert_eq!(w.dap.verify(&[&b]), vec![ReportVerdict::Replayed]);
    }

    #[test]
    fn windows_and_sequences_survive_a_restart() {
        let mut w = world();
        let at = UnixMillis::new(1_000);
        let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
        assert_eq!(w.dap.verify(&[&a]), vec![ReportVerdict::Forward]);
        let sealed = w.dap.seal_batches(&[&a], at).unwrap();
        assert!(
            sealed.persist_first,
            "the first batch reserves sequence numbers"
        );
        let v1 = {
            let ann = w.dap.announce(at).unwrap();
            let key = w.dap.credential.signing_key().verifying_key();
            Announcement::open(&ann, w.headend.id(), |_| Some(&key))
                .unwrap()
                .version
        };
        let state = w.dap.export_state().unwrap();

        let mut restarted = world().dap;
        restarted.restore_state(&state).unwrap();
        assert_eq!(restarted.verify(&[&a]), vec![ReportVerdict::Replayed]);
        let key = restarted.credential.signing_key().verifying_key();
        let lookup = |_: &EntityId| Some(&key);
        let before = open_batch(&sealed.batches[0], w.headend.id(), lookup).unwrap();
        let (_, b) = w.meters[1].seal(b"2 kWh", at).unwrap();
        let after = restarted.seal_batches(&[&b], at).unwrap();
        let after = open_batch(&after.batches[0], w.headend.id(), lookup).unwrap();
        assert!(
            after.seq > before.seq,
            "batch sequence reused after a restart"
        );
        let ann = restarted.announce(at).unwrap();
        let v2 = Announcement::open(&ann, w.headend.id(), lookup)
            .unwrap()
            .version;
        assert!(v2 > v1);
        assert!(restarted.restore_state(b"junk").is_err());
    }

    #[test]
    fn solicits_are_checked_and_rate_limited() {
        let mut w = world();
        let at = UnixMillis::new(10_000_000);
        let req =
            crate::metering::seal_solicit(w.headend.id(), w.headend.signing_key(), w.dap.id(), at)
                .unwrap();
        assert!(w.dap.handle_solicit(&req, at).unwrap());
        assert!(
            !w.dap
                .handle_solicit(&req, UnixMillis::new(at.get() + 10))
                .unwrap()
        );
        assert!(
            w.dap
                .handle_solicit(&req, UnixMillis::new(at.get() + 1_000))
                .unwrap()
        );
        assert!(
            w.dap
                .handle_solicit(&req, UnixMillis::new(at.get() + SOLICIT_SKEW_MS + 1))
                .is_err()
        );
        let mut rng = TestRng::new(1);
        let mallory = EntityCredential::generate(w.headend.id().clone(), &mut rng);
        let forged =
            crate::metering::seal_solicit(mallory.id(), mallory.signing_key(), w.dap.id(), at)
                .unwrap();
        assert!(w.dap.handle_solicit(&forged, at).is_err());
        // A changed meter set is reported; the same one is not.
        let same: Vec<PublicCredential> = Vec::new();
        assert!(w.dap.set_meters(same.clone()));
        assert!(!w.dap.set_meters(same));
    }
}

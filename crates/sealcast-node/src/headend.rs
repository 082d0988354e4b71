//! The utility headend: receives the DAPs' signed report batches, checks
//! the DAP once per batch, and decrypts every report end to end.
//!
//! A DAP first **announces** the meters it serves (a signed
//! [`Announcement`]); the headend keeps the newest announcement of each DAP
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

use crate::link::{Inbox, Incoming, Interest, Link, LinkConfig};
use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::replay::SeqWindow;
use sealcast_core::report::{open_report, open_report_unverified, peek_report, verify_report};
use sealcast_core::target::{AgentChannel, Topic, TopicFilter, TopicScheme};
use sealcast_store::{DeviceStateFile, StateLock};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::meter::PAIRWISE_ALG;
use crate::metering::{Announcement, open_batch, seal_solicit};
use crate::runtime::now;
use crate::{Error, Result};

/// Window of batch sequence numbers per DAP.
const BATCH_WINDOW: usize = 256;
/// Batches held per DAP while its announcement is awaited.
const MAX_HELD_BATCHES: usize = 64;
/// How often the headend asks an unannounced DAP again.
const SOLICIT_RETRY: Duration = Duration::from_secs(2);
const STATE_VERSION: u64 = 1;

/// One decrypted reading.
#[derive(Clone, PartialEq, Eq)]
pub struct Reading {
    /// The meter.
    pub meter: EntityId,
    /// The DAP that forwarded it.
    pub dap: EntityId,
    /// The meter's sequence number.
    pub seq: SeqNum,
    /// The meter's timestamp.
    pub timestamp: UnixMillis,
    /// The reading.
    pub value: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for Reading {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reading")
            .field("meter", &self.meter)
            .field("dap", &self.dap)
            .field("seq", &self.seq.get())
            .field("len", &self.value.len())
            .finish()
    }
}

/// Why one report of an accepted batch was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportDrop {
    /// Unparseable.
    Malformed,
    /// The DAP did not announce this meter.
    NotAnnounced,
    /// The headend has no credential for it.
    UnknownMeter,
    /// Seen before (or too old).
    Replayed,
    /// Decryption (or the policy's signature check) failed.
    Undecryptable,
}

/// The result of one accepted batch.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The DAP.
    pub dap: EntityId,
    /// Its batch sequence number.
    pub seq: SeqNum,
    /// Readings decrypted, in batch order.
    pub readings: Vec<Reading>,
    /// Reports dropped, with the meter when it could be read.
    pub dropped: Vec<(Option<EntityId>, ReportDrop)>,
}

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
        info!(meter = %r.meter, dap = %r.dap, seq = r.seq.get(), len = r.value.len(), "reading");
        debug!(meter = %r.meter, seq = r.seq.get(), reading = %String::from_utf8_lossy(&r.value).escape_debug(), "reading content");
    }
}

struct DapEntry {
    key: VerifyingKey,
    announced: Option<Announced>,
    batches: SeqWindow,
}

#[derive(Clone)]
struct Announced {
    version: u64,
    group: String,
    meters: BTreeSet<EntityId>,
}

struct MeterEntry {
    pairwise: sealcast_core::report::PairwiseKey,
    key: VerifyingKey,
    window: SeqWindow,
}

/// Accepted announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncementAccepted {
    /// The DAP.
    pub dap: EntityId,
    /// Its meter group.
    pub group: String,
    /// Meters it named.
    pub meters: usize,
    /// Meters named that the headend holds no credential for.
    pub unknown: usize,
    /// Its version.
    pub version: u64,
}

/// The headend's protocol state, without I/O.
pub struct HeadendCore {
    credential: EntityCredential,
    daps: BTreeMap<EntityId, DapEntry>,
    meters: BTreeMap<EntityId, MeterEntry>,
    verify_meter_signatures: bool,
}

impl core::fmt::Debug for HeadendCore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeadendCore")
            .field("id", self.credential.id())
            .field("daps", &self.daps.keys().collect::<Vec<_>>())
            .field("meters", &self.meters.len())
            .field("verify_meter_signatures", &self.verify_meter_signatures)
            .finish_non_exhaustive()
    }
}

fn state_err(what: &str) -> Error {
    Error::State(format!("headend state: {what}"))
}

impl HeadendCore {
    /// A headend trusting `daps` and holding the credentials of `meters`
    /// (their key-agreement keys give the pairwise keys). With
    /// `verify_meter_signatures` it also re-checks each meter's signature
    /// instead of relying on the DAP's batch signature alone.
    pub fn new(
        credential: EntityCredential,
        daps: Vec<PublicCredential>,
        meters: Vec<PublicCredential>,
        verify_meter_signatures: bool,
    ) -> Result<Self> {
        let daps = daps
            .into_iter()
            .map(|d| {
                Ok((
                    d.id().clone(),
                    DapEntry {
                        key: *d.verifying_key(),
                        announced: None,
                        batches: SeqWindow::with_size(BATCH_WINDOW)?,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let mut pairwise = BTreeMap::new();
        for m in meters {
            let key = sealcast_core::report::PairwiseKey::derive(
                PAIRWISE_ALG,
                credential.agreement_secret(),
                m.agreement_key(),
                m.id(),
                credential.id(),
            )?;
            pairwise.insert(
                m.id().clone(),
                MeterEntry {
                    pairwise: key,
                    key: *m.verifying_key(),
                    window: SeqWindow::new(),
                },
            );
        }
        Ok(Self {
            credential,
            daps,
            meters: pairwise,
            verify_meter_signatures,
        })
    }

    /// The headend's id.
    pub fn id(&self) -> &EntityId {
        self.credential.id()
    }

    /// The DAPs it trusts.
    pub fn daps(&self) -> impl Iterator<Item = &EntityId> {
        self.daps.keys()
    }

    /// Whether `dap` has an accepted announcement.
    pub fn is_announced(&self, dap: &EntityId) -> bool {
        self.daps.get(dap).is_some_and(|d| d.announced.is_some())
    }

    /// A signed request that `dap` announce itself.
    pub fn solicit(&self, dap: &EntityId, at: UnixMillis) -> Result<Vec<u8>> {
        seal_solicit(self.credential.id(), self.credential.signing_key(), dap, at)
    }

    /// Accepts a DAP's announcement if it verifies and is newer than the
    /// one held (a replayed older announcement is refused).
    pub fn handle_announcement(&mut self, bytes: &[u8]) -> Result<AnnouncementAccepted> {
        let daps = &self.daps;
        let ann = Announcement::open(bytes, self.credential.id(), |id| {
            daps.get(id).map(|d| &d.key)
        })?;
        let entry = self
            .daps
            .get_mut(&ann.dap)
            .ok_or(Error::Refused("announcement from an unknown DAP"))?;
        if entry
            .announced
            .as_ref()
            .is_some_and(|a| ann.version <= a.version)
        {
            return Err(Error::Refused("announcement not newer than the one held"));
        }
        let unknown = ann
            .meters
            .iter()
            .filter(|m| !self.meters.contains_key(*m))
            .count();
        let accepted = AnnouncementAccepted {
            dap: ann.dap.clone(),
            group: ann.group.clone(),
            meters: ann.meters.len(),
            unknown,
            version: ann.version,
        };
        entry.announced = Some(Announced {
            version: ann.version,
            group: ann.group,
            meters: ann.meters,
        });
        Ok(accepted)
    }

    /// Checks a batch and decrypts its reports. The whole batch is refused
    /// (nothing changes) if the DAP's signature fails, the DAP has not
    /// announced ([`Error::NotAnnounced`]: hold it), or the batch is a
    /// replay; otherwise each report is decrypted or dropped on its own.
    pub fn handle_batch(&mut self, bytes: &[u8]) -> Result<BatchOutcome> {
        let daps = &self.daps;
        let batch = open_batch(bytes, self.credential.id(), |id| {
            daps.get(id).map(|d| &d.key)
        })?;
        let entry = self
            .daps
            .get_mut(&batch.dap)
            .ok_or(Error::Refused("batch from an unknown DAP"))?;
        let Some(announced) = entry.announced.as_ref() else {
            return Err(Error::NotAnnounced(batch.dap));
        };
        let token = entry.batches.check(batch.seq)?;
        let mut readings = Vec::new();
        let mut dropped = Vec::new();
        for report in &batch.reports {
            let Ok(header) = peek_report(report, self.credential.id()) else {
                dropped.push((None, ReportDrop::Malformed));
                continue;
            };
            let meter = header.reporter.clone();
            if !announced.meters.contains(&meter) {
                dropped.push((Some(meter), ReportDrop::NotAnnounced));
                continue;
            }
            let Some(m) = self.meters.get_mut(&meter) else {
                dropped.push((Some(meter), ReportDrop::UnknownMeter));
                continue;
            };
            let Ok(check) = m.window.check(header.seq) else {
                dropped.push((Some(meter), ReportDrop::Replayed));
                continue;
            };
            let opened = if self.verify_meter_signatures {
                verify_report(report, self.credential.id(), |id| {
                    (*id == meter).then_some(&m.key)
                })
                .and_then(|v| {
                    open_report(&v, self.credential.id(), &m.pairwise)
                        .map(|r| (v.header().clone(), r))
                })
            } else {
                open_report_unverified(report, self.credential.id(), &m.pairwise)
            };
            let Ok((header, value)) = opened else {
                dropped.push((Some(meter), ReportDrop::Undecryptable));
                continue;
            };
            if m.window.commit(check).is_err() {
                dropped.push((Some(meter), ReportDrop::Replayed));
                continue;
            }
            readings.push(Reading {
                meter,
                dap: batch.dap.clone(),
                seq: header.seq,
                timestamp: header.timestamp,
                value,
            });
        }
        entry.batches.commit(token)?;
        Ok(BatchOutcome {
            dap: batch.dap,
            seq: batch.seq,
            readings,
            dropped,
        })
    }

    /// The state to persist: per DAP its announcement and batch window, per
    /// meter its window. CBOR: `[1, [[dap, window, null / [version, group,
    /// [meter...]]]...], [[meter, window]...]]`.
    pub fn export_state(&self) -> Result<Vec<u8>> {
        use ciborium::Value;
        let text = |id: &EntityId| Value::Text(id.as_str().to_owned());
        let daps = self
            .daps
            .iter()
            .map(|(id, d)| {
                let ann = match &d.announced {
                    None => Value::Null,
                    Some(a) => Value::Array(vec![
                        Value::Integer(a.version.into()),
                        Value::Text(a.group.clone()),
                        Value::Array(a.meters.iter().map(text).collect()),
                    ]),
                };
                Value::Array(vec![text(id), Value::Bytes(d.batches.to_bytes()), ann])
            })
            .collect();
        let meters = self
            .meters
            .iter()
            .filter(|(_, m)| m.window.highest().is_some())
            .map(|(id, m)| Value::Array(vec![text(id), Value::Bytes(m.window.to_bytes())]))
            .collect();
        let value = Value::Array(vec![
            Value::Integer(STATE_VERSION.into()),
            Value::Array(daps),
            Value::Array(meters),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&value, &mut out).map_err(|e| state_err(&e.to_string()))?;
        Ok(out)
    }

    /// Restores what [`HeadendCore::export_state`] wrote. DAPs and meters
    /// no longer configured are skipped.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        use ciborium::Value;
        let value: Value = ciborium::from_reader(bytes).map_err(|_| state_err("not CBOR"))?;
        let Some([version, daps, meters]) = value.as_array().map(Vec::as_slice) else {
            return Err(state_err("malformed"));
        };
        if version.as_integer() != Some(STATE_VERSION.into()) {
            return Err(state_err("unsupported version"));
        }
        let id_of = |v: &Value| match v {
            Value::Text(t) => Ok(EntityId::new(t)?),
            _ => Err(state_err("malformed id")),
        };
        for d in daps.as_array().ok_or_else(|| state_err("malformed"))? {
            let Some([id, Value::Bytes(window), ann]) = d.as_array().map(Vec::as_slice) else {
                return Err(state_err("malformed DAP entry"));
            };
            let announced = match ann {
                Value::Null => None,
                Value::Array(a) => match a.as_slice() {
                    [v, Value::Text(group), Value::Array(ms)] => Some(Announced {
                        version: crate::cbor::u64_of(v)
                            .ok_or_else(|| state_err("malformed version"))?,
                        group: group.clone(),
                        meters: ms.iter().map(id_of).collect::<Result<_>>()?,
                    }),
                    _ => return Err(state_err("malformed announcement")),
                },
                _ => return Err(state_err("malformed announcement")),
            };
            if let Some(entry) = self.daps.get_mut(&id_of(id)?) {
                entry.batches = SeqWindow::from_bytes(window)?;
                entry.announced = announced;
            }
        }
        for m in meters.as_array().ok_or_else(|| state_err("malformed"))? {
            let Some([id, Value::Bytes(window)]) = m.as_array().map(Vec::as_slice) else {
                return Err(state_err("malformed meter entry"));
            };
            if let Some(entry) = self.meters.get_mut(&id_of(id)?) {
                entry.window = SeqWindow::from_bytes(window)?;
            }
        }
        Ok(())
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
    stop: mpsc::Sender<oneshot::Sender<()>>,
    stats: watch::Receiver<HeadendStats>,
}

impl HeadendHandle {
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
        if self.stop.send(reply).await.is_ok() {
            let _ = rx.await;
        }
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
    } = config;
    let state_lock =
        crate::runtime::lock_and_restore(state_file.as_ref(), |bytes| core.restore_state(bytes))?;
    let id = core.id().clone();
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
    };
    // Every DAP announces again (its meter set may have changed while we
    // were away), whether or not we hold an older announcement.
    let daps: Vec<EntityId> = headend.core.daps().cloned().collect();
    for dap in &daps {
        headend.solicit(dap).await?;
    }
    info!(headend = %id, daps = daps.len(), meters = headend.core.meters.len(), "headend running");
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(headend.run(inbox, rx));
    Ok(HeadendHandle {
        id,
        stop: tx,
        stats: stats_rx,
    })
}

impl Headend {
    async fn run(mut self, mut inbox: Inbox, mut stop: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut retry = tokio::time::interval(SOLICIT_RETRY);
        retry.tick().await;
        let stopped = loop {
            let result = tokio::select! {
                msg = inbox.next_message() => match msg {
                    Some(m) => self.on_message(m).await,
                    None => break None,
                },
                reply = stop.recv() => break reply,
                _ = retry.tick() => self.solicit_unannounced().await,
            };
            if let Err(e) = result {
                warn!(headend = %self.core.id(), error = %e, "headend stopping");
                let _ = self.events.send(HeadendEvent::Failed(e.to_string()));
                break None;
            }
        };
        self.link.close(Duration::from_secs(2)).await;
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
                if a.unknown > 0 {
                    warn!(dap = %a.dap, unknown_meters = a.unknown, "the DAP announced meters this headend holds no credential for; their reports will be dropped");
                }
                self.stats.announcements += 1;
                self.publish_stats();
                let _ = self.events.send(HeadendEvent::Announced(a.clone()));
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
                m.ack.ack().await;
                Ok(())
            }
        }
    }

    async fn on_batch(&mut self, topic_dap: &EntityId, m: Incoming) -> Result<()> {
        match self.core.handle_batch(&m.payload) {
            Ok(outcome) => {
                // Windows on disk before anything is handed on or acked.
                self.persist()?;
                for r in &outcome.readings {
                    self.handler.reading(r);
                }
                m.ack.ack().await;
                for (meter, why) in &outcome.dropped {
                    match why {
                        ReportDrop::Replayed => self.stats.replayed += 1,
                        ReportDrop::NotAnnounced => self.stats.not_announced += 1,
                        _ => self.stats.undecryptable += 1,
                    }
                    warn!(dap = %outcome.dap, meter = ?meter.as_ref().map(EntityId::as_str), reason = ?why, "report dropped at the headend");
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
            Err(Error::NotAnnounced(dap)) if dap == *topic_dap && !m.can_wait() => {
                // CoAP: the DAP waits for this answer before it answers its
                // meters; holding it would hold the DAP. Refused (5.03), so
                // the DAP and its meters see it, and the DAP is asked to
                // announce.
                debug!(%dap, "batch of an unannounced DAP refused until it announces");
                drop(m);
                self.refused("DAP not announced");
                self.solicit(&dap).await?;
            }
            Err(Error::NotAnnounced(dap)) if dap == *topic_dap => {
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

    fn refused(&mut self, why: &str) {
        self.stats.batches_refused += 1;
        self.publish_stats();
        let _ = self.events.send(HeadendEvent::BatchRefused(why.to_owned()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::dap::DapCore;
    use crate::meter::Meter;
    use sealcast_core::testrng::TestRng;

    struct World {
        headend: HeadendCore,
        headend_public: PublicCredential,
        dap: DapCore,
        meters: Vec<Meter>,
        creds: Vec<PublicCredential>,
    }

    fn world(seed: u64, verify: bool) -> World {
        let mut rng = TestRng::new(seed);
        let headend = EntityCredential::generate(EntityId::new("headend").unwrap(), &mut rng);
        let dap = EntityCredential::generate(EntityId::new("dap-1").unwrap(), &mut rng);
        let creds: Vec<EntityCredential> = (0..3)
            .map(|i| {
                EntityCredential::generate(EntityId::new(&format!("meter-{i}")).unwrap(), &mut rng)
            })
            .collect();
        let publics: Vec<PublicCredential> = creds.iter().map(EntityCredential::public).collect();
        let headend_public = headend.public();
        let core = HeadendCore::new(headend, vec![dap.public()], publics.clone(), verify).unwrap();
        // The DAP serves meters 0 and 1 only.
        let dap = DapCore::new(
            dap,
            headend_public.clone(),
            "street-7".into(),
            publics[..2].to_vec(),
        )
        .unwrap();
        let meters = creds
            .into_iter()
            .map(|c| {
                let mut m = Meter::new(c, &headend_public, 0).unwrap();
                let l = m.reservation_request().unwrap();
                m.confirm_reservation(l).unwrap();
                m
            })
            .collect();
        World {
            headend: core,
            headend_public,
            dap,
            meters,
            creds: publics,
        }
    }

    fn batch(w: &mut World, reports: &[&[u8]]) -> Vec<u8> {
        w.dap
            .seal_batches(reports, UnixMillis::new(5))
            .unwrap()
            .batches
            .remove(0)
    }

    #[test]
    fn announced_meters_only_replays_refused_and_state_survives() {
        for verify in [false, true] {
            let mut w = world(21, verify);
            let at = UnixMillis::new(1_000);
            let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
            let (_, c) = w.meters[2].seal(b"3 kWh", at).unwrap();
            let b1 = batch(&mut w, &[&a, &c]);
            // Before the announcement: held, nothing changes.
            assert!(matches!(
                w.headend.handle_batch(&b1),
                Err(Error::NotAnnounced(_))
            ));
            let ann = w.dap.announce(at).unwrap();
            let accepted = w.headend.handle_announcement(&ann).unwrap();
            assert_eq!(accepted.meters, 2);
            assert_eq!(accepted.group, "street-7");
            // A replayed (not newer) announcement is refused.
            assert!(w.headend.handle_announcement(&ann).is_err());
            let out = w.headend.handle_batch(&b1).unwrap();
            assert_eq!(out.readings.len(), 1);
            assert_eq!(out.readings[0].meter.as_str(), "meter-0");
            assert_eq!(out.readings[0].value.as_slice(), b"1 kWh");
            assert_eq!(
                out.dropped,
                vec![(Some(w.creds[2].id().clone()), ReportDrop::NotAnnounced)]
            );
            // The same batch again: refused whole.
            assert!(matches!(
                w.headend.handle_batch(&b1),
                Err(Error::Core(sealcast_core::Error::Replay(_)))
            ));
            // The same report in a new batch: dropped as a replay.
            let b2 = batch(&mut w, &[&a]);
            let out = w.headend.handle_batch(&b2).unwrap();
            assert!(out.readings.is_empty());
            assert_eq!(out.dropped[0].1, ReportDrop::Replayed);

            // A restart from the saved state accepts neither.
            let state = w.headend.export_state().unwrap();
            let mut again = world(21, verify);
            again.headend.restore_state(&state).unwrap();
            assert!(again.headend.is_announced(w.dap.id()));
            assert!(again.headend.handle_batch(&b1).is_err());
            let b3 = batch(&mut w, &[&a]);
            let out = again.headend.handle_batch(&b3).unwrap();
            assert_eq!(out.dropped[0].1, ReportDrop::Replayed);
            // A fresh reading still gets through.
            let (_, a2) = w.meters[0].seal(b"4 kWh", at).unwrap();
            let b4 = batch(&mut w, &[&a2]);
            let out = again.headend.handle_batch(&b4).unwrap();
            assert_eq!(out.readings[0].value.as_slice(), b"4 kWh");
            assert!(again.headend.restore_state(b"\x80").is_err());
        }
    }

    #[test]
    fn forged_batches_and_undecryptable_reports() {
        let mut w = world(22, false);
        let at = UnixMillis::new(1_000);
        let ann = w.dap.announce(at).unwrap();
        w.headend.handle_announcement(&ann).unwrap();
        // A report encrypted for another headend (wrong pairwise key): the
        // DAP cannot tell, the headend drops it.
        let mut rng = TestRng::new(3);
        let elsewhere = EntityCredential::generate(EntityId::new("headend").unwrap(), &mut rng);
        let meter1 = EntityCredential::generate(EntityId::new("meter-1").unwrap(), &mut rng);
        let mut wrong = Meter::new(meter1, &elsewhere.public(), 0).unwrap();
        let l = wrong.reservation_request().unwrap();
        wrong.confirm_reservation(l).unwrap();
        let (_, bad) = wrong.seal(b"x", at).unwrap();
        let b = batch(&mut w, &[&bad, b"junk"]);
        let out = w.headend.handle_batch(&b).unwrap();
        assert!(out.readings.is_empty());
        assert_eq!(
            out.dropped.iter().map(|d| &d.1).collect::<Vec<_>>(),
            vec![&ReportDrop::Undecryptable, &ReportDrop::Malformed]
        );
        // A batch signed by someone else, and a flipped bit.
        let mallory = EntityCredential::generate(EntityId::new("dap-1").unwrap(), &mut rng);
        let forged = crate::metering::seal_batch(
            mallory.id(),
            mallory.signing_key(),
            w.headend.id(),
            SeqNum::new(900).unwrap(),
            at,
            &[],
        )
        .unwrap();
        assert!(w.headend.handle_batch(&forged).is_err());
        let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
        let mut flipped = batch(&mut w, &[&a]);
        let n = flipped.len();
        flipped[n / 2] ^= 1;
        assert!(w.headend.handle_batch(&flipped).is_err());
        let _ = &w.headend_public;
    }
}

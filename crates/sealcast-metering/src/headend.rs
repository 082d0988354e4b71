//! The utility headend's protocol state, without I/O: checks the DAPs'
//! signed report batches once per batch and decrypts every report end to
//! end.
//!
//! A DAP first **announces** the meters it serves (a signed
//! [`Announcement`]); the headend keeps the newest announcement of each DAP
//! it knows and accepts reports from a DAP only for meters it announced
//! (a batch from a DAP not announced yet is [`Error::NotAnnounced`]).
//!
//! Per batch ([`HeadendCore::handle_batch`]): the DAP's signature → the
//! batch names this headend → the DAP announced → the batch sequence window
//! of that DAP (a replayed batch stops here, before any decryption) → per
//! report: announced meter → the meter's sequence window → decryption with
//! the meter's pairwise key (the AEAD authenticates the meter; the policy
//! may also re-verify its signature) → commit the window → reading.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::replay::SeqWindow;
use sealcast_core::report::{
    PairwiseKey, open_report_unverified_with, open_report_with, peek_report, verify_report,
};
use zeroize::Zeroizing;

use crate::plausibility::{Action, Implausible, Plausibility, Verdict};
use crate::sa::{HeadendSa, SaPhase, SaStatus, SaUpdate};
use crate::wire::{Announcement, open_batch, seal_solicit};
use crate::{Error, Result};

/// Window of batch sequence numbers per DAP.
const BATCH_WINDOW: usize = 256;
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
    /// Why a plausibility rule flagged it (None: plausible, or no rules).
    pub implausible: Option<Implausible>,
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
    /// The headend removed the meter's security association: nothing of
    /// it is opened until one is established again.
    AssociationRemoved,
    /// Sealed under an association epoch the headend no longer holds (the
    /// meter moved on, or a report under an old key).
    EpochRetired,
    /// Genuine, but a plausibility rule with `Action::Drop` refused the
    /// value (its window moved: it is not accepted again).
    Implausible(Implausible),
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
    /// Meters' confirmations of the downlink (reports whose plaintext is a
    /// [`crate::downlink::MeterAck`]; not readings, not checked for
    /// plausibility), in batch order.
    pub acks: Vec<(EntityId, crate::downlink::MeterAck)>,
    /// Meters' acknowledgements of transmission orders (reports whose
    /// plaintext is a [`crate::downlink::TransmissionAck`]), in batch order.
    pub transmission_acks: Vec<(EntityId, crate::downlink::TransmissionAck)>,
    /// Meters whose refreshed security association this batch put in use
    /// (their first report under the new epoch), with that epoch.
    pub associations: Vec<(EntityId, u32)>,
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
    /// The keys that open its reports (current epoch, and the previous
    /// one while a refresh is pending), derived from `sa`.
    keys: Vec<PairwiseKey>,
    key: VerifyingKey,
    agreement: x25519_dalek::PublicKey,
    window: SeqWindow,
    sa: HeadendSa,
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
    plausibility: Plausibility,
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

/// A fresh entry (pairwise key, window) per meter credential.
fn meter_entries(
    credential: &EntityCredential,
    meters: Vec<PublicCredential>,
) -> Result<BTreeMap<EntityId, MeterEntry>> {
    let mut out = BTreeMap::new();
    for m in meters {
        let sa = HeadendSa::default();
        out.insert(
            m.id().clone(),
            MeterEntry {
                keys: sa.keys(credential, m.id(), m.agreement_key())?,
                key: *m.verifying_key(),
                agreement: *m.agreement_key(),
                window: SeqWindow::new(),
                sa,
            },
        );
    }
    Ok(out)
}

/// The meters a headend held at one point (opaque: keys stay inside).
pub struct HeldMeters(BTreeMap<EntityId, MeterEntry>);

impl core::fmt::Debug for HeldMeters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HeldMeters({} meters)", self.0.len())
    }
}

/// What [`HeadendCore::set_meters`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetersChanged {
    /// Meters it did not hold before.
    pub added: usize,
    /// Meters it no longer holds (their windows are forgotten).
    pub removed: usize,
    /// Meters whose key changed (a fresh pairwise key and window: reports
    /// under the old key no longer open).
    pub rekeyed: usize,
}

/// The security associations a headend's saved state holds (meters not
/// named are at epoch 0, established at enrolment): for status output,
/// without the headend's keys.
pub fn saved_associations(bytes: &[u8]) -> Result<BTreeMap<EntityId, SaStatus>> {
    let mut value: ciborium::Value =
        ciborium::from_reader(bytes).map_err(|_| state_err("not CBOR"))?;
    let found = associations_of(&value);
    zeroize_bytes(&mut value);
    found
}

fn associations_of(value: &ciborium::Value) -> Result<BTreeMap<EntityId, SaStatus>> {
    use ciborium::Value;
    let Some(meters) = value
        .as_array()
        .and_then(|a| a.get(2))
        .and_then(Value::as_array)
    else {
        return Err(state_err("malformed"));
    };
    let mut out = BTreeMap::new();
    for m in meters {
        if let Some([Value::Text(id), _, sa]) = m.as_array().map(Vec::as_slice) {
            out.insert(EntityId::new(id)?, HeadendSa::from_value(sa)?.status());
        }
    }
    Ok(out)
}

/// Overwrites every byte string in `value` (secrets encoded as CBOR).
fn zeroize_bytes(value: &mut ciborium::Value) {
    use ciborium::Value;
    match value {
        Value::Bytes(b) => zeroize::Zeroize::zeroize(b),
        Value::Array(items) => items.iter_mut().for_each(zeroize_bytes),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            zeroize_bytes(k);
            zeroize_bytes(v);
        }),
        Value::Tag(_, inner) => zeroize_bytes(inner),
        _ => {}
    }
}

/// A change of a meter's security association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaChange {
    /// A new epoch with a fresh key (the meter has an association).
    Refresh,
    /// A new epoch with a fresh key after a removal.
    Establish,
    /// No association: every report refused.
    Remove,
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
        let pairwise = meter_entries(&credential, meters)?;
        Ok(Self {
            credential,
            daps,
            meters: pairwise,
            verify_meter_signatures,
            plausibility: Plausibility::default(),
        })
    }

    /// Replaces the meters it holds credentials for, while running (the
    /// service's SIGHUP): a meter kept with the same key keeps its window
    /// (no replay across the change); a new one, or one whose key changed,
    /// starts a fresh window under its new pairwise key; a removed one is
    /// forgotten (its reports are dropped as `UnknownMeter`). All keys are
    /// derived before anything changes.
    /// Returns what changed and the set it replaced (for
    /// [`HeadendCore::restore_meters`]).
    pub fn set_meters(
        &mut self,
        meters: Vec<PublicCredential>,
    ) -> Result<(MetersChanged, HeldMeters)> {
        let mut next = meter_entries(&self.credential, meters)?;
        let mut changed = MetersChanged::default();
        for (id, entry) in &mut next {
            match self.meters.get(id) {
                Some(old) if old.key == entry.key && old.agreement == entry.agreement => {
                    entry.window = old.window.clone();
                    entry.sa = old.sa.clone();
                    entry.keys = entry.sa.keys(&self.credential, id, &entry.agreement)?;
                }
                Some(_) => changed.rekeyed += 1,
                None => changed.added += 1,
            }
        }
        changed.removed = self
            .meters
            .keys()
            .filter(|id| !next.contains_key(*id))
            .count();
        let before = std::mem::replace(&mut self.meters, next);
        Ok((changed, HeldMeters(before)))
    }

    /// Puts back the meters [`HeadendCore::set_meters`] replaced (when
    /// saving the new set failed).
    pub fn restore_meters(&mut self, held: HeldMeters) {
        self.meters = held.0;
    }

    /// Sets the plausibility rules decrypted readings must meet
    /// ([`crate::plausibility`]); what they remember per meter is kept.
    pub fn set_plausibility(&mut self, rules: Vec<crate::plausibility::Rule>) {
        let last = std::mem::take(&mut self.plausibility);
        self.plausibility = Plausibility::new(rules);
        if let Some(remembered) = Plausibility::import(&last.export()) {
            self.plausibility.restore(remembered);
        }
    }

    /// The headend's id.
    pub fn id(&self) -> &EntityId {
        self.credential.id()
    }

    /// How many meters it holds credentials for.
    pub fn meter_count(&self) -> usize {
        self.meters.len()
    }

    /// The DAPs it trusts.
    pub fn daps(&self) -> impl Iterator<Item = &EntityId> {
        self.daps.keys()
    }

    /// The X25519 key of `meter` (the downlink's key deliveries are sealed
    /// to it), if it holds the meter's credential.
    pub fn meter_agreement_key(&self, meter: &EntityId) -> Option<&x25519_dalek::PublicKey> {
        self.meters.get(meter).map(|m| &m.agreement)
    }

    /// The meters it holds credentials for.
    pub fn meters(&self) -> impl Iterator<Item = &EntityId> {
        self.meters.keys()
    }

    /// The meters `dap` announced (empty before its announcement).
    pub fn announced_meters(&self, dap: &EntityId) -> impl Iterator<Item = &EntityId> {
        self.daps
            .get(dap)
            .and_then(|d| d.announced.as_ref())
            .into_iter()
            .flat_map(|a| a.meters.iter())
    }

    /// Whether it holds a credential for `meter`.
    pub fn knows_meter(&self, meter: &EntityId) -> bool {
        self.meters.contains_key(meter)
    }

    /// The Ed25519 key of a trusted DAP (its misbehaviour reports are
    /// checked with it).
    pub fn dap_key(&self, dap: &EntityId) -> Option<&VerifyingKey> {
        self.daps.get(dap).map(|d| &d.key)
    }

    /// The headend's own credential (it signs the status list of its
    /// meters).
    pub fn credential(&self) -> &EntityCredential {
        &self.credential
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
        let mut acks = Vec::new();
        let mut associations = Vec::new();
        let mut transmission_acks = Vec::new();
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
            if m.sa.status().phase == SaPhase::Removed {
                dropped.push((Some(meter), ReportDrop::AssociationRemoved));
                continue;
            }
            // The key of the epoch the report names; remembered to tell a
            // retired epoch from a failed decryption.
            let named = core::cell::Cell::new(None);
            let keys = &m.keys;
            let key_of = |e: u32| {
                named.set(Some(e));
                keys.iter().find(|k| k.epoch() == e)
            };
            let opened = if self.verify_meter_signatures {
                verify_report(report, self.credential.id(), |id| {
                    (*id == meter).then_some(&m.key)
                })
                .and_then(|v| {
                    open_report_with(&v, self.credential.id(), key_of)
                        .map(|(e, r)| (v.header().clone(), e, r))
                })
            } else {
                open_report_unverified_with(report, self.credential.id(), key_of)
            };
            let (header, epoch, value) = match opened {
                Ok(o) => o,
                Err(_) => {
                    let retired = named
                        .get()
                        .is_some_and(|e| !m.keys.iter().any(|k| k.epoch() == e));
                    let why = if retired {
                        ReportDrop::EpochRetired
                    } else {
                        ReportDrop::Undecryptable
                    };
                    dropped.push((Some(meter), why));
                    continue;
                }
            };
            if m.window.commit(check).is_err() {
                dropped.push((Some(meter), ReportDrop::Replayed));
                continue;
            }
            // The meter's first report under a refreshed epoch: the
            // previous one is retired (its secret erased).
            if m.sa
                .on_report(epoch, header.timestamp.max(UnixMillis::new(1)))
            {
                if let Ok(keys) = m.sa.keys(&self.credential, &meter, &m.agreement) {
                    m.keys = keys;
                }
                associations.push((meter.clone(), epoch));
            }
            if let Some(ack) = crate::downlink::MeterAck::parse(&value) {
                acks.push((meter, ack));
                continue;
            }
            if let Some(ack) = crate::downlink::TransmissionAck::parse(&value) {
                transmission_acks.push((meter, ack));
                continue;
            }
            let implausible = match self.plausibility.check(&meter, &value, header.timestamp) {
                Verdict::Plausible => None,
                Verdict::Implausible(why, Action::Drop) => {
                    dropped.push((Some(meter), ReportDrop::Implausible(why)));
                    continue;
                }
                Verdict::Implausible(why, Action::Flag) => Some(why),
            };
            self.plausibility.commit(&meter, &value, header.timestamp);
            readings.push(Reading {
                meter,
                dap: batch.dap.clone(),
                seq: header.seq,
                timestamp: header.timestamp,
                value,
                implausible,
            });
        }
        entry.batches.commit(token)?;
        Ok(BatchOutcome {
            dap: batch.dap,
            seq: batch.seq,
            readings,
            dropped,
            acks,
            transmission_acks,
            associations,
        })
    }

    /// The security association of `meter` (None: not a meter it holds).
    pub fn sa_status(&self, meter: &EntityId) -> Option<SaStatus> {
        self.meters.get(meter).map(|m| m.sa.status())
    }

    /// Changes `meter`'s association in memory and returns the update to
    /// send it, with the association as it was (to put back with
    /// [`HeadendCore::sa_restore`] if the state cannot be saved): check →
    /// apply here → the caller persists, or restores.
    /// `Refresh` needs an association; `Establish` a removed one.
    pub fn sa_change<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        meter: &EntityId,
        change: SaChange,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<(HeadendSa, SaUpdate)> {
        let credential = &self.credential;
        let m = self.meters.get_mut(meter).ok_or(Error::Refused(
            "not a meter this headend holds a credential for",
        ))?;
        let removed = m.sa.status().phase == SaPhase::Removed;
        let next = match change {
            SaChange::Refresh if removed => {
                return Err(Error::Refused(
                    "the association is removed: establish a new one instead",
                ));
            }
            SaChange::Establish if !removed => {
                return Err(Error::Refused(
                    "the meter has an association: refresh it instead",
                ));
            }
            SaChange::Refresh | SaChange::Establish => m.sa.refreshed(now, rng)?,
            SaChange::Remove => m.sa.removed(now)?,
        };
        let keys = next.keys(credential, meter, &m.agreement)?;
        let update = next
            .update(credential.id(), meter)
            .ok_or(Error::Refused("nothing to send"))?;
        let before = std::mem::replace(&mut m.sa, next);
        m.keys = keys;
        Ok((before, update))
    }

    /// Puts back an association [`HeadendCore::sa_change`] replaced.
    pub fn sa_restore(&mut self, meter: &EntityId, before: HeadendSa) -> Result<()> {
        let credential = &self.credential;
        if let Some(m) = self.meters.get_mut(meter) {
            m.keys = before.keys(credential, meter, &m.agreement)?;
            m.sa = before;
        }
        Ok(())
    }

    /// The update `meter` still has to receive (a pending refresh or a
    /// removal), if any.
    pub fn sa_update(&self, meter: &EntityId) -> Option<SaUpdate> {
        self.meters
            .get(meter)
            .and_then(|m| m.sa.update(self.credential.id(), meter))
    }

    /// Meters whose established association last changed at or before
    /// `cutoff` (epoch 0 counts as changed at 0), at most `limit` of them.
    pub fn sa_older_than(&self, cutoff: UnixMillis, limit: usize) -> Vec<EntityId> {
        self.meters
            .iter()
            .filter(|(_, m)| {
                let s = m.sa.status();
                s.phase == SaPhase::Established && s.changed <= cutoff
            })
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect()
    }

    /// Meters whose refreshed association is waiting for its first report.
    pub fn sa_pending(&self) -> impl Iterator<Item = &EntityId> {
        self.meters
            .iter()
            .filter(|(_, m)| m.sa.status().phase == SaPhase::Pending)
            .map(|(id, _)| id)
    }

    /// The state to persist: per DAP its announcement and batch window, per
    /// meter its window, and (with plausibility rules) each meter's last
    /// accepted value. CBOR: `[1, [[dap, window, null / [version, group,
    /// [meter...]]]...], [[meter, window]...] (, [[meter, value, time_ms]...])]`.
    pub fn export_state(&self) -> Result<Zeroizing<Vec<u8>>> {
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
            .filter(|(_, m)| m.window.highest().is_some() || !m.sa.is_initial())
            .map(|(id, m)| {
                let mut entry = vec![text(id), Value::Bytes(m.window.to_bytes())];
                if !m.sa.is_initial() {
                    entry.push(m.sa.to_value());
                }
                Value::Array(entry)
            })
            .collect();
        let mut top = vec![
            Value::Integer(STATE_VERSION.into()),
            Value::Array(daps),
            Value::Array(meters),
        ];
        if self.plausibility.is_active() {
            top.push(self.plausibility.export());
        }
        let mut value = Value::Array(top);
        // It holds the associations' ephemeral secrets: the encoding is
        // zeroized on drop, and so is every byte string of the tree.
        let mut out = Zeroizing::new(Vec::new());
        let written = ciborium::into_writer(&value, &mut *out);
        zeroize_bytes(&mut value);
        written.map_err(|e| state_err(&e.to_string()))?;
        Ok(out)
    }

    /// Restores what [`HeadendCore::export_state`] wrote. DAPs and meters
    /// no longer configured are skipped.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let mut value: ciborium::Value =
            ciborium::from_reader(bytes).map_err(|_| state_err("not CBOR"))?;
        let restored = self.restore_value(&value);
        // The decoded tree held the associations' secrets.
        zeroize_bytes(&mut value);
        restored
    }

    fn restore_value(&mut self, value: &ciborium::Value) -> Result<()> {
        use ciborium::Value;
        let (version, daps, meters, last) = match value.as_array().map(Vec::as_slice) {
            Some([v, d, m]) => (v, d, m, None),
            Some([v, d, m, l]) => (v, d, m, Some(l)),
            _ => return Err(state_err("malformed")),
        };
        let last = last
            .map(|l| Plausibility::import(l).ok_or_else(|| state_err("malformed plausibility")))
            .transpose()?;
        if version.as_integer() != Some(STATE_VERSION.into()) {
            return Err(state_err("unsupported version"));
        }
        let id_of = |v: &Value| match v {
            Value::Text(t) => Ok(EntityId::new(t)?),
            _ => Err(state_err("malformed id")),
        };
        let mut dap_updates = Vec::new();
        for d in daps.as_array().ok_or_else(|| state_err("malformed"))? {
            let Some([id, Value::Bytes(window), ann]) = d.as_array().map(Vec::as_slice) else {
                return Err(state_err("malformed DAP entry"));
            };
            let announced = match ann {
                Value::Null => None,
                Value::Array(a) => match a.as_slice() {
                    [v, Value::Text(group), Value::Array(ms)] => Some(Announced {
                        version: sealcast_core::cbor::u64_of(v)
                            .ok_or_else(|| state_err("malformed version"))?,
                        group: group.clone(),
                        meters: ms.iter().map(id_of).collect::<Result<_>>()?,
                    }),
                    _ => return Err(state_err("malformed announcement")),
                },
                _ => return Err(state_err("malformed announcement")),
            };
            let id = id_of(id)?;
            if self.daps.contains_key(&id) {
                dap_updates.push((id, SeqWindow::from_bytes(window)?, announced));
            }
        }
        let mut meter_updates = Vec::new();
        for m in meters.as_array().ok_or_else(|| state_err("malformed"))? {
            let (id, window, sa) = match m.as_array().map(Vec::as_slice) {
                Some([id, Value::Bytes(window)]) => (id, window, HeadendSa::default()),
                Some([id, Value::Bytes(window), sa]) => (id, window, HeadendSa::from_value(sa)?),
                _ => return Err(state_err("malformed meter entry")),
            };
            let id = id_of(id)?;
            if let Some(entry) = self.meters.get(&id) {
                let keys = sa.keys(&self.credential, &id, &entry.agreement)?;
                meter_updates.push((id, SeqWindow::from_bytes(window)?, sa, keys));
            }
        }
        // Everything checked before anything changes: a refused state
        // leaves the headend as it was.
        for (id, batches, announced) in dap_updates {
            if let Some(entry) = self.daps.get_mut(&id) {
                entry.batches = batches;
                entry.announced = announced;
            }
        }
        for (id, window, sa, keys) in meter_updates {
            if let Some(entry) = self.meters.get_mut(&id) {
                entry.window = window;
                entry.sa = sa;
                entry.keys = keys;
            }
        }
        if let Some(last) = last {
            self.plausibility.restore(last);
        }
        Ok(())
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
        let forged = crate::wire::seal_batch(
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

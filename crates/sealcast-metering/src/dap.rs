//! The Data Aggregation Point's protocol state, without I/O.
//!
//! Meters send sealed reports (encrypted for the headend, then signed) to
//! their DAP. [`DapCore::verify`] checks a batch of them in one batch
//! signature verification **without being able to read the readings**,
//! dropping forgeries, unknown meters and replays (a sequence window per
//! meter); [`DapCore::seal_batches`] forwards what remains as batches signed
//! by the DAP. Instead of one handshake per meter, the DAP **announces its
//! group** to the headend ([`DapCore::announce`]: one signed statement
//! naming the DAP, its meter group and its meters), and answers the
//! headend's signed requests to announce again ([`DapCore::handle_solicit`]).
//! [`DapCore::export_state`] / [`DapCore::restore_state`] are its state file.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::replay::{SeqAllocator, SeqWindow};
use sealcast_core::report::verify_reports_batch_expecting;

use crate::wire::{Announcement, open_solicit, seal_batch, split_for_batches};
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
    /// Genuine and fresh, but its meter is over its rate
    /// ([`DapCore::set_rate_limit`]): dropped, its window not moved (the
    /// same report is accepted again once the meter is within its rate).
    RateLimited,
    /// Its timestamp is further from the DAP's clock than
    /// [`DapCore::set_max_drift`] allows: dropped before any signature
    /// work, its window not moved.
    Implausible,
}

/// Most gaps held between two [`DapCore::take_gaps`].
const MAX_GAPS_HELD: usize = 4096;

/// A per-meter cap on forwarded reports: a token bucket of `burst` reports
/// refilled at `per_minute` reports a minute. Only reports that verified
/// count (a forger cannot spend a genuine meter's budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Reports a meter may send at once after a quiet period (≥ 1).
    pub burst: u32,
    /// Reports a meter may send per minute on average (≥ 1).
    pub per_minute: u32,
}

/// One meter's bucket: tokens in thousandths, and when it was last filled.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli_tokens: u64,
    at: UnixMillis,
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
    rate: Option<RateLimit>,
    buckets: BTreeMap<EntityId, Bucket>,
    /// Largest |report timestamp − now| accepted, in ms (None: any).
    max_drift_ms: Option<u64>,
    /// A forwarded report whose sequence number is more than this above its
    /// meter's highest is flagged (None: never).
    max_seq_gap: Option<u64>,
    /// Gaps flagged since the last [`DapCore::take_gaps`].
    gaps: Vec<SeqGap>,
    /// Forged signatures per 1 000 reports verified, averaged over recent
    /// batches (each batch weighs a quarter): how many forgeries the next
    /// batch verification plans for.
    forged_per_mille: u64,
    /// Meters whose windows moved since the state was last saved
    /// ([`DapCore::export_changes`]).
    changed: BTreeSet<EntityId>,
}

/// A jump in a meter's sequence numbers larger than
/// [`DapCore::set_max_seq_gap`] allows: the report is genuine and
/// forwarded, but reports in between were lost, withheld or never sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqGap {
    /// The meter.
    pub meter: EntityId,
    /// Its highest sequence number before.
    pub from: u64,
    /// The sequence number that jumped.
    pub to: u64,
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

/// Takes one report's token from `meter`'s bucket (refilled up to `at`);
/// false when the bucket is empty. No limit: always true.
fn take_token(
    rate: Option<RateLimit>,
    buckets: &mut BTreeMap<EntityId, Bucket>,
    meter: &EntityId,
    at: UnixMillis,
) -> bool {
    let Some(rate) = rate else {
        return true;
    };
    let full = u64::from(rate.burst) * 1000;
    let bucket = buckets.entry(meter.clone()).or_insert(Bucket {
        milli_tokens: full,
        at,
    });
    // per_minute tokens per 60 000 ms = per_minute thousandths per 60 ms.
    let elapsed = at.get().saturating_sub(bucket.at.get());
    let refill = elapsed.saturating_mul(u64::from(rate.per_minute)) / 60;
    bucket.milli_tokens = bucket.milli_tokens.saturating_add(refill).min(full);
    bucket.at = UnixMillis::new(bucket.at.get().max(at.get()));
    if bucket.milli_tokens >= 1000 {
        bucket.milli_tokens -= 1000;
        true
    } else {
        false
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
            rate: None,
            buckets: BTreeMap::new(),
            max_drift_ms: None,
            max_seq_gap: None,
            gaps: Vec::new(),
            forged_per_mille: 0,
            changed: BTreeSet::new(),
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

    /// The headend's credential (its status lists are checked with it).
    pub fn headend_credential(&self) -> &PublicCredential {
        &self.headend
    }

    /// The DAP's own credential (it signs its misbehaviour reports).
    pub fn credential(&self) -> &EntityCredential {
        &self.credential
    }

    /// Whether it serves `meter`.
    pub fn serves(&self, meter: &EntityId) -> bool {
        self.meters.contains_key(meter)
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
    ///
    /// A report whose (meter, sequence number) its meter's window already
    /// holds is refused as a replay *before* any signature work: a flood of
    /// replayed reports costs a header parse each, not a verification.
    /// (Copies inside one call are still settled after verification, in
    /// order, so a forged copy sent ahead of the genuine report cannot
    /// shadow it.) The batch verification finds forgeries by bisection
    /// (`sealcast_core::crypto::ed25519_verify_batch`).
    ///
    /// With a rate limit set, a verified, fresh report of a meter over its
    /// rate is [`ReportVerdict::RateLimited`]; `at` is the time the rate is
    /// measured at.
    ///
    /// A DAP that has been receiving forgeries plans for them: the batch is
    /// checked in groups sized for the forgeries recent batches carried
    /// (`sealcast_core::crypto::ed25519_verify_batch_expecting`), so a
    /// stream with 10 % forged reports is not bisected from the whole batch
    /// down each time. The verdicts do not depend on it.
    pub fn verify(&mut self, reports: &[&[u8]], at: UnixMillis) -> Vec<ReportVerdict> {
        // One parse per report: the windows (and the drift bound) are
        // checked on the parsed header before any signature work.
        let (windows, max_drift_ms, meters) = (&self.windows, self.max_drift_ms, &self.meters);
        let mut checked = 0u64;
        let verdicts = verify_reports_batch_expecting(
            reports,
            self.headend.id(),
            |id| meters.get(id),
            |h| {
                // The timestamp is signed; read here unverified it can only
                // make the DAP refuse more.
                if max_drift_ms.is_some_and(|d| h.timestamp.get().abs_diff(at.get()) > d) {
                    return Err(sealcast_core::Error::StaleTimestamp);
                }
                match windows.get(&h.reporter) {
                    Some(window) => window.check(h.seq).map(|_| ()).map_err(|_| {
                        sealcast_core::Error::Replay(sealcast_core::ReplayKind::Duplicate)
                    }),
                    None => Ok(()),
                }
                .inspect(|()| checked += 1)
            },
            self.forged_per_mille,
        );
        let bad_signatures = verdicts
            .iter()
            .filter(|v| matches!(v, Err(sealcast_core::Error::BadSignature)))
            .count() as u64;
        if let Some(batch_per_mille) = (bad_signatures.min(checked) * 1000).checked_div(checked) {
            self.forged_per_mille = (3 * self.forged_per_mille + batch_per_mille) / 4;
        }
        let mut out: Vec<Option<ReportVerdict>> = vec![None; reports.len()];
        for (slot, verdict) in out.iter_mut().zip(verdicts) {
            *slot = Some(match verdict {
                Ok(report) => {
                    let h = report.header();
                    let window = self.windows.entry(h.reporter.clone()).or_default();
                    let highest = window.highest().map(SeqNum::get);
                    match window.check(h.seq) {
                        Err(_) => ReportVerdict::Replayed,
                        Ok(token) => {
                            if take_token(self.rate, &mut self.buckets, &h.reporter, at) {
                                match window.commit(token) {
                                    Ok(()) => {
                                        self.changed.insert(h.reporter.clone());
                                        if let (Some(max), Some(from)) = (self.max_seq_gap, highest)
                                            && h.seq.get() > from.saturating_add(max)
                                            && self.gaps.len() < MAX_GAPS_HELD
                                        {
                                            self.gaps.push(SeqGap {
                                                meter: h.reporter.clone(),
                                                from,
                                                to: h.seq.get(),
                                            });
                                        }
                                        ReportVerdict::Forward
                                    }
                                    Err(_) => ReportVerdict::Replayed,
                                }
                            } else {
                                ReportVerdict::RateLimited
                            }
                        }
                    }
                }
                Err(sealcast_core::Error::StaleTimestamp) => ReportVerdict::Implausible,
                Err(sealcast_core::Error::Replay(_)) => ReportVerdict::Replayed,
                Err(sealcast_core::Error::UnknownSender) => ReportVerdict::UnknownMeter,
                Err(e) => ReportVerdict::Forged(e.to_string()),
            });
        }
        out.into_iter()
            .map(|v| v.unwrap_or_else(|| ReportVerdict::Forged("not verified".into())))
            .collect()
    }

    /// Forged signatures per 1 000 reports the recent batches carried (each
    /// batch weighs a quarter): what the next verification plans for.
    pub fn forged_per_mille(&self) -> u64 {
        self.forged_per_mille
    }

    /// Flags (never drops) a forwarded report whose sequence number is more
    /// than `max_gap` above its meter's highest (None: no flag). A one-shot
    /// meter skips up to `METER_SEQ_BLOCK` numbers between runs, so keep
    /// `max_gap` above that.
    pub fn set_max_seq_gap(&mut self, max_gap: Option<u64>) {
        self.max_seq_gap = max_gap;
    }

    /// The gaps flagged since the last call.
    pub fn take_gaps(&mut self) -> Vec<SeqGap> {
        std::mem::take(&mut self.gaps)
    }

    /// Sets (or with `None` removes) the largest distance in ms between a
    /// report's timestamp and the DAP's clock: a report further away is
    /// [`ReportVerdict::Implausible`] (a meter with a broken clock, or a
    /// report held back and replayed later).
    pub fn set_max_drift(&mut self, max_drift_ms: Option<u64>) {
        self.max_drift_ms = max_drift_ms;
    }

    /// Sets (or with `None` removes) the per-meter rate cap. Buckets start
    /// full; they live in memory (a restarted DAP starts them full again).
    pub fn set_rate_limit(&mut self, limit: Option<RateLimit>) -> Result<()> {
        if let Some(l) = limit
            && (l.burst == 0 || l.per_minute == 0)
        {
            return Err(Error::State(
                "a rate limit needs a burst and a rate of at least 1".into(),
            ));
        }
        self.rate = limit;
        self.buckets.clear();
        Ok(())
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

    /// The version of the last announcement sealed (0: none yet).
    pub fn announce_version(&self) -> u64 {
        self.announce_version
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
        self.encode_state(self.windows.iter())
    }

    /// What changed since the state was last saved, for a journal: the
    /// same CBOR as [`DapCore::export_state`] with only the windows that
    /// moved (a batch of 64 reports: at most 64 of 10 000). Applied in
    /// order over the snapshot ([`DapCore::apply_changes`]) it gives the
    /// state again. Call [`DapCore::changes_saved`] once it is on disk.
    pub fn export_changes(&self) -> Result<Vec<u8>> {
        let changed: Vec<(&EntityId, &SeqWindow)> = self
            .changed
            .iter()
            .filter_map(|m| self.windows.get_key_value(m))
            .collect();
        self.encode_state(changed.into_iter())
    }

    /// The state (or the changes) exported last reached the disk: later
    /// changes start from here.
    pub fn changes_saved(&mut self) {
        self.changed.clear();
    }

    fn encode_state<'a>(
        &self,
        windows: impl ExactSizeIterator<Item = (&'a EntityId, &'a SeqWindow)>,
    ) -> Result<Vec<u8>> {
        // Written straight into the buffer (definite lengths, shortest
        // heads, as ciborium writes it and `restore_state` reads it): it
        // runs after every batch.
        use sealcast_core::cbor::{write_array, write_bstr, write_tstr, write_uint};
        let mut out = Vec::with_capacity(16 + windows.len() * 48);
        write_array(&mut out, 4);
        write_uint(&mut out, STATE_VERSION);
        write_array(&mut out, windows.len() as u64);
        for (m, w) in windows {
            write_array(&mut out, 2);
            write_tstr(&mut out, m.as_str());
            write_bstr(&mut out, &w.to_bytes());
        }
        write_uint(&mut out, self.batch_seq.reserved_limit());
        write_uint(&mut out, self.announce_version);
        Ok(out)
    }

    /// Restores what [`DapCore::export_state`] wrote: windows, the batch
    /// sequence (resumed above the stored reservation) and the version.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let (windows, batch_seq, announce_version) = parse_state(bytes)?;
        // Everything checked before anything changes: a refused state
        // leaves the DAP as it was.
        self.windows = windows;
        self.batch_seq = batch_seq;
        self.announce_version = announce_version;
        self.changed.clear();
        Ok(())
    }

    /// Applies changes [`DapCore::export_changes`] wrote, over the restored
    /// state: their windows replace those held, the batch sequence resumes
    /// above their reservation, the version is the later one. A refused
    /// record changes nothing.
    pub fn apply_changes(&mut self, bytes: &[u8]) -> Result<()> {
        let (windows, batch_seq, announce_version) = parse_state(bytes)?;
        self.windows.extend(windows);
        if batch_seq.reserved_limit() >= self.batch_seq.reserved_limit() {
            self.batch_seq = batch_seq;
        }
        self.announce_version = self.announce_version.max(announce_version);
        Ok(())
    }
}

/// Windows, batch sequence and announcement version of a state (or changes)
/// record, all checked.
fn parse_state(bytes: &[u8]) -> Result<(BTreeMap<EntityId, SeqWindow>, SeqAllocator, u64)> {
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
    let batch_seq = SeqAllocator::resume(int_of(limit)?, BATCH_SEQ_BLOCK)?;
    Ok((restored, batch_seq, int_of(announced)?))
}

fn int_of(v: &ciborium::Value) -> Result<u64> {
    sealcast_core::cbor::u64_of(v).ok_or_else(|| state_err("malformed integer"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::meter::Meter;
    use crate::wire::open_batch;
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
    fn the_state_file_keeps_its_cbor_encoding_and_restores() {
        let mut w = world();
        let at = UnixMillis::new(1_000);
        let mut reports = Vec::new();
        for m in &mut w.meters {
            for _ in 0..3 {
                reports.push(m.seal(b"1 kWh", at).unwrap().1);
            }
        }
        let refs: Vec<&[u8]> = reports.iter().map(Vec::as_slice).collect();
        assert!(
            w.dap
                .verify(&refs, at)
                .iter()
                .all(|v| *v == ReportVerdict::Forward)
        );
        let bytes = w.dap.export_state().unwrap();
        // The direct writer produces what ciborium wrote before it.
        let value: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let mut again = Vec::new();
        ciborium::into_writer(&value, &mut again).unwrap();
        assert_eq!(bytes, again);
        let mut fresh = world();
        fresh.dap.restore_state(&bytes).unwrap();
        assert_eq!(fresh.dap.export_state().unwrap(), bytes);
        assert_eq!(
            fresh.dap.verify(&refs[..1], at),
            vec![ReportVerdict::Replayed]
        );
    }

    #[test]
    fn a_snapshot_and_the_changes_after_it_give_the_state_again() {
        let mut w = world();
        let seal = |w: &mut World, i: usize, at: u64| {
            w.meters[i].seal(b"1 kWh", UnixMillis::new(at)).unwrap().1
        };
        let first = [seal(&mut w, 0, 1), seal(&mut w, 1, 1)];
        let refs: Vec<&[u8]> = first.iter().map(Vec::as_slice).collect();
        assert!(
            w.dap
                .verify(&refs, UnixMillis::new(1))
                .iter()
                .all(|v| *v == ReportVerdict::Forward)
        );
        let snapshot = w.dap.export_state().unwrap();
        w.dap.changes_saved();
        assert_eq!(
            w.dap.export_changes().unwrap(),
            // Nothing moved since: no window, the same counters.
            {
                let mut empty = world();
                empty.dap.restore_state(&snapshot).unwrap();
                empty.dap.windows.clear();
                empty.dap.export_state().unwrap()
            }
        );
        let mut changes = Vec::new();
        let mut later = Vec::new();
        for at in 2..5u64 {
            let r = seal(&mut w, 2, at);
            assert_eq!(
                w.dap.verify(&[&r], UnixMillis::new(at)),
                vec![ReportVerdict::Forward]
            );
            let sealed = w.dap.seal_batches(&[&r], UnixMillis::new(at)).unwrap();
            assert_eq!(sealed.batches.len(), 1);
            changes.push(w.dap.export_changes().unwrap());
            w.dap.changes_saved();
            later.push(r);
        }
        w.dap.announce(UnixMillis::new(9)).unwrap();
        changes.push(w.dap.export_changes().unwrap());
        let mut fresh = world();
        fresh.dap.restore_state(&snapshot).unwrap();
        // A refused record changes nothing.
        let before = fresh.dap.export_state().unwrap();
        assert!(fresh.dap.apply_changes(b"\x84\x02").is_err());
        assert_eq!(fresh.dap.export_state().unwrap(), before);
        for c in &changes {
            fresh.dap.apply_changes(c).unwrap();
        }
        assert_eq!(
            fresh.dap.export_state().unwrap(),
            w.dap.export_state().unwrap()
        );
        // Every report seen before the crash is a replay after it.
        for r in first.iter().chain(&later) {
            assert_eq!(
                fresh.dap.verify(&[r], UnixMillis::new(10)),
                vec![ReportVerdict::Replayed]
            );
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
        let verdicts = w.dap.verify(&batch, UnixMillis::new(1_000));
        assert_eq!(verdicts[0], ReportVerdict::Forward);
        assert_eq!(verdicts[1], ReportVerdict::Forward);
        assert!(matches!(verdicts[2], ReportVerdict::Forged(_)));
        assert!(matches!(verdicts[3], ReportVerdict::Forged(_)));
        assert_eq!(verdicts[4], ReportVerdict::UnknownMeter);
        assert_eq!(verdicts[5], ReportVerdict::Replayed);
        assert!(matches!(verdicts[6], ReportVerdict::Forged(_)));
        // In a later batch as well.
        assert_eq!(
            w.dap.verify(&[&b], UnixMillis::new(1_000)),
            vec![ReportVerdict::Replayed]
        );
    }

    #[test]
    fn a_dap_under_forgeries_plans_for_them_and_forgets_them_with_clean_batches() {
        let mut w = world();
        assert_eq!(w.dap.forged_per_mille(), 0);
        let mut at = 1_000;
        let mut batch = |w: &mut World, forged: usize| {
            at += 1;
            let t = UnixMillis::new(at);
            let mut reports: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    let m = &mut w.meters[i % 3];
                    if let Some(l) = m.reservation_request() {
                        m.confirm_reservation(l).unwrap();
                    }
                    m.seal(b"1 kWh", t).unwrap().1
                })
                .collect();
            for r in reports.iter_mut().take(forged) {
                let n = r.len();
                r[n - 3] ^= 0x40;
            }
            let refs: Vec<&[u8]> = reports.iter().map(Vec::as_slice).collect();
            let v = w.dap.verify(&refs, t);
            // The verdicts are those of one-by-one checking, planned or not.
            assert_eq!(
                v.iter()
                    .filter(|v| matches!(v, ReportVerdict::Forged(_)))
                    .count(),
                forged
            );
            assert_eq!(
                v.iter().filter(|v| **v == ReportVerdict::Forward).count(),
                8 - forged
            );
        };
        batch(&mut w, 4);
        assert_eq!(w.dap.forged_per_mille(), 125); // a quarter of 500 ‰
        batch(&mut w, 4);
        let high = w.dap.forged_per_mille();
        assert!(high > 125, "{high}");
        for _ in 0..30 {
            batch(&mut w, 0);
        }
        assert_eq!(w.dap.forged_per_mille(), 0);
    }

    #[test]
    fn replays_are_refused_before_signature_work_and_forgeries_cannot_shadow() {
        let mut w = world();
        let at = UnixMillis::new(1_000);
        let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
        let (_, b) = w.meters[1].seal(b"2 kWh", at).unwrap();
        let spoil = |r: &[u8]| {
            let mut f = r.to_vec();
            let n = f.len();
            f[n - 3] ^= 0x40;
            f
        };
        // A forged copy ahead of the genuine report in one call: the
        // forgery is refused, the genuine report still goes through.
        let b_forged = spoil(&b);
        assert!(matches!(
            w.dap.verify(&[&b_forged, &b], UnixMillis::new(1_000))[..],
            [ReportVerdict::Forged(_), ReportVerdict::Forward]
        ));
        assert_eq!(
            w.dap.verify(&[&a], UnixMillis::new(1_000)),
            vec![ReportVerdict::Forward]
        );
        // Later copies of committed reports are replays whatever their
        // signature: refused on the window alone, before any verification
        // (the spoiled copy would otherwise be reported as forged).
        let a_spoiled = spoil(&a);
        assert_eq!(
            w.dap.verify(&[&a_spoiled, &b, &a], UnixMillis::new(1_000)),
            vec![ReportVerdict::Replayed; 3]
        );
    }

    #[test]
    fn a_meter_over_its_rate_is_dropped_without_moving_its_window() {
        let mut w = world();
        w.dap
            .set_rate_limit(Some(RateLimit {
                burst: 3,
                per_minute: 60,
            }))
            .unwrap();
        assert!(
            w.dap
                .set_rate_limit(Some(RateLimit {
                    burst: 0,
                    per_minute: 1,
                }))
                .is_err()
        );
        let t0 = UnixMillis::new(10_000);
        let reports: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                w.meters[0]
                    .seal(format!("{i} kWh").as_bytes(), t0)
                    .unwrap()
                    .1
            })
            .collect();
        let (_, other) = w.meters[1].seal(b"7 kWh", t0).unwrap();
        let refs: Vec<&[u8]> = reports
            .iter()
            .map(Vec::as_slice)
            .chain([other.as_slice()])
            .collect();
        let v = w.dap.verify(&refs, t0);
        // The burst of 3, then the cap; another meter has its own bucket.
        assert_eq!(
            v,
            vec![
                ReportVerdict::Forward,
                ReportVerdict::Forward,
                ReportVerdict::Forward,
                ReportVerdict::RateLimited,
                ReportVerdict::RateLimited,
                ReportVerdict::Forward,
            ]
        );
        // One second later one more token (60 a minute): the first dropped
        // report goes through now (its window did not move), the second not.
        let later = UnixMillis::new(11_000);
        assert_eq!(
            w.dap.verify(&[&reports[3], &reports[4]], later),
            vec![ReportVerdict::Forward, ReportVerdict::RateLimited]
        );
        // Forgeries in a meter's name do not spend its budget.
        let (_, forged) = w.mallory.seal(b"0 kWh", later).unwrap();
        let much_later = UnixMillis::new(20_000);
        let flood: Vec<&[u8]> = std::iter::repeat_n(forged.as_slice(), 10).collect();
        assert!(
            w.dap
                .verify(&flood, much_later)
                .iter()
                .all(|v| matches!(v, ReportVerdict::Forged(_)))
        );
        assert_eq!(
            w.dap.verify(&[&reports[4]], much_later),
            vec![ReportVerdict::Forward]
        );
    }

    #[test]
    fn windows_and_sequences_survive_a_restart() {
        let mut w = world();
        let at = UnixMillis::new(1_000);
        let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
        assert_eq!(
            w.dap.verify(&[&a], UnixMillis::new(1_000)),
            vec![ReportVerdict::Forward]
        );
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
        assert_eq!(
            restarted.verify(&[&a], UnixMillis::new(1_000)),
            vec![ReportVerdict::Replayed]
        );
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
            crate::wire::seal_solicit(w.headend.id(), w.headend.signing_key(), w.dap.id(), at)
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
            crate::wire::seal_solicit(mallory.id(), mallory.signing_key(), w.dap.id(), at).unwrap();
        assert!(w.dap.handle_solicit(&forged, at).is_err());
        // A changed meter set is reported; the same one is not.
        let same: Vec<PublicCredential> = Vec::new();
        assert!(w.dap.set_meters(same.clone()));
        assert!(!w.dap.set_meters(same));
    }

    /// Found by the `metering_state_files` fuzz target: a state whose last
    /// field was refused had already replaced the windows and the batch
    /// reservation. A refused state now changes nothing.
    #[test]
    fn a_refused_state_changes_nothing() {
        let mut w = world();
        let at = UnixMillis::new(1_000);
        let (_, a) = w.meters[0].seal(b"1 kWh", at).unwrap();
        assert_eq!(
            w.dap.verify(&[&a], UnixMillis::new(1_000)),
            vec![ReportVerdict::Forward]
        );
        w.dap.seal_batches(&[&a], at).unwrap();
        w.dap.announce(at).unwrap();
        let before = w.dap.export_state().unwrap();
        // [1, [], 0, -huge] as an indefinite array: valid up to the last field.
        let crash = [
            0x9f, 0x01, 0x80, 0x00, 0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x20, 0xff,
        ];
        assert!(w.dap.restore_state(&crash).is_err());
        assert_eq!(w.dap.export_state().unwrap(), before);
    }
}

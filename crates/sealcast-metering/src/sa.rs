//! The security association between a meter and its headend (TS-0004
//! §7.3), sans-IO: the pairwise key that encrypts the meter's reports, with
//! an **epoch** that the headend can refresh, remove and establish again.
//!
//! - **Epoch 0** is the association every enrolled meter has from the
//!   start: the static-static X25519 key (`sealcast_core::report`).
//! - **Refresh / establish** (epoch `n + 1`): the headend draws a fresh
//!   X25519 key pair, keeps its secret, and sends the meter a signed
//!   [`SaUpdate`] carrying the public half. Both sides derive the key of
//!   the new epoch (`PairwiseKey::derive_refreshed`); the meter saves the
//!   update before it uses it and confirms by reporting under the new
//!   epoch. Until that first report the headend still opens the previous
//!   epoch (reports in flight); after it, the previous epoch's secret is
//!   erased and its reports are refused.
//! - **Remove** (epoch `n + 1`, no key): the headend refuses every report
//!   of the meter at once and sends a signed removal; the meter stops
//!   reporting until an association is established again.
//!
//! Epochs only grow, so an update replayed or re-ordered changes nothing.
//! The update travels as a per-meter item of the downlink bundle, relayed
//! by the DAP, which can read that a change happened but cannot forge one.
//!
//! ```text
//! update (LABEL_SA) = [ "sealcast pairwise sa v1", headend: tstr, meter: tstr,
//!                       epoch: uint (≥ 1), ephemeral: bstr .size 32 / null (removed),
//!                       issued_ms: uint ]
//! ```
//! signed by the headend as a statement (`sealcast_core::statement`) with
//! the same label as external AAD.

use ciborium::Value;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::report::PairwiseKey;
use sealcast_core::statement::{UnverifiedStatement, sign_statement};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::meter::PAIRWISE_ALG;
use crate::wire::{decode_exact, encode, id_value, malformed, text_id, uint};
use crate::{Error, Result};

/// Label (external AAD and first element) of a signed association update.
pub const LABEL_SA: &str = "sealcast pairwise sa v1";
/// Largest signed update.
pub const MAX_SA_UPDATE_LEN: usize = 1024;
const STATE_VERSION: u64 = 1;

/// A signed change of one meter's association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaUpdate {
    /// The headend (signer).
    pub headend: EntityId,
    /// The meter it is for.
    pub meter: EntityId,
    /// The new epoch (≥ 1).
    pub epoch: u32,
    /// The headend's fresh X25519 public key (None: the association is
    /// removed).
    pub ephemeral: Option<[u8; 32]>,
    /// When the headend made the change.
    pub issued: UnixMillis,
}

impl SaUpdate {
    /// Signs it with the headend's key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>> {
        if self.epoch == 0 {
            return Err(Error::Refused(
                "an association update has an epoch of 1 or more",
            ));
        }
        let payload = encode(&Value::Array(vec![
            Value::Text(LABEL_SA.to_owned()),
            id_value(&self.headend),
            id_value(&self.meter),
            Value::Integer(self.epoch.into()),
            self.ephemeral
                .map_or(Value::Null, |e| Value::Bytes(e.to_vec())),
            Value::Integer(self.issued.get().into()),
        ]))?;
        Ok(sign_statement(&self.headend, key, LABEL_SA, &payload))
    }

    /// Whether `bytes` claim to be an update (a cheap test for routing:
    /// key deliveries carry a COSE_Encrypt, updates a 6-element array
    /// naming the label; the signature is checked by [`SaUpdate::open`]).
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.len() <= MAX_SA_UPDATE_LEN
            && UnverifiedStatement::parse(bytes, MAX_SA_UPDATE_LEN).is_ok_and(|s| {
                let p = s.payload();
                p.first() == Some(&0x86)
                    && p.get(1..2 + LABEL_SA.len())
                        .is_some_and(|l| l.get(1..) == Some(LABEL_SA.as_bytes()))
            })
    }

    /// Verifies an update at `meter`: signed by `headend`, naming both.
    pub fn open(
        bytes: &[u8],
        meter: &EntityId,
        headend: &EntityId,
        headend_key: &VerifyingKey,
    ) -> Result<Self> {
        if bytes.len() > MAX_SA_UPDATE_LEN {
            return Err(Error::Refused("association update too large"));
        }
        let statement = UnverifiedStatement::parse(bytes, MAX_SA_UPDATE_LEN)?;
        if statement.signer() != headend {
            return Err(Error::Refused(
                "association update not signed by the headend",
            ));
        }
        let payload = statement.verify(headend_key, LABEL_SA)?;
        let Value::Array(items) = decode_exact(&payload)? else {
            return Err(malformed("association update is not an array"));
        };
        let [Value::Text(label), from, to, epoch, ephemeral, issued] = items.as_slice() else {
            return Err(malformed("association update has the wrong shape"));
        };
        if label != LABEL_SA {
            return Err(malformed("not an association update"));
        }
        if text_id(from)? != *headend {
            return Err(Error::Refused(
                "association update signer is not the headend it names",
            ));
        }
        if text_id(to)? != *meter {
            return Err(Error::Refused("association update for another meter"));
        }
        let epoch = u32::try_from(uint(epoch)?).map_err(|_| malformed("epoch"))?;
        if epoch == 0 {
            return Err(malformed("association update of epoch 0"));
        }
        let ephemeral = match ephemeral {
            Value::Null => None,
            Value::Bytes(b) => Some(
                <[u8; 32]>::try_from(b.as_slice())
                    .map_err(|_| malformed("ephemeral key is not 32 bytes"))?,
            ),
            _ => return Err(malformed("ephemeral key is neither bytes nor null")),
        };
        Ok(Self {
            headend: headend.clone(),
            meter: meter.clone(),
            epoch,
            ephemeral,
            issued: UnixMillis::new(uint(issued)?),
        })
    }
}

/// The association as the meter holds it (`pairwise-sa.cbor`; public
/// values only: the meter's own secret stays in its key file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterSa {
    /// Its epoch (0: the static key from enrolment).
    pub epoch: u32,
    /// The headend's public key of this epoch (None at epoch 0, or when
    /// removed).
    pub ephemeral: Option<[u8; 32]>,
    /// When the headend issued it (0 at epoch 0).
    pub issued: UnixMillis,
}

impl Default for MeterSa {
    fn default() -> Self {
        Self {
            epoch: 0,
            ephemeral: None,
            issued: UnixMillis::new(0),
        }
    }
}

impl MeterSa {
    /// Whether the headend removed it (the meter must not report).
    pub fn is_removed(&self) -> bool {
        self.epoch > 0 && self.ephemeral.is_none()
    }

    /// Whether `update` is the one it holds already (sent again because
    /// the confirmation was lost: confirm again, change nothing).
    pub fn holds(&self, update: &SaUpdate) -> bool {
        update.epoch == self.epoch && update.ephemeral == self.ephemeral
    }

    /// The state after `update` (on a copy: save it, then use it). An
    /// update not newer than the one held is refused.
    pub fn apply(&self, update: &SaUpdate) -> Result<Self> {
        if update.epoch <= self.epoch {
            return Err(Error::Refused(
                "association update not newer than the one held (replayed or out of order)",
            ));
        }
        Ok(Self {
            epoch: update.epoch,
            ephemeral: update.ephemeral,
            issued: update.issued,
        })
    }

    /// The pairwise key the meter seals with.
    pub fn pairwise(
        &self,
        meter: &EntityCredential,
        headend: &PublicCredential,
    ) -> Result<PairwiseKey> {
        match (self.epoch, self.ephemeral) {
            (0, _) => Ok(PairwiseKey::derive(
                PAIRWISE_ALG,
                meter.agreement_secret(),
                headend.agreement_key(),
                meter.id(),
                headend.id(),
            )?),
            (epoch, Some(e)) => Ok(PairwiseKey::derive_refreshed(
                PAIRWISE_ALG,
                meter.agreement_secret(),
                headend.agreement_key(),
                meter.agreement_secret(),
                &X25519Public::from(e),
                epoch,
                meter.id(),
                headend.id(),
            )?),
            (_, None) => Err(Error::Refused(
                "the headend removed this meter's security association: nothing can be reported until the operator establishes a new one (sealcast headend sa establish)",
            )),
        }
    }

    /// The state file: `[1, epoch, ephemeral / null, issued_ms]`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Integer(STATE_VERSION.into()),
            Value::Integer(self.epoch.into()),
            self.ephemeral
                .map_or(Value::Null, |e| Value::Bytes(e.to_vec())),
            Value::Integer(self.issued.get().into()),
        ]))
    }

    /// Decodes what [`MeterSa::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::State("malformed security association state".into());
        if bytes.len() > 128 {
            return Err(bad());
        }
        let Ok(Value::Array(items)) = decode_exact(bytes) else {
            return Err(bad());
        };
        let [version, epoch, ephemeral, issued] = items.as_slice() else {
            return Err(bad());
        };
        if uint(version).ok() != Some(STATE_VERSION) {
            return Err(bad());
        }
        let epoch = u32::try_from(uint(epoch).map_err(|_| bad())?).map_err(|_| bad())?;
        let ephemeral = match ephemeral {
            Value::Null => None,
            Value::Bytes(b) => Some(<[u8; 32]>::try_from(b.as_slice()).map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        if epoch == 0 && ephemeral.is_some() {
            return Err(bad());
        }
        Ok(Self {
            epoch,
            ephemeral,
            issued: UnixMillis::new(uint(issued).map_err(|_| bad())?),
        })
    }
}

/// Where an association stands at the headend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaPhase {
    /// In use: the meter reported under this epoch (or it is epoch 0).
    Established,
    /// Refreshed or established, not yet used by the meter: the update is
    /// sent until its first report under the new epoch.
    Pending,
    /// Removed: every report of the meter is refused.
    Removed,
}

impl SaPhase {
    /// Its name in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            SaPhase::Established => "established",
            SaPhase::Pending => "pending",
            SaPhase::Removed => "removed",
        }
    }

    fn code(self) -> u64 {
        match self {
            SaPhase::Established => 0,
            SaPhase::Pending => 1,
            SaPhase::Removed => 2,
        }
    }

    fn from_code(c: u64) -> Option<Self> {
        match c {
            0 => Some(SaPhase::Established),
            1 => Some(SaPhase::Pending),
            2 => Some(SaPhase::Removed),
            _ => None,
        }
    }
}

/// One meter's association at the headend. Holds the ephemeral secrets of
/// the current (and, while the meter has not moved, the previous) epoch:
/// it lives in the headend's 0600 state file.
#[derive(Clone)]
pub struct HeadendSa {
    epoch: u32,
    secret: Option<Zeroizing<[u8; 32]>>,
    previous: Option<(u32, Option<Zeroizing<[u8; 32]>>)>,
    phase: SaPhase,
    changed: UnixMillis,
    confirmed: Option<UnixMillis>,
}

impl core::fmt::Debug for HeadendSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeadendSa")
            .field("epoch", &self.epoch)
            .field("phase", &self.phase)
            .field("previous", &self.previous.as_ref().map(|p| p.0))
            .finish_non_exhaustive()
    }
}

impl Default for HeadendSa {
    fn default() -> Self {
        Self {
            epoch: 0,
            secret: None,
            previous: None,
            phase: SaPhase::Established,
            changed: UnixMillis::new(0),
            confirmed: None,
        }
    }
}

/// What the headend shows of one association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaStatus {
    /// Its epoch.
    pub epoch: u32,
    /// Where it stands.
    pub phase: SaPhase,
    /// The older epoch still opened while the meter has not moved.
    pub previous: Option<u32>,
    /// When it was last changed (0: never, the enrolment's epoch 0).
    pub changed: UnixMillis,
    /// When the meter first reported under it.
    pub confirmed: Option<UnixMillis>,
}

fn random32<R: CryptoRng + ?Sized>(rng: &mut R) -> Zeroizing<[u8; 32]> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(b.as_mut());
    b
}

impl HeadendSa {
    /// Its status.
    pub fn status(&self) -> SaStatus {
        SaStatus {
            epoch: self.epoch,
            phase: self.phase,
            previous: self.previous.as_ref().map(|p| p.0),
            changed: self.changed,
            confirmed: self.confirmed,
        }
    }

    /// Whether it is the enrolment's (nothing to save).
    pub fn is_initial(&self) -> bool {
        self.epoch == 0 && self.phase == SaPhase::Established
    }

    /// A new epoch with a fresh key (refresh, or establish after a
    /// removal), on a copy. A meter that never moved to a pending epoch
    /// keeps the epoch it last used open until it moves.
    pub fn refreshed<R: CryptoRng + ?Sized>(&self, now: UnixMillis, rng: &mut R) -> Result<Self> {
        let epoch = self
            .epoch
            .checked_add(1)
            .ok_or(Error::Refused("association epochs exhausted"))?;
        let previous = match self.phase {
            SaPhase::Established => Some((self.epoch, self.secret.clone())),
            SaPhase::Pending => self.previous.clone(),
            SaPhase::Removed => None,
        };
        Ok(Self {
            epoch,
            secret: Some(random32(rng)),
            previous,
            phase: SaPhase::Pending,
            changed: now,
            confirmed: None,
        })
    }

    /// The association removed (a new epoch with no key), on a copy.
    pub fn removed(&self, now: UnixMillis) -> Result<Self> {
        if self.phase == SaPhase::Removed {
            return Err(Error::Refused("the association is already removed"));
        }
        Ok(Self {
            epoch: self
                .epoch
                .checked_add(1)
                .ok_or(Error::Refused("association epochs exhausted"))?,
            secret: None,
            previous: None,
            phase: SaPhase::Removed,
            changed: now,
            confirmed: None,
        })
    }

    /// The meter reported under `epoch` at `now`: a pending epoch becomes
    /// established and the previous one is erased. True when it changed.
    pub fn on_report(&mut self, epoch: u32, now: UnixMillis) -> bool {
        if self.phase != SaPhase::Pending || epoch != self.epoch {
            return false;
        }
        self.phase = SaPhase::Established;
        self.previous = None;
        self.confirmed = Some(now);
        true
    }

    /// The update telling the meter of the current state (None while it is
    /// established: nothing to send).
    pub fn update(&self, headend: &EntityId, meter: &EntityId) -> Option<SaUpdate> {
        if self.phase == SaPhase::Established {
            return None;
        }
        Some(SaUpdate {
            headend: headend.clone(),
            meter: meter.clone(),
            epoch: self.epoch,
            ephemeral: self
                .secret
                .as_ref()
                .map(|s| X25519Public::from(&StaticSecret::from(**s)).to_bytes()),
            issued: self.changed,
        })
    }

    /// The keys that open this meter's reports now: the current epoch's
    /// and, while it is pending, the previous one's (none when removed).
    pub fn keys(
        &self,
        headend: &EntityCredential,
        meter: &EntityId,
        meter_key: &X25519Public,
    ) -> Result<Vec<PairwiseKey>> {
        let key = |epoch: u32, secret: &Option<Zeroizing<[u8; 32]>>| -> Result<PairwiseKey> {
            match secret {
                None => Ok(PairwiseKey::derive(
                    PAIRWISE_ALG,
                    headend.agreement_secret(),
                    meter_key,
                    meter,
                    headend.id(),
                )?),
                Some(s) => Ok(PairwiseKey::derive_refreshed(
                    PAIRWISE_ALG,
                    headend.agreement_secret(),
                    meter_key,
                    &StaticSecret::from(**s),
                    meter_key,
                    epoch,
                    meter,
                    headend.id(),
                )?),
            }
        };
        let mut out = Vec::with_capacity(2);
        if self.phase == SaPhase::Removed {
            return Ok(out);
        }
        out.push(key(self.epoch, &self.secret)?);
        if let Some((e, s)) = &self.previous {
            out.push(key(*e, s)?);
        }
        Ok(out)
    }

    /// Its entry in the headend's state file: `[epoch, secret / null,
    /// previous_epoch / null, previous_secret / null, phase (0 established,
    /// 1 pending, 2 removed), changed_ms, confirmed_ms / null]`.
    pub fn to_value(&self) -> Value {
        let secret = |s: &Option<Zeroizing<[u8; 32]>>| {
            s.as_ref().map_or(Value::Null, |s| Value::Bytes(s.to_vec()))
        };
        Value::Array(vec![
            Value::Integer(self.epoch.into()),
            secret(&self.secret),
            self.previous
                .as_ref()
                .map_or(Value::Null, |p| Value::Integer(p.0.into())),
            self.previous.as_ref().map_or(Value::Null, |p| secret(&p.1)),
            Value::Integer(self.phase.code().into()),
            Value::Integer(self.changed.get().into()),
            self.confirmed
                .map_or(Value::Null, |c| Value::Integer(c.get().into())),
        ])
    }

    /// Reads what [`HeadendSa::to_value`] wrote.
    pub fn from_value(value: &Value) -> Result<Self> {
        let bad = || Error::State("headend state: malformed security association".into());
        let Value::Array(items) = value else {
            return Err(bad());
        };
        let [
            epoch,
            secret,
            prev_epoch,
            prev_secret,
            phase,
            changed,
            confirmed,
        ] = items.as_slice()
        else {
            return Err(bad());
        };
        let secret_of = |v: &Value| -> Result<Option<Zeroizing<[u8; 32]>>> {
            match v {
                Value::Null => Ok(None),
                Value::Bytes(b) => Ok(Some(Zeroizing::new(
                    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| bad())?,
                ))),
                _ => Err(bad()),
            }
        };
        let epoch_of = |v: &Value| u32::try_from(uint(v).map_err(|_| bad())?).map_err(|_| bad());
        let previous = match prev_epoch {
            Value::Null => None,
            v => Some((epoch_of(v)?, secret_of(prev_secret)?)),
        };
        let sa = Self {
            epoch: epoch_of(epoch)?,
            secret: secret_of(secret)?,
            previous,
            phase: SaPhase::from_code(uint(phase).map_err(|_| bad())?).ok_or_else(bad)?,
            changed: UnixMillis::new(uint(changed).map_err(|_| bad())?),
            confirmed: match confirmed {
                Value::Null => None,
                v => Some(UnixMillis::new(uint(v).map_err(|_| bad())?)),
            },
        };
        // Epoch 0 is static; a later epoch has a key unless removed.
        let consistent = match sa.phase {
            SaPhase::Removed => sa.secret.is_none() && sa.epoch > 0,
            _ => (sa.epoch == 0) == sa.secret.is_none(),
        };
        if !consistent {
            return Err(bad());
        }
        Ok(sa)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::ids::SeqNum;
    use sealcast_core::report::{open_report_unverified_with, seal_report};
    use sealcast_core::testrng::TestRng;

    fn cred(name: &str, seed: u64) -> EntityCredential {
        EntityCredential::generate(EntityId::new(name).unwrap(), &mut TestRng::new(seed))
    }

    /// Seals a report as the meter would under `sa`, and opens it as the
    /// headend would under `hsa`.
    fn round_trip(
        meter: &EntityCredential,
        headend: &EntityCredential,
        sa: &MeterSa,
        hsa: &HeadendSa,
        seq: u64,
    ) -> Result<u32> {
        let key = sa.pairwise(meter, &headend.public())?;
        let bytes = seal_report(
            meter.id(),
            meter.signing_key(),
            headend.id(),
            &key,
            SeqNum::new(seq).unwrap(),
            UnixMillis::new(seq),
            b"7 kWh",
        )
        .unwrap();
        let keys = hsa.keys(headend, meter.id(), meter.public().agreement_key())?;
        let (_, epoch, r) = open_report_unverified_with(&bytes, headend.id(), |e| {
            keys.iter().find(|k| k.epoch() == e)
        })?;
        assert_eq!(&r[..], b"7 kWh");
        Ok(epoch)
    }

    #[test]
    fn refresh_remove_and_establish_move_both_sides_together() {
        let (meter, headend) = (cred("meter-1", 1), cred("headend", 2));
        let other = cred("meter-2", 3);
        let mallory = cred("headend", 4);
        let mut rng = TestRng::new(9);
        let mut hsa = HeadendSa::default();
        let mut msa = MeterSa::default();
        assert_eq!(round_trip(&meter, &headend, &msa, &hsa, 1).unwrap(), 0);
        assert!(hsa.update(headend.id(), meter.id()).is_none());

        // Refresh: the update names epoch 1; until the meter moves, both
        // epochs open.
        hsa = hsa.refreshed(UnixMillis::new(10), &mut rng).unwrap();
        assert_eq!(hsa.status().phase, SaPhase::Pending);
        let update = hsa.update(headend.id(), meter.id()).unwrap();
        let bytes = update.seal(headend.signing_key()).unwrap();
        assert!(SaUpdate::looks_like(&bytes));
        assert_eq!(round_trip(&meter, &headend, &msa, &hsa, 2).unwrap(), 0);
        // Refused: for another meter, forged under the headend's name, a
        // copy with a flipped bit.
        let vk = headend.public();
        assert!(SaUpdate::open(&bytes, other.id(), headend.id(), vk.verifying_key()).is_err());
        let forged = update.seal(mallory.signing_key()).unwrap();
        assert!(SaUpdate::open(&forged, meter.id(), headend.id(), vk.verifying_key()).is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(SaUpdate::open(&flipped, meter.id(), headend.id(), vk.verifying_key()).is_err());
        let opened = SaUpdate::open(&bytes, meter.id(), headend.id(), vk.verifying_key()).unwrap();
        assert_eq!(opened, update);
        assert!(!msa.holds(&opened));
        msa = msa.apply(&opened).unwrap();
        // The same update again is held already (confirmed again, nothing
        // changes); applying it again is refused.
        assert!(msa.holds(&opened));
        assert!(msa.apply(&opened).is_err());
        assert_eq!(MeterSa::decode(&msa.encode().unwrap()).unwrap(), msa);
        assert_eq!(round_trip(&meter, &headend, &msa, &hsa, 3).unwrap(), 1);
        assert!(hsa.on_report(1, UnixMillis::new(11)));
        assert_eq!(hsa.status().phase, SaPhase::Established);
        // The old epoch is retired: a report under it no longer opens.
        assert!(round_trip(&meter, &headend, &MeterSa::default(), &hsa, 4).is_err());
        // The state file keeps it (and the secret).
        let again = HeadendSa::from_value(&hsa.to_value()).unwrap();
        assert_eq!(round_trip(&meter, &headend, &msa, &again, 5).unwrap(), 1);

        // Remove: nothing opens; the meter refuses to seal.
        hsa = hsa.removed(UnixMillis::new(20)).unwrap();
        assert!(hsa.removed(UnixMillis::new(21)).is_err());
        assert!(round_trip(&meter, &headend, &msa, &hsa, 6).is_err());
        let removal = hsa.update(headend.id(), meter.id()).unwrap();
        assert_eq!((removal.epoch, removal.ephemeral), (2, None));
        msa = msa.apply(&removal).unwrap();
        assert!(msa.is_removed());
        assert!(msa.pairwise(&meter, &headend.public()).is_err());

        // Establish again: epoch 3.
        hsa = hsa.refreshed(UnixMillis::new(30), &mut rng).unwrap();
        assert_eq!(hsa.status().previous, None);
        msa = msa
            .apply(&hsa.update(headend.id(), meter.id()).unwrap())
            .unwrap();
        assert_eq!(round_trip(&meter, &headend, &msa, &hsa, 7).unwrap(), 3);
        // An older update (the removal) replayed now changes nothing.
        assert!(msa.apply(&removal).is_err());
        assert!(HeadendSa::from_value(&Value::Null).is_err());
        assert!(MeterSa::decode(b"\x84\x01\x00\x58\x20").is_err());
    }

    #[test]
    fn a_second_refresh_before_the_meter_moved_keeps_the_epoch_it_uses() {
        let (meter, headend) = (cred("meter-1", 1), cred("headend", 2));
        let mut rng = TestRng::new(3);
        let hsa = HeadendSa::default()
            .refreshed(UnixMillis::new(1), &mut rng)
            .unwrap()
            .refreshed(UnixMillis::new(2), &mut rng)
            .unwrap();
        assert_eq!((hsa.status().epoch, hsa.status().previous), (2, Some(0)));
        assert_eq!(
            round_trip(&meter, &headend, &MeterSa::default(), &hsa, 1).unwrap(),
            0
        );
    }
}

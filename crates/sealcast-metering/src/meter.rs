//! The meter: seals readings for the headend (pairwise key from
//! static-static X25519, then the meter's signature) with sequence numbers
//! from a [`SeqAllocator`], which asks for a reservation to be persisted
//! before the numbers are used; [`encode_state`] / [`decode_state`] are its
//! state file.

use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::replay::SeqAllocator;
use sealcast_core::report::{PairwiseKey, seal_report};

use crate::{Error, Result};

/// The AEAD of the meter–headend pairwise key.
pub const PAIRWISE_ALG: AeadAlg = AeadAlg::A128Gcm;
/// Sequence numbers a meter reserves at a time.
pub const METER_SEQ_BLOCK: u64 = 64;
const STATE_VERSION: u64 = 1;

/// A meter's sealing state: its credential, the pairwise key with its
/// headend, and its sequence allocator.
pub struct Meter {
    credential: EntityCredential,
    headend: EntityId,
    pairwise: PairwiseKey,
    seq: SeqAllocator,
}

impl core::fmt::Debug for Meter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Meter")
            .field("id", self.credential.id())
            .field("headend", &self.headend)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Meter {
    /// A meter reporting to `headend`, resuming its sequence numbers at
    /// `reserved_limit` (0 for a new meter).
    pub fn new(
        credential: EntityCredential,
        headend: &PublicCredential,
        reserved_limit: u64,
    ) -> Result<Self> {
        Self::with_sa(
            credential,
            headend,
            reserved_limit,
            &crate::sa::MeterSa::default(),
        )
    }

    /// A meter sealing under the security association `sa` (refused when
    /// the headend removed it).
    pub fn with_sa(
        credential: EntityCredential,
        headend: &PublicCredential,
        reserved_limit: u64,
        sa: &crate::sa::MeterSa,
    ) -> Result<Self> {
        let pairwise = sa.pairwise(&credential, headend)?;
        Ok(Self {
            credential,
            headend: headend.id().clone(),
            pairwise,
            seq: SeqAllocator::resume(reserved_limit, METER_SEQ_BLOCK)?,
        })
    }

    /// The security association epoch it seals under.
    pub fn sa_epoch(&self) -> u32 {
        self.pairwise.epoch()
    }

    /// The meter's id.
    pub fn id(&self) -> &EntityId {
        self.credential.id()
    }

    /// The meter's credential (its downlink opens key deliveries with it).
    pub fn credential(&self) -> &EntityCredential {
        &self.credential
    }

    /// The new limit to persist before sealing more, if it is time to
    /// (then call [`Meter::confirm_reservation`]).
    pub fn reservation_request(&self) -> Option<u64> {
        self.seq.reservation_request()
    }

    /// Records that `limit` is durably stored.
    pub fn confirm_reservation(&mut self, limit: u64) -> Result<()> {
        Ok(self.seq.confirm_reservation(limit)?)
    }

    /// Seals one reading with the next sequence number.
    pub fn seal(&mut self, reading: &[u8], at: UnixMillis) -> Result<(SeqNum, Vec<u8>)> {
        let seq = self.seq.next()?;
        let bytes = seal_report(
            self.credential.id(),
            self.credential.signing_key(),
            &self.headend,
            &self.pairwise,
            seq,
            at,
            reading,
        )?;
        Ok((seq, bytes))
    }
}

/// Encodes a meter's state file: `[1, reserved_limit]`.
pub fn encode_state(reserved_limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Array(vec![
            ciborium::Value::Integer(STATE_VERSION.into()),
            ciborium::Value::Integer(reserved_limit.into()),
        ]),
        &mut out,
    )
    .map_err(|e| Error::State(e.to_string()))?;
    Ok(out)
}

/// Decodes what [`encode_state`] wrote.
pub fn decode_state(bytes: &[u8]) -> Result<u64> {
    let bad = || Error::State("malformed meter state".into());
    if bytes.len() > 64 {
        return Err(bad());
    }
    let value: ciborium::Value = ciborium::from_reader(bytes).map_err(|_| bad())?;
    let int = |v: &ciborium::Value| sealcast_core::cbor::u64_of(v).ok_or_else(bad);
    match value.as_array().map(Vec::as_slice) {
        Some([version, limit]) if int(version)? == STATE_VERSION => int(limit),
        _ => Err(bad()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::testrng::TestRng;

    #[test]
    fn reservations_come_before_use_and_resume_above() {
        let mut rng = TestRng::new(5);
        let headend = EntityCredential::generate(EntityId::new("headend").unwrap(), &mut rng);
        let cred = EntityCredential::generate(EntityId::new("meter-1").unwrap(), &mut rng);
        let again = EntityCredential::from_cose_key_set(&cred.to_cose_key_set().unwrap()).unwrap();
        let mut meter = Meter::new(cred, &headend.public(), 0).unwrap();
        // Nothing reserved: sealing refuses until a reservation is confirmed.
        assert!(meter.seal(b"1 kWh", UnixMillis::new(1)).is_err());
        let limit = meter.reservation_request().unwrap();
        meter.confirm_reservation(limit).unwrap();
        let (seq, _) = meter.seal(b"1 kWh", UnixMillis::new(1)).unwrap();
        assert_eq!(seq.get(), 0);
        // A restart resumes at the persisted limit: no number reused.
        let state = encode_state(limit).unwrap();
        let mut resumed =
            Meter::new(again, &headend.public(), decode_state(&state).unwrap()).unwrap();
        let l2 = resumed.reservation_request().unwrap();
        resumed.confirm_reservation(l2).unwrap();
        let (seq2, _) = resumed.seal(b"2 kWh", UnixMillis::new(2)).unwrap();
        assert_eq!(seq2.get(), limit);
        assert!(decode_state(b"\x82\x02\x00").is_err());
        assert!(decode_state(b"garbage").is_err());
    }
}

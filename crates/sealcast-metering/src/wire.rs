//! Wire formats of the smart-metering services, sans-IO: the DAP's signed
//! report batches, its signed announcement of the meters it serves, and the
//! headend's signed request to announce again.
//!
//! All three are signed statements (`sealcast_core::statement`: COSE_Sign1,
//! EdDSA, `kid` = signer, the label below as external AAD) over a CBOR array:
//!
//! ```text
//! batch        (LABEL_BATCH)    = [ dap: tstr, headend: tstr, seq: uint, timestamp_ms: uint,
//!                                   [ report: bstr, … ] ]                 ; ≤ MAX_BATCH_REPORTS
//! announcement (LABEL_ANNOUNCE) = [ dap: tstr, headend: tstr, group: tstr, version: uint,
//!                                   issued_ms: uint, [ meter: tstr, … ] ] ; ≤ MAX_ANNOUNCED_METERS
//! solicit      (LABEL_SOLICIT)  = [ headend: tstr, dap: tstr, issued_ms: uint ]
//! ```
//!
//! The signer (`kid`) must equal the payload's own sender field, and the
//! audience field must name the receiver, so a statement for one headend or
//! DAP is refused by another. Every decoder checks a size limit first, then
//! the shape, counts and id syntax, and rejects trailing bytes.

use std::collections::BTreeSet;

use ciborium::Value;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};

use crate::{Error, Result};

/// Label of the DAP's signed report batches.
pub const LABEL_BATCH: &str = "sealcast report batch v2";
/// Label of a DAP's signed announcement of the meters it serves.
pub const LABEL_ANNOUNCE: &str = "sealcast dap announce v1";
/// Label of a headend's signed request that a DAP announce again.
pub const LABEL_SOLICIT: &str = "sealcast announce request v1";

/// Largest signed batch: fits one MQTT packet of the default size limit.
pub const MAX_BATCH_LEN: usize = 1 << 20;
/// Most reports in one batch.
pub const MAX_BATCH_REPORTS: usize = 4096;
/// Largest signed announcement.
pub const MAX_ANNOUNCEMENT_LEN: usize = 1 << 20;
/// Most meters one announcement may name.
pub const MAX_ANNOUNCED_METERS: usize = 50_000;
/// Largest meter-group name in an announcement (bytes).
pub const MAX_GROUP_NAME_LEN: usize = 64;
/// Largest signed announce request.
pub const MAX_SOLICIT_LEN: usize = 512;
/// Room the statement wrapping and the batch header take around the reports.
const BATCH_OVERHEAD: usize = 512;

pub(crate) fn malformed(what: &'static str) -> Error {
    Error::Core(sealcast_core::Error::Malformed(what))
}

pub(crate) fn encode(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|_| malformed("CBOR encoding failed"))?;
    Ok(out)
}

/// Decodes exactly one CBOR item filling all of `bytes` (the caller checked
/// the size; ciborium bounds the nesting).
pub(crate) fn decode_exact(bytes: &[u8]) -> Result<Value> {
    let mut cursor = std::io::Cursor::new(bytes);
    let value: Value =
        ciborium::from_reader(&mut cursor).map_err(|_| malformed("payload is not CBOR"))?;
    if usize::try_from(cursor.position()).ok() != Some(bytes.len()) {
        return Err(malformed("trailing bytes after the payload"));
    }
    Ok(value)
}

pub(crate) fn text_id(v: &Value) -> Result<EntityId> {
    match v {
        Value::Text(t) => Ok(EntityId::new(t)?),
        _ => Err(malformed("entity id is not a text string")),
    }
}

pub(crate) fn uint(v: &Value) -> Result<u64> {
    sealcast_core::cbor::u64_of(v).ok_or_else(|| malformed("not an unsigned integer"))
}

pub(crate) fn id_value(id: &EntityId) -> Value {
    Value::Text(id.as_str().to_owned())
}

/// Parses a statement, finds its signer's key with `lookup`, checks the
/// signature under `label`, and returns the signer and the payload.
fn verify_statement<'k>(
    bytes: &[u8],
    limit: usize,
    label: &str,
    lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
) -> Result<(EntityId, Vec<u8>)> {
    if bytes.len() > limit {
        return Err(Error::Core(sealcast_core::Error::TooLarge {
            what: "signed statement",
            limit,
        }));
    }
    let statement = UnverifiedStatement::parse(bytes, limit)?;
    let signer = statement.signer().clone();
    let key = lookup(&signer).ok_or(Error::Refused("signer is not a known peer"))?;
    let payload = statement.verify(key, label)?;
    Ok((signer, payload))
}

/// A report batch the headend verified: the DAP's signature holds, the
/// batch names this headend, and the signer is the DAP it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The DAP that verified and signed it.
    pub dap: EntityId,
    /// The DAP's batch sequence number.
    pub seq: SeqNum,
    /// When the DAP sealed it.
    pub timestamp: UnixMillis,
    /// The meters' reports, as the DAP received them.
    pub reports: Vec<Vec<u8>>,
}

/// Splits `reports` into runs that each fit one batch of at most
/// [`MAX_BATCH_LEN`] bytes and [`MAX_BATCH_REPORTS`] reports. A single
/// report larger than a batch can hold is refused.
pub fn split_for_batches<'a>(reports: &[&'a [u8]]) -> Result<Vec<Vec<&'a [u8]>>> {
    let budget = MAX_BATCH_LEN - BATCH_OVERHEAD;
    let mut chunks = Vec::new();
    let mut current: Vec<&[u8]> = Vec::new();
    let mut size = 0usize;
    for r in reports {
        // bstr head is at most 9 bytes.
        let cost = r.len() + 9;
        if cost > budget {
            return Err(Error::Refused("a report too large for any batch"));
        }
        if !current.is_empty() && (size + cost > budget || current.len() == MAX_BATCH_REPORTS) {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(r);
        size += cost;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}

/// Signs a batch of reports as `dap` for `headend`. The reports must fit
/// one batch (see [`split_for_batches`]).
pub fn seal_batch(
    dap: &EntityId,
    key: &SigningKey,
    headend: &EntityId,
    seq: SeqNum,
    timestamp: UnixMillis,
    reports: &[&[u8]],
) -> Result<Vec<u8>> {
    if reports.len() > MAX_BATCH_REPORTS {
        return Err(Error::Refused("too many reports for one batch"));
    }
    let payload = encode(&Value::Array(vec![
        id_value(dap),
        id_value(headend),
        Value::Integer(seq.get().into()),
        Value::Integer(timestamp.get().into()),
        Value::Array(reports.iter().map(|r| Value::Bytes(r.to_vec())).collect()),
    ]))?;
    let signed = sign_statement(dap, key, LABEL_BATCH, &payload);
    if signed.len() > MAX_BATCH_LEN {
        return Err(Error::Refused("batch larger than MAX_BATCH_LEN"));
    }
    Ok(signed)
}

/// Verifies and decodes a batch at `headend`; `lookup` gives the key of a
/// known DAP (None: not one of ours).
pub fn open_batch<'k>(
    bytes: &[u8],
    headend: &EntityId,
    lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
) -> Result<Batch> {
    let (signer, payload) = verify_statement(bytes, MAX_BATCH_LEN, LABEL_BATCH, lookup)?;
    let Value::Array(items) = decode_exact(&payload)? else {
        return Err(malformed("batch is not an array"));
    };
    let [dap, to, seq, ts, Value::Array(reports)] = items.as_slice() else {
        return Err(malformed("batch has the wrong shape"));
    };
    if text_id(dap)? != signer {
        return Err(Error::Refused("batch signer is not the DAP it names"));
    }
    if text_id(to)? != *headend {
        return Err(Error::Refused("batch is for another headend"));
    }
    if reports.len() > MAX_BATCH_REPORTS {
        return Err(malformed("too many reports in a batch"));
    }
    let reports = reports
        .iter()
        .map(|r| match r {
            Value::Bytes(b) => Ok(b.clone()),
            _ => Err(malformed("a report is not a byte string")),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Batch {
        dap: signer,
        seq: SeqNum::new(uint(seq)?)?,
        timestamp: UnixMillis::new(uint(ts)?),
        reports,
    })
}

/// A DAP's statement of the meters it serves, for one headend. Versions
/// only grow: a headend keeps the newest it accepted and refuses older ones,
/// so a replayed announcement cannot bring back a meter the DAP dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The DAP.
    pub dap: EntityId,
    /// The headend it is for.
    pub headend: EntityId,
    /// The name of the DAP's meter group.
    pub group: String,
    /// Grows with every announcement of this DAP.
    pub version: u64,
    /// When the DAP signed it.
    pub issued: UnixMillis,
    /// The meters whose reports this DAP forwards.
    pub meters: BTreeSet<EntityId>,
}

impl Announcement {
    /// Signs the announcement with the DAP's key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>> {
        if self.meters.len() > MAX_ANNOUNCED_METERS {
            return Err(Error::Refused("too many meters for one announcement"));
        }
        check_group_name(&self.group)?;
        let payload = encode(&Value::Array(vec![
            id_value(&self.dap),
            id_value(&self.headend),
            Value::Text(self.group.clone()),
            Value::Integer(self.version.into()),
            Value::Integer(self.issued.get().into()),
            Value::Array(self.meters.iter().map(id_value).collect()),
        ]))?;
        let signed = sign_statement(&self.dap, key, LABEL_ANNOUNCE, &payload);
        if signed.len() > MAX_ANNOUNCEMENT_LEN {
            return Err(Error::Refused(
                "announcement larger than MAX_ANNOUNCEMENT_LEN",
            ));
        }
        Ok(signed)
    }

    /// Verifies and decodes an announcement at `headend`.
    pub fn open<'k>(
        bytes: &[u8],
        headend: &EntityId,
        lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
    ) -> Result<Self> {
        let (signer, payload) =
            verify_statement(bytes, MAX_ANNOUNCEMENT_LEN, LABEL_ANNOUNCE, lookup)?;
        let Value::Array(items) = decode_exact(&payload)? else {
            return Err(malformed("announcement is not an array"));
        };
        let [
            dap,
            to,
            Value::Text(group),
            version,
            issued,
            Value::Array(meters),
        ] = items.as_slice()
        else {
            return Err(malformed("announcement has the wrong shape"));
        };
        if text_id(dap)? != signer {
            return Err(Error::Refused(
                "announcement signer is not the DAP it names",
            ));
        }
        if text_id(to)? != *headend {
            return Err(Error::Refused("announcement is for another headend"));
        }
        check_group_name(group)?;
        if meters.len() > MAX_ANNOUNCED_METERS {
            return Err(malformed("too many meters in an announcement"));
        }
        let meters = meters
            .iter()
            .map(text_id)
            .collect::<Result<BTreeSet<_>>>()?;
        Ok(Self {
            dap: signer,
            headend: headend.clone(),
            group: group.clone(),
            version: uint(version)?,
            issued: UnixMillis::new(uint(issued)?),
            meters,
        })
    }
}

fn check_group_name(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME_LEN || group.chars().any(char::is_control) {
        return Err(malformed(
            "meter group name is empty, too long or has control characters",
        ));
    }
    Ok(())
}

/// Signs a headend's request that `dap` announce itself again.
pub fn seal_solicit(
    headend: &EntityId,
    key: &SigningKey,
    dap: &EntityId,
    issued: UnixMillis,
) -> Result<Vec<u8>> {
    let payload = encode(&Value::Array(vec![
        id_value(headend),
        id_value(dap),
        Value::Integer(issued.get().into()),
    ]))?;
    Ok(sign_statement(headend, key, LABEL_SOLICIT, &payload))
}

/// Verifies a request to announce at `dap`, signed by the headend whose key
/// is `headend_key`; returns when it was issued.
pub fn open_solicit(
    bytes: &[u8],
    dap: &EntityId,
    headend: &EntityId,
    headend_key: &VerifyingKey,
) -> Result<UnixMillis> {
    let (signer, payload) = verify_statement(bytes, MAX_SOLICIT_LEN, LABEL_SOLICIT, |id| {
        (id == headend).then_some(headend_key)
    })?;
    let Value::Array(items) = decode_exact(&payload)? else {
        return Err(malformed("announce request is not an array"));
    };
    let [from, to, issued] = items.as_slice() else {
        return Err(malformed("announce request has the wrong shape"));
    };
    if text_id(from)? != signer {
        return Err(Error::Refused("request signer is not the headend it names"));
    }
    if text_id(to)? != *dap {
        return Err(Error::Refused("announce request is for another DAP"));
    }
    Ok(UnixMillis::new(uint(issued)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::credential::EntityCredential;
    use sealcast_core::testrng::TestRng;

    fn cred(name: &str, seed: u64) -> EntityCredential {
        EntityCredential::generate(EntityId::new(name).unwrap(), &mut TestRng::new(seed))
    }

    #[test]
    fn batch_round_trip_and_binding() {
        let dap = cred("dap-1", 1);
        let other = cred("dap-2", 2);
        let headend = EntityId::new("headend").unwrap();
        let reports: Vec<&[u8]> = vec![b"one", b"two"];
        let bytes = seal_batch(
            dap.id(),
            dap.signing_key(),
            &headend,
            SeqNum::new(7).unwrap(),
            UnixMillis::new(99),
            &reports,
        )
        .unwrap();
        let dap_key = dap.signing_key().verifying_key();
        let lookup = |id: &EntityId| (id == dap.id()).then_some(&dap_key);
        let batch = open_batch(&bytes, &headend, lookup).unwrap();
        assert_eq!(batch.dap, *dap.id());
        assert_eq!(batch.seq.get(), 7);
        assert_eq!(batch.reports, vec![b"one".to_vec(), b"two".to_vec()]);
        // For another headend.
        let elsewhere = EntityId::new("headend-2").unwrap();
        assert!(matches!(
            open_batch(&bytes, &elsewhere, lookup),
            Err(Error::Refused(_))
        ));
        // An unknown signer, and a DAP signing a batch naming another DAP.
        let other_key = other.signing_key().verifying_key();
        let forged = seal_batch(
            dap.id(),
            other.signing_key(),
            &headend,
            SeqNum::new(8).unwrap(),
            UnixMillis::new(99),
            &reports,
        )
        .unwrap();
        assert!(open_batch(&forged, &headend, lookup).is_err());
        let payload = encode(&Value::Array(vec![
            id_value(dap.id()),
            id_value(&headend),
            Value::Integer(1.into()),
            Value::Integer(1.into()),
            Value::Array(vec![]),
        ]))
        .unwrap();
        let misnamed = sign_statement(other.id(), other.signing_key(), LABEL_BATCH, &payload);
        let both = |id: &EntityId| {
            if id == dap.id() {
                Some(&dap_key)
            } else if id == other.id() {
                Some(&other_key)
            } else {
                None
            }
        };
        assert!(matches!(
            open_batch(&misnamed, &headend, both),
            Err(Error::Refused(_))
        ));
        // A flipped bit anywhere fails.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(open_batch(&b, &headend, lookup).is_err(), "bit flip at {i}");
        }
        // An announcement is not a batch (labels differ).
        let ann = Announcement {
            dap: dap.id().clone(),
            headend: headend.clone(),
            group: "meters".into(),
            version: 1,
            issued: UnixMillis::new(1),
            meters: BTreeSet::new(),
        }
        .seal(dap.signing_key())
        .unwrap();
        assert!(open_batch(&ann, &headend, lookup).is_err());
    }

    #[test]
    fn batches_split_by_size_and_count() {
        let big = vec![0u8; 300 * 1024];
        let small = [0u8; 10];
        let reports: Vec<&[u8]> = vec![&big, &big, &big, &big, &small];
        let chunks = split_for_batches(&reports).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), 3);
        let many: Vec<&[u8]> = (0..MAX_BATCH_REPORTS + 1).map(|_| &small[..]).collect();
        let chunks = split_for_batches(&many).unwrap();
        assert_eq!(chunks.len(), 2);
        let huge = vec![0u8; MAX_BATCH_LEN];
        assert!(split_for_batches(&[&huge]).is_err());
        assert!(split_for_batches(&[]).unwrap().is_empty());
    }

    #[test]
    fn announcement_round_trip_and_bounds() {
        let dap = cred("dap-1", 1);
        let headend = EntityId::new("headend").unwrap();
        let meters: BTreeSet<EntityId> = (0..3)
            .map(|i| EntityId::new(&format!("meter-{i}")).unwrap())
            .collect();
        let ann = Announcement {
            dap: dap.id().clone(),
            headend: headend.clone(),
            group: "street-7".into(),
            version: 42,
            issued: UnixMillis::new(1000),
            meters,
        };
        let bytes = ann.seal(dap.signing_key()).unwrap();
        let key = dap.signing_key().verifying_key();
        let lookup = |id: &EntityId| (id == dap.id()).then_some(&key);
        assert_eq!(Announcement::open(&bytes, &headend, lookup).unwrap(), ann);
        let elsewhere = EntityId::new("headend-2").unwrap();
        assert!(Announcement::open(&bytes, &elsewhere, lookup).is_err());
        assert!(Announcement::open(&bytes, &headend, |_| None).is_err());
        // Too large before any decoding.
        let huge = vec![0u8; MAX_ANNOUNCEMENT_LEN + 1];
        assert!(Announcement::open(&huge, &headend, lookup).is_err());
        // Bad group names.
        for group in ["", "a\nb"] {
            let mut bad = ann.clone();
            bad.group = group.into();
            assert!(bad.seal(dap.signing_key()).is_err());
        }
        // Garbage never panics.
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(Announcement::open(&junk, &headend, lookup).is_err());
            assert!(open_batch(&junk, &headend, lookup).is_err());
        }
    }

    #[test]
    fn solicit_binds_both_ends() {
        let headend = cred("headend", 3);
        let dap = EntityId::new("dap-1").unwrap();
        let key = headend.signing_key().verifying_key();
        let bytes = seal_solicit(
            headend.id(),
            headend.signing_key(),
            &dap,
            UnixMillis::new(5),
        )
        .unwrap();
        assert_eq!(
            open_solicit(&bytes, &dap, headend.id(), &key).unwrap(),
            UnixMillis::new(5)
        );
        let other_dap = EntityId::new("dap-2").unwrap();
        assert!(open_solicit(&bytes, &other_dap, headend.id(), &key).is_err());
        let mallory = cred("mallory", 4);
        let forged = seal_solicit(
            headend.id(),
            mallory.signing_key(),
            &dap,
            UnixMillis::new(5),
        )
        .unwrap();
        assert!(open_solicit(&forged, &dap, headend.id(), &key).is_err());
    }

    /// Signed, so past the signature check, but mutated: the decoders behind
    /// the signature (a compromised DAP or headend key could send anything)
    /// refuse or accept, never panic. Bounded: 3 × 1500 mutations.
    #[test]
    fn signed_but_mutated_payloads_never_panic() {
        use rand_core::Rng;
        let dap = cred("dap-1", 1);
        let headend = cred("headend", 2);
        let at = UnixMillis::new(1_790_000_000_000);
        let reports: Vec<&[u8]> = vec![b"one", b"two", b"three"];
        let batch_payload = encode(&Value::Array(vec![
            id_value(dap.id()),
            id_value(headend.id()),
            Value::Integer(7.into()),
            Value::Integer(at.get().into()),
            Value::Array(reports.iter().map(|r| Value::Bytes(r.to_vec())).collect()),
        ]))
        .unwrap();
        let meters: BTreeSet<EntityId> = (0..5)
            .map(|i| EntityId::new(&format!("meter-{i}")).unwrap())
            .collect();
        let announce_payload = encode(&Value::Array(vec![
            id_value(dap.id()),
            id_value(headend.id()),
            Value::Text("meters".into()),
            Value::Integer(3.into()),
            Value::Integer(at.get().into()),
            Value::Array(meters.iter().map(id_value).collect()),
        ]))
        .unwrap();
        let solicit_payload = encode(&Value::Array(vec![
            id_value(headend.id()),
            id_value(dap.id()),
            Value::Integer(at.get().into()),
        ]))
        .unwrap();
        let dap_key = dap.signing_key().verifying_key();
        let headend_key = headend.signing_key().verifying_key();
        let by_dap = |id: &EntityId| (id == dap.id()).then_some(&dap_key);
        let mut rng = TestRng::new(77);
        let mut mutate = |base: &[u8]| -> Vec<u8> {
            let mut m = base.to_vec();
            for _ in 0..=(rng.next_u64() % 4) {
                let r = rng.next_u64();
                let i = (r as usize) % m.len().max(1);
                match (r >> 32) % 4 {
                    0 if !m.is_empty() => m[i] ^= 1 << ((r >> 40) % 8),
                    1 if !m.is_empty() => m[i] = (r >> 48) as u8,
                    2 => m.insert(i.min(m.len()), (r >> 48) as u8),
                    _ => m.truncate(i),
                }
            }
            m
        };
        for _ in 0..1500 {
            let p = mutate(&batch_payload);
            let signed = sign_statement(dap.id(), dap.signing_key(), LABEL_BATCH, &p);
            let _ = open_batch(&signed, headend.id(), by_dap);
            let p = mutate(&announce_payload);
            let signed = sign_statement(dap.id(), dap.signing_key(), LABEL_ANNOUNCE, &p);
            let _ = Announcement::open(&signed, headend.id(), by_dap);
            let p = mutate(&solicit_payload);
            let signed = sign_statement(headend.id(), headend.signing_key(), LABEL_SOLICIT, &p);
            let _ = open_solicit(&signed, dap.id(), headend.id(), &headend_key);
        }
        // The unmutated payloads still open: the loop exercised real shapes.
        let signed = sign_statement(dap.id(), dap.signing_key(), LABEL_BATCH, &batch_payload);
        assert_eq!(
            open_batch(&signed, headend.id(), by_dap)
                .unwrap()
                .reports
                .len(),
            3
        );
        let signed = sign_statement(
            dap.id(),
            dap.signing_key(),
            LABEL_ANNOUNCE,
            &announce_payload,
        );
        assert_eq!(
            Announcement::open(&signed, headend.id(), by_dap)
                .unwrap()
                .meters,
            meters
        );
    }
}

//! Member reports through a Data Aggregation Point: encrypted for the
//! headend, then signed by the reporter, so the DAP can authenticate reports
//! (in batches) without being able to read them.
//!
//! ```text
//! context = [ "sealcast report v1", reporter: tstr, headend: tstr, seq: uint, timestamp_ms: uint ]
//! inner   = COSE_Encrypt0 (tag 16) { 1: alg } / { 6: partial_iv(seq) }
//!           under the pairwise key, external_aad = context
//! outer   = COSE_Sign1 (tag 18) { 1: -8 } / { 4: reporter, 6: partial_iv(seq), -70002: timestamp_ms }
//!           payload = inner, external_aad = context
//! pairwise key = HKDF-SHA256(salt = "", IKM = X25519(reporter, headend),
//!                info = [reporter, headend, alg, "Key", L])       (RFC 8613 info layout;
//!                reporter and headend are the UTF-8 bytes of the entity ids, as bstr)
//! pairwise IV  = same with type "IV", L = 12; nonce = IV xor seq (RFC 8613 §5.2, empty id)
//! ```
//!
//! Static-static X25519 needs no handshake: both sides know each other's
//! credential. That key is the security association's **epoch 0**. The
//! headend refreshes the association by handing the reporter a fresh
//! X25519 public key `E` of its own (signed; `sealcast_metering::sa`) for
//! epoch `n ≥ 1`:
//!
//! ```text
//! IKM  = X25519(reporter, headend) ‖ X25519(reporter, E)    (headend: its static and ephemeral secrets)
//! salt = epoch n as 4 bytes, big-endian;  info as above
//! inner protected header = { 1: alg, -70011: n }            (epoch 0: no -70011, bytes as before)
//! ```
//!
//! The headend deletes `E`'s secret when the association moves on, so a
//! later theft of the headend's static key does not open an older epoch's
//! reports. Sequence numbers must never repeat for one reporter–headend
//! pair (see [`crate::replay::SeqAllocator`]); they carry on across epochs.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::cbor::{write_array, write_tstr, write_uint};
use crate::cose::{
    self, ALG_EDDSA, HDR_ALG, HDR_KID, HDR_PARTIAL_IV, HDR_SA_EPOCH, HDR_TIMESTAMP, HVal,
};
use crate::crypto::{
    AeadAlg, AeadKey, NONCE_LEN, ed25519_signature, ed25519_verify_batch_expecting,
    ed25519_verify_strict,
};
use crate::error::{Error, Result};
use crate::ids::{EntityId, SeqNum, UnixMillis};
use crate::kdf::{self, KdfType};

/// Largest report accepted.
pub const MAX_REPORT_LEN: usize = 16 * 1024;

/// The context bound into both layers of a report.
pub fn report_context(
    reporter: &EntityId,
    headend: &EntityId,
    seq: SeqNum,
    timestamp: UnixMillis,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + reporter.as_str().len() + headend.as_str().len());
    write_array(&mut out, 5);
    write_tstr(&mut out, "sealcast report v1");
    write_tstr(&mut out, reporter.as_str());
    write_tstr(&mut out, headend.as_str());
    write_uint(&mut out, seq.get());
    write_uint(&mut out, timestamp.get());
    out
}

/// The key a reporter and a headend share without a handshake. Directional:
/// it protects reports from `reporter` to `headend` only.
pub struct PairwiseKey {
    key: AeadKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
    epoch: u32,
}

impl core::fmt::Debug for PairwiseKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PairwiseKey(..)")
    }
}

impl PairwiseKey {
    /// Derives the epoch-0 key from one side's X25519 secret and the other
    /// side's public key (the result is the same on both sides).
    pub fn derive(
        alg: AeadAlg,
        own_secret: &StaticSecret,
        peer_public: &X25519Public,
        reporter: &EntityId,
        headend: &EntityId,
    ) -> Result<Self> {
        let shared = crate::crypto::x25519(&own_secret.to_bytes(), peer_public.as_bytes())?;
        Self::from_ikm(alg, shared.as_ref(), &[], 0, reporter, headend)
    }

    /// Derives the key of a refreshed association, epoch `epoch ≥ 1`.
    /// The reporter passes its static secret twice with the headend's
    /// static and ephemeral public keys; the headend passes its static
    /// secret with the reporter's static key, then its ephemeral secret
    /// with the reporter's static key again.
    #[allow(clippy::too_many_arguments)]
    pub fn derive_refreshed(
        alg: AeadAlg,
        static_secret: &StaticSecret,
        static_peer: &X25519Public,
        ephemeral_secret: &StaticSecret,
        ephemeral_peer: &X25519Public,
        epoch: u32,
        reporter: &EntityId,
        headend: &EntityId,
    ) -> Result<Self> {
        if epoch == 0 {
            return Err(Error::Malformed(
                "a refreshed security association has an epoch of 1 or more",
            ));
        }
        let ss = crate::crypto::x25519(&static_secret.to_bytes(), static_peer.as_bytes())?;
        let es = crate::crypto::x25519(&ephemeral_secret.to_bytes(), ephemeral_peer.as_bytes())?;
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(ss.as_ref());
        ikm[32..].copy_from_slice(es.as_ref());
        Self::from_ikm(
            alg,
            ikm.as_ref(),
            &epoch.to_be_bytes(),
            epoch,
            reporter,
            headend,
        )
    }

    fn from_ikm(
        alg: AeadAlg,
        ikm: &[u8],
        salt: &[u8],
        epoch: u32,
        reporter: &EntityId,
        headend: &EntityId,
    ) -> Result<Self> {
        let ctx = Some(headend.as_bytes());
        let key = kdf::derive(
            ikm,
            salt,
            reporter.as_bytes(),
            ctx,
            alg.cose_id(),
            KdfType::Key,
            alg.key_len(),
        )?;
        let iv = kdf::derive(
            ikm,
            salt,
            reporter.as_bytes(),
            ctx,
            alg.cose_id(),
            KdfType::Iv,
            NONCE_LEN,
        )?;
        let mut iv_arr = Zeroizing::new([0u8; NONCE_LEN]);
        iv_arr.copy_from_slice(&iv);
        Ok(Self {
            key: AeadKey::new(alg, &key)?,
            iv: iv_arr,
            epoch,
        })
    }

    /// The security association epoch this key belongs to (0: static).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

/// Seals a reading: encrypt for the headend, then sign.
#[allow(clippy::too_many_arguments)]
pub fn seal_report(
    reporter: &EntityId,
    signing_key: &SigningKey,
    headend: &EntityId,
    pairwise: &PairwiseKey,
    seq: SeqNum,
    timestamp: UnixMillis,
    reading: &[u8],
) -> Result<Vec<u8>> {
    let context = report_context(reporter, headend, seq, timestamp);
    let piv = seq.partial_iv();
    let alg = (HDR_ALG, HVal::Int(pairwise.key.alg().cose_id()));
    let enc_protected = if pairwise.epoch == 0 {
        cose::protected_bytes(&[alg])
    } else {
        cose::protected_bytes(&[alg, (HDR_SA_EPOCH, HVal::Uint(pairwise.epoch.into()))])
    };
    let nonce = kdf::nonce(pairwise.iv.as_ref(), &[], &piv)?;
    let ciphertext = pairwise.key.seal(
        &nonce,
        &cose::enc_structure("Encrypt0", &enc_protected, &context),
        reading,
    )?;
    let mut inner = Vec::with_capacity(ciphertext.len() + 16);
    cose::write_encrypt0(
        &mut inner,
        &enc_protected,
        &[(HDR_PARTIAL_IV, HVal::Bytes(&piv))],
        &ciphertext,
    );

    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_EDDSA))]);
    let signature = signing_key
        .sign(&cose::sig1_structure(&protected, &context, &inner))
        .to_bytes();
    let mut out = Vec::with_capacity(inner.len() + 128);
    cose::write_four(
        &mut out,
        cose::TAG_SIGN1,
        &protected,
        &[
            (HDR_KID, HVal::Bytes(reporter.as_bytes())),
            (HDR_PARTIAL_IV, HVal::Bytes(&piv)),
            (HDR_TIMESTAMP, HVal::Uint(timestamp.get())),
        ],
        &inner,
        &signature,
    );
    Ok(out)
}

/// A parsed report, before or after signature verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportHeader {
    /// The reporting entity (`kid`).
    pub reporter: EntityId,
    /// Its sequence number.
    pub seq: SeqNum,
    /// Its timestamp.
    pub timestamp: UnixMillis,
}

/// A report whose signature has been verified. Only [`verify_report`] and
/// [`verify_reports_batch`] make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReport {
    header: ReportHeader,
    encrypted: Vec<u8>,
}

impl VerifiedReport {
    /// Who sent it, with which sequence number and timestamp.
    pub fn header(&self) -> &ReportHeader {
        &self.header
    }
    /// The inner COSE_Encrypt0 (still encrypted for the headend).
    pub fn encrypted(&self) -> &[u8] {
        &self.encrypted
    }
}

struct ParsedReport {
    header: ReportHeader,
    tbs: Vec<u8>,
    signature: Signature,
    inner: Vec<u8>,
}

fn parse_report(bytes: &[u8], headend: &EntityId) -> Result<ParsedReport> {
    let sign1 = cose::parse_sign1(bytes, MAX_REPORT_LEN)?;
    cose::require_alg(&sign1.protected.header, &sign1.unprotected, ALG_EDDSA)?;
    cose::only(
        &sign1.protected.header,
        cose::Allowed {
            alg: true,
            ..Default::default()
        },
    )?;
    cose::only(
        &sign1.unprotected,
        cose::Allowed {
            kid: true,
            partial_iv: true,
            rest: &[HDR_TIMESTAMP],
            ..Default::default()
        },
    )?;
    let reporter = EntityId::from_bytes(&sign1.unprotected.key_id)?;
    let seq = SeqNum::from_partial_iv(&sign1.unprotected.partial_iv)?;
    let timestamp = UnixMillis::new(cose::rest_uint(
        &sign1.unprotected,
        HDR_TIMESTAMP,
        "timestamp",
    )?);
    let inner = sign1.payload.ok_or(Error::Malformed("detached payload"))?;
    let context = report_context(&reporter, headend, seq, timestamp);
    let tbs = cose::sig1_structure(cose::protected_original(&sign1.protected), &context, &inner);
    let signature = ed25519_signature(&sign1.signature)?;
    Ok(ParsedReport {
        header: ReportHeader {
            reporter,
            seq,
            timestamp,
        },
        tbs,
        signature,
        inner,
    })
}

/// Reads a report's header without verifying it.
pub fn peek_report(bytes: &[u8], headend: &EntityId) -> Result<ReportHeader> {
    parse_report(bytes, headend).map(|p| p.header)
}

/// Verifies the reporter's signature without decrypting. `lookup` maps a
/// reporter to its enrolled Ed25519 key (None: not enrolled).
pub fn verify_report<'k>(
    bytes: &[u8],
    headend: &EntityId,
    lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
) -> Result<VerifiedReport> {
    let p = parse_report(bytes, headend)?;
    let key = lookup(&p.header.reporter).ok_or(Error::UnknownSender)?;
    ed25519_verify_strict(key, &p.tbs, &p.signature.to_bytes())?;
    Ok(VerifiedReport {
        header: p.header,
        encrypted: p.inner,
    })
}

/// Verifies many reports with one batch signature check; a failed batch is
/// re-checked one by one, so each result says exactly whether that report
/// is genuine. Parse failures and unknown reporters fail only themselves.
pub fn verify_reports_batch<'k>(
    reports: &[&[u8]],
    headend: &EntityId,
    lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
) -> Vec<Result<VerifiedReport>> {
    verify_reports_batch_prechecked(reports, headend, lookup, |_| Ok(()))
}

/// [`verify_reports_batch`] with a pre-check: `precheck` sees each report's
/// header (unverified) once it parsed, before its reporter is looked up and
/// before any signature work; a report it refuses is not verified and its
/// result is the pre-check's error. A DAP checks its replay windows here,
/// so a replay costs no signature work and each report is parsed once.
pub fn verify_reports_batch_prechecked<'k>(
    reports: &[&[u8]],
    headend: &EntityId,
    lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
    precheck: impl FnMut(&ReportHeader) -> Result<()>,
) -> Vec<Result<VerifiedReport>> {
    verify_reports_batch_expecting(reports, headend, lookup, precheck, 0)
}

/// [`verify_reports_batch_prechecked`] for a verifier that expects about
/// `forged_per_mille` of every 1 000 reports that reach signature work to
/// be forged (a DAP under a stream with forgeries): the batch is checked in
/// groups sized for that rate
/// ([`crate::crypto::ed25519_verify_batch_expecting`]). The verdicts are
/// the same for every `forged_per_mille`; only the work differs.
pub fn verify_reports_batch_expecting<'k>(
    reports: &[&[u8]],
    headend: &EntityId,
    lookup: impl Fn(&EntityId) -> Option<&'k VerifyingKey>,
    mut precheck: impl FnMut(&ReportHeader) -> Result<()>,
    forged_per_mille: u64,
) -> Vec<Result<VerifiedReport>> {
    let parsed: Vec<Result<(ParsedReport, &'k VerifyingKey)>> = reports
        .iter()
        .map(|b| {
            let p = parse_report(b, headend)?;
            precheck(&p.header)?;
            let key = lookup(&p.header.reporter).ok_or(Error::UnknownSender)?;
            Ok((p, key))
        })
        .collect();
    let items: Vec<(&VerifyingKey, &[u8], &Signature)> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|(p, k)| (*k, p.tbs.as_slice(), &p.signature))
        .collect();
    let mut verdicts = ed25519_verify_batch_expecting(&items, forged_per_mille).into_iter();
    parsed
        .into_iter()
        .map(|r| {
            let (p, _) = r?;
            verdicts.next().unwrap_or(Err(Error::BadSignature))?;
            Ok(VerifiedReport {
                header: p.header,
                encrypted: p.inner,
            })
        })
        .collect()
}

/// Decrypts the reading of a verified report at the headend.
pub fn open_report(
    verified: &VerifiedReport,
    headend: &EntityId,
    pairwise: &PairwiseKey,
) -> Result<Zeroizing<Vec<u8>>> {
    open_report_with(verified, headend, |e| {
        (e == pairwise.epoch).then_some(pairwise)
    })
    .map(|(_, r)| r)
}

/// Decrypts a verified report with the key of the security association
/// epoch it names (`keys(epoch)`; None: no such epoch held). Returns the
/// epoch and the reading.
pub fn open_report_with<'k>(
    verified: &VerifiedReport,
    headend: &EntityId,
    keys: impl FnOnce(u32) -> Option<&'k PairwiseKey>,
) -> Result<(u32, Zeroizing<Vec<u8>>)> {
    decrypt_inner(&verified.header, &verified.encrypted, headend, keys)
}

/// Decrypts a report without checking the reporter's signature: for a
/// headend whose policy trusts the DAP's batch signature instead. The AEAD
/// still authenticates the reporter (only it and the headend hold the
/// pairwise key).
pub fn open_report_unverified(
    bytes: &[u8],
    headend: &EntityId,
    pairwise: &PairwiseKey,
) -> Result<(ReportHeader, Zeroizing<Vec<u8>>)> {
    open_report_unverified_with(bytes, headend, |e| {
        (e == pairwise.epoch).then_some(pairwise)
    })
    .map(|(h, _, r)| (h, r))
}

/// [`open_report_unverified`] with the key of the epoch the report names.
pub fn open_report_unverified_with<'k>(
    bytes: &[u8],
    headend: &EntityId,
    keys: impl FnOnce(u32) -> Option<&'k PairwiseKey>,
) -> Result<(ReportHeader, u32, Zeroizing<Vec<u8>>)> {
    let p = parse_report(bytes, headend)?;
    let (epoch, reading) = decrypt_inner(&p.header, &p.inner, headend, keys)?;
    Ok((p.header, epoch, reading))
}

fn decrypt_inner<'k>(
    h: &ReportHeader,
    inner: &[u8],
    headend: &EntityId,
    keys: impl FnOnce(u32) -> Option<&'k PairwiseKey>,
) -> Result<(u32, Zeroizing<Vec<u8>>)> {
    let enc = cose::parse_encrypt0(inner, MAX_REPORT_LEN)?;
    cose::only(
        &enc.protected.header,
        cose::Allowed {
            alg: true,
            rest: &[HDR_SA_EPOCH],
            ..Default::default()
        },
    )?;
    let epoch = match cose::rest_value(&enc.protected.header, HDR_SA_EPOCH) {
        None => 0,
        Some(_) => {
            let e = u32::try_from(cose::rest_uint(
                &enc.protected.header,
                HDR_SA_EPOCH,
                "security association epoch",
            )?)
            .map_err(|_| Error::Malformed("security association epoch"))?;
            if e == 0 {
                // Epoch 0 is written by leaving the label out: one encoding.
                return Err(Error::Malformed("security association epoch"));
            }
            e
        }
    };
    let pairwise = keys(epoch).ok_or(Error::ContextMismatch("security association epoch"))?;
    if pairwise.epoch != epoch {
        return Err(Error::ContextMismatch("security association epoch"));
    }
    cose::require_alg(
        &enc.protected.header,
        &enc.unprotected,
        pairwise.key.alg().cose_id(),
    )?;
    if SeqNum::from_partial_iv(&enc.unprotected.partial_iv)? != h.seq {
        return Err(Error::ContextMismatch("sequence number"));
    }
    let context = report_context(&h.reporter, headend, h.seq, h.timestamp);
    let nonce = kdf::nonce(pairwise.iv.as_ref(), &[], &h.seq.partial_iv())?;
    let aad = cose::enc_structure(
        "Encrypt0",
        cose::protected_original(&enc.protected),
        &context,
    );
    let reading = pairwise.key.open(
        &nonce,
        &aad,
        enc.ciphertext
            .as_deref()
            .ok_or(Error::Malformed("detached ciphertext"))?,
    )?;
    Ok((epoch, reading))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testrng::TestRng;

    fn x(rng: &mut TestRng) -> StaticSecret {
        let mut b = [0u8; 32];
        rand_core::TryRng::try_fill_bytes(rng, &mut b).unwrap();
        StaticSecret::from(b)
    }

    #[test]
    fn a_refreshed_association_opens_only_under_its_own_epoch() {
        let mut rng = TestRng::new(0x5a);
        let (reporter, headend) = (
            EntityId::new("meter-7").unwrap(),
            EntityId::new("headend").unwrap(),
        );
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let (m, h, e) = (x(&mut rng), x(&mut rng), x(&mut rng));
        let (mp, hp, ep) = (
            X25519Public::from(&m),
            X25519Public::from(&h),
            X25519Public::from(&e),
        );
        let alg = AeadAlg::A128Gcm;
        let static_m = PairwiseKey::derive(alg, &m, &hp, &reporter, &headend).unwrap();
        let static_h = PairwiseKey::derive(alg, &h, &mp, &reporter, &headend).unwrap();
        // The meter: its static secret with both of the headend's keys; the
        // headend: its static and ephemeral secrets with the meter's key.
        let fresh_m =
            PairwiseKey::derive_refreshed(alg, &m, &hp, &m, &ep, 2, &reporter, &headend).unwrap();
        let fresh_h =
            PairwiseKey::derive_refreshed(alg, &h, &mp, &e, &mp, 2, &reporter, &headend).unwrap();
        assert_eq!(fresh_m.epoch(), 2);
        assert!(
            PairwiseKey::derive_refreshed(alg, &m, &hp, &m, &ep, 0, &reporter, &headend).is_err()
        );
        let seal = |k: &PairwiseKey, seq| {
            seal_report(
                &reporter,
                &signing,
                &headend,
                k,
                SeqNum::new(seq).unwrap(),
                UnixMillis::new(1),
                b"42 kWh",
            )
            .unwrap()
        };
        let old = seal(&static_m, 1);
        let new = seal(&fresh_m, 2);
        // Each opens under its own epoch's key, on the other side.
        let (_, r) = open_report_unverified(&old, &headend, &static_h).unwrap();
        assert_eq!(&r[..], b"42 kWh");
        let (_, epoch, r) = open_report_unverified_with(&new, &headend, |e| {
            [&static_h, &fresh_h].into_iter().find(|k| k.epoch() == e)
        })
        .unwrap();
        assert_eq!((epoch, &r[..]), (2, &b"42 kWh"[..]));
        // Not under another epoch's key; not when the epoch is not held.
        assert!(open_report_unverified(&new, &headend, &static_h).is_err());
        assert!(open_report_unverified(&old, &headend, &fresh_h).is_err());
        assert!(open_report_unverified_with(&new, &headend, |_| None).is_err());
        // A key of the same epoch number from another ephemeral does not open it.
        let other = x(&mut rng);
        let wrong =
            PairwiseKey::derive_refreshed(alg, &h, &mp, &other, &mp, 2, &reporter, &headend)
                .unwrap();
        assert!(matches!(
            open_report_unverified(&new, &headend, &wrong),
            Err(Error::DecryptFailed)
        ));
        // The epoch is bound: the signature covers the inner header, so a
        // report re-labelled with another epoch fails the signature.
        let vk = signing.verifying_key();
        let verified = verify_report(&new, &headend, |_| Some(&vk)).unwrap();
        assert_eq!(
            &open_report(&verified, &headend, &fresh_h).unwrap()[..],
            b"42 kWh"
        );
    }
}

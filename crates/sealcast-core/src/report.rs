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
//! credential. Sequence numbers must never repeat for one reporter–headend
//! pair (see [`crate::replay::SeqAllocator`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::cbor::{write_array, write_tstr, write_uint};
use crate::cose::{self, ALG_EDDSA, HDR_ALG, HDR_KID, HDR_PARTIAL_IV, HDR_TIMESTAMP, HVal};
use crate::crypto::{
    AeadAlg, AeadKey, NONCE_LEN, ed25519_signature, ed25519_verify_batch, ed25519_verify_strict,
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
}

impl core::fmt::Debug for PairwiseKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PairwiseKey(..)")
    }
}

impl PairwiseKey {
    /// Derives the key from one side's X25519 secret and the other side's
    /// public key (the result is the same on both sides).
    pub fn derive(
        alg: AeadAlg,
        own_secret: &StaticSecret,
        peer_public: &X25519Public,
        reporter: &EntityId,
        headend: &EntityId,
    ) -> Result<Self> {
        let shared = crate::crypto::x25519(&own_secret.to_bytes(), peer_public.as_bytes())?;
        let ctx = Some(headend.as_bytes());
        let key = kdf::derive(
            shared.as_ref(),
            &[],
            reporter.as_bytes(),
            ctx,
            alg.cose_id(),
            KdfType::Key,
            alg.key_len(),
        )?;
        let iv = kdf::derive(
            shared.as_ref(),
            &[],
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
        })
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
    let enc_protected =
        cose::protected_bytes(&[(HDR_ALG, HVal::Int(pairwise.key.alg().cose_id()))]);
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
    let parsed: Vec<Result<(ParsedReport, &'k VerifyingKey)>> = reports
        .iter()
        .map(|b| {
            let p = parse_report(b, headend)?;
            let key = lookup(&p.header.reporter).ok_or(Error::UnknownSender)?;
            Ok((p, key))
        })
        .collect();
    let items: Vec<(&VerifyingKey, &[u8], &Signature)> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|(p, k)| (*k, p.tbs.as_slice(), &p.signature))
        .collect();
    let mut verdicts = ed25519_verify_batch(&items).into_iter();
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
    decrypt_inner(&verified.header, &verified.encrypted, headend, pairwise)
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
    let p = parse_report(bytes, headend)?;
    let reading = decrypt_inner(&p.header, &p.inner, headend, pairwise)?;
    Ok((p.header, reading))
}

fn decrypt_inner(
    h: &ReportHeader,
    inner: &[u8],
    headend: &EntityId,
    pairwise: &PairwiseKey,
) -> Result<Zeroizing<Vec<u8>>> {
    let enc = cose::parse_encrypt0(inner, MAX_REPORT_LEN)?;
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
    pairwise.key.open(
        &nonce,
        &aad,
        enc.ciphertext
            .as_deref()
            .ok_or(Error::Malformed("detached ciphertext"))?,
    )
}

//! COSE building blocks shared by the envelopes: header encoding, the
//! `Sig_structure` / `Enc_structure` / `MAC_structure` inputs, bounded
//! parsing and header look-ups.
//!
//! sealcast encodes its own objects directly (the structures are fixed, and
//! the bytes are what the byte-level description in `docs/ARCHITECTURE.md`
//! promises). Untrusted input is parsed with `coset` after a size check;
//! ciborium, under it, refuses nesting deeper than its recursion limit.
//!
//! **Empty protected headers.** The AAD and `ToBeSigned` structures always
//! use the protected-header bytes exactly as received (as google/coset does):
//! a peer that sends `h'A0'` (an encoded empty map) gets `h'A0'` in its AAD,
//! not `h''`. sealcast itself never emits an empty protected map: its objects
//! always protect the algorithm. The COSE WG `*-pass-01` examples that were
//! computed as if `h'A0'` were `h''` therefore fail to verify here, which
//! `tests/cose_wg.rs` pins.

use coset::{
    CoseEncrypt, CoseEncrypt0, CoseMac0, CoseSign1, Header, Label, TaggedCborSerializable,
};

use crate::cbor::{write_array, write_bstr, write_head, write_int, write_tstr};
use crate::error::{Error, Result};

/// COSE header label `alg`.
pub const HDR_ALG: i64 = 1;
/// COSE header label `kid`.
pub const HDR_KID: i64 = 4;
/// COSE header label `IV`.
pub const HDR_IV: i64 = 5;
/// COSE header label `Partial IV`.
pub const HDR_PARTIAL_IV: i64 = 6;
/// OSCORE's `kid context` header label (RFC 8613 §6.1 uses 10).
pub const HDR_KID_CONTEXT: i64 = 10;
/// COSE header label `ephemeral key` (RFC 9053 §6.4.1).
pub const HDR_EPHEMERAL_KEY: i64 = -1;
/// sealcast private-use header label: the group epoch (uint).
pub const HDR_EPOCH: i64 = -70_001;
/// sealcast private-use header label: the sender's timestamp in ms (uint).
pub const HDR_TIMESTAMP: i64 = -70_002;

/// COSE alg EdDSA.
pub const ALG_EDDSA: i64 = -8;
/// COSE alg ECDH-ES + HKDF-256.
pub const ALG_ECDH_ES_HKDF_256: i64 = -25;
/// COSE alg HMAC 256/256.
pub const ALG_HMAC_256_256: i64 = 5;

/// CBOR tag of COSE_Sign1.
pub const TAG_SIGN1: u64 = 18;
/// CBOR tag of COSE_Encrypt0.
pub const TAG_ENCRYPT0: u64 = 16;
/// CBOR tag of COSE_Encrypt.
pub const TAG_ENCRYPT: u64 = 96;
/// CBOR tag of COSE_Mac0.
pub const TAG_MAC0: u64 = 17;

/// A header value sealcast writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HVal<'a> {
    Int(i64),
    Uint(u64),
    Bytes(&'a [u8]),
    /// Already-encoded CBOR (e.g. a COSE_Key map).
    Raw(&'a [u8]),
}

/// Encodes a header map in the given order.
pub(crate) fn header_map(out: &mut Vec<u8>, entries: &[(i64, HVal<'_>)]) {
    write_head(out, 5, entries.len() as u64);
    for (label, value) in entries {
        write_int(out, *label);
        match value {
            HVal::Int(v) => write_int(out, *v),
            HVal::Uint(v) => crate::cbor::write_uint(out, *v),
            HVal::Bytes(b) => write_bstr(out, b),
            HVal::Raw(r) => out.extend_from_slice(r),
        }
    }
}

/// Encodes a header map and returns it as the bytes of a protected header.
pub(crate) fn protected_bytes(entries: &[(i64, HVal<'_>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    header_map(&mut out, entries);
    out
}

/// `Sig_structure` for COSE_Sign1 (RFC 9052 §4.4).
pub fn sig1_structure(protected: &[u8], external_aad: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + protected.len() + external_aad.len() + payload.len());
    write_array(&mut out, 4);
    write_tstr(&mut out, "Signature1");
    write_bstr(&mut out, protected);
    write_bstr(&mut out, external_aad);
    write_bstr(&mut out, payload);
    out
}

/// `Enc_structure` (RFC 9052 §5.3); `context` is `"Encrypt0"` or `"Encrypt"`.
pub fn enc_structure(context: &str, protected: &[u8], external_aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + protected.len() + external_aad.len());
    write_array(&mut out, 3);
    write_tstr(&mut out, context);
    write_bstr(&mut out, protected);
    write_bstr(&mut out, external_aad);
    out
}

/// `MAC_structure` for COSE_Mac0 (RFC 9052 §6.3).
pub fn mac0_structure(protected: &[u8], external_aad: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + protected.len() + external_aad.len() + payload.len());
    write_array(&mut out, 4);
    write_tstr(&mut out, "MAC0");
    write_bstr(&mut out, protected);
    write_bstr(&mut out, external_aad);
    write_bstr(&mut out, payload);
    out
}

/// Writes a tagged COSE_Sign1 / COSE_Mac0 (4 elements, embedded payload).
pub(crate) fn write_four(
    out: &mut Vec<u8>,
    tag: u64,
    protected: &[u8],
    unprotected: &[(i64, HVal<'_>)],
    payload: &[u8],
    last: &[u8],
) {
    write_head(out, 6, tag);
    write_array(out, 4);
    write_bstr(out, protected);
    header_map(out, unprotected);
    write_bstr(out, payload);
    write_bstr(out, last);
}

/// Writes a tagged COSE_Encrypt0.
pub(crate) fn write_encrypt0(
    out: &mut Vec<u8>,
    protected: &[u8],
    unprotected: &[(i64, HVal<'_>)],
    ciphertext: &[u8],
) {
    write_head(out, 6, TAG_ENCRYPT0);
    write_array(out, 3);
    write_bstr(out, protected);
    header_map(out, unprotected);
    write_bstr(out, ciphertext);
}

fn check_len(bytes: &[u8], limit: usize, what: &'static str) -> Result<()> {
    if bytes.len() > limit {
        return Err(Error::TooLarge { what, limit });
    }
    if bytes.is_empty() {
        return Err(Error::Malformed("empty input"));
    }
    Ok(())
}

/// Strips an expected leading CBOR tag if present (sealcast accepts its
/// objects tagged or untagged, and refuses any other tag).
fn untag(bytes: &[u8], tag: u64) -> Result<&[u8]> {
    let first = bytes
        .first()
        .copied()
        .ok_or(Error::Malformed("empty input"))?;
    if first >> 5 != 6 {
        return Ok(bytes);
    }
    let mut head = Vec::with_capacity(2);
    write_head(&mut head, 6, tag);
    bytes
        .strip_prefix(head.as_slice())
        .ok_or(Error::Malformed("unexpected CBOR tag"))
}

macro_rules! parse_fn {
    ($name:ident, $ty:ty, $tag:expr, $what:literal) => {
        /// Parses (tagged or untagged) after checking the size limit.
        pub fn $name(bytes: &[u8], limit: usize) -> Result<$ty> {
            check_len(bytes, limit, $what)?;
            let body = untag(bytes, $tag)?;
            <$ty as coset::CborSerializable>::from_slice(body).map_err(|_| Error::Malformed($what))
        }
    };
}

parse_fn!(parse_sign1, CoseSign1, TAG_SIGN1, "COSE_Sign1");
parse_fn!(parse_encrypt0, CoseEncrypt0, TAG_ENCRYPT0, "COSE_Encrypt0");
parse_fn!(parse_encrypt, CoseEncrypt, TAG_ENCRYPT, "COSE_Encrypt");
parse_fn!(parse_mac0, CoseMac0, TAG_MAC0, "COSE_Mac0");

// Keep the tag constants honest against coset's registry.
const _: () = {
    assert!(<CoseSign1 as TaggedCborSerializable>::TAG == TAG_SIGN1);
    assert!(<CoseEncrypt0 as TaggedCborSerializable>::TAG == TAG_ENCRYPT0);
    assert!(<CoseEncrypt as TaggedCborSerializable>::TAG == TAG_ENCRYPT);
    assert!(<CoseMac0 as TaggedCborSerializable>::TAG == TAG_MAC0);
};

/// The protected header's bytes exactly as received.
pub(crate) fn protected_original(p: &coset::ProtectedHeader) -> &[u8] {
    p.original_data.as_deref().unwrap_or(&[])
}

/// The algorithm id of a header, if it is an integer.
pub(crate) fn alg_of(h: &Header) -> Option<i64> {
    match &h.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => Some(*a as i64),
        Some(coset::RegisteredLabelWithPrivate::PrivateUse(a)) => Some(*a),
        _ => None,
    }
}

/// Requires `alg` in the protected header and no `alg` elsewhere.
pub(crate) fn require_alg(protected: &Header, unprotected: &Header, want: i64) -> Result<()> {
    if unprotected.alg.is_some() {
        return Err(Error::Malformed("alg must be protected"));
    }
    match alg_of(protected) {
        Some(a) if a == want => Ok(()),
        Some(a) => Err(Error::UnsupportedAlgorithm(a)),
        None => Err(Error::Malformed("missing alg")),
    }
}

/// Looks up a private/other label in `rest`.
pub(crate) fn rest_value(h: &Header, label: i64) -> Option<&ciborium::Value> {
    h.rest.iter().find_map(|(l, v)| match l {
        Label::Int(i) if *i == label => Some(v),
        _ => None,
    })
}

/// A uint header value from `rest`.
pub(crate) fn rest_uint(h: &Header, label: i64, what: &'static str) -> Result<u64> {
    match rest_value(h, label) {
        Some(ciborium::Value::Integer(i)) => u64::try_from(*i).map_err(|_| Error::Malformed(what)),
        _ => Err(Error::Malformed(what)),
    }
}

/// A bstr header value from `rest`.
pub(crate) fn rest_bytes<'h>(h: &'h Header, label: i64, what: &'static str) -> Result<&'h [u8]> {
    match rest_value(h, label) {
        Some(ciborium::Value::Bytes(b)) => Ok(b),
        _ => Err(Error::Malformed(what)),
    }
}

/// Which header parameters a sealcast object may carry. Anything else —
/// an unknown label, `crit`, a content type, a counter signature — is
/// refused, so no byte of the (unauthenticated) unprotected header can be
/// changed or added without the object being rejected.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Allowed<'a> {
    pub(crate) alg: bool,
    pub(crate) kid: bool,
    pub(crate) iv: bool,
    pub(crate) partial_iv: bool,
    pub(crate) rest: &'a [i64],
}

/// Checks `h` against `allowed`.
pub(crate) fn only(h: &Header, allowed: Allowed<'_>) -> Result<()> {
    const EXTRA: Error = Error::Malformed("unexpected header parameter");
    if (h.alg.is_some() && !allowed.alg)
        || (!h.key_id.is_empty() && !allowed.kid)
        || (!h.iv.is_empty() && !allowed.iv)
        || (!h.partial_iv.is_empty() && !allowed.partial_iv)
        || !h.crit.is_empty()
        || h.content_type.is_some()
        || !h.counter_signatures.is_empty()
    {
        return Err(EXTRA);
    }
    for (label, _) in &h.rest {
        match label {
            Label::Int(i) if allowed.rest.contains(i) => {}
            _ => return Err(EXTRA),
        }
    }
    Ok(())
}

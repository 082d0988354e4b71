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
/// sealcast private-use header label, in a broadcast's inner *protected*
/// header: the signer's access-control token (a bstr holding the manager's
/// signed CWT, `sealcast_group::token`), so the signature covers it.
pub const HDR_ACCESS_TOKEN: i64 = -70_010;
/// sealcast private-use header label, in a report's inner *protected*
/// header: the epoch (uint ≥ 1) of the reporter–headend security
/// association whose pairwise key encrypted it (absent: epoch 0, the
/// static-static key), so both the AEAD and the reporter's signature
/// cover it.
pub const HDR_SA_EPOCH: i64 = -70_011;

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

pub(crate) fn check_len(bytes: &[u8], limit: usize, what: &'static str) -> Result<()> {
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
///
/// The tag's head may have any of CBOR's lengths (`d0`, `d8 10`,
/// `d9 00 10`, … for tag 16), as everywhere else in the object: sealcast
/// accepts what coset (ciborium) decodes, preferred serialization or not,
/// and writes only the preferred form. None of these heads is covered by
/// a signature or a MAC, so the choice changes what parses, never what
/// verifies.
fn untag(bytes: &[u8], tag: u64) -> Result<&[u8]> {
    let first = bytes
        .first()
        .copied()
        .ok_or(Error::Malformed("empty input"))?;
    if first >> 5 != 6 {
        return Ok(bytes);
    }
    let arg_len = match first & 0x1f {
        0..=23 => 0,
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        // Reserved, and indefinite length (not for tags).
        _ => return Err(Error::Malformed("unexpected CBOR tag")),
    };
    let arg = bytes
        .get(1..1 + arg_len)
        .ok_or(Error::Malformed("truncated CBOR tag"))?;
    let value = if arg_len == 0 {
        u64::from(first & 0x1f)
    } else {
        arg.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b))
    };
    if value != tag {
        return Err(Error::Malformed("unexpected CBOR tag"));
    }
    bytes
        .get(1 + arg_len..)
        .ok_or(Error::Malformed("truncated CBOR tag"))
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

/// A bounded, allocation-free reader for the two fixed layers of a
/// broadcast, exactly as sealcast writes them.
///
/// It is a fast path, not a second parser: it answers `Some` only for the
/// narrow shape `seal_broadcast` produces (definite lengths, shortest-form
/// heads, the fixed protected headers, each allowed unprotected label once
/// with the type coset would accept, no trailing bytes) and `None` for
/// anything else — including every malformed input — which the caller then
/// hands to coset. So acceptance and every error stay exactly coset's.
/// Whatever `Some` returns is what coset's structures hold for those bytes:
/// the unit tests below compare the two on genuine broadcasts and on every
/// one-bit flip and truncation of them, and on hand-made variants.
pub(crate) mod fast {
    use super::{HDR_EPOCH, HDR_KID, HDR_KID_CONTEXT, HDR_PARTIAL_IV, HDR_TIMESTAMP};

    /// `{1: 1}` (A128GCM) and `{1: 3}` (A256GCM), the outer protected
    /// headers sealcast writes.
    const OUTER_PROTECTED: [[u8; 3]; 2] = [[0xa1, 0x01, 0x01], [0xa1, 0x01, 0x03]];
    /// `{1: -8}` (EdDSA), the inner protected header sealcast writes.
    const INNER_PROTECTED: [u8; 3] = [0xa1, 0x01, 0x27];
    /// CBOR heads: tag 16 (COSE_Encrypt0), tag 18 (COSE_Sign1), arrays of 3
    /// and 4, maps of 1 and 5.
    const TAG16: u8 = 0xd0;
    const TAG18: u8 = 0xd2;
    const ARRAY3: u8 = 0x83;
    const ARRAY4: u8 = 0x84;
    const MAP1: u8 = 0xa1;
    const MAP5: u8 = 0xa5;

    /// The shared reader (`cbor::Reader`) in its preferred-only mode, with
    /// every refusal as `None`: the caller falls back to coset.
    struct Fast<'a>(crate::cbor::Reader<'a>);

    impl<'a> Fast<'a> {
        fn new(bytes: &'a [u8]) -> Self {
            Self(crate::cbor::Reader::preferred(bytes))
        }

        fn expect(&mut self, b: u8) -> Option<()> {
            self.0.expect(b).ok()
        }

        fn bstr(&mut self) -> Option<&'a [u8]> {
            self.0.bstr().ok()
        }

        fn nonempty_bstr(&mut self) -> Option<&'a [u8]> {
            self.bstr().filter(|b| !b.is_empty())
        }

        fn uint(&mut self) -> Option<u64> {
            self.0.uint().ok()
        }

        /// An integer label (as coset's `Label::Int`); a text label is
        /// left to coset.
        fn label(&mut self) -> Option<i64> {
            match self.0.label().ok()? {
                crate::cbor::Label::Int(i) => Some(i),
                crate::cbor::Label::Text(_) => None,
            }
        }

        fn at_end(&self) -> bool {
            self.0.at_end()
        }
    }

    /// The outer COSE_Encrypt0 of a broadcast.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Outer<'a> {
        pub(crate) protected: &'a [u8],
        pub(crate) alg: i64,
        pub(crate) kid: &'a [u8],
        pub(crate) partial_iv: &'a [u8],
        pub(crate) kid_context: &'a [u8],
        pub(crate) epoch: u64,
        pub(crate) timestamp: u64,
        pub(crate) ciphertext: &'a [u8],
    }

    /// Reads `16([h'A101(01|03)', {4, 6, 10, -70001, -70002 in any order},
    /// ciphertext])`, tagged or not; `None` for anything else.
    pub(crate) fn broadcast_outer(bytes: &[u8]) -> Option<Outer<'_>> {
        let body = bytes.strip_prefix(&[TAG16]).unwrap_or(bytes);
        let mut r = Fast::new(body);
        r.expect(ARRAY3)?;
        let protected = r.bstr()?;
        let alg = match OUTER_PROTECTED.iter().position(|p| p == protected)? {
            0 => 1,
            _ => 3,
        };
        r.expect(MAP5)?;
        let (mut kid, mut piv, mut kid_context, mut epoch, mut timestamp) =
            (None, None, None, None, None);
        for _ in 0..5 {
            // A repeated label finds its slot filled and falls back to coset,
            // which refuses duplicates.
            match r.label()? {
                HDR_KID if kid.is_none() => kid = Some(r.nonempty_bstr()?),
                HDR_PARTIAL_IV if piv.is_none() => piv = Some(r.nonempty_bstr()?),
                HDR_KID_CONTEXT if kid_context.is_none() => kid_context = Some(r.bstr()?),
                HDR_EPOCH if epoch.is_none() => epoch = Some(r.uint()?),
                HDR_TIMESTAMP if timestamp.is_none() => timestamp = Some(r.uint()?),
                _ => return None,
            }
        }
        let ciphertext = r.bstr()?;
        if !r.at_end() {
            return None;
        }
        Some(Outer {
            protected,
            alg,
            kid: kid?,
            partial_iv: piv?,
            kid_context: kid_context?,
            epoch: epoch?,
            timestamp: timestamp?,
            ciphertext,
        })
    }

    /// The inner COSE_Sign1 of a broadcast.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Inner<'a> {
        pub(crate) protected: &'a [u8],
        pub(crate) kid: &'a [u8],
        pub(crate) payload: &'a [u8],
        pub(crate) signature: &'a [u8],
    }

    /// Reads `18([h'A10127', {4: kid}, payload, signature])`, tagged or not;
    /// `None` for anything else.
    pub(crate) fn broadcast_inner(bytes: &[u8]) -> Option<Inner<'_>> {
        let body = bytes.strip_prefix(&[TAG18]).unwrap_or(bytes);
        let mut r = Fast::new(body);
        r.expect(ARRAY4)?;
        let protected = r.bstr().filter(|p| *p == INNER_PROTECTED)?;
        r.expect(MAP1)?;
        if r.label()? != HDR_KID {
            return None;
        }
        let kid = r.nonempty_bstr()?;
        let payload = r.bstr()?;
        let signature = r.bstr()?;
        if !r.at_end() {
            return None;
        }
        Some(Inner {
            protected,
            kid,
            payload,
            signature,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::broadcast::seal_broadcast;
    use crate::credential::EntityCredential;
    use crate::crypto::AeadAlg;
    use crate::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
    use crate::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
    use crate::testrng::TestRng;

    /// coset's view of an outer object, in the fast reader's terms, if it
    /// parses and passes the broadcast header allow-list.
    fn coset_outer(bytes: &[u8]) -> Option<fast::Outer<'static>> {
        let obj = parse_encrypt0(bytes, usize::MAX).ok()?;
        only(
            &obj.protected.header,
            Allowed {
                alg: true,
                ..Default::default()
            },
        )
        .ok()?;
        only(
            &obj.unprotected,
            Allowed {
                kid: true,
                partial_iv: true,
                rest: &[HDR_KID_CONTEXT, HDR_EPOCH, HDR_TIMESTAMP],
                ..Default::default()
            },
        )
        .ok()?;
        let leak = |v: &[u8]| -> &'static [u8] { Box::leak(v.to_vec().into_boxed_slice()) };
        let u = &obj.unprotected;
        Some(fast::Outer {
            protected: leak(protected_original(&obj.protected)),
            alg: alg_of(&obj.protected.header)?,
            kid: leak(&u.key_id),
            partial_iv: leak(&u.partial_iv),
            kid_context: leak(rest_bytes(u, HDR_KID_CONTEXT, "").ok()?),
            epoch: rest_uint(u, HDR_EPOCH, "").ok()?,
            timestamp: rest_uint(u, HDR_TIMESTAMP, "").ok()?,
            ciphertext: leak(obj.ciphertext.as_deref()?),
        })
    }

    fn coset_inner(bytes: &[u8]) -> Option<fast::Inner<'static>> {
        let obj = parse_sign1(bytes, usize::MAX).ok()?;
        require_alg(&obj.protected.header, &obj.unprotected, ALG_EDDSA).ok()?;
        only(
            &obj.protected.header,
            Allowed {
                alg: true,
                kid: true,
                ..Default::default()
            },
        )
        .ok()?;
        only(
            &obj.unprotected,
            Allowed {
                kid: true,
                ..Default::default()
            },
        )
        .ok()?;
        let leak = |v: &[u8]| -> &'static [u8] { Box::leak(v.to_vec().into_boxed_slice()) };
        let kid = if obj.protected.header.key_id.is_empty() {
            &obj.unprotected.key_id
        } else {
            &obj.protected.header.key_id
        };
        Some(fast::Inner {
            protected: leak(protected_original(&obj.protected)),
            kid: leak(kid),
            payload: leak(obj.payload.as_deref()?),
            signature: leak(&obj.signature),
        })
    }

    /// Whenever the fast reader answers, coset accepts the same bytes and
    /// reads the same fields.
    fn agree(bytes: &[u8]) {
        if let Some(f) = fast::broadcast_outer(bytes) {
            assert_eq!(Some(f), coset_outer(bytes), "outer {bytes:02x?}");
        }
        if let Some(f) = fast::broadcast_inner(bytes) {
            assert_eq!(Some(f), coset_inner(bytes), "inner {bytes:02x?}");
        }
    }

    fn mutations(bytes: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
        let flips = (0..bytes.len() * 8).map(move |bit| {
            let mut b = bytes.to_vec();
            b[bit / 8] ^= 1 << (bit % 8);
            b
        });
        let cuts = (0..bytes.len()).map(move |n| bytes[..n].to_vec());
        let extra = [[bytes, &[0x00]].concat(), bytes[1..].to_vec()];
        flips.chain(cuts).chain(extra)
    }

    fn outer_fields(kid: &[u8], extra: &[(i64, HVal<'_>)], epoch: u64) -> Vec<u8> {
        let mut entries = vec![
            (HDR_KID, HVal::Bytes(kid)),
            (HDR_PARTIAL_IV, HVal::Bytes(&[0x05])),
            (HDR_KID_CONTEXT, HVal::Bytes(b"grp")),
            (HDR_EPOCH, HVal::Uint(epoch)),
            (HDR_TIMESTAMP, HVal::Uint(1_700_000_000_000)),
        ];
        entries.extend_from_slice(extra);
        let mut out = Vec::new();
        write_encrypt0(&mut out, &[0xa1, 0x01, 0x01], &entries, &[0xaa; 20]);
        out
    }

    #[test]
    fn fast_reader_agrees_with_coset() {
        let mut rng = TestRng::new(1);
        let signer = EntityCredential::generate(EntityId::new("s").unwrap(), &mut rng);
        for alg in [AeadAlg::A128Gcm, AeadAlg::A256Gcm] {
            let material = GroupKeyMaterial::generate(
                GroupId::new(b"grp").unwrap(),
                Epoch::new(70_000),
                alg,
                vec![AuthorizedSigner {
                    sender_id: SenderId::new([0x01, 0x02]).unwrap(),
                    entity: signer.id().clone(),
                    verifying_key: *signer.public().verifying_key(),
                }],
                None,
                &mut rng,
            )
            .unwrap();
            let ctx = GroupContext::new(&material).unwrap();
            for (seq, len) in [(0u64, 0usize), (23, 24), (300, 255), (1 << 39, 300)] {
                let sealed = seal_broadcast(
                    &ctx,
                    signer.id(),
                    signer.signing_key(),
                    SeqNum::new(seq).unwrap(),
                    UnixMillis::new(1_700_000_000_000 + seq),
                    "t",
                    &vec![7u8; len],
                )
                .unwrap();
                assert!(
                    fast::broadcast_outer(&sealed).is_some(),
                    "sealcast's own shape"
                );
                agree(&sealed);
                for m in mutations(&sealed) {
                    agree(&m);
                }
            }
        }
        // An inner object as sealcast writes it, and its mutations.
        let mut inner = Vec::new();
        write_four(
            &mut inner,
            TAG_SIGN1,
            &[0xa1, 0x01, 0x27],
            &[(HDR_KID, HVal::Bytes(&[0x01]))],
            b"payload",
            &[0x55; 64],
        );
        assert!(fast::broadcast_inner(&inner).is_some());
        assert!(fast::broadcast_inner(&inner[1..]).is_some(), "untagged");
        agree(&inner);
        for m in mutations(&inner) {
            agree(&m);
        }
    }

    #[test]
    fn fast_reader_declines_what_it_does_not_know() {
        let good = outer_fields(&[0x01], &[], 7);
        assert!(fast::broadcast_outer(&good).is_some());
        assert!(fast::broadcast_outer(&good[1..]).is_some(), "untagged");
        // Duplicate label (coset refuses), extra label, empty kid, other tag,
        // non-shortest head: all go to coset.
        let mut dup = Vec::new();
        write_encrypt0(
            &mut dup,
            &[0xa1, 0x01, 0x01],
            &[
                (HDR_KID, HVal::Bytes(&[1])),
                (HDR_KID, HVal::Bytes(&[2])),
                (HDR_KID_CONTEXT, HVal::Bytes(b"grp")),
                (HDR_EPOCH, HVal::Uint(1)),
                (HDR_TIMESTAMP, HVal::Uint(1)),
            ],
            &[0xaa; 20],
        );
        assert!(fast::broadcast_outer(&dup).is_none());
        assert!(coset_outer(&dup).is_none());
        let extra = outer_fields(&[0x01], &[(-70_003, HVal::Uint(1))], 7);
        assert!(fast::broadcast_outer(&extra).is_none());
        let empty_kid = outer_fields(&[], &[], 7);
        assert!(fast::broadcast_outer(&empty_kid).is_none());
        assert!(coset_outer(&empty_kid).is_none());
        let mut other_tag = good.clone();
        other_tag[0] = 0xd2;
        assert!(fast::broadcast_outer(&other_tag).is_none());
        // epoch 7 written as a one-byte-argument head (0x18 0x07).
        let long_form = {
            let short = outer_fields(&[0x01], &[], 7);
            let at = short
                .windows(5)
                .position(|w| w == [0x3a, 0x00, 0x01, 0x11, 0x70])
                .unwrap()
                + 5;
            assert_eq!(short[at], 0x07);
            [&short[..at], &[0x18, 0x07], &short[at + 1..]].concat()
        };
        assert!(fast::broadcast_outer(&long_form).is_none());
        agree(&long_form);
        // Large values stay exact.
        let big = outer_fields(&[0x01], &[], u64::MAX);
        assert_eq!(fast::broadcast_outer(&big).unwrap().epoch, u64::MAX);
        agree(&big);
    }
}

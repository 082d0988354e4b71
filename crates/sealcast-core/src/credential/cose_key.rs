//! The COSE_Key codec of credentials: a writer of OKP keys and a small
//! bounded CBOR reader that borrows from its input.

use super::*;

// ---------------------------------------------------------------------------
// COSE_Key encoding

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Curve {
    Ed25519,
    X25519,
}

impl Curve {
    pub(super) fn crv(self) -> i64 {
        match self {
            Curve::Ed25519 => CRV_ED25519,
            Curve::X25519 => CRV_X25519,
        }
    }

    pub(super) fn alg(self) -> i64 {
        match self {
            Curve::Ed25519 => ALG_EDDSA,
            Curve::X25519 => ALG_ECDH_ES_HKDF_256,
        }
    }

    pub(super) fn accepts_alg(self, alg: i64) -> bool {
        match self {
            Curve::Ed25519 => alg == ALG_EDDSA || alg == ALG_ED25519,
            Curve::X25519 => alg == ALG_ECDH_ES_HKDF_256,
        }
    }
}

/// Writes one OKP COSE_Key with its labels in deterministic order
/// (1, 2, 3, −1, −2, −4 encode as 01, 02, 03, 20, 21, 23).
pub(super) fn write_okp_key(
    out: &mut Vec<u8>,
    curve: Curve,
    kid: &[u8],
    x: &[u8; 32],
    d: Option<&[u8; 32]>,
) {
    cbor::write_head(out, 5, if d.is_some() { 6 } else { 5 });
    cbor::write_int(out, LABEL_KTY);
    cbor::write_int(out, KTY_OKP);
    cbor::write_int(out, LABEL_KID);
    cbor::write_bstr(out, kid);
    cbor::write_int(out, LABEL_ALG);
    cbor::write_int(out, curve.alg());
    cbor::write_int(out, LABEL_CRV);
    cbor::write_int(out, curve.crv());
    cbor::write_int(out, LABEL_X);
    cbor::write_bstr(out, x);
    if let Some(d) = d {
        cbor::write_int(out, LABEL_D);
        cbor::write_bstr(out, d);
    }
}

// ---------------------------------------------------------------------------
// COSE_Key decoding: a small bounded CBOR reader that borrows from the input,
// so private key bytes are never copied into unwiped buffers.

/// One OKP key as read, borrowing from the input. No `Debug`: `d` is secret.
pub(super) struct RawOkpKey<'a> {
    pub(super) curve: Curve,
    pub(super) kid: Option<&'a [u8]>,
    pub(super) x: Option<&'a [u8]>,
    pub(super) d: Option<&'a [u8]>,
}

pub(super) use crate::cbor::{Label, Reader};

pub(super) fn read_key_set(
    bytes: &[u8],
    max_len: usize,
    max_keys: usize,
) -> Result<Vec<RawOkpKey<'_>>> {
    if bytes.len() > max_len {
        return Err(Error::TooLarge {
            what: "COSE_KeySet",
            limit: max_len,
        });
    }
    let mut r = Reader::new(bytes);
    let n = r.expect_major(4, "a COSE_KeySet must be a CBOR array")?;
    if n > max_keys {
        return Err(Error::TooLarge {
            what: "keys in a COSE_KeySet",
            limit: max_keys,
        });
    }
    let keys = (0..n)
        .map(|_| read_okp_key(&mut r))
        .collect::<Result<Vec<_>>>()?;
    if !r.at_end() {
        return Err(Error::Malformed("trailing bytes after the COSE_KeySet"));
    }
    Ok(keys)
}

pub(super) fn read_okp_key<'a>(r: &mut Reader<'a>) -> Result<RawOkpKey<'a>> {
    let n = r.expect_major(5, "a COSE_Key must be a CBOR map")?;
    if n > MAX_KEY_PARAMS {
        return Err(Error::TooLarge {
            what: "COSE_Key parameters",
            limit: MAX_KEY_PARAMS,
        });
    }
    let mut seen: Vec<Label<'a>> = Vec::with_capacity(n);
    let (mut kty, mut crv, mut alg) = (None, None, None);
    let (mut kid, mut x, mut d) = (None, None, None);
    for _ in 0..n {
        let label = r.label()?;
        if seen.contains(&label) {
            return Err(Error::Malformed("duplicate COSE_Key parameter"));
        }
        seen.push(label);
        match label {
            Label::Int(LABEL_KTY) => kty = Some(int_value(r)?),
            Label::Int(LABEL_KID) => kid = Some(r.bstr()?),
            Label::Int(LABEL_ALG) => alg = Some(int_value(r)?),
            Label::Int(LABEL_CRV) => crv = Some(int_value(r)?),
            Label::Int(LABEL_X) => x = Some(r.bstr()?),
            Label::Int(LABEL_D) => d = Some(r.bstr()?),
            // key_ops, Base IV and anything unknown.
            _ => r.skip(MAX_NESTING)?,
        }
    }
    let kty = kty.ok_or(Error::Malformed("COSE_Key without kty"))?;
    if kty != KTY_OKP {
        return Err(Error::UnsupportedAlgorithm(kty));
    }
    let curve = match crv.ok_or(Error::Malformed("OKP COSE_Key without crv"))? {
        CRV_ED25519 => Curve::Ed25519,
        CRV_X25519 => Curve::X25519,
        other => return Err(Error::UnsupportedAlgorithm(other)),
    };
    if let Some(alg) = alg
        && !curve.accepts_alg(alg)
    {
        return Err(Error::UnsupportedAlgorithm(alg));
    }
    Ok(RawOkpKey { curve, kid, x, d })
}

/// Groups public keys by `kid` into credentials.
pub(super) fn group_public_keys(
    keys: Vec<RawOkpKey<'_>>,
) -> Result<BTreeMap<EntityId, PublicCredential>> {
    if keys.iter().any(|k| k.d.is_some()) {
        return Err(Error::InvalidKey(
            "this is a private key file (a key carries d); refusing to read it as public",
        ));
    }
    let mut halves: BTreeMap<EntityId, (Option<VerifyingKey>, Option<X25519Public>)> =
        BTreeMap::new();
    for key in keys {
        let id = EntityId::from_bytes(key.kid.ok_or(Error::Malformed("COSE_Key without kid"))?)?;
        let x = key.x.ok_or(Error::Malformed("public COSE_Key without x"))?;
        let slot = halves.entry(id).or_default();
        let duplicate = match key.curve {
            Curve::Ed25519 => slot.0.replace(crypto::ed25519_public(x)?).is_some(),
            Curve::X25519 => slot.1.replace(x25519_public_key(x)?).is_some(),
        };
        if duplicate {
            return Err(Error::Malformed("two keys of the same kind for one kid"));
        }
    }
    halves
        .into_iter()
        .map(|(id, pair)| match pair {
            (Some(verifying), Some(agreement)) => Ok((
                id.clone(),
                PublicCredential {
                    id,
                    verifying,
                    agreement,
                },
            )),
            _ => Err(Error::Malformed(
                "an entity lacks its Ed25519 or its X25519 key",
            )),
        })
        .collect()
}

/// The integer value of kty, crv or alg.
fn int_value(r: &mut Reader<'_>) -> Result<i64> {
    match r.label()? {
        Label::Int(n) => Ok(n),
        Label::Text(_) => Err(Error::Malformed(
            "text-valued kty, crv and alg are not supported",
        )),
    }
}

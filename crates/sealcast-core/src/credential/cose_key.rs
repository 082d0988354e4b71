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

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Label<'a> {
    Int(i64),
    Text(&'a str),
}

pub(super) struct Reader<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(Error::Malformed("CBOR item runs past the end"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Major type and argument of the next item (floats and simple values
    /// are consumed whole).
    pub(super) fn head(&mut self) -> Result<(u8, u64)> {
        let [first] = self.fixed::<1>()?;
        let arg = match first & 0x1f {
            info @ 0..=23 => u64::from(info),
            24 => u64::from(u8::from_be_bytes(self.fixed()?)),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            31 => return Err(Error::Malformed("indefinite-length CBOR is not accepted")),
            _ => return Err(Error::Malformed("reserved CBOR additional information")),
        };
        Ok((first >> 5, arg))
    }

    /// A length or count; never more than the bytes left (every item takes
    /// at least one byte), which bounds all loops by the input size.
    pub(super) fn length(&self, arg: u64) -> Result<usize> {
        usize::try_from(arg)
            .ok()
            .filter(|&n| n <= self.rest.len())
            .ok_or(Error::Malformed("CBOR length runs past the end"))
    }

    pub(super) fn expect_major(&mut self, major: u8, what: &'static str) -> Result<usize> {
        let (m, arg) = self.head()?;
        if m != major {
            return Err(Error::Malformed(what));
        }
        self.length(arg)
    }

    pub(super) fn bstr(&mut self) -> Result<&'a [u8]> {
        let n = self.expect_major(2, "expected a CBOR byte string")?;
        self.take(n)
    }

    pub(super) fn label(&mut self) -> Result<Label<'a>> {
        let (m, arg) = self.head()?;
        match m {
            0 => i64::try_from(arg)
                .map(Label::Int)
                .map_err(|_| Error::Malformed("CBOR integer out of range")),
            1 => i64::try_from(arg)
                .map(|n| Label::Int(-1 - n))
                .map_err(|_| Error::Malformed("CBOR integer out of range")),
            3 => {
                let n = self.length(arg)?;
                core::str::from_utf8(self.take(n)?)
                    .map(Label::Text)
                    .map_err(|_| Error::Malformed("CBOR text is not UTF-8"))
            }
            _ => Err(Error::Malformed("expected a CBOR integer or text string")),
        }
    }

    pub(super) fn int(&mut self) -> Result<i64> {
        match self.label()? {
            Label::Int(n) => Ok(n),
            Label::Text(_) => Err(Error::Malformed(
                "text-valued kty, crv and alg are not supported",
            )),
        }
    }

    /// Skips one well-formed item, at most [`MAX_NESTING`] levels deep.
    pub(super) fn skip(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_NESTING {
            return Err(Error::Malformed("CBOR nested too deeply"));
        }
        let (major, arg) = self.head()?;
        match major {
            2 => {
                let n = self.length(arg)?;
                self.take(n)?;
            }
            3 => {
                let n = self.length(arg)?;
                core::str::from_utf8(self.take(n)?)
                    .map_err(|_| Error::Malformed("CBOR text is not UTF-8"))?;
            }
            4 => {
                for _ in 0..self.length(arg)? {
                    self.skip(depth + 1)?;
                }
            }
            5 => {
                for _ in 0..self.length(arg)? {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
            }
            6 => self.skip(depth + 1)?,
            // 0, 1: integers; 7: simple values and floats, consumed by head().
            _ => {}
        }
        Ok(())
    }
}

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
    let mut r = Reader { rest: bytes };
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
    if !r.rest.is_empty() {
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
            Label::Int(LABEL_KTY) => kty = Some(r.int()?),
            Label::Int(LABEL_KID) => kid = Some(r.bstr()?),
            Label::Int(LABEL_ALG) => alg = Some(r.int()?),
            Label::Int(LABEL_CRV) => crv = Some(r.int()?),
            Label::Int(LABEL_X) => x = Some(r.bstr()?),
            Label::Int(LABEL_D) => d = Some(r.bstr()?),
            // key_ops, Base IV and anything unknown.
            _ => r.skip(0)?,
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

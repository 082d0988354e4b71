//! Key checks shared by the credential types: low-order X25519 points,
//! canonical encodings, secret lengths, PEM size.

use super::*;

// ---------------------------------------------------------------------------
// Key checks

/// The canonical encodings of the small-order points of Curve25519 and its
/// twist (0, 1, two points of order 8, p − 1); see cr.yp.to/ecdh.html. The
/// non-canonical aliases (≥ p or top bit set) are refused separately.
pub(super) const LOW_ORDER_U: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Whether the little-endian u-coordinate is below p = 2^255 − 19.
pub(super) fn is_canonical_u(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    let at_least_p = u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff) && u[0] >= 0xed;
    !at_least_p
}

/// Parses an X25519 public key: 32 bytes, canonically encoded, not of small
/// order. (A small-order key would make every agreement with it all-zero.)
pub(crate) fn x25519_public_key(bytes: &[u8]) -> Result<X25519Public> {
    let u: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Error::InvalidKey("X25519 public key must be 32 bytes"))?;
    if !is_canonical_u(&u) {
        return Err(Error::InvalidKey(
            "X25519 public key is not canonically encoded",
        ));
    }
    if LOW_ORDER_U.contains(&u) {
        return Err(Error::InvalidKey("X25519 public key has small order"));
    }
    Ok(X25519Public::from(u))
}

pub(super) fn secret32(d: Option<&[u8]>) -> Result<Zeroizing<[u8; 32]>> {
    let d = d.ok_or(Error::InvalidKey("private key lacks d"))?;
    if d.len() != 32 {
        return Err(Error::InvalidKey("private key d must be 32 bytes"));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(d);
    Ok(out)
}

pub(super) fn check_pem_len(pem: &str) -> Result<()> {
    if pem.len() > MAX_PEM_LEN {
        return Err(Error::TooLarge {
            what: "PEM text",
            limit: MAX_PEM_LEN,
        });
    }
    Ok(())
}

pub(super) struct Hex<'a>(pub(super) &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

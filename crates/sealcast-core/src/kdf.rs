//! Key and nonce derivation in the manner of OSCORE (RFC 8613 §3.2, §5.2).
//!
//! `info = [id, id_context, alg_aead, type, L]` as a CBOR array, HKDF-SHA256
//! with the master salt as salt and the master secret as input keying
//! material. The AEAD algorithm is a parameter (not fixed), so RFC 8613
//! Appendix C, which uses AES-CCM-16-64-128 (alg 10), reproduces exactly.

use zeroize::Zeroizing;

use crate::crypto::hkdf_sha256;
use crate::error::{Error, Result};

/// The `type` field of the HKDF info structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfType {
    /// A sender or recipient key (`"Key"`).
    Key,
    /// The common IV (`"IV"`).
    Iv,
}

impl KdfType {
    fn label(self) -> &'static str {
        match self {
            KdfType::Key => "Key",
            KdfType::Iv => "IV",
        }
    }
}

/// Encodes the RFC 8613 `info` array.
pub fn info(
    id: &[u8],
    id_context: Option<&[u8]>,
    alg_aead: i64,
    kind: KdfType,
    len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + id.len() + id_context.map_or(0, <[u8]>::len));
    out.push(0x85); // array(5)
    crate::cbor::write_bstr(&mut out, id);
    match id_context {
        Some(ctx) => crate::cbor::write_bstr(&mut out, ctx),
        None => out.push(0xf6), // null
    }
    crate::cbor::write_int(&mut out, alg_aead);
    crate::cbor::write_tstr(&mut out, kind.label());
    crate::cbor::write_uint(&mut out, len as u64);
    out
}

/// Derives `len` bytes: `HKDF-SHA256(salt = master_salt, IKM = master_secret,
/// info = [id, id_context, alg_aead, type, L])`.
pub fn derive(
    master_secret: &[u8],
    master_salt: &[u8],
    id: &[u8],
    id_context: Option<&[u8]>,
    alg_aead: i64,
    kind: KdfType,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    hkdf_sha256(
        master_salt,
        master_secret,
        &info(id, id_context, alg_aead, kind, len),
        len,
    )
}

/// Builds an AEAD nonce as RFC 8613 §5.2 does: the sender id left-padded to
/// `nonce_len − 6` bytes, preceded by its length and followed by the Partial
/// IV left-padded to 5 bytes, all XORed with the common IV.
pub fn nonce(common_iv: &[u8], sender_id: &[u8], partial_iv: &[u8]) -> Result<Vec<u8>> {
    let n = common_iv.len();
    if n < 7 {
        return Err(Error::InvalidKey("common IV shorter than 7 bytes"));
    }
    let id_space = n - 6;
    if sender_id.len() > id_space {
        return Err(Error::InvalidId {
            kind: "sender id",
            reason: "longer than the nonce allows",
        });
    }
    if partial_iv.len() > 5 {
        return Err(Error::Malformed("partial IV longer than 5 bytes"));
    }
    let mut out = vec![0u8; n];
    out[0] = sender_id.len() as u8;
    out[1 + id_space - sender_id.len()..1 + id_space].copy_from_slice(sender_id);
    out[n - partial_iv.len()..].copy_from_slice(partial_iv);
    for (o, iv) in out.iter_mut().zip(common_iv) {
        *o ^= iv;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_layout() {
        let iv = [0u8; 12];
        let n = nonce(&iv, &[0xaa, 0xbb], &[0x01, 0x02]).unwrap();
        assert_eq!(n, vec![2, 0, 0, 0, 0, 0xaa, 0xbb, 0, 0, 0, 0x01, 0x02]);
        assert!(nonce(&iv, &[0; 7], &[1]).is_err());
        assert!(nonce(&iv, &[0; 6], &[0; 6]).is_err());
    }
}

//! Single-message services (oneM2M TS-0003): encryption to one recipient
//! and integrity check values.
//!
//! **Encrypt to one recipient** is a COSE_Encrypt (tag 96) with one
//! recipient using ECDH-ES + HKDF-256 over X25519 (RFC 9053 §6.4), the
//! structure of the COSE WG `X25519-tests` examples:
//!
//! ```text
//! 96([ h'A10101' / {1: alg} /, { 5: iv },  ciphertext,
//!      [[ h'A1013818' / {1: -25} /,
//!         { -1: {1: 1, -1: 4, -2: ephemeral_x}, 4: recipient_kid }, h'' ]] ])
//! CEK = HKDF-SHA256(salt = none, IKM = X25519(eph, recipient),
//!        info = COSE_KDF_Context [alg, [nil,nil,nil], [nil,nil,nil],
//!                                 [key_bits, recipient_protected]])
//! ```
//!
//! **Integrity check value** is a COSE_Mac0 (tag 17) with HMAC 256/256.

use hmac::{Hmac, KeyInit, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::cbor::{write_array, write_bstr, write_int, write_uint};
use crate::cose::{
    self, ALG_ECDH_ES_HKDF_256, ALG_HMAC_256_256, HDR_ALG, HDR_EPHEMERAL_KEY, HDR_IV, HDR_KID, HVal,
};
use crate::crypto::{AeadAlg, AeadKey, NONCE_LEN, ct_eq, hkdf_sha256};
use crate::error::{Error, Result};
use crate::ids::KeyId;

/// Largest single-message object accepted.
pub const MAX_SINGLE_LEN: usize = 1 << 20;

/// `COSE_KDF_Context` for ECDH-ES with no party info (RFC 9053 §5.2).
pub fn kdf_context(alg: AeadAlg, recipient_protected: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + recipient_protected.len());
    write_array(&mut out, 4);
    write_int(&mut out, alg.cose_id());
    for _ in 0..2 {
        write_array(&mut out, 3);
        out.extend_from_slice(&[0xf6, 0xf6, 0xf6]);
    }
    write_array(&mut out, 2);
    write_uint(&mut out, (alg.key_len() * 8) as u64);
    write_bstr(&mut out, recipient_protected);
    out
}

fn derive_cek(alg: AeadAlg, shared: &[u8; 32], recipient_protected: &[u8]) -> Result<AeadKey> {
    let cek = hkdf_sha256(
        &[],
        shared,
        &kdf_context(alg, recipient_protected),
        alg.key_len(),
    )?;
    AeadKey::new(alg, &cek)
}

/// Encrypts `plaintext` to one X25519 recipient with fresh randomness.
pub fn encrypt_to<R: CryptoRng + ?Sized>(
    alg: AeadAlg,
    recipient_kid: &[u8],
    recipient: &X25519Public,
    plaintext: &[u8],
    external_aad: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let mut eph = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(eph.as_mut());
    let mut iv = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut iv);
    hazmat::encrypt_to_with_randomness(
        alg,
        recipient_kid,
        recipient,
        plaintext,
        external_aad,
        &eph,
        &iv,
    )
}

/// Operations with caller-chosen randomness. Hazardous: reusing an
/// ephemeral secret or IV breaks confidentiality. For test vectors
/// (the COSE WG `rng_stream`) only.
pub mod hazmat {
    use super::*;

    /// [`encrypt_to`] with the ephemeral secret and IV given.
    pub fn encrypt_to_with_randomness(
        alg: AeadAlg,
        recipient_kid: &[u8],
        recipient: &X25519Public,
        plaintext: &[u8],
        external_aad: &[u8],
        ephemeral_secret: &[u8; 32],
        iv: &[u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        if recipient_kid.is_empty() {
            // COSE parsers (coset among them) refuse an empty kid, so such an
            // object could never be decrypted.
            return Err(Error::InvalidId {
                kind: "recipient kid",
                reason: "empty",
            });
        }
        let eph = StaticSecret::from(*ephemeral_secret);
        let eph_public = X25519Public::from(&eph);
        let shared = crate::crypto::x25519(ephemeral_secret, recipient.as_bytes())?;
        let recipient_protected =
            cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_ECDH_ES_HKDF_256))]);
        let cek = derive_cek(alg, &shared, &recipient_protected)?;
        let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(alg.cose_id()))]);
        let aad = cose::enc_structure("Encrypt", &protected, external_aad);
        let ciphertext = cek.seal(iv, &aad, plaintext)?;

        let mut eph_key = Vec::with_capacity(48);
        cose::header_map(
            &mut eph_key,
            &[
                (1, HVal::Int(1)),
                (-1, HVal::Int(4)),
                (-2, HVal::Bytes(eph_public.as_bytes())),
            ],
        );
        let mut out = Vec::with_capacity(ciphertext.len() + 128);
        crate::cbor::write_head(&mut out, 6, cose::TAG_ENCRYPT);
        write_array(&mut out, 4);
        write_bstr(&mut out, &protected);
        cose::header_map(&mut out, &[(HDR_IV, HVal::Bytes(iv))]);
        write_bstr(&mut out, &ciphertext);
        write_array(&mut out, 1);
        write_array(&mut out, 3);
        write_bstr(&mut out, &recipient_protected);
        cose::header_map(
            &mut out,
            &[
                (HDR_EPHEMERAL_KEY, HVal::Raw(&eph_key)),
                (HDR_KID, HVal::Bytes(recipient_kid)),
            ],
        );
        write_bstr(&mut out, &[]);
        Ok(out)
    }
}

/// Reads the X25519 ephemeral public key from a recipient header.
fn ephemeral_key(h: &coset::Header) -> Result<[u8; 32]> {
    const BAD: Error = Error::Malformed("ephemeral key");
    let Some(ciborium::Value::Map(entries)) = cose::rest_value(h, HDR_EPHEMERAL_KEY) else {
        return Err(BAD);
    };
    let mut kty = None;
    let mut crv = None;
    let mut x = None;
    for (k, v) in entries {
        let label = k
            .as_integer()
            .and_then(|i| i64::try_from(i).ok())
            .ok_or(BAD)?;
        let slot = match label {
            1 => &mut kty,
            -1 => &mut crv,
            -2 => &mut x,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(BAD);
        }
    }
    let int = |v: Option<&ciborium::Value>| {
        v.and_then(|v| v.as_integer())
            .and_then(|i| i64::try_from(i).ok())
    };
    if int(kty) != Some(1) || int(crv) != Some(4) {
        return Err(Error::UnsupportedAlgorithm(int(crv).unwrap_or(0)));
    }
    let x = x.and_then(|v| v.as_bytes()).ok_or(BAD)?;
    x.as_slice().try_into().map_err(|_| BAD)
}

/// Decrypts a COSE_Encrypt addressed (by `kid`) to `own_kid`.
pub fn decrypt_from(
    own_kid: &[u8],
    own_secret: &StaticSecret,
    bytes: &[u8],
    external_aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let obj = cose::parse_encrypt(bytes, MAX_SINGLE_LEN)?;
    decrypt_parsed(own_kid, own_secret, &obj, external_aad)
}

pub(crate) fn decrypt_parsed(
    own_kid: &[u8],
    own_secret: &StaticSecret,
    obj: &coset::CoseEncrypt,
    external_aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if obj.unprotected.alg.is_some() {
        return Err(Error::Malformed("alg must be protected"));
    }
    let alg_id = cose::alg_of(&obj.protected.header).ok_or(Error::Malformed("missing alg"))?;
    let alg = AeadAlg::from_cose_id(alg_id)?;
    if obj.recipients.len() > 16 {
        return Err(Error::TooLarge {
            what: "recipients",
            limit: 16,
        });
    }
    let recipient = obj
        .recipients
        .iter()
        .find(|r| r.unprotected.key_id == own_kid || r.protected.header.key_id == own_kid)
        .ok_or(Error::ContextMismatch("recipient"))?;
    cose::require_alg(
        &recipient.protected.header,
        &recipient.unprotected,
        ALG_ECDH_ES_HKDF_256,
    )?;
    if recipient
        .ciphertext
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        || !recipient.recipients.is_empty()
    {
        return Err(Error::Malformed(
            "direct key agreement carries no wrapped key",
        ));
    }
    let eph = ephemeral_key(&recipient.unprotected)?;
    let shared = crate::crypto::x25519(&own_secret.to_bytes(), &eph)?;
    let cek = derive_cek(alg, &shared, cose::protected_original(&recipient.protected))?;
    if obj.unprotected.iv.len() != NONCE_LEN {
        return Err(Error::Malformed("IV must be 12 bytes"));
    }
    let aad = cose::enc_structure(
        "Encrypt",
        cose::protected_original(&obj.protected),
        external_aad,
    );
    let ciphertext = obj
        .ciphertext
        .as_deref()
        .ok_or(Error::Malformed("detached ciphertext"))?;
    cek.open(&obj.unprotected.iv, &aad, ciphertext)
}

/// A key for integrity check values: 32 to 64 bytes, with a key id.
/// Zeroized on drop; `Debug` shows only the key id.
#[derive(Clone)]
pub struct MacKey {
    kid: KeyId,
    key: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MacKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl MacKey {
    /// Checks the length (32 to 64 bytes).
    pub fn new(kid: KeyId, key: &[u8]) -> Result<Self> {
        if key.len() < 32 || key.len() > 64 {
            return Err(Error::InvalidKey("HMAC-256 key must be 32 to 64 bytes"));
        }
        Ok(Self {
            kid,
            key: Zeroizing::new(key.to_vec()),
        })
    }
    /// The key id.
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }
    fn tag(&self, protected: &[u8], external_aad: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).map_err(|_| Error::InvalidKey("HMAC key"))?;
        mac.update(&cose::mac0_structure(protected, external_aad, payload));
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

/// Creates a COSE_Mac0 (HMAC 256/256) over `payload`.
pub fn mac0_create(key: &MacKey, payload: &[u8], external_aad: &[u8]) -> Result<Vec<u8>> {
    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_HMAC_256_256))]);
    let tag = key.tag(&protected, external_aad, payload)?;
    let mut out = Vec::with_capacity(payload.len() + 64);
    cose::write_four(
        &mut out,
        cose::TAG_MAC0,
        &protected,
        &[(HDR_KID, HVal::Bytes(key.kid.as_bytes()))],
        payload,
        &tag,
    );
    Ok(out)
}

/// Verifies a COSE_Mac0 and returns its payload. The tag comparison is
/// constant-time.
pub fn mac0_verify(key: &MacKey, bytes: &[u8], external_aad: &[u8]) -> Result<Vec<u8>> {
    let obj = cose::parse_mac0(bytes, MAX_SINGLE_LEN)?;
    cose::require_alg(&obj.protected.header, &obj.unprotected, ALG_HMAC_256_256)?;
    let kid = if obj.protected.header.key_id.is_empty() {
        &obj.unprotected.key_id
    } else {
        &obj.protected.header.key_id
    };
    // The kid must name this key: a Mac0 without one is refused too, so no
    // edit of the (unauthenticated) unprotected header goes unnoticed.
    if kid.as_slice() != key.kid.as_bytes() {
        return Err(Error::UnknownSender);
    }
    let payload = obj.payload.ok_or(Error::Malformed("detached payload"))?;
    let expected = key.tag(
        cose::protected_original(&obj.protected),
        external_aad,
        &payload,
    )?;
    if !ct_eq(&expected, &obj.tag) {
        return Err(Error::BadSignature);
    }
    Ok(payload)
}

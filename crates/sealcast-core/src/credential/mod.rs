//! Entity credentials and the files they live in.
//!
//! Every entity (manager, agent, device, headend) owns an Ed25519 signing key
//! and an X25519 key-agreement key: its [`EntityCredential`]. The public
//! halves and the entity's id form its [`PublicCredential`]; a [`TrustStore`]
//! holds the public credentials an entity trusts.
//!
//! # File format
//!
//! Keys are stored as a COSE_KeySet (RFC 9052 §7): a CBOR array of OKP keys
//! (RFC 9053 §7.2). An entity has one Ed25519 key (kty 1, crv 6, alg −8
//! EdDSA) and one X25519 key (kty 1, crv 4, alg −25 ECDH-ES + HKDF-256), both
//! with `kid` = the entity id's bytes. A private file adds `d` to both keys.
//! Output is deterministically encoded (RFC 8949 §4.2.1), so the same keys
//! always give the same bytes.
//!
//! Reading is bounded and strict: definite-length CBOR only, no duplicate
//! map labels, no trailing bytes, nesting of unknown values at most
//! [`MAX_NESTING`] deep. `alg` may be absent; when present it must be −8 or
//! −19 (Ed25519) for an Ed25519 key and −25 for an X25519 key. `key_ops`,
//! `Base IV` and unknown parameters are skipped. In a private key `x` may be
//! omitted (RFC 9053 §7.2); when it is present it must match `d`.
//!
//! # PEM
//!
//! Ed25519 keys also travel as PKCS#8 / SPKI PEM (RFC 8410), the form
//! `openssl genpkey -algorithm ed25519` writes.
//!
//! # Secrets
//!
//! The secret keys are dalek types that zeroize on drop; every buffer this
//! module fills with secret bytes is [`Zeroizing`]. Nothing here prints a
//! secret: [`EntityCredential`]'s `Debug` shows the id and public keys only.

use core::fmt;
use std::collections::BTreeMap;

use coset::iana;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::cbor;
use crate::crypto;
use crate::error::{Error, Result};
use crate::ids::EntityId;

/// Largest single-entity credential file (private or public) accepted, in
/// bytes. Two keys take under 300.
pub const MAX_CREDENTIAL_FILE_LEN: usize = 4 * 1024;
/// Most keys accepted in a single-entity credential file.
pub const MAX_CREDENTIAL_KEYS: usize = 8;
/// Largest PEM text accepted.
pub const MAX_PEM_LEN: usize = 4 * 1024;
/// Deepest nesting of CBOR arrays, maps and tags inside a skipped parameter.
pub const MAX_NESTING: usize = 8;
/// Most parameters accepted in one COSE_Key map.
pub const MAX_KEY_PARAMS: usize = 16;

const LABEL_KTY: i64 = iana::KeyParameter::Kty as i64;
const LABEL_KID: i64 = iana::KeyParameter::Kid as i64;
const LABEL_ALG: i64 = iana::KeyParameter::Alg as i64;
const LABEL_CRV: i64 = iana::OkpKeyParameter::Crv as i64;
const LABEL_X: i64 = iana::OkpKeyParameter::X as i64;
const LABEL_D: i64 = iana::OkpKeyParameter::D as i64;
const KTY_OKP: i64 = iana::KeyType::OKP as i64;
const CRV_ED25519: i64 = iana::EllipticCurve::Ed25519 as i64;
const CRV_X25519: i64 = iana::EllipticCurve::X25519 as i64;
const ALG_EDDSA: i64 = iana::Algorithm::EdDSA as i64;
const ALG_ED25519: i64 = iana::Algorithm::Ed25519 as i64;
const ALG_ECDH_ES_HKDF_256: i64 = iana::Algorithm::ECDH_ES_HKDF_256 as i64;

/// Upper bound of one encoded OKP key besides its kid: map head 1, kty 2,
/// kid head 3, alg 3, crv 2, x 35, d 35. Used to size buffers that hold
/// secrets so that they never reallocate (and leave an unwiped copy behind).
const OKP_KEY_OVERHEAD: usize = 96;

// ---------------------------------------------------------------------------
// Public credential

/// The public half of an entity's keys: its id, its Ed25519 verifying key
/// (decompressed once, so verifiers reuse it) and its X25519 public key.
///
/// A value that exists has passed the checks of [`PublicCredential::new`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicCredential {
    id: EntityId,
    verifying: VerifyingKey,
    agreement: X25519Public,
}

impl PublicCredential {
    /// Checks and wraps the public keys of entity `id`: refuses small-order
    /// or non-point Ed25519 keys, and X25519 keys that are not canonically
    /// encoded or have small order (all-zero included).
    pub fn new(id: EntityId, ed25519_public: &[u8], x25519_public: &[u8]) -> Result<Self> {
        Ok(Self {
            id,
            verifying: crypto::ed25519_public(ed25519_public)?,
            agreement: x25519_public_key(x25519_public)?,
        })
    }

    /// The entity's id (also the `kid` of both keys).
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// The Ed25519 key that verifies the entity's signatures.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// The entity's X25519 key-agreement public key.
    pub fn agreement_key(&self) -> &X25519Public {
        &self.agreement
    }

    /// Encodes the credential as a public COSE_KeySet (no `d`).
    pub fn to_cose_key_set(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(1 + 2 * (OKP_KEY_OVERHEAD + self.id.as_bytes().len()));
        cbor::write_array(&mut out, 2);
        self.write_keys(&mut out);
        Ok(out)
    }

    /// Decodes a public COSE_KeySet holding exactly one entity's Ed25519 and
    /// X25519 keys. A file whose keys carry `d` is refused: it is a private
    /// file and must not be handed out as a public one.
    pub fn from_cose_key_set(bytes: &[u8]) -> Result<Self> {
        let keys = read_key_set(bytes, MAX_CREDENTIAL_FILE_LEN, MAX_CREDENTIAL_KEYS)?;
        let mut creds = group_public_keys(keys)?.into_values();
        match (creds.next(), creds.next()) {
            (Some(cred), None) => Ok(cred),
            (None, _) => Err(Error::Malformed("COSE_KeySet holds no credential")),
            (Some(_), Some(_)) => Err(Error::Malformed(
                "COSE_KeySet holds keys of more than one entity",
            )),
        }
    }

    /// The Ed25519 public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn ed25519_public_pem(&self) -> Result<String> {
        self.verifying
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| Error::InvalidKey("Ed25519 public key could not be PEM-encoded"))
    }

    /// Reads an Ed25519 public key from SPKI PEM (what `openssl pkey -pubout`
    /// writes); refuses small-order keys.
    pub fn ed25519_from_public_pem(pem: &str) -> Result<VerifyingKey> {
        check_pem_len(pem)?;
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|_| Error::InvalidKey("not an Ed25519 SPKI PEM public key"))?;
        crypto::ed25519_public(key.as_bytes())
    }

    fn write_keys(&self, out: &mut Vec<u8>) {
        let kid = self.id.as_bytes();
        write_okp_key(out, Curve::Ed25519, kid, self.verifying.as_bytes(), None);
        write_okp_key(out, Curve::X25519, kid, self.agreement.as_bytes(), None);
    }
}

impl fmt::Debug for PublicCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicCredential")
            .field("id", &self.id)
            .field("ed25519", &Hex(self.verifying.as_bytes()))
            .field("x25519", &Hex(self.agreement.as_bytes()))
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Entity credential (private)

/// An entity's own keys: its id, Ed25519 signing key and X25519 static
/// key-agreement secret. The secrets zeroize on drop; `Debug` shows only the
/// id and the public keys. Deliberately not `Clone`.
pub struct EntityCredential {
    public: PublicCredential,
    signing: SigningKey,
    agreement: StaticSecret,
}

impl EntityCredential {
    /// Draws fresh keys for entity `id` from `rng`.
    pub fn generate<R>(id: EntityId, rng: &mut R) -> Self
    where
        R: rand_core::CryptoRng + ?Sized,
    {
        let signing = SigningKey::generate(rng);
        let agreement = StaticSecret::random_from_rng(rng);
        Self::from_keys(id, signing, agreement)
    }

    /// Builds a credential from a 32-byte Ed25519 seed (RFC 8032 secret key)
    /// and a 32-byte X25519 scalar (clamped on use).
    pub fn from_secret_bytes(
        id: EntityId,
        ed25519_secret: &[u8; 32],
        x25519_secret: &[u8; 32],
    ) -> Self {
        let signing = SigningKey::from_bytes(ed25519_secret);
        let agreement = StaticSecret::from(*x25519_secret);
        Self::from_keys(id, signing, agreement)
    }

    /// A clamped X25519 scalar times the base point is never a small-order
    /// point (it lies in the prime-order subgroup and is not the identity),
    /// and an Ed25519 public key derived from a seed is never weak, so the
    /// public half needs no checks here.
    fn from_keys(id: EntityId, signing: SigningKey, agreement: StaticSecret) -> Self {
        let public = PublicCredential {
            id,
            verifying: signing.verifying_key(),
            agreement: X25519Public::from(&agreement),
        };
        Self {
            public,
            signing,
            agreement,
        }
    }

    /// The entity's id.
    pub fn id(&self) -> &EntityId {
        &self.public.id
    }

    /// The Ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The X25519 static key-agreement secret.
    pub fn agreement_secret(&self) -> &StaticSecret {
        &self.agreement
    }

    /// The public half: what others put in their trust store.
    pub fn public(&self) -> PublicCredential {
        self.public.clone()
    }

    /// Encodes both keys, with `d`, as a private COSE_KeySet. Write the
    /// result to a file only the entity can read (mode 0600).
    pub fn to_cose_key_set(&self) -> Result<Zeroizing<Vec<u8>>> {
        let kid = self.public.id.as_bytes();
        // Sized up front: a reallocation would leave an unwiped copy.
        let mut out = Zeroizing::new(Vec::with_capacity(1 + 2 * (OKP_KEY_OVERHEAD + kid.len())));
        cbor::write_array(&mut out, 2);
        write_okp_key(
            &mut out,
            Curve::Ed25519,
            kid,
            self.public.verifying.as_bytes(),
            Some(self.signing.as_bytes()),
        );
        write_okp_key(
            &mut out,
            Curve::X25519,
            kid,
            self.public.agreement.as_bytes(),
            Some(self.agreement.as_bytes()),
        );
        Ok(out)
    }

    /// Decodes a private COSE_KeySet: exactly one Ed25519 and one X25519 key,
    /// both with `d` and the same `kid` (the entity id). Where a key carries
    /// `x`, it must be the public key of its `d`; a mismatched file is
    /// refused.
    pub fn from_cose_key_set(bytes: &[u8]) -> Result<Self> {
        let keys = read_key_set(bytes, MAX_CREDENTIAL_FILE_LEN, MAX_CREDENTIAL_KEYS)?;
        let (mut ed, mut xk) = (None, None);
        for key in &keys {
            if key.d.is_none() {
                return Err(Error::InvalidKey(
                    "a key of a private credential file lacks d (is this a public file?)",
                ));
            }
            let slot = match key.curve {
                Curve::Ed25519 => &mut ed,
                Curve::X25519 => &mut xk,
            };
            if slot.is_some() {
                return Err(Error::Malformed(
                    "credential file holds two keys of the same kind",
                ));
            }
            *slot = Some(key);
        }
        let (Some(ed), Some(xk)) = (ed, xk) else {
            return Err(Error::Malformed(
                "credential file needs one Ed25519 and one X25519 key",
            ));
        };
        let kid = ed.kid.ok_or(Error::Malformed("COSE_Key without kid"))?;
        if xk.kid != Some(kid) {
            return Err(Error::Malformed(
                "the Ed25519 and X25519 keys carry different kids",
            ));
        }
        let id = EntityId::from_bytes(kid)?;
        let ed_d = secret32(ed.d)?;
        let x_d = secret32(xk.d)?;
        let cred = Self::from_secret_bytes(id, &ed_d, &x_d);
        if ed
            .x
            .is_some_and(|x| x != cred.public.verifying.as_bytes().as_slice())
        {
            return Err(Error::InvalidKey("Ed25519 key: x does not match d"));
        }
        if xk
            .x
            .is_some_and(|x| x != cred.public.agreement.as_bytes().as_slice())
        {
            return Err(Error::InvalidKey("X25519 key: x does not match d"));
        }
        Ok(cred)
    }

    /// The Ed25519 key as unencrypted PKCS#8 v1 PEM
    /// (`-----BEGIN PRIVATE KEY-----`, RFC 8410), readable by OpenSSL.
    pub fn ed25519_to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        // v1 (no embedded public key) is what OpenSSL itself writes.
        let keypair = KeypairBytes {
            secret_key: self.signing.to_bytes(),
            public_key: None,
        };
        keypair
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| Error::InvalidKey("Ed25519 key could not be PKCS#8-encoded"))
    }

    /// Builds a credential from an unencrypted Ed25519 PKCS#8 PEM (v1 or v2,
    /// as `openssl genpkey -algorithm ed25519` writes) and an X25519 scalar.
    /// A v2 document's embedded public key must match its secret.
    pub fn from_ed25519_pkcs8_pem(
        id: EntityId,
        pem: &str,
        x25519_secret: &[u8; 32],
    ) -> Result<Self> {
        check_pem_len(pem)?;
        let signing = SigningKey::from_pkcs8_pem(pem)
            .map_err(|_| Error::InvalidKey("not an unencrypted Ed25519 PKCS#8 PEM private key"))?;
        Ok(Self::from_keys(
            id,
            signing,
            StaticSecret::from(*x25519_secret),
        ))
    }
}

impl fmt::Debug for EntityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityCredential")
            .field("id", &self.public.id)
            .field("ed25519_public", &Hex(self.public.verifying.as_bytes()))
            .field("x25519_public", &Hex(self.public.agreement.as_bytes()))
            .finish_non_exhaustive()
    }
}

mod checks;
mod cose_key;
mod trust;

#[cfg(test)]
mod tests;

use checks::*;
use cose_key::*;
pub use trust::TrustStore;

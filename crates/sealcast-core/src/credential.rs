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

// ---------------------------------------------------------------------------
// Trust store

/// The public credentials an entity trusts, by entity id.
///
/// Its file is one COSE_KeySet with the Ed25519 and X25519 keys of every
/// entity, grouped by `kid`. Reading is bounded by [`TrustStore::MAX_FILE_LEN`]
/// and [`TrustStore::MAX_KEYS`] (so at most 50 000 entities per file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustStore {
    by_id: BTreeMap<EntityId, PublicCredential>,
}

impl TrustStore {
    /// Largest trust-store file accepted: 16 MiB.
    pub const MAX_FILE_LEN: usize = 16 * 1024 * 1024;
    /// Most keys accepted in a trust-store file (two per entity).
    pub const MAX_KEYS: usize = 100_000;

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the credential of `cred.id()`; returns the one it
    /// replaced, so callers can notice a changed key.
    pub fn insert(&mut self, cred: PublicCredential) -> Option<PublicCredential> {
        self.by_id.insert(cred.id.clone(), cred)
    }

    /// Removes and returns the credential of `id`.
    pub fn remove(&mut self, id: &EntityId) -> Option<PublicCredential> {
        self.by_id.remove(id)
    }

    /// The credential of `id`.
    pub fn get(&self, id: &EntityId) -> Option<&PublicCredential> {
        self.by_id.get(id)
    }

    /// The credential whose id is the COSE `kid` `kid`; `None` also when the
    /// bytes are no valid entity id.
    pub fn get_by_kid(&self, kid: &[u8]) -> Option<&PublicCredential> {
        let id = EntityId::from_bytes(kid).ok()?;
        self.by_id.get(&id)
    }

    /// Whether `id` is trusted.
    pub fn contains(&self, id: &EntityId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The credentials, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &PublicCredential> {
        self.by_id.values()
    }

    /// Decodes a COSE_KeySet of public keys of any number of entities (each
    /// with exactly one Ed25519 and one X25519 key, matched by `kid`).
    /// Refuses private keys, an entity missing a key or listed twice, and
    /// files over the limits.
    pub fn from_cose_key_set(bytes: &[u8]) -> Result<Self> {
        let keys = read_key_set(bytes, Self::MAX_FILE_LEN, Self::MAX_KEYS)?;
        Ok(Self {
            by_id: group_public_keys(keys)?,
        })
    }

    /// Encodes the store as a COSE_KeySet, ordered by id. Fails when the
    /// store has grown beyond what [`TrustStore::from_cose_key_set`] accepts.
    pub fn to_cose_key_set(&self) -> Result<Vec<u8>> {
        let n_keys = self.by_id.len().saturating_mul(2);
        if n_keys > Self::MAX_KEYS {
            return Err(Error::TooLarge {
                what: "keys in a trust store file",
                limit: Self::MAX_KEYS,
            });
        }
        let mut out = Vec::with_capacity(
            9 + self
                .by_id
                .keys()
                .map(|id| 2 * (OKP_KEY_OVERHEAD + id.as_bytes().len()))
                .sum::<usize>(),
        );
        cbor::write_array(&mut out, n_keys as u64);
        for cred in self.by_id.values() {
            cred.write_keys(&mut out);
        }
        Ok(out)
    }
}

impl FromIterator<PublicCredential> for TrustStore {
    fn from_iter<I: IntoIterator<Item = PublicCredential>>(iter: I) -> Self {
        let mut store = Self::new();
        for cred in iter {
            store.insert(cred);
        }
        store
    }
}

// ---------------------------------------------------------------------------
// Key checks

/// The canonical encodings of the small-order points of Curve25519 and its
/// twist (0, 1, two points of order 8, p − 1); see cr.yp.to/ecdh.html. The
/// non-canonical aliases (≥ p or top bit set) are refused separately.
const LOW_ORDER_U: [[u8; 32]; 5] = [
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
fn is_canonical_u(u: &[u8; 32]) -> bool {
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

fn secret32(d: Option<&[u8]>) -> Result<Zeroizing<[u8; 32]>> {
    let d = d.ok_or(Error::InvalidKey("private key lacks d"))?;
    if d.len() != 32 {
        return Err(Error::InvalidKey("private key d must be 32 bytes"));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(d);
    Ok(out)
}

fn check_pem_len(pem: &str) -> Result<()> {
    if pem.len() > MAX_PEM_LEN {
        return Err(Error::TooLarge {
            what: "PEM text",
            limit: MAX_PEM_LEN,
        });
    }
    Ok(())
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// COSE_Key encoding

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    Ed25519,
    X25519,
}

impl Curve {
    fn crv(self) -> i64 {
        match self {
            Curve::Ed25519 => CRV_ED25519,
            Curve::X25519 => CRV_X25519,
        }
    }

    fn alg(self) -> i64 {
        match self {
            Curve::Ed25519 => ALG_EDDSA,
            Curve::X25519 => ALG_ECDH_ES_HKDF_256,
        }
    }

    fn accepts_alg(self, alg: i64) -> bool {
        match self {
            Curve::Ed25519 => alg == ALG_EDDSA || alg == ALG_ED25519,
            Curve::X25519 => alg == ALG_ECDH_ES_HKDF_256,
        }
    }
}

/// Writes one OKP COSE_Key with its labels in deterministic order
/// (1, 2, 3, −1, −2, −4 encode as 01, 02, 03, 20, 21, 23).
fn write_okp_key(out: &mut Vec<u8>, curve: Curve, kid: &[u8], x: &[u8; 32], d: Option<&[u8; 32]>) {
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
struct RawOkpKey<'a> {
    curve: Curve,
    kid: Option<&'a [u8]>,
    x: Option<&'a [u8]>,
    d: Option<&'a [u8]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label<'a> {
    Int(i64),
    Text(&'a str),
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(Error::Malformed("CBOR item runs past the end"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Major type and argument of the next item (floats and simple values
    /// are consumed whole).
    fn head(&mut self) -> Result<(u8, u64)> {
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
    fn length(&self, arg: u64) -> Result<usize> {
        usize::try_from(arg)
            .ok()
            .filter(|&n| n <= self.rest.len())
            .ok_or(Error::Malformed("CBOR length runs past the end"))
    }

    fn expect_major(&mut self, major: u8, what: &'static str) -> Result<usize> {
        let (m, arg) = self.head()?;
        if m != major {
            return Err(Error::Malformed(what));
        }
        self.length(arg)
    }

    fn bstr(&mut self) -> Result<&'a [u8]> {
        let n = self.expect_major(2, "expected a CBOR byte string")?;
        self.take(n)
    }

    fn label(&mut self) -> Result<Label<'a>> {
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

    fn int(&mut self) -> Result<i64> {
        match self.label()? {
            Label::Int(n) => Ok(n),
            Label::Text(_) => Err(Error::Malformed(
                "text-valued kty, crv and alg are not supported",
            )),
        }
    }

    /// Skips one well-formed item, at most [`MAX_NESTING`] levels deep.
    fn skip(&mut self, depth: usize) -> Result<()> {
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

fn read_key_set(bytes: &[u8], max_len: usize, max_keys: usize) -> Result<Vec<RawOkpKey<'_>>> {
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

fn read_okp_key<'a>(r: &mut Reader<'a>) -> Result<RawOkpKey<'a>> {
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
fn group_public_keys(keys: Vec<RawOkpKey<'_>>) -> Result<BTreeMap<EntityId, PublicCredential>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::TestRng;
    use coset::CborSerializable;

    fn eid(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    fn cred(name: &str, seed: u64) -> EntityCredential {
        EntityCredential::generate(eid(name), &mut TestRng::new(seed))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A value in a hand-built COSE_Key.
    enum V<'a> {
        I(i64),
        B(&'a [u8]),
        T(&'a str),
        /// Already-encoded CBOR.
        Raw(&'a [u8]),
    }

    fn map(params: &[(i64, V<'_>)]) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_head(&mut out, 5, params.len() as u64);
        for (label, value) in params {
            cbor::write_int(&mut out, *label);
            match value {
                V::I(n) => cbor::write_int(&mut out, *n),
                V::B(b) => cbor::write_bstr(&mut out, b),
                V::T(t) => cbor::write_tstr(&mut out, t),
                V::Raw(r) => out.extend_from_slice(r),
            }
        }
        out
    }

    fn set(keys: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_array(&mut out, keys.len() as u64);
        for k in keys {
            out.extend_from_slice(k);
        }
        out
    }

    fn okp(crv: i64, kid: &[u8], x: Option<&[u8]>, d: Option<&[u8]>) -> Vec<u8> {
        let mut params = vec![(1, V::I(1)), (2, V::B(kid)), (-1, V::I(crv))];
        if let Some(x) = x {
            params.push((-2, V::B(x)));
        }
        if let Some(d) = d {
            params.push((-4, V::B(d)));
        }
        map(&params)
    }

    struct Parts {
        kid: Vec<u8>,
        ed_x: [u8; 32],
        ed_d: [u8; 32],
        x_x: [u8; 32],
        x_d: [u8; 32],
    }

    fn parts(c: &EntityCredential) -> Parts {
        Parts {
            kid: c.id().as_bytes().to_vec(),
            ed_x: c.public().verifying_key().to_bytes(),
            ed_d: c.signing_key().to_bytes(),
            x_x: c.public().agreement_key().to_bytes(),
            x_d: c.agreement_secret().to_bytes(),
        }
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let (a, b, c) = (cred("dev-1", 1), cred("dev-1", 1), cred("dev-1", 2));
        assert_eq!(a.public(), b.public());
        assert_eq!(a.signing_key().to_bytes(), b.signing_key().to_bytes());
        assert_ne!(a.public(), c.public());
        assert_ne!(
            a.public().verifying_key().as_bytes(),
            a.public().agreement_key().as_bytes()
        );
    }

    #[test]
    fn private_key_set_round_trip() {
        let c = cred("manager", 3);
        let bytes = c.to_cose_key_set().unwrap();
        let back = EntityCredential::from_cose_key_set(&bytes).unwrap();
        assert_eq!(back.id(), c.id());
        assert_eq!(back.public(), c.public());
        assert_eq!(back.signing_key().to_bytes(), c.signing_key().to_bytes());
        assert_eq!(
            back.agreement_secret().to_bytes(),
            c.agreement_secret().to_bytes()
        );
        // Deterministic encoding: same keys, same bytes.
        assert_eq!(*back.to_cose_key_set().unwrap(), *bytes);
        assert!(bytes.len() < 300);
    }

    #[test]
    fn public_key_set_round_trip() {
        let p = cred("door-17", 4).public();
        let bytes = p.to_cose_key_set().unwrap();
        assert_eq!(PublicCredential::from_cose_key_set(&bytes).unwrap(), p);
    }

    #[test]
    fn from_secret_bytes_matches_generated() {
        let c = cred("a", 5);
        let p = parts(&c);
        let d = EntityCredential::from_secret_bytes(eid("a"), &p.ed_d, &p.x_d);
        assert_eq!(d.public(), c.public());
    }

    #[test]
    fn coset_reads_what_we_write() {
        let c = cred("meter.9", 6);
        let private = c.to_cose_key_set().unwrap();
        let public = c.public().to_cose_key_set().unwrap();
        for (bytes, has_d) in [(&private[..], true), (&public[..], false)] {
            let set = coset::CoseKeySet::from_slice(bytes).unwrap();
            assert_eq!(set.0.len(), 2);
            let expect = [
                (iana::Algorithm::EdDSA, CRV_ED25519),
                (iana::Algorithm::ECDH_ES_HKDF_256, CRV_X25519),
            ];
            for (key, (alg, crv)) in set.0.iter().zip(expect) {
                assert_eq!(key.kty, coset::KeyType::Assigned(iana::KeyType::OKP));
                assert_eq!(key.key_id, b"meter.9");
                assert_eq!(key.alg, Some(coset::Algorithm::Assigned(alg)));
                let find = |l: i64| {
                    key.params
                        .iter()
                        .find(|(label, _)| *label == coset::Label::Int(l))
                        .map(|(_, v)| v.clone())
                };
                assert_eq!(find(LABEL_CRV), Some(ciborium::Value::from(crv)));
                assert!(find(LABEL_X).is_some());
                assert_eq!(find(LABEL_D).is_some(), has_d);
            }
        }
    }

    #[test]
    fn we_read_what_coset_writes() {
        let c = cred("agent-2", 7);
        let p = parts(&c);
        let key = |crv: i64, alg, x: &[u8]| {
            coset::CoseKeyBuilder::new_okp_key()
                .key_id(p.kid.clone())
                .algorithm(alg)
                .add_key_op(iana::KeyOperation::Verify)
                .param(LABEL_CRV, ciborium::Value::from(crv))
                .param(LABEL_X, ciborium::Value::Bytes(x.to_vec()))
                .build()
        };
        let set = coset::CoseKeySet(vec![
            key(CRV_X25519, iana::Algorithm::ECDH_ES_HKDF_256, &p.x_x),
            key(CRV_ED25519, iana::Algorithm::Ed25519, &p.ed_x),
        ]);
        let bytes = set.to_vec().unwrap();
        assert_eq!(
            PublicCredential::from_cose_key_set(&bytes).unwrap(),
            c.public()
        );
    }

    #[test]
    fn private_key_without_x_is_accepted() {
        let c = cred("a", 8);
        let p = parts(&c);
        let bytes = set(&[
            okp(CRV_ED25519, &p.kid, None, Some(&p.ed_d)),
            okp(CRV_X25519, &p.kid, None, Some(&p.x_d)),
        ]);
        let back = EntityCredential::from_cose_key_set(&bytes).unwrap();
        assert_eq!(back.public(), c.public());
    }

    #[test]
    fn mismatched_x_and_d_are_refused() {
        let (a, b) = (parts(&cred("a", 9)), parts(&cred("a", 10)));
        let ed_wrong = set(&[
            okp(CRV_ED25519, &a.kid, Some(&b.ed_x), Some(&a.ed_d)),
            okp(CRV_X25519, &a.kid, Some(&a.x_x), Some(&a.x_d)),
        ]);
        assert_eq!(
            EntityCredential::from_cose_key_set(&ed_wrong).err(),
            Some(Error::InvalidKey("Ed25519 key: x does not match d"))
        );
        let x_wrong = set(&[
            okp(CRV_ED25519, &a.kid, Some(&a.ed_x), Some(&a.ed_d)),
            okp(CRV_X25519, &a.kid, Some(&b.x_x), Some(&a.x_d)),
        ]);
        assert_eq!(
            EntityCredential::from_cose_key_set(&x_wrong).err(),
            Some(Error::InvalidKey("X25519 key: x does not match d"))
        );
        let short_x = set(&[
            okp(CRV_ED25519, &a.kid, Some(&a.ed_x[..31]), Some(&a.ed_d)),
            okp(CRV_X25519, &a.kid, Some(&a.x_x), Some(&a.x_d)),
        ]);
        assert!(EntityCredential::from_cose_key_set(&short_x).is_err());
    }

    #[test]
    fn private_file_is_refused_as_public_and_vice_versa() {
        let c = cred("a", 11);
        let private = c.to_cose_key_set().unwrap();
        for err in [
            PublicCredential::from_cose_key_set(&private).err(),
            TrustStore::from_cose_key_set(&private).err(),
        ] {
            assert!(
                matches!(err, Some(Error::InvalidKey(m)) if m.contains("private key file")),
                "{err:?}"
            );
        }
        // One d is enough to refuse the file.
        let p = parts(&c);
        let one_d = set(&[
            okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None),
            okp(CRV_X25519, &p.kid, Some(&p.x_x), Some(&p.x_d)),
        ]);
        assert!(PublicCredential::from_cose_key_set(&one_d).is_err());
        let public = c.public().to_cose_key_set().unwrap();
        assert!(matches!(
            EntityCredential::from_cose_key_set(&public),
            Err(Error::InvalidKey(_))
        ));
    }

    #[test]
    fn kids_must_be_present_and_equal() {
        let p = parts(&cred("a", 12));
        let differ = set(&[
            okp(CRV_ED25519, &p.kid, None, Some(&p.ed_d)),
            okp(CRV_X25519, b"b", None, Some(&p.x_d)),
        ]);
        assert!(matches!(
            EntityCredential::from_cose_key_set(&differ),
            Err(Error::Malformed(_))
        ));
        let no_kid = set(&[
            map(&[(1, V::I(1)), (-1, V::I(CRV_ED25519)), (-4, V::B(&p.ed_d))]),
            okp(CRV_X25519, &p.kid, None, Some(&p.x_d)),
        ]);
        assert!(EntityCredential::from_cose_key_set(&no_kid).is_err());
        // Public keys of two entities, each incomplete.
        let split = set(&[
            okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None),
            okp(CRV_X25519, b"b", Some(&p.x_x), None),
        ]);
        assert!(PublicCredential::from_cose_key_set(&split).is_err());
        // A kid that is no valid entity id.
        let bad_id = set(&[
            okp(CRV_ED25519, b"a/b", Some(&p.ed_x), None),
            okp(CRV_X25519, b"a/b", Some(&p.x_x), None),
        ]);
        assert!(matches!(
            PublicCredential::from_cose_key_set(&bad_id),
            Err(Error::InvalidId { .. })
        ));
    }

    #[test]
    fn key_counts_per_kind_are_enforced() {
        let p = parts(&cred("a", 13));
        let ed = okp(CRV_ED25519, &p.kid, None, Some(&p.ed_d));
        let x = okp(CRV_X25519, &p.kid, None, Some(&p.x_d));
        for keys in [
            vec![ed.clone()],
            vec![ed.clone(), ed.clone()],
            vec![ed.clone(), x.clone(), x.clone()],
            vec![],
        ] {
            assert!(EntityCredential::from_cose_key_set(&set(&keys)).is_err());
        }
        let ed_pub = okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None);
        let x_pub = okp(CRV_X25519, &p.kid, Some(&p.x_x), None);
        let twice = set(&[ed_pub.clone(), x_pub, ed_pub]);
        assert!(PublicCredential::from_cose_key_set(&twice).is_err());
        assert!(TrustStore::from_cose_key_set(&twice).is_err());
        let no_x = set(&[
            okp(CRV_ED25519, &p.kid, None, None),
            okp(CRV_X25519, &p.kid, Some(&p.x_x), None),
        ]);
        assert!(PublicCredential::from_cose_key_set(&no_x).is_err());
    }

    #[test]
    fn unsupported_kty_crv_alg() {
        let p = parts(&cred("a", 14));
        let with = |ed_key: Vec<u8>| {
            PublicCredential::from_cose_key_set(&set(&[
                ed_key,
                okp(CRV_X25519, &p.kid, Some(&p.x_x), None),
            ]))
        };
        let ec2 = map(&[(1, V::I(2)), (2, V::B(&p.kid)), (-1, V::I(1))]);
        assert_eq!(with(ec2).err(), Some(Error::UnsupportedAlgorithm(2)));
        let ed448 = okp(7, &p.kid, Some(&p.ed_x), None);
        assert_eq!(with(ed448).err(), Some(Error::UnsupportedAlgorithm(7)));
        let es256 = map(&[
            (1, V::I(1)),
            (2, V::B(&p.kid)),
            (3, V::I(-7)),
            (-1, V::I(CRV_ED25519)),
            (-2, V::B(&p.ed_x)),
        ]);
        assert_eq!(with(es256).err(), Some(Error::UnsupportedAlgorithm(-7)));
        let text_kty = map(&[(1, V::T("OKP")), (2, V::B(&p.kid))]);
        assert!(matches!(with(text_kty), Err(Error::Malformed(_))));
        let no_kty = map(&[(2, V::B(&p.kid)), (-1, V::I(CRV_ED25519))]);
        assert!(matches!(with(no_kty), Err(Error::Malformed(_))));
        // An X25519 key that claims EdDSA.
        let x_eddsa = map(&[
            (1, V::I(1)),
            (2, V::B(&p.kid)),
            (3, V::I(ALG_EDDSA)),
            (-1, V::I(CRV_X25519)),
            (-2, V::B(&p.x_x)),
        ]);
        let bytes = set(&[okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None), x_eddsa]);
        assert_eq!(
            PublicCredential::from_cose_key_set(&bytes).err(),
            Some(Error::UnsupportedAlgorithm(ALG_EDDSA))
        );
    }

    #[test]
    fn unknown_parameters_are_skipped() {
        let c = cred("a", 15);
        let p = parts(&c);
        // key_ops [2], Base IV, a private label holding nested structures,
        // a tag, a float and a text label.
        let nested = [
            0x82, 0xa1, 0x61, 0x6b, 0xc1, 0x00, 0xfb, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut ed = map(&[
            (1, V::I(1)),
            (2, V::B(&p.kid)),
            (4, V::Raw(&[0x81, 0x02])),
            (5, V::B(&[1, 2, 3])),
            (-1, V::I(CRV_ED25519)),
            (-2, V::B(&p.ed_x)),
            (-65537, V::Raw(&nested)),
        ]);
        // Append a text-labelled parameter: bump the map count, then add it.
        ed[0] += 1;
        ed.extend_from_slice(&[0x61, b'z', 0xf5]);
        let bytes = set(&[ed, okp(CRV_X25519, &p.kid, Some(&p.x_x), None)]);
        assert_eq!(
            PublicCredential::from_cose_key_set(&bytes).unwrap(),
            c.public()
        );
    }

    #[test]
    fn structural_errors_are_refused() {
        let c = cred("a", 16);
        let p = parts(&c);
        let x = okp(CRV_X25519, &p.kid, Some(&p.x_x), None);
        let good = c.public().to_cose_key_set().unwrap();
        // Duplicate label.
        let dup = map(&[
            (1, V::I(1)),
            (2, V::B(&p.kid)),
            (-1, V::I(CRV_ED25519)),
            (-2, V::B(&p.ed_x)),
            (-2, V::B(&p.ed_x)),
        ]);
        assert_eq!(
            PublicCredential::from_cose_key_set(&set(&[dup, x.clone()])).err(),
            Some(Error::Malformed("duplicate COSE_Key parameter"))
        );
        // Trailing bytes.
        let mut trailing = good.clone();
        trailing.push(0x00);
        assert!(matches!(
            PublicCredential::from_cose_key_set(&trailing),
            Err(Error::Malformed(_))
        ));
        // Indefinite-length array around valid keys.
        let mut indef = vec![0x9f];
        indef.extend_from_slice(&good[1..]);
        indef.push(0xff);
        assert!(matches!(
            PublicCredential::from_cose_key_set(&indef),
            Err(Error::Malformed(_))
        ));
        // Not an array; a map where a key should be.
        assert!(PublicCredential::from_cose_key_set(&[0xa0]).is_err());
        assert!(PublicCredential::from_cose_key_set(&[0x81, 0x80]).is_err());
        assert!(PublicCredential::from_cose_key_set(&[]).is_err());
        // Deep nesting in an unknown parameter is refused, not recursed into.
        let deep: Vec<u8> = core::iter::repeat_n(0x81, 10_000).chain([0x00]).collect();
        let ed = map(&[
            (1, V::I(1)),
            (2, V::B(&p.kid)),
            (-1, V::I(CRV_ED25519)),
            (-2, V::B(&p.ed_x)),
            (99, V::Raw(&deep[..MAX_CREDENTIAL_FILE_LEN - 400])),
        ]);
        assert_eq!(
            PublicCredential::from_cose_key_set(&set(&[ed, x])).err(),
            Some(Error::Malformed("CBOR nested too deeply"))
        );
        // Lengths that run past the end, huge and 64-bit.
        for bytes in [
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x82, 0xa1, 0x02, 0x5a, 0xff, 0xff, 0xff, 0xff][..],
            &[
                0x81, 0xa1, 0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
            ][..],
            &[0x81, 0xa1, 0x1c][..],
        ] {
            assert!(PublicCredential::from_cose_key_set(bytes).is_err());
        }
    }

    #[test]
    fn size_limits() {
        let c = cred("a", 17);
        let p = parts(&c);
        let big = vec![0u8; MAX_CREDENTIAL_FILE_LEN + 1];
        assert_eq!(
            EntityCredential::from_cose_key_set(&big).err(),
            Some(Error::TooLarge {
                what: "COSE_KeySet",
                limit: MAX_CREDENTIAL_FILE_LEN
            })
        );
        let k = okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None);
        let nine = set(&vec![k; 9]);
        assert!(matches!(
            PublicCredential::from_cose_key_set(&nine),
            Err(Error::TooLarge { limit: 8, .. })
        ));
        let many: Vec<(i64, V<'_>)> = (0..17).map(|i| (100 + i, V::I(0))).collect();
        assert!(matches!(
            PublicCredential::from_cose_key_set(&set(&[map(&many)])),
            Err(Error::TooLarge {
                limit: MAX_KEY_PARAMS,
                ..
            })
        ));
        assert!(matches!(
            TrustStore::from_cose_key_set(&vec![0u8; TrustStore::MAX_FILE_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        let mut huge_count = Vec::new();
        cbor::write_array(&mut huge_count, TrustStore::MAX_KEYS as u64 + 1);
        huge_count.resize(TrustStore::MAX_KEYS + 10, 0xa0);
        assert!(matches!(
            TrustStore::from_cose_key_set(&huge_count),
            Err(Error::TooLarge {
                limit: TrustStore::MAX_KEYS,
                ..
            })
        ));
    }

    #[test]
    fn truncated_flipped_and_random_bytes_never_panic() {
        let c = cred("sensor-0042", 18);
        let inputs = [
            c.to_cose_key_set().unwrap().to_vec(),
            c.public().to_cose_key_set().unwrap(),
        ];
        for input in &inputs {
            for len in 0..input.len() {
                assert!(EntityCredential::from_cose_key_set(&input[..len]).is_err());
                assert!(PublicCredential::from_cose_key_set(&input[..len]).is_err());
                assert!(TrustStore::from_cose_key_set(&input[..len]).is_err() || len == 0);
            }
            for i in 0..input.len() {
                for bit in 0..8 {
                    let mut m = input.clone();
                    m[i] ^= 1 << bit;
                    let _ = EntityCredential::from_cose_key_set(&m);
                    let _ = PublicCredential::from_cose_key_set(&m);
                    let _ = TrustStore::from_cose_key_set(&m);
                }
            }
        }
        let mut rng = TestRng::new(99);
        for n in 0..2000usize {
            let mut junk = vec![0u8; n % 300];
            rand_core::Rng::fill_bytes(&mut rng, &mut junk);
            if let Some(first) = junk.first_mut() {
                // Make most inputs start like a key set so parsing goes deep.
                if n % 4 != 0 {
                    *first = 0x82;
                }
            }
            let _ = EntityCredential::from_cose_key_set(&junk);
            let _ = PublicCredential::from_cose_key_set(&junk);
            let _ = TrustStore::from_cose_key_set(&junk);
        }
    }

    #[test]
    fn small_order_x25519_keys_are_refused() {
        let ed = cred("a", 19).public().verifying_key().to_bytes();
        let secret = [0x42u8; 32];
        for u in LOW_ORDER_U {
            // The list is right: every entry kills the agreement.
            assert_eq!(x25519_dalek::x25519(secret, u), [0u8; 32], "{}", hex(&u));
            assert_eq!(
                PublicCredential::new(eid("a"), &ed, &u).err(),
                Some(Error::InvalidKey("X25519 public key has small order"))
            );
            // The same point with the top bit set.
            let mut high = u;
            high[31] |= 0x80;
            assert!(PublicCredential::new(eid("a"), &ed, &high).is_err());
        }
        // p and p + 1 (aliases of 0 and 1) and 2^255 - 1.
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        for low in [0xed, 0xee, 0xff] {
            p[0] = low;
            assert_eq!(
                PublicCredential::new(eid("a"), &ed, &p).err(),
                Some(Error::InvalidKey(
                    "X25519 public key is not canonically encoded"
                ))
            );
        }
        assert!(PublicCredential::new(eid("a"), &ed, &[9u8; 31]).is_err());
        // The base point (u = 9) is fine.
        let mut nine = [0u8; 32];
        nine[0] = 9;
        assert!(PublicCredential::new(eid("a"), &ed, &nine).is_ok());
    }

    #[test]
    fn weak_ed25519_keys_are_refused() {
        let x = cred("a", 20).public().agreement_key().to_bytes();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicCredential::new(eid("a"), &identity, &x),
            Err(Error::InvalidKey(_))
        ));
        let p = parts(&cred("a", 20));
        let bytes = set(&[
            okp(CRV_ED25519, &p.kid, Some(&identity), None),
            okp(CRV_X25519, &p.kid, Some(&p.x_x), None),
        ]);
        assert!(PublicCredential::from_cose_key_set(&bytes).is_err());
    }

    #[test]
    fn debug_shows_no_secret_bytes() {
        let c = cred("door-17", 21);
        let p = parts(&c);
        for text in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(text.contains("door-17"), "{text}");
            assert!(text.contains(&hex(&p.ed_x)), "{text}");
            assert!(text.contains(&hex(&p.x_x)), "{text}");
            assert!(!text.contains(&hex(&p.ed_d)), "{text}");
            assert!(!text.contains(&hex(&p.x_d)), "{text}");
            // Not even a prefix long enough to narrow a search.
            assert!(!text.contains(&hex(&p.ed_d[..8])), "{text}");
            assert!(!text.contains(&hex(&p.x_d[..8])), "{text}");
        }
        let public = format!("{:?}", c.public());
        assert!(public.contains(&hex(&p.ed_x)) && public.contains(&hex(&p.x_x)));
    }

    #[test]
    fn pem_round_trips() {
        let c = cred("a", 22);
        let pem = c.ed25519_to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{}", *pem);
        let x_d = c.agreement_secret().to_bytes();
        let back = EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &pem, &x_d).unwrap();
        assert_eq!(back.public(), c.public());
        assert_eq!(back.signing_key().to_bytes(), c.signing_key().to_bytes());

        let spki = c.public().ed25519_public_pem().unwrap();
        assert!(spki.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{spki}");
        assert_eq!(
            &PublicCredential::ed25519_from_public_pem(&spki).unwrap(),
            c.public().verifying_key()
        );
        // A public PEM is no private key and vice versa.
        assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &spki, &x_d).is_err());
        assert!(PublicCredential::ed25519_from_public_pem(&pem).is_err());
    }

    #[test]
    fn bad_pem_is_refused() {
        let x_d = [7u8; 32];
        let pem = cred("a", 23).ed25519_to_pkcs8_pem().unwrap();
        let truncated = &pem[..pem.len() / 2];
        assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), truncated, &x_d).is_err());
        assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), "garbage", &x_d).is_err());
        let huge = "A".repeat(MAX_PEM_LEN + 1);
        assert!(matches!(
            EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &huge, &x_d),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            PublicCredential::ed25519_from_public_pem(&huge),
            Err(Error::TooLarge { .. })
        ));
        // An SPKI holding a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = ed25519_dalek::pkcs8::PublicKeyBytes(identity)
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert!(PublicCredential::ed25519_from_public_pem(&weak).is_err());
        // A PKCS#8 v2 document whose public key does not match its secret.
        let v2 = KeypairBytes {
            secret_key: [1u8; 32],
            public_key: Some(ed25519_dalek::pkcs8::PublicKeyBytes(
                cred("a", 24).public().verifying_key().to_bytes(),
            )),
        }
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
        assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &v2, &x_d).is_err());
    }

    /// Imports a key OpenSSL generated and hands ours to OpenSSL.
    #[test]
    fn openssl_interop() {
        use std::process::Command;
        let have_openssl = Command::new("which")
            .arg("openssl")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !have_openssl {
            eprintln!(
                "\n!!!!! NOT RUN: credential::tests::openssl_interop — `openssl` is not on the PATH !!!!!\n"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!(
            "sealcast-credential-openssl-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| -> String {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let theirs = dir.join("theirs.pem");
        let theirs_s = theirs.to_str().unwrap();
        run(&["genpkey", "-algorithm", "ed25519", "-out", theirs_s]);
        let pem = std::fs::read_to_string(&theirs).unwrap();
        let c = EntityCredential::from_ed25519_pkcs8_pem(eid("ossl"), &pem, &[3u8; 32]).unwrap();
        let their_pub = run(&["pkey", "-in", theirs_s, "-pubout"]);
        assert_eq!(
            &PublicCredential::ed25519_from_public_pem(&their_pub).unwrap(),
            c.public().verifying_key()
        );

        let ours = cred("a", 25);
        let ours_path = dir.join("ours.pem");
        std::fs::write(&ours_path, ours.ed25519_to_pkcs8_pem().unwrap().as_bytes()).unwrap();
        let ours_pub = run(&["pkey", "-in", ours_path.to_str().unwrap(), "-pubout"]);
        assert_eq!(
            &PublicCredential::ed25519_from_public_pem(&ours_pub).unwrap(),
            ours.public().verifying_key()
        );
        assert_eq!(ours_pub, ours.public().ed25519_public_pem().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trust_store_round_trip_and_lookup() {
        let creds: Vec<PublicCredential> = ["manager", "agent-1", "door-17"]
            .iter()
            .zip(30..)
            .map(|(n, s)| cred(n, s).public())
            .collect();
        let store: TrustStore = creds.iter().cloned().collect();
        assert_eq!(store.len(), 3);
        let bytes = store.to_cose_key_set().unwrap();
        let back = TrustStore::from_cose_key_set(&bytes).unwrap();
        assert_eq!(back, store);
        assert_eq!(back.get_by_kid(b"agent-1"), Some(&creds[1]));
        assert_eq!(back.get(&eid("door-17")), Some(&creds[2]));
        assert!(back.get_by_kid(b"nobody").is_none());
        assert!(back.get_by_kid(b"\xff").is_none());
        assert!(back.contains(&eid("manager")));

        // Each entity's own public file is a one-entity trust store.
        let one = creds[0].to_cose_key_set().unwrap();
        assert_eq!(TrustStore::from_cose_key_set(&one).unwrap().len(), 1);
        // A multi-entity file is not one public credential.
        assert!(PublicCredential::from_cose_key_set(&bytes).is_err());

        let empty = TrustStore::new();
        let bytes = empty.to_cose_key_set().unwrap();
        assert!(TrustStore::from_cose_key_set(&bytes).unwrap().is_empty());
    }

    #[test]
    fn trust_store_groups_by_kid_in_any_order() {
        let (a, b) = (parts(&cred("a", 40)), parts(&cred("b", 41)));
        let bytes = set(&[
            okp(CRV_X25519, &b.kid, Some(&b.x_x), None),
            okp(CRV_ED25519, &a.kid, Some(&a.ed_x), None),
            okp(CRV_ED25519, &b.kid, Some(&b.ed_x), None),
            okp(CRV_X25519, &a.kid, Some(&a.x_x), None),
        ]);
        let store = TrustStore::from_cose_key_set(&bytes).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.get(&eid("a")).unwrap().agreement_key().to_bytes(),
            a.x_x
        );
        // An entity with only half its keys spoils the file.
        let half = set(&[
            okp(CRV_ED25519, &a.kid, Some(&a.ed_x), None),
            okp(CRV_X25519, &a.kid, Some(&a.x_x), None),
            okp(CRV_ED25519, &b.kid, Some(&b.ed_x), None),
        ]);
        assert!(matches!(
            TrustStore::from_cose_key_set(&half),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn trust_store_insert_replaces() {
        let mut store = TrustStore::new();
        assert!(store.insert(cred("a", 50).public()).is_none());
        let old = store.insert(cred("a", 51).public());
        assert_eq!(old, Some(cred("a", 50).public()));
        assert_eq!(store.len(), 1);
        assert!(store.remove(&eid("a")).is_some());
        assert!(store.is_empty());
    }
}

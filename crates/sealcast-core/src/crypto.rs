//! Thin, checked wrappers over the primitives sealcast uses. Everything above
//! this module goes through these functions, and the external test vectors
//! (Wycheproof, C2SP CCTV) exercise exactly these functions.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of every AEAD nonce sealcast uses (COSE fixes AES-GCM at 12 bytes).
pub const NONCE_LEN: usize = 12;
/// Length of every AES-GCM tag sealcast produces or accepts.
pub const TAG_LEN: usize = 16;

/// The content encryption algorithms sealcast speaks (COSE ids from RFC 9053).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlg {
    /// AES-GCM with a 128-bit key (COSE alg 1).
    A128Gcm,
    /// AES-GCM with a 256-bit key (COSE alg 3).
    A256Gcm,
}

impl AeadAlg {
    /// The COSE algorithm id.
    pub const fn cose_id(self) -> i64 {
        match self {
            AeadAlg::A128Gcm => 1,
            AeadAlg::A256Gcm => 3,
        }
    }
    /// Looks up a COSE algorithm id.
    pub fn from_cose_id(id: i64) -> Result<Self> {
        match id {
            1 => Ok(AeadAlg::A128Gcm),
            3 => Ok(AeadAlg::A256Gcm),
            other => Err(Error::UnsupportedAlgorithm(other)),
        }
    }
    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            AeadAlg::A128Gcm => 16,
            AeadAlg::A256Gcm => 32,
        }
    }
    /// Nonce length in bytes.
    pub const fn nonce_len(self) -> usize {
        NONCE_LEN
    }
}

/// An AES-GCM key with its key schedule expanded once, so that a receiver
/// that opens many messages under one sender key pays the expansion once.
/// It has no `Debug` that shows the key, and the ciphers zeroize on drop.
#[derive(Clone)]
pub struct AeadKey {
    inner: AeadInner,
}

#[derive(Clone)]
enum AeadInner {
    A128(Box<Aes128Gcm>),
    A256(Box<Aes256Gcm>),
}

impl core::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

impl AeadKey {
    /// Expands `key` for `alg`; the length must match the algorithm.
    pub fn new(alg: AeadAlg, key: &[u8]) -> Result<Self> {
        if key.len() != alg.key_len() {
            return Err(Error::InvalidKey(
                "AEAD key length does not match the algorithm",
            ));
        }
        let inner = match alg {
            AeadAlg::A128Gcm => AeadInner::A128(Box::new(
                Aes128Gcm::new_from_slice(key).map_err(|_| Error::InvalidKey("AES-128 key"))?,
            )),
            AeadAlg::A256Gcm => AeadInner::A256(Box::new(
                Aes256Gcm::new_from_slice(key).map_err(|_| Error::InvalidKey("AES-256 key"))?,
            )),
        };
        Ok(Self { inner })
    }

    /// The algorithm of this key.
    pub fn alg(&self) -> AeadAlg {
        match self.inner {
            AeadInner::A128(_) => AeadAlg::A128Gcm,
            AeadInner::A256(_) => AeadAlg::A256Gcm,
        }
    }

    /// Encrypts `plaintext`, returning ciphertext followed by the 16-byte tag.
    pub fn seal(&self, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce: &[u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::InvalidKey("AES-GCM nonce must be 12 bytes"))?;
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        let tag = match &self.inner {
            AeadInner::A128(c) => {
                c.encrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into())
            }
            AeadInner::A256(c) => {
                c.encrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into())
            }
        }
        .map_err(|_| Error::TooLarge {
            what: "AEAD plaintext",
            limit: 1 << 30,
        })?;
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// Decrypts ciphertext-with-tag. On a bad tag nothing is returned and the
    /// working buffer is wiped.
    pub fn open(&self, nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.open_data(nonce, aad, ciphertext).map(Zeroizing::new)
    }

    /// As [`AeadKey::open`], for plaintext that is data the caller hands on
    /// anyway (a broadcast's signed inner object), not key material: on
    /// success the buffer is returned as a plain `Vec`, so dropping it does
    /// not cost a volatile wipe of every byte (≈ 1 % of opening a 1 KiB
    /// broadcast). On a bad tag the working buffer is still wiped.
    pub fn open_data(&self, nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
        let nonce: &[u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::InvalidKey("AES-GCM nonce must be 12 bytes"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(Error::DecryptFailed);
        }
        let (ct, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| Error::DecryptFailed)?;
        let mut buf = ct.to_vec();
        let ok = match &self.inner {
            AeadInner::A128(c) => {
                c.decrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into(), tag.into())
            }
            AeadInner::A256(c) => {
                c.decrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into(), tag.into())
            }
        };
        match ok {
            Ok(()) => Ok(buf),
            Err(_) => {
                zeroize::Zeroize::zeroize(&mut buf);
                Err(Error::DecryptFailed)
            }
        }
    }
}

/// One-shot AEAD encryption (`ciphertext || tag`).
pub fn aead_seal(
    alg: AeadAlg,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    AeadKey::new(alg, key)?.seal(nonce, aad, plaintext)
}

/// One-shot AEAD decryption of `ciphertext || tag`.
pub fn aead_open(
    alg: AeadAlg,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    AeadKey::new(alg, key)?.open(nonce, aad, ciphertext)
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` (an empty salt means the
/// all-zero salt, as RFC 5869 says), then expand to `len` bytes.
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>> {
    if len > 255 * 32 {
        return Err(Error::TooLarge {
            what: "HKDF output",
            limit: 255 * 32,
        });
    }
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new(vec![0u8; len]);
    hk.expand(info, okm.as_mut_slice())
        .map_err(|_| Error::TooLarge {
            what: "HKDF output",
            limit: 255 * 32,
        })?;
    Ok(okm)
}

/// X25519 between a secret scalar and a public u-coordinate. Rejects the
/// all-zero result that low-order public keys produce (RFC 7748 §6.1).
pub fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let secret = x25519_dalek::StaticSecret::from(*secret);
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::NonContributoryKeyAgreement);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Parses a 32-byte Ed25519 public key; rejects weak (small-order) keys and
/// encodings that are not points.
pub fn ed25519_public(bytes: &[u8]) -> Result<VerifyingKey> {
    let bytes: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| Error::InvalidKey("Ed25519 public key must be 32 bytes"))?;
    let key = VerifyingKey::from_bytes(bytes)
        .map_err(|_| Error::InvalidKey("Ed25519 public key is not a point"))?;
    if key.is_weak() {
        return Err(Error::InvalidKey("Ed25519 public key has small order"));
    }
    // An honestly generated key is a multiple of the base point. A key with a
    // small-order component is refused once, here, so that no verifier (strict
    // or batch) ever has to reason about it.
    if !key.to_edwards().is_torsion_free() {
        return Err(Error::InvalidKey(
            "Ed25519 public key has a small-order component",
        ));
    }
    Ok(key)
}

/// Parses a 64-byte Ed25519 signature.
pub fn ed25519_signature(bytes: &[u8]) -> Result<Signature> {
    let bytes: &[u8; 64] = bytes.try_into().map_err(|_| Error::BadSignature)?;
    Ok(Signature::from_bytes(bytes))
}

/// Strict Ed25519 verification (`verify_strict`: canonical S, no small-order
/// R or A) of `sig` over `msg`.
pub fn ed25519_verify_strict(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<()> {
    let sig = ed25519_signature(sig)?;
    key.verify_strict(msg, &sig)
        .map_err(|_| Error::BadSignature)
}

/// Verifies many Ed25519 signatures at once. Returns one result per item:
/// when the batch equation holds every item is accepted (after the same
/// small-order and canonicity checks `verify_strict` makes); when it fails,
/// the batch is split in halves and each half checked the same way, down to
/// [`BISECT_SINGLY`] items, which are checked one by one with
/// `verify_strict`'s equation (on the values the batch prepared). So a
/// forgery rejects only itself, and finding one forgery in a batch of n
/// costs batch equations over about n items in all
/// (n/2 + n/4 + …) and at most 2 · [`BISECT_SINGLY`] single verifications,
/// instead of n single verifications (when the left half holds, the right
/// one is known to fail and is split at once, unchecked).
///
/// **Where batch and strict differ.** The batch equation is cofactorless with
/// 128-bit weights derived from the inputs. A signature whose `R` carries a
/// small-order *component* (not small order itself) makes a residual that
/// `verify_strict` always rejects but the weighted sum cancels with
/// probability 1/2 to 1/8. Only the holder of the signing key can make such a
/// signature (the cofactored equation holds, so it is no forgery), and keys
/// with such components are refused by [`ed25519_public`]. Making the batch
/// exact would cost one scalar multiplication per signature, most of what
/// batching saves; `tests/vectors_cctv.rs` pins that every extra acceptance
/// is of this kind. Where receivers must agree bit for bit, verify singly.
pub fn ed25519_verify_batch(items: &[(&VerifyingKey, &[u8], &Signature)]) -> Vec<Result<()>> {
    ed25519_verify_batch_expecting(items, 0)
}

/// [`ed25519_verify_batch`] for a caller that expects about `bad_per_mille`
/// of every 1 000 items to fail (a DAP that has been receiving forgeries):
/// the batch is first cut into groups of about 1 000 / (2 · `bad_per_mille`)
/// items (a power of two), each settled by bisection, so a batch with many
/// forgeries does not spend equations over the whole batch and its halves
/// before it reaches them. With `bad_per_mille` 0 the whole batch is one
/// group, unless its equation would have 73–189 points: too many for a
/// cheap Straus multiplication, too few for Pippenger's (a DAP's 64 reports
/// of 64 meters: two groups of 32). The results are exactly those of
/// [`ed25519_verify_batch`]: the hint changes only what is checked
/// together, never what is accepted.
///
/// Why half the distance between failures: an equation costs about one
/// point per item, so a group that fails costs its whole size again in its
/// halves; a group expected to hold half a failure balances that against
/// the fixed cost of more equations. Measured on 64 reports with 6 forged
/// (`sealcast bench`): groups of 4 beat groups of 8 (the group-testing
/// optimum when every test costs the same) by about 10 %, and both beat
/// bisection from the whole batch by 1.7–1.9×.
pub fn ed25519_verify_batch_expecting(
    items: &[(&VerifyingKey, &[u8], &Signature)],
    bad_per_mille: u64,
) -> Vec<Result<()>> {
    if items.is_empty() {
        return Vec::new();
    }
    let prepared: Vec<Option<BatchItem>> = items
        .iter()
        .map(|(k, m, s)| BatchItem::new(k, m, s))
        .collect();
    // Items that fail the prechecks can never verify; the rest are settled
    // by bisection.
    let mut results: Vec<Result<()>> = prepared
        .iter()
        .map(|p| p.as_ref().map_or(Err(Error::BadSignature), |_| Ok(())))
        .collect();
    let candidates: Vec<(usize, &BatchItem)> = prepared
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
        .collect();
    // One weight per candidate, derived once from every candidate and used
    // by every equation over a part of them: each equation's weights are
    // still fixed by the whole batch's inputs, which a forger commits to
    // before they are drawn.
    let weights = batch_weights(&candidates);
    let weighted: Vec<(usize, &BatchItem, &Scalar)> = candidates
        .iter()
        .zip(&weights)
        .map(|((i, it), z)| (*i, *it, z))
        .collect();
    let mut keys: Vec<&[u8; 32]> = candidates.iter().map(|(_, it)| &it.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let group = group_size(weighted.len(), keys.len(), bad_per_mille);
    for part in weighted.chunks(group) {
        settle(part, false, &mut results);
    }
    results
}

/// Points an equation may have and still be cheap for curve25519-dalek's
/// Straus multiscalar multiplication (its choice below 190 points): on the
/// AVX-512 IFMA backend an equation of 129 points (64 signatures of 64
/// keys) verified 1.47–1.61× one by one against 1.84–1.89× for two of 65
/// (`sealcast bench`, same runs; its lookup tables outgrow the cache).
const STRAUS_POINTS: usize = 72;

/// From this many points curve25519-dalek uses Pippenger's method, which
/// only gets cheaper per point with more of them.
const PIPPENGER_POINTS: usize = 190;

/// The group size for `n` items from `keys` distinct keys of which
/// `bad_per_mille` ‰ are expected to fail: the largest power of two ≤ 500 /
/// `bad_per_mille` (all `n` when none is expected), at most `n`, at least
/// 1; and, when the whole batch's equation would have more than
/// [`STRAUS_POINTS`] points but fewer than [`PIPPENGER_POINTS`], no larger
/// than keeps each group's equation within [`STRAUS_POINTS`] (an equation
/// has a point per signature, one per distinct key and the base point).
fn group_size(n: usize, keys: usize, bad_per_mille: u64) -> usize {
    let planned = match 500u64.checked_div(bad_per_mille) {
        None => n,
        Some(spacing) => {
            let spacing = spacing.max(1);
            let exponent = u64::BITS - 1 - spacing.leading_zeros();
            usize::try_from(1u64 << exponent).unwrap_or(n)
        }
    };
    let points = n.saturating_add(keys).saturating_add(1);
    let planned = if points > STRAUS_POINTS && points < PIPPENGER_POINTS {
        // Largest g with g + min(g, keys) + 1 ≤ STRAUS_POINTS, as a power
        // of two so the groups come out even.
        let fits = (STRAUS_POINTS - 1 - keys.min((STRAUS_POINTS - 1) / 2)).max(1);
        let fits = 1usize << (usize::BITS - 1 - fits.leading_zeros());
        planned.min(fits)
    } else {
        planned
    };
    planned.min(n).max(1)
}

#[cfg(test)]
thread_local! {
    /// Single verifications `settle` made on this thread (tests count them).
    static SINGLE_VERIFICATIONS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Batches this small or smaller are checked one by one: below it a batch
/// equation saves less than the split costs.
pub const BISECT_SINGLY: usize = 2;

/// Sets `results[i]` for every `i` of `part`: all accepted when their batch
/// equation holds, else each half settled in turn. `known_bad`: the caller
/// knows the equation fails for `part` (its sibling held), so it is not
/// checked again.
fn settle(part: &[(usize, &BatchItem, &Scalar)], known_bad: bool, results: &mut [Result<()>]) {
    if part.is_empty() {
        return;
    }
    if part.len() <= BISECT_SINGLY {
        for (i, it, _) in part {
            #[cfg(test)]
            SINGLE_VERIFICATIONS.with(|n| n.set(n.get() + 1));
            if !it.holds_alone() {
                results[*i] = Err(Error::BadSignature);
            }
        }
        return;
    }
    if !known_bad && batch_equation_holds(part) {
        return; // every result of `part` is Ok already
    }
    let (left, right) = part.split_at(part.len() / 2);
    if left.len() > BISECT_SINGLY && batch_equation_holds(left) {
        // The whole failed and the left half holds: the right one fails.
        settle(right, true, results);
    } else {
        settle(left, left.len() > BISECT_SINGLY, results);
        settle(right, false, results);
    }
}

/// One signature of a batch after the checks `verify_strict` makes beyond
/// the group equation (a canonical `s` < ℓ, a canonical `R` that is not of
/// small order, a key that is not of small order), with `R` decompressed
/// once and `k = SHA-512(R ‖ A ‖ M)` computed.
struct BatchItem {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
    key: [u8; 32],
    a: EdwardsPoint,
}

impl BatchItem {
    fn new(key: &VerifyingKey, msg: &[u8], sig: &Signature) -> Option<Self> {
        if key.is_weak() {
            return None;
        }
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes()))?;
        // verify_strict compares the recomputed R with the received bytes,
        // so a non-canonical encoding of R never verifies there. An encoding
        // is non-canonical when y ≥ p, or when x = 0 with the sign bit set;
        // x = 0 only for y = ±1, both of small order and refused below. So
        // no compression round trip is needed.
        if !canonical_y(sig.r_bytes()) {
            return None;
        }
        let r = CompressedEdwardsY(*sig.r_bytes()).decompress()?;
        if r.is_small_order() {
            return None;
        }
        let mut h = Sha512::new();
        h.update(sig.r_bytes());
        h.update(key.as_bytes());
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        Some(Self {
            r,
            s,
            k,
            key: key.to_bytes(),
            a: key.to_edwards(),
        })
    }

    /// `verify_strict`'s own equation on the prepared values: `R = [s]B −
    /// [k]A`. The checks `verify_strict` makes besides (canonical `s`, `R`
    /// and `A` not of small order) passed in [`BatchItem::new`], and `k` is
    /// its challenge; it compares the compressed recomputed `R` with the
    /// signature's bytes, which are a canonical encoding of `r` (see
    /// [`BatchItem::new`]), so comparing the points decides the same — without
    /// hashing the message, decompressing `R` or compressing again.
    fn holds_alone(&self) -> bool {
        EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &(-self.a), &self.s) == self.r
    }
}

/// Whether `y` (the low 255 bits, little-endian) is below p = 2^255 − 19.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    !(top == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed)
}

/// The 128-bit weights `zᵢ` of a batch, as ed25519-dalek's `verify_batch`
/// derives them: from a hash of every signature's `k` and `s` (a forger
/// would have to predict them).
fn batch_weights(items: &[(usize, &BatchItem)]) -> Vec<Scalar> {
    let mut transcript = Sha512::new();
    transcript.update(b"sealcast ed25519 batch v1");
    transcript.update((items.len() as u64).to_le_bytes());
    for (_, it) in items {
        transcript.update(it.k.as_bytes());
        transcript.update(it.s.as_bytes());
    }
    let seed: [u8; 64] = transcript.finalize().into();
    (0..items.len() as u64)
        .map(|i| {
            let mut h = Sha512::new();
            h.update(seed);
            h.update(i.to_le_bytes());
            let out: [u8; 64] = h.finalize().into();
            let mut z = [0u8; 32];
            z[..16].copy_from_slice(&out[..16]);
            Scalar::from_bytes_mod_order(z)
        })
        .collect()
}

/// The cofactorless batch equation over `items` with their weights `zᵢ`:
/// `[−Σ zᵢsᵢ]B + Σ [zᵢ]Rᵢ + Σ_A [Σ_{i: Aᵢ = A} zᵢkᵢ]A = 0`, with each `R`
/// decompressed once (in the precheck) and the terms of one key merged, so a
/// burst from a few signers costs one point per signature plus one per
/// signer, not two per signature.
fn batch_equation_holds(items: &[(usize, &BatchItem, &Scalar)]) -> bool {
    let mut scalars: Vec<Scalar> = Vec::with_capacity(2 * items.len() + 1);
    let mut points: Vec<EdwardsPoint> = Vec::with_capacity(2 * items.len() + 1);
    let b_coefficient: Scalar = items.iter().map(|(_, it, z)| *z * it.s).sum();
    scalars.push(-b_coefficient);
    points.push(ED25519_BASEPOINT_POINT);
    // One term per distinct key: sort the (key, zᵢkᵢ) pairs by key and add
    // up neighbours (deterministic, and no hasher seeded from the OS).
    let mut key_terms: Vec<(&[u8; 32], Scalar, &EdwardsPoint)> = Vec::with_capacity(items.len());
    for (_, it, z) in items {
        scalars.push(**z);
        points.push(it.r);
        key_terms.push((&it.key, *z * it.k, &it.a));
    }
    key_terms.sort_unstable_by(|x, y| x.0.cmp(y.0));
    let mut last: Option<&[u8; 32]> = None;
    for (key, zk, a) in key_terms {
        match scalars.last_mut() {
            Some(acc) if last == Some(key) => *acc += zk,
            _ => {
                scalars.push(zk);
                points.push(*a);
            }
        }
        last = Some(key);
    }
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points).is_identity()
}

/// The field arithmetic curve25519-dalek runs Ed25519 with, in this build on
/// this CPU. Benchmarks name it: AVX-512 IFMA is about 1.7× faster than AVX2
/// on CPUs that have it, and serial is slower still.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ed25519Backend {
    /// The portable 64-bit (or 32-bit) serial field arithmetic.
    Serial,
    /// fiat-crypto's formally verified serial arithmetic.
    Fiat,
    /// The AVX2 vector backend (chosen at run time on x86-64).
    Avx2,
    /// The AVX-512 IFMA vector backend: compiled in with run-time detection
    /// by the workspace's default `curve25519_dalek_backend="avx512"` cfg
    /// (`.cargo/config.toml`), or statically when the build enables
    /// `avx512ifma` and `avx512vl`; runs where the CPU has both.
    Avx512Ifma,
}

impl Ed25519Backend {
    /// The short name benchmarks print: `serial`, `fiat`, `avx2`, `avx512ifma`.
    pub const fn name(self) -> &'static str {
        match self {
            Ed25519Backend::Serial => "serial",
            Ed25519Backend::Fiat => "fiat",
            Ed25519Backend::Avx2 => "avx2",
            Ed25519Backend::Avx512Ifma => "avx512ifma",
        }
    }
}

impl core::fmt::Display for Ed25519Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which backend curve25519-dalek uses here, decided the way it decides.
///
/// At build time its `build.rs` picks from the `curve25519_dalek_backend`
/// and `curve25519_dalek_bits` cfgs (set by the workspace's
/// `.cargo/config.toml` or by `RUSTFLAGS`, so this crate sees them too) and
/// the target features: the AVX-512 backend is compiled in when the cfg is
/// `"avx512"` (the workspace default, with run-time detection) or when
/// `avx512ifma` and `avx512vl` are enabled at compile time (stable rustc
/// reports those only from 1.89 on), the AVX2 one on every 64-bit x86-64
/// build. At run time it takes the best compiled-in backend the CPU
/// supports (cpufeatures), which is what this function checks too.
#[allow(unexpected_cfgs)]
pub fn ed25519_backend() -> Ed25519Backend {
    if cfg!(curve25519_dalek_backend = "fiat") {
        return Ed25519Backend::Fiat;
    }
    if cfg!(curve25519_dalek_backend = "serial")
        || cfg!(curve25519_dalek_bits = "32")
        || !cfg!(all(target_arch = "x86_64", target_pointer_width = "64"))
    {
        return Ed25519Backend::Serial;
    }
    let avx512_compiled = cfg!(curve25519_dalek_backend = "avx512")
        || (!cfg!(curve25519_dalek_backend = "simd")
            && cfg!(all(
                target_feature = "avx512ifma",
                target_feature = "avx512vl"
            )));
    if avx512_compiled && cpu_has_avx512ifma() {
        return Ed25519Backend::Avx512Ifma;
    }
    if cpu_has_avx2() {
        Ed25519Backend::Avx2
    } else {
        Ed25519Backend::Serial
    }
}

#[allow(unexpected_cfgs)]
fn cpu_has_avx512ifma() -> bool {
    if cfg!(all(
        target_feature = "avx512ifma",
        target_feature = "avx512vl"
    )) {
        return true;
    }
    // Only a forced `curve25519_dalek_backend="avx512"` build gets here; the
    // run-time detection of these features needs rustc 1.89, as that override
    // does.
    #[cfg(all(target_arch = "x86_64", curve25519_dalek_backend = "avx512"))]
    {
        std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(all(target_arch = "x86_64", curve25519_dalek_backend = "avx512")))]
    {
        false
    }
}

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_y_is_below_p() {
        // p = 2^255 - 19, little-endian.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut below = p;
        below[0] = 0xec;
        assert!(canonical_y(&below));
        assert!(!canonical_y(&p));
        let mut above = p;
        above[0] = 0xff;
        assert!(!canonical_y(&above));
        // The sign bit is not part of y.
        let mut signed = below;
        signed[31] |= 0x80;
        assert!(canonical_y(&signed));
        signed = p;
        signed[31] |= 0x80;
        assert!(!canonical_y(&signed));
        assert!(canonical_y(&[0u8; 32]));
    }

    #[test]
    fn bisection_finds_forgeries_with_few_single_verifications() {
        use crate::testrng::TestRng;
        use ed25519_dalek::{Signer, SigningKey};
        let mut rng = TestRng::new(3);
        let keys: Vec<SigningKey> = (0..8).map(|_| SigningKey::generate(&mut rng)).collect();
        let msgs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 40]).collect();
        let run = |forged: &[usize]| -> (Vec<bool>, usize) {
            let vks: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
            let sigs: Vec<Signature> = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let sig = keys[i % 8].sign(m);
                    if forged.contains(&i) {
                        // Signed by another key: well-formed, wrong.
                        keys[(i + 1) % 8].sign(m)
                    } else {
                        sig
                    }
                })
                .collect();
            let items: Vec<(&VerifyingKey, &[u8], &Signature)> = (0..msgs.len())
                .map(|i| (&vks[i % 8], msgs[i].as_slice(), &sigs[i]))
                .collect();
            SINGLE_VERIFICATIONS.with(|n| n.set(0));
            let got: Vec<bool> = ed25519_verify_batch(&items)
                .iter()
                .map(Result::is_ok)
                .collect();
            let singles = SINGLE_VERIFICATIONS.with(core::cell::Cell::get);
            // Exactly what verify_strict says, item by item.
            for (i, (k, m, s)) in items.iter().enumerate() {
                assert_eq!(got[i], k.verify_strict(m, s).is_ok(), "item {i}");
            }
            (got, singles)
        };
        let (all, singles) = run(&[]);
        assert!(all.iter().all(|ok| *ok));
        assert_eq!(singles, 0);
        let (one, singles) = run(&[37]);
        assert_eq!(one.iter().filter(|ok| !**ok).count(), 1);
        assert!(!one[37]);
        assert!(
            singles <= 2 * BISECT_SINGLY,
            "{singles} single verifications for one forgery in 64"
        );
        let (three, singles) = run(&[0, 31, 63]);
        assert_eq!(three.iter().filter(|ok| !**ok).count(), 3);
        assert!(
            singles <= 6 * BISECT_SINGLY,
            "{singles} for three forgeries in 64"
        );
        let every: Vec<usize> = (0..64).collect();
        let (none, _) = run(&every);
        assert!(none.iter().all(|ok| !*ok));
    }

    #[test]
    fn groups_are_sized_for_the_expected_failures() {
        // A DAP's batch: 64 meters, 64 keys, 129 points in one equation:
        // two of 65 instead.
        assert_eq!(group_size(64, 64, 0), 32);
        assert_eq!(group_size(64, 64, 1), 32); // 500 → 32 at most
        assert_eq!(group_size(64, 64, 10), 32); // 1 %: 50 → 32
        assert_eq!(group_size(64, 64, 100), 4); // 10 %: 5 → 4
        assert_eq!(group_size(64, 64, 250), 2);
        assert_eq!(group_size(64, 64, 400), 1);
        assert_eq!(group_size(64, 64, 1000), 1);
        assert_eq!(group_size(64, 64, u64::MAX), 1);
        // A burst from one signer: 66 points, one equation.
        assert_eq!(group_size(64, 1, 0), 64);
        // Few items: one equation.
        assert_eq!(group_size(8, 8, 0), 8);
        assert_eq!(group_size(35, 35, 0), 35);
        // Many: Pippenger, one equation.
        assert_eq!(group_size(95, 95, 0), 95);
        assert_eq!(group_size(256, 256, 0), 256);
        assert_eq!(group_size(256, 256, 1), 256); // 500 → 256 at most
        // Between: groups that keep each equation small.
        assert_eq!(group_size(80, 80, 0), 32);
        assert_eq!(group_size(80, 4, 0), 64);
        assert_eq!(group_size(0, 0, 3), 1);
        assert_eq!(group_size(0, 0, 0), 1);
    }

    #[test]
    fn the_expected_failures_change_what_is_checked_together_never_what_is_accepted() {
        use crate::testrng::TestRng;
        use ed25519_dalek::{Signer, SigningKey};
        let mut rng = TestRng::new(5);
        let keys: Vec<SigningKey> = (0..5).map(|_| SigningKey::generate(&mut rng)).collect();
        let vks: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        let msgs: Vec<Vec<u8>> = (0..61u8).map(|i| vec![i; 33]).collect();
        for forged in [
            vec![],
            vec![3],
            vec![0, 9, 17, 30, 44, 60],
            (0..61).step_by(3).collect(),
        ] {
            let sigs: Vec<Signature> = (0..msgs.len())
                .map(|i| {
                    let signer = if forged.contains(&i) {
                        (i + 1) % 5
                    } else {
                        i % 5
                    };
                    keys[signer].sign(&msgs[i])
                })
                .collect();
            let items: Vec<(&VerifyingKey, &[u8], &Signature)> = (0..msgs.len())
                .map(|i| (&vks[i % 5], msgs[i].as_slice(), &sigs[i]))
                .collect();
            let strict: Vec<bool> = items
                .iter()
                .map(|(k, m, s)| k.verify_strict(m, s).is_ok())
                .collect();
            for expected in [0, 1, 10, 100, 333, 1000, u64::MAX] {
                let got: Vec<bool> = ed25519_verify_batch_expecting(&items, expected)
                    .iter()
                    .map(Result::is_ok)
                    .collect();
                assert_eq!(got, strict, "forged {forged:?}, expecting {expected}");
            }
        }
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]
//! Fixtures shared by the envelope and attack tests: credentials from seeds,
//! groups with authorized signers, a tiny CBOR writer and hand-built COSE
//! objects (for forgeries the library would never produce itself).

use ed25519_dalek::{Signer, SigningKey};
use sealcast_core::broadcast::broadcast_context;
use sealcast_core::cose;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::{AeadAlg, NONCE_LEN, aead_open, aead_seal};
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::kdf::{self, KdfType};

/// A fixed "now" for tests (2024-01-01T00:00:00Z).
pub const NOW: UnixMillis = UnixMillis::new(1_704_067_200_000);

pub const BOTH_ALGS: [AeadAlg; 2] = [AeadAlg::A128Gcm, AeadAlg::A256Gcm];

pub fn eid(name: &str) -> EntityId {
    EntityId::new(name).unwrap()
}

pub fn gid(bytes: &[u8]) -> GroupId {
    GroupId::new(bytes).unwrap()
}

pub fn sid(bytes: &[u8]) -> SenderId {
    SenderId::new(bytes).unwrap()
}

pub fn seq(n: u64) -> SeqNum {
    SeqNum::new(n).unwrap()
}

/// A deterministic credential: both secrets derived from `seed`.
pub fn cred(name: &str, seed: u8) -> EntityCredential {
    let mut ed = [0u8; 32];
    let mut x = [0u8; 32];
    for (i, (e, k)) in ed.iter_mut().zip(x.iter_mut()).enumerate() {
        *e = seed.wrapping_mul(31).wrapping_add(i as u8);
        *k = seed
            .wrapping_mul(17)
            .wrapping_add(0x80)
            .wrapping_add(i as u8);
    }
    EntityCredential::from_secret_bytes(eid(name), &ed, &x)
}

/// A signing key that belongs to nobody in particular.
pub fn stray_signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed ^ 0xa5; 32])
}

pub fn authorized(c: &EntityCredential, sender_id: &[u8]) -> AuthorizedSigner {
    AuthorizedSigner {
        sender_id: sid(sender_id),
        entity: c.id().clone(),
        verifying_key: c.signing_key().verifying_key(),
    }
}

/// Group key material with a deterministic secret (`secret_seed`).
pub fn material(
    group: &[u8],
    epoch: u32,
    alg: AeadAlg,
    secret_seed: u8,
    signers: Vec<AuthorizedSigner>,
) -> GroupKeyMaterial {
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ secret_seed).collect();
    let salt = [secret_seed, 1, 2, 3, 4, 5, 6, 7];
    GroupKeyMaterial::new(
        gid(group),
        Epoch::new(epoch),
        alg,
        &secret,
        &salt,
        signers,
        None,
    )
    .unwrap()
}

/// The standard cast: a manager, two agents authorized to sign for the
/// group (sender ids `0x01` and `0x02`), a device, a headend and a meter.
pub struct Fixture {
    pub manager: EntityCredential,
    pub agent_a: EntityCredential,
    pub agent_b: EntityCredential,
    pub device: EntityCredential,
    pub device_y: EntityCredential,
    pub headend: EntityCredential,
    pub meter: EntityCredential,
    pub outsider: EntityCredential,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            manager: cred("manager", 1),
            agent_a: cred("agent-a", 2),
            agent_b: cred("agent-b", 3),
            device: cred("device-x", 4),
            device_y: cred("device-y", 5),
            headend: cred("headend", 6),
            meter: cred("meter-17", 7),
            outsider: cred("outsider", 8),
        }
    }

    pub fn signers(&self) -> Vec<AuthorizedSigner> {
        vec![
            authorized(&self.agent_a, &[0x01]),
            authorized(&self.agent_b, &[0x02]),
        ]
    }

    /// Material for `group` at `epoch`, secret seeded by the group bytes.
    pub fn material(&self, group: &[u8], epoch: u32, alg: AeadAlg) -> GroupKeyMaterial {
        let seed = group.iter().fold(0x3cu8, |a, b| a.wrapping_mul(5) ^ b);
        material(group, epoch, alg, seed, self.signers())
    }

    pub fn context(&self, group: &[u8], epoch: u32, alg: AeadAlg) -> GroupContext {
        GroupContext::new(&self.material(group, epoch, alg)).unwrap()
    }
}

// ---------------------------------------------------------------------------
// A tiny CBOR writer (definite lengths, shortest heads)
// ---------------------------------------------------------------------------

pub fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

pub fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        head(out, 1, (-1 - v) as u64);
    }
}

pub fn bstr(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn tstr(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A header value.
#[derive(Clone, Copy, Debug)]
pub enum Hv<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    /// Already encoded CBOR.
    Raw(&'a [u8]),
}

pub fn map(out: &mut Vec<u8>, entries: &[(i64, Hv<'_>)]) {
    head(out, 5, entries.len() as u64);
    for (label, v) in entries {
        int(out, *label);
        match v {
            Hv::Int(i) => int(out, *i),
            Hv::Bytes(b) => bstr(out, b),
            Hv::Raw(r) => out.extend_from_slice(r),
        }
    }
}

pub fn map_bytes(entries: &[(i64, Hv<'_>)]) -> Vec<u8> {
    let mut out = Vec::new();
    map(&mut out, entries);
    out
}

/// `n` nested one-element arrays around a 0: `0x81 0x81 … 0x00`.
pub fn nested_arrays(n: usize) -> Vec<u8> {
    let mut v = vec![0x81; n];
    v.push(0x00);
    v
}

// ---------------------------------------------------------------------------
// Hand-built COSE objects
// ---------------------------------------------------------------------------

pub const TAG_SIGN1: u8 = 0xd2;
pub const TAG_ENCRYPT0: u8 = 0xd0;
pub const TAG_MAC0: u8 = 0xd1;
pub const ALG_EDDSA: i64 = -8;

/// Protected header `{1: alg}`.
pub fn protected_alg(alg: i64) -> Vec<u8> {
    map_bytes(&[(1, Hv::Int(alg))])
}

/// A tagged COSE_Sign1 over `payload` with `external_aad`, `kid` unprotected.
pub fn sign1(key: &SigningKey, kid: &[u8], external_aad: &[u8], payload: &[u8]) -> Vec<u8> {
    let protected = protected_alg(ALG_EDDSA);
    let sig = key.sign(&cose::sig1_structure(&protected, external_aad, payload));
    sign1_raw(&protected, &[(4, Hv::Bytes(kid))], payload, &sig.to_bytes())
}

pub fn sign1_raw(
    protected: &[u8],
    unprotected: &[(i64, Hv<'_>)],
    payload: &[u8],
    sig: &[u8],
) -> Vec<u8> {
    let mut out = vec![TAG_SIGN1, 0x84];
    bstr(&mut out, protected);
    map(&mut out, unprotected);
    bstr(&mut out, payload);
    bstr(&mut out, sig);
    out
}

pub fn encrypt0_raw(protected: &[u8], unprotected: &[(i64, Hv<'_>)], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = vec![TAG_ENCRYPT0, 0x83];
    bstr(&mut out, protected);
    map(&mut out, unprotected);
    bstr(&mut out, ciphertext);
    out
}

/// Sender key and common IV of `sender` in `m`, derived the RFC 8613 way,
/// exactly as any member holding the master secret can.
pub fn sender_key_and_iv(m: &GroupKeyMaterial, sender: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let alg = m.alg().cose_id();
    let ctx = Some(m.group().as_bytes());
    let key = kdf::derive(
        m.master_secret(),
        m.master_salt(),
        sender,
        ctx,
        alg,
        KdfType::Key,
        m.alg().key_len(),
    )
    .unwrap();
    let iv = kdf::derive(
        m.master_secret(),
        m.master_salt(),
        &[],
        ctx,
        alg,
        KdfType::Iv,
        NONCE_LEN,
    )
    .unwrap();
    (key.to_vec(), iv.to_vec())
}

/// Outer header fields of a hand-built broadcast.
#[derive(Clone, Debug)]
pub struct Outer<'a> {
    pub sender: &'a [u8],
    pub seq: u64,
    pub timestamp: u64,
    pub target: &'a str,
}

/// A valid outer COSE_Encrypt0 of a broadcast around an arbitrary `inner`
/// plaintext, built by hand by someone holding `m`'s master secret: correct
/// headers, the right sender key, nonce and AAD.
pub fn encrypt_broadcast(m: &GroupKeyMaterial, o: &Outer<'_>, inner: &[u8]) -> Vec<u8> {
    encrypt_broadcast_with(m, o, inner, &[])
}

/// As [`encrypt_broadcast`], with extra unprotected header entries.
pub fn encrypt_broadcast_with(
    m: &GroupKeyMaterial,
    o: &Outer<'_>,
    inner: &[u8],
    extra: &[(i64, Hv<'_>)],
) -> Vec<u8> {
    let (key, iv) = sender_key_and_iv(m, o.sender);
    let s = seq(o.seq);
    let piv = s.partial_iv();
    let context = broadcast_context(
        m.group(),
        m.epoch(),
        &sid(o.sender),
        s,
        UnixMillis::new(o.timestamp),
        o.target,
    );
    let protected = protected_alg(m.alg().cose_id());
    let aad = cose::enc_structure("Encrypt0", &protected, &context);
    let nonce = kdf::nonce(&iv, o.sender, &piv).unwrap();
    let ct = aead_seal(m.alg(), &key, &nonce, &aad, inner).unwrap();
    let epoch = i64::from(m.epoch().get());
    let mut headers = vec![
        (4, Hv::Bytes(o.sender)),
        (6, Hv::Bytes(&piv)),
        (10, Hv::Bytes(m.group().as_bytes())),
        (-70_001, Hv::Int(epoch)),
        (-70_002, Hv::Int(o.timestamp as i64)),
    ];
    headers.extend_from_slice(extra);
    encrypt0_raw(&protected, &headers, &ct)
}

/// The inner COSE_Sign1 an honest signer makes for this outer context.
pub fn sign_broadcast_inner(
    m: &GroupKeyMaterial,
    key: &SigningKey,
    inner_kid: &[u8],
    o: &Outer<'_>,
    payload: &[u8],
) -> Vec<u8> {
    let context = broadcast_context(
        m.group(),
        m.epoch(),
        &sid(o.sender),
        seq(o.seq),
        UnixMillis::new(o.timestamp),
        o.target,
    );
    sign1(key, inner_kid, &context, payload)
}

/// Decrypts a broadcast of group `m` (as any member can) and returns the
/// inner COSE_Sign1 bytes.
pub fn decrypt_broadcast(m: &GroupKeyMaterial, bytes: &[u8], target: &str) -> Vec<u8> {
    let h = sealcast_core::broadcast::peek_broadcast(bytes).unwrap();
    let obj = cose::parse_encrypt0(bytes, usize::MAX).unwrap();
    let (key, iv) = sender_key_and_iv(m, h.sender_id.as_bytes());
    let context = broadcast_context(&h.group, h.epoch, &h.sender_id, h.seq, h.timestamp, target);
    let protected = obj.protected.original_data.clone().unwrap();
    let aad = cose::enc_structure("Encrypt0", &protected, &context);
    let nonce = kdf::nonce(&iv, h.sender_id.as_bytes(), &h.seq.partial_iv()).unwrap();
    aead_open(m.alg(), &key, &nonce, &aad, &obj.ciphertext.unwrap())
        .unwrap()
        .to_vec()
}

//! Per-group, per-epoch key material and the contexts derived from it.
//!
//! [`GroupKeyMaterial`] is what the manager generates, signs and delivers
//! (the plaintext of a key delivery): a master secret and salt, the AEAD
//! algorithm, and the list of members authorized to sign for the group, each
//! with its sender id and Ed25519 public key. Devices learn authorized
//! signers only from here, never from an agent.
//!
//! [`GroupContext`] is derived from it once: the common IV and one expanded
//! AES-GCM key per authorized sender (RFC 8613 §3.2 with the group id as ID
//! Context), plus each signer's already-decompressed verifying key.

use std::collections::HashMap;

use ciborium::Value;
use ed25519_dalek::VerifyingKey;
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{AeadAlg, AeadKey, NONCE_LEN, ed25519_public};
use crate::error::{Error, Result};
use crate::ids::{EntityId, Epoch, GroupId, SenderId, UnixMillis};
use crate::kdf::{KdfType, derive};

/// Largest encoded key material accepted.
pub const MAX_MATERIAL_LEN: usize = 1 << 20;
/// Most authorized signers one group may list.
pub const MAX_SIGNERS: usize = 4096;

/// A member allowed to sign commands or alerts for a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizedSigner {
    /// Its sender id inside the group (the outer `kid`).
    pub sender_id: SenderId,
    /// Its entity id.
    pub entity: EntityId,
    /// Its Ed25519 public key.
    pub verifying_key: VerifyingKey,
}

/// Secret key material of one group epoch. Zeroized on drop; `Debug` shows
/// no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKeyMaterial {
    group: GroupId,
    epoch: Epoch,
    alg: AeadAlg,
    master_secret: Zeroizing<Vec<u8>>,
    master_salt: Vec<u8>,
    signers: Vec<AuthorizedSigner>,
    not_after: Option<UnixMillis>,
}

impl core::fmt::Debug for GroupKeyMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupKeyMaterial")
            .field("group", &self.group)
            .field("epoch", &self.epoch)
            .field("alg", &self.alg)
            .field("signers", &self.signers.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Drop for GroupKeyMaterial {
    fn drop(&mut self) {
        self.master_salt.zeroize();
    }
}

impl GroupKeyMaterial {
    /// Assembles key material; checks lengths and that sender ids and
    /// entities are unique.
    pub fn new(
        group: GroupId,
        epoch: Epoch,
        alg: AeadAlg,
        master_secret: &[u8],
        master_salt: &[u8],
        signers: Vec<AuthorizedSigner>,
        not_after: Option<UnixMillis>,
    ) -> Result<Self> {
        if master_secret.len() < 16 || master_secret.len() > 64 {
            return Err(Error::InvalidKey("master secret must be 16 to 64 bytes"));
        }
        if master_salt.len() > 64 {
            return Err(Error::InvalidKey("master salt must be at most 64 bytes"));
        }
        if signers.len() > MAX_SIGNERS {
            return Err(Error::TooLarge {
                what: "authorized signers",
                limit: MAX_SIGNERS,
            });
        }
        for (i, s) in signers.iter().enumerate() {
            if signers[..i]
                .iter()
                .any(|o| o.sender_id == s.sender_id || o.entity == s.entity)
            {
                return Err(Error::Malformed(
                    "duplicate sender id or entity among signers",
                ));
            }
        }
        Ok(Self {
            group,
            epoch,
            alg,
            master_secret: Zeroizing::new(master_secret.to_vec()),
            master_salt: master_salt.to_vec(),
            signers,
            not_after,
        })
    }

    /// Fresh random material (32-byte secret, 8-byte salt).
    pub fn generate<R: CryptoRng + ?Sized>(
        group: GroupId,
        epoch: Epoch,
        alg: AeadAlg,
        signers: Vec<AuthorizedSigner>,
        not_after: Option<UnixMillis>,
        rng: &mut R,
    ) -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        let mut salt = [0u8; 8];
        rng.fill_bytes(&mut salt);
        Self::new(
            group,
            epoch,
            alg,
            secret.as_ref(),
            &salt,
            signers,
            not_after,
        )
    }

    /// The material of the next epoch for a join: `K' = HKDF(K, "next
    /// epoch")` keeps current members able to follow locally, while a
    /// newcomer given only `K'` cannot compute `K`.
    pub fn ratchet(
        &self,
        signers: Vec<AuthorizedSigner>,
        not_after: Option<UnixMillis>,
    ) -> Result<Self> {
        let next = self.epoch.next().ok_or(Error::SequenceExhausted)?;
        let mut info = Vec::with_capacity(32);
        info.extend_from_slice(b"sealcast next epoch");
        info.extend_from_slice(&next.get().to_be_bytes());
        let secret = crate::crypto::hkdf_sha256(
            &self.master_salt,
            &self.master_secret,
            &info,
            self.master_secret.len(),
        )?;
        Self::new(
            self.group.clone(),
            next,
            self.alg,
            &secret,
            &self.master_salt,
            signers,
            not_after,
        )
    }

    /// The group.
    pub fn group(&self) -> &GroupId {
        &self.group
    }
    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The AEAD algorithm.
    pub fn alg(&self) -> AeadAlg {
        self.alg
    }
    /// The authorized signers.
    pub fn signers(&self) -> &[AuthorizedSigner] {
        &self.signers
    }
    /// End of validity, if any.
    pub fn not_after(&self) -> Option<UnixMillis> {
        self.not_after
    }
    /// The master secret (hazardous: for key stores only).
    pub fn master_secret(&self) -> &[u8] {
        &self.master_secret
    }
    /// The master salt.
    pub fn master_salt(&self) -> &[u8] {
        &self.master_salt
    }

    /// Material for the same group with a new epoch, secret and salt (the
    /// alg stays): what a tree rekey installs.
    pub fn rekeyed(
        &self,
        epoch: Epoch,
        master_secret: &[u8],
        master_salt: &[u8],
        signers: Vec<AuthorizedSigner>,
        not_after: Option<UnixMillis>,
    ) -> Result<Self> {
        Self::new(
            self.group.clone(),
            epoch,
            self.alg,
            master_secret,
            master_salt,
            signers,
            not_after,
        )
    }

    /// CBOR encoding: a map `{1: group, 2: epoch, 3: alg, 4: secret, 5: salt,
    /// 6: [[sender_id, entity, ed25519_pk] …], 7: not_after / null}`.
    pub fn to_cbor(&self) -> Result<Zeroizing<Vec<u8>>> {
        let signers = signers_to_value(&self.signers);
        let map = Value::Map(vec![
            (Value::from(1), Value::Bytes(self.group.as_bytes().to_vec())),
            (Value::from(2), Value::from(self.epoch.get())),
            (Value::from(3), Value::from(self.alg.cose_id())),
            (Value::from(4), Value::Bytes(self.master_secret.to_vec())),
            (Value::from(5), Value::Bytes(self.master_salt.clone())),
            (Value::from(6), signers),
            (
                Value::from(7),
                self.not_after.map_or(Value::Null, |t| Value::from(t.get())),
            ),
        ]);
        let mut out = Zeroizing::new(Vec::new());
        ciborium::into_writer(&map, &mut *out)
            .map_err(|_| Error::Malformed("key material encoding"))?;
        wipe_value(map);
        Ok(out)
    }

    /// Parses the CBOR encoding; bounded and strict (all keys present once).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MATERIAL_LEN {
            return Err(Error::TooLarge {
                what: "key material",
                limit: MAX_MATERIAL_LEN,
            });
        }
        let value: Value = ciborium::from_reader(bytes)
            .map_err(|_| Error::Malformed("key material is not CBOR"))?;
        let result = Self::from_value(&value);
        wipe_value(value);
        result
    }

    fn from_value(value: &Value) -> Result<Self> {
        const BAD: Error = Error::Malformed("key material map");
        let Value::Map(entries) = value else {
            return Err(BAD);
        };
        if entries.len() != 7 {
            return Err(BAD);
        }
        let get = |k: i64| -> Result<&Value> {
            let mut found = entries
                .iter()
                .filter(|(key, _)| key.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(k));
            let first = found.next().ok_or(BAD)?;
            if found.next().is_some() {
                return Err(BAD);
            }
            Ok(&first.1)
        };
        let bytes = |k: i64| -> Result<&[u8]> { get(k)?.as_bytes().map(Vec::as_slice).ok_or(BAD) };
        let uint = |v: &Value| -> Result<u64> {
            v.as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or(BAD)
        };
        let group = GroupId::new(bytes(1)?)?;
        let epoch = Epoch::new(u32::try_from(uint(get(2)?)?).map_err(|_| BAD)?);
        let alg_id = get(3)?
            .as_integer()
            .and_then(|i| i64::try_from(i).ok())
            .ok_or(BAD)?;
        let alg = AeadAlg::from_cose_id(alg_id)?;
        let secret = bytes(4)?;
        let salt = bytes(5)?;
        let signers = signers_from_value(get(6)?)?;
        let not_after = match get(7)? {
            Value::Null => None,
            v => Some(UnixMillis::new(uint(v)?)),
        };
        Self::new(group, epoch, alg, secret, salt, signers, not_after)
    }
}

/// Encodes a signer list as `[[sender_id, entity, ed25519_pk] …]`.
pub fn signers_to_value(signers: &[AuthorizedSigner]) -> Value {
    Value::Array(
        signers
            .iter()
            .map(|s| {
                Value::Array(vec![
                    Value::Bytes(s.sender_id.as_bytes().to_vec()),
                    Value::Text(s.entity.as_str().to_owned()),
                    Value::Bytes(s.verifying_key.as_bytes().to_vec()),
                ])
            })
            .collect(),
    )
}

/// Decodes a signer list (bounded by [`MAX_SIGNERS`]; keys checked).
pub fn signers_from_value(value: &Value) -> Result<Vec<AuthorizedSigner>> {
    const BAD: Error = Error::Malformed("authorized signer list");
    let Value::Array(list) = value else {
        return Err(BAD);
    };
    if list.len() > MAX_SIGNERS {
        return Err(Error::TooLarge {
            what: "authorized signers",
            limit: MAX_SIGNERS,
        });
    }
    let mut signers = Vec::with_capacity(list.len());
    for item in list {
        let Value::Array(parts) = item else {
            return Err(BAD);
        };
        let [Value::Bytes(sid), Value::Text(entity), Value::Bytes(pk)] = parts.as_slice() else {
            return Err(BAD);
        };
        signers.push(AuthorizedSigner {
            sender_id: SenderId::new(sid)?,
            entity: EntityId::new(entity)?,
            verifying_key: ed25519_public(pk)?,
        });
    }
    Ok(signers)
}

/// Overwrites byte strings inside a decoded value before it is dropped.
fn wipe_value(mut v: Value) {
    fn walk(v: &mut Value) {
        match v {
            Value::Bytes(b) => b.zeroize(),
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Map(m) => m.iter_mut().for_each(|(k, v)| {
                walk(k);
                walk(v);
            }),
            Value::Tag(_, inner) => walk(inner),
            _ => {}
        }
    }
    walk(&mut v);
}

/// What a receiver knows about one authorized sender.
#[derive(Clone)]
pub(crate) struct SenderEntry {
    pub(crate) entity: EntityId,
    pub(crate) verifying_key: VerifyingKey,
    pub(crate) key: AeadKey,
}

/// Keys derived from one epoch's material, ready for sealing and opening.
#[derive(Clone)]
pub struct GroupContext {
    group: GroupId,
    epoch: Epoch,
    alg: AeadAlg,
    common_iv: Zeroizing<[u8; NONCE_LEN]>,
    senders: HashMap<SenderId, SenderEntry>,
    not_after: Option<UnixMillis>,
}

impl core::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupContext")
            .field("group", &self.group)
            .field("epoch", &self.epoch)
            .field("alg", &self.alg)
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl GroupContext {
    /// Derives the common IV and every authorized sender's key.
    pub fn new(material: &GroupKeyMaterial) -> Result<Self> {
        let alg_id = material.alg.cose_id();
        let ctx = Some(material.group.as_bytes());
        let iv = derive(
            material.master_secret(),
            material.master_salt(),
            &[],
            ctx,
            alg_id,
            KdfType::Iv,
            NONCE_LEN,
        )?;
        let mut common_iv = Zeroizing::new([0u8; NONCE_LEN]);
        common_iv.copy_from_slice(&iv);
        let mut senders = HashMap::with_capacity(material.signers.len());
        for s in &material.signers {
            let key = derive(
                material.master_secret(),
                material.master_salt(),
                s.sender_id.as_bytes(),
                ctx,
                alg_id,
                KdfType::Key,
                material.alg.key_len(),
            )?;
            senders.insert(
                s.sender_id.clone(),
                SenderEntry {
                    entity: s.entity.clone(),
                    verifying_key: s.verifying_key,
                    key: AeadKey::new(material.alg, &key)?,
                },
            );
        }
        Ok(Self {
            group: material.group.clone(),
            epoch: material.epoch,
            alg: material.alg,
            common_iv,
            senders,
            not_after: material.not_after,
        })
    }

    /// The group.
    pub fn group(&self) -> &GroupId {
        &self.group
    }
    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The AEAD algorithm.
    pub fn alg(&self) -> AeadAlg {
        self.alg
    }
    /// End of validity, if any.
    pub fn not_after(&self) -> Option<UnixMillis> {
        self.not_after
    }
    /// The sender id under which `entity` may sign for this group.
    pub fn sender_id_of(&self, entity: &EntityId) -> Option<&SenderId> {
        self.senders
            .iter()
            .find_map(|(sid, e)| (e.entity == *entity).then_some(sid))
    }
    /// The entity behind a sender id.
    pub fn entity_of(&self, sender: &SenderId) -> Option<&EntityId> {
        self.senders.get(sender).map(|e| &e.entity)
    }
    pub(crate) fn sender(&self, sender: &SenderId) -> Option<&SenderEntry> {
        self.senders.get(sender)
    }
    pub(crate) fn common_iv(&self) -> &[u8] {
        self.common_iv.as_ref()
    }
}

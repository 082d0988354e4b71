//! The trust store: the public credentials a node accepts, by entity id.

use super::*;

// ---------------------------------------------------------------------------
// Trust store

/// The public credentials an entity trusts, by entity id.
///
/// Its file is one COSE_KeySet with the Ed25519 and X25519 keys of every
/// entity, grouped by `kid`. Reading is bounded by [`TrustStore::MAX_FILE_LEN`]
/// and [`TrustStore::MAX_KEYS`] (so at most 50 000 entities per file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustStore {
    pub(super) by_id: BTreeMap<EntityId, PublicCredential>,
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

//! A logical key hierarchy (RFC 2627, "LKH") for group rekeying.
//!
//! The manager keeps a complete binary tree of 32-byte key-encryption keys
//! ([`KeyTree`]); every member sits at a leaf and holds the keys on the path
//! from its leaf to the root ([`MemberPath`]). The root key is the group
//! secret; the caller derives its group key material from it (HKDF), never
//! uses it directly as an AEAD key.
//!
//! # Shape
//!
//! A tree of depth `D` (1 ≤ `D` ≤ [`MAX_DEPTH`]) has `2^D` leaves and is
//! stored as an array with heap indexing: the root is node 1, the children of
//! node `i` are `2i` and `2i + 1`, and leaf `p` (a [`LeafIndex`], `0 ≤ p <
//! 2^D`) is node `2^D + p`. A node's *height* is its distance from the leaf
//! level (leaves 0, root `D`). Only nodes with at least one member below them
//! hold a key; the others are all-zero and get fresh keys when a member
//! arrives.
//!
//! # Eviction ([`KeyTree::remove_member`])
//!
//! Every node on the evicted leaf's path that still has members below it gets
//! a fresh random key; each such key is wrapped under the key of each of its
//! non-empty children (the child on the path with its *new* key, the other
//! child with its untouched key). The result is one [`TreeRekey`] of at most
//! `2D − 1` [`WrappedKey`]s, ordered bottom-up, to broadcast (the caller
//! signs it). A remaining member finds the lowest entry wrapped under a key it
//! holds — at the node where its path meets the evicted one — and climbs to
//! the root: at most `D` unwraps. The evicted member holds only the old keys
//! of the replaced nodes and none of the untouched siblings, so nothing opens
//! for it. With the tree kept as small as the membership allows (see
//! *Growth*), `D = ⌈log2 n⌉`.
//!
//! # Wrapping and the nonce argument
//!
//! A wrapped key is AES-256-GCM (through [`sealcast_core::crypto::AeadKey`])
//! under the key of node `under`, of the new key of its parent `node`, with
//!
//! ```text
//! nonce = epoch_be32 ‖ node_be32 ‖ under_be32               (12 bytes)
//! aad   = "sealcast lkh v1" ‖ epoch_be32 ‖ node_be32 ‖ under_be32
//! ```
//!
//! A (key, nonce) pair never repeats: the tree refuses any event whose epoch
//! is not strictly larger than the last one it performed
//! ([`Error::StaleEpoch`]), and within one rekey every (node, under) pair is
//! sealed once, so the triple (epoch, node, under) — hence the nonce — is
//! used at most once in the lifetime of a tree, whatever key sits at `under`.
//! Keys of different trees are independent random values (or one-way
//! derivations of them), so nonces shared across trees are harmless. The
//! argument depends on the tree's epoch never going backwards: **persist
//! the tree ([`KeyTree::to_bytes`]) before broadcasting the rekey**; a
//! manager restored from an older snapshot must move to an epoch above every
//! epoch it may already have used.
//!
//! # Join ([`KeyTree::add_members`]) — no broadcast of keys
//!
//! Newcomers (one or a batch, all in one epoch) take the lowest free leaves
//! and get fresh leaf keys. Every node on a newcomer's path that already had
//! members below it before the join is ratcheted once,
//! `K' = HKDF-SHA256(salt = ∅, IKM = K, info = "sealcast lkh join" ‖
//! epoch_be32 ‖ node_be32, 32)` (node in the numbering after the join), and
//! every node that had none gets a fresh random key. Each newcomer receives
//! its path keys point-to-point ([`KeyTree::path`], encrypted end to end by
//! the caller); it cannot run the ratchet backwards, so it cannot read
//! earlier rekeys or traffic. The existing members learn of the join from a
//! [`TreeJoin`] (epoch and the newcomers' leaves; no key material — the
//! caller carries it in its signed join notice) and apply the same ratchet to
//! the nodes their path shares with any newcomer's
//! ([`MemberPath::apply_join`]).
//!
//! # Growth
//!
//! Leaves freed by evictions are reused (lowest first), so the tree grows only
//! when a join needs more leaves than are free. It then adds levels: the old
//! tree becomes the leftmost subtree, node indices are renumbered (leaf
//! indices stay), and each new root's key is `HKDF-SHA256(salt = ∅, IKM =
//! key of the root below it, info = "sealcast lkh grow" ‖ epoch_be32 ‖
//! new_depth_be32, 32)`; then the join ratchet above applies (the new roots
//! are on the newcomers' paths). Because leaves are filled lowest first, the
//! depth after a join is the smallest depth ≥ the old one that holds the
//! highest newcomer leaf, so members derive it from the [`TreeJoin`] and
//! growth needs no message of its own. Capacity never shrinks, so after many
//! evictions a rekey can cost more than 2⌈log2 n⌉ (the bound is `2·depth −
//! 1`); a manager that expects a large fleet may start with
//! [`KeyTree::with_capacity`], and a tree that shrank a lot can be rebuilt
//! with [`KeyTree::with_members`] (a full re-provisioning).
//!
//! # Sizes and limits
//!
//! Depth is at most [`MAX_DEPTH`] (2^20 = 1 048 576 members); the array holds
//! `2^(D+1)` keys (64 MiB at the maximum, 8 MiB for 100 000 members). A
//! rekey carries at most `2D − 1` wrapped keys of 48 bytes each.

use ciborium::Value;
use rand_core::CryptoRng;
use sealcast_core::crypto::{AeadAlg, AeadKey, ct_eq, hkdf_sha256};
use sealcast_core::ids::Epoch;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of every node key.
pub const KEY_LEN: usize = 32;
/// Length of one wrapped key: the 32-byte key and the 16-byte GCM tag.
pub const WRAPPED_LEN: usize = KEY_LEN + sealcast_core::crypto::TAG_LEN;
/// Largest tree depth: at most 2^20 members.
pub const MAX_DEPTH: u8 = 20;
/// Most members a tree can hold.
pub const MAX_MEMBERS: usize = 1 << MAX_DEPTH;
/// Most wrapped keys a [`TreeRekey`] may carry (also the decoding bound).
pub const MAX_WRAPPED_KEYS: usize = 2 * MAX_DEPTH as usize;
/// Largest encoded [`TreeRekey`] accepted.
pub const MAX_REKEY_LEN: usize = 4096;
/// Most newcomers one [`TreeJoin`] may seat.
pub const MAX_JOIN_LEAVES: usize = 1 << 16;
/// Largest encoded [`TreeJoin`] accepted.
pub const MAX_JOIN_LEN: usize = 16 + 5 * MAX_JOIN_LEAVES;

const AAD_LABEL: &[u8] = b"sealcast lkh v1";
const JOIN_LABEL: &[u8] = b"sealcast lkh join";
const GROW_LABEL: &[u8] = b"sealcast lkh grow";
const CBOR_VERSION: u64 = 1;
const TREE_MAGIC: &[u8; 4] = b"SLKT";
const PATH_MAGIC: &[u8; 4] = b"SLKP";
const STATE_VERSION: u8 = 1;
/// magic, version, depth, epoch, member count.
const TREE_HEADER_LEN: usize = 4 + 1 + 1 + 4 + 4;
/// magic, version, depth, epoch, leaf.
const PATH_HEADER_LEN: usize = 4 + 1 + 1 + 4 + 4;

// ---------------------------------------------------------------------------
// Indices and secrets
// ---------------------------------------------------------------------------

/// A node of the tree in heap numbering (root = 1, children `2i`, `2i + 1`).
///
/// Node indices depend on the tree depth: when the tree grows, every node is
/// renumbered (leaf indices are not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIndex(u32);

impl NodeIndex {
    /// The root.
    pub const ROOT: NodeIndex = NodeIndex(1);

    /// Wraps a heap index (not checked against any tree).
    pub const fn new(n: u32) -> Self {
        Self(n)
    }
    /// The heap index.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// A member's seat: its leaf position, `0 ≤ p < capacity`. Stable for as long
/// as the member stays, also when the tree grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeafIndex(u32);

impl LeafIndex {
    /// Wraps a leaf position (not checked against any tree).
    pub const fn new(n: u32) -> Self {
        Self(n)
    }
    /// The leaf position.
    pub const fn get(self) -> u32 {
        self.0
    }
    /// The node of this leaf in a tree of `depth`.
    pub const fn node(self, depth: u8) -> NodeIndex {
        NodeIndex((1 << depth) | self.0)
    }
}

/// A 32-byte node key. Zeroized on drop; `Debug` shows no bytes; equality is
/// constant-time.
#[derive(Clone)]
pub struct Secret(Zeroizing<[u8; KEY_LEN]>);

impl Secret {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut s = Self(Zeroizing::new([0u8; KEY_LEN]));
        rng.fill_bytes(s.0.as_mut_slice());
        s
    }
    fn from_slice(bytes: &[u8]) -> Result<Self> {
        let mut s = Self(Zeroizing::new([0u8; KEY_LEN]));
        if bytes.len() != KEY_LEN {
            return Err(Error::Malformed("node key must be 32 bytes"));
        }
        s.0.copy_from_slice(bytes);
        Ok(s)
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.0.as_slice(), other.0.as_slice())
    }
}

impl Eq for Secret {}

/// floor(log2(n)) for n ≥ 1: the depth of heap node `n` below the root.
fn level_of(n: u32) -> u32 {
    31 - n.leading_zeros()
}

/// The smallest depth (≥ 1) whose tree holds `n` members.
fn depth_for(n: usize) -> Result<u8> {
    if n > MAX_MEMBERS {
        return Err(Error::TreeFull { limit: MAX_MEMBERS });
    }
    let mut d = 1u8;
    while (1usize << d) < n {
        d += 1;
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Crypto helpers
// ---------------------------------------------------------------------------

fn wrap_context(epoch: Epoch, node: u32, under: u32) -> ([u8; 12], [u8; 27]) {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&epoch.get().to_be_bytes());
    nonce[4..8].copy_from_slice(&node.to_be_bytes());
    nonce[8..].copy_from_slice(&under.to_be_bytes());
    let mut aad = [0u8; 27];
    aad[..15].copy_from_slice(AAD_LABEL);
    aad[15..].copy_from_slice(&nonce);
    (nonce, aad)
}

fn wrap(kek: &[u8; KEY_LEN], epoch: Epoch, node: u32, under: u32, key: &Secret) -> Result<Vec<u8>> {
    let (nonce, aad) = wrap_context(epoch, node, under);
    Ok(AeadKey::new(AeadAlg::A256Gcm, kek)?.seal(&nonce, &aad, key.as_bytes())?)
}

fn unwrap(kek: &Secret, epoch: Epoch, node: u32, under: u32, ct: &[u8]) -> Result<Secret> {
    let (nonce, aad) = wrap_context(epoch, node, under);
    let pt = AeadKey::new(AeadAlg::A256Gcm, kek.as_bytes())?.open(&nonce, &aad, ct)?;
    Secret::from_slice(&pt)
}

fn derive(key: &[u8; KEY_LEN], label: &[u8], epoch: Epoch, node: Option<u32>) -> Result<Secret> {
    let mut info = Vec::with_capacity(label.len() + 8);
    info.extend_from_slice(label);
    info.extend_from_slice(&epoch.get().to_be_bytes());
    if let Some(node) = node {
        info.extend_from_slice(&node.to_be_bytes());
    }
    let okm = hkdf_sha256(b"", key, &info, KEY_LEN)?;
    Secret::from_slice(&okm)
}

/// The join ratchet of one node key.
fn ratchet_join(key: &[u8; KEY_LEN], epoch: Epoch, node: u32) -> Result<Secret> {
    derive(key, JOIN_LABEL, epoch, Some(node))
}

/// The key of a new root placed above a full tree of depth `new_depth − 1`.
fn grow_root(old_root: &[u8; KEY_LEN], epoch: Epoch, new_depth: u8) -> Result<Secret> {
    derive(old_root, GROW_LABEL, epoch, Some(u32::from(new_depth)))
}

/// The smallest depth whose tree holds leaf `p` (at least 1).
fn depth_holding(p: u32) -> u32 {
    (32 - p.leading_zeros()).max(1)
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

mod member;
mod tree;
mod wire;

#[cfg(test)]
mod tests;

pub use member::{ApplyOutcome, MemberPath};
pub use tree::{Joined, KeyTree};
pub use wire::{TreeJoin, TreeRekey, WrappedKey};

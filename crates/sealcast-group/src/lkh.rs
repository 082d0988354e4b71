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

// ---------------------------------------------------------------------------
// Manager side
// ---------------------------------------------------------------------------

/// The manager's key tree. `Debug` shows the shape, never keys.
#[derive(Clone)]
pub struct KeyTree {
    depth: u8,
    epoch: Epoch,
    /// `2^(depth+1)` keys, index 0 unused; all-zero where `counts` is 0.
    keys: Zeroizing<Vec<[u8; KEY_LEN]>>,
    /// Members below each node (a leaf: 0 or 1).
    counts: Vec<u32>,
}

impl core::fmt::Debug for KeyTree {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyTree")
            .field("depth", &self.depth)
            .field("epoch", &self.epoch)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// What [`KeyTree::add_member`] produces.
#[derive(Debug)]
pub struct Joined {
    /// The newcomer's seat.
    pub leaf: LeafIndex,
    /// The newcomer's path keys: deliver point-to-point, encrypted end to end
    /// ([`MemberPath::to_bytes`]).
    pub path: MemberPath,
    /// What the existing members need (no key material; carry it signed).
    pub join: TreeJoin,
}

impl Default for KeyTree {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyTree {
    /// An empty tree of depth 1 at epoch 0 (its first event needs epoch ≥ 1).
    pub fn new() -> Self {
        Self::empty(1, Epoch::new(0))
    }

    /// An empty tree at epoch 0 with room for `capacity` members before it
    /// first grows (rounded up to a power of two, at least 2).
    pub fn with_capacity(capacity: usize) -> Result<Self> {
        Ok(Self::empty(depth_for(capacity)?, Epoch::new(0)))
    }

    /// A tree of `n` members at leaves `0 … n − 1` with fresh keys, in one
    /// pass (initial provisioning, or rebuilding a tree that shrank). Hand
    /// each member [`KeyTree::path`] point-to-point.
    pub fn with_members<R: CryptoRng + ?Sized>(
        n: usize,
        epoch: Epoch,
        rng: &mut R,
    ) -> Result<Self> {
        let mut tree = Self::empty(depth_for(n)?, epoch);
        let base = 1usize << tree.depth;
        for p in 0..n {
            tree.counts[base + p] = 1;
        }
        for i in (1..base).rev() {
            tree.counts[i] = tree.counts[2 * i] + tree.counts[2 * i + 1];
        }
        for i in 1..tree.keys.len() {
            if tree.counts[i] > 0 {
                rng.fill_bytes(&mut tree.keys[i]);
            }
        }
        Ok(tree)
    }

    fn empty(depth: u8, epoch: Epoch) -> Self {
        let nodes = 1usize << (depth + 1);
        Self {
            depth,
            epoch,
            keys: Zeroizing::new(vec![[0u8; KEY_LEN]; nodes]),
            counts: vec![0; nodes],
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.counts[1] as usize
    }
    /// Whether the tree has no members.
    pub fn is_empty(&self) -> bool {
        self.counts[1] == 0
    }
    /// Number of leaves (`2^depth`): members it holds before it grows.
    pub fn capacity(&self) -> usize {
        1 << self.depth
    }
    /// Depth: edges from the root to a leaf.
    pub fn depth(&self) -> u8 {
        self.depth
    }
    /// The epoch of the last event (or the creation epoch).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// Whether a member sits at `leaf`.
    pub fn is_member(&self, leaf: LeafIndex) -> bool {
        (leaf.get() as usize) < self.capacity()
            && self.counts[leaf.node(self.depth).get() as usize] == 1
    }
    /// The occupied leaves, in order.
    pub fn members(&self) -> impl Iterator<Item = LeafIndex> + '_ {
        let base = self.capacity();
        (0..base as u32)
            .map(LeafIndex)
            .filter(move |p| self.counts[base + p.get() as usize] == 1)
    }
    /// The root key — the group secret — or `None` while the tree is empty.
    pub fn root_key(&self) -> Option<Secret> {
        (!self.is_empty()).then(|| Secret::from_bytes(self.keys[1]))
    }

    /// The current path keys of the member at `leaf`: what a member that
    /// missed a rekey or join notice gets back (end to end) to resync.
    pub fn path(&self, leaf: LeafIndex) -> Result<MemberPath> {
        if !self.is_member(leaf) {
            return Err(Error::UnknownMember);
        }
        Ok(self.path_unchecked(leaf))
    }

    fn path_unchecked(&self, leaf: LeafIndex) -> MemberPath {
        let node = leaf.node(self.depth).get();
        let keys = (0..=u32::from(self.depth))
            .map(|h| Secret::from_bytes(self.keys[(node >> h) as usize]))
            .collect();
        MemberPath {
            leaf,
            depth: self.depth,
            epoch: self.epoch,
            keys,
        }
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<()> {
        if epoch <= self.epoch {
            return Err(Error::StaleEpoch {
                current: self.epoch,
                offered: epoch,
            });
        }
        Ok(())
    }

    /// Seats one new member; see [`KeyTree::add_members`].
    pub fn add_member<R: CryptoRng + ?Sized>(
        &mut self,
        epoch: Epoch,
        rng: &mut R,
    ) -> Result<Joined> {
        let join = self.add_members(1, epoch, rng)?;
        let leaf = *join.leaves.first().ok_or(Error::Malformed("empty join"))?;
        Ok(Joined {
            leaf,
            path: self.path_unchecked(leaf),
            join,
        })
    }

    /// Seats `count` new members (1 ≤ `count` ≤ [`MAX_JOIN_LEAVES`]) at the
    /// lowest free leaves, growing the tree if needed, and moves the tree to
    /// `epoch`, which must be larger than [`KeyTree::epoch`]. Returns the
    /// [`TreeJoin`] for the existing members; deliver each newcomer its
    /// [`KeyTree::path`]. See the module docs for the join rule. Nothing
    /// changes on error.
    pub fn add_members<R: CryptoRng + ?Sized>(
        &mut self,
        count: usize,
        epoch: Epoch,
        rng: &mut R,
    ) -> Result<TreeJoin> {
        self.check_epoch(epoch)?;
        if count == 0 {
            return Err(Error::Malformed("a join needs at least one newcomer"));
        }
        if count > MAX_JOIN_LEAVES {
            return Err(Error::TooLarge {
                what: "newcomers in one join",
                limit: MAX_JOIN_LEAVES,
            });
        }
        let before = self.len();
        if before + count > MAX_MEMBERS {
            return Err(Error::TreeFull { limit: MAX_MEMBERS });
        }
        let d0 = u32::from(self.depth);
        let d1 = u32::from(depth_for(before + count)?.max(self.depth));
        let cap0 = self.capacity() as u32;
        let leaves = self.lowest_free(count);

        // Plan every new key before anything changes.
        let mut grown: Vec<Secret> = Vec::new(); // grown[t - 1]: new root at height d0 + t
        if before > 0 {
            let mut root = Secret::from_bytes(self.keys[1]);
            for h in d0 + 1..=d1 {
                root = grow_root(root.as_bytes(), epoch, h as u8)?;
                grown.push(root.clone());
            }
        }
        let mut planned: std::collections::BTreeMap<u32, Secret> =
            std::collections::BTreeMap::new();
        for leaf in &leaves {
            let node = (1u32 << d1) | leaf.get();
            planned.insert(node, Secret::random(rng));
            for h in 1..=d1 {
                let v = node >> h;
                if planned.contains_key(&v) {
                    break;
                }
                let start = (v << h) - (1 << d1); // first leaf below v
                let old = if start >= cap0 {
                    None // only leaves beyond the old capacity
                } else if h <= d0 {
                    let i = (((1u32 << d0) + start) >> h) as usize;
                    (self.counts[i] > 0).then(|| Secret::from_bytes(self.keys[i]))
                } else {
                    grown.get((h - d0 - 1) as usize).cloned()
                };
                let key = match old {
                    Some(k) => ratchet_join(k.as_bytes(), epoch, v)?,
                    None => Secret::random(rng),
                };
                planned.insert(v, key);
            }
        }

        // Apply: infallible from here on.
        self.grow_to(d1 as u8, &grown);
        for leaf in &leaves {
            let node = leaf.node(self.depth).get();
            for h in 0..=d1 {
                self.counts[(node >> h) as usize] += 1;
            }
        }
        for (v, key) in planned {
            self.keys[v as usize] = *key.as_bytes();
        }
        self.epoch = epoch;
        Ok(TreeJoin { epoch, leaves })
    }

    /// Adds levels until the depth is `depth`; `grown[t - 1]` is the key of
    /// the new root at height `old depth + t` (empty for an empty tree).
    fn grow_to(&mut self, depth: u8, grown: &[Secret]) {
        let g = u32::from(depth - self.depth);
        if g == 0 {
            return;
        }
        let nodes = 1usize << (depth + 1);
        let mut keys = Zeroizing::new(vec![[0u8; KEY_LEN]; nodes]);
        let mut counts = vec![0u32; nodes];
        for i in 1..self.keys.len() {
            let shifted = i + (1usize << level_of(i as u32)) * ((1usize << g) - 1);
            keys[shifted] = self.keys[i];
            counts[shifted] = self.counts[i];
        }
        for t in 1..=g {
            let v = 1usize << (g - t);
            counts[v] = self.counts[1];
            if let Some(k) = grown.get((t - 1) as usize) {
                keys[v] = *k.as_bytes();
            }
        }
        self.depth = depth;
        self.keys = keys;
        self.counts = counts;
    }

    /// The `count` lowest free leaves, counting leaves beyond the capacity
    /// (which a growth adds) as free.
    fn lowest_free(&self, count: usize) -> Vec<LeafIndex> {
        let base = self.capacity();
        let mut out = Vec::with_capacity(count);
        // Depth-first, left first, skipping full subtrees.
        let mut stack = vec![(1usize, base)];
        while let Some((v, span)) = stack.pop() {
            if out.len() == count {
                break;
            }
            if self.counts[v] as usize == span {
                continue;
            }
            if span == 1 {
                out.push(LeafIndex((v - base) as u32));
            } else {
                stack.push((2 * v + 1, span / 2));
                stack.push((2 * v, span / 2));
            }
        }
        let mut next = base as u32;
        while out.len() < count {
            out.push(LeafIndex(next));
            next += 1;
        }
        out
    }

    /// Evicts the member at `leaf` and moves the tree to `epoch` (larger than
    /// [`KeyTree::epoch`]): fresh keys for its path, returned wrapped for the
    /// remaining members. Persist the tree before broadcasting the rekey.
    pub fn remove_member<R: CryptoRng + ?Sized>(
        &mut self,
        leaf: LeafIndex,
        epoch: Epoch,
        rng: &mut R,
    ) -> Result<TreeRekey> {
        self.check_epoch(epoch)?;
        if !self.is_member(leaf) {
            return Err(Error::UnknownMember);
        }
        let leaf_node = leaf.node(self.depth).get();
        let depth = u32::from(self.depth);
        // fresh[h]: new key of the path node at height h (h ≥ 1) if it keeps members.
        let mut fresh: Vec<Option<Secret>> = Vec::with_capacity(self.depth as usize + 1);
        fresh.push(None);
        let mut wrapped = Vec::with_capacity(2 * usize::from(self.depth));
        for h in 1..=depth {
            let v = leaf_node >> h;
            if self.counts[v as usize] <= 1 {
                fresh.push(None);
                continue;
            }
            let key = Secret::random(rng);
            for c in [2 * v, 2 * v + 1] {
                let on_path = c == leaf_node >> (h - 1);
                let remaining = self.counts[c as usize] - u32::from(on_path);
                if remaining == 0 {
                    continue;
                }
                let kek = match (on_path, &fresh[(h - 1) as usize]) {
                    (true, Some(k)) => *k.as_bytes(),
                    _ => self.keys[c as usize],
                };
                let kek = Zeroizing::new(kek);
                wrapped.push(WrappedKey {
                    node: NodeIndex(v),
                    under: NodeIndex(c),
                    ciphertext: wrap(&kek, epoch, v, c, &key)?,
                });
            }
            fresh.push(Some(key));
        }
        for (h, key) in fresh.iter().enumerate() {
            let v = (leaf_node >> h) as usize;
            self.counts[v] -= 1;
            self.keys[v] = match key {
                Some(k) => *k.as_bytes(),
                None => [0u8; KEY_LEN],
            };
        }
        self.epoch = epoch;
        Ok(TreeRekey {
            epoch,
            depth: self.depth,
            wrapped,
        })
    }

    /// Replaces the root key with a fresh random one and moves the tree to
    /// `epoch` (larger than [`KeyTree::epoch`]), without a membership change:
    /// a rekey for key freshness. The new root is wrapped under each
    /// non-empty child of the root — at most two entries, one unwrap per
    /// member — so exactly the members (holders of a child key) learn it,
    /// and nobody who held only an earlier root or group secret can compute
    /// it. Members apply it with [`MemberPath::apply`] like an eviction's
    /// rekey. Persist the tree before broadcasting the rekey.
    pub fn refresh_root<R: CryptoRng + ?Sized>(
        &mut self,
        epoch: Epoch,
        rng: &mut R,
    ) -> Result<TreeRekey> {
        self.check_epoch(epoch)?;
        if self.is_empty() {
            return Err(Error::UnknownMember);
        }
        let root = NodeIndex::ROOT.get();
        let key = Secret::random(rng);
        let mut wrapped = Vec::with_capacity(2);
        for c in [2 * root, 2 * root + 1] {
            if self.counts[c as usize] == 0 {
                continue;
            }
            let kek = Zeroizing::new(self.keys[c as usize]);
            wrapped.push(WrappedKey {
                node: NodeIndex::ROOT,
                under: NodeIndex(c),
                ciphertext: wrap(&kek, epoch, root, c, &key)?,
            });
        }
        self.keys[root as usize] = *key.as_bytes();
        self.epoch = epoch;
        Ok(TreeRekey {
            epoch,
            depth: self.depth,
            wrapped,
        })
    }

    /// The whole tree state, for the store. **Secret**: the caller encrypts
    /// it at rest. Layout (version 1): `"SLKT" ‖ 1 ‖ depth ‖ epoch_be32 ‖
    /// members_be32 ‖ leaf bitmap (⌈2^depth / 8⌉ bytes, leaf p = bit p % 8 of
    /// byte p / 8) ‖ the key of every node with members, in heap order`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let bitmap_len = self.capacity().div_ceil(8);
        let live = self.counts.iter().skip(1).filter(|c| **c > 0).count();
        let mut out = Zeroizing::new(Vec::with_capacity(
            TREE_HEADER_LEN + bitmap_len + live * KEY_LEN,
        ));
        out.extend_from_slice(TREE_MAGIC);
        out.push(STATE_VERSION);
        out.push(self.depth);
        out.extend_from_slice(&self.epoch.get().to_be_bytes());
        out.extend_from_slice(&self.counts[1].to_be_bytes());
        let base = self.capacity();
        let mut bitmap = vec![0u8; bitmap_len];
        for p in 0..base {
            if self.counts[base + p] == 1 {
                bitmap[p / 8] |= 1 << (p % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for i in 1..self.keys.len() {
            if self.counts[i] > 0 {
                out.extend_from_slice(&self.keys[i]);
            }
        }
        out
    }

    /// Parses [`KeyTree::to_bytes`]; strict (exact length, consistent
    /// counts, unused bitmap bits zero) and bounded by [`MAX_DEPTH`]: it
    /// allocates only after the bitmap proves the claimed depth.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const BAD: Error = Error::Malformed("key tree state");
        let header = bytes.get(..TREE_HEADER_LEN).ok_or(BAD)?;
        if &header[..4] != TREE_MAGIC {
            return Err(Error::Malformed("not a key tree state"));
        }
        if header[4] != STATE_VERSION {
            return Err(Error::Malformed("unsupported key tree state version"));
        }
        let depth = header[5];
        if !(1..=MAX_DEPTH).contains(&depth) {
            return Err(Error::Malformed("key tree depth out of range"));
        }
        let epoch = Epoch::new(be32(&header[6..10]));
        let members = be32(&header[10..14]) as usize;
        let base = 1usize << depth;
        let bitmap_len = base.div_ceil(8);
        let bitmap = bytes
            .get(TREE_HEADER_LEN..TREE_HEADER_LEN + bitmap_len)
            .ok_or(BAD)?;
        if base < 8 && bitmap[0] >> base != 0 {
            return Err(Error::Malformed(
                "key tree bitmap has bits beyond the capacity",
            ));
        }
        let occupied: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        if occupied != members {
            return Err(Error::Malformed(
                "key tree member count disagrees with the bitmap",
            ));
        }
        let mut tree = Self::empty(depth, epoch);
        for p in 0..base {
            if bitmap[p / 8] & (1 << (p % 8)) != 0 {
                tree.counts[base + p] = 1;
            }
        }
        for i in (1..base).rev() {
            tree.counts[i] = tree.counts[2 * i] + tree.counts[2 * i + 1];
        }
        let live = tree.counts.iter().skip(1).filter(|c| **c > 0).count();
        let rest = &bytes[TREE_HEADER_LEN + bitmap_len..];
        if rest.len() != live * KEY_LEN {
            return Err(Error::Malformed("key tree state has the wrong length"));
        }
        let mut chunks = rest.chunks_exact(KEY_LEN);
        for i in 1..tree.keys.len() {
            if tree.counts[i] > 0 {
                let chunk = chunks.next().ok_or(BAD)?;
                tree.keys[i].copy_from_slice(chunk);
            }
        }
        Ok(tree)
    }
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// One key wrapped for a rekey: the new key of `node` under the key of its
/// child `under`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// The node whose new key this is.
    pub node: NodeIndex,
    /// The child whose key wraps it.
    pub under: NodeIndex,
    /// AES-256-GCM ciphertext and tag ([`WRAPPED_LEN`] bytes).
    pub ciphertext: Vec<u8>,
}

/// The broadcast of one eviction. Encoding (CBOR, deterministic):
/// `[1, epoch, depth, [[node, under, ciphertext], …]]`, entries bottom-up
/// along one path from some node up to the root (empty when the group became
/// empty). The caller signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRekey {
    epoch: Epoch,
    depth: u8,
    wrapped: Vec<WrappedKey>,
}

impl TreeRekey {
    /// The epoch the group moves to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The tree depth the node indices refer to.
    pub fn depth(&self) -> u8 {
        self.depth
    }
    /// The wrapped keys, bottom-up.
    pub fn wrapped(&self) -> &[WrappedKey] {
        &self.wrapped
    }

    /// The CBOR encoding.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        write_head(&mut out, 4, 4);
        write_head(&mut out, 0, CBOR_VERSION);
        write_head(&mut out, 0, u64::from(self.epoch.get()));
        write_head(&mut out, 0, u64::from(self.depth));
        write_head(&mut out, 4, self.wrapped.len() as u64);
        for w in &self.wrapped {
            write_head(&mut out, 4, 3);
            write_head(&mut out, 0, u64::from(w.node.get()));
            write_head(&mut out, 0, u64::from(w.under.get()));
            write_head(&mut out, 2, w.ciphertext.len() as u64);
            out.extend_from_slice(&w.ciphertext);
        }
        out
    }

    /// Length of [`TreeRekey::to_cbor`], without encoding.
    pub fn encoded_len(&self) -> usize {
        let mut n = 1
            + head_len(CBOR_VERSION)
            + head_len(u64::from(self.epoch.get()))
            + head_len(u64::from(self.depth))
            + head_len(self.wrapped.len() as u64);
        for w in &self.wrapped {
            n += 1
                + head_len(u64::from(w.node.get()))
                + head_len(u64::from(w.under.get()))
                + head_len(w.ciphertext.len() as u64)
                + w.ciphertext.len();
        }
        n
    }

    /// Parses and checks a rekey: at most [`MAX_REKEY_LEN`] bytes and
    /// [`MAX_WRAPPED_KEYS`] entries, deterministic encoding only, every entry
    /// a node and one of its children in a tree of the stated depth, with a
    /// [`WRAPPED_LEN`]-byte ciphertext, the nodes one path, bottom-up, ending
    /// at the root.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        const BAD: Error = Error::Malformed("tree rekey");
        if bytes.len() > MAX_REKEY_LEN {
            return Err(Error::TooLarge {
                what: "tree rekey",
                limit: MAX_REKEY_LEN,
            });
        }
        let value: Value =
            ciborium::from_reader(bytes).map_err(|_| Error::Malformed("tree rekey is not CBOR"))?;
        let Value::Array(items) = value else {
            return Err(BAD);
        };
        let [version, epoch, depth, entries] = <[Value; 4]>::try_from(items).map_err(|_| BAD)?;
        if uint(&version)? != CBOR_VERSION {
            return Err(Error::Malformed("unsupported tree rekey version"));
        }
        let epoch = Epoch::new(u32::try_from(uint(&epoch)?).map_err(|_| BAD)?);
        let depth = u8::try_from(uint(&depth)?).map_err(|_| BAD)?;
        let Value::Array(entries) = entries else {
            return Err(BAD);
        };
        if entries.len() > MAX_WRAPPED_KEYS {
            return Err(Error::TooLarge {
                what: "wrapped keys in a tree rekey",
                limit: MAX_WRAPPED_KEYS,
            });
        }
        let mut wrapped = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err(BAD);
            };
            let [node, under, ct] = <[Value; 3]>::try_from(fields).map_err(|_| BAD)?;
            let node = NodeIndex(u32::try_from(uint(&node)?).map_err(|_| BAD)?);
            let under = NodeIndex(u32::try_from(uint(&under)?).map_err(|_| BAD)?);
            let Value::Bytes(ciphertext) = ct else {
                return Err(BAD);
            };
            wrapped.push(WrappedKey {
                node,
                under,
                ciphertext,
            });
        }
        let rekey = TreeRekey {
            epoch,
            depth,
            wrapped,
        };
        rekey.validate()?;
        if rekey.to_cbor() != bytes {
            return Err(Error::Malformed(
                "tree rekey is not deterministically encoded",
            ));
        }
        Ok(rekey)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return Err(Error::Malformed("tree rekey depth out of range"));
        }
        let depth = u32::from(self.depth);
        if self.wrapped.len() > 2 * self.depth as usize {
            return Err(Error::Malformed(
                "more wrapped keys than the tree depth allows",
            ));
        }
        let internal_end = 1u32 << depth;
        let mut prev: Option<&WrappedKey> = None;
        for w in &self.wrapped {
            let (v, c) = (w.node.get(), w.under.get());
            if v == 0 || v >= internal_end {
                return Err(Error::Malformed("wrapped key for a node outside the tree"));
            }
            if c >> 1 != v {
                return Err(Error::Malformed(
                    "wrapped key under a node that is not a child",
                ));
            }
            if w.ciphertext.len() != WRAPPED_LEN {
                return Err(Error::Malformed("wrapped key has the wrong length"));
            }
            if let Some(p) = prev {
                let same_node = p.node == w.node && p.under < w.under;
                let parent = p.node.get() >> 1 == v;
                if !same_node && !parent {
                    return Err(Error::Malformed(
                        "wrapped keys are not one path, bottom-up, without repeats",
                    ));
                }
            }
            prev = Some(w);
        }
        if let Some(last) = prev
            && last.node != NodeIndex::ROOT
        {
            return Err(Error::Malformed("tree rekey does not reach the root"));
        }
        Ok(())
    }
}

/// What existing members need to follow a join: the epoch and the
/// newcomers' leaves, in increasing order (no key material). The caller
/// carries it in its signed join notice, as these fields or as
/// [`TreeJoin::to_cbor`]: `[1, epoch, [leaf, …]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeJoin {
    epoch: Epoch,
    leaves: Vec<LeafIndex>,
}

impl TreeJoin {
    /// Checks and wraps the fields received in a join notice: at least one
    /// and at most [`MAX_JOIN_LEAVES`] leaves, strictly increasing, each
    /// below [`MAX_MEMBERS`].
    pub fn new(epoch: Epoch, leaves: Vec<LeafIndex>) -> Result<Self> {
        if leaves.is_empty() {
            return Err(Error::Malformed("a join needs at least one newcomer"));
        }
        if leaves.len() > MAX_JOIN_LEAVES {
            return Err(Error::TooLarge {
                what: "newcomers in one join",
                limit: MAX_JOIN_LEAVES,
            });
        }
        if leaves.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Malformed("join leaves must be strictly increasing"));
        }
        if leaves.iter().any(|l| l.get() as usize >= MAX_MEMBERS) {
            return Err(Error::Malformed("join leaf outside the largest tree"));
        }
        Ok(Self { epoch, leaves })
    }
    /// The epoch the group moves to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The newcomers' leaves, increasing.
    pub fn leaves(&self) -> &[LeafIndex] {
        &self.leaves
    }

    /// The CBOR encoding.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 5 * self.leaves.len());
        write_head(&mut out, 4, 3);
        write_head(&mut out, 0, CBOR_VERSION);
        write_head(&mut out, 0, u64::from(self.epoch.get()));
        write_head(&mut out, 4, self.leaves.len() as u64);
        for l in &self.leaves {
            write_head(&mut out, 0, u64::from(l.get()));
        }
        out
    }

    /// Parses [`TreeJoin::to_cbor`]: bounded ([`MAX_JOIN_LEN`]),
    /// deterministic encoding only, then the checks of [`TreeJoin::new`].
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        const BAD: Error = Error::Malformed("tree join");
        if bytes.len() > MAX_JOIN_LEN {
            return Err(Error::TooLarge {
                what: "tree join",
                limit: MAX_JOIN_LEN,
            });
        }
        let value: Value =
            ciborium::from_reader(bytes).map_err(|_| Error::Malformed("tree join is not CBOR"))?;
        let Value::Array(items) = value else {
            return Err(BAD);
        };
        let [version, epoch, leaves] = <[Value; 3]>::try_from(items).map_err(|_| BAD)?;
        if uint(&version)? != CBOR_VERSION {
            return Err(Error::Malformed("unsupported tree join version"));
        }
        let epoch = Epoch::new(u32::try_from(uint(&epoch)?).map_err(|_| BAD)?);
        let Value::Array(leaves) = leaves else {
            return Err(BAD);
        };
        let leaves = leaves
            .iter()
            .map(|l| Ok(LeafIndex(u32::try_from(uint(l)?).map_err(|_| BAD)?)))
            .collect::<Result<Vec<_>>>()?;
        let join = TreeJoin::new(epoch, leaves)?;
        if join.to_cbor() != bytes {
            return Err(Error::Malformed(
                "tree join is not deterministically encoded",
            ));
        }
        Ok(join)
    }
}

fn uint(v: &Value) -> Result<u64> {
    match v {
        Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| Error::Malformed("expected an unsigned integer"))
        }
        _ => Err(Error::Malformed("expected an unsigned integer")),
    }
}

fn head_len(arg: u64) -> usize {
    match arg {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match head_len(arg) {
        1 => out.push(m | arg as u8),
        2 => {
            out.push(m | 24);
            out.push(arg as u8);
        }
        3 => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        5 => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// Member side
// ---------------------------------------------------------------------------

/// A member's keys: one per node from its leaf (height 0) to the root
/// (height `depth`). `Debug` shows no keys.
#[derive(Clone)]
pub struct MemberPath {
    leaf: LeafIndex,
    depth: u8,
    epoch: Epoch,
    /// `keys[h]`: the key of the path node at height `h`.
    keys: Vec<Secret>,
}

impl core::fmt::Debug for MemberPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemberPath")
            .field("leaf", &self.leaf)
            .field("depth", &self.depth)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// What applying a rekey produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The new root key: the new group secret.
    pub root: Secret,
    /// How many keys this member unwrapped (at most the tree depth).
    pub unwraps: usize,
}

impl MemberPath {
    /// This member's leaf.
    pub fn leaf(&self) -> LeafIndex {
        self.leaf
    }
    /// The tree depth this path belongs to.
    pub fn depth(&self) -> u8 {
        self.depth
    }
    /// The epoch of the last event applied.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The root key: the group secret.
    pub fn root_key(&self) -> &Secret {
        // `keys` always holds depth + 1 ≥ 2 entries.
        &self.keys[self.keys.len() - 1]
    }
    /// The node keys from the leaf up to the root.
    pub fn keys(&self) -> impl Iterator<Item = (NodeIndex, &Secret)> + '_ {
        (0..).zip(&self.keys).map(|(h, k)| (self.node_at(h), k))
    }

    fn node_at(&self, height: u32) -> NodeIndex {
        NodeIndex(self.leaf.node(self.depth).get() >> height)
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<()> {
        if epoch <= self.epoch {
            return Err(Error::StaleEpoch {
                current: self.epoch,
                offered: epoch,
            });
        }
        Ok(())
    }

    /// Applies an eviction rekey: unwraps the entries on this member's path,
    /// bottom-up, and returns the new root. Nothing changes on error;
    /// [`Error::NotAMember`] means this member was the one evicted or missed
    /// an earlier event (resync with [`KeyTree::path`]).
    pub fn apply(&mut self, rekey: &TreeRekey) -> Result<ApplyOutcome> {
        self.check_epoch(rekey.epoch)?;
        if rekey.depth != self.depth {
            return Err(Error::OutOfSync("tree depth differs"));
        }
        let depth = u32::from(self.depth);
        let leaf_node = self.leaf.node(self.depth).get();
        let mut fresh: Vec<Option<Secret>> = vec![None; self.keys.len()];
        let mut unwraps = 0;
        for w in &rekey.wrapped {
            let c = w.under.get();
            if c == 0 || level_of(c) > depth {
                continue;
            }
            let h = depth - level_of(c);
            if h >= depth || leaf_node >> h != c || leaf_node >> (h + 1) != w.node.get() {
                continue;
            }
            let (h, up) = (h as usize, h as usize + 1);
            if fresh[up].is_some() {
                continue;
            }
            let kek = fresh[h].as_ref().unwrap_or(&self.keys[h]);
            let key = unwrap(kek, rekey.epoch, w.node.get(), c, &w.ciphertext)
                .map_err(|_| Error::NotAMember)?;
            fresh[up] = Some(key);
            unwraps += 1;
        }
        let Some(root) = fresh[depth as usize].clone() else {
            return Err(Error::NotAMember);
        };
        for (slot, key) in self.keys.iter_mut().zip(fresh) {
            if let Some(key) = key {
                *slot = key;
            }
        }
        self.epoch = rekey.epoch;
        Ok(ApplyOutcome { root, unwraps })
    }

    /// Follows a join: grows the path if the tree grew (to the smallest
    /// depth ≥ the current one that holds every newcomer leaf), then ratchets
    /// the nodes this member shares with any newcomer. Returns the new root.
    /// Nothing changes on error.
    pub fn apply_join(&mut self, join: &TreeJoin) -> Result<Secret> {
        self.check_epoch(join.epoch)?;
        let highest = join.leaves.last().ok_or(Error::Malformed("empty join"))?;
        let d1 = depth_holding(highest.get()).max(u32::from(self.depth));
        if d1 > u32::from(MAX_DEPTH) {
            return Err(Error::Malformed("join leaf outside the largest tree"));
        }
        if join.leaves.binary_search(&self.leaf).is_ok() {
            return Err(Error::NotAMember);
        }
        let mut next = self.clone();
        for h in u32::from(self.depth) + 1..=d1 {
            let grown = grow_root(next.root_key().as_bytes(), join.epoch, h as u8)?;
            next.keys.push(grown);
        }
        next.depth = d1 as u8;
        // Lowest height at which this member's path meets a newcomer's.
        let meet = join
            .leaves
            .iter()
            .map(|q| 32 - (q.get() ^ self.leaf.get()).leading_zeros())
            .min()
            .unwrap_or(d1);
        for h in meet..=d1 {
            let v = next.node_at(h).get();
            next.keys[h as usize] = ratchet_join(next.keys[h as usize].as_bytes(), join.epoch, v)?;
        }
        next.epoch = join.epoch;
        *self = next;
        Ok(self.root_key().clone())
    }

    /// The path for a device state file or for delivery to the member.
    /// **Secret**: encrypt it. Layout (version 1): `"SLKP" ‖ 1 ‖ depth ‖
    /// epoch_be32 ‖ leaf_be32 ‖ (depth + 1) keys, leaf first`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            PATH_HEADER_LEN + self.keys.len() * KEY_LEN,
        ));
        out.extend_from_slice(PATH_MAGIC);
        out.push(STATE_VERSION);
        out.push(self.depth);
        out.extend_from_slice(&self.epoch.get().to_be_bytes());
        out.extend_from_slice(&self.leaf.get().to_be_bytes());
        for k in &self.keys {
            out.extend_from_slice(k.as_bytes());
        }
        out
    }

    /// Parses [`MemberPath::to_bytes`] (strict, exact length).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let header = bytes
            .get(..PATH_HEADER_LEN)
            .ok_or(Error::Malformed("member path"))?;
        if &header[..4] != PATH_MAGIC {
            return Err(Error::Malformed("not a member path"));
        }
        if header[4] != STATE_VERSION {
            return Err(Error::Malformed("unsupported member path version"));
        }
        let depth = header[5];
        if !(1..=MAX_DEPTH).contains(&depth) {
            return Err(Error::Malformed("member path depth out of range"));
        }
        let epoch = Epoch::new(be32(&header[6..10]));
        let leaf = be32(&header[10..14]);
        if leaf >= 1 << depth {
            return Err(Error::Malformed("member path leaf outside the tree"));
        }
        let rest = &bytes[PATH_HEADER_LEN..];
        if rest.len() != (usize::from(depth) + 1) * KEY_LEN {
            return Err(Error::Malformed("member path has the wrong length"));
        }
        let keys = rest
            .chunks_exact(KEY_LEN)
            .map(Secret::from_slice)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            leaf: LeafIndex(leaf),
            depth,
            epoch,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use sealcast_core::testrng::TestRng;

    fn e(n: u32) -> Epoch {
        Epoch::new(n)
    }

    fn sample_rekey() -> TreeRekey {
        let mut rng = TestRng::new(7);
        let mut tree = KeyTree::with_members(8, e(1), &mut rng).unwrap();
        tree.remove_member(LeafIndex::new(5), e(2), &mut rng)
            .unwrap()
    }

    #[test]
    fn root_refresh_reaches_every_member_with_one_unwrap_and_no_outsider() {
        let mut rng = TestRng::new(11);
        for n in [1usize, 2, 3, 5, 8, 13] {
            let mut tree = KeyTree::with_members(n, e(1), &mut rng).unwrap();
            // Make the tree sparse on one side too: evict the last member.
            let mut epoch = 1;
            if n > 2 {
                epoch += 1;
                tree.remove_member(LeafIndex::new(n as u32 - 1), e(epoch), &mut rng)
                    .unwrap();
            }
            let mut paths: Vec<MemberPath> =
                tree.members().map(|l| tree.path(l).unwrap()).collect();
            let old_root = *tree.root_key().unwrap().as_bytes();
            epoch += 1;
            let rekey = tree.refresh_root(e(epoch), &mut rng).unwrap();
            assert!(!rekey.wrapped().is_empty() && rekey.wrapped().len() <= 2);
            assert_eq!(TreeRekey::from_cbor(&rekey.to_cbor()).unwrap(), rekey);
            let new_root = *tree.root_key().unwrap().as_bytes();
            assert_ne!(new_root, old_root, "n = {n}");
            for p in &mut paths {
                let outcome = p.apply(&rekey).unwrap();
                assert_eq!(outcome.unwraps, 1);
                assert_eq!(outcome.root.as_bytes(), &new_root);
                assert_eq!(p.root_key().as_bytes(), &new_root);
                assert!(p.to_bytes()[..] == tree.path(p.leaf()).unwrap().to_bytes()[..]);
            }
            // A stale epoch is refused, and the tree stays usable.
            assert!(matches!(
                tree.refresh_root(e(epoch), &mut rng),
                Err(Error::StaleEpoch { .. })
            ));
        }
        // Nothing to refresh in an empty tree.
        assert!(KeyTree::new().refresh_root(e(1), &mut rng).is_err());
    }

    #[test]
    fn rekey_roundtrips_and_sizes_match() {
        let rekey = sample_rekey();
        assert_eq!(rekey.wrapped().len(), 5);
        let bytes = rekey.to_cbor();
        assert_eq!(bytes.len(), rekey.encoded_len());
        assert_eq!(TreeRekey::from_cbor(&bytes).unwrap(), rekey);
    }

    #[test]
    fn hostile_rekey_bytes_are_refused() {
        let good = sample_rekey().to_cbor();
        // Every truncation.
        for n in 0..good.len() {
            assert!(TreeRekey::from_cbor(&good[..n]).is_err(), "prefix {n}");
        }
        // Trailing bytes.
        let mut long = good.clone();
        long.push(0);
        assert!(TreeRekey::from_cbor(&long).is_err());
        // Every single-byte corruption either fails or still decodes to a
        // valid rekey (ciphertext bytes); never panics.
        for i in 0..good.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                if let Ok(r) = TreeRekey::from_cbor(&b) {
                    assert_eq!(r.to_cbor(), b);
                }
            }
        }
        // Oversized input.
        assert!(matches!(
            TreeRekey::from_cbor(&vec![0u8; MAX_REKEY_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        // Huge declared array / byte string lengths.
        for b in [
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x84, 0x01, 0x02, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff],
            &[
                0x84, 0x01, 0x02, 0x01, 0x81, 0x83, 0x01, 0x02, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff,
            ],
            &[0x9f, 0xff], // indefinite length
        ] {
            assert!(TreeRekey::from_cbor(b).is_err());
        }
        // Deep nesting.
        let deep = vec![0x81u8; 3000];
        assert!(TreeRekey::from_cbor(&deep).is_err());
    }

    fn encode(version: u64, epoch: u64, depth: u64, entries: &[(u64, u64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_head(&mut out, 4, 4);
        write_head(&mut out, 0, version);
        write_head(&mut out, 0, epoch);
        write_head(&mut out, 0, depth);
        write_head(&mut out, 4, entries.len() as u64);
        for (node, under, len) in entries {
            write_head(&mut out, 4, 3);
            write_head(&mut out, 0, *node);
            write_head(&mut out, 0, *under);
            write_head(&mut out, 2, *len as u64);
            out.extend(std::iter::repeat_n(0u8, *len));
        }
        out
    }

    #[test]
    fn structural_checks() {
        let ok = encode(1, 5, 2, &[(2, 5, 48), (1, 2, 48), (1, 3, 48)]);
        assert!(TreeRekey::from_cbor(&ok).is_ok());
        assert!(TreeRekey::from_cbor(&encode(1, 5, 2, &[])).is_ok());
        let bad: &[(&str, Vec<u8>)] = &[
            ("version", encode(2, 5, 2, &[(1, 2, 48)])),
            ("epoch > u32", encode(1, 1 << 32, 2, &[(1, 2, 48)])),
            ("depth 0", encode(1, 5, 0, &[])),
            ("depth too big", encode(1, 5, 21, &[(1, 2, 48)])),
            ("short ct", encode(1, 5, 2, &[(1, 2, 47)])),
            ("long ct", encode(1, 5, 2, &[(1, 2, 49)])),
            ("not a child", encode(1, 5, 2, &[(1, 4, 48)])),
            ("leaf as node", encode(1, 5, 2, &[(4, 8, 48)])),
            ("node 0", encode(1, 5, 2, &[(0, 1, 48)])),
            ("duplicate", encode(1, 5, 2, &[(1, 2, 48), (1, 2, 48)])),
            ("top-down", encode(1, 5, 2, &[(1, 2, 48), (2, 5, 48)])),
            (
                "two paths",
                encode(1, 5, 2, &[(2, 5, 48), (3, 6, 48), (1, 2, 48)]),
            ),
            ("no root", encode(1, 5, 2, &[(2, 5, 48)])),
            (
                "too many for depth",
                encode(1, 5, 1, &[(1, 2, 48), (1, 3, 48), (1, 3, 48)]),
            ),
        ];
        for (what, bytes) in bad {
            assert!(TreeRekey::from_cbor(bytes).is_err(), "{what}");
        }
        // More entries than MAX_WRAPPED_KEYS is refused before any per-entry work.
        let many: Vec<(u64, u64, usize)> = (0..41).map(|_| (1, 2, 48)).collect();
        assert!(matches!(
            TreeRekey::from_cbor(&encode(1, 5, 20, &many)),
            Err(Error::TooLarge { .. })
        ));
        // Non-shortest integer encodings.
        let mut b = ok.clone();
        b[2] = 0x18; // epoch 5 as a 1-byte argument
        b.insert(3, 5);
        assert!(TreeRekey::from_cbor(&b).is_err());
    }

    #[test]
    fn tree_join_roundtrip_and_hostile() {
        let j = TreeJoin::new(e(9), vec![LeafIndex(3), LeafIndex(7), LeafIndex(300)]).unwrap();
        let good = j.to_cbor();
        assert_eq!(TreeJoin::from_cbor(&good).unwrap(), j);
        for k in 0..good.len() {
            assert!(TreeJoin::from_cbor(&good[..k]).is_err());
        }
        let mut long = good.clone();
        long.push(0);
        assert!(TreeJoin::from_cbor(&long).is_err());
        assert!(TreeJoin::new(e(1), vec![]).is_err());
        assert!(TreeJoin::new(e(1), vec![LeafIndex(2), LeafIndex(2)]).is_err());
        assert!(TreeJoin::new(e(1), vec![LeafIndex(3), LeafIndex(2)]).is_err());
        assert!(TreeJoin::new(e(1), vec![LeafIndex(1 << 20)]).is_err());
        assert!(matches!(
            TreeJoin::from_cbor(&vec![0u8; MAX_JOIN_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        // A huge declared leaf count behind a short input.
        assert!(TreeJoin::from_cbor(&[0x83, 0x01, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Non-shortest leaf encoding.
        assert!(TreeJoin::from_cbor(&[0x83, 0x01, 0x01, 0x81, 0x18, 0x03]).is_err());
    }

    #[test]
    fn tree_state_roundtrip_and_hostile() {
        let mut rng = TestRng::new(3);
        let mut tree = KeyTree::with_members(5, e(1), &mut rng).unwrap();
        tree.remove_member(LeafIndex(1), e(2), &mut rng).unwrap();
        let bytes = tree.to_bytes();
        let back = KeyTree::from_bytes(&bytes).unwrap();
        assert_eq!(*back.to_bytes(), *bytes);
        assert_eq!(back.len(), 4);
        assert_eq!(back.root_key(), tree.root_key());
        for n in 0..bytes.len() {
            assert!(KeyTree::from_bytes(&bytes[..n]).is_err());
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(KeyTree::from_bytes(&long).is_err());
        // A claimed depth of 20 with no bitmap behind it allocates nothing.
        let mut big = bytes[..TREE_HEADER_LEN].to_vec();
        big[5] = 20;
        assert!(KeyTree::from_bytes(&big).is_err());
        big[5] = 21;
        assert!(KeyTree::from_bytes(&big).is_err());
        // Member count disagreeing with the bitmap.
        let mut b = bytes.to_vec();
        b[13] ^= 1;
        assert!(KeyTree::from_bytes(&b).is_err());
    }

    #[test]
    fn member_path_roundtrip() {
        let mut rng = TestRng::new(4);
        let tree = KeyTree::with_members(6, e(1), &mut rng).unwrap();
        let p = tree.path(LeafIndex(4)).unwrap();
        let bytes = p.to_bytes();
        let back = MemberPath::from_bytes(&bytes).unwrap();
        assert_eq!(back.root_key(), p.root_key());
        assert_eq!(back.leaf(), p.leaf());
        for n in 0..bytes.len() {
            assert!(MemberPath::from_bytes(&bytes[..n]).is_err());
        }
        assert!(tree.path(LeafIndex(6)).is_err());
        assert!(tree.path(LeafIndex(99)).is_err());
    }

    #[test]
    fn epochs_must_increase() {
        let mut rng = TestRng::new(5);
        let mut tree = KeyTree::with_members(4, e(3), &mut rng).unwrap();
        let mut m = tree.path(LeafIndex(0)).unwrap();
        assert!(matches!(
            tree.remove_member(LeafIndex(1), e(3), &mut rng),
            Err(Error::StaleEpoch { .. })
        ));
        assert!(tree.add_member(e(2), &mut rng).is_err());
        let rekey = tree.remove_member(LeafIndex(1), e(4), &mut rng).unwrap();
        m.apply(&rekey).unwrap();
        assert!(matches!(m.apply(&rekey), Err(Error::StaleEpoch { .. })));
        assert!(matches!(
            tree.remove_member(LeafIndex(1), e(5), &mut rng),
            Err(Error::UnknownMember)
        ));
    }

    #[test]
    fn growth_keeps_members_and_locks_out_the_past() {
        let mut rng = TestRng::new(6);
        let mut tree = KeyTree::new();
        let mut members: Vec<MemberPath> = Vec::new();
        for i in 1..=9u32 {
            let old_root = tree.root_key();
            let j = tree.add_member(e(i), &mut rng).unwrap();
            for m in &mut members {
                assert_eq!(m.apply_join(&j.join).unwrap(), tree.root_key().unwrap());
            }
            assert_ne!(Some(j.path.root_key().clone()), old_root);
            members.push(j.path);
        }
        assert_eq!(tree.depth(), 4);
        assert_eq!(tree.len(), 9);
        for m in &members {
            assert_eq!(m.root_key(), &tree.root_key().unwrap());
            let fresh = tree.path(m.leaf()).unwrap();
            assert!(m.keys().zip(fresh.keys()).all(|(a, b)| a == b));
        }
    }

    #[test]
    fn batch_join_grows_several_levels() {
        let mut rng = TestRng::new(9);
        let mut tree = KeyTree::with_members(3, e(1), &mut rng).unwrap();
        let mut old: Vec<MemberPath> = tree.members().map(|l| tree.path(l).unwrap()).collect();
        let before = tree.root_key().unwrap();
        let join = tree.add_members(10, e(2), &mut rng).unwrap();
        assert_eq!(tree.depth(), 4);
        assert_eq!(tree.len(), 13);
        let want: Vec<u32> = (3..13).collect();
        assert_eq!(
            join.leaves().iter().map(|l| l.get()).collect::<Vec<_>>(),
            want
        );
        let join = TreeJoin::from_cbor(&join.to_cbor()).unwrap();
        for m in &mut old {
            assert_eq!(m.apply_join(&join).unwrap(), tree.root_key().unwrap());
            let truth = tree.path(m.leaf()).unwrap();
            assert!(m.keys().zip(truth.keys()).all(|(a, b)| a == b));
        }
        assert_ne!(tree.root_key().unwrap(), before);
        // A join in the same epoch is refused; an empty one too.
        assert!(matches!(
            tree.add_members(1, e(2), &mut rng),
            Err(Error::StaleEpoch { .. })
        ));
        assert!(tree.add_members(0, e(3), &mut rng).is_err());
        // Reuse of freed leaves, lowest first.
        tree.remove_member(LeafIndex(5), e(3), &mut rng).unwrap();
        tree.remove_member(LeafIndex(1), e(4), &mut rng).unwrap();
        let join = tree.add_members(3, e(5), &mut rng).unwrap();
        let got: Vec<u32> = join.leaves().iter().map(|l| l.get()).collect();
        assert_eq!(got, vec![1, 5, 13]);
        assert_eq!(tree.depth(), 4);
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let mut rng = TestRng::new(8);
        let tree = KeyTree::with_members(3, e(0), &mut rng).unwrap();
        let p = tree.path(LeafIndex(0)).unwrap();
        assert_eq!(format!("{:?}", p.root_key()), "Secret(..)");
        let key_hex: String = p
            .root_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key_dec = format!("{:?}", p.root_key().as_bytes());
        for s in [format!("{tree:?}"), format!("{p:?}")] {
            assert!(
                !s.contains(&key_hex[..8]) && !s.contains(&key_dec[..12]),
                "{s}"
            );
        }
    }
}

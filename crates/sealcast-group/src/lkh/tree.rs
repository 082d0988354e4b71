//! The manager side: the key tree, its joins, evictions and growth, and
//! its persistence.

use super::*;

// ---------------------------------------------------------------------------
// Manager side
// ---------------------------------------------------------------------------

/// The manager's key tree. `Debug` shows the shape, never keys.
#[derive(Clone)]
pub struct KeyTree {
    pub(super) depth: u8,
    pub(super) epoch: Epoch,
    /// `2^(depth+1)` keys, index 0 unused; all-zero where `counts` is 0.
    pub(super) keys: Zeroizing<Vec<[u8; KEY_LEN]>>,
    /// Members below each node (a leaf: 0 or 1).
    pub(super) counts: Vec<u32>,
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

    pub(super) fn empty(depth: u8, epoch: Epoch) -> Self {
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

    pub(super) fn path_unchecked(&self, leaf: LeafIndex) -> MemberPath {
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

    pub(super) fn check_epoch(&self, epoch: Epoch) -> Result<()> {
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
    pub(super) fn grow_to(&mut self, depth: u8, grown: &[Secret]) {
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
    pub(super) fn lowest_free(&self, count: usize) -> Vec<LeafIndex> {
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

//! The member side: a member's path of keys, following rekeys and joins.

use super::*;

// ---------------------------------------------------------------------------
// Member side
// ---------------------------------------------------------------------------

/// A member's keys: one per node from its leaf (height 0) to the root
/// (height `depth`). `Debug` shows no keys.
#[derive(Clone)]
pub struct MemberPath {
    pub(super) leaf: LeafIndex,
    pub(super) depth: u8,
    pub(super) epoch: Epoch,
    /// `keys[h]`: the key of the path node at height `h`.
    pub(super) keys: Vec<Secret>,
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

    pub(super) fn node_at(&self, height: u32) -> NodeIndex {
        NodeIndex(self.leaf.node(self.depth).get() >> height)
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

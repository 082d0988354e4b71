//! The messages: wrapped keys, the eviction broadcast and the join notice,
//! with their deterministic CBOR encodings.

use super::*;

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
    pub(super) epoch: Epoch,
    pub(super) depth: u8,
    pub(super) wrapped: Vec<WrappedKey>,
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

    pub(super) fn validate(&self) -> Result<()> {
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
    pub(super) epoch: Epoch,
    pub(super) leaves: Vec<LeafIndex>,
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

pub(super) fn uint(v: &Value) -> Result<u64> {
    sealcast_core::cbor::u64_of(v).ok_or(Error::Malformed("expected an unsigned integer"))
}

pub(super) use sealcast_core::cbor::{head_len, write_head};

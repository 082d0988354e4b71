//! The manager's state of a group as a value: [`GroupSnapshot`] for a store
//! to persist and restore, and checkpoints to roll a failed operation back.

use super::*;

/// Everything the manager knows about one group, for a store to persist
/// and [`Manager::import_group`] to restore. Holds secrets (the material and
/// the key tree): encrypt it at rest. `Debug` shows none of them.
pub struct GroupSnapshot {
    /// The rekey scheme.
    pub scheme: RekeyScheme,
    /// The current epoch's key material.
    pub material: GroupKeyMaterial,
    /// The key tree (`KeyTree::to_bytes`), for tree groups.
    pub tree: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The members.
    pub members: BTreeMap<EntityId, MemberRecord>,
    /// Validity given to each new epoch's material, if limited.
    pub validity_ms: Option<u64>,
}

impl core::fmt::Debug for GroupSnapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupSnapshot")
            .field("group", self.material.group())
            .field("epoch", &self.material.epoch())
            .field("scheme", &self.scheme)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// The enrolled entities: credential, kind and relaying agent.
    pub fn enrolled(
        &self,
    ) -> impl Iterator<Item = (&PublicCredential, EntityKind, Option<&EntityId>)> {
        self.enrolled
            .values()
            .map(|e| (&e.credential, e.kind, e.agent.as_ref()))
    }

    /// The ids of all groups.
    pub fn groups(&self) -> impl Iterator<Item = &GroupId> {
        self.groups.keys()
    }

    /// The exact state of `group` now (or its absence), to put back with
    /// [`Manager::roll_back`] when an operation on it could not be
    /// persisted: check → persist → apply, so a refused operation leaves
    /// the manager as it was (no member added in memory only, no key that
    /// the store never recorded re-sent to anyone).
    pub fn checkpoint(&self, group: &GroupId) -> GroupCheckpoint {
        GroupCheckpoint {
            group: group.clone(),
            state: self.groups.get(group).cloned(),
        }
    }

    /// Drops `group` from memory (the store no longer has it); returns
    /// whether it was there.
    pub fn forget_group(&mut self, group: &GroupId) -> bool {
        self.groups.remove(group).is_some()
    }

    /// Puts a group back exactly as [`Manager::checkpoint`] found it.
    pub fn roll_back(&mut self, checkpoint: GroupCheckpoint) {
        match checkpoint.state {
            Some(state) => {
                self.groups.insert(checkpoint.group, state);
            }
            None => {
                self.groups.remove(&checkpoint.group);
            }
        }
    }

    /// A snapshot of one group, for persistence.
    pub fn export_group(&self, group: &GroupId) -> Option<GroupSnapshot> {
        self.groups.get(group).map(|g| GroupSnapshot {
            scheme: g.scheme,
            material: g.material.clone(),
            tree: g.tree.as_ref().map(KeyTree::to_bytes),
            members: g.members.clone(),
            validity_ms: g.validity_ms,
        })
    }

    /// Restores (or replaces) a group from a snapshot. Every member must be
    /// enrolled; a tree group needs its tree, at the material's epoch.
    pub fn import_group(&mut self, snapshot: GroupSnapshot) -> Result<()> {
        for id in snapshot.members.keys() {
            if !self.enrolled.contains_key(id) {
                return Err(Error::UnknownMember);
            }
        }
        let tree = match (snapshot.scheme, snapshot.tree.as_deref()) {
            (RekeyScheme::Tree, Some(bytes)) => {
                let tree = KeyTree::from_bytes(bytes)?;
                if tree.epoch() > snapshot.material.epoch() {
                    return Err(Error::OutOfSync("key tree is newer than the key material"));
                }
                Some(tree)
            }
            (RekeyScheme::Tree, None) => {
                return Err(Error::OutOfSync("tree group without its key tree"));
            }
            (RekeyScheme::PointToPoint, _) => None,
        };
        let next_sender_id = snapshot
            .members
            .values()
            .filter_map(|m| m.sender_id.as_ref())
            .map(|sid| {
                sid.as_bytes()
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            })
            .max()
            .map_or(1, |m| m + 1);
        self.groups.insert(
            snapshot.material.group().clone(),
            GroupState {
                scheme: snapshot.scheme,
                material: snapshot.material,
                members: snapshot.members,
                tree,
                next_sender_id,
                validity_ms: snapshot.validity_ms,
            },
        );
        Ok(())
    }
}

//! The member side of the group protocol (devices, and agents that are
//! members of a group): installs key deliveries, follows join notices and
//! tree rekeys, acknowledges, and asks for the current material when it
//! missed something.
//!
//! A member accepts key material only when its manager signed it (the
//! manager credential it was provisioned with), and never goes back to an
//! epoch it already passed.

use std::collections::BTreeMap;

use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::delivery::{DeliveryKind, open_delivery};
use sealcast_core::groupkey::{GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{Epoch, GroupId};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};

use crate::error::{Error, Result};
use crate::lkh::{LeafIndex, MemberPath, TreeJoin, TreeRekey};
use crate::manager::MessageKind;
use crate::messages::{
    Ack, JoinNotice, LABEL_ACK, LABEL_JOIN, LABEL_PULL, LABEL_TREE_REKEY, MAX_STATEMENT_LEN,
    PullRequest, TreeRekeyNotice,
};
use crate::tree_delivery;

/// What handling a message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A new epoch is installed; send `ack` to the manager.
    Installed {
        /// The group.
        group: GroupId,
        /// The installed epoch.
        epoch: Epoch,
        /// The signed ack to send.
        ack: Vec<u8>,
    },
    /// The epoch was installed already (a duplicate or a re-send); `ack` is
    /// sent again in case the first one was lost.
    AlreadyCurrent {
        /// The group.
        group: GroupId,
        /// The epoch.
        epoch: Epoch,
        /// The signed ack to send.
        ack: Vec<u8>,
    },
}

struct Held {
    material: GroupKeyMaterial,
    path: Option<MemberPath>,
}

/// A member's key state for all its groups.
pub struct Member {
    credential: EntityCredential,
    manager: PublicCredential,
    groups: BTreeMap<GroupId, Held>,
}

impl core::fmt::Debug for Member {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Member")
            .field("id", self.credential.id())
            .field("manager", self.manager.id())
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Member {
    /// A member with its own credential, trusting `manager`.
    pub fn new(credential: EntityCredential, manager: PublicCredential) -> Self {
        Self {
            credential,
            manager,
            groups: BTreeMap::new(),
        }
    }

    /// The member's credential.
    pub fn credential(&self) -> &EntityCredential {
        &self.credential
    }

    /// The current material of a group, if this member holds one.
    pub fn material(&self, group: &GroupId) -> Option<&GroupKeyMaterial> {
        self.groups.get(group).map(|h| &h.material)
    }

    /// The current epoch of a group, if held.
    pub fn epoch(&self, group: &GroupId) -> Option<Epoch> {
        self.material(group).map(GroupKeyMaterial::epoch)
    }

    /// The derived context of a group's current epoch.
    pub fn context(&self, group: &GroupId) -> Option<Result<GroupContext>> {
        self.material(group)
            .map(|m| GroupContext::new(m).map_err(Error::from))
    }

    /// The groups this member holds keys for.
    pub fn groups(&self) -> impl Iterator<Item = &GroupId> {
        self.groups.keys()
    }

    /// This member's leaf in a tree group.
    pub fn leaf(&self, group: &GroupId) -> Option<LeafIndex> {
        self.groups
            .get(group)
            .and_then(|h| h.path.as_ref())
            .map(MemberPath::leaf)
    }

    /// Every held group's material and, for a tree group, the member's key
    /// path — what a device writes to its state file to survive a restart.
    /// **Secret**: store it encrypted or in a 0600 file.
    pub fn export_groups(&self) -> Vec<(GroupKeyMaterial, Option<MemberPath>)> {
        self.groups
            .values()
            .map(|h| (h.material.clone(), h.path.clone()))
            .collect()
    }

    /// Restores a group exported by [`Member::export_groups`]. Refuses to go
    /// back to an epoch older than one already held.
    pub fn import_group(
        &mut self,
        material: GroupKeyMaterial,
        path: Option<MemberPath>,
    ) -> Result<()> {
        let group = material.group().clone();
        if let Some(held) = self.epoch(&group)
            && material.epoch() < held
        {
            return Err(Error::StaleEpoch {
                current: held,
                offered: material.epoch(),
            });
        }
        self.groups.insert(group, Held { material, path });
        Ok(())
    }

    fn ack(&self, group: &GroupId, epoch: Epoch) -> Result<Vec<u8>> {
        let payload = Ack {
            group: group.clone(),
            epoch,
        }
        .to_cbor()?;
        Ok(sign_statement(
            self.credential.id(),
            self.credential.signing_key(),
            LABEL_ACK,
            &payload,
        ))
    }

    fn installed(&mut self, group: GroupId, held: Held) -> Result<MemberEvent> {
        let epoch = held.material.epoch();
        let ack = self.ack(&group, epoch)?;
        self.groups.insert(group.clone(), held);
        Ok(MemberEvent::Installed { group, epoch, ack })
    }

    /// Compares an offered epoch with the held one: `Ok(None)` to install,
    /// `Ok(Some(event))` for a duplicate, `Err` for an older epoch.
    fn freshness(&self, group: &GroupId, offered: Epoch) -> Result<Option<MemberEvent>> {
        match self.epoch(group) {
            Some(current) if offered < current => Err(Error::StaleEpoch { current, offered }),
            Some(current) if offered == current => Ok(Some(MemberEvent::AlreadyCurrent {
                group: group.clone(),
                epoch: current,
                ack: self.ack(group, current)?,
            })),
            _ => Ok(None),
        }
    }

    /// Installs a key delivery (`KeyDelivery` or `TreeDelivery`) addressed to
    /// this member and signed by its manager.
    pub fn handle_delivery(&mut self, kind: MessageKind, bytes: &[u8]) -> Result<MemberEvent> {
        let dkind = match kind {
            MessageKind::KeyDelivery => DeliveryKind::GroupKey,
            MessageKind::TreeDelivery => DeliveryKind::TreePath,
            _ => return Err(Error::Malformed("not a delivery")),
        };
        let (header, plaintext) = open_delivery(
            dkind,
            self.credential.id(),
            self.credential.agreement_secret(),
            self.manager.id(),
            self.manager.verifying_key(),
            bytes,
        )?;
        let (material, path) = match dkind {
            DeliveryKind::TreePath => {
                let (m, p) = tree_delivery::decode(&plaintext)?;
                (m, Some(p))
            }
            _ => (GroupKeyMaterial::from_cbor(&plaintext)?, None),
        };
        if *material.group() != header.group || material.epoch() != header.epoch {
            return Err(Error::Core(sealcast_core::Error::ContextMismatch(
                "group or epoch inside the delivery",
            )));
        }
        if let Some(dup) = self.freshness(&header.group, material.epoch())? {
            return Ok(dup);
        }
        self.installed(header.group, Held { material, path })
    }

    fn verify_from_manager(&self, bytes: &[u8], label: &str) -> Result<Vec<u8>> {
        let statement = UnverifiedStatement::parse(bytes, MAX_STATEMENT_LEN)?;
        if statement.signer() != self.manager.id() {
            return Err(Error::WrongManager);
        }
        Ok(statement.verify(self.manager.verifying_key(), label)?)
    }

    /// Follows a signed join notice: ratchets the key (and shared tree
    /// nodes) from the previous epoch. A member that does not hold exactly
    /// the previous epoch gets [`Error::OutOfSync`] and should pull.
    pub fn handle_join_notice(&mut self, bytes: &[u8]) -> Result<MemberEvent> {
        let notice = JoinNotice::from_cbor(&self.verify_from_manager(bytes, LABEL_JOIN)?)?;
        if let Some(dup) = self.freshness(&notice.group, notice.epoch)? {
            return Ok(dup);
        }
        let held = self.groups.get(&notice.group).ok_or(Error::UnknownGroup)?;
        if held.material.epoch().next() != Some(notice.epoch) {
            return Err(Error::OutOfSync(
                "missed an epoch; pull the current material",
            ));
        }
        let material = held.material.ratchet(notice.signers, notice.not_after)?;
        let path = match &held.path {
            Some(p) => {
                let mut p = p.clone();
                let leaves = notice.leaves.iter().map(|l| LeafIndex::new(*l)).collect();
                p.apply_join(&TreeJoin::new(notice.epoch, leaves)?)?;
                Some(p)
            }
            None => None,
        };
        self.installed(notice.group, Held { material, path })
    }

    /// Follows a signed tree rekey after an eviction: unwraps the new path
    /// keys and installs the new epoch. The evicted member, or one that
    /// missed an event, gets [`Error::NotAMember`] / [`Error::OutOfSync`].
    pub fn handle_tree_rekey(&mut self, bytes: &[u8]) -> Result<MemberEvent> {
        let notice =
            TreeRekeyNotice::from_cbor(&self.verify_from_manager(bytes, LABEL_TREE_REKEY)?)?;
        if let Some(dup) = self.freshness(&notice.group, notice.epoch)? {
            return Ok(dup);
        }
        let held = self.groups.get(&notice.group).ok_or(Error::UnknownGroup)?;
        if held.material.epoch().next() != Some(notice.epoch) {
            return Err(Error::OutOfSync(
                "missed an epoch; pull the current material",
            ));
        }
        let rekey = TreeRekey::from_cbor(&notice.rekey)?;
        if rekey.epoch() != notice.epoch {
            return Err(Error::Malformed("tree rekey epoch differs from the notice"));
        }
        let mut path = held
            .path
            .clone()
            .ok_or(Error::OutOfSync("not a tree member"))?;
        let outcome = path.apply(&rekey)?;
        let material = held.material.rekeyed(
            notice.epoch,
            outcome.root.as_bytes(),
            &notice.salt,
            notice.signers,
            notice.not_after,
        )?;
        self.installed(
            notice.group,
            Held {
                material,
                path: Some(path),
            },
        )
    }

    /// A signed request for the current material of `group`.
    pub fn pull_request(&self, group: &GroupId, nonce: u64) -> Result<Vec<u8>> {
        let payload = PullRequest {
            group: group.clone(),
            have: self.epoch(group),
            nonce,
        }
        .to_cbor()?;
        Ok(sign_statement(
            self.credential.id(),
            self.credential.signing_key(),
            LABEL_PULL,
            &payload,
        ))
    }
}

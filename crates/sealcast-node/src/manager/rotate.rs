//! Credential rotation authorised by the operator: an enrolled entity's
//! public key is replaced by a new one, keeping its kind, agent and every
//! membership (sender id, tree leaf): check → save → apply → audit. From
//! then on the manager verifies the entity's acks, pulls and reports with
//! the new key and seals its key deliveries to the new key only; its
//! groups' current keys go to it again, sealed to the new key, re-sent until
//! it acknowledges.

use super::*;

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    /// The entity.
    pub node: EntityId,
    /// The groups it is a member of (unchanged).
    pub groups: Vec<GroupId>,
}

impl Runtime {
    pub(super) async fn rotate_key(&mut self, new: PublicCredential) -> Result<Rotated> {
        let node = new.id().clone();
        let Some(old) = self.manager.credential_of(&node).cloned() else {
            return Err(Error::Group(sealcast_group::Error::UnknownMember));
        };
        let kind = self
            .manager
            .kind_of(&node)
            .ok_or(Error::Group(sealcast_group::Error::UnknownMember))?;
        if kind == EntityKind::Headend {
            return Err(Error::Runtime(format!(
                "{node} is a headend: rotate its key in the DAPs' and meters' configs"
            )));
        }
        if old.verifying_key() == new.verifying_key() || old.agreement_key() == new.agreement_key()
        {
            return Err(Error::Runtime(format!(
                "the new key of {node} equals (in part) its enrolled key: generate a new one with `sealcast keygen --id {node}`"
            )));
        }
        // A key once revoked for this id never comes back.
        self.revoked_among(&[&new])?;
        let agent = self.manager.agent_of(&node).cloned();
        let record = sealcast_store::EntityRecord {
            credential: new.clone(),
            kind: match kind {
                EntityKind::Device => sealcast_store::EntityKind::Device,
                _ => sealcast_store::EntityKind::Agent,
            },
            agent: agent.clone(),
        };
        let store = self.store.as_mut();
        blocking(|| store.update_entity(&record))?;
        self.manager.enrol(new, kind, agent)?;
        let groups = self.groups_of(&node);
        self.audit(
            AuditKind::Other("rotate-key".into()),
            None,
            Some(&node),
            format!(
                "public key replaced by the operator; member of {} group(s), unchanged",
                groups.len()
            ),
        );
        info!(%node, groups = groups.len(), "credential rotated: deliveries go to the new key only");
        // Its groups' keys again, sealed to the new key, re-sent until it
        // acknowledges (a node that starts afresh on its new key does not
        // know its groups yet).
        match self.manager.redeliver(&node, now(), &mut self.rng) {
            Ok(out) => self.publish(out).await,
            Err(e) => {
                warn!(%node, error = %e, "key deliveries to the new key not sealed; the node pulls them")
            }
        }
        Ok(Rotated { node, groups })
    }
}

//! Saving and restoring the sans-IO group manager
//! ([`sealcast_group::manager::Manager`]) in a [`ManagerStore`].
//!
//! The manager runtime calls [`save_group`] after every operation that
//! changed a group and **before** it sends the operation's messages. An
//! epoch change goes through [`ManagerStore::advance_epoch`], a
//! compare-and-set in one transaction: when another manager instance moved
//! the group first, the save fails with [`Error::Conflict`], this instance
//! discards its messages, reloads with [`load_manager`] and retries — so two
//! managers never put two different keys into the field for one epoch.
//!
//! Per group the store keeps, sealed under the KEK, the current epoch's key
//! material and a manager state blob: `[validity_ms / null, key_tree / null]`
//! (CBOR; the key tree as `lkh::KeyTree::to_bytes`).

use std::collections::BTreeMap;

use sealcast_core::credential::EntityCredential;
use sealcast_core::groupkey::GroupKeyMaterial;
use sealcast_core::ids::{EntityId, Epoch, GroupId, UnixMillis};
use sealcast_group::manager::{self, GroupSnapshot, Manager};
use sealcast_group::state_file::GroupStateBlob;
use zeroize::Zeroizing;

use crate::ManagerStore;
use crate::error::{Error, Result};
use crate::model::{self, EntityRecord, GroupRecord, MemberRecord};

fn kind_to_store(k: manager::EntityKind) -> model::EntityKind {
    match k {
        manager::EntityKind::Device => model::EntityKind::Device,
        manager::EntityKind::Agent => model::EntityKind::Agent,
        manager::EntityKind::Headend => model::EntityKind::Headend,
    }
}

fn kind_from_store(k: model::EntityKind) -> Option<manager::EntityKind> {
    match k {
        model::EntityKind::Device => Some(manager::EntityKind::Device),
        model::EntityKind::Agent => Some(manager::EntityKind::Agent),
        model::EntityKind::Headend => Some(manager::EntityKind::Headend),
        // Other managers' credentials are not enrolled members.
        _ => None,
    }
}

fn role_to_store(r: manager::Role) -> model::Role {
    match r {
        manager::Role::Sender => model::Role::Sender,
        manager::Role::Receiver => model::Role::Receiver,
    }
}

fn state_blob(s: &GroupSnapshot) -> Result<Zeroizing<Vec<u8>>> {
    GroupStateBlob::encode(s.validity_ms, s.tree.as_ref().map(|t| t.as_slice()))
        .map_err(|e| Error::Corrupt(format!("cannot encode the manager state blob: {e}")))
}

/// The decoded state blob: validity and the key tree bytes.
type StateBlob = (Option<u64>, Option<Zeroizing<Vec<u8>>>);

fn parse_state_blob(bytes: &[u8]) -> Result<StateBlob> {
    let blob = GroupStateBlob::decode(bytes)
        .map_err(|e| Error::Corrupt(format!("the group's stored state: {e}")))?;
    Ok((blob.validity_ms, blob.tree))
}

/// Stores every enrolled entity (insert or update).
pub fn save_enrolment(store: &mut dyn ManagerStore, manager: &Manager) -> Result<()> {
    for (credential, kind, agent) in manager.enrolled() {
        let record = EntityRecord {
            credential: credential.clone(),
            kind: kind_to_store(kind),
            agent: agent.cloned(),
        };
        match store.entity(credential.id())? {
            None => store.insert_entity(&record)?,
            Some(existing) if existing != record => store.update_entity(&record)?,
            Some(_) => {}
        }
    }
    Ok(())
}

/// Stores new entities (credential, kind, relaying agent) in one
/// `insert_entities` call, agents first: with SQLite one transaction, all or
/// none. Call it before enrolling them in the manager, so a failed save
/// leaves both unchanged. Cheaper than [`save_enrolment`], which visits
/// every enrolled entity.
pub fn save_new_entities(
    store: &mut dyn ManagerStore,
    entities: &[(
        sealcast_core::credential::PublicCredential,
        manager::EntityKind,
        Option<EntityId>,
    )],
) -> Result<()> {
    let mut records: Vec<EntityRecord> = entities
        .iter()
        .map(|(credential, kind, agent)| EntityRecord {
            credential: credential.clone(),
            kind: kind_to_store(*kind),
            agent: agent.clone(),
        })
        .collect();
    records.sort_by_key(|r| r.kind != model::EntityKind::Agent);
    store.insert_entities(&records)
}

/// Saves one group: its epoch (compare-and-set from `persisted_epoch`, the
/// epoch this instance last saved or loaded — `None` for a group not stored
/// yet), its material and state blob, and its members.
///
/// A group already stored is saved in one transaction that holds the
/// group's lock ([`ManagerStore::begin_group_update`]): all of it or none,
/// and never interleaved with another manager's save of the same group.
pub fn save_group(
    store: &mut dyn ManagerStore,
    manager: &Manager,
    group: &GroupId,
    persisted_epoch: Option<Epoch>,
    now: UnixMillis,
) -> Result<()> {
    if persisted_epoch.is_none() {
        return save_group_in(store, manager, group, persisted_epoch, now);
    }
    store.begin_group_update(group)?;
    let saved = save_group_in(store, manager, group, persisted_epoch, now);
    let ended = store.finish_group_update(saved.is_ok());
    saved.and(ended)
}

fn save_group_in(
    store: &mut dyn ManagerStore,
    manager: &Manager,
    group: &GroupId,
    persisted_epoch: Option<Epoch>,
    now: UnixMillis,
) -> Result<()> {
    let snapshot = manager.export_group(group).ok_or_else(|| Error::NotFound {
        what: "group",
        id: group.to_string(),
    })?;
    let material = snapshot.material.to_cbor()?;
    let blob = state_blob(&snapshot)?;
    let epoch = snapshot.material.epoch();
    match persisted_epoch {
        None => {
            let record = GroupRecord {
                id: group.clone(),
                epoch,
                alg: snapshot.material.alg(),
                scheme: snapshot.scheme,
                created_at: now,
            };
            store.create_group(&record, Some(&material), Some(&blob))?;
        }
        Some(old) if old < epoch => {
            store.advance_epoch(group, old, epoch, &material, Some(&blob))?
        }
        Some(old) if old == epoch => {
            // Same epoch: check nobody else moved the group meanwhile.
            let stored = store.group(group)?.ok_or_else(|| Error::NotFound {
                what: "group",
                id: group.to_string(),
            })?;
            if stored.epoch != epoch {
                return Err(Error::Conflict {
                    group: group.clone(),
                    expected: epoch,
                    actual: stored.epoch,
                });
            }
        }
        Some(old) => {
            return Err(Error::InvalidArgument(format!(
                "group {group} is at epoch {epoch} in memory but {old} was saved: reload the manager"
            )));
        }
    }
    // Members: make the stored set equal to the manager's.
    let stored: BTreeMap<EntityId, MemberRecord> = store
        .list_members(group)?
        .into_iter()
        .map(|m| (m.entity.clone(), m))
        .collect();
    for id in stored.keys() {
        if !snapshot.members.contains_key(id) {
            store.remove_member(group, id)?;
        }
    }
    for (id, m) in &snapshot.members {
        let record = MemberRecord {
            group: group.clone(),
            entity: id.clone(),
            role: role_to_store(m.role),
            sender_id: m.sender_id.clone(),
            leaf_index: m.leaf.map(|l| l.get()),
            held_epoch: m.held,
        };
        match stored.get(id) {
            None => store.insert_member(&record)?,
            Some(existing) if *existing != record => store.update_member(&record)?,
            Some(_) => {}
        }
    }
    Ok(())
}

/// Rebuilds a manager from the store: enrolled entities, then every group
/// with its current material, key tree and members. Returns the manager and
/// the epoch of each group as loaded (the `persisted_epoch` for the next
/// [`save_group`]).
pub fn load_manager(
    store: &mut dyn ManagerStore,
    credential: EntityCredential,
) -> Result<(Manager, BTreeMap<GroupId, Epoch>)> {
    let mut manager = Manager::new(credential);
    let mut entities = store.list_entities()?;
    // Agents first: devices name them as relays.
    entities.sort_by_key(|e| e.kind != model::EntityKind::Agent);
    for e in entities {
        if let Some(kind) = kind_from_store(e.kind) {
            manager.enrol(e.credential, kind, e.agent)?;
        }
    }
    let mut epochs = BTreeMap::new();
    for g in store.list_groups()? {
        let epoch = load_group(store, &mut manager, &g)?;
        epochs.insert(g.id, epoch);
    }
    Ok((manager, epochs))
}

/// Loads one group (its current material, key tree and members) into
/// `manager`, replacing what it held of it. Returns the epoch loaded.
fn load_group(
    store: &mut dyn ManagerStore,
    manager: &mut Manager,
    g: &model::GroupRecord,
) -> Result<Epoch> {
    let material_bytes = store.material(&g.id, g.epoch)?.ok_or_else(|| {
        Error::Corrupt(format!(
            "group {} has no key material for epoch {}",
            g.id, g.epoch
        ))
    })?;
    let material = GroupKeyMaterial::from_cbor(&material_bytes)?;
    let (validity_ms, tree) = match store.tree_state(&g.id)? {
        Some((_, blob)) => parse_state_blob(&blob)?,
        None => (None, None),
    };
    let mut members = BTreeMap::new();
    for m in store.list_members(&g.id)? {
        let role = match m.role {
            model::Role::Sender => manager::Role::Sender,
            model::Role::Receiver => manager::Role::Receiver,
            // Relays hold no key; the manager routes through them by enrolment.
            model::Role::Relay => continue,
        };
        members.insert(
            m.entity.clone(),
            manager::MemberRecord {
                role,
                sender_id: m.sender_id,
                leaf: m.leaf_index.map(sealcast_group::lkh::LeafIndex::new),
                held: m.held_epoch,
                last_sent: None,
                unacked_sends: 0,
            },
        );
    }
    manager.import_group(GroupSnapshot {
        scheme: g.scheme,
        material,
        tree,
        members,
        validity_ms,
    })?;
    Ok(g.epoch)
}

/// Reloads `group` from the store into `manager` after a
/// [`Error::Conflict`] (another manager advanced it first): entities the
/// store holds and `manager` does not are enrolled first, then the group
/// replaces what `manager` held of it (or is removed, if the store no longer
/// has it). Returns the epoch loaded, for the next [`save_group`].
pub fn reload_group(
    store: &mut dyn ManagerStore,
    manager: &mut Manager,
    group: &GroupId,
) -> Result<Option<Epoch>> {
    let mut entities = store.list_entities()?;
    entities.sort_by_key(|e| e.kind != model::EntityKind::Agent);
    for e in entities {
        // New entities, and keys another manager rotated.
        if manager.credential_of(e.credential.id()) != Some(&e.credential)
            && let Some(kind) = kind_from_store(e.kind)
        {
            manager.enrol(e.credential, kind, e.agent)?;
        }
    }
    // Under the group's lock: never half of another manager's change.
    store.begin_group_update(group)?;
    let loaded = match store.group(group) {
        Ok(Some(g)) => load_group(store, manager, &g).map(Some),
        Ok(None) => {
            manager.forget_group(group);
            Ok(None)
        }
        Err(e) => Err(e),
    };
    let ended = store.finish_group_update(false);
    let loaded = loaded?;
    ended?;
    Ok(loaded)
}

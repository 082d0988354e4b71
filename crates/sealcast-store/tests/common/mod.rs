//! Fixtures and a backend-independent suite run against both stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::GroupKeyMaterial;
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_store::{
    AuditEntry, AuditKind, EntityKind, EntityRecord, Error, GroupRecord, ManagerStore,
    MemberRecord, RekeyScheme, Role,
};

pub fn kek(byte: u8) -> sealcast_store::Kek {
    sealcast_store::Kek::from_bytes([byte; 32]).unwrap()
}

pub fn gid(name: &str) -> GroupId {
    GroupId::new(name.as_bytes()).unwrap()
}

pub fn eid(name: &str) -> EntityId {
    EntityId::new(name).unwrap()
}

/// Key material of `group` at `epoch`: (its CBOR, its master secret).
pub fn material(group: &GroupId, epoch: u32, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let m = GroupKeyMaterial::generate(
        group.clone(),
        Epoch::new(epoch),
        AeadAlg::A128Gcm,
        Vec::new(),
        None,
        &mut TestRng::new(seed),
    )
    .unwrap();
    (m.to_cbor().unwrap().to_vec(), m.master_secret().to_vec())
}

pub fn entity(name: &str, kind: EntityKind, agent: Option<&str>, seed: u64) -> EntityRecord {
    EntityRecord {
        credential: EntityCredential::generate(eid(name), &mut TestRng::new(seed)).public(),
        kind,
        agent: agent.map(eid),
    }
}

pub fn group(name: &str, epoch: u32) -> GroupRecord {
    GroupRecord {
        id: gid(name),
        epoch: Epoch::new(epoch),
        alg: AeadAlg::A128Gcm,
        scheme: RekeyScheme::Tree,
        created_at: UnixMillis::new(1_700_000_000_000),
    }
}

pub fn member(
    group: &str,
    entity: &str,
    role: Role,
    sender: Option<u8>,
    leaf: Option<u32>,
) -> MemberRecord {
    MemberRecord {
        group: gid(group),
        entity: eid(entity),
        role,
        sender_id: sender.map(|s| SenderId::new([s]).unwrap()),
        leaf_index: leaf,
        held_epoch: None,
    }
}

/// Fills a store with a small fleet: agent, two devices, a headend, one
/// group at epoch 1 (material for 0 and 1, a tree state), three members,
/// two audit records.
pub fn populate(s: &mut dyn ManagerStore) {
    s.insert_entity(&entity("agent-1", EntityKind::Agent, None, 1))
        .unwrap();
    s.insert_entity(&entity("meter-1", EntityKind::Device, Some("agent-1"), 2))
        .unwrap();
    s.insert_entity(&entity("meter-2", EntityKind::Device, Some("agent-1"), 3))
        .unwrap();
    s.insert_entity(&entity("headend", EntityKind::Headend, None, 4))
        .unwrap();
    let g = gid("grid-west");
    let (m0, _) = material(&g, 0, 10);
    s.create_group(&group("grid-west", 0), Some(&m0), Some(b"tree v0"))
        .unwrap();
    s.insert_member(&member("grid-west", "headend", Role::Sender, Some(1), None))
        .unwrap();
    s.insert_member(&member(
        "grid-west",
        "meter-1",
        Role::Receiver,
        None,
        Some(0),
    ))
    .unwrap();
    s.insert_member(&member("grid-west", "agent-1", Role::Relay, None, None))
        .unwrap();
    let (m1, _) = material(&g, 1, 11);
    s.advance_epoch(&g, Epoch::new(0), Epoch::new(1), &m1, Some(b"tree v1"))
        .unwrap();
    s.set_held_epoch(&g, &eid("meter-1"), Epoch::new(1))
        .unwrap();
    s.audit_append(
        &AuditEntry::new(UnixMillis::new(1), AuditKind::Enrol, "meter-1 enrolled")
            .with_entity(eid("meter-1")),
    )
    .unwrap();
    s.audit_append(
        &AuditEntry::new(UnixMillis::new(2), AuditKind::Rekey, "epoch 0 -> 1").with_group(g),
    )
    .unwrap();
}

/// Checks what [`populate`] wrote, e.g. after a restart.
pub fn check_populated(s: &mut dyn ManagerStore) {
    let g = gid("grid-west");
    assert_eq!(s.schema_version().unwrap(), sealcast_store::SCHEMA_VERSION);
    let ents = s.list_entities().unwrap();
    assert_eq!(
        ents.iter().map(|e| e.id().as_str()).collect::<Vec<_>>(),
        ["agent-1", "headend", "meter-1", "meter-2"]
    );
    assert_eq!(
        s.entity(&eid("meter-1")).unwrap().unwrap(),
        entity("meter-1", EntityKind::Device, Some("agent-1"), 2)
    );
    let gr = s.group(&g).unwrap().unwrap();
    assert_eq!(
        gr,
        GroupRecord {
            epoch: Epoch::new(1),
            ..group("grid-west", 0)
        }
    );
    assert_eq!(s.list_groups().unwrap(), vec![gr]);
    assert_eq!(
        s.material(&g, Epoch::new(0)).unwrap().unwrap().as_slice(),
        material(&g, 0, 10).0
    );
    assert_eq!(
        s.material(&g, Epoch::new(1)).unwrap().unwrap().as_slice(),
        material(&g, 1, 11).0
    );
    assert!(s.material(&g, Epoch::new(2)).unwrap().is_none());
    assert_eq!(
        s.material_epochs(&g).unwrap(),
        [Epoch::new(0), Epoch::new(1)]
    );
    let (te, ts) = s.tree_state(&g).unwrap().unwrap();
    assert_eq!((te, ts.as_slice()), (Epoch::new(1), &b"tree v1"[..]));
    let members = s.list_members(&g).unwrap();
    assert_eq!(members.len(), 3);
    let m1 = s.member(&g, &eid("meter-1")).unwrap().unwrap();
    assert_eq!(m1.held_epoch, Some(Epoch::new(1)));
    assert_eq!(m1.leaf_index, Some(0));
    assert_eq!(m1.role, Role::Receiver);
    let he = s.member(&g, &eid("headend")).unwrap().unwrap();
    assert_eq!(he.sender_id, Some(SenderId::new([1]).unwrap()));
    let summary = s.audit_verify(None).unwrap();
    assert_eq!(summary.records, 2);
}

/// CRUD edges: duplicates, missing references, in-use entities, monotonic
/// held epochs, cascade on group removal.
pub fn crud_edges(s: &mut dyn ManagerStore) {
    populate(s);
    let g = gid("grid-west");
    assert!(matches!(
        s.insert_entity(&entity("meter-1", EntityKind::Device, None, 2)),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.insert_entity(&entity(
            "meter-9",
            EntityKind::Device,
            Some("no-such-agent"),
            9
        )),
        Err(Error::NotFound { .. })
    ));
    // Update an entity: new credential, no agent.
    let newer = entity("meter-2", EntityKind::Device, None, 33);
    s.update_entity(&newer).unwrap();
    assert_eq!(s.entity(&eid("meter-2")).unwrap().unwrap(), newer);
    assert!(matches!(
        s.update_entity(&entity("ghost", EntityKind::Device, None, 5)),
        Err(Error::NotFound { .. })
    ));
    // An entity that is a member (or an agent) cannot go.
    assert!(matches!(
        s.remove_entity(&eid("meter-1")),
        Err(Error::InUse { .. })
    ));
    assert!(matches!(
        s.remove_entity(&eid("agent-1")),
        Err(Error::InUse { .. })
    ));
    assert!(s.remove_entity(&eid("meter-2")).unwrap());
    assert!(!s.remove_entity(&eid("meter-2")).unwrap());
    // Members: duplicates, taken sender ids and leaves, missing rows.
    assert!(matches!(
        s.insert_member(&member("grid-west", "meter-1", Role::Receiver, None, None)),
        Err(Error::AlreadyExists { .. })
    ));
    s.insert_entity(&entity("meter-3", EntityKind::Device, None, 6))
        .unwrap();
    assert!(matches!(
        s.insert_member(&member("grid-west", "meter-3", Role::Sender, Some(1), None)),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.insert_member(&member(
            "grid-west",
            "meter-3",
            Role::Receiver,
            None,
            Some(0)
        )),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.insert_member(&member("no-group", "meter-3", Role::Receiver, None, None)),
        Err(Error::NotFound { .. })
    ));
    s.insert_member(&member(
        "grid-west",
        "meter-3",
        Role::Sender,
        Some(2),
        Some(1),
    ))
    .unwrap();
    let mut m3 = s.member(&g, &eid("meter-3")).unwrap().unwrap();
    m3.role = Role::Receiver;
    m3.sender_id = None;
    s.update_member(&m3).unwrap();
    assert_eq!(s.member(&g, &eid("meter-3")).unwrap().unwrap(), m3);
    assert_eq!(s.memberships(&eid("meter-3")).unwrap(), vec![m3]);
    // Held epochs only move forward, and never beyond the group's epoch.
    s.set_held_epoch(&g, &eid("meter-3"), Epoch::new(1))
        .unwrap();
    s.set_held_epoch(&g, &eid("meter-3"), Epoch::new(0))
        .unwrap();
    assert_eq!(
        s.member(&g, &eid("meter-3")).unwrap().unwrap().held_epoch,
        Some(Epoch::new(1))
    );
    assert!(matches!(
        s.set_held_epoch(&g, &eid("meter-3"), Epoch::new(2)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.set_held_epoch(&g, &eid("meter-2"), Epoch::new(1)),
        Err(Error::NotFound { .. })
    ));
    assert!(s.remove_member(&g, &eid("meter-3")).unwrap());
    assert!(!s.remove_member(&g, &eid("meter-3")).unwrap());
    // Group duplicates; material checks.
    assert!(matches!(
        s.create_group(&group("grid-west", 0), None, None),
        Err(Error::AlreadyExists { .. })
    ));
    let (wrong_epoch, _) = material(&g, 5, 12);
    assert!(matches!(
        s.advance_epoch(&g, Epoch::new(1), Epoch::new(2), &wrong_epoch, None),
        Err(Error::InvalidArgument(_))
    ));
    let (other_group, _) = material(&gid("other"), 2, 12);
    assert!(matches!(
        s.advance_epoch(&g, Epoch::new(1), Epoch::new(2), &other_group, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.advance_epoch(&g, Epoch::new(1), Epoch::new(2), b"not cbor", None),
        Err(Error::Core(_))
    ));
    let (m2, _) = material(&g, 2, 12);
    assert!(matches!(
        s.advance_epoch(&g, Epoch::new(1), Epoch::new(1), &m2, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.advance_epoch(
            &gid("no-group"),
            Epoch::new(1),
            Epoch::new(2),
            &material(&gid("no-group"), 2, 1).0,
            None
        ),
        Err(Error::NotFound { .. })
    ));
    // A tree state that is not replaced stays with its epoch.
    s.advance_epoch(&g, Epoch::new(1), Epoch::new(2), &m2, None)
        .unwrap();
    assert_eq!(s.tree_state(&g).unwrap().unwrap().0, Epoch::new(1));
    // Forgetting old material.
    assert_eq!(s.forget_material_before(&g, Epoch::new(2)).unwrap(), 2);
    assert_eq!(s.material_epochs(&g).unwrap(), [Epoch::new(2)]);
    // Removing the group takes members and material with it.
    assert!(s.remove_group(&g).unwrap());
    assert!(s.group(&g).unwrap().is_none());
    assert!(s.list_members(&g).unwrap().is_empty());
    assert!(s.material(&g, Epoch::new(2)).unwrap().is_none());
    assert!(s.tree_state(&g).unwrap().is_none());
    assert!(s.remove_entity(&eid("meter-1")).unwrap());
}

/// Compare-and-set: a stale expected epoch is a typed conflict and changes
/// nothing.
pub fn conflict(s: &mut dyn ManagerStore) {
    let g = gid("cas");
    let (m0, _) = material(&g, 0, 20);
    s.create_group(&group("cas", 0), Some(&m0), None).unwrap();
    let (a, _) = material(&g, 1, 21);
    let (b, _) = material(&g, 1, 22);
    s.advance_epoch(&g, Epoch::new(0), Epoch::new(1), &a, None)
        .unwrap();
    match s.advance_epoch(&g, Epoch::new(0), Epoch::new(1), &b, None) {
        Err(Error::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (Epoch::new(0), Epoch::new(1)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let err = s
        .advance_epoch(&g, Epoch::new(0), Epoch::new(1), &b, None)
        .unwrap_err();
    assert!(err.to_string().contains("another manager"), "{err}");
    assert_eq!(s.group(&g).unwrap().unwrap().epoch, Epoch::new(1));
    assert_eq!(
        s.material(&g, Epoch::new(1)).unwrap().unwrap().as_slice(),
        a
    );
    // A loser that skips ahead is refused as well.
    let (c, _) = material(&g, 7, 23);
    assert!(matches!(
        s.advance_epoch(&g, Epoch::new(5), Epoch::new(7), &c, None),
        Err(Error::Conflict { .. })
    ));
    assert!(s.material(&g, Epoch::new(7)).unwrap().is_none());
}

/// The "half-written rekey" check, after the caller planted a row in
/// `epoch_material` for (group "half", epoch 2) behind the store's back: the
/// epoch update succeeds inside the transaction, the material insert then
/// fails on the primary key, and the whole transaction must roll back.
pub fn half_written_setup(s: &mut dyn ManagerStore) -> Vec<u8> {
    let g = gid("half");
    let (m0, _) = material(&g, 0, 30);
    s.create_group(&group("half", 0), Some(&m0), Some(b"tree 0"))
        .unwrap();
    let (m1, _) = material(&g, 1, 31);
    s.advance_epoch(&g, Epoch::new(0), Epoch::new(1), &m1, Some(b"tree 1"))
        .unwrap();
    m1
}

pub fn half_written_check(s: &mut dyn ManagerStore, m1: &[u8]) {
    let g = gid("half");
    let (m2, _) = material(&g, 2, 32);
    match s.advance_epoch(&g, Epoch::new(1), Epoch::new(2), &m2, Some(b"tree 2")) {
        Err(Error::MaterialExists { epoch, .. }) => assert_eq!(epoch, Epoch::new(2)),
        other => panic!("expected MaterialExists, got {other:?}"),
    }
    // Nothing of the failed transaction is visible.
    assert_eq!(s.group(&g).unwrap().unwrap().epoch, Epoch::new(1));
    assert_eq!(
        s.material(&g, Epoch::new(1)).unwrap().unwrap().as_slice(),
        m1
    );
    let (te, ts) = s.tree_state(&g).unwrap().unwrap();
    assert_eq!((te, ts.as_slice()), (Epoch::new(1), &b"tree 1"[..]));
    // The planted row is not material this store sealed: an error, not bytes.
    assert!(matches!(
        s.material(&g, Epoch::new(2)),
        Err(Error::Unseal { .. })
    ));
    // The group can still move on past the blocked epoch.
    let (m3, _) = material(&g, 3, 33);
    s.advance_epoch(&g, Epoch::new(1), Epoch::new(3), &m3, None)
        .unwrap();
    assert_eq!(s.group(&g).unwrap().unwrap().epoch, Epoch::new(3));
}

/// The audit table: append, verify, continue.
pub fn audit_table(s: &mut dyn ManagerStore) {
    let first = s
        .audit_append(
            &AuditEntry::new(UnixMillis::new(10), AuditKind::Join, "joined")
                .with_group(gid("a"))
                .with_entity(eid("meter-1")),
        )
        .unwrap();
    assert_eq!(first.seq, 1);
    for i in 0..5u64 {
        s.audit_append(&AuditEntry::new(
            UnixMillis::new(11 + i),
            AuditKind::Delivery,
            format!("delivery {i}"),
        ))
        .unwrap();
    }
    let last = s
        .audit_append(&AuditEntry::new(
            UnixMillis::new(20),
            AuditKind::Other("misbehaviour".into()),
            "report",
        ))
        .unwrap();
    assert_eq!(last.seq, 7);
    assert_eq!(last.prev_hash, s.audit_records(6, 1).unwrap()[0].hash);
    let summary = s.audit_verify(None).unwrap();
    assert_eq!(summary.records, 7);
    assert_eq!(summary.head.unwrap().hash, last.hash);
    let anchor = summary.head.unwrap();
    s.audit_verify(Some(anchor)).unwrap();
    assert!(
        s.audit_verify(Some(sealcast_store::AuditAnchor {
            seq: 8,
            hash: last.hash
        }))
        .is_err()
    );
    assert_eq!(
        s.audit_records(3, 2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // Secrets-free text is the caller's duty, but control characters are refused.
    assert!(
        s.audit_append(&AuditEntry::new(
            UnixMillis::new(1),
            AuditKind::Ack,
            "a\x1b[2Jb"
        ))
        .is_err()
    );
}

/// Batch enrolment is all or none: a batch whose last entity collides
/// leaves none of the batch behind; a clean batch lands whole.
pub fn batch_enrolment(s: &mut dyn ManagerStore) {
    s.insert_entity(&entity("gw-b", EntityKind::Agent, None, 1))
        .unwrap();
    let clean: Vec<EntityRecord> = (0..50)
        .map(|i| {
            entity(
                &format!("dev-b{i}"),
                EntityKind::Device,
                Some("gw-b"),
                100 + i,
            )
        })
        .collect();
    s.insert_entities(&clean).unwrap();
    assert_eq!(s.list_entities().unwrap().len(), 51);

    let mut doomed: Vec<EntityRecord> = (0..20)
        .map(|i| entity(&format!("dev-c{i}"), EntityKind::Device, None, 200 + i))
        .collect();
    doomed.push(entity("dev-b7", EntityKind::Device, None, 999));
    assert!(s.insert_entities(&doomed).is_err());
    assert_eq!(
        s.list_entities().unwrap().len(),
        51,
        "a failed batch left some of its entities behind"
    );
    assert!(s.entity(&eid("dev-c0")).unwrap().is_none());
}

/// Transmission orders: written by compare-and-set (a second manager with a
/// stale view is refused), acknowledged only at their current version,
/// listed while unacknowledged, refused for an unknown entity.
pub fn transmission_orders(s: &mut dyn ManagerStore, other: &mut dyn ManagerStore) {
    use sealcast_group::transmission::Scope;
    use sealcast_store::TransmissionRecord;
    s.insert_entity(&entity("door-1", EntityKind::Device, None, 1))
        .unwrap();
    s.insert_entity(&entity("door-2", EntityKind::Device, None, 2))
        .unwrap();
    assert_eq!(s.transmission(&eid("door-1")).unwrap(), None);
    let record = |id: &str, version: u64, scopes: &[&str]| TransmissionRecord {
        entity: eid(id),
        version,
        stopped: scopes.iter().map(|t| Scope::parse(t).unwrap()).collect(),
        acked: None,
        updated_at: UnixMillis::new(version),
    };
    let v1 = record("door-1", 100, &["alert", "command:fire-doors"]);
    s.put_transmission(&v1, None).unwrap();
    assert_eq!(s.transmission(&eid("door-1")).unwrap(), Some(v1.clone()));
    // A second first write (another manager that saw none) is a conflict.
    assert!(matches!(
        other.put_transmission(&record("door-1", 101, &["all"]), None),
        Err(Error::TransmissionConflict { .. })
    ));
    assert_eq!(s.pending_transmissions().unwrap(), vec![v1.clone()]);
    // An ack of another version changes nothing; of the current one, records it.
    assert!(!s.ack_transmission(&eid("door-1"), 99).unwrap());
    assert!(s.ack_transmission(&eid("door-1"), 100).unwrap());
    let acked = s.transmission(&eid("door-1")).unwrap().unwrap();
    assert!(acked.is_acked());
    assert!(s.pending_transmissions().unwrap().is_empty());
    // Compare-and-set on the version.
    let v2 = record("door-1", 200, &[]);
    assert!(matches!(
        other.put_transmission(&v2, Some(99)),
        Err(Error::TransmissionConflict { .. })
    ));
    other.put_transmission(&v2, Some(100)).unwrap();
    let now = s.transmission(&eid("door-1")).unwrap().unwrap();
    assert_eq!((now.version, now.acked), (200, Some(100)));
    assert!(!now.is_acked() && now.stopped.is_empty());
    assert!(matches!(
        s.put_transmission(&record("door-1", 300, &["all"]), Some(100)),
        Err(Error::TransmissionConflict { .. })
    ));
    assert!(matches!(
        s.put_transmission(&record("ghost", 1, &["all"]), None),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.pending_transmissions().unwrap().len(), 1);
    // Removing the entity removes its order with it, and records it as
    // removed until it is enrolled again.
    assert!(!s.was_removed(&eid("door-1")).unwrap());
    assert!(s.remove_entity(&eid("door-1")).unwrap());
    assert_eq!(s.transmission(&eid("door-1")).unwrap(), None);
    assert!(s.pending_transmissions().unwrap().is_empty());
    assert!(s.was_removed(&eid("door-1")).unwrap());
    assert!(other.was_removed(&eid("door-1")).unwrap());
    s.insert_entity(&entity("door-1", EntityKind::Device, None, 7))
        .unwrap();
    assert!(!s.was_removed(&eid("door-1")).unwrap());
}

/// The authorization status list: compare-and-set on its version between
/// two stores (two managers), listing, lifting, and report numbers taken
/// once.
pub fn status_list(s: &mut dyn ManagerStore, other: &mut dyn ManagerStore) {
    use sealcast_group::status::Status;
    use sealcast_store::Listing;
    let l = |status, reason| {
        Some(Listing {
            status,
            reason,
            revoked_key: (status == Status::Revoked).then_some(&[7u8; 32][..]),
        })
    };
    let empty = s.status_list().unwrap();
    assert_eq!((empty.version, empty.listed.len()), (0, 0));
    s.put_status(&eid("sensor-1"), l(Status::Suspended, "flood"), 0, 10)
        .unwrap();
    // The other manager decided on version 0 too: refused, nothing changed.
    assert!(matches!(
        other.put_status(&eid("door-1"), l(Status::Revoked, "by hand"), 0, 11),
        Err(Error::StatusConflict { expected: 0 })
    ));
    let now = other.status_list().unwrap();
    assert_eq!(now.version, 10);
    assert_eq!(now.listed.len(), 1);
    assert_eq!(
        (
            now.listed[0].entity.as_str(),
            now.listed[0].status,
            now.listed[0].reason.as_str()
        ),
        ("sensor-1", Status::Suspended, "flood")
    );
    other
        .put_status(&eid("sensor-1"), l(Status::Revoked, "policy"), 10, 12)
        .unwrap();
    other
        .put_status(&eid("door-1"), l(Status::Suspended, "by hand"), 12, 13)
        .unwrap();
    s.put_status(&eid("door-1"), None, 13, 14).unwrap();
    let now = s.status_list().unwrap();
    assert_eq!(now.version, 14);
    assert_eq!(
        now.listed
            .iter()
            .map(|r| (r.entity.as_str(), r.status))
            .collect::<Vec<_>>(),
        vec![("sensor-1", Status::Revoked)]
    );
    assert_eq!(now.listed[0].revoked_key.as_deref(), Some(&[7u8; 32][..]));
    // Report numbers: each taken once, only growing, per reporter.
    assert!(s.take_report_seq(&eid("gw"), 5).unwrap());
    assert!(!other.take_report_seq(&eid("gw"), 5).unwrap());
    assert!(!other.take_report_seq(&eid("gw"), 4).unwrap());
    assert!(other.take_report_seq(&eid("gw"), 6).unwrap());
    assert!(s.take_report_seq(&eid("gw-2"), 1).unwrap());
}

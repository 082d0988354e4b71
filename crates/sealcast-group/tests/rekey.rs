#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `Manager::rekey`: a fresh key without a membership change, for tree and
//! point-to-point groups. Every member ends on the new epoch with the
//! manager's material; whoever holds only earlier epochs' material (or an
//! evicted member's path keys) cannot compute it.

use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::{AeadAlg, hkdf_sha256};
use sealcast_core::groupkey::GroupKeyMaterial;
use sealcast_core::ids::{EntityId, Epoch, GroupId, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_group::Error;
use sealcast_group::manager::{
    Destination, EntityKind, Manager, MessageKind, Outgoing, RekeyScheme, Role,
};
use sealcast_group::member::{Member, MemberEvent};

fn id(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

const NOW: UnixMillis = UnixMillis::new(1_700_000_000_000);

struct Fleet {
    rng: TestRng,
    manager: Manager,
    group: GroupId,
    members: Vec<Member>,
}

impl Fleet {
    fn new(scheme: RekeyScheme, n: usize, seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let manager_cred = EntityCredential::generate(id("manager"), &mut rng);
        let manager_pub = manager_cred.public();
        let mut manager = Manager::new(manager_cred);
        let group = GroupId::new(b"fire-doors").unwrap();
        manager
            .create_group(group.clone(), AeadAlg::A128Gcm, scheme, None, NOW, &mut rng)
            .unwrap();
        let mut members = Vec::new();
        for i in 0..n {
            let cred = EntityCredential::generate(id(&format!("door-{i}")), &mut rng);
            manager
                .enrol(cred.public(), EntityKind::Device, None)
                .unwrap();
            members.push(Member::new(cred, manager_pub.clone()));
        }
        let mut fleet = Self {
            rng,
            manager,
            group,
            members,
        };
        let joiners: Vec<(EntityId, Role)> = fleet
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = if i == 0 { Role::Sender } else { Role::Receiver };
                (m.credential().id().clone(), role)
            })
            .collect();
        let out = fleet
            .manager
            .add_members(&fleet.group, &joiners, NOW, &mut fleet.rng)
            .unwrap();
        fleet.deliver(&out);
        fleet
    }

    /// Hands every message to its recipients (a group message to every
    /// member) and every resulting ack to the manager.
    fn deliver(&mut self, out: &[Outgoing]) {
        for o in out {
            for m in &mut self.members {
                let event = match &o.to {
                    Destination::Member { member, .. } if member == m.credential().id() => {
                        m.handle_delivery(o.kind, &o.bytes)
                    }
                    Destination::Group(_) if o.kind == MessageKind::TreeRekey => {
                        m.handle_tree_rekey(&o.bytes)
                    }
                    Destination::Group(_) if o.kind == MessageKind::JoinNotice => {
                        m.handle_join_notice(&o.bytes)
                    }
                    _ => continue,
                };
                match event.unwrap() {
                    MemberEvent::Installed { ack, .. }
                    | MemberEvent::AlreadyCurrent { ack, .. } => {
                        self.manager.handle_ack(&ack).unwrap();
                    }
                }
            }
        }
    }

    fn current(&self) -> GroupKeyMaterial {
        self.manager.material(&self.group).unwrap().clone()
    }

    fn assert_converged(&self) {
        let material = self.current();
        for m in &self.members {
            let held = m.material(&self.group).unwrap();
            assert_eq!(held.epoch(), material.epoch(), "{}", m.credential().id());
            assert!(
                held.master_secret() == material.master_secret()
                    && held.master_salt() == material.master_salt()
                    && held.signers() == material.signers(),
                "{} holds other material than the manager",
                m.credential().id()
            );
        }
        let summary = self.manager.summary(&self.group).unwrap();
        assert_eq!(
            summary.current, summary.members,
            "every member acknowledged"
        );
    }
}

/// What someone holding only `previous` (and the public salt of the new
/// epoch) could try: the secret itself, the join ratchet, and HKDF of it
/// under the new salt — the "fresh salt over the same secret" shortcut.
fn derivable_from(previous: &GroupKeyMaterial, new_salt: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![previous.master_secret().to_vec()];
    out.push(
        previous
            .ratchet(Vec::new(), None)
            .unwrap()
            .master_secret()
            .to_vec(),
    );
    for info in [&b""[..], b"sealcast rekey", b"sealcast next epoch"] {
        out.push(
            hkdf_sha256(new_salt, previous.master_secret(), info, 32)
                .unwrap()
                .to_vec(),
        );
    }
    out
}

fn assert_fresh(previous: &GroupKeyMaterial, now: &GroupKeyMaterial) {
    assert!(now.epoch() > previous.epoch());
    assert!(
        derivable_from(previous, now.master_salt())
            .iter()
            .all(|candidate| candidate.as_slice() != now.master_secret()),
        "the new secret follows from the previous epoch's material"
    );
}

#[test]
fn tree_rekey_moves_every_member_to_a_fresh_epoch() {
    let mut fleet = Fleet::new(RekeyScheme::Tree, 7, 1);
    fleet.assert_converged();
    // After an eviction the tree root *is* the master secret: the case a
    // new salt over an unchanged root would get wrong.
    let out = fleet
        .manager
        .evict(&fleet.group, &id("door-6"), NOW, &mut fleet.rng)
        .unwrap();
    let evicted = fleet.members.pop().unwrap();
    fleet.deliver(&out);
    fleet.assert_converged();

    for round in 0..3 {
        let previous = fleet.current();
        let out = fleet
            .manager
            .rekey(&fleet.group, NOW, &mut fleet.rng)
            .unwrap();
        assert_eq!(out.len(), 1, "one broadcast");
        assert_eq!(out[0].kind, MessageKind::TreeRekey);
        assert_eq!(out[0].to, Destination::Group(fleet.group.clone()));
        let now = fleet.current();
        assert_eq!(
            now.epoch(),
            previous.epoch().next().unwrap(),
            "round {round}"
        );
        assert_eq!(now.signers(), previous.signers(), "membership unchanged");
        assert_fresh(&previous, &now);
        fleet.deliver(&out);
        fleet.assert_converged();
        // A duplicate of the notice changes nothing.
        fleet.deliver(&out);
        fleet.assert_converged();
    }
    // The evicted member cannot follow (its state is older than the rekey).
    let mut evicted = evicted;
    let out = fleet
        .manager
        .rekey(&fleet.group, NOW, &mut fleet.rng)
        .unwrap();
    assert!(evicted.handle_tree_rekey(&out[0].bytes).is_err());
    fleet.deliver(&out);
    fleet.assert_converged();
}

#[test]
fn tree_rekey_right_after_joins_is_fresh_too() {
    let mut fleet = Fleet::new(RekeyScheme::Tree, 3, 2);
    let previous = fleet.current();
    let out = fleet
        .manager
        .rekey(&fleet.group, NOW, &mut fleet.rng)
        .unwrap();
    assert_fresh(&previous, &fleet.current());
    fleet.deliver(&out);
    fleet.assert_converged();
    // Evictions and joins still work after a rekey.
    let out = fleet
        .manager
        .evict(&fleet.group, &id("door-1"), NOW, &mut fleet.rng)
        .unwrap();
    fleet.members.remove(1);
    fleet.deliver(&out);
    fleet.assert_converged();
}

#[test]
fn point_to_point_rekey_delivers_a_fresh_secret_to_each_member() {
    let mut fleet = Fleet::new(RekeyScheme::PointToPoint, 4, 3);
    fleet.assert_converged();
    for _ in 0..2 {
        let previous = fleet.current();
        let out = fleet
            .manager
            .rekey(&fleet.group, NOW, &mut fleet.rng)
            .unwrap();
        assert_eq!(out.len(), 4, "one delivery per member");
        assert!(out.iter().all(|o| o.kind == MessageKind::KeyDelivery));
        let now = fleet.current();
        assert_eq!(now.epoch(), previous.epoch().next().unwrap());
        assert_eq!(now.signers(), previous.signers());
        assert_fresh(&previous, &now);
        // Deliveries are end to end: a member cannot open another's.
        let other = out
            .iter()
            .find(|o| {
                o.to != (Destination::Member {
                    member: id("door-0"),
                    via: None,
                })
            })
            .unwrap();
        assert!(
            fleet.members[0]
                .handle_delivery(other.kind, &other.bytes)
                .is_err()
        );
        fleet.deliver(&out);
        fleet.assert_converged();
    }
}

#[test]
fn rekey_of_an_empty_or_unknown_group() {
    let mut rng = TestRng::new(4);
    let mut manager = Manager::new(EntityCredential::generate(id("manager"), &mut rng));
    let door = EntityCredential::generate(id("door-0"), &mut rng);
    manager
        .enrol(door.public(), EntityKind::Device, None)
        .unwrap();
    for (name, scheme) in [
        (&b"tree"[..], RekeyScheme::Tree),
        (b"p2p", RekeyScheme::PointToPoint),
    ] {
        let group = GroupId::new(name).unwrap();
        manager
            .create_group(group.clone(), AeadAlg::A128Gcm, scheme, None, NOW, &mut rng)
            .unwrap();
        let before = manager.material(&group).unwrap().clone();
        assert!(manager.rekey(&group, NOW, &mut rng).unwrap().is_empty());
        assert_fresh(&before, manager.material(&group).unwrap());
        // The last member of a group can be evicted (a tree left empty).
        manager
            .add_members(&group, &[(id("door-0"), Role::Receiver)], NOW, &mut rng)
            .unwrap();
        let before = manager.material(&group).unwrap().clone();
        assert!(
            manager
                .evict(&group, &id("door-0"), NOW, &mut rng)
                .unwrap()
                .is_empty()
        );
        assert_fresh(&before, manager.material(&group).unwrap());
        assert_eq!(manager.summary(&group).unwrap().members, 0);
        // And it can join again afterwards.
        manager
            .add_members(&group, &[(id("door-0"), Role::Receiver)], NOW, &mut rng)
            .unwrap();
        assert_eq!(
            manager.material(&group).unwrap().epoch(),
            Epoch::new(before.epoch().get() + 2)
        );
    }
    let unknown = GroupId::new(b"nope").unwrap();
    assert_eq!(
        manager.rekey(&unknown, NOW, &mut rng).unwrap_err(),
        Error::UnknownGroup
    );
    // Evicting a non-member changes nothing.
    let group = GroupId::new(b"tree").unwrap();
    let before = manager.material(&group).unwrap().epoch();
    assert_eq!(
        manager
            .evict(&group, &id("door-9"), NOW, &mut rng)
            .unwrap_err(),
        Error::UnknownMember
    );
    assert_eq!(manager.material(&group).unwrap().epoch(), before);
}

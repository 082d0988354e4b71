#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A member's exported key state (material and tree path) restores into a
//! fresh `Member` that then follows the next tree rekey — what a device
//! restarting from its state file relies on.

use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, GroupId, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_group::manager::{Destination, EntityKind, Manager, MessageKind, RekeyScheme, Role};
use sealcast_group::member::{Member, MemberEvent};

fn id(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

#[test]
fn exported_tree_member_restores_and_follows_the_next_rekey() {
    let mut rng = TestRng::new(7);
    let now = UnixMillis::new(1_700_000_000_000);
    let manager_cred = EntityCredential::generate(id("manager"), &mut rng);
    let manager_pub = manager_cred.public();
    let mut manager = Manager::new(manager_cred);
    let names = [id("door-1"), id("door-2"), id("door-3")];
    // The same seed gives the same credential: door-1 "before" and "after"
    // its restart.
    let cred =
        |i: usize| EntityCredential::generate(names[i].clone(), &mut TestRng::new(100 + i as u64));
    for i in 0..names.len() {
        manager
            .enrol(cred(i).public(), EntityKind::Device, None)
            .unwrap();
    }
    let group = GroupId::new(b"fire-doors").unwrap();
    manager
        .create_group(
            group.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::Tree,
            None,
            now,
            &mut rng,
        )
        .unwrap();
    let joiners: Vec<(EntityId, Role)> =
        names.iter().map(|n| (n.clone(), Role::Receiver)).collect();
    let out = manager
        .add_members(&group, &joiners, now, &mut rng)
        .unwrap();
    let mut door1 = Member::new(cred(0), manager_pub.clone());
    for o in &out {
        if o.to
            == (Destination::Member {
                member: names[0].clone(),
                via: None,
            })
        {
            let ev = door1.handle_delivery(o.kind, &o.bytes).unwrap();
            assert!(matches!(ev, MemberEvent::Installed { .. }));
        }
    }
    assert!(door1.leaf(&group).is_some());

    // Restart: a fresh member from the exported state.
    let exported = door1.export_groups();
    assert_eq!(exported.len(), 1);
    let mut restored = Member::new(cred(0), manager_pub);
    for (material, path) in exported {
        assert!(path.is_some(), "a tree member exports its path");
        restored.import_group(material, path).unwrap();
    }
    assert_eq!(restored.epoch(&group), door1.epoch(&group));
    assert_eq!(restored.leaf(&group), door1.leaf(&group));

    // The restored member follows the rekey that evicts door-3.
    let out = manager.evict(&group, &names[2], now, &mut rng).unwrap();
    let rekey = out
        .iter()
        .find(|o| o.kind == MessageKind::TreeRekey)
        .expect("a tree rekey broadcast");
    let ev = restored.handle_tree_rekey(&rekey.bytes).unwrap();
    assert!(matches!(ev, MemberEvent::Installed { .. }));
    assert_eq!(
        restored.epoch(&group),
        manager.material(&group).map(|m| m.epoch())
    );

    // An older epoch is refused on import.
    let (old, path) = door1.export_groups().pop().unwrap();
    assert!(restored.import_group(old, path).is_err());
}

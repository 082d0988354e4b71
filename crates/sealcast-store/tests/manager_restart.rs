#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The group manager persisted in a store: it survives a restart (SQLite
//! file, PostgreSQL schema) with its key tree intact — members that were
//! never restarted follow the rekeys the restored manager sends — and two
//! manager instances racing on one store never both move a group to the
//! same epoch.

use std::collections::BTreeMap;

use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, Epoch, GroupId, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_group::manager::{
    Destination, EntityKind, Manager, MessageKind, Outgoing, RekeyScheme, Role,
};
use sealcast_group::member::{Member, MemberEvent};
use sealcast_store::persist::{load_manager, save_enrolment, save_group};
use sealcast_store::{Error, Kek, ManagerStore, PgStore, SqliteStore};

const NOW: u64 = 1_700_000_000_000;

fn id(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

struct Fleet {
    rng: TestRng,
    manager_seed: [u8; 32],
    manager_x: [u8; 32],
    members: BTreeMap<EntityId, Member>,
}

impl Fleet {
    fn manager_credential(&self) -> EntityCredential {
        EntityCredential::from_secret_bytes(id("manager"), &self.manager_seed, &self.manager_x)
    }

    fn new(devices: usize) -> (Self, Manager) {
        let mut rng = TestRng::new(0xfee7);
        let mut manager_seed = [0u8; 32];
        let mut manager_x = [0u8; 32];
        rand_fill(&mut rng, &mut manager_seed);
        rand_fill(&mut rng, &mut manager_x);
        let cred = EntityCredential::from_secret_bytes(id("manager"), &manager_seed, &manager_x);
        let manager_pub = cred.public();
        let mut manager = Manager::new(cred);
        let mut members = BTreeMap::new();
        let agent = EntityCredential::generate(id("gw-1"), &mut rng);
        manager
            .enrol(agent.public(), EntityKind::Agent, None)
            .unwrap();
        for i in 0..devices {
            let c = EntityCredential::generate(id(&format!("meter-{i:03}")), &mut rng);
            manager
                .enrol(c.public(), EntityKind::Device, Some(id("gw-1")))
                .unwrap();
            members.insert(c.id().clone(), Member::new(c, manager_pub.clone()));
        }
        (
            Self {
                rng,
                manager_seed,
                manager_x,
                members,
            },
            manager,
        )
    }

    /// Delivers every message at once (the network is not the point here)
    /// and feeds the acks back.
    fn deliver(&mut self, manager: &mut Manager, out: Vec<Outgoing>) {
        let mut acks = Vec::new();
        for o in out {
            let targets: Vec<EntityId> = match &o.to {
                Destination::Member { member, .. } => vec![member.clone()],
                Destination::Group(_) => self.members.keys().cloned().collect(),
            };
            for t in targets {
                let m = self.members.get_mut(&t).unwrap();
                let r = match o.kind {
                    MessageKind::KeyDelivery | MessageKind::TreeDelivery => {
                        m.handle_delivery(o.kind, &o.bytes)
                    }
                    MessageKind::JoinNotice => m.handle_join_notice(&o.bytes),
                    MessageKind::TreeRekey => m.handle_tree_rekey(&o.bytes),
                };
                if let Ok(
                    MemberEvent::Installed { ack, .. } | MemberEvent::AlreadyCurrent { ack, .. },
                ) = r
                {
                    acks.push(ack);
                }
            }
        }
        for a in acks {
            manager.handle_ack(&a).unwrap();
        }
    }

    fn assert_converged(&self, manager: &Manager, group: &GroupId) {
        let material = manager.material(group).unwrap();
        for (m, rec) in manager.members(group).unwrap() {
            let held = self.members[m]
                .material(group)
                .unwrap_or_else(|| panic!("{m} holds nothing"));
            assert_eq!(held.epoch(), material.epoch(), "{m}");
            assert_eq!(held.master_secret(), material.master_secret(), "{m}");
            assert_eq!(rec.held, Some(material.epoch()), "{m} ack recorded");
        }
    }
}

fn rand_fill(rng: &mut TestRng, buf: &mut [u8]) {
    use rand_core::Rng;
    rng.fill_bytes(buf);
}

fn now() -> UnixMillis {
    UnixMillis::new(NOW)
}

/// Build a tree group, persist after every step, restart, keep going.
fn survives_restart(open: &mut dyn FnMut() -> Box<dyn ManagerStore>) {
    let group = GroupId::new(b"meters-north").unwrap();
    let (mut fleet, mut manager) = Fleet::new(40);
    let mut store = open();
    save_enrolment(store.as_mut(), &manager).unwrap();
    manager
        .create_group(
            group.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::Tree,
            Some(86_400_000),
            now(),
            &mut fleet.rng,
        )
        .unwrap();
    save_group(store.as_mut(), &manager, &group, None, now()).unwrap();
    let mut saved = Epoch::new(0);

    let everyone: Vec<(EntityId, Role)> = fleet
        .members
        .keys()
        .map(|m| {
            (
                m.clone(),
                if m.as_str() == "meter-000" {
                    Role::Sender
                } else {
                    Role::Receiver
                },
            )
        })
        .collect();
    let out = manager
        .add_members(&group, &everyone, now(), &mut fleet.rng)
        .unwrap();
    save_group(store.as_mut(), &manager, &group, Some(saved), now()).unwrap();
    saved = manager.material(&group).unwrap().epoch();
    fleet.deliver(&mut manager, out);
    save_group(store.as_mut(), &manager, &group, Some(saved), now()).unwrap();

    let out = manager
        .evict(&group, &id("meter-007"), now(), &mut fleet.rng)
        .unwrap();
    save_group(store.as_mut(), &manager, &group, Some(saved), now()).unwrap();
    saved = manager.material(&group).unwrap().epoch();
    fleet.deliver(&mut manager, out);
    save_group(store.as_mut(), &manager, &group, Some(saved), now()).unwrap();
    fleet.assert_converged(&manager, &group);
    let before = manager.material(&group).unwrap().clone();
    let members_before = manager.members(&group).unwrap().clone();

    // Restart: drop the manager and the store handle, reopen, reload.
    drop(manager);
    drop(store);
    let mut store = open();
    let (mut manager, epochs) = load_manager(store.as_mut(), fleet.manager_credential()).unwrap();
    assert_eq!(epochs[&group], saved);
    assert_eq!(
        manager.material(&group).unwrap(),
        &before,
        "material survives the restart"
    );
    let restored: Vec<_> = manager
        .members(&group)
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.role, v.leaf, v.held))
        .collect();
    let original: Vec<_> = members_before
        .iter()
        .map(|(k, v)| (k.clone(), v.role, v.leaf, v.held))
        .collect();
    assert_eq!(restored, original, "members survive the restart");

    // The restored key tree still matches what the (never restarted) members hold:
    // a tree rekey from the restored manager is followed by everyone left.
    let out = manager
        .evict(&group, &id("meter-021"), now(), &mut fleet.rng)
        .unwrap();
    assert!(
        matches!(out.as_slice(), [o] if o.kind == MessageKind::TreeRekey),
        "one broadcast"
    );
    save_group(store.as_mut(), &manager, &group, Some(saved), now()).unwrap();
    saved = manager.material(&group).unwrap().epoch();
    fleet.deliver(&mut manager, out);
    fleet.assert_converged(&manager, &group);
    assert!(
        fleet.members[&id("meter-021")].epoch(&group).unwrap() < saved,
        "the evicted member stays behind"
    );

    // And a join after the restart.
    let c = EntityCredential::generate(id("meter-new"), &mut fleet.rng);
    manager
        .enrol(c.public(), EntityKind::Device, Some(id("gw-1")))
        .unwrap();
    fleet
        .members
        .insert(c.id().clone(), Member::new(c, manager.public()));
    save_enrolment(store.as_mut(), &manager).unwrap();
    let out = manager
        .add_members(
            &group,
            &[(id("meter-new"), Role::Receiver)],
            now(),
            &mut fleet.rng,
        )
        .unwrap();
    save_group(store.as_mut(), &manager, &group, Some(saved), now()).unwrap();
    fleet.deliver(&mut manager, out);
    fleet.assert_converged(&manager, &group);
}

/// Two manager instances loaded from one store race to rekey one group:
/// the store lets exactly one move the epoch; the loser reloads and retries.
fn racing_managers(open: &mut dyn FnMut() -> Box<dyn ManagerStore>) {
    let group = GroupId::new(b"doors").unwrap();
    let (mut fleet, mut manager) = Fleet::new(8);
    let mut store_a = open();
    save_enrolment(store_a.as_mut(), &manager).unwrap();
    manager
        .create_group(
            group.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::PointToPoint,
            None,
            now(),
            &mut fleet.rng,
        )
        .unwrap();
    save_group(store_a.as_mut(), &manager, &group, None, now()).unwrap();
    let all: Vec<(EntityId, Role)> = fleet
        .members
        .keys()
        .map(|m| (m.clone(), Role::Receiver))
        .collect();
    let out = manager
        .add_members(&group, &all, now(), &mut fleet.rng)
        .unwrap();
    save_group(
        store_a.as_mut(),
        &manager,
        &group,
        Some(Epoch::new(0)),
        now(),
    )
    .unwrap();
    fleet.deliver(&mut manager, out);
    drop(manager);

    let mut store_b = open();
    let (mut a, ea) = load_manager(store_a.as_mut(), fleet.manager_credential()).unwrap();
    let (mut b, eb) = load_manager(store_b.as_mut(), fleet.manager_credential()).unwrap();
    let start = ea[&group];
    assert_eq!(start, eb[&group]);
    let out_a = a
        .evict(&group, &id("meter-001"), now(), &mut fleet.rng)
        .unwrap();
    let out_b = b
        .evict(&group, &id("meter-002"), now(), &mut fleet.rng)
        .unwrap();
    assert_eq!(
        a.material(&group).unwrap().epoch(),
        b.material(&group).unwrap().epoch()
    );
    assert_ne!(
        a.material(&group).unwrap().master_secret(),
        b.material(&group).unwrap().master_secret()
    );
    save_group(store_a.as_mut(), &a, &group, Some(start), now()).unwrap();
    let lost = save_group(store_b.as_mut(), &b, &group, Some(start), now());
    assert!(
        matches!(lost, Err(Error::Conflict { .. })),
        "the second manager must lose: {lost:?}"
    );
    // The loser never sends out_b. It reloads and redoes its eviction on top.
    drop(out_b);
    fleet.deliver(&mut a, out_a);
    let (mut b, eb) = load_manager(store_b.as_mut(), fleet.manager_credential()).unwrap();
    assert_eq!(
        b.material(&group).unwrap(),
        a.material(&group).unwrap(),
        "one key per epoch"
    );
    let out_b = b
        .evict(&group, &id("meter-002"), now(), &mut fleet.rng)
        .unwrap();
    save_group(store_b.as_mut(), &b, &group, Some(eb[&group]), now()).unwrap();
    fleet.deliver(&mut b, out_b);
    fleet.assert_converged(&b, &group);
    let stored = store_a
        .material(&group, b.material(&group).unwrap().epoch())
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.as_slice(),
        b.material(&group).unwrap().to_cbor().unwrap().as_slice()
    );
}

fn kek() -> Kek {
    Kek::from_hex(&"5a".repeat(32)).unwrap()
}

#[test]
fn sqlite_manager_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    survives_restart(&mut || Box::new(SqliteStore::open(&path, kek()).unwrap()));
}

#[test]
fn sqlite_racing_managers_never_share_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    racing_managers(&mut || Box::new(SqliteStore::open(&path, kek()).unwrap()));
}

struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(test: &str) -> Option<Self> {
        let url = sealcast_testkit::require(
            "SEALCAST_PG_URL",
            test,
            "a PostgreSQL server (CI uses postgres://postgres@127.0.0.1:5432/test)",
        )?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Some(Self {
            url,
            name: format!("sealcast_mgr_{}_{nanos}", std::process::id()),
        })
    }
    fn open(&self) -> Box<dyn ManagerStore> {
        Box::new(PgStore::connect_in_schema(&self.url, &self.name, kek()).unwrap())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        }
    }
}

#[test]
fn postgres_manager_survives_restart() {
    let Some(schema) = Schema::new("postgres_manager_survives_restart") else {
        return;
    };
    survives_restart(&mut || schema.open());
}

#[test]
fn postgres_racing_managers_never_share_an_epoch() {
    let Some(schema) = Schema::new("postgres_racing_managers_never_share_an_epoch") else {
        return;
    };
    racing_managers(&mut || schema.open());
}

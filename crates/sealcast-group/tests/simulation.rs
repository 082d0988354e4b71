#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Deterministic simulation of one manager, two agents and 220 devices on a
//! virtual clock with seeded randomness and no sockets. The network loses,
//! duplicates and reorders messages. The group goes through joins,
//! evictions and rekeys of both schemes; after every step the invariants of
//! the design are checked:
//!
//! 1. every current member converges to the current epoch (same material as
//!    the manager);
//! 2. an evicted member cannot open anything sealed after its eviction;
//! 3. a newcomer cannot open anything sealed before it joined;
//! 4. no two epochs share key material;
//! 5. no delivery is readable by an agent, and an agent holds a group's key
//!    only if the manager made it a member of that group.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rand_core::Rng;
use sealcast_core::broadcast::{BroadcastReceiver, ReplayPolicy, seal_broadcast};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::GroupContext;
use sealcast_core::ids::{EntityId, Epoch, GroupId, SeqNum, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_group::manager::{
    Destination, EntityKind, Manager, MessageKind, Outgoing, RekeyScheme, Role,
};
use sealcast_group::member::{Member, MemberEvent};

const DEVICES: usize = 220;
const LOSS_PERCENT: u32 = 15;
const DUP_PERCENT: u32 = 10;
const MAX_DELAY_MS: u64 = 80;
const RETRY_MS: u64 = 300;
const MAX_TICKS: usize = 400;
const TICK_MS: u64 = 50;

/// A sealed broadcast: (target, bytes).
type Sealed = (String, Vec<u8>);

#[derive(Clone, Debug)]
enum Payload {
    /// Manager → member (or group).
    FromManager(MessageKind, Vec<u8>),
    /// Member → manager.
    Ack(Vec<u8>),
    Pull(Vec<u8>),
}

#[derive(Clone, Debug)]
struct InFlight {
    at: u64,
    order: u64,
    /// Recipient entity; `None` = the manager.
    to: Option<EntityId>,
    /// An agent that relays it first (it must not be able to read it).
    via: Option<EntityId>,
    payload: Payload,
}

struct Sim {
    rng: TestRng,
    now: u64,
    order: u64,
    manager: Manager,
    agents: Vec<EntityId>,
    members: BTreeMap<EntityId, Member>,
    /// Who listens on each group's topic (current and former members: former
    /// ones must fail to read).
    listeners: BTreeMap<GroupId, BTreeSet<EntityId>>,
    net: Vec<InFlight>,
    /// Every material the manager ever held: (group, epoch) → secret.
    secrets: BTreeMap<(GroupId, u32), Vec<u8>>,
    /// Sealed broadcasts per (group, epoch), for the newcomer / evictee checks.
    sealed: BTreeMap<(GroupId, u32), Vec<Sealed>>,
    evicted: BTreeMap<GroupId, Vec<(EntityId, Epoch)>>,
    joined_at: BTreeMap<(GroupId, EntityId), Epoch>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    sent: u64,
    lost: u64,
    duplicated: u64,
    delivered: u64,
    pulls: u64,
    agent_refusals: u64,
    outsider_refusals: u64,
    late_acks: u64,
}

fn id(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let manager_cred = EntityCredential::generate(id("manager"), &mut rng);
        let manager_pub = manager_cred.public();
        let mut manager = Manager::new(manager_cred);
        manager.set_retry_interval(RETRY_MS);
        // A fast network: back off at most to a few retry intervals.
        manager.set_resend_limits(4 * RETRY_MS, usize::MAX);
        let mut members = BTreeMap::new();
        let agents = vec![id("agent-1"), id("agent-2")];
        for a in &agents {
            let cred = EntityCredential::generate(a.clone(), &mut rng);
            manager
                .enrol(cred.public(), EntityKind::Agent, None)
                .unwrap();
            members.insert(a.clone(), Member::new(cred, manager_pub.clone()));
        }
        for i in 0..DEVICES {
            let d = id(&format!("dev-{i:03}"));
            let cred = EntityCredential::generate(d.clone(), &mut rng);
            let agent = agents[i % 2].clone();
            manager
                .enrol(cred.public(), EntityKind::Device, Some(agent))
                .unwrap();
            members.insert(d, Member::new(cred, manager_pub.clone()));
        }
        Self {
            rng,
            now: 1_700_000_000_000,
            order: 0,
            manager,
            agents,
            members,
            listeners: BTreeMap::new(),
            net: Vec::new(),
            secrets: BTreeMap::new(),
            sealed: BTreeMap::new(),
            evicted: BTreeMap::new(),
            joined_at: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    fn percent(&mut self) -> u32 {
        self.rng.next_u32() % 100
    }

    /// Puts a message on the lossy, duplicating, reordering network.
    fn send(&mut self, to: Option<EntityId>, via: Option<EntityId>, payload: Payload) {
        self.stats.sent += 1;
        if self.percent() < LOSS_PERCENT {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.percent() < DUP_PERCENT {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = u64::from(self.rng.next_u32()) % MAX_DELAY_MS;
            self.order += 1;
            self.net.push(InFlight {
                at: self.now + delay,
                order: self.rng.next_u64(),
                to: to.clone(),
                via: via.clone(),
                payload: payload.clone(),
            });
        }
    }

    fn dispatch(&mut self, out: Vec<Outgoing>) {
        for o in out {
            match o.to {
                Destination::Member { member, via } => {
                    self.send(Some(member), via, Payload::FromManager(o.kind, o.bytes));
                }
                Destination::Group(group) => {
                    let listeners: Vec<EntityId> = self
                        .listeners
                        .get(&group)
                        .map(|l| l.iter().cloned().collect())
                        .unwrap_or_default();
                    for l in listeners {
                        self.send(Some(l), None, Payload::FromManager(o.kind, o.bytes.clone()));
                    }
                }
            }
        }
    }

    fn record_material(&mut self, group: &GroupId) {
        let m = self.manager.material(group).unwrap();
        let key = (group.clone(), m.epoch().get());
        let secret = m.master_secret().to_vec();
        if let Some(prev) = self.secrets.get(&key) {
            assert_eq!(prev, &secret, "epoch {key:?} changed its key");
        }
        self.secrets.insert(key, secret);
    }

    /// Delivers everything due at `now`, in a shuffled order.
    fn step_network(&mut self) {
        let now = self.now;
        let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) =
            self.net.drain(..).partition(|m| m.at <= now);
        self.net = rest;
        due.sort_by_key(|m| m.order);
        for msg in due {
            self.stats.delivered += 1;
            if let Some(agent) = msg.via.clone() {
                // The agent relays what it cannot read: prove it.
                if let Payload::FromManager(kind, bytes) = &msg.payload {
                    let a = self.members.get_mut(&agent).unwrap();
                    assert!(
                        a.handle_delivery(*kind, bytes).is_err(),
                        "agent {agent} could open a delivery for {:?}",
                        msg.to
                    );
                    self.stats.agent_refusals += 1;
                }
                // Second hop: agent → device, lossy again.
                self.send(msg.to.clone(), None, msg.payload.clone());
                continue;
            }
            match (msg.to, msg.payload) {
                (None, Payload::Ack(bytes)) => match self.manager.handle_ack(&bytes) {
                    Ok(_) => {}
                    // A late ack (reordered) of a member evicted meanwhile.
                    Err(sealcast_group::Error::UnknownMember) => self.stats.late_acks += 1,
                    Err(e) => panic!("ack refused: {e}"),
                },
                (None, Payload::Pull(bytes)) => {
                    let out = self
                        .manager
                        .handle_pull(&bytes, UnixMillis::new(now), &mut self.rng);
                    match out {
                        Ok(o) => self.dispatch(vec![o]),
                        // A pull from someone evicted meanwhile: refused.
                        Err(sealcast_group::Error::UnknownMember) => {}
                        Err(e) => panic!("pull failed: {e}"),
                    }
                }
                (Some(to), Payload::FromManager(kind, bytes)) => {
                    self.member_handles(&to, kind, &bytes)
                }
                (to, p) => panic!("misrouted {p:?} to {to:?}"),
            }
        }
    }

    fn member_handles(&mut self, to: &EntityId, kind: MessageKind, bytes: &[u8]) {
        let member = self.members.get_mut(to).unwrap();
        let result = match kind {
            MessageKind::KeyDelivery | MessageKind::TreeDelivery => {
                member.handle_delivery(kind, bytes)
            }
            MessageKind::JoinNotice => member.handle_join_notice(bytes),
            MessageKind::TreeRekey => member.handle_tree_rekey(bytes),
        };
        match result {
            Ok(MemberEvent::Installed { ack, .. } | MemberEvent::AlreadyCurrent { ack, .. }) => {
                self.send(None, None, Payload::Ack(ack));
            }
            Err(sealcast_group::Error::OutOfSync(_)) => {
                // Missed an epoch: ask for the current material.
                if let Some(group) = group_of(kind, bytes) {
                    let nonce = self.rng.next_u64();
                    let pull = self.members[to].pull_request(&group, nonce).unwrap();
                    self.stats.pulls += 1;
                    self.send(None, None, Payload::Pull(pull));
                }
            }
            Err(sealcast_group::Error::StaleEpoch { .. }) => {}
            // Former members and outsiders cannot follow the group.
            Err(sealcast_group::Error::NotAMember | sealcast_group::Error::UnknownGroup) => {
                self.stats.outsider_refusals += 1;
            }
            Err(e) => panic!("{to} failed on {kind:?}: {e}"),
        }
    }

    /// Runs the network and re-sends until every member holds the current
    /// epoch of every group (bounded).
    fn converge(&mut self, groups: &[GroupId]) -> usize {
        for tick in 0..MAX_TICKS {
            let out = self
                .manager
                .poll_resend(UnixMillis::new(self.now), &mut self.rng)
                .unwrap();
            self.dispatch(out);
            self.step_network();
            if groups.iter().all(|g| self.converged(g)) && self.net.is_empty() {
                return tick;
            }
            self.now += TICK_MS;
        }
        panic!("did not converge in {MAX_TICKS} ticks: {:?}", self.stats);
    }

    fn converged(&self, group: &GroupId) -> bool {
        let epoch = self.manager.material(group).unwrap().epoch();
        self.manager
            .members(group)
            .unwrap()
            .iter()
            .all(|(m, rec)| rec.held == Some(epoch) && self.members[m].epoch(group) == Some(epoch))
    }

    fn join(&mut self, group: &GroupId, who: &[(EntityId, Role)]) {
        let out = self
            .manager
            .add_members(group, who, UnixMillis::new(self.now), &mut self.rng)
            .unwrap();
        let epoch = self.manager.material(group).unwrap().epoch();
        for (w, _) in who {
            self.listeners
                .entry(group.clone())
                .or_default()
                .insert(w.clone());
            self.joined_at.insert((group.clone(), w.clone()), epoch);
        }
        self.record_material(group);
        self.dispatch(out);
    }

    fn evict(&mut self, group: &GroupId, who: &EntityId) {
        let out = self
            .manager
            .evict(group, who, UnixMillis::new(self.now), &mut self.rng)
            .unwrap();
        let epoch = self.manager.material(group).unwrap().epoch();
        self.evicted
            .entry(group.clone())
            .or_default()
            .push((who.clone(), epoch));
        self.record_material(group);
        self.dispatch(out);
    }

    /// A sender of the group seals a broadcast at the current epoch.
    fn seal_sample(&mut self, group: &GroupId) {
        let material = self.manager.material(group).unwrap().clone();
        let Some(signer) = material.signers().first() else {
            return;
        };
        let cred = self.members[&signer.entity].credential();
        let ctx = GroupContext::new(&material).unwrap();
        let target = format!("sealcast/g/{}/cmd", group);
        let seq = SeqNum::new(u64::from(material.epoch().get())).unwrap();
        let bytes = seal_broadcast(
            &ctx,
            cred.id(),
            cred.signing_key(),
            seq,
            UnixMillis::new(self.now),
            &target,
            b"unlock",
        )
        .unwrap();
        self.sealed
            .entry((group.clone(), material.epoch().get()))
            .or_default()
            .push((target, bytes));
    }

    fn check_invariants(&mut self, group: &GroupId) {
        let material = self.manager.material(group).unwrap().clone();
        let epoch = material.epoch();
        // 1. Convergence: every member holds exactly the manager's material.
        for m in self.manager.members(group).unwrap().keys() {
            let held = self.members[m]
                .material(group)
                .unwrap_or_else(|| panic!("{m} holds nothing"));
            assert_eq!(held.epoch(), epoch, "{m} not at the current epoch");
            assert_eq!(
                held.master_secret(),
                material.master_secret(),
                "{m} holds different material"
            );
        }
        self.seal_sample(group);
        let now = UnixMillis::new(self.now);
        // 2. Evicted members cannot open anything sealed after their eviction.
        for (who, evicted_at) in self.evicted.get(group).cloned().unwrap_or_default() {
            if self.manager.members(group).unwrap().contains_key(&who) {
                continue; // re-joined later
            }
            for ((g, e), msgs) in &self.sealed {
                if g != group || *e < evicted_at.get() {
                    continue;
                }
                for (target, bytes) in msgs {
                    let opened = self.members[&who]
                        .context(group)
                        .and_then(|c| c.ok())
                        .map(|ctx| BroadcastReceiver::new(ctx, ReplayPolicy::default()).unwrap())
                        .map(|mut r| r.open(bytes, target, now));
                    assert!(
                        !matches!(opened, Some(Ok(_))),
                        "evicted {who} opened a broadcast of epoch {e} (evicted at {evicted_at})"
                    );
                    // Nor with the material of the epoch it was evicted from.
                    assert!(
                        self.members[&who]
                            .epoch(group)
                            .is_none_or(|h| h < evicted_at),
                        "evicted {who} holds epoch {:?} ≥ its eviction epoch {evicted_at}",
                        self.members[&who].epoch(group)
                    );
                }
            }
        }
        // 3. Newcomers cannot open anything sealed before they joined.
        for ((g, who), joined) in &self.joined_at {
            if g != group || !self.manager.members(group).unwrap().contains_key(who) {
                continue;
            }
            let Some(Ok(ctx)) = self.members[who].context(group) else {
                continue;
            };
            for ((g2, e), msgs) in &self.sealed {
                if g2 != group || *e >= joined.get() {
                    continue;
                }
                let mut r = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
                for (target, bytes) in msgs {
                    assert!(
                        r.open(bytes, target, now).is_err(),
                        "newcomer {who} opened epoch {e} (joined {joined})"
                    );
                }
                // And none of its keys equals an earlier epoch's secret.
                let old = &self.secrets[&(group.clone(), *e)];
                assert_ne!(
                    self.members[who].material(group).unwrap().master_secret(),
                    old.as_slice()
                );
            }
        }
        // 4. No two epochs share key material.
        let all: Vec<&Vec<u8>> = self.secrets.values().collect();
        let distinct: HashSet<&Vec<u8>> = all.iter().copied().collect();
        assert_eq!(all.len(), distinct.len(), "two epochs share key material");
        // Current members open the current broadcast.
        if let Some(msgs) = self.sealed.get(&(group.clone(), epoch.get())) {
            for m in self.manager.members(group).unwrap().keys() {
                let ctx = self.members[m].context(group).unwrap().unwrap();
                let mut r = BroadcastReceiver::new(ctx, ReplayPolicy::default()).unwrap();
                for (target, bytes) in msgs {
                    r.open(bytes, target, now)
                        .unwrap_or_else(|e| panic!("member {m} cannot open: {e}"));
                }
            }
        }
        // 5. Agents hold keys only for groups they are members of.
        for a in &self.agents {
            let is_member = self.manager.members(group).unwrap().contains_key(a);
            assert_eq!(
                self.members[a].material(group).is_some(),
                is_member || self.was_member(group, a),
                "agent {a}"
            );
        }
    }

    fn was_member(&self, group: &GroupId, who: &EntityId) -> bool {
        self.joined_at.contains_key(&(group.clone(), who.clone()))
    }
}

/// Which group a message is about, read without keys (to pull for it).
fn group_of(kind: MessageKind, bytes: &[u8]) -> Option<GroupId> {
    match kind {
        MessageKind::KeyDelivery | MessageKind::TreeDelivery => {
            sealcast_core::delivery::peek_key_delivery(bytes)
                .ok()
                .map(|h| h.group)
        }
        // The group id is the first element of every notice payload; the
        // member re-verifies everything when the pull answer comes.
        MessageKind::JoinNotice | MessageKind::TreeRekey => peek_notice_group(bytes),
    }
}

fn peek_notice_group(bytes: &[u8]) -> Option<GroupId> {
    let sign1 = sealcast_core::cose::parse_sign1(bytes, 1 << 20).ok()?;
    let payload: ciborium::Value = ciborium::from_reader(sign1.payload?.as_slice()).ok()?;
    let first = payload.as_array()?.first()?.as_bytes()?.clone();
    GroupId::new(first).ok()
}

fn dev(i: usize) -> EntityId {
    id(&format!("dev-{i:03}"))
}

#[test]
fn manager_two_agents_220_devices_under_loss_reorder_duplication() {
    let mut sim = Sim::new(0x5eed_ca57);
    let big = GroupId::new(b"fire-doors").unwrap();
    let small = GroupId::new(b"extinguishers").unwrap();
    let now = UnixMillis::new(sim.now);
    sim.manager
        .create_group(
            big.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::Tree,
            None,
            now,
            &mut sim.rng,
        )
        .unwrap();
    sim.manager
        .create_group(
            small.clone(),
            AeadAlg::A256Gcm,
            RekeyScheme::PointToPoint,
            None,
            now,
            &mut sim.rng,
        )
        .unwrap();

    // Joins: the gateway agent-1 (a sender: it issues commands), then devices in batches.
    sim.join(&big, &[(id("agent-1"), Role::Sender)]);
    sim.converge(std::slice::from_ref(&big));
    for batch in (0..200).collect::<Vec<_>>().chunks(50) {
        let who: Vec<(EntityId, Role)> = batch.iter().map(|i| (dev(*i), Role::Receiver)).collect();
        sim.join(&big, &who);
        let ticks = sim.converge(std::slice::from_ref(&big));
        sim.check_invariants(&big);
        eprintln!(
            "tree group: {} members, epoch {}, converged in {ticks} ticks",
            sim.manager.members(&big).unwrap().len(),
            sim.manager.material(&big).unwrap().epoch()
        );
    }
    let small_members: Vec<(EntityId, Role)> = (200..212)
        .map(|i| {
            (
                dev(i),
                if i == 200 {
                    Role::Sender
                } else {
                    Role::Receiver
                },
            )
        })
        .collect();
    sim.join(&small, &small_members);
    sim.converge(std::slice::from_ref(&small));
    sim.check_invariants(&small);

    // Evictions from the tree group: one broadcast each.
    for victim in [3usize, 77, 150, 199] {
        sim.evict(&big, &dev(victim));
        let ticks = sim.converge(std::slice::from_ref(&big));
        sim.check_invariants(&big);
        eprintln!(
            "evicted dev-{victim:03}: epoch {}, {ticks} ticks",
            sim.manager.material(&big).unwrap().epoch()
        );
    }
    // Evictions from the point-to-point group.
    for victim in [205usize, 211] {
        sim.evict(&small, &dev(victim));
        sim.converge(std::slice::from_ref(&small));
        sim.check_invariants(&small);
    }
    // Newcomers after evictions, in both groups, while traffic for both is in flight.
    sim.join(
        &big,
        &[(dev(212), Role::Receiver), (dev(213), Role::Sender)],
    );
    sim.join(&small, &[(dev(214), Role::Receiver)]);
    sim.converge(&[big.clone(), small.clone()]);
    sim.check_invariants(&big);
    sim.check_invariants(&small);
    // Interleaved: evict and join back to back before anything settles.
    sim.evict(&big, &dev(10));
    sim.join(&big, &[(dev(215), Role::Receiver)]);
    sim.evict(&big, &dev(213));
    sim.converge(std::slice::from_ref(&big));
    sim.check_invariants(&big);

    // Agent-2 was never made a member: it holds no group key.
    assert!(sim.members[&id("agent-2")].material(&big).is_none());
    assert!(sim.members[&id("agent-2")].material(&small).is_none());
    assert!(sim.members[&id("agent-1")].material(&big).is_some());
    eprintln!("network: {:?}", sim.stats);
    assert!(
        sim.stats.lost > 0 && sim.stats.duplicated > 0,
        "the network must actually misbehave"
    );
    assert!(
        sim.stats.agent_refusals > 100,
        "agents relayed deliveries they could not read"
    );
}

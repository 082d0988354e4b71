//! The group manager (IN): enrolment, groups, members, epochs, key
//! deliveries, acks, pulls and rekeys — as a sans-IO state machine.
//!
//! Every operation takes the time and a random source and returns the
//! messages to send as [`Outgoing`] values; the caller (the manager runtime)
//! persists state and hands the bytes to a transport. Nothing here blocks.
//!
//! **Epochs.** A join moves the group one epoch forward by a signed
//! [`JoinNotice`]: current members ratchet their key locally
//! (`GroupKeyMaterial::ratchet`), and the newcomers receive only the new
//! epoch's material. An eviction gives the group a fresh key nobody evicted
//! can compute: for a point-to-point group one key delivery per remaining
//! member; for a tree group one signed [`TreeRekeyNotice`] broadcast of about
//! 2·log2(n) wrapped keys.

use std::collections::BTreeMap;

use rand_core::CryptoRng;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::crypto::AeadAlg;
use sealcast_core::delivery::{DeliveryKind, seal_delivery};
use sealcast_core::groupkey::{AuthorizedSigner, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, UnixMillis};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};

use crate::error::{Error, Result};
use crate::lkh::{KeyTree, LeafIndex};
use crate::messages::{
    Ack, JoinNotice, LABEL_ACK, LABEL_JOIN, LABEL_PULL, LABEL_TREE_REKEY, MAX_STATEMENT_LEN,
    PullRequest, TreeRekeyNotice,
};
use crate::tree_delivery;

mod snapshot;

pub use snapshot::GroupSnapshot;

/// What kind of entity an enrolled credential belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityKind {
    /// A field device (ASN).
    Device,
    /// A gateway / MN agent / DAP.
    Agent,
    /// A utility headend.
    Headend,
}

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Holds the group key and may sign commands or alerts for the group.
    Sender,
    /// Holds the group key and only receives.
    Receiver,
}

/// How a group is rekeyed when a member leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RekeyScheme {
    /// One key delivery per remaining member: O(n) messages, simplest.
    PointToPoint,
    /// A logical key hierarchy: one broadcast of ≤ 2⌈log2 n⌉ wrapped keys.
    Tree,
}

impl RekeyScheme {
    /// Groups expected to grow past this many members use the tree.
    pub const TREE_THRESHOLD: usize = 32;

    /// The scheme the manager picks for a group of about `expected_members`.
    pub fn for_expected_size(expected_members: usize) -> Self {
        if expected_members > Self::TREE_THRESHOLD {
            RekeyScheme::Tree
        } else {
            RekeyScheme::PointToPoint
        }
    }

    /// Its one name, as configs, the CLI and the store spell it: `p2p`
    /// or `tree`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RekeyScheme::PointToPoint => "p2p",
            RekeyScheme::Tree => "tree",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "p2p" => RekeyScheme::PointToPoint,
            "tree" => RekeyScheme::Tree,
            _ => return None,
        })
    }
}

/// Where an outgoing message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One member, end to end (through `via`, its agent, if any).
    Member {
        /// The recipient.
        member: EntityId,
        /// The agent that relays to it, if it has one.
        via: Option<EntityId>,
    },
    /// Every member of a group (broadcast or per-group topic).
    Group(GroupId),
}

/// What an outgoing message is, so transports can pick a topic or URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Group key material for one member (`DeliveryKind::GroupKey`).
    KeyDelivery,
    /// Group key material plus tree path keys for one member
    /// (`DeliveryKind::TreePath`).
    TreeDelivery,
    /// A signed join notice for the whole group.
    JoinNotice,
    /// A signed tree rekey for the whole group.
    TreeRekey,
}

/// One message the manager wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Where to.
    pub to: Destination,
    /// What it is.
    pub kind: MessageKind,
    /// The COSE bytes.
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Enrolled {
    credential: PublicCredential,
    kind: EntityKind,
    agent: Option<EntityId>,
}

/// The manager's view of one member of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// Its role.
    pub role: Role,
    /// Its sender id (senders only).
    pub sender_id: Option<SenderId>,
    /// Its leaf in the key tree (tree groups only).
    pub leaf: Option<LeafIndex>,
    /// The newest epoch it acknowledged.
    pub held: Option<Epoch>,
    /// When key material was last sent to it.
    pub last_sent: Option<UnixMillis>,
    /// Deliveries sent since it last acknowledged: the re-send backoff
    /// doubles with each (in memory only; a restart starts over).
    pub unacked_sends: u32,
}

#[derive(Clone)]
struct GroupState {
    scheme: RekeyScheme,
    material: GroupKeyMaterial,
    members: BTreeMap<EntityId, MemberRecord>,
    tree: Option<KeyTree>,
    next_sender_id: u64,
    validity_ms: Option<u64>,
}

/// One group's state as it was, for [`Manager::roll_back`]. Holds key
/// material: no `Debug` of its content.
pub struct GroupCheckpoint {
    group: GroupId,
    state: Option<GroupState>,
}

impl core::fmt::Debug for GroupCheckpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupCheckpoint")
            .field("group", &self.group)
            .field("existed", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

/// A summary of a group for administration and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group.
    pub group: GroupId,
    /// Its current epoch.
    pub epoch: Epoch,
    /// Its rekey scheme.
    pub scheme: RekeyScheme,
    /// Number of members.
    pub members: usize,
    /// Members that acknowledged the current epoch.
    pub current: usize,
}

/// The group manager.
pub struct Manager {
    credential: EntityCredential,
    enrolled: BTreeMap<EntityId, Enrolled>,
    groups: BTreeMap<GroupId, GroupState>,
    retry_ms: u64,
    max_retry_ms: u64,
    max_resends_per_poll: usize,
}

impl core::fmt::Debug for Manager {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Manager")
            .field("id", self.credential.id())
            .field("enrolled", &self.enrolled.len())
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Default interval before key material is re-sent to a member that has
    /// not acknowledged it.
    pub const DEFAULT_RETRY_MS: u64 = 5_000;
    /// Default ceiling of the per-member re-send backoff (10 minutes).
    pub const DEFAULT_MAX_RETRY_MS: u64 = 600_000;
    /// Default largest number of re-sends per [`Manager::poll_resend`].
    pub const DEFAULT_MAX_RESENDS_PER_POLL: usize = 1_000;

    /// A manager signing with `credential`.
    pub fn new(credential: EntityCredential) -> Self {
        Self {
            credential,
            enrolled: BTreeMap::new(),
            groups: BTreeMap::new(),
            retry_ms: Self::DEFAULT_RETRY_MS,
            max_retry_ms: Self::DEFAULT_MAX_RETRY_MS,
            max_resends_per_poll: Self::DEFAULT_MAX_RESENDS_PER_POLL,
        }
    }

    /// Sets the re-send interval.
    pub fn set_retry_interval(&mut self, ms: u64) {
        self.retry_ms = ms;
        self.max_retry_ms = self.max_retry_ms.max(ms);
    }

    /// The manager's id.
    pub fn id(&self) -> &EntityId {
        self.credential.id()
    }

    /// The manager's public credential (what devices are provisioned with).
    pub fn public(&self) -> PublicCredential {
        self.credential.public()
    }

    /// Enrols an entity by its credential. `agent` is the agent that relays
    /// to it (devices behind a gateway), if any.
    pub fn enrol(
        &mut self,
        credential: PublicCredential,
        kind: EntityKind,
        agent: Option<EntityId>,
    ) -> Result<()> {
        if let Some(a) = &agent
            && !self.enrolled.contains_key(a)
        {
            return Err(Error::UnknownMember);
        }
        self.enrolled.insert(
            credential.id().clone(),
            Enrolled {
                credential,
                kind,
                agent,
            },
        );
        Ok(())
    }

    /// Forgets an enrolled entity. Refused while it is a member of a group
    /// (evict it first) or the agent of another enrolled entity.
    pub fn unenrol(&mut self, id: &EntityId) -> Result<()> {
        if !self.enrolled.contains_key(id) {
            return Err(Error::UnknownMember);
        }
        if self.groups.values().any(|g| g.members.contains_key(id)) {
            return Err(Error::Refused("still a member of a group: evict it first"));
        }
        if self.enrolled.values().any(|e| e.agent.as_ref() == Some(id)) {
            return Err(Error::Refused("it relays for enrolled devices"));
        }
        self.enrolled.remove(id);
        Ok(())
    }

    /// The kind of an enrolled entity.
    pub fn kind_of(&self, id: &EntityId) -> Option<EntityKind> {
        self.enrolled.get(id).map(|e| e.kind)
    }

    /// The agent that relays to an enrolled entity, if it has one.
    pub fn agent_of(&self, id: &EntityId) -> Option<&EntityId> {
        self.enrolled.get(id).and_then(|e| e.agent.as_ref())
    }

    /// The credential of an enrolled entity.
    pub fn credential_of(&self, id: &EntityId) -> Option<&PublicCredential> {
        self.enrolled.get(id).map(|e| &e.credential)
    }

    /// Creates a group at epoch 0 with no members.
    pub fn create_group<R: CryptoRng + ?Sized>(
        &mut self,
        group: GroupId,
        alg: AeadAlg,
        scheme: RekeyScheme,
        validity_ms: Option<u64>,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<()> {
        if self.groups.contains_key(&group) {
            return Err(Error::AlreadyMember);
        }
        let not_after = validity_ms.map(|v| UnixMillis::new(now.get().saturating_add(v)));
        let material = GroupKeyMaterial::generate(
            group.clone(),
            Epoch::new(0),
            alg,
            Vec::new(),
            not_after,
            rng,
        )?;
        let tree = match scheme {
            RekeyScheme::Tree => Some(KeyTree::new()),
            RekeyScheme::PointToPoint => None,
        };
        self.groups.insert(
            group,
            GroupState {
                scheme,
                material,
                members: BTreeMap::new(),
                tree,
                next_sender_id: 1,
                validity_ms,
            },
        );
        Ok(())
    }

    /// A summary of one group.
    pub fn summary(&self, group: &GroupId) -> Option<GroupSummary> {
        self.groups.get(group).map(|g| GroupSummary {
            group: group.clone(),
            epoch: g.material.epoch(),
            scheme: g.scheme,
            members: g.members.len(),
            current: g
                .members
                .values()
                .filter(|m| m.held == Some(g.material.epoch()))
                .count(),
        })
    }

    /// The current key material of a group (for tests and the store).
    pub fn material(&self, group: &GroupId) -> Option<&GroupKeyMaterial> {
        self.groups.get(group).map(|g| &g.material)
    }

    /// The members of a group.
    pub fn members(&self, group: &GroupId) -> Option<&BTreeMap<EntityId, MemberRecord>> {
        self.groups.get(group).map(|g| &g.members)
    }

    /// Adds enrolled entities to a group. The group moves one epoch forward
    /// (one join notice for the current members, however many join) and each
    /// newcomer receives the new epoch's material end to end.
    pub fn add_members<R: CryptoRng + ?Sized>(
        &mut self,
        group: &GroupId,
        newcomers: &[(EntityId, Role)],
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>> {
        let manager_id = self.credential.id().clone();
        let state = self.groups.get_mut(group).ok_or(Error::UnknownGroup)?;
        for (i, (id, _)) in newcomers.iter().enumerate() {
            if state.members.contains_key(id) || newcomers[..i].iter().any(|(o, _)| o == id) {
                return Err(Error::AlreadyMember);
            }
            if !self.enrolled.contains_key(id) {
                return Err(Error::UnknownMember);
            }
        }
        let had_members = !state.members.is_empty();
        let mut signers = state.material.signers().to_vec();
        let next_epoch = state
            .material
            .epoch()
            .next()
            .ok_or(Error::Core(sealcast_core::Error::SequenceExhausted))?;
        // Seat all newcomers in the key tree in one event (one epoch).
        let mut leaves = match state.tree.as_mut() {
            Some(tree) if !newcomers.is_empty() => tree
                .add_members(newcomers.len(), next_epoch, rng)?
                .leaves()
                .to_vec(),
            _ => Vec::new(),
        }
        .into_iter();
        let mut notice_leaves = Vec::new();
        let mut records = Vec::new();
        for (id, role) in newcomers {
            let sender_id = match role {
                Role::Sender => {
                    let sid = next_sender_id(state)?;
                    let enrolled = self.enrolled.get(id).ok_or(Error::UnknownMember)?;
                    signers.push(AuthorizedSigner {
                        sender_id: sid.clone(),
                        entity: id.clone(),
                        verifying_key: *enrolled.credential.verifying_key(),
                    });
                    Some(sid)
                }
                Role::Receiver => None,
            };
            let leaf = leaves.next();
            if let Some(l) = leaf {
                notice_leaves.push(l.get());
            }
            records.push((
                id.clone(),
                MemberRecord {
                    role: *role,
                    sender_id,
                    leaf,
                    held: None,
                    last_sent: None,
                    unacked_sends: 0,
                },
            ));
        }
        let not_after = state
            .validity_ms
            .map(|v| UnixMillis::new(now.get().saturating_add(v)));
        let next = state.material.ratchet(signers.clone(), not_after)?;
        let mut out = Vec::new();
        if had_members {
            let notice = JoinNotice {
                group: group.clone(),
                epoch: next.epoch(),
                signers,
                not_after,
                leaves: notice_leaves,
            };
            out.push(Outgoing {
                to: Destination::Group(group.clone()),
                kind: MessageKind::JoinNotice,
                bytes: sign_statement(
                    &manager_id,
                    self.credential.signing_key(),
                    LABEL_JOIN,
                    &notice.to_cbor()?,
                ),
            });
        }
        state.material = next;
        for (id, rec) in records {
            state.members.insert(id, rec);
        }
        for (id, _) in newcomers {
            out.push(delivery_for(
                &self.credential,
                &self.enrolled,
                state,
                id,
                now,
                rng,
            )?);
        }
        Ok(out)
    }

    /// Removes a member. The group gets a fresh key the evicted member
    /// cannot compute: by point-to-point deliveries, or by one tree rekey
    /// broadcast. Evicting the last member of a tree group moves it to a
    /// fresh random key with no message to send.
    pub fn evict<R: CryptoRng + ?Sized>(
        &mut self,
        group: &GroupId,
        member: &EntityId,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>> {
        self.fresh_epoch(group, Some(member), now, rng)
    }

    /// Moves a group to a fresh key without a membership change (key
    /// freshness, or a suspected leak of the traffic key): nobody who holds
    /// only earlier epochs' material can compute it.
    ///
    /// - `RekeyScheme::Tree`: the root of the key tree is replaced by a fresh
    ///   random key wrapped under the root's children (`KeyTree::refresh_root`):
    ///   one signed [`TreeRekeyNotice`] of at most two wrapped keys, one unwrap
    ///   per member, applied by members exactly like an eviction's rekey. (A
    ///   new salt over the *unchanged* root would not do: after an eviction
    ///   the root *is* the master secret, so every holder of that epoch's
    ///   material could compute the "new" key.)
    /// - `RekeyScheme::PointToPoint`: a fresh random secret, one key delivery
    ///   per member.
    ///
    /// A group without members just moves to a fresh random key.
    pub fn rekey<R: CryptoRng + ?Sized>(
        &mut self,
        group: &GroupId,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>> {
        self.fresh_epoch(group, None, now, rng)
    }

    /// The shared step of [`Manager::evict`] and [`Manager::rekey`]: the next
    /// epoch with a fresh key for the members that remain (all of them when
    /// `evicted` is `None`). Nothing changes when it fails before the key
    /// tree was touched; the tree step comes last among the fallible ones
    /// that can fail on valid state.
    fn fresh_epoch<R: CryptoRng + ?Sized>(
        &mut self,
        group: &GroupId,
        evicted: Option<&EntityId>,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>> {
        let manager_id = self.credential.id().clone();
        let state = self.groups.get_mut(group).ok_or(Error::UnknownGroup)?;
        let evicted_leaf = match evicted {
            Some(m) => Some(state.members.get(m).ok_or(Error::UnknownMember)?.leaf),
            None => None,
        };
        let signers: Vec<AuthorizedSigner> = state
            .material
            .signers()
            .iter()
            .filter(|s| Some(&s.entity) != evicted)
            .cloned()
            .collect();
        let epoch = state
            .material
            .epoch()
            .next()
            .ok_or(Error::Core(sealcast_core::Error::SequenceExhausted))?;
        let not_after = state
            .validity_ms
            .map(|v| UnixMillis::new(now.get().saturating_add(v)));
        let mut salt = [0u8; 8];
        rng.fill_bytes(&mut salt);
        // Tree groups: change the tree (remove the evicted leaf, or replace
        // the root) and broadcast how; the new root is the new secret. A tree
        // left empty, or a member without a leaf, takes the point-to-point path.
        let tree_step = match (state.scheme, state.tree.as_mut(), evicted_leaf) {
            (RekeyScheme::Tree, Some(tree), Some(Some(leaf))) => {
                let rekey = tree.remove_member(leaf, epoch, rng)?;
                tree.root_key().map(|root| (rekey, root))
            }
            (RekeyScheme::Tree, Some(tree), None) if !tree.is_empty() => {
                let rekey = tree.refresh_root(epoch, rng)?;
                tree.root_key().map(|root| (rekey, root))
            }
            _ => None,
        };
        if let Some((rekey, root)) = tree_step {
            let material = state.material.rekeyed(
                epoch,
                root.as_bytes(),
                &salt,
                signers.clone(),
                not_after,
            )?;
            let notice = TreeRekeyNotice {
                group: group.clone(),
                epoch,
                salt: salt.to_vec(),
                signers,
                not_after,
                rekey: rekey.to_cbor(),
            };
            let bytes = sign_statement(
                &manager_id,
                self.credential.signing_key(),
                LABEL_TREE_REKEY,
                &notice.to_cbor()?,
            );
            state.material = material;
            if let Some(m) = evicted {
                state.members.remove(m);
            }
            return Ok(vec![Outgoing {
                to: Destination::Group(group.clone()),
                kind: MessageKind::TreeRekey,
                bytes,
            }]);
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        let material = state
            .material
            .rekeyed(epoch, secret.as_ref(), &salt, signers, not_after)?;
        let previous = core::mem::replace(&mut state.material, material);
        let ids: Vec<EntityId> = state
            .members
            .keys()
            .filter(|id| Some(*id) != evicted)
            .cloned()
            .collect();
        let out: Result<Vec<Outgoing>> = ids
            .iter()
            .map(|id| delivery_for(&self.credential, &self.enrolled, state, id, now, rng))
            .collect();
        match out {
            Ok(out) => {
                if let Some(m) = evicted {
                    state.members.remove(m);
                }
                Ok(out)
            }
            Err(e) => {
                state.material = previous;
                Err(e)
            }
        }
    }

    /// Signs a transmission order for the enrolled `node`
    /// ([`crate::transmission`]).
    pub fn transmission_order(
        &self,
        node: &EntityId,
        version: u64,
        issued: UnixMillis,
        stopped: &crate::transmission::Stopped,
    ) -> Result<Vec<u8>> {
        if !self.enrolled.contains_key(node) {
            return Err(Error::UnknownMember);
        }
        crate::transmission::TransmissionOrder {
            manager: self.id().clone(),
            node: node.clone(),
            version,
            issued,
            stopped: stopped.clone(),
        }
        .sign(&self.credential)
    }

    /// Signs `token` (its issuer must be this manager): an access-control
    /// token, `crate::token`.
    pub fn sign_access_token(&self, token: &crate::token::AccessToken) -> Result<Vec<u8>> {
        token.sign(&self.credential)
    }

    /// Signs the authorization status list `listed` as of `version`.
    pub fn status_list(
        &self,
        version: u64,
        issued: UnixMillis,
        listed: &crate::status::Listed,
    ) -> Result<Vec<u8>> {
        crate::status::StatusList {
            manager: self.id().clone(),
            version,
            issued,
            listed: listed.clone(),
        }
        .sign(&self.credential)
    }

    /// Checks a misbehaviour report: signed by an enrolled **agent**, for
    /// this manager, issued within `max_age_ms` of `now`.
    pub fn open_misbehaviour_report(
        &self,
        bytes: &[u8],
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<crate::status::MisbehaviourReport> {
        let statement = UnverifiedStatement::parse(bytes, crate::status::MAX_REPORT_LEN)?;
        let enrolled = self
            .enrolled
            .get(statement.signer())
            .ok_or(Error::UnknownMember)?;
        if enrolled.kind != EntityKind::Agent {
            return Err(Error::Refused(
                "misbehaviour reports are taken from agents (gateways) only",
            ));
        }
        crate::status::MisbehaviourReport::open(
            bytes,
            &enrolled.credential,
            self.id(),
            now,
            max_age_ms,
        )
    }

    /// Checks a node's signed acknowledgement of a transmission order with
    /// the node's enrolled credential.
    pub fn handle_order_ack(&self, bytes: &[u8]) -> Result<crate::transmission::OrderAck> {
        let statement = UnverifiedStatement::parse(bytes, crate::transmission::MAX_ORDER_LEN)?;
        let enrolled = self
            .enrolled
            .get(statement.signer())
            .ok_or(Error::UnknownMember)?;
        crate::transmission::OrderAck::open(bytes, &enrolled.credential, self.id())
    }

    /// Records a member's signed ack. Returns the acknowledged epoch.
    pub fn handle_ack(&mut self, bytes: &[u8]) -> Result<(GroupId, EntityId, Epoch)> {
        let statement = UnverifiedStatement::parse(bytes, MAX_STATEMENT_LEN)?;
        let member = statement.signer().clone();
        let enrolled = self.enrolled.get(&member).ok_or(Error::UnknownMember)?;
        let ack =
            Ack::from_cbor(&statement.verify(enrolled.credential.verifying_key(), LABEL_ACK)?)?;
        let state = self.groups.get_mut(&ack.group).ok_or(Error::UnknownGroup)?;
        let current = state.material.epoch();
        if ack.epoch > current {
            return Err(Error::StaleEpoch {
                current,
                offered: ack.epoch,
            });
        }
        let rec = state.members.get_mut(&member).ok_or(Error::UnknownMember)?;
        if rec.held.is_none_or(|h| h < ack.epoch) {
            rec.held = Some(ack.epoch);
        }
        if ack.epoch == current {
            rec.unacked_sends = 0;
        }
        Ok((ack.group, member, ack.epoch))
    }

    /// Answers a member's signed pull request with the current material
    /// (and tree path), end to end.
    pub fn handle_pull<R: CryptoRng + ?Sized>(
        &mut self,
        bytes: &[u8],
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Outgoing> {
        let statement = UnverifiedStatement::parse(bytes, MAX_STATEMENT_LEN)?;
        let member = statement.signer().clone();
        let enrolled = self.enrolled.get(&member).ok_or(Error::UnknownMember)?;
        let pull = PullRequest::from_cbor(
            &statement.verify(enrolled.credential.verifying_key(), LABEL_PULL)?,
        )?;
        let state = self
            .groups
            .get_mut(&pull.group)
            .ok_or(Error::UnknownGroup)?;
        if !state.members.contains_key(&member) {
            return Err(Error::UnknownMember);
        }
        delivery_for(&self.credential, &self.enrolled, state, &member, now, rng)
    }

    /// Seals the current material of every group `member` belongs to for
    /// it again (after its credential changed) and counts the member as not
    /// holding it, so re-sends follow until it acknowledges under its new
    /// key.
    pub fn redeliver<R: CryptoRng + ?Sized>(
        &mut self,
        member: &EntityId,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>> {
        let mut out = Vec::new();
        for state in self.groups.values_mut() {
            let Some(record) = state.members.get_mut(member) else {
                continue;
            };
            record.held = None;
            record.unacked_sends = 0;
            out.push(delivery_for(
                &self.credential,
                &self.enrolled,
                state,
                member,
                now,
                rng,
            )?);
        }
        Ok(out)
    }

    /// Re-sends the current material to every member that has not
    /// acknowledged it and was last sent it at least the retry interval ago.
    pub fn poll_resend<R: CryptoRng + ?Sized>(
        &mut self,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>> {
        let mut out = Vec::new();
        let (base, cap, limit) = (self.retry_ms, self.max_retry_ms, self.max_resends_per_poll);
        for state in self.groups.values_mut() {
            if out.len() >= limit {
                break;
            }
            let epoch = state.material.epoch();
            let mut due: Vec<(u64, EntityId)> = state
                .members
                .iter()
                .filter(|(_, m)| m.held != Some(epoch))
                .filter_map(|(id, m)| {
                    let Some(sent) = m.last_sent else {
                        return Some((0, id.clone()));
                    };
                    let waited = now.get().saturating_sub(sent.get());
                    (waited >= resend_delay(base, cap, m.unacked_sends, id))
                        .then(|| (sent.get(), id.clone()))
                })
                .collect();
            // The longest waiting first, so a per-poll limit starves no one.
            due.sort();
            for (_, id) in due.into_iter().take(limit - out.len()) {
                out.push(delivery_for(
                    &self.credential,
                    &self.enrolled,
                    state,
                    &id,
                    now,
                    rng,
                )?);
            }
        }
        Ok(out)
    }

    /// Re-send limits: the backoff doubles from the retry interval up to
    /// `max_retry_ms` per member, and one poll sends at most
    /// `max_per_poll` deliveries (the rest wait for the next poll).
    pub fn set_resend_limits(&mut self, max_retry_ms: u64, max_per_poll: usize) {
        self.max_retry_ms = max_retry_ms.max(self.retry_ms);
        self.max_resends_per_poll = max_per_poll.max(1);
    }
}

/// How long to wait after the `sends`-th unacknowledged delivery before the
/// next: `base · 2^(sends−1)`, at most `cap`, spread by ±25 % by a hash of
/// the member's id so that a fleet that went offline together does not come
/// due together (deterministic: the core draws no randomness for it).
fn resend_delay(base: u64, cap: u64, sends: u32, member: &EntityId) -> u64 {
    let exp = sends.saturating_sub(1).min(32);
    let delay = base.saturating_mul(1u64 << exp).min(cap);
    if sends <= 1 {
        return delay;
    }
    let spread = member
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        % 51;
    // 75 % … 125 % of the delay.
    delay / 100 * (75 + spread)
}

fn next_sender_id(state: &mut GroupState) -> Result<SenderId> {
    let n = state.next_sender_id;
    if n >= 1 << 48 {
        return Err(Error::TooLarge {
            what: "sender ids",
            limit: 1 << 48,
        });
    }
    state.next_sender_id += 1;
    let be = n.to_be_bytes();
    let first = be.iter().position(|&b| b != 0).unwrap_or(be.len() - 1);
    Ok(SenderId::new(&be[first..])?)
}

/// Seals the current material (and, for tree groups, the member's path) for
/// one member and records when it was sent.
fn delivery_for<R: CryptoRng + ?Sized>(
    manager: &EntityCredential,
    enrolled: &BTreeMap<EntityId, Enrolled>,
    state: &mut GroupState,
    member: &EntityId,
    now: UnixMillis,
    rng: &mut R,
) -> Result<Outgoing> {
    let entity = enrolled.get(member).ok_or(Error::UnknownMember)?;
    let record = state.members.get_mut(member).ok_or(Error::UnknownMember)?;
    let material = &state.material;
    let (kind, dkind, plaintext) = match (state.tree.as_ref(), record.leaf) {
        (Some(tree), Some(leaf)) => (
            MessageKind::TreeDelivery,
            DeliveryKind::TreePath,
            tree_delivery::encode(material, &tree.path(leaf)?)?,
        ),
        _ => (
            MessageKind::KeyDelivery,
            DeliveryKind::GroupKey,
            material.to_cbor()?,
        ),
    };
    let bytes = seal_delivery(
        dkind,
        manager.id(),
        manager.signing_key(),
        member,
        entity.credential.agreement_key(),
        material.group(),
        material.epoch(),
        material.alg(),
        &plaintext,
        rng,
    )?;
    record.last_sent = Some(now);
    record.unacked_sends = record.unacked_sends.saturating_add(1);
    Ok(Outgoing {
        to: Destination::Member {
            member: member.clone(),
            via: entity.agent.clone(),
        },
        kind,
        bytes,
    })
}

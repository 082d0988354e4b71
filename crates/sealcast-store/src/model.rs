//! The records a [`crate::ManagerStore`] holds, and their conversion from
//! raw column values (which are checked: a database is input too).

use sealcast_core::credential::PublicCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::GroupKeyMaterial;
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, UnixMillis};

use crate::audit::{AuditKind, AuditRecord, HASH_LEN};
use crate::error::{Error, Result};

/// What an enrolled entity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityKind {
    /// A field device (meter, sensor, actuator).
    Device,
    /// An agent / relay (DAP, gateway).
    Agent,
    /// A headend system.
    Headend,
    /// A group manager.
    Manager,
}

impl EntityKind {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntityKind::Device => "device",
            EntityKind::Agent => "agent",
            EntityKind::Headend => "headend",
            EntityKind::Manager => "manager",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "device" => EntityKind::Device,
            "agent" => EntityKind::Agent,
            "headend" => EntityKind::Headend,
            "manager" => EntityKind::Manager,
            _ => return None,
        })
    }
}

/// How a group is rekeyed: the group crate's one definition, stored by
/// its name (`p2p`, `tree`).
pub use sealcast_group::manager::RekeyScheme;

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends (and receives) group traffic; has a sender id.
    Sender,
    /// Only receives.
    Receiver,
    /// Relays traffic (an agent).
    Relay,
}

impl Role {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
            Role::Relay => "relay",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sender" => Role::Sender,
            "receiver" => Role::Receiver,
            "relay" => Role::Relay,
            _ => return None,
        })
    }
}

/// An enrolled entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityRecord {
    /// Its public credential; the entity id is `credential.id()`.
    pub credential: PublicCredential,
    /// What it is.
    pub kind: EntityKind,
    /// The agent that relays for it, if any.
    pub agent: Option<EntityId>,
}

impl EntityRecord {
    /// The entity's id.
    pub fn id(&self) -> &EntityId {
        self.credential.id()
    }
}

/// A group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    /// Its id.
    pub id: GroupId,
    /// Its current epoch.
    pub epoch: Epoch,
    /// Its AEAD algorithm.
    pub alg: AeadAlg,
    /// How it is rekeyed.
    pub scheme: RekeyScheme,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// The group.
    pub group: GroupId,
    /// The entity.
    pub entity: EntityId,
    /// Its role.
    pub role: Role,
    /// Its sender id in the group, if it sends.
    pub sender_id: Option<SenderId>,
    /// Its leaf in the LKH tree, if the group uses one.
    pub leaf_index: Option<u32>,
    /// The latest epoch it acknowledged.
    pub held_epoch: Option<Epoch>,
}

/// A node's transmission-control state at the manager: the scopes it must
/// stop as of `version`, and the newest version it acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransmissionRecord {
    /// The node.
    pub entity: EntityId,
    /// Grows with every change (never reused, also across managers).
    pub version: u64,
    /// What the node must not send (empty: everything allowed).
    pub stopped: sealcast_group::transmission::Stopped,
    /// The newest version the node acknowledged.
    pub acked: Option<u64>,
    /// When the order was last changed.
    pub updated_at: UnixMillis,
}

impl TransmissionRecord {
    /// Whether the node acknowledged the current version.
    pub fn is_acked(&self) -> bool {
        self.acked.is_some_and(|a| a >= self.version)
    }
}

/// An entity on the manager's authorization status list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRecord {
    /// The entity.
    pub entity: EntityId,
    /// Suspended or revoked.
    pub status: sealcast_group::status::Status,
    /// Why (an operator's words, or the misbehaviour rule that fired).
    pub reason: String,
    /// The Ed25519 public key a revoked entity had (never enrolled again).
    pub revoked_key: Option<Vec<u8>>,
    /// When it was listed.
    pub updated_at: UnixMillis,
}

/// The whole authorization status list as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// The list's version (0: never changed).
    pub version: u64,
    /// The listed entities, by id.
    pub listed: Vec<StatusRecord>,
}

/// A new listing of one entity.
#[derive(Clone, Copy, Debug)]
pub struct Listing<'a> {
    /// Suspended or revoked.
    pub status: sealcast_group::status::Status,
    /// Why.
    pub reason: &'a str,
    /// A revoked entity's Ed25519 public key.
    pub revoked_key: Option<&'a [u8]>,
}

/// A change of one entity's status: listed, or lifted (None).
pub type StatusChange<'a> = Option<Listing<'a>>;

/// An `authorization_status` row, checked.
pub(crate) fn status_from_sql(
    entity: &str,
    status: &str,
    reason: String,
    revoked_key: Option<Vec<u8>>,
    updated_at_ms: i64,
) -> Result<StatusRecord> {
    Ok(StatusRecord {
        entity: EntityId::new(entity).map_err(|_| corrupt("listed entity id"))?,
        status: sealcast_group::status::Status::parse(status)
            .ok_or_else(|| corrupt("authorization status"))?,
        reason,
        revoked_key,
        updated_at: UnixMillis::new(u64_from_sql(updated_at_ms, "status time")?),
    })
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(what.to_owned())
}

pub(crate) fn epoch_to_sql(e: Epoch) -> i64 {
    i64::from(e.get())
}

pub(crate) fn epoch_from_sql(v: i64) -> Result<Epoch> {
    u32::try_from(v)
        .map(Epoch::new)
        .map_err(|_| corrupt("epoch out of range"))
}

pub(crate) fn u64_to_sql(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} out of range")))
}

pub(crate) fn u64_from_sql(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(&format!("{what} is negative")))
}

pub(crate) fn group_id_from_sql(b: &[u8]) -> Result<GroupId> {
    GroupId::new(b).map_err(|_| corrupt("group id"))
}

pub(crate) fn entity_id_from_sql(s: &str) -> Result<EntityId> {
    EntityId::new(s).map_err(|_| corrupt("entity id"))
}

pub(crate) fn entity_from_sql(
    id: &str,
    kind: &str,
    credential: &[u8],
    agent: Option<&str>,
) -> Result<EntityRecord> {
    let id = entity_id_from_sql(id)?;
    let credential =
        PublicCredential::from_cose_key_set(credential).map_err(|_| corrupt("credential"))?;
    if credential.id() != &id {
        return Err(corrupt("credential belongs to another entity id"));
    }
    Ok(EntityRecord {
        credential,
        kind: EntityKind::parse(kind).ok_or_else(|| corrupt("entity kind"))?,
        agent: agent.map(entity_id_from_sql).transpose()?,
    })
}

pub(crate) fn group_from_sql(
    id: &[u8],
    epoch: i64,
    alg: i64,
    scheme: &str,
    created_at: i64,
) -> Result<GroupRecord> {
    Ok(GroupRecord {
        id: group_id_from_sql(id)?,
        epoch: epoch_from_sql(epoch)?,
        alg: AeadAlg::from_cose_id(alg).map_err(|_| corrupt("AEAD algorithm"))?,
        scheme: RekeyScheme::parse(scheme).ok_or_else(|| corrupt("rekey scheme"))?,
        created_at: UnixMillis::new(u64_from_sql(created_at, "created_at")?),
    })
}

pub(crate) struct MemberRow<'a> {
    pub group: &'a [u8],
    pub entity: &'a str,
    pub role: &'a str,
    pub sender_id: Option<&'a [u8]>,
    pub leaf_index: Option<i64>,
    pub held_epoch: Option<i64>,
}

pub(crate) fn member_from_sql(r: MemberRow<'_>) -> Result<MemberRecord> {
    Ok(MemberRecord {
        group: group_id_from_sql(r.group)?,
        entity: entity_id_from_sql(r.entity)?,
        role: Role::parse(r.role).ok_or_else(|| corrupt("member role"))?,
        sender_id: r
            .sender_id
            .map(|b| SenderId::new(b).map_err(|_| corrupt("sender id")))
            .transpose()?,
        leaf_index: r
            .leaf_index
            .map(|v| u32::try_from(v).map_err(|_| corrupt("leaf index")))
            .transpose()?,
        held_epoch: r.held_epoch.map(epoch_from_sql).transpose()?,
    })
}

pub(crate) struct AuditRow<'a> {
    pub seq: i64,
    pub time_ms: i64,
    pub kind: &'a str,
    pub group: Option<&'a [u8]>,
    pub entity: Option<&'a str>,
    pub detail: &'a str,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

/// Converts a row; a row that does not even parse is reported as broken at
/// its sequence number so that verification names it.
pub(crate) fn audit_from_sql(r: AuditRow<'_>, origin: &str) -> Result<AuditRecord> {
    let broken = |why: &str| Error::AuditBroken {
        origin: origin.to_owned(),
        record: u64::try_from(r.seq).unwrap_or(0),
        reason: format!("not a valid record: {why}"),
    };
    let hash = |b: &[u8]| <[u8; HASH_LEN]>::try_from(b).map_err(|_| broken("hash length"));
    Ok(AuditRecord {
        seq: u64::try_from(r.seq).map_err(|_| broken("negative seq"))?,
        time: UnixMillis::new(u64::try_from(r.time_ms).map_err(|_| broken("negative time"))?),
        kind: AuditKind::parse(r.kind).map_err(|_| broken("kind"))?,
        group: r
            .group
            .map(|g| GroupId::new(g).map_err(|_| broken("group id")))
            .transpose()?,
        entity: r
            .entity
            .map(|e| EntityId::new(e).map_err(|_| broken("entity id")))
            .transpose()?,
        detail: r.detail.to_owned(),
        prev_hash: hash(r.prev_hash)?,
        hash: hash(r.hash)?,
    })
}

/// Checks that `cbor` is key material of `group` and `epoch` before it is
/// sealed and stored under that row; returns its algorithm.
pub(crate) fn check_material(cbor: &[u8], group: &GroupId, epoch: Epoch) -> Result<AeadAlg> {
    let m = GroupKeyMaterial::from_cbor(cbor)?;
    if m.group() != group {
        return Err(Error::InvalidArgument(format!(
            "the key material is for group {}, not {group}",
            m.group()
        )));
    }
    if m.epoch() != epoch {
        return Err(Error::InvalidArgument(format!(
            "the key material is for epoch {}, not {epoch}",
            m.epoch()
        )));
    }
    Ok(m.alg())
}

/// Checks that the material's algorithm is the group's (stored COSE id).
pub(crate) fn check_alg(material: AeadAlg, group_alg: i64) -> Result<()> {
    if material.cose_id() != group_alg {
        return Err(Error::InvalidArgument(format!(
            "the key material uses COSE algorithm {} but the group uses {group_alg}",
            material.cose_id()
        )));
    }
    Ok(())
}

/// Columns of `transmission_orders`, in the order both backends select them.
pub(crate) const TRANSMISSION_COLS: &str =
    "entity_id, version, stopped, acked_version, updated_at_ms";

/// A `transmission_orders` row, checked.
pub(crate) fn transmission_from_sql(
    entity: &str,
    version: i64,
    stopped: &[u8],
    acked: Option<i64>,
    updated_at_ms: i64,
) -> Result<TransmissionRecord> {
    Ok(TransmissionRecord {
        entity: EntityId::new(entity).map_err(|_| corrupt("transmission entity id"))?,
        version: u64_from_sql(version, "transmission version")?,
        stopped: sealcast_group::transmission::decode_stopped(stopped)
            .map_err(|_| corrupt("transmission scopes"))?,
        acked: acked
            .map(|a| u64_from_sql(a, "acknowledged transmission version"))
            .transpose()?,
        updated_at: UnixMillis::new(u64_from_sql(updated_at_ms, "transmission time")?),
    })
}

/// The column values of a record to write: version, scopes, time.
pub(crate) fn transmission_to_sql(r: &TransmissionRecord) -> Result<(i64, Vec<u8>, i64)> {
    Ok((
        u64_to_sql(r.version, "transmission version")?,
        sealcast_group::transmission::encode_stopped(&r.stopped)?,
        u64_to_sql(r.updated_at.get(), "transmission time")?,
    ))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How a database constraint failed, for mapping to a precise [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbFail {
    Unique,
    ForeignKey,
    Check,
    Other,
}

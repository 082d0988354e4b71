//! # sealcast-store
//!
//! Everything sealcast keeps on disk or in a database:
//!
//! * [`ManagerStore`] — the manager's state (enrolled entities, groups,
//!   members, per-epoch key material sealed under a [`Kek`], the LKH tree
//!   state, an audit table) with two implementations sharing one SQL schema:
//!   [`SqliteStore`] (one file, for a single manager) and [`PgStore`]
//!   (PostgreSQL, for several manager instances sharing one database).
//! * [`DeviceStateFile`] / [`write_atomic`] — atomic 0600 files for a
//!   device's state; [`JournaledStateFile`] — such a file with an
//!   append-only journal of the changes since (a DAP's windows).
//! * [`AuditLog`] / [`verify_audit_file`] — the append-only, hash-chained
//!   audit log (JSON lines).
//!
//! The API is synchronous: async runtimes call it from `spawn_blocking`.
//!
//! ## Crate choices
//! * **rusqlite** with feature `bundled`: SQLite compiled in, so a fresh
//!   machine needs no system library; synchronous like this API. (sqlx's
//!   sqlite feature must never be added beside it: both link a sqlite3.)
//! * **postgres** (rust-postgres, synchronous): the mature PostgreSQL
//!   client, transactions and row counts as PostgreSQL reports them, no
//!   async runtime leaking into the API (it runs its own internally).
//!   Connections are plain TCP or Unix sockets (`NoTls`): run the manager
//!   next to its database or behind a TLS tunnel.
//! * **getrandom**: the 12-byte AES-GCM nonces come straight from the OS.
//!
//! ## Concurrency between managers
//! [`ManagerStore::advance_epoch`] is one transaction: a compare-and-set of
//! the group's epoch (a conditional `UPDATE` whose row count decides) and the
//! insert of the new epoch's material. A manager that loses the race gets
//! [`Error::Conflict`] and nothing of its attempt is stored; the primary key
//! `(group_id, epoch)` of the material table is the second line of defence,
//! so one epoch can never get two keys.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
mod error;
pub mod journal;
mod kek;
pub mod lock;
mod model;
pub mod persist;
mod pg;
mod schema;
mod sqlite;
pub mod statefile;

pub use audit::{
    AuditAnchor, AuditEntry, AuditKind, AuditLog, AuditRecord, AuditSummary, Rotation,
    audit_segments, verify_audit_file, verify_audit_file_anchored, verify_audit_segments,
};
pub use error::{Error, Result};
pub use journal::JournaledStateFile;
pub use kek::{KEK_ENV, KEK_LEN, Kek};
pub use lock::StateLock;
pub use model::{
    EntityKind, EntityRecord, GroupRecord, Listing, MemberRecord, RekeyScheme, Role, StatusChange,
    StatusRecord, StatusSnapshot, TransmissionRecord,
};
pub use pg::PgStore;
pub use schema::SCHEMA_VERSION;
pub use sqlite::SqliteStore;
pub use statefile::{DeviceStateFile, write_atomic};

use sealcast_core::ids::{EntityId, Epoch, GroupId};
use zeroize::Zeroizing;

/// The manager's persistent state. Object-safe (`Box<dyn ManagerStore>`),
/// `Send`; each instance owns one database connection, so share it behind a
/// mutex or open one per worker.
pub trait ManagerStore: Send {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The schema version the database is at.
    fn schema_version(&mut self) -> Result<i64>;

    // ----- entities -------------------------------------------------------

    /// Enrols an entity. [`Error::AlreadyExists`] if its id is taken,
    /// [`Error::NotFound`] if its agent is not enrolled.
    fn insert_entity(&mut self, entity: &EntityRecord) -> Result<()>;
    /// Enrols several entities (agents before the devices naming them). The
    /// default inserts them one by one; SQLite and PostgreSQL override it
    /// with one transaction (all or none, one commit — enrolling thousands
    /// at once).
    fn insert_entities(&mut self, entities: &[EntityRecord]) -> Result<()> {
        for e in entities {
            self.insert_entity(e)?;
        }
        Ok(())
    }
    /// Replaces an entity's credential, kind and agent.
    fn update_entity(&mut self, entity: &EntityRecord) -> Result<()>;
    /// One entity.
    fn entity(&mut self, id: &EntityId) -> Result<Option<EntityRecord>>;
    /// All entities, by id.
    fn list_entities(&mut self) -> Result<Vec<EntityRecord>>;
    /// Whether `id` was removed (`remove_entity`) and not enrolled again
    /// since: a manager's config file must not bring it back.
    fn was_removed(&mut self, id: &EntityId) -> Result<bool>;
    /// Removes an entity (and its transmission order) and records it as
    /// removed ([`ManagerStore::was_removed`]) until it is inserted again;
    /// [`Error::InUse`] while it is a member of a group or the agent of
    /// another entity. Returns whether it existed.
    fn remove_entity(&mut self, id: &EntityId) -> Result<bool>;

    // ----- groups and key material ---------------------------------------

    /// Creates a group at `group.epoch`, optionally with that epoch's key
    /// material (`GroupKeyMaterial::to_cbor()`) and a tree state, in one
    /// transaction.
    fn create_group(
        &mut self,
        group: &GroupRecord,
        material_cbor: Option<&[u8]>,
        tree_state: Option<&[u8]>,
    ) -> Result<()>;
    /// One group.
    fn group(&mut self, id: &GroupId) -> Result<Option<GroupRecord>>;
    /// All groups, by id.
    fn list_groups(&mut self) -> Result<Vec<GroupRecord>>;
    /// Removes a group with its members, key material and tree state.
    fn remove_group(&mut self, id: &GroupId) -> Result<bool>;

    /// Starts one transaction for a change of `group` that spans several
    /// calls (a new epoch, its material and tree, and the member rows), and
    /// waits until no other manager is changing that group: PostgreSQL locks
    /// the group's row (`SELECT … FOR UPDATE`), SQLite takes the database's
    /// write lock (`BEGIN IMMEDIATE`). Until [`Self::finish_group_update`]
    /// the calls on this store join that transaction, so a manager killed
    /// half-way leaves nothing behind and a second manager never sees, or
    /// interleaves with, half a change. The default does nothing (a store
    /// without transactions).
    fn begin_group_update(&mut self, group: &GroupId) -> Result<()> {
        let _ = group;
        Ok(())
    }
    /// Ends what [`Self::begin_group_update`] started: commits when
    /// `commit`, else rolls everything back.
    fn finish_group_update(&mut self, commit: bool) -> Result<()> {
        let _ = commit;
        Ok(())
    }

    /// Moves `group` from `expected_current` to `new_epoch` and stores that
    /// epoch's material (and, if given, the new tree state) in ONE
    /// transaction. [`Error::Conflict`] when the group is not at
    /// `expected_current` (another manager got there first);
    /// [`Error::MaterialExists`] if the new epoch has material already. On
    /// any error nothing changes. The material must parse as
    /// `GroupKeyMaterial` of this group, epoch `new_epoch` and the group's
    /// algorithm.
    fn advance_epoch(
        &mut self,
        group: &GroupId,
        expected_current: Epoch,
        new_epoch: Epoch,
        material_cbor: &[u8],
        tree_state: Option<&[u8]>,
    ) -> Result<()>;
    /// The decrypted material of one epoch, `None` if none is stored.
    /// [`Error::Unseal`] (never other bytes) if it does not decrypt.
    fn material(&mut self, group: &GroupId, epoch: Epoch) -> Result<Option<Zeroizing<Vec<u8>>>>;
    /// The epochs of `group` that have material, ascending.
    fn material_epochs(&mut self, group: &GroupId) -> Result<Vec<Epoch>>;
    /// Deletes the material of every epoch before `epoch`; returns how many.
    fn forget_material_before(&mut self, group: &GroupId, epoch: Epoch) -> Result<u64>;
    /// The group's tree state and the epoch it was written at.
    fn tree_state(&mut self, group: &GroupId) -> Result<Option<(Epoch, Zeroizing<Vec<u8>>)>>;

    // ----- members --------------------------------------------------------

    /// Adds a member. [`Error::AlreadyExists`] if the entity is a member
    /// already or its sender id / leaf index is taken in this group.
    fn insert_member(&mut self, member: &MemberRecord) -> Result<()>;
    /// Replaces a member's role, sender id, leaf index and held epoch.
    fn update_member(&mut self, member: &MemberRecord) -> Result<()>;
    /// One member.
    fn member(&mut self, group: &GroupId, entity: &EntityId) -> Result<Option<MemberRecord>>;
    /// The members of a group, by entity id.
    fn list_members(&mut self, group: &GroupId) -> Result<Vec<MemberRecord>>;
    /// The memberships of an entity, by group id.
    fn memberships(&mut self, entity: &EntityId) -> Result<Vec<MemberRecord>>;
    /// Removes a member; returns whether it existed.
    fn remove_member(&mut self, group: &GroupId, entity: &EntityId) -> Result<bool>;
    /// Records that a member acknowledged `epoch`. Only ever moves forward
    /// (a late ack of an older epoch changes nothing); an epoch beyond the
    /// group's current one is refused.
    fn set_held_epoch(&mut self, group: &GroupId, entity: &EntityId, epoch: Epoch) -> Result<()>;

    // ----- transmission control -------------------------------------------

    /// A node's transmission order, if it ever got one.
    fn transmission(&mut self, entity: &EntityId) -> Result<Option<TransmissionRecord>>;
    /// Every order its node has not acknowledged yet, by entity id.
    fn pending_transmissions(&mut self) -> Result<Vec<TransmissionRecord>>;
    /// Writes a node's new order if the stored version is still `expected`
    /// (`None`: no order stored yet), else [`Error::TransmissionConflict`]:
    /// two managers sharing a store never issue one version twice.
    fn put_transmission(
        &mut self,
        record: &TransmissionRecord,
        expected: Option<u64>,
    ) -> Result<()>;
    /// Records that `entity` acknowledged `version`; false when that is not
    /// its current version (a late ack of an older one changes nothing).
    fn ack_transmission(&mut self, entity: &EntityId, version: u64) -> Result<bool>;

    // ----- authorization status ---------------------------------------------

    /// The authorization status list (version and listed entities).
    fn status_list(&mut self) -> Result<StatusSnapshot>;
    /// Lists `entity` (`Some(listing)`) or lifts its listing
    /// (`None`) and moves the list to `version`, in one transaction, if the
    /// stored version is still `expected`; else
    /// [`Error::StatusConflict`]: two managers sharing a store never publish
    /// one version with two contents.
    fn put_status(
        &mut self,
        entity: &EntityId,
        change: StatusChange<'_>,
        expected: u64,
        version: u64,
    ) -> Result<()>;
    /// Takes misbehaviour report number `seq` of `reporter` if it is above
    /// every number taken from it before (false: a replay or an old copy).
    fn take_report_seq(&mut self, reporter: &EntityId, seq: u64) -> Result<bool>;

    // ----- audit ----------------------------------------------------------

    /// Appends an audit record to table `audit_log` (same record format and
    /// chain as the file log).
    fn audit_append(&mut self, entry: &AuditEntry) -> Result<AuditRecord>;
    /// Up to `limit` records with sequence number ≥ `from_seq`, ascending.
    fn audit_records(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>>;
    /// Verifies the whole audit table (and the anchor, if given).
    fn audit_verify(&mut self, anchor: Option<AuditAnchor>) -> Result<AuditSummary> {
        let origin = format!("{} table audit_log", self.backend());
        let mut v = audit::ChainVerifier::new(origin, anchor);
        let mut from = 1u64;
        loop {
            let page = self.audit_records(from, 1000)?;
            let Some(last) = page.last() else { break };
            from = last.seq.saturating_add(1);
            for r in &page {
                v.push(r)?;
            }
            if page.len() < 1000 {
                break;
            }
        }
        v.finish()
    }
}

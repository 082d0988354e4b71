//! [`ManagerStore`] on SQLite (rusqlite, bundled SQLite).
//!
//! One file, mode 0600, WAL journal with `synchronous=FULL` (a committed
//! transaction survives a power cut), foreign keys on, `secure_delete` on
//! (deleted rows are overwritten). Writing transactions start with
//! `BEGIN IMMEDIATE`, so two processes on one file serialize instead of
//! failing at commit; a busy timeout of 10 s covers the wait.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use sealcast_core::ids::{EntityId, Epoch, GroupId};
use zeroize::Zeroizing;

use crate::ManagerStore;
use crate::audit::{AuditEntry, AuditRecord};
use crate::error::{Error, Result};
use crate::kek::{Kek, Purpose};
use crate::model::{
    AuditRow, DbFail, EntityRecord, GroupRecord, MemberRecord, MemberRow, StatusChange,
    StatusSnapshot, TRANSMISSION_COLS, TransmissionRecord, audit_from_sql, check_alg,
    entity_from_sql, epoch_from_sql, epoch_to_sql, group_from_sql, member_from_sql, now_ms,
    status_from_sql, transmission_from_sql, transmission_to_sql, u64_from_sql, u64_to_sql,
};
use crate::schema::{CREATE_VERSION_TABLE, Dialect, SCHEMA_VERSION, migrations};

mod rows;

use rows::*;

const BACKEND: &str = "sqlite";

/// The manager's store in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    kek: Kek,
    path: Option<PathBuf>,
    /// Inside `begin_group_update`: statements join that transaction.
    in_group_update: bool,
}

impl core::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn db(action: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Database {
        backend: BACKEND,
        action,
        message: e.to_string(),
    }
}

fn classify(e: &rusqlite::Error) -> DbFail {
    use rusqlite::ffi;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.extended_code {
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => DbFail::Unique,
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => DbFail::ForeignKey,
            ffi::SQLITE_CONSTRAINT_CHECK => DbFail::Check,
            _ => DbFail::Other,
        },
        _ => DbFail::Other,
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the store at `path`, applies
    /// missing migrations and checks that `kek` is the KEK the store was
    /// created with ([`Error::WrongKek`] otherwise).
    pub fn open(path: impl AsRef<Path>, kek: Kek) -> Result<Self> {
        let path = path.as_ref();
        // Create the file ourselves so it is 0600 from the start; SQLite
        // gives its -wal and -shm files the same permissions.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create database file", path, e))?;
        let conn = Connection::open(path).map_err(db("open the database"))?;
        let mut store = Self {
            conn,
            kek,
            path: Some(path.to_path_buf()),
            in_group_update: false,
        };
        store.init(true)?;
        Ok(store)
    }

    /// A store in memory (tests, simulations).
    pub fn open_in_memory(kek: Kek) -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(db("open the database"))?;
        let mut store = Self {
            conn,
            kek,
            path: None,
            in_group_update: false,
        };
        store.init(false)?;
        Ok(store)
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn init(&mut self, wal: bool) -> Result<()> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(db("set the busy timeout"))?;
        if wal {
            let mode: String = self
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(db("enable the WAL journal"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Database {
                    backend: BACKEND,
                    action: "enable the WAL journal",
                    message: format!("journal mode stayed {mode}"),
                });
            }
        }
        self.conn
            .execute_batch(
                "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA secure_delete = ON;",
            )
            .map_err(db("configure the connection"))?;
        self.migrate()?;
        let check: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM store_meta WHERE name = 'kek_check'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read the KEK check value"))?;
        match check {
            Some(c) => self.kek.verify_check_value(&c),
            None => Err(Error::Corrupt("the KEK check value is missing".into())),
        }
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start the migration"))?;
        tx.execute_batch(CREATE_VERSION_TABLE)
            .map_err(db("create table schema_version"))?;
        let current: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(db("read the schema version"))?;
        if current > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        for (version, sql) in migrations(Dialect::Sqlite) {
            if version <= current {
                continue;
            }
            tx.execute_batch(&sql).map_err(db("apply a migration"))?;
            if version == 1 {
                tx.execute(
                    "INSERT INTO store_meta (name, value) VALUES ('kek_check', ?1)",
                    params![self.kek.check_value()?],
                )
                .map_err(db("store the KEK check value"))?;
            }
            tx.execute(
                "INSERT INTO schema_version (version, applied_at_ms) VALUES (?1, ?2)",
                params![version, now_ms()],
            )
            .map_err(db("record the schema version"))?;
        }
        tx.commit().map_err(db("commit the migration"))
    }

    fn unseal_material(
        &self,
        group: &GroupId,
        epoch: Epoch,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.kek.open(Purpose::Material, group, epoch, sealed)
    }
}

impl ManagerStore for SqliteStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn schema_version(&mut self) -> Result<i64> {
        self.conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .map_err(db("read the schema version"))
    }

    fn insert_entity(&mut self, entity: &EntityRecord) -> Result<()> {
        let cred = entity.credential.to_cose_key_set()?;
        self.conn
            .execute(
                "INSERT INTO entities (entity_id, kind, credential, agent_id) VALUES (?1, ?2, ?3, ?4)",
                params![
                    entity.id().as_str(),
                    entity.kind.as_str(),
                    cred,
                    entity.agent.as_ref().map(EntityId::as_str)
                ],
            )
            .map_err(|e| match classify(&e) {
                DbFail::Unique => Error::AlreadyExists {
                    what: "entity",
                    id: entity.id().to_string(),
                },
                DbFail::ForeignKey => Error::NotFound {
                    what: "agent",
                    id: entity.agent.as_ref().map(ToString::to_string).unwrap_or_default(),
                },
                _ => db("insert an entity")(e),
            })?;
        // Enrolled again: no longer a removed entity.
        self.conn
            .execute(
                "DELETE FROM removed_entities WHERE entity_id = ?1",
                params![entity.id().as_str()],
            )
            .map_err(db("clear a removed entity"))?;
        Ok(())
    }

    fn insert_entities(&mut self, entities: &[EntityRecord]) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db("begin enrolling entities"))?;
        let inserted = entities.iter().try_for_each(|e| self.insert_entity(e));
        let end = if inserted.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = self
            .conn
            .execute_batch(end)
            .map_err(db("finish enrolling entities"));
        inserted.and(ended)
    }

    fn update_entity(&mut self, entity: &EntityRecord) -> Result<()> {
        let cred = entity.credential.to_cose_key_set()?;
        let n = self
            .conn
            .execute(
                "UPDATE entities SET kind = ?2, credential = ?3, agent_id = ?4 WHERE entity_id = ?1",
                params![
                    entity.id().as_str(),
                    entity.kind.as_str(),
                    cred,
                    entity.agent.as_ref().map(EntityId::as_str)
                ],
            )
            .map_err(|e| match classify(&e) {
                DbFail::ForeignKey => Error::NotFound {
                    what: "agent",
                    id: entity.agent.as_ref().map(ToString::to_string).unwrap_or_default(),
                },
                _ => db("update an entity")(e),
            })?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "entity",
                id: entity.id().to_string(),
            });
        }
        Ok(())
    }

    fn entity(&mut self, id: &EntityId) -> Result<Option<EntityRecord>> {
        self.conn
            .query_row(
                "SELECT entity_id, kind, credential, agent_id FROM entities WHERE entity_id = ?1",
                params![id.as_str()],
                entity_row,
            )
            .optional()
            .map_err(db("read an entity"))?
            .transpose()
    }

    fn list_entities(&mut self) -> Result<Vec<EntityRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT entity_id, kind, credential, agent_id FROM entities ORDER BY entity_id",
            )
            .map_err(db("list entities"))?;
        let rows = st.query_map([], entity_row).map_err(db("list entities"))?;
        collect(rows, "list entities")
    }

    fn remove_entity(&mut self, id: &EntityId) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start removing an entity"))?;
        tx.execute(
            "DELETE FROM transmission_orders WHERE entity_id = ?1",
            params![id.as_str()],
        )
        .map_err(db("remove an entity's transmission order"))?;
        let n = tx
            .execute(
                "DELETE FROM entities WHERE entity_id = ?1",
                params![id.as_str()],
            )
            .map_err(|e| match classify(&e) {
                DbFail::ForeignKey => Error::InUse {
                    what: "entity",
                    id: id.to_string(),
                },
                _ => db("remove an entity")(e),
            })?;
        if n > 0 {
            tx.execute(
                "INSERT INTO removed_entities (entity_id, removed_at_ms) VALUES (?1, ?2) \
                 ON CONFLICT (entity_id) DO UPDATE SET removed_at_ms = excluded.removed_at_ms",
                params![id.as_str(), now_ms()],
            )
            .map_err(db("record a removed entity"))?;
        }
        tx.commit().map_err(db("finish removing an entity"))?;
        Ok(n > 0)
    }

    fn was_removed(&mut self, id: &EntityId) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM removed_entities WHERE entity_id = ?1",
                params![id.as_str()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db("read removed entities"))
    }

    fn create_group(
        &mut self,
        group: &GroupRecord,
        material_cbor: Option<&[u8]>,
        tree_state: Option<&[u8]>,
    ) -> Result<()> {
        let sealed = self
            .kek
            .seal_epoch(&group.id, group.epoch, material_cbor, tree_state)?;
        if let Some(alg) = sealed.alg {
            check_alg(alg, group.alg.cose_id())?;
        }
        let (sealed_material, sealed_tree) = (sealed.material, sealed.tree);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start a transaction"))?;
        tx.execute(
            "INSERT INTO key_groups (group_id, epoch, aead_alg, rekey_scheme, created_at_ms, tree_epoch, tree_state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                group.id.as_bytes(),
                epoch_to_sql(group.epoch),
                group.alg.cose_id(),
                group.scheme.as_str(),
                u64_to_sql(group.created_at.get(), "created_at")?,
                sealed_tree.as_ref().map(|_| epoch_to_sql(group.epoch)),
                sealed_tree
            ],
        )
        .map_err(|e| match classify(&e) {
            DbFail::Unique => Error::AlreadyExists {
                what: "group",
                id: group.id.to_string(),
            },
            _ => db("create a group")(e),
        })?;
        if let Some(sealed) = sealed_material {
            tx.execute(
                "INSERT INTO epoch_material (group_id, epoch, sealed) VALUES (?1, ?2, ?3)",
                params![group.id.as_bytes(), epoch_to_sql(group.epoch), sealed],
            )
            .map_err(|e| match classify(&e) {
                DbFail::Unique => Error::MaterialExists {
                    group: group.id.clone(),
                    epoch: group.epoch,
                },
                _ => db("store key material")(e),
            })?;
        }
        tx.commit().map_err(db("commit a new group"))
    }

    fn group(&mut self, id: &GroupId) -> Result<Option<GroupRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {GROUP_COLS} FROM key_groups WHERE group_id = ?1"),
                params![id.as_bytes()],
                group_row,
            )
            .optional()
            .map_err(db("read a group"))?
            .transpose()
    }

    fn list_groups(&mut self) -> Result<Vec<GroupRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {GROUP_COLS} FROM key_groups ORDER BY group_id"
            ))
            .map_err(db("list groups"))?;
        let rows = st.query_map([], group_row).map_err(db("list groups"))?;
        collect(rows, "list groups")
    }

    fn remove_group(&mut self, id: &GroupId) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM key_groups WHERE group_id = ?1",
                params![id.as_bytes()],
            )
            .map_err(db("remove a group"))?;
        Ok(n > 0)
    }

    fn advance_epoch(
        &mut self,
        group: &GroupId,
        expected_current: Epoch,
        new_epoch: Epoch,
        material_cbor: &[u8],
        tree_state: Option<&[u8]>,
    ) -> Result<()> {
        if new_epoch <= expected_current {
            return Err(Error::InvalidArgument(format!(
                "the new epoch {new_epoch} must be larger than the current {expected_current}"
            )));
        }
        let epoch_blobs = self
            .kek
            .seal_epoch(group, new_epoch, Some(material_cbor), tree_state)?;
        let (Some(material_alg), Some(sealed)) = (epoch_blobs.alg, epoch_blobs.material) else {
            return Err(Error::InvalidArgument("no key material to store".into()));
        };
        let sealed_tree = epoch_blobs.tree;
        let change = |c: &Connection| -> Result<()> {
            // Compare-and-set: only a group still at the expected epoch moves.
            let alg: Option<i64> = c
                .query_row(
                    "UPDATE key_groups SET epoch = ?3 WHERE group_id = ?1 AND epoch = ?2 RETURNING aead_alg",
                    params![
                        group.as_bytes(),
                        epoch_to_sql(expected_current),
                        epoch_to_sql(new_epoch)
                    ],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("advance the epoch"))?;
            let Some(alg) = alg else {
                let actual: Option<i64> = c
                    .query_row(
                        "SELECT epoch FROM key_groups WHERE group_id = ?1",
                        params![group.as_bytes()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db("read a group"))?;
                return Err(match actual {
                    None => Error::NotFound {
                        what: "group",
                        id: group.to_string(),
                    },
                    Some(a) => Error::Conflict {
                        group: group.clone(),
                        expected: expected_current,
                        actual: epoch_from_sql(a)?,
                    },
                });
            };
            check_alg(material_alg, alg)?;
            c.execute(
                "INSERT INTO epoch_material (group_id, epoch, sealed) VALUES (?1, ?2, ?3)",
                params![group.as_bytes(), epoch_to_sql(new_epoch), sealed],
            )
            .map_err(|e| match classify(&e) {
                DbFail::Unique => Error::MaterialExists {
                    group: group.clone(),
                    epoch: new_epoch,
                },
                _ => db("store key material")(e),
            })?;
            if let Some(t) = sealed_tree {
                c.execute(
                    "UPDATE key_groups SET tree_epoch = ?2, tree_state = ?3 WHERE group_id = ?1",
                    params![group.as_bytes(), epoch_to_sql(new_epoch), t],
                )
                .map_err(db("store the tree state"))?;
            }
            Ok(())
        };
        if self.in_group_update {
            // A savepoint inside the caller's transaction.
            let sp = self.conn.savepoint().map_err(db("start a savepoint"))?;
            change(&sp)?;
            return sp.commit().map_err(db("release the savepoint"));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start a transaction"))?;
        change(&tx)?;
        // Dropping `tx` on an early return above rolls everything back.
        tx.commit().map_err(db("commit the new epoch"))
    }

    fn begin_group_update(&mut self, _group: &GroupId) -> Result<()> {
        if self.in_group_update {
            return Err(Error::InvalidArgument(
                "a group update is already in progress on this connection".into(),
            ));
        }
        // The database's write lock: another process's update waits (up to
        // the busy timeout) until this transaction ends.
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db("start a transaction"))?;
        self.in_group_update = true;
        Ok(())
    }

    fn finish_group_update(&mut self, commit: bool) -> Result<()> {
        if !self.in_group_update {
            return Ok(());
        }
        self.in_group_update = false;
        let (sql, what) = if commit {
            ("COMMIT", "commit the group update")
        } else {
            ("ROLLBACK", "roll back the group update")
        };
        self.conn.execute_batch(sql).map_err(db(what))
    }

    fn material(&mut self, group: &GroupId, epoch: Epoch) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT sealed FROM epoch_material WHERE group_id = ?1 AND epoch = ?2",
                params![group.as_bytes(), epoch_to_sql(epoch)],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read key material"))?;
        sealed
            .map(|s| self.unseal_material(group, epoch, &s))
            .transpose()
    }

    fn material_epochs(&mut self, group: &GroupId) -> Result<Vec<Epoch>> {
        let mut st = self
            .conn
            .prepare("SELECT epoch FROM epoch_material WHERE group_id = ?1 ORDER BY epoch")
            .map_err(db("list key material"))?;
        let rows = st
            .query_map(params![group.as_bytes()], |r| {
                r.get::<_, i64>(0).map(epoch_from_sql)
            })
            .map_err(db("list key material"))?;
        collect(rows, "list key material")
    }

    fn forget_material_before(&mut self, group: &GroupId, epoch: Epoch) -> Result<u64> {
        let n = self
            .conn
            .execute(
                "DELETE FROM epoch_material WHERE group_id = ?1 AND epoch < ?2",
                params![group.as_bytes(), epoch_to_sql(epoch)],
            )
            .map_err(db("delete old key material"))?;
        Ok(n as u64)
    }

    fn tree_state(&mut self, group: &GroupId) -> Result<Option<(Epoch, Zeroizing<Vec<u8>>)>> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = self
            .conn
            .query_row(
                "SELECT tree_epoch, tree_state FROM key_groups WHERE group_id = ?1",
                params![group.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("read the tree state"))?;
        match row {
            Some((Some(e), Some(s))) => {
                let e = epoch_from_sql(e)?;
                Ok(Some((e, self.kek.open(Purpose::TreeState, group, e, &s)?)))
            }
            _ => Ok(None),
        }
    }

    fn insert_member(&mut self, m: &MemberRecord) -> Result<()> {
        self.conn
            .execute(
                &format!("INSERT INTO members ({MEMBER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    m.group.as_bytes(),
                    m.entity.as_str(),
                    m.role.as_str(),
                    m.sender_id.as_ref().map(|s| s.as_bytes()),
                    leaf_to_sql(m.leaf_index),
                    m.held_epoch.map(epoch_to_sql)
                ],
            )
            .map_err(|e| match classify(&e) {
                DbFail::Unique => Error::AlreadyExists {
                    what: "member (or its sender id or leaf index in this group)",
                    id: format!("{}/{}", m.group, m.entity),
                },
                DbFail::ForeignKey => Error::NotFound {
                    what: "group or entity",
                    id: format!("{}/{}", m.group, m.entity),
                },
                _ => db("insert a member")(e),
            })?;
        Ok(())
    }

    fn update_member(&mut self, m: &MemberRecord) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE members SET role = ?3, sender_id = ?4, leaf_index = ?5, held_epoch = ?6 \
                 WHERE group_id = ?1 AND entity_id = ?2",
                params![
                    m.group.as_bytes(),
                    m.entity.as_str(),
                    m.role.as_str(),
                    m.sender_id.as_ref().map(|s| s.as_bytes()),
                    leaf_to_sql(m.leaf_index),
                    m.held_epoch.map(epoch_to_sql)
                ],
            )
            .map_err(|e| match classify(&e) {
                DbFail::Unique => Error::AlreadyExists {
                    what: "sender id or leaf index in this group",
                    id: format!("{}/{}", m.group, m.entity),
                },
                _ => db("update a member")(e),
            })?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "member",
                id: format!("{}/{}", m.group, m.entity),
            });
        }
        Ok(())
    }

    fn member(&mut self, group: &GroupId, entity: &EntityId) -> Result<Option<MemberRecord>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {MEMBER_COLS} FROM members WHERE group_id = ?1 AND entity_id = ?2"
                ),
                params![group.as_bytes(), entity.as_str()],
                member_row,
            )
            .optional()
            .map_err(db("read a member"))?
            .transpose()
    }

    fn list_members(&mut self, group: &GroupId) -> Result<Vec<MemberRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {MEMBER_COLS} FROM members WHERE group_id = ?1 ORDER BY entity_id"
            ))
            .map_err(db("list members"))?;
        let rows = st
            .query_map(params![group.as_bytes()], member_row)
            .map_err(db("list members"))?;
        collect(rows, "list members")
    }

    fn memberships(&mut self, entity: &EntityId) -> Result<Vec<MemberRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {MEMBER_COLS} FROM members WHERE entity_id = ?1 ORDER BY group_id"
            ))
            .map_err(db("list memberships"))?;
        let rows = st
            .query_map(params![entity.as_str()], member_row)
            .map_err(db("list memberships"))?;
        collect(rows, "list memberships")
    }

    fn remove_member(&mut self, group: &GroupId, entity: &EntityId) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM members WHERE group_id = ?1 AND entity_id = ?2",
                params![group.as_bytes(), entity.as_str()],
            )
            .map_err(db("remove a member"))?;
        Ok(n > 0)
    }

    fn set_held_epoch(&mut self, group: &GroupId, entity: &EntityId, epoch: Epoch) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start a transaction"))?;
        let current: Option<i64> = tx
            .query_row(
                "SELECT g.epoch FROM members m JOIN key_groups g ON g.group_id = m.group_id \
                 WHERE m.group_id = ?1 AND m.entity_id = ?2",
                params![group.as_bytes(), entity.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read a member"))?;
        let Some(current) = current else {
            return Err(Error::NotFound {
                what: "member",
                id: format!("{group}/{entity}"),
            });
        };
        if epoch_to_sql(epoch) > current {
            return Err(Error::InvalidArgument(format!(
                "member {entity} cannot hold epoch {epoch}: group {group} is at epoch {current}"
            )));
        }
        tx.execute(
            "UPDATE members SET held_epoch = ?3 WHERE group_id = ?1 AND entity_id = ?2 \
             AND (held_epoch IS NULL OR held_epoch < ?3)",
            params![group.as_bytes(), entity.as_str(), epoch_to_sql(epoch)],
        )
        .map_err(db("record a held epoch"))?;
        tx.commit().map_err(db("commit a held epoch"))
    }

    fn transmission(&mut self, entity: &EntityId) -> Result<Option<TransmissionRecord>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {TRANSMISSION_COLS} FROM transmission_orders WHERE entity_id = ?1"
                ),
                params![entity.as_str()],
                transmission_row,
            )
            .optional()
            .map_err(db("read a transmission order"))?
            .transpose()
    }

    fn pending_transmissions(&mut self) -> Result<Vec<TransmissionRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {TRANSMISSION_COLS} FROM transmission_orders \
                 WHERE acked_version IS NULL OR acked_version < version ORDER BY entity_id"
            ))
            .map_err(db("list transmission orders"))?;
        let rows = st
            .query_map([], transmission_row)
            .map_err(db("list transmission orders"))?;
        collect(rows, "list transmission orders")
    }

    fn put_transmission(
        &mut self,
        record: &TransmissionRecord,
        expected: Option<u64>,
    ) -> Result<()> {
        let (version, stopped, updated) = transmission_to_sql(record)?;
        let n = match expected {
            None => self.conn.execute(
                "INSERT INTO transmission_orders (entity_id, version, stopped, acked_version, updated_at_ms) \
                 VALUES (?1, ?2, ?3, NULL, ?4) ON CONFLICT (entity_id) DO NOTHING",
                params![record.entity.as_str(), version, stopped, updated],
            ),
            Some(prev) => self.conn.execute(
                "UPDATE transmission_orders SET version = ?2, stopped = ?3, updated_at_ms = ?4 \
                 WHERE entity_id = ?1 AND version = ?5",
                params![
                    record.entity.as_str(),
                    version,
                    stopped,
                    updated,
                    u64_to_sql(prev, "transmission version")?
                ],
            ),
        }
        .map_err(|e| match classify(&e) {
            DbFail::ForeignKey => Error::NotFound {
                what: "entity",
                id: record.entity.to_string(),
            },
            _ => db("write a transmission order")(e),
        })?;
        if n == 0 {
            return Err(Error::TransmissionConflict {
                entity: record.entity.clone(),
                expected,
            });
        }
        Ok(())
    }

    fn ack_transmission(&mut self, entity: &EntityId, version: u64) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE transmission_orders SET acked_version = ?2 \
                 WHERE entity_id = ?1 AND version = ?2",
                params![
                    entity.as_str(),
                    u64_to_sql(version, "transmission version")?
                ],
            )
            .map_err(db("record a transmission ack"))?;
        Ok(n > 0)
    }

    fn status_list(&mut self) -> Result<StatusSnapshot> {
        let version: i64 = self
            .conn
            .query_row("SELECT version FROM status_list WHERE one = 1", [], |r| {
                r.get(0)
            })
            .map_err(db("read the status list's version"))?;
        let mut st = self
            .conn
            .prepare(
                "SELECT entity_id, status, reason, revoked_key, updated_at_ms FROM authorization_status \
                 ORDER BY entity_id",
            )
            .map_err(db("read the status list"))?;
        let rows = st
            .query_map([], |r| {
                Ok(status_from_sql(
                    &r.get::<_, String>(0)?,
                    &r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .map_err(db("read the status list"))?;
        Ok(StatusSnapshot {
            version: u64_from_sql(version, "status list version")?,
            listed: collect(rows, "read the status list")?,
        })
    }

    fn put_status(
        &mut self,
        entity: &EntityId,
        change: StatusChange<'_>,
        expected: u64,
        version: u64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start changing the status list"))?;
        let n = tx
            .execute(
                "UPDATE status_list SET version = ?1 WHERE one = 1 AND version = ?2",
                params![
                    u64_to_sql(version, "status list version")?,
                    u64_to_sql(expected, "status list version")?
                ],
            )
            .map_err(db("move the status list's version"))?;
        if n == 0 {
            return Err(Error::StatusConflict { expected });
        }
        match change {
            Some(l) => tx.execute(
                "INSERT INTO authorization_status (entity_id, status, reason, revoked_key, updated_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (entity_id) DO UPDATE SET \
                 status = excluded.status, reason = excluded.reason, \
                 revoked_key = excluded.revoked_key, updated_at_ms = excluded.updated_at_ms",
                params![entity.as_str(), l.status.as_str(), l.reason, l.revoked_key, now_ms()],
            ),
            None => tx.execute(
                "DELETE FROM authorization_status WHERE entity_id = ?1",
                params![entity.as_str()],
            ),
        }
        .map_err(db("change an entity's status"))?;
        tx.commit().map_err(db("commit the status list"))
    }

    fn take_report_seq(&mut self, reporter: &EntityId, seq: u64) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "INSERT INTO misbehaviour_reporters (reporter_id, last_seq) VALUES (?1, ?2) \
                 ON CONFLICT (reporter_id) DO UPDATE SET last_seq = excluded.last_seq \
                 WHERE misbehaviour_reporters.last_seq < excluded.last_seq",
                params![reporter.as_str(), u64_to_sql(seq, "report number")?],
            )
            .map_err(db("record a misbehaviour report number"))?;
        Ok(n > 0)
    }

    fn audit_append(&mut self, entry: &AuditEntry) -> Result<AuditRecord> {
        entry.validate()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("start a transaction"))?;
        let last: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("read the audit head"))?;
        let prev = last
            .map(|(s, h)| -> Result<(u64, [u8; 32])> {
                Ok((
                    u64::try_from(s).map_err(|_| Error::Corrupt("audit seq".into()))?,
                    <[u8; 32]>::try_from(h.as_slice())
                        .map_err(|_| Error::Corrupt("audit hash".into()))?,
                ))
            })
            .transpose()?;
        let rec = entry.seal_after(prev)?;
        tx.execute(
            &format!(
                "INSERT INTO audit_log ({AUDIT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                u64_to_sql(rec.seq, "audit seq")?,
                u64_to_sql(rec.time.get(), "audit time")?,
                rec.kind.as_str(),
                rec.group.as_ref().map(|g| g.as_bytes()),
                rec.entity.as_ref().map(EntityId::as_str),
                rec.detail,
                rec.prev_hash.as_slice(),
                rec.hash.as_slice()
            ],
        )
        .map_err(db("append an audit record"))?;
        tx.commit().map_err(db("commit an audit record"))?;
        Ok(rec)
    }

    fn audit_records(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {AUDIT_COLS} FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(db("read audit records"))?;
        let rows = st
            .query_map(
                params![
                    i64::try_from(from_seq).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                audit_row,
            )
            .map_err(db("read audit records"))?;
        collect(rows, "read audit records")
    }
}

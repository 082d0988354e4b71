//! [`ManagerStore`] on PostgreSQL (the synchronous rust-postgres client).
//!
//! Several manager instances may share one database. Every multi-statement
//! change is one transaction (READ COMMITTED). [`ManagerStore::advance_epoch`]
//! is a conditional `UPDATE … WHERE epoch = expected` whose row count
//! decides: a concurrent manager's `UPDATE` of the same row waits for the
//! first to commit, then re-reads the row, finds another epoch and updates
//! nothing, so it gets [`Error::Conflict`]. Audit appends take a
//! self-exclusive table lock so sequence numbers never fork.

use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls, Row};
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

const BACKEND: &str = "postgres";
/// Advisory lock that serializes schema creation and migrations.
const MIGRATION_LOCK: i64 = 0x5ea1_ca57_0000_0001;

/// The manager's store in PostgreSQL.
pub struct PgStore {
    client: Client,
    kek: Kek,
    schema: Option<String>,
    /// Inside `begin_group_update`: statements join that transaction.
    in_group_update: bool,
}

impl core::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn db(action: &'static str) -> impl Fn(postgres::Error) -> Error {
    move |e| Error::Database {
        backend: BACKEND,
        action,
        message: e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
    }
}

fn classify(e: &postgres::Error) -> DbFail {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => DbFail::Unique,
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => DbFail::ForeignKey,
        Some(c) if *c == SqlState::CHECK_VIOLATION => DbFail::Check,
        _ => DbFail::Other,
    }
}

fn col<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::Corrupt(format!("column {i}: {e}")))
}

fn check_schema_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "a schema name must be 1 to 63 characters from a-z 0-9 _, not starting with a digit"
                .to_owned(),
        ))
    }
}

impl PgStore {
    /// Connects (e.g. `postgres://user@host:5432/db`, or `host=/run/postgresql
    /// user=sealcast dbname=sealcast`), applies missing migrations and checks
    /// that `kek` is the store's KEK ([`Error::WrongKek`] otherwise). Tables
    /// live in the first schema of the connection's `search_path`.
    pub fn connect(url: &str, kek: Kek) -> Result<Self> {
        Self::connect_inner(url, None, kek)
    }

    /// Like [`connect`](Self::connect), with every table in `schema`
    /// (created if missing; `a-z 0-9 _`). Separate schemas give separate
    /// stores in one database (tenants, test runs).
    pub fn connect_in_schema(url: &str, schema: &str, kek: Kek) -> Result<Self> {
        check_schema_name(schema)?;
        Self::connect_inner(url, Some(schema.to_owned()), kek)
    }

    fn connect_inner(url: &str, schema: Option<String>, kek: Kek) -> Result<Self> {
        let mut client = Client::connect(url, NoTls).map_err(db("connect"))?;
        if let Some(s) = &schema {
            let mut tx = client.transaction().map_err(db("start a transaction"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(db("take the migration lock"))?;
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{s}\""))
                .map_err(db("create the schema"))?;
            tx.commit().map_err(db("create the schema"))?;
            client
                .batch_execute(&format!("SET search_path TO \"{s}\""))
                .map_err(db("set the search path"))?;
        }
        let mut store = Self {
            client,
            kek,
            schema,
            in_group_update: false,
        };
        store.migrate()?;
        let check = store
            .client
            .query_opt("SELECT value FROM store_meta WHERE name = 'kek_check'", &[])
            .map_err(db("read the KEK check value"))?;
        match check {
            Some(row) => store.kek.verify_check_value(&col::<Vec<u8>>(&row, 0)?)?,
            None => return Err(Error::Corrupt("the KEK check value is missing".into())),
        }
        Ok(store)
    }

    /// The schema this store was opened in, if one was named.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    fn migrate(&mut self) -> Result<()> {
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start the migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(db("take the migration lock"))?;
        tx.batch_execute(CREATE_VERSION_TABLE)
            .map_err(db("create table schema_version"))?;
        let row = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .map_err(db("read the schema version"))?;
        let current: i64 = col(&row, 0)?;
        if current > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        for (version, sql) in migrations(Dialect::Postgres) {
            if version <= current {
                continue;
            }
            tx.batch_execute(&sql).map_err(db("apply a migration"))?;
            if version == 1 {
                tx.execute(
                    "INSERT INTO store_meta (name, value) VALUES ('kek_check', $1)",
                    &[&self.kek.check_value()?],
                )
                .map_err(db("store the KEK check value"))?;
            }
            tx.execute(
                "INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)",
                &[&version, &now_ms()],
            )
            .map_err(db("record the schema version"))?;
        }
        tx.commit().map_err(db("commit the migration"))
    }
}

/// One epoch advance, applied on a connection or inside a transaction.
struct EpochChange<'a> {
    group: &'a GroupId,
    expected_current: Epoch,
    new_epoch: Epoch,
    material_alg: sealcast_core::crypto::AeadAlg,
    sealed: &'a [u8],
    sealed_tree: Option<&'a [u8]>,
}

impl EpochChange<'_> {
    fn apply(&self, c: &mut impl GenericClient) -> Result<()> {
        let EpochChange {
            group,
            expected_current,
            new_epoch,
            material_alg,
            sealed,
            sealed_tree,
        } = *self;
        // Compare-and-set: only a group still at the expected epoch moves. A
        // concurrent transaction doing the same waits on the row lock, then
        // sees the new epoch and matches nothing.
        let updated = c
            .query_opt(
                "UPDATE key_groups SET epoch = $3 WHERE group_id = $1 AND epoch = $2 RETURNING aead_alg",
                &[
                    &group.as_bytes(),
                    &epoch_to_sql(expected_current),
                    &epoch_to_sql(new_epoch),
                ],
            )
            .map_err(db("advance the epoch"))?;
        let Some(updated) = updated else {
            let actual = c
                .query_opt(
                    "SELECT epoch FROM key_groups WHERE group_id = $1",
                    &[&group.as_bytes()],
                )
                .map_err(db("read a group"))?;
            return Err(match actual {
                None => Error::NotFound {
                    what: "group",
                    id: group.to_string(),
                },
                Some(row) => Error::Conflict {
                    group: group.clone(),
                    expected: expected_current,
                    actual: epoch_from_sql(col(&row, 0)?)?,
                },
            });
        };
        check_alg(material_alg, col(&updated, 0)?)?;
        c.execute(
            "INSERT INTO epoch_material (group_id, epoch, sealed) VALUES ($1, $2, $3)",
            &[&group.as_bytes(), &epoch_to_sql(new_epoch), &sealed],
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
                "UPDATE key_groups SET tree_epoch = $2, tree_state = $3 WHERE group_id = $1",
                &[&group.as_bytes(), &epoch_to_sql(new_epoch), &t],
            )
            .map_err(db("store the tree state"))?;
        }
        Ok(())
    }
}

impl ManagerStore for PgStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn schema_version(&mut self) -> Result<i64> {
        let row = self
            .client
            .query_one("SELECT MAX(version) FROM schema_version", &[])
            .map_err(db("read the schema version"))?;
        col(&row, 0)
    }

    fn insert_entity(&mut self, entity: &EntityRecord) -> Result<()> {
        insert_entity_on(&mut self.client, entity)
    }

    fn insert_entities(&mut self, entities: &[EntityRecord]) -> Result<()> {
        // One transaction: all or none, as on SQLite.
        let mut tx = self
            .client
            .transaction()
            .map_err(db("begin enrolling entities"))?;
        for e in entities {
            insert_entity_on(&mut tx, e)?;
        }
        tx.commit().map_err(db("finish enrolling entities"))
    }

    fn update_entity(&mut self, entity: &EntityRecord) -> Result<()> {
        let cred = entity.credential.to_cose_key_set()?;
        let n = self
            .client
            .execute(
                "UPDATE entities SET kind = $2, credential = $3, agent_id = $4 WHERE entity_id = $1",
                &[
                    &entity.id().as_str(),
                    &entity.kind.as_str(),
                    &cred,
                    &entity.agent.as_ref().map(EntityId::as_str),
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
        self.client
            .query_opt(
                &format!("SELECT {ENTITY_COLS} FROM entities WHERE entity_id = $1"),
                &[&id.as_str()],
            )
            .map_err(db("read an entity"))?
            .as_ref()
            .map(entity_row)
            .transpose()
    }

    fn list_entities(&mut self) -> Result<Vec<EntityRecord>> {
        let r = self
            .client
            .query(
                &format!("SELECT {ENTITY_COLS} FROM entities ORDER BY entity_id"),
                &[],
            )
            .map_err(db("list entities"))?;
        rows(&r, entity_row)
    }

    fn remove_entity(&mut self, id: &EntityId) -> Result<bool> {
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start removing an entity"))?;
        tx.execute(
            "DELETE FROM transmission_orders WHERE entity_id = $1",
            &[&id.as_str()],
        )
        .map_err(db("remove an entity's transmission order"))?;
        let n = tx
            .execute("DELETE FROM entities WHERE entity_id = $1", &[&id.as_str()])
            .map_err(|e| match classify(&e) {
                DbFail::ForeignKey => Error::InUse {
                    what: "entity",
                    id: id.to_string(),
                },
                _ => db("remove an entity")(e),
            })?;
        if n > 0 {
            tx.execute(
                "INSERT INTO removed_entities (entity_id, removed_at_ms) VALUES ($1, $2) \
                 ON CONFLICT (entity_id) DO UPDATE SET removed_at_ms = excluded.removed_at_ms",
                &[&id.as_str(), &now_ms()],
            )
            .map_err(db("record a removed entity"))?;
        }
        tx.commit().map_err(db("finish removing an entity"))?;
        Ok(n > 0)
    }

    fn was_removed(&mut self, id: &EntityId) -> Result<bool> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM removed_entities WHERE entity_id = $1",
                &[&id.as_str()],
            )
            .map_err(db("read removed entities"))?
            .is_some())
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
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start a transaction"))?;
        tx.execute(
            "INSERT INTO key_groups (group_id, epoch, aead_alg, rekey_scheme, created_at_ms, tree_epoch, tree_state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &group.id.as_bytes(),
                &epoch_to_sql(group.epoch),
                &group.alg.cose_id(),
                &group.scheme.as_str(),
                &u64_to_sql(group.created_at.get(), "created_at")?,
                &sealed_tree.as_ref().map(|_| epoch_to_sql(group.epoch)),
                &sealed_tree,
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
                "INSERT INTO epoch_material (group_id, epoch, sealed) VALUES ($1, $2, $3)",
                &[&group.id.as_bytes(), &epoch_to_sql(group.epoch), &sealed],
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
        self.client
            .query_opt(
                &format!("SELECT {GROUP_COLS} FROM key_groups WHERE group_id = $1"),
                &[&id.as_bytes()],
            )
            .map_err(db("read a group"))?
            .as_ref()
            .map(group_row)
            .transpose()
    }

    fn list_groups(&mut self) -> Result<Vec<GroupRecord>> {
        let r = self
            .client
            .query(
                &format!("SELECT {GROUP_COLS} FROM key_groups ORDER BY group_id"),
                &[],
            )
            .map_err(db("list groups"))?;
        rows(&r, group_row)
    }

    fn remove_group(&mut self, id: &GroupId) -> Result<bool> {
        let n = self
            .client
            .execute(
                "DELETE FROM key_groups WHERE group_id = $1",
                &[&id.as_bytes()],
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
        let change = EpochChange {
            group,
            expected_current,
            new_epoch,
            material_alg,
            sealed: &sealed,
            sealed_tree: sealed_tree.as_deref(),
        };
        if self.in_group_update {
            // Part of the caller's transaction, which rolls back on error.
            return change.apply(&mut self.client);
        }
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start a transaction"))?;
        change.apply(&mut tx)?;
        // Dropping `tx` on an early return above rolls everything back.
        tx.commit().map_err(db("commit the new epoch"))
    }

    fn begin_group_update(&mut self, group: &GroupId) -> Result<()> {
        if self.in_group_update {
            return Err(Error::InvalidArgument(
                "a group update is already in progress on this connection".into(),
            ));
        }
        self.client
            .batch_execute("BEGIN")
            .map_err(db("start a transaction"))?;
        self.in_group_update = true;
        // The group's row lock: another manager's update of this group waits
        // here until this transaction ends (also when its process dies: the
        // server then ends the connection and its transaction).
        if let Err(e) = self.client.query_opt(
            "SELECT epoch FROM key_groups WHERE group_id = $1 FOR UPDATE",
            &[&group.as_bytes()],
        ) {
            let _ = self.finish_group_update(false);
            return Err(db("lock the group")(e));
        }
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
        self.client.batch_execute(sql).map_err(db(what))
    }

    fn material(&mut self, group: &GroupId, epoch: Epoch) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let row = self
            .client
            .query_opt(
                "SELECT sealed FROM epoch_material WHERE group_id = $1 AND epoch = $2",
                &[&group.as_bytes(), &epoch_to_sql(epoch)],
            )
            .map_err(db("read key material"))?;
        match row {
            None => Ok(None),
            Some(r) => {
                let sealed: &[u8] = col(&r, 0)?;
                self.kek
                    .open(Purpose::Material, group, epoch, sealed)
                    .map(Some)
            }
        }
    }

    fn material_epochs(&mut self, group: &GroupId) -> Result<Vec<Epoch>> {
        let r = self
            .client
            .query(
                "SELECT epoch FROM epoch_material WHERE group_id = $1 ORDER BY epoch",
                &[&group.as_bytes()],
            )
            .map_err(db("list key material"))?;
        rows(&r, |row| epoch_from_sql(col(row, 0)?))
    }

    fn forget_material_before(&mut self, group: &GroupId, epoch: Epoch) -> Result<u64> {
        self.client
            .execute(
                "DELETE FROM epoch_material WHERE group_id = $1 AND epoch < $2",
                &[&group.as_bytes(), &epoch_to_sql(epoch)],
            )
            .map_err(db("delete old key material"))
    }

    fn tree_state(&mut self, group: &GroupId) -> Result<Option<(Epoch, Zeroizing<Vec<u8>>)>> {
        let row = self
            .client
            .query_opt(
                "SELECT tree_epoch, tree_state FROM key_groups WHERE group_id = $1",
                &[&group.as_bytes()],
            )
            .map_err(db("read the tree state"))?;
        let Some(row) = row else { return Ok(None) };
        let epoch: Option<i64> = col(&row, 0)?;
        let state: Option<&[u8]> = col(&row, 1)?;
        match (epoch, state) {
            (Some(e), Some(s)) => {
                let e = epoch_from_sql(e)?;
                Ok(Some((e, self.kek.open(Purpose::TreeState, group, e, s)?)))
            }
            _ => Ok(None),
        }
    }

    fn insert_member(&mut self, m: &MemberRecord) -> Result<()> {
        self.client
            .execute(
                &format!("INSERT INTO members ({MEMBER_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                &[
                    &m.group.as_bytes(),
                    &m.entity.as_str(),
                    &m.role.as_str(),
                    &m.sender_id.as_ref().map(|s| s.as_bytes()),
                    &m.leaf_index.map(i64::from),
                    &m.held_epoch.map(epoch_to_sql),
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
            .client
            .execute(
                "UPDATE members SET role = $3, sender_id = $4, leaf_index = $5, held_epoch = $6 \
                 WHERE group_id = $1 AND entity_id = $2",
                &[
                    &m.group.as_bytes(),
                    &m.entity.as_str(),
                    &m.role.as_str(),
                    &m.sender_id.as_ref().map(|s| s.as_bytes()),
                    &m.leaf_index.map(i64::from),
                    &m.held_epoch.map(epoch_to_sql),
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
        self.client
            .query_opt(
                &format!(
                    "SELECT {MEMBER_COLS} FROM members WHERE group_id = $1 AND entity_id = $2"
                ),
                &[&group.as_bytes(), &entity.as_str()],
            )
            .map_err(db("read a member"))?
            .as_ref()
            .map(member_row)
            .transpose()
    }

    fn list_members(&mut self, group: &GroupId) -> Result<Vec<MemberRecord>> {
        let r = self
            .client
            .query(
                &format!(
                    "SELECT {MEMBER_COLS} FROM members WHERE group_id = $1 ORDER BY entity_id"
                ),
                &[&group.as_bytes()],
            )
            .map_err(db("list members"))?;
        rows(&r, member_row)
    }

    fn memberships(&mut self, entity: &EntityId) -> Result<Vec<MemberRecord>> {
        let r = self
            .client
            .query(
                &format!(
                    "SELECT {MEMBER_COLS} FROM members WHERE entity_id = $1 ORDER BY group_id"
                ),
                &[&entity.as_str()],
            )
            .map_err(db("list memberships"))?;
        rows(&r, member_row)
    }

    fn remove_member(&mut self, group: &GroupId, entity: &EntityId) -> Result<bool> {
        let n = self
            .client
            .execute(
                "DELETE FROM members WHERE group_id = $1 AND entity_id = $2",
                &[&group.as_bytes(), &entity.as_str()],
            )
            .map_err(db("remove a member"))?;
        Ok(n > 0)
    }

    fn set_held_epoch(&mut self, group: &GroupId, entity: &EntityId, epoch: Epoch) -> Result<()> {
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start a transaction"))?;
        let row = tx
            .query_opt(
                "SELECT g.epoch FROM members m JOIN key_groups g ON g.group_id = m.group_id \
                 WHERE m.group_id = $1 AND m.entity_id = $2 FOR UPDATE OF m",
                &[&group.as_bytes(), &entity.as_str()],
            )
            .map_err(db("read a member"))?;
        let Some(row) = row else {
            return Err(Error::NotFound {
                what: "member",
                id: format!("{group}/{entity}"),
            });
        };
        let current: i64 = col(&row, 0)?;
        if epoch_to_sql(epoch) > current {
            return Err(Error::InvalidArgument(format!(
                "member {entity} cannot hold epoch {epoch}: group {group} is at epoch {current}"
            )));
        }
        tx.execute(
            "UPDATE members SET held_epoch = $3 WHERE group_id = $1 AND entity_id = $2 \
             AND (held_epoch IS NULL OR held_epoch < $3)",
            &[&group.as_bytes(), &entity.as_str(), &epoch_to_sql(epoch)],
        )
        .map_err(db("record a held epoch"))?;
        tx.commit().map_err(db("commit a held epoch"))
    }

    fn transmission(&mut self, entity: &EntityId) -> Result<Option<TransmissionRecord>> {
        self.client
            .query_opt(
                &format!(
                    "SELECT {TRANSMISSION_COLS} FROM transmission_orders WHERE entity_id = $1"
                ),
                &[&entity.as_str()],
            )
            .map_err(db("read a transmission order"))?
            .as_ref()
            .map(transmission_row)
            .transpose()
    }

    fn pending_transmissions(&mut self) -> Result<Vec<TransmissionRecord>> {
        let found = self
            .client
            .query(
                &format!(
                    "SELECT {TRANSMISSION_COLS} FROM transmission_orders \
                     WHERE acked_version IS NULL OR acked_version < version ORDER BY entity_id"
                ),
                &[],
            )
            .map_err(db("list transmission orders"))?;
        rows(&found, transmission_row)
    }

    fn put_transmission(
        &mut self,
        record: &TransmissionRecord,
        expected: Option<u64>,
    ) -> Result<()> {
        let (version, stopped, updated) = transmission_to_sql(record)?;
        let n = match expected {
            None => self.client.execute(
                "INSERT INTO transmission_orders (entity_id, version, stopped, acked_version, updated_at_ms) \
                 VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (entity_id) DO NOTHING",
                &[&record.entity.as_str(), &version, &stopped, &updated],
            ),
            Some(prev) => {
                let prev = u64_to_sql(prev, "transmission version")?;
                self.client.execute(
                    "UPDATE transmission_orders SET version = $2, stopped = $3, updated_at_ms = $4 \
                     WHERE entity_id = $1 AND version = $5",
                    &[&record.entity.as_str(), &version, &stopped, &updated, &prev],
                )
            }
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
        let version = u64_to_sql(version, "transmission version")?;
        let n = self
            .client
            .execute(
                "UPDATE transmission_orders SET acked_version = $2 \
                 WHERE entity_id = $1 AND version = $2",
                &[&entity.as_str(), &version],
            )
            .map_err(db("record a transmission ack"))?;
        Ok(n > 0)
    }

    fn status_list(&mut self) -> Result<StatusSnapshot> {
        let version: i64 = self
            .client
            .query_one("SELECT version FROM status_list WHERE one = 1", &[])
            .map_err(db("read the status list's version"))?
            .get(0);
        let found = self
            .client
            .query(
                "SELECT entity_id, status, reason, revoked_key, updated_at_ms FROM authorization_status \
                 ORDER BY entity_id",
                &[],
            )
            .map_err(db("read the status list"))?;
        let listed = found
            .iter()
            .map(|r| {
                status_from_sql(
                    &r.get::<_, String>(0),
                    &r.get::<_, String>(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                )
            })
            .collect::<Result<_>>()?;
        Ok(StatusSnapshot {
            version: u64_from_sql(version, "status list version")?,
            listed,
        })
    }

    fn put_status(
        &mut self,
        entity: &EntityId,
        change: StatusChange<'_>,
        expected: u64,
        version: u64,
    ) -> Result<()> {
        let (v, e) = (
            u64_to_sql(version, "status list version")?,
            u64_to_sql(expected, "status list version")?,
        );
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start changing the status list"))?;
        let n = tx
            .execute(
                "UPDATE status_list SET version = $1 WHERE one = 1 AND version = $2",
                &[&v, &e],
            )
            .map_err(db("move the status list's version"))?;
        if n == 0 {
            return Err(Error::StatusConflict { expected });
        }
        match change {
            Some(l) => tx.execute(
                "INSERT INTO authorization_status (entity_id, status, reason, revoked_key, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (entity_id) DO UPDATE SET \
                 status = excluded.status, reason = excluded.reason, \
                 revoked_key = excluded.revoked_key, updated_at_ms = excluded.updated_at_ms",
                &[&entity.as_str(), &l.status.as_str(), &l.reason, &l.revoked_key, &now_ms()],
            ),
            None => tx.execute(
                "DELETE FROM authorization_status WHERE entity_id = $1",
                &[&entity.as_str()],
            ),
        }
        .map_err(db("change an entity's status"))?;
        tx.commit().map_err(db("commit the status list"))
    }

    fn take_report_seq(&mut self, reporter: &EntityId, seq: u64) -> Result<bool> {
        let seq = u64_to_sql(seq, "report number")?;
        let n = self
            .client
            .execute(
                "INSERT INTO misbehaviour_reporters (reporter_id, last_seq) VALUES ($1, $2) \
                 ON CONFLICT (reporter_id) DO UPDATE SET last_seq = excluded.last_seq \
                 WHERE misbehaviour_reporters.last_seq < excluded.last_seq",
                &[&reporter.as_str(), &seq],
            )
            .map_err(db("record a misbehaviour report number"))?;
        Ok(n > 0)
    }

    fn audit_append(&mut self, entry: &AuditEntry) -> Result<AuditRecord> {
        entry.validate()?;
        let mut tx = self
            .client
            .transaction()
            .map_err(db("start a transaction"))?;
        // Self-exclusive, but readers go on: appends from several managers
        // queue up and each sees the previous head.
        tx.batch_execute("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
            .map_err(db("lock the audit table"))?;
        let last = tx
            .query_opt(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .map_err(db("read the audit head"))?;
        let prev = match last {
            None => None,
            Some(row) => {
                let seq: i64 = col(&row, 0)?;
                let hash: &[u8] = col(&row, 1)?;
                Some((
                    u64::try_from(seq).map_err(|_| Error::Corrupt("audit seq".into()))?,
                    <[u8; 32]>::try_from(hash).map_err(|_| Error::Corrupt("audit hash".into()))?,
                ))
            }
        };
        let rec = entry.seal_after(prev)?;
        tx.execute(
            &format!(
                "INSERT INTO audit_log ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &u64_to_sql(rec.seq, "audit seq")?,
                &u64_to_sql(rec.time.get(), "audit time")?,
                &rec.kind.as_str(),
                &rec.group.as_ref().map(|g| g.as_bytes()),
                &rec.entity.as_ref().map(EntityId::as_str),
                &rec.detail.as_str(),
                &rec.prev_hash.as_slice(),
                &rec.hash.as_slice(),
            ],
        )
        .map_err(db("append an audit record"))?;
        tx.commit().map_err(db("commit an audit record"))?;
        Ok(rec)
    }

    fn audit_records(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let r = self
            .client
            .query(
                &format!(
                    "SELECT {AUDIT_COLS} FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2"
                ),
                &[
                    &i64::try_from(from_seq).unwrap_or(i64::MAX),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .map_err(db("read audit records"))?;
        rows(&r, audit_row)
    }
}

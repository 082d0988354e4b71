//! The one SQL schema both stores share, written once and rendered for each
//! dialect (SQLite: `BLOB`/`INTEGER`; PostgreSQL: `BYTEA`/`BIGINT`).
//!
//! Table `schema_version` lists the migrations applied; migration 1 creates
//! everything else. Migrations run inside one transaction each (SQLite
//! `BEGIN IMMEDIATE`; PostgreSQL under an advisory lock), so two managers
//! starting at once against one database apply each migration once.
//!
//! ```text
//! store_meta     (name PK, value)                      -- the KEK check value
//! entities       (entity_id PK, kind, credential, agent_id → entities)
//! key_groups     (group_id PK, epoch, aead_alg, rekey_scheme, created_at_ms,
//!                 tree_epoch, tree_state)               -- tree_state sealed
//! members        (group_id → key_groups, entity_id → entities, role, sender_id,
//!                 leaf_index, held_epoch;  PK (group_id, entity_id),
//!                 UNIQUE (group_id, sender_id), UNIQUE (group_id, leaf_index))
//! epoch_material (group_id → key_groups, epoch, sealed; PK (group_id, epoch))
//! audit_log      (seq PK, time_ms, kind, group_id, entity_id, detail,
//!                 prev_hash, hash)                      -- append-only (triggers)
//! transmission_orders (entity_id PK → entities, version, stopped, acked_version,
//!                 updated_at_ms)                        -- migration 2
//! removed_entities (entity_id PK, removed_at_ms)        -- migration 2: removed
//!                 with `sealcast node remove`; a config file does not bring them back
//! authorization_status (entity_id PK, status, reason, revoked_key, updated_at_ms)  -- migration 3:
//!                 suspended and revoked entities (no foreign key: a revoked entity's
//!                 enrolment is deleted, its listing and its Ed25519 key stay)
//! status_list    (one PK = 1, version)                 -- migration 3: the list's version,
//!                 written by compare-and-set
//! misbehaviour_reporters (reporter_id PK, last_seq)    -- migration 3: the newest report
//!                 number taken from each agent (a replayed report is counted once)
//! ```

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

pub(crate) const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (\
     version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)";

const MIGRATION_1: &str = r"
CREATE TABLE store_meta (
    name  TEXT PRIMARY KEY,
    value BYTES NOT NULL
);
CREATE TABLE entities (
    entity_id  TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('device', 'agent', 'headend', 'manager')),
    credential BYTES NOT NULL,
    agent_id   TEXT REFERENCES entities (entity_id)
);
CREATE INDEX entities_agent ON entities (agent_id);
CREATE TABLE key_groups (
    group_id      BYTES PRIMARY KEY,
    epoch         INT NOT NULL CHECK (epoch BETWEEN 0 AND 4294967295),
    aead_alg      INT NOT NULL,
    rekey_scheme  TEXT NOT NULL CHECK (rekey_scheme IN ('p2p', 'tree')),
    created_at_ms INT NOT NULL,
    tree_epoch    INT CHECK (tree_epoch BETWEEN 0 AND 4294967295),
    tree_state    BYTES
);
CREATE TABLE members (
    group_id   BYTES NOT NULL REFERENCES key_groups (group_id) ON DELETE CASCADE,
    entity_id  TEXT NOT NULL REFERENCES entities (entity_id),
    role       TEXT NOT NULL CHECK (role IN ('sender', 'receiver', 'relay')),
    sender_id  BYTES,
    leaf_index INT CHECK (leaf_index BETWEEN 0 AND 4294967295),
    held_epoch INT CHECK (held_epoch BETWEEN 0 AND 4294967295),
    PRIMARY KEY (group_id, entity_id),
    UNIQUE (group_id, sender_id),
    UNIQUE (group_id, leaf_index)
);
CREATE INDEX members_entity ON members (entity_id);
CREATE TABLE epoch_material (
    group_id BYTES NOT NULL REFERENCES key_groups (group_id) ON DELETE CASCADE,
    epoch    INT NOT NULL CHECK (epoch BETWEEN 0 AND 4294967295),
    sealed   BYTES NOT NULL,
    PRIMARY KEY (group_id, epoch)
);
CREATE TABLE audit_log (
    seq       INT PRIMARY KEY CHECK (seq >= 1),
    time_ms   INT NOT NULL CHECK (time_ms >= 0),
    kind      TEXT NOT NULL,
    group_id  BYTES,
    entity_id TEXT,
    detail    TEXT NOT NULL,
    prev_hash BYTES NOT NULL,
    hash      BYTES NOT NULL
);
";

const MIGRATION_1_SQLITE_TRIGGERS: &str = r"
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
";

const MIGRATION_1_PG_TRIGGERS: &str = r"
CREATE FUNCTION sealcast_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION sealcast_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION sealcast_audit_append_only();
";

/// Remote transmission control: each node's current order (the scopes it
/// must stop, as CBOR) and the newest version it acknowledged; and the
/// entities an operator removed (a tombstone until enrolled again).
const MIGRATION_2: &str = r"
CREATE TABLE transmission_orders (
    entity_id     TEXT PRIMARY KEY REFERENCES entities (entity_id),
    version       INT NOT NULL CHECK (version >= 1),
    stopped       BYTES NOT NULL,
    acked_version INT,
    updated_at_ms INT NOT NULL CHECK (updated_at_ms >= 0)
);
CREATE TABLE removed_entities (
    entity_id     TEXT PRIMARY KEY,
    removed_at_ms INT NOT NULL CHECK (removed_at_ms >= 0)
);
";

/// Authorization status: the listed entities, the list's version, and the
/// newest misbehaviour report number of each reporter.
const MIGRATION_3: &str = r"
CREATE TABLE authorization_status (
    entity_id     TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('suspended', 'revoked')),
    reason        TEXT NOT NULL,
    revoked_key   BYTES,
    updated_at_ms INT NOT NULL CHECK (updated_at_ms >= 0)
);
CREATE TABLE status_list (
    one     INT PRIMARY KEY CHECK (one = 1),
    version INT NOT NULL CHECK (version >= 0)
);
INSERT INTO status_list (one, version) VALUES (1, 0);
CREATE TABLE misbehaviour_reporters (
    reporter_id TEXT PRIMARY KEY,
    last_seq    INT NOT NULL CHECK (last_seq >= 0)
);
";

/// The SQL of every migration, in order, for `dialect`.
pub(crate) fn migrations(dialect: Dialect) -> Vec<(i64, String)> {
    let (bytes, int, triggers) = match dialect {
        Dialect::Sqlite => ("BLOB", "INTEGER", MIGRATION_1_SQLITE_TRIGGERS),
        Dialect::Postgres => ("BYTEA", "BIGINT", MIGRATION_1_PG_TRIGGERS),
    };
    let render = |sql: &str| {
        sql.replace("BYTES", bytes)
            .replace(" INT ", &format!(" {int} "))
            .replace(" INT,", &format!(" {int},"))
    };
    let m1 = render(MIGRATION_1) + triggers;
    vec![(1, m1), (2, render(MIGRATION_2)), (3, render(MIGRATION_3))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_render_their_types() {
        let pg = &migrations(Dialect::Postgres)[0].1;
        assert!(pg.contains("BYTEA") && !pg.contains("BYTES") && !pg.contains(" INT "));
        let lite = &migrations(Dialect::Sqlite)[0].1;
        assert!(lite.contains("BLOB") && lite.contains("INTEGER PRIMARY KEY"));
        assert_eq!(migrations(Dialect::Sqlite).len() as i64, SCHEMA_VERSION);
    }
}

//! Rows of the PostgreSQL tables to and from the store's records.

use super::*;

pub(super) const MEMBER_COLS: &str = "group_id, entity_id, role, sender_id, leaf_index, held_epoch";
pub(super) const GROUP_COLS: &str = "group_id, epoch, aead_alg, rekey_scheme, created_at_ms";
pub(super) const ENTITY_COLS: &str = "entity_id, kind, credential, agent_id";
pub(super) const AUDIT_COLS: &str =
    "seq, time_ms, kind, group_id, entity_id, detail, prev_hash, hash";

pub(super) fn member_row(r: &Row) -> Result<MemberRecord> {
    let group: &[u8] = col(r, 0)?;
    let entity: &str = col(r, 1)?;
    let role: &str = col(r, 2)?;
    let sender: Option<&[u8]> = col(r, 3)?;
    member_from_sql(MemberRow {
        group,
        entity,
        role,
        sender_id: sender,
        leaf_index: col(r, 4)?,
        held_epoch: col(r, 5)?,
    })
}

pub(super) fn group_row(r: &Row) -> Result<GroupRecord> {
    group_from_sql(col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?, col(r, 4)?)
}

pub(super) fn entity_row(r: &Row) -> Result<EntityRecord> {
    entity_from_sql(col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?)
}

pub(super) fn transmission_row(r: &Row) -> Result<TransmissionRecord> {
    transmission_from_sql(col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?, col(r, 4)?)
}

pub(super) fn audit_row(r: &Row) -> Result<AuditRecord> {
    audit_from_sql(
        AuditRow {
            seq: col(r, 0)?,
            time_ms: col(r, 1)?,
            kind: col(r, 2)?,
            group: col(r, 3)?,
            entity: col(r, 4)?,
            detail: col(r, 5)?,
            prev_hash: col(r, 6)?,
            hash: col(r, 7)?,
        },
        "postgres table audit_log",
    )
}

pub(super) fn rows<T>(rows: &[Row], f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Inserts one entity through `client` (the connection, or a transaction).
pub(super) fn insert_entity_on(
    client: &mut impl GenericClient,
    entity: &EntityRecord,
) -> Result<()> {
    let cred = entity.credential.to_cose_key_set()?;
    client
        .execute(
            "INSERT INTO entities (entity_id, kind, credential, agent_id) VALUES ($1, $2, $3, $4)",
            &[
                &entity.id().as_str(),
                &entity.kind.as_str(),
                &cred,
                &entity.agent.as_ref().map(EntityId::as_str),
            ],
        )
        .map_err(|e| match classify(&e) {
            DbFail::Unique => Error::AlreadyExists {
                what: "entity",
                id: entity.id().to_string(),
            },
            DbFail::ForeignKey => Error::NotFound {
                what: "agent",
                id: entity
                    .agent
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            },
            _ => db("insert an entity")(e),
        })?;
    // Enrolled again: no longer a removed entity.
    client
        .execute(
            "DELETE FROM removed_entities WHERE entity_id = $1",
            &[&entity.id().as_str()],
        )
        .map_err(db("clear a removed entity"))?;
    Ok(())
}

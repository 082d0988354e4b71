//! Rows of the SQLite tables to and from the store's records.

use super::*;

pub(super) const MEMBER_COLS: &str = "group_id, entity_id, role, sender_id, leaf_index, held_epoch";
pub(super) const GROUP_COLS: &str = "group_id, epoch, aead_alg, rekey_scheme, created_at_ms";
pub(super) const AUDIT_COLS: &str =
    "seq, time_ms, kind, group_id, entity_id, detail, prev_hash, hash";

pub(super) fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<MemberRecord>> {
    let group: Vec<u8> = r.get(0)?;
    let entity: String = r.get(1)?;
    let role: String = r.get(2)?;
    let sender: Option<Vec<u8>> = r.get(3)?;
    Ok(member_from_sql(MemberRow {
        group: &group,
        entity: &entity,
        role: &role,
        sender_id: sender.as_deref(),
        leaf_index: r.get(4)?,
        held_epoch: r.get(5)?,
    }))
}

pub(super) fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<GroupRecord>> {
    let id: Vec<u8> = r.get(0)?;
    let scheme: String = r.get(3)?;
    Ok(group_from_sql(
        &id,
        r.get(1)?,
        r.get(2)?,
        &scheme,
        r.get(4)?,
    ))
}

pub(super) fn entity_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<EntityRecord>> {
    let id: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let cred: Vec<u8> = r.get(2)?;
    let agent: Option<String> = r.get(3)?;
    Ok(entity_from_sql(&id, &kind, &cred, agent.as_deref()))
}

pub(super) fn transmission_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<TransmissionRecord>> {
    let entity: String = r.get(0)?;
    let stopped: Vec<u8> = r.get(2)?;
    Ok(transmission_from_sql(
        &entity,
        r.get(1)?,
        &stopped,
        r.get(3)?,
        r.get(4)?,
    ))
}

pub(super) fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditRecord>> {
    let kind: String = r.get(2)?;
    let group: Option<Vec<u8>> = r.get(3)?;
    let entity: Option<String> = r.get(4)?;
    let detail: String = r.get(5)?;
    let prev: Vec<u8> = r.get(6)?;
    let hash: Vec<u8> = r.get(7)?;
    Ok(audit_from_sql(
        AuditRow {
            seq: r.get(0)?,
            time_ms: r.get(1)?,
            kind: &kind,
            group: group.as_deref(),
            entity: entity.as_deref(),
            detail: &detail,
            prev_hash: &prev,
            hash: &hash,
        },
        "sqlite table audit_log",
    ))
}

pub(super) fn collect<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T>>>,
    action: &'static str,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(db(action))??);
    }
    Ok(out)
}

pub(super) fn leaf_to_sql(leaf: Option<u32>) -> Option<i64> {
    leaf.map(i64::from)
}

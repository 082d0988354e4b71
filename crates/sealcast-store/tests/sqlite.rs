#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The SQLite store: restart, migrations, compare-and-set, rollback of a
//! half-written rekey, the KEK, and what the file holds at rest.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Barrier};

use common::*;
use sealcast_core::ids::Epoch;
use sealcast_store::{Error, ManagerStore, SqliteStore};

fn open(path: &Path, kek_byte: u8) -> SqliteStore {
    SqliteStore::open(path, kek(kek_byte)).unwrap()
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    {
        let mut s = open(&path, 1);
        populate(&mut s);
        check_populated(&mut s);
    }
    // Closed; a new process opens the same file.
    let mut s = open(&path, 1);
    check_populated(&mut s);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    for _ in 0..3 {
        let mut s = open(&path, 1);
        assert_eq!(s.schema_version().unwrap(), sealcast_store::SCHEMA_VERSION);
    }
    let conn = raw(&path);
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, sealcast_store::SCHEMA_VERSION);
    // A database written by the previous version (schema 1, populated) is
    // upgraded in place and keeps what it held.
    {
        let mut s = open(&path, 1);
        populate(&mut s);
    }
    conn.execute_batch(
        "DROP TABLE transmission_orders; DROP TABLE removed_entities; \
         DROP TABLE authorization_status; DROP TABLE status_list; DROP TABLE misbehaviour_reporters; \
         DELETE FROM schema_version WHERE version >= 2;",
    )
    .unwrap();
    {
        let mut s = open(&path, 1);
        check_populated(&mut s);
        assert!(s.pending_transmissions().unwrap().is_empty());
        assert_eq!(s.status_list().unwrap().version, 0);
    }
    // A database from a newer build is refused, not mangled.
    conn.execute(
        "INSERT INTO schema_version (version, applied_at_ms) VALUES (99, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    match SqliteStore::open(&path, kek(1)) {
        Err(Error::SchemaTooNew { found: 99, .. }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn crud_edges_in_memory() {
    let mut s = SqliteStore::open_in_memory(kek(1)).unwrap();
    crud_edges(&mut s);
}

#[test]
fn batch_enrolment_is_all_or_none() {
    let mut s = SqliteStore::open_in_memory(kek(1)).unwrap();
    batch_enrolment(&mut s);
}

#[test]
fn transmission_orders_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let mut a = SqliteStore::open(&path, kek(1)).unwrap();
    let mut b = SqliteStore::open(&path, kek(1)).unwrap();
    transmission_orders(&mut a, &mut b);
}

#[test]
fn status_list_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let mut a = SqliteStore::open(&path, kek(1)).unwrap();
    let mut b = SqliteStore::open(&path, kek(1)).unwrap();
    status_list(&mut a, &mut b);
}

#[test]
fn works_as_a_trait_object() {
    let mut s: Box<dyn ManagerStore> = Box::new(SqliteStore::open_in_memory(kek(1)).unwrap());
    populate(s.as_mut());
    check_populated(s.as_mut());
    assert_eq!(s.backend(), "sqlite");
}

#[test]
fn advance_epoch_conflict() {
    let mut s = SqliteStore::open_in_memory(kek(1)).unwrap();
    conflict(&mut s);
}

#[test]
fn a_half_written_rekey_is_not_visible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    let mut s = open(&path, 1);
    let m1 = half_written_setup(&mut s);
    // Plant a row for epoch 2 behind the store's back, so the material
    // insert of the next rekey fails after the epoch UPDATE succeeded.
    raw(&path)
        .execute(
            "INSERT INTO epoch_material (group_id, epoch, sealed) VALUES (?1, 2, ?2)",
            rusqlite::params![b"half".as_slice(), vec![0u8; 40]],
        )
        .unwrap();
    half_written_check(&mut s, &m1);
    drop(s);
    // And after a restart too.
    let mut s = open(&path, 1);
    assert_eq!(s.group(&gid("half")).unwrap().unwrap().epoch, Epoch::new(3));
}

#[test]
fn wrong_kek_cannot_read_material() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    {
        let mut s = open(&path, 1);
        populate(&mut s);
    }
    // Opening under another KEK fails at once, with a typed error.
    match SqliteStore::open(&path, kek(2)) {
        Err(Error::WrongKek) => {}
        other => panic!("expected WrongKek, got {other:?}"),
    }
    // Even with the check value forged away, the material does not open:
    // an error, never other bytes.
    let conn = raw(&path);
    conn.execute("DELETE FROM store_meta", []).unwrap();
    let other = kek(2);
    let check: Vec<u8> = {
        // Re-seal a check value under the wrong KEK by opening a scratch store.
        let scratch = dir.path().join("scratch.db");
        drop(SqliteStore::open(&scratch, other).unwrap());
        raw(&scratch)
            .query_row("SELECT value FROM store_meta", [], |r| r.get(0))
            .unwrap()
    };
    conn.execute(
        "INSERT INTO store_meta (name, value) VALUES ('kek_check', ?1)",
        [check],
    )
    .unwrap();
    drop(conn);
    let mut s = open(&path, 2);
    let g = gid("grid-west");
    assert!(matches!(
        s.material(&g, Epoch::new(1)),
        Err(Error::Unseal { .. })
    ));
    assert!(matches!(s.tree_state(&g), Err(Error::Unseal { .. })));
    let msg = s.material(&g, Epoch::new(1)).unwrap_err().to_string();
    assert!(msg.contains("does not decrypt"), "{msg}");
}

#[test]
fn a_sealed_blob_moved_to_another_row_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    let mut s = open(&path, 1);
    populate(&mut s);
    // Copy epoch 0's blob over epoch 1's: same KEK, wrong row.
    raw(&path)
        .execute(
            "UPDATE epoch_material SET sealed = (SELECT sealed FROM epoch_material WHERE epoch = 0) WHERE epoch = 1",
            [],
        )
        .unwrap();
    let g = gid("grid-west");
    assert!(s.material(&g, Epoch::new(0)).unwrap().is_some());
    assert!(matches!(
        s.material(&g, Epoch::new(1)),
        Err(Error::Unseal { .. })
    ));
}

#[test]
fn the_database_holds_no_plaintext_master_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    let g = gid("grid-west");
    let mut secrets = Vec::new();
    {
        let mut s = open(&path, 1);
        populate(&mut s);
        secrets.push(material(&g, 0, 10).1);
        secrets.push(material(&g, 1, 11).1);
        for e in 2..10u32 {
            let (m, secret) = material(&g, e, 100 + u64::from(e));
            s.advance_epoch(&g, Epoch::new(e - 1), Epoch::new(e), &m, Some(b"tree"))
                .unwrap();
            assert_eq!(
                s.material(&g, Epoch::new(e)).unwrap().unwrap().as_slice(),
                m
            );
            secrets.push(secret);
        }
    }
    // Every file SQLite wrote (main file and any -wal / -shm left over).
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(bytes.len() > 4096);
    // Control: the search does find a secret where it is in the clear.
    let (cbor, secret) = material(&g, 1, 11);
    assert!(cbor.windows(32).any(|w| w == secret.as_slice()));
    for secret in &secrets {
        assert_eq!(secret.len(), 32);
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "a master secret is stored in the clear"
        );
        // Nor any 12-byte piece of it.
        assert!(!bytes.windows(12).any(|w| w == &secret[..12]));
    }
    // The tree state is sealed too.
    assert!(!bytes.windows(7).any(|w| w == b"tree v1"));
}

#[test]
fn audit_table_chain_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    let mut s = open(&path, 1);
    audit_table(&mut s);
    // The table refuses changes…
    let conn = raw(&path);
    assert!(
        conn.execute("UPDATE audit_log SET detail = 'x' WHERE seq = 3", [])
            .is_err()
    );
    assert!(
        conn.execute("DELETE FROM audit_log WHERE seq = 7", [])
            .is_err()
    );
    // …and someone who drops the triggers is caught by the chain.
    conn.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .unwrap();
    conn.execute(
        "UPDATE audit_log SET detail = 'delivery 9' WHERE seq = 4",
        [],
    )
    .unwrap();
    match s.audit_verify(None) {
        Err(Error::AuditBroken { record: 4, .. }) => {}
        other => panic!("expected a break at record 4, got {other:?}"),
    }
    conn.execute(
        "UPDATE audit_log SET detail = 'delivery 2' WHERE seq = 4",
        [],
    )
    .unwrap();
    s.audit_verify(None).unwrap();
    conn.execute("DELETE FROM audit_log WHERE seq = 5", [])
        .unwrap();
    match s.audit_verify(None) {
        Err(Error::AuditBroken { record: 5, .. }) => {}
        other => panic!("expected a break at record 5, got {other:?}"),
    }
}

#[test]
fn two_managers_on_one_file_race_to_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manager.db");
    let g = gid("race");
    {
        let mut s = open(&path, 1);
        let (m0, _) = material(&g, 0, 1);
        s.create_group(&group("race", 0), Some(&m0), None).unwrap();
    }
    const ROUNDS: u32 = 30;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let path = path.clone();
            let g = g.clone();
            std::thread::spawn(move || {
                let mut s = open(&path, 1);
                let mut won = Vec::new();
                for r in 0..ROUNDS {
                    let (m, _) = material(&g, r + 1, 1000 * (t + 1) + u64::from(r));
                    barrier.wait();
                    match s.advance_epoch(&g, Epoch::new(r), Epoch::new(r + 1), &m, None) {
                        Ok(()) => won.push(true),
                        Err(Error::Conflict { .. }) => won.push(false),
                        Err(e) => panic!("round {r}: {e}"),
                    }
                }
                won
            })
        })
        .collect();
    let results: Vec<Vec<bool>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut s = open(&path, 1);
    for r in 0..ROUNDS {
        let winners: Vec<u64> = (0..2u64)
            .filter(|&t| results[t as usize][r as usize])
            .collect();
        assert_eq!(winners.len(), 1, "round {r}: winners {winners:?}");
        let (expect, _) = material(&g, r + 1, 1000 * (winners[0] + 1) + u64::from(r));
        assert_eq!(
            s.material(&g, Epoch::new(r + 1))
                .unwrap()
                .unwrap()
                .as_slice(),
            expect
        );
    }
    assert_eq!(s.group(&g).unwrap().unwrap().epoch, Epoch::new(ROUNDS));
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The PostgreSQL store. Needs a server: set `SEALCAST_PG_URL` (CI uses
//! `postgres://postgres@127.0.0.1:5432/test`). Without it each test prints a
//! NOT RUN banner, or fails when `SEALCAST_REQUIRE_EXTERNAL=1`.
//!
//! Every test works in its own fresh schema `sealcast_test_<pid>_<n>_<nanos>`
//! and drops it at the end, so tests run in parallel without colliding.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};

use common::*;
use sealcast_core::ids::Epoch;
use sealcast_store::{Error, ManagerStore, PgStore};

const WHY: &str = "a PostgreSQL server (CI uses postgres://postgres@127.0.0.1:5432/test)";

/// A fresh schema, dropped when the guard goes.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(test: &str) -> Option<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let url = sealcast_testkit::require("SEALCAST_PG_URL", test, WHY)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "sealcast_test_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Some(Self { url, name })
    }

    fn open(&self, kek_byte: u8) -> PgStore {
        PgStore::connect_in_schema(&self.url, &self.name, kek(kek_byte)).unwrap()
    }

    /// A plain client inside the schema, to go behind the store's back.
    fn raw(&self) -> postgres::Client {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        c.batch_execute(&format!("SET search_path TO \"{}\"", self.name))
            .unwrap();
        c
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        }
    }
}

#[test]
fn pg_state_survives_a_restart_and_migrations_are_idempotent() {
    let Some(schema) = Schema::new("pg_state_survives_a_restart") else {
        return;
    };
    {
        let mut s = schema.open(1);
        populate(&mut s);
        check_populated(&mut s);
    }
    for _ in 0..2 {
        let mut s = schema.open(1);
        check_populated(&mut s);
    }
    let rows: i64 = schema
        .raw()
        .query_one("SELECT COUNT(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, sealcast_store::SCHEMA_VERSION);
}

#[test]
fn pg_crud_edges() {
    let Some(schema) = Schema::new("pg_crud_edges") else {
        return;
    };
    let mut s: Box<dyn ManagerStore> = Box::new(schema.open(1));
    assert_eq!(s.backend(), "postgres");
    crud_edges(s.as_mut());
}

#[test]
fn pg_batch_enrolment_is_all_or_none() {
    let Some(schema) = Schema::new("pg_batch_enrolment") else {
        return;
    };
    batch_enrolment(&mut schema.open(1));
}

#[test]
fn pg_transmission_orders_compare_and_set() {
    let Some(schema) = Schema::new("pg_transmission_orders") else {
        return;
    };
    transmission_orders(&mut schema.open(1), &mut schema.open(1));
}

#[test]
fn pg_status_list_compare_and_set() {
    let Some(schema) = Schema::new("pg_status_list") else {
        return;
    };
    status_list(&mut schema.open(1), &mut schema.open(1));
}

#[test]
fn pg_advance_epoch_conflict() {
    let Some(schema) = Schema::new("pg_advance_epoch_conflict") else {
        return;
    };
    conflict(&mut schema.open(1));
}

#[test]
fn pg_a_half_written_rekey_is_not_visible() {
    let Some(schema) = Schema::new("pg_a_half_written_rekey_is_not_visible") else {
        return;
    };
    let mut s = schema.open(1);
    let m1 = half_written_setup(&mut s);
    schema
        .raw()
        .execute(
            "INSERT INTO epoch_material (group_id, epoch, sealed) VALUES ($1, 2, $2)",
            &[&b"half".as_slice(), &vec![0u8; 40]],
        )
        .unwrap();
    half_written_check(&mut s, &m1);
    drop(s);
    let mut s = schema.open(1);
    assert_eq!(s.group(&gid("half")).unwrap().unwrap().epoch, Epoch::new(3));
}

#[test]
fn pg_wrong_kek_and_no_plaintext_at_rest() {
    let Some(schema) = Schema::new("pg_wrong_kek") else {
        return;
    };
    {
        let mut s = schema.open(1);
        populate(&mut s);
    }
    match PgStore::connect_in_schema(&schema.url, &schema.name, kek(2)) {
        Err(Error::WrongKek) => {}
        other => panic!("expected WrongKek, got {other:?}"),
    }
    // What the database holds for the material: no master secret in it.
    let g = gid("grid-west");
    let mut raw = schema.raw();
    let rows = raw
        .query("SELECT sealed FROM epoch_material ORDER BY epoch", &[])
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (row, (epoch, seed)) in rows.iter().zip([(0u32, 10u64), (1, 11)]) {
        let sealed: Vec<u8> = row.get(0);
        let secret = material(&g, epoch, seed).1;
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()));
    }
    // A blob moved to another row does not open.
    raw.execute(
        "UPDATE epoch_material SET sealed = (SELECT sealed FROM epoch_material WHERE epoch = 0) WHERE epoch = 1",
        &[],
    )
    .unwrap();
    let mut s = schema.open(1);
    assert!(s.material(&g, Epoch::new(0)).unwrap().is_some());
    assert!(matches!(
        s.material(&g, Epoch::new(1)),
        Err(Error::Unseal { .. })
    ));
}

#[test]
fn pg_audit_table() {
    let Some(schema) = Schema::new("pg_audit_table") else {
        return;
    };
    let mut s = schema.open(1);
    audit_table(&mut s);
    let mut raw = schema.raw();
    assert!(
        raw.execute("UPDATE audit_log SET detail = 'x' WHERE seq = 3", &[])
            .is_err()
    );
    assert!(raw.batch_execute("TRUNCATE audit_log").is_err());
    raw.batch_execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        .unwrap();
    raw.execute("UPDATE audit_log SET time_ms = 99 WHERE seq = 6", &[])
        .unwrap();
    match s.audit_verify(None) {
        Err(Error::AuditBroken { record: 6, .. }) => {}
        other => panic!("expected a break at record 6, got {other:?}"),
    }
}

/// Two manager instances (two connections) race to rekey the same group
/// from the same expected epoch, round after round: exactly one wins each
/// round, and the stored material is the winner's.
#[test]
fn pg_race_two_managers_one_key_per_epoch() {
    let Some(schema) = Schema::new("pg_race_two_managers_one_key_per_epoch") else {
        return;
    };
    let g = gid("race");
    {
        let mut s = schema.open(1);
        let (m0, _) = material(&g, 0, 1);
        s.create_group(&group("race", 0), Some(&m0), None).unwrap();
    }
    const ROUNDS: u32 = 50;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let mut s = schema.open(1);
            let g = g.clone();
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for r in 0..ROUNDS {
                    let (m, _) = material(&g, r + 1, 1000 * (t + 1) + u64::from(r));
                    barrier.wait();
                    match s.advance_epoch(&g, Epoch::new(r), Epoch::new(r + 1), &m, None) {
                        Ok(()) => won.push(true),
                        Err(Error::Conflict { actual, .. }) => {
                            assert_eq!(actual, Epoch::new(r + 1));
                            won.push(false);
                        }
                        Err(e) => panic!("round {r}: {e}"),
                    }
                }
                won
            })
        })
        .collect();
    let results: Vec<Vec<bool>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut s = schema.open(1);
    let mut wins = [0u32; 2];
    for r in 0..ROUNDS {
        let winners: Vec<u64> = (0..2u64)
            .filter(|&t| results[t as usize][r as usize])
            .collect();
        assert_eq!(winners.len(), 1, "round {r}: winners {winners:?}");
        wins[winners[0] as usize] += 1;
        let (expect, _) = material(&g, r + 1, 1000 * (winners[0] + 1) + u64::from(r));
        assert_eq!(
            s.material(&g, Epoch::new(r + 1))
                .unwrap()
                .unwrap()
                .as_slice(),
            expect,
            "round {r}: stored material is not the winner's"
        );
    }
    assert_eq!(s.group(&g).unwrap().unwrap().epoch, Epoch::new(ROUNDS));
    assert_eq!(s.material_epochs(&g).unwrap().len(), ROUNDS as usize + 1);
    eprintln!("race wins per manager: {wins:?}");
}

/// Concurrent audit appends from two managers keep one unbroken chain.
#[test]
fn pg_concurrent_audit_appends_keep_one_chain() {
    let Some(schema) = Schema::new("pg_concurrent_audit_appends") else {
        return;
    };
    drop(schema.open(1));
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let mut s = schema.open(1);
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    s.audit_append(&sealcast_store::AuditEntry::new(
                        sealcast_core::ids::UnixMillis::new(i),
                        sealcast_store::AuditKind::Ack,
                        format!("manager {t} ack {i}"),
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let summary = schema.open(1).audit_verify(None).unwrap();
    assert_eq!(summary.records, 50);
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The file-backed audit log: every kind of tampering is found and the first
//! bad record is named; cutting the tail is caught against an anchor.

use std::path::{Path, PathBuf};

use sealcast_core::ids::{EntityId, GroupId, UnixMillis};
use sealcast_store::{
    AuditAnchor, AuditEntry, AuditKind, AuditLog, AuditRecord, Error, verify_audit_file,
    verify_audit_file_anchored,
};

const N: u64 = 8;

/// A log of N records of every kind; returns its path and the head.
fn make_log(dir: &Path) -> (PathBuf, AuditAnchor) {
    let path = dir.join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    let g = GroupId::new(b"grid-west").unwrap();
    let kinds = [
        AuditKind::Enrol,
        AuditKind::Join,
        AuditKind::Rekey,
        AuditKind::Delivery,
        AuditKind::Ack,
        AuditKind::Evict,
        AuditKind::Other("transmission-stop".into()),
        AuditKind::Rekey,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let i = i as u64;
        let mut e = AuditEntry::new(
            UnixMillis::new(1_700_000_000_000 + i),
            kind,
            format!("action {} — ünïcode \"quoted\"", i + 1),
        );
        if i.is_multiple_of(2) {
            e = e.with_group(g.clone());
        }
        if i.is_multiple_of(3) {
            e = e.with_entity(EntityId::new(&format!("meter-{i}")).unwrap());
        }
        let rec = log.append(&e).unwrap();
        assert_eq!(rec.seq, i + 1);
    }
    (path, log.head().unwrap())
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn broken_at(path: &Path) -> (u64, String) {
    let result = verify_audit_file(path);
    if let Err(e) = &result
        && let Error::AuditBroken { record, .. } = e
    {
        return (*record, e.to_string());
    }
    panic!("expected AuditBroken, got {result:?}")
}

#[test]
fn an_intact_log_verifies_and_reports_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = make_log(dir.path());
    let s = verify_audit_file(&path).unwrap();
    assert_eq!(s.records, N);
    assert_eq!(s.head, Some(head));
    assert_eq!(s.first_time, Some(UnixMillis::new(1_700_000_000_000)));
    assert_eq!(
        s.last_time,
        Some(UnixMillis::new(1_700_000_000_000 + N - 1))
    );
    assert_eq!(s.head_hash_hex().len(), 64);
    verify_audit_file_anchored(&path, head).unwrap();
    // Reopening continues the chain.
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.head(), Some(head));
    let rec = log
        .append(&AuditEntry::new(
            UnixMillis::new(5),
            AuditKind::Ack,
            "late ack",
        ))
        .unwrap();
    assert_eq!(rec.seq, N + 1);
    assert_eq!(rec.prev_hash, head.hash);
    assert_eq!(verify_audit_file(&path).unwrap().records, N + 1);
    // The earlier anchor still holds for a log that only grew.
    verify_audit_file_anchored(&path, head).unwrap();
    // An empty log verifies with no head.
    let empty = dir.path().join("empty.jsonl");
    drop(AuditLog::open(&empty).unwrap());
    let s = verify_audit_file(&empty).unwrap();
    assert_eq!((s.records, s.head), (0, None));
}

#[test]
fn an_edited_detail_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let mut l = lines(&path);
    let mut v: serde_json::Value = serde_json::from_str(&l[2]).unwrap();
    v["detail"] = "action 3 (nothing to see)".into();
    l[2] = v.to_string();
    write_lines(&path, &l);
    let (record, msg) = broken_at(&path);
    assert_eq!(record, 3);
    assert!(msg.contains("record 3") && msg.contains("edited"), "{msg}");
}

#[test]
fn every_edited_field_is_found() {
    for (field, value) in [
        ("time_ms", serde_json::json!(1)),
        ("kind", serde_json::json!("ack")),
        ("group", serde_json::json!("aa")),
        ("entity", serde_json::json!("meter-99")),
        ("seq", serde_json::json!(5)),
        ("prev_hash", serde_json::json!("00".repeat(32))),
        ("hash", serde_json::json!("11".repeat(32))),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make_log(dir.path());
        let mut l = lines(&path);
        let mut v: serde_json::Value = serde_json::from_str(&l[3]).unwrap();
        v[field] = value;
        l[3] = v.to_string();
        write_lines(&path, &l);
        let (record, msg) = broken_at(&path);
        assert_eq!(record, 4, "field {field}: {msg}");
    }
}

#[test]
fn a_removed_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let (record, msg) = broken_at(&path);
    assert_eq!(record, 5);
    assert!(msg.contains("removed"), "{msg}");
    // The first record too.
    let (path, _) = make_log(&dir.path().join("x").tap_mkdir());
    let mut l = lines(&path);
    l.remove(0);
    write_lines(&path, &l);
    assert_eq!(broken_at(&path).0, 1);
}

#[test]
fn swapped_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let mut l = lines(&path);
    l.swap(5, 6);
    write_lines(&path, &l);
    let (record, msg) = broken_at(&path);
    assert_eq!(record, 6);
    assert!(msg.contains("reordered"), "{msg}");
}

#[test]
fn an_inserted_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let orig = lines(&path);

    // A copy of an earlier record slipped in after record 3.
    let mut l = orig.clone();
    l.insert(3, orig[1].clone());
    write_lines(&path, &l);
    let (record, msg) = broken_at(&path);
    assert_eq!(record, 4);
    assert!(msg.contains("inserted"), "{msg}");

    // A forged record with a made-up hash, numbered to fit.
    let mut forged: serde_json::Value = serde_json::from_str(&orig[3]).unwrap();
    forged["detail"] = "forged".into();
    let mut l = orig.clone();
    l.insert(3, forged.to_string());
    write_lines(&path, &l);
    assert_eq!(broken_at(&path).0, 4);

    // A forged record chained correctly onto record 3 (anyone can compute
    // an unkeyed hash): it passes, and the break shows at the next record,
    // whose place it took.
    let rec3 = AuditRecord::from_json_line(orig[2].as_bytes()).unwrap();
    let mut rec = AuditRecord::from_json_line(orig[3].as_bytes()).unwrap();
    rec.detail = "forged but chained".into();
    rec.prev_hash = rec3.hash;
    rec.hash = rec.compute_hash();
    let mut l = orig.clone();
    l.insert(3, rec.to_json_line());
    write_lines(&path, &l);
    let (record, _) = broken_at(&path);
    assert_eq!(record, 5);
}

#[test]
fn a_cut_in_the_middle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let mut l = lines(&path);
    l.drain(2..5);
    write_lines(&path, &l);
    let (record, msg) = broken_at(&path);
    assert_eq!(record, 3);
    assert!(msg.contains("sequence number 6 where 3 belongs"), "{msg}");
}

#[test]
fn a_cut_tail_is_caught_by_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = make_log(dir.path());
    let mut l = lines(&path);
    l.truncate(5);
    write_lines(&path, &l);
    // On its own the shorter chain is valid; the head says where it ends.
    let s = verify_audit_file(&path).unwrap();
    assert_eq!(s.records, 5);
    assert_ne!(s.head, Some(head));
    match verify_audit_file_anchored(&path, head) {
        Err(e @ Error::AuditAnchorMismatch { .. }) => {
            assert!(e.to_string().contains("cut off the end"), "{e}");
        }
        other => panic!("expected AuditAnchorMismatch, got {other:?}"),
    }
}

#[test]
fn a_rewritten_chain_is_caught_by_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = make_log(dir.path());
    // Rewrite record 2 and re-chain everything after it.
    let mut recs: Vec<AuditRecord> = lines(&path)
        .iter()
        .map(|l| AuditRecord::from_json_line(l.as_bytes()).unwrap())
        .collect();
    recs[1].detail = "history rewritten".into();
    for i in 1..recs.len() {
        recs[i].prev_hash = recs[i - 1].hash;
        recs[i].hash = recs[i].compute_hash();
    }
    write_lines(
        &path,
        &recs
            .iter()
            .map(AuditRecord::to_json_line)
            .collect::<Vec<_>>(),
    );
    assert_eq!(verify_audit_file(&path).unwrap().records, N);
    assert!(matches!(
        verify_audit_file_anchored(&path, head),
        Err(Error::AuditAnchorMismatch { .. })
    ));
    // The anchor's text form is what an operator copies around.
    let parsed: AuditAnchor = head.to_string().parse().unwrap();
    assert_eq!(parsed, head);
}

#[test]
fn malformed_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let orig = lines(&path);
    for (i, bad) in [
        (2usize, "not json".to_owned()),
        (2, String::new()),
        (2, "[1,2]".to_owned()),
        (2, {
            let mut v: serde_json::Value = serde_json::from_str(&orig[2]).unwrap();
            v["extra"] = "smuggled".into();
            v.to_string()
        }),
        (2, "x".repeat(70_000)),
    ] {
        let mut l = orig.clone();
        l[i] = bad;
        write_lines(&path, &l);
        assert_eq!(broken_at(&path).0, 3);
    }
}

#[test]
fn a_torn_last_line_is_reported_and_can_be_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = make_log(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(br#"{"seq":9,"time_ms":1,"ki"#);
    std::fs::write(&path, &bytes).unwrap();
    let (record, msg) = broken_at(&path);
    assert_eq!(record, N + 1);
    assert!(msg.contains("incomplete"), "{msg}");
    // A manager does not append after a torn line…
    assert!(matches!(
        AuditLog::open(&path),
        Err(Error::AuditBroken { .. })
    ));
    // …unless told to cut it.
    let (mut log, cut) = AuditLog::open_cutting_torn_tail(&path).unwrap();
    assert!(cut);
    assert_eq!(log.head(), Some(head));
    log.append(&AuditEntry::new(
        UnixMillis::new(9),
        AuditKind::Ack,
        "after the crash",
    ))
    .unwrap();
    assert_eq!(verify_audit_file(&path).unwrap().records, N + 1);
    // Cutting never hides tampering before the torn line.
    let mut l = lines(&path);
    l.swap(0, 1);
    let mut text = l.join("\n");
    text.push_str("\n{\"partial");
    std::fs::write(&path, text).unwrap();
    assert!(AuditLog::open_cutting_torn_tail(&path).is_err());
}

#[test]
fn a_broken_log_is_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_log(dir.path());
    let mut l = lines(&path);
    l.remove(1);
    write_lines(&path, &l);
    match AuditLog::open(&path) {
        Err(Error::AuditBroken { record: 2, .. }) => {}
        other => panic!("expected AuditBroken at 2, got {other:?}"),
    }
}

#[test]
fn details_with_control_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(dir.path().join("a.jsonl")).unwrap();
    for bad in ["two\nlines", "escape \x1b[31m", "nul \0"] {
        assert!(matches!(
            log.append(&AuditEntry::new(UnixMillis::new(1), AuditKind::Ack, bad)),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(
        log.append(&AuditEntry::new(
            UnixMillis::new(1),
            AuditKind::Other("UPPER".into()),
            "x"
        ))
        .is_err()
    );
    assert!(log.head().is_none());
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `sealcast audit verify` on a log written by the store's `AuditLog`: an
//! intact log passes and prints its head; an edited, reordered or truncated
//! one fails with a one-line error naming the problem.

use std::process::Command;

use sealcast_core::ids::{EntityId, GroupId, UnixMillis};
use sealcast_store::{AuditEntry, AuditKind, AuditLog};

fn sealcast(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sealcast"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_log(path: &std::path::Path) {
    let mut log = AuditLog::open(path).unwrap();
    let g = GroupId::new(b"fire-doors").unwrap();
    let kinds = [
        AuditKind::Enrol,
        AuditKind::Join,
        AuditKind::Delivery,
        AuditKind::Ack,
        AuditKind::Evict,
        AuditKind::Rekey,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let entry = AuditEntry::new(
            UnixMillis::new(1_700_000_000_000 + i as u64),
            kind,
            format!("step {i}"),
        )
        .with_group(g.clone())
        .with_entity(EntityId::new("door-17").unwrap());
        log.append(&entry).unwrap();
    }
}

#[test]
fn intact_log_passes_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path);
    let p = path.to_str().unwrap();

    let (ok, stdout, stderr) = sealcast(&["audit", "verify", p]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("is intact: 6 records"), "{stdout}");
    let head = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("head "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let (ok, _, stderr) = sealcast(&["audit", "verify", p, "--anchor", &head]);
    assert!(ok, "{stderr}");

    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    // An edited detail.
    std::fs::write(&path, original.replacen("step 3", "step X", 1)).unwrap();
    let (ok, _, stderr) = sealcast(&["audit", "verify", p]);
    assert!(!ok);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("NOT intact") && stderr.contains('4'),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));

    // Two records swapped.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    std::fs::write(&path, swapped.join("\n") + "\n").unwrap();
    let (ok, _, stderr) = sealcast(&["audit", "verify", p]);
    assert!(!ok, "{stderr}");

    // The last record cut off: only the anchor notices.
    std::fs::write(&path, lines[..5].join("\n") + "\n").unwrap();
    let (ok, _, _) = sealcast(&["audit", "verify", p]);
    assert!(ok, "a cut tail is invisible without an anchor");
    let (ok, _, stderr) = sealcast(&["audit", "verify", p, "--anchor", &head]);
    assert!(!ok, "the anchor must catch a cut tail: {stderr}");

    // A malformed anchor is a usage error.
    let (ok, _, stderr) = sealcast(&["audit", "verify", p, "--anchor", "nonsense"]);
    assert!(!ok && stderr.contains("SEQ:HASH"), "{stderr}");
}

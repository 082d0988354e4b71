#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Device state files (atomic, 0600) and KEK files (refused when readable
//! by others).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use sealcast_store::statefile::MAX_STATE_FILE_LEN;
use sealcast_store::{DeviceStateFile, Error, Kek, write_atomic};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn state_files_are_0600_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let f = DeviceStateFile::new(dir.path().join("node.state"));
    assert!(f.read().unwrap().is_none());
    f.write(b"epoch=3").unwrap();
    assert_eq!(mode(f.path()), 0o600);
    assert_eq!(f.read().unwrap().unwrap().as_slice(), b"epoch=3");
    // Replacing a file someone made world-readable leaves a 0600 file.
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    f.write(b"epoch=4").unwrap();
    assert_eq!(mode(f.path()), 0o600);
    assert_eq!(f.read().unwrap().unwrap().as_slice(), b"epoch=4");
    // No temporary file stays behind.
    assert_eq!(names(dir.path()), ["node.state"]);
    f.remove().unwrap();
    f.remove().unwrap();
    assert!(f.read().unwrap().is_none());
}

#[test]
fn write_atomic_uses_the_requested_mode() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("public.cose");
    write_atomic(&p, b"public", 0o644).unwrap();
    assert_eq!(mode(&p), 0o644);
    write_atomic(&p, b"private", 0o400).unwrap();
    assert_eq!(mode(&p), 0o400);
    assert_eq!(std::fs::read(&p).unwrap(), b"private");
    // A path without a file name is refused.
    assert!(write_atomic(Path::new("/"), b"x", 0o600).is_err());
    // A missing directory is an error, and leaves nothing behind.
    let missing = dir.path().join("nope").join("f");
    assert!(matches!(
        write_atomic(&missing, b"x", 0o600),
        Err(Error::Io { .. })
    ));
}

#[test]
fn a_crash_leftover_temp_file_does_not_corrupt_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let f = DeviceStateFile::new(dir.path().join("node.state"));
    f.write(b"good state").unwrap();
    // What a crash between create and rename leaves: a half-written temp.
    let leftover = dir.path().join(".node.state.tmp.00112233deadbeef");
    std::fs::write(&leftover, b"half wri").unwrap();
    assert_eq!(f.read().unwrap().unwrap().as_slice(), b"good state");
    // Writing again works beside it and does not pick it up.
    f.write(b"newer state").unwrap();
    assert_eq!(f.read().unwrap().unwrap().as_slice(), b"newer state");
    // Start-up clean-up removes only this file's leftovers.
    let other = dir.path().join(".other.tmp.0011");
    std::fs::write(&other, b"x").unwrap();
    assert_eq!(f.remove_stale_temps().unwrap(), 1);
    assert!(!leftover.exists());
    assert!(other.exists());
    assert_eq!(f.remove_stale_temps().unwrap(), 0);
}

#[test]
fn content_is_just_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let f = DeviceStateFile::new(dir.path().join("s"));
    let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for content in [&[][..], b"\0\0\0", b"\n{\"json\":true}\n", &all] {
        f.write(content).unwrap();
        assert_eq!(f.read().unwrap().unwrap().as_slice(), content);
    }
}

#[test]
fn an_oversized_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big");
    let file = std::fs::File::create(&p).unwrap();
    file.set_len(MAX_STATE_FILE_LEN + 1).unwrap();
    assert!(matches!(
        DeviceStateFile::new(&p).read(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn kek_files_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let kek = Kek::generate().unwrap();
    let p = dir.path().join("kek.hex");
    kek.write_file(&p).unwrap();
    assert_eq!(mode(&p), 0o600);
    let back = Kek::from_file(&p).unwrap();
    assert_eq!(back.to_hex(), kek.to_hex());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
    Kek::from_file(&p).unwrap();
    for bad in [0o644, 0o640, 0o604, 0o660, 0o700] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bad)).unwrap();
        match Kek::from_file(&p) {
            Err(e @ Error::KekFilePermissions { .. }) => {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
            other => panic!("mode {bad:o}: expected KekFilePermissions, got {other:?}"),
        }
    }
}

#[test]
fn kek_file_formats() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("kek");
    // 32 raw bytes.
    write_atomic(&p, &[0xa5; 32], 0o600).unwrap();
    assert_eq!(
        Kek::from_file(&p).unwrap().to_hex().as_str(),
        "a5".repeat(32)
    );
    // Hex with white space around it, upper case.
    write_atomic(&p, format!("  {}\n", "AB".repeat(32)).as_bytes(), 0o600).unwrap();
    assert_eq!(
        Kek::from_file(&p).unwrap().to_hex().as_str(),
        "ab".repeat(32)
    );
    // Wrong lengths and non-hex: refused, and the message never echoes it.
    for bad in [
        "abcd".to_owned(),
        "zz".repeat(32),
        "ab".repeat(33),
        "ab".repeat(16),
    ] {
        write_atomic(&p, bad.as_bytes(), 0o600).unwrap();
        match Kek::from_file(&p) {
            Err(e @ Error::KekFormat { .. }) => assert!(!e.to_string().contains(&bad)),
            other => panic!("expected KekFormat, got {other:?}"),
        }
    }
    assert!(matches!(
        Kek::from_file(dir.path()),
        Err(Error::KekFormat { .. } | Error::Io { .. })
    ));
    assert!(matches!(
        Kek::from_file(dir.path().join("absent")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn kek_from_env_reports_a_missing_variable() {
    let var = "SEALCAST_TEST_KEK_SURELY_UNSET_8c1f";
    match Kek::from_env(var) {
        Err(e @ Error::KekMissing { .. }) => assert!(e.to_string().contains(var)),
        other => panic!("expected KekMissing, got {other:?}"),
    }
    // Debug never shows key bytes.
    let kek = Kek::from_hex(&"5a".repeat(32)).unwrap();
    let dbg = format!("{kek:?}");
    assert!(!dbg.contains("5a") && !dbg.contains("90"), "{dbg}");
}

const CHILD_VAR: &str = "SEALCAST_STORE_TEST_KEK_VALUE";

/// Runs only inside the child process [`kek_from_env_reads_hex`] starts
/// (setting a variable in this process would need `unsafe`).
#[test]
fn kek_from_env_child() {
    let Ok(expected) = std::env::var("SEALCAST_STORE_TEST_KEK_EXPECT") else {
        return;
    };
    match Kek::from_env(CHILD_VAR) {
        Ok(k) => assert_eq!(k.to_hex().as_str(), expected),
        Err(e) => assert_eq!(expected, "error", "{e}"),
    }
}

#[test]
fn kek_from_env_reads_hex() {
    let exe = std::env::current_exe().unwrap();
    for (value, expect) in [
        (format!("{}\n", "C0".repeat(32)), "c0".repeat(32)),
        ("c0ffee".to_owned(), "error".to_owned()),
        ("   ".to_owned(), "error".to_owned()),
    ] {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "kek_from_env_child", "--test-threads=1"])
            .env(CHILD_VAR, &value)
            .env("SEALCAST_STORE_TEST_KEK_EXPECT", &expect)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}

//! End-to-end tests of the `sealcast` command: the built binary, run in a
//! temporary directory, the way a person or a script runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sealcast_core::credential::EntityCredential;
use sealcast_core::groupkey::GroupKeyMaterial;

const BIN: &str = env!("CARGO_BIN_EXE_sealcast");

/// The walkthrough of docs/CLI.md, line for line. `echo 'TEXT' | ` feeds
/// TEXT and a newline to standard input; `# fails` marks a line that must
/// fail.
const WALKTHROUGH: &[&str] = &[
    "sealcast keygen --id door-gw",
    "sealcast keygen --id door-17",
    "sealcast group create --group fire-doors --epoch 1 --signer door-gw=door-gw.pub:01 --valid-for 30d --out fire-doors.gk",
    "echo 'unlock all' | sealcast seal --group-key fire-doors.gk --key door-gw.key --target doors/unlock --seq-state door-gw.seq --out cmd.cose",
    "sealcast open --group-key fire-doors.gk --target doors/unlock --replay-state door-17.replay --in cmd.cose",
    "sealcast open --group-key fire-doors.gk --target doors/unlock --replay-state door-17.replay --in cmd.cose   # fails: replay",
    "sealcast open --group-key fire-doors.gk --target doors/lock --in cmd.cose   # fails: wrong target",
    "sealcast open --group-key fire-doors.gk --target doors/unlock --signer-pub door-gw.pub --in cmd.cose --out payload.txt",
    "sealcast open --group-key fire-doors.gk --target doors/unlock --signer-pub door-17.pub --in cmd.cose   # fails: other signer",
    "sealcast inspect --in cmd.cose",
    "sealcast inspect --in door-gw.key",
    "sealcast inspect --in fire-doors.gk",
    "sealcast keygen --id hsm-gw --pem",
    "sealcast keygen --import-pem hsm-gw.ed25519.pem --id hsm-gw-2",
];

/// Runs the binary in `dir` with `args`, feeding `stdin`.
fn run_in(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading its input (a usage error).
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// Starts the binary in `dir` with `args` and no input, its output captured;
/// for commands that must run at the same time.
fn spawn_in(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstderr: {}",
        out.status,
        stderr(out)
    );
    out
}

/// A failure as the command promises it: non-zero, one `error: ` line on
/// standard error, no panic, nothing on standard output.
#[track_caller]
fn fails_cleanly(out: &Output) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.ends_with('\n'));
    assert!(out.stdout.is_empty(), "stdout on failure: {}", stdout(out));
    err
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory with two entities and a group whose signer is `door-gw`.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Self {
        let fleet = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        ok(&fleet.run(&["keygen", "--id", "door-gw"], b""));
        ok(&fleet.run(&["keygen", "--id", "door-17"], b""));
        ok(&fleet.run(
            &[
                "group",
                "create",
                "--group",
                "fire-doors",
                "--epoch",
                "1",
                "--signer",
                "door-gw=door-gw.pub:01",
                "--out",
                "fire-doors.gk",
            ],
            b"",
        ));
        fleet
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_in(self.dir.path(), args, stdin)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn seal(&self, payload: &[u8], target: &str, out: &str) -> Output {
        self.run(
            &[
                "seal",
                "--group-key",
                "fire-doors.gk",
                "--key",
                "door-gw.key",
                "--target",
                target,
                "--seq-state",
                "door-gw.seq",
                "--out",
                out,
            ],
            payload,
        )
    }

    fn open(&self, file: &str, target: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "open",
            "--group-key",
            "fire-doors.gk",
            "--target",
            target,
            "--in",
            file,
        ];
        args.extend_from_slice(extra);
        self.run(&args, b"")
    }
}

/// Runs one walkthrough line; returns its output and whether it must fail.
fn run_doc_line(dir: &Path, line: &str) -> (Output, bool) {
    let (command, comment) = match line.split_once(" # ") {
        Some((c, note)) => (c.trim(), note.trim()),
        None => (line.trim(), ""),
    };
    let (stdin, command) = match command.strip_prefix("echo '") {
        Some(rest) => {
            let (text, rest) = rest.split_once("' | ").unwrap();
            (format!("{text}\n"), rest)
        }
        None => (String::new(), command),
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "sealcast", "{line}");
    (
        run_in(dir, &words[1..], stdin.as_bytes()),
        comment.starts_with("fails"),
    )
}

#[test]
fn documented_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs: String = ["docs/CLI.md", "README.md"]
        .iter()
        .filter_map(|p| fs::read_to_string(root.join(p)).ok())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for line in WALKTHROUGH {
        assert!(
            docs.contains(line),
            "docs/CLI.md (or README.md) lacks the line: {line}"
        );
        let (out, must_fail) = run_doc_line(dir.path(), line);
        if must_fail {
            fails_cleanly(&out);
        } else {
            ok(&out);
        }
    }
    let d = dir.path();
    assert_eq!(fs::read(d.join("payload.txt")).unwrap(), b"unlock all\n");
    for (name, mode) in [
        ("door-gw.key", 0o600),
        ("door-17.key", 0o600),
        ("fire-doors.gk", 0o600),
        ("hsm-gw.ed25519.pem", 0o600),
        ("door-gw.seq", 0o600),
        ("door-17.replay", 0o600),
        ("door-gw.pub", 0o644),
    ] {
        let m = fs::metadata(d.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{name}: {m:o}");
    }
    // The imported PEM key is the same Ed25519 key.
    let a = EntityCredential::from_cose_key_set(&fs::read(d.join("hsm-gw.key")).unwrap()).unwrap();
    let b =
        EntityCredential::from_cose_key_set(&fs::read(d.join("hsm-gw-2.key")).unwrap()).unwrap();
    assert_eq!(a.public().verifying_key(), b.public().verifying_key());
    assert_ne!(a.public().agreement_key(), b.public().agreement_key());
}

#[test]
fn round_trip_reports_signer_and_names_headers() {
    let f = Fleet::new();
    let payload = b"start extinguishers \x00\xff binary ok";
    let sealed = ok(&f.seal(payload, "zone/3/extinguish", "cmd.cose")).clone();
    assert!(sealed.stdout.is_empty());
    assert!(stderr(&sealed).contains("seq 0"), "{}", stderr(&sealed));

    let opened = f.open("cmd.cose", "zone/3/extinguish", &["--skew", "60"]);
    ok(&opened);
    assert_eq!(opened.stdout, payload);
    let note = stderr(&opened);
    assert!(note.contains("signer door-gw"), "{note}");
    assert!(note.contains("seq 0"), "{note}");
    assert!(note.contains("timestamp 20"), "{note}");

    // From standard input to standard output works too.
    let bytes = fs::read(f.path("cmd.cose")).unwrap();
    let piped = f.run(
        &[
            "open",
            "--group-key",
            "fire-doors.gk",
            "--target",
            "zone/3/extinguish",
        ],
        &bytes,
    );
    assert_eq!(ok(&piped).stdout, payload);

    let diag = stdout(ok(&f.run(&["inspect", "--in", "cmd.cose"], b"")));
    for want in [
        "COSE_Encrypt0",
        "/ alg / 1: 1 / A128GCM /",
        "/ kid / 4: h'01'",
        "/ Partial IV / 6: h'00' / seq 0 /",
        "/ kid context / 10: h'666972652d646f6f7273' / \"fire-doors\" /",
        "/ epoch / -70001: 1",
        "/ timestamp / -70002:",
        "sealcast broadcast: group \"fire-doors\", epoch 1",
    ] {
        assert!(diag.contains(want), "missing {want:?} in\n{diag}");
    }
    // Hex input gives the same text.
    let hexed = f.run(&["inspect", "--hex"], hex(&bytes).as_bytes());
    assert_eq!(stdout(ok(&hexed)), diag);
}

#[test]
fn key_files_are_private_and_not_overwritten() {
    let f = Fleet::new();
    let mode = |n: &str| fs::metadata(f.path(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("door-gw.key"), 0o600);
    assert_eq!(mode("fire-doors.gk"), 0o600);
    assert_eq!(mode("door-gw.pub"), 0o644);
    let before = fs::read(f.path("door-gw.key")).unwrap();
    let err = fails_cleanly(&f.run(&["keygen", "--id", "door-gw"], b""));
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(f.path("door-gw.key")).unwrap(), before);
    ok(&f.run(&["keygen", "--id", "door-gw", "--force"], b""));
    assert_ne!(fs::read(f.path("door-gw.key")).unwrap(), before);
    assert_eq!(mode("door-gw.key"), 0o600);
    // The group file is protected the same way.
    let again = f.run(
        &[
            "group",
            "create",
            "--group-hex",
            "0a0b",
            "--epoch",
            "2",
            "--signer",
            "door-gw=door-gw.pub:01",
            "--out",
            "fire-doors.gk",
        ],
        b"",
    );
    assert!(fails_cleanly(&again).contains("--force"));
    // keygen output names files and fingerprints, never secrets.
    let out = ok(&f.run(&["keygen", "--id", "d2", "--out-dir", "sub", "--pem"], b"")).clone();
    let text = stdout(&out);
    assert!(
        text.contains("d2.key") && text.contains("ed25519 sha256:"),
        "{text}"
    );
    let cred =
        EntityCredential::from_cose_key_set(&fs::read(f.path("sub/d2.key")).unwrap()).unwrap();
    assert!(!text.contains(&hex(&cred.signing_key().to_bytes())));
    assert_eq!(
        fs::metadata(f.path("sub/d2.ed25519.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // No temporary files are left behind.
    let names: Vec<String> = fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn replay_state_refuses_a_second_open() {
    let f = Fleet::new();
    ok(&f.seal(b"one", "t", "m0.cose"));
    ok(&f.seal(b"two", "t", "m1.cose"));
    let state = ["--replay-state", "dev.replay"];
    assert_eq!(ok(&f.open("m1.cose", "t", &state)).stdout, b"two");
    // An older message not yet seen still opens (inside the window) …
    assert_eq!(ok(&f.open("m0.cose", "t", &state)).stdout, b"one");
    // … but neither opens twice, across invocations.
    for m in ["m0.cose", "m1.cose"] {
        let err = fails_cleanly(&f.open(m, "t", &state));
        assert!(err.contains("replay"), "{err}");
        assert!(err.contains("dev.replay"), "{err}");
    }
    // Another receiver's state is its own.
    ok(&f.open("m0.cose", "t", &["--replay-state", "other.replay"]));
    // A corrupt state file is an error, not a fresh start.
    fs::write(f.path("dev.replay"), b"garbage").unwrap();
    let err = fails_cleanly(&f.open("m0.cose", "t", &state));
    assert!(err.contains("dev.replay"), "{err}");
}

#[test]
fn seq_state_never_repeats_across_invocations() {
    let f = Fleet::new();
    let mut seqs = Vec::new();
    for i in 0..5 {
        let name = format!("m{i}.cose");
        ok(&f.seal(b"x", "t", &name));
        let diag = stdout(ok(&f.run(&["inspect", "--in", &name], b"")));
        let seq = diag
            .lines()
            .find_map(|l| l.split("/ seq ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no seq in\n{diag}"));
        let opened = f.open(&name, "t", &[]);
        assert!(stderr(ok(&opened)).contains(&format!("seq {seq} ")));
        seqs.push(seq);
    }
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    let state = fs::read_to_string(f.path("door-gw.seq")).unwrap();
    assert!(state.contains("next=5"), "{state}");

    // Without a sequence source, seal says what to pass.
    let err = fails_cleanly(&f.run(
        &[
            "seal",
            "--group-key",
            "fire-doors.gk",
            "--key",
            "door-gw.key",
            "--target",
            "t",
        ],
        b"x",
    ));
    assert!(
        err.contains("--seq-state") && err.contains("--seq N"),
        "{err}"
    );
    // An explicit --seq is used as given.
    let out = f.run(
        &[
            "seal",
            "--group-key",
            "fire-doors.gk",
            "--key",
            "door-gw.key",
            "--target",
            "t",
            "--seq",
            "77",
            "--out",
            "m77.cose",
        ],
        b"x",
    );
    ok(&out);
    assert!(stderr(ok(&f.open("m77.cose", "t", &[]))).contains("seq 77 "));
}

/// Issue #10, items 1 and 2: sixteen `seal`s of one `--seq-state` file at
/// once hand out sixteen different sequence numbers (they used to share
/// some — two ciphertexts under one AES-GCM nonce), and sixteen `open`s of
/// one message with one `--replay-state` file accept it exactly once.
#[test]
fn concurrent_commands_share_no_sequence_number_and_accept_one_message_once() {
    const N: usize = 16;
    let f = Fleet::new();
    let seals: Vec<std::process::Child> = (0..N)
        .map(|i| {
            spawn_in(
                f.dir.path(),
                &[
                    "seal",
                    "--group-key",
                    "fire-doors.gk",
                    "--key",
                    "door-gw.key",
                    "--target",
                    "t",
                    "--seq-state",
                    "door-gw.seq",
                    "--in",
                    "-",
                    "--out",
                    &format!("c{i}.cose"),
                ],
            )
        })
        .collect();
    let mut seqs: Vec<u64> = seals
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let err = stderr(ok(&out));
            err.split(" seq ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no seq in {err}"))
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..N as u64).collect::<Vec<_>>(),
        "concurrent seals reused a sequence number"
    );

    let opens: Vec<std::process::Child> = (0..N)
        .map(|_| {
            spawn_in(
                f.dir.path(),
                &[
                    "open",
                    "--group-key",
                    "fire-doors.gk",
                    "--target",
                    "t",
                    "--replay-state",
                    "door-17.replay",
                    "--in",
                    "c0.cose",
                ],
            )
        })
        .collect();
    let outcomes: Vec<Output> = opens
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let accepted = outcomes.iter().filter(|o| o.status.success()).count();
    assert_eq!(accepted, 1, "one message accepted {accepted} times");
    for o in outcomes.iter().filter(|o| !o.status.success()) {
        assert!(fails_cleanly(o).contains("replay"), "{}", stderr(o));
    }
}

#[test]
fn tampered_or_garbage_input_fails_cleanly() {
    let f = Fleet::new();
    ok(&f.seal(b"unlock", "doors", "cmd.cose"));
    let good = fs::read(f.path("cmd.cose")).unwrap();
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for i in [good.len() - 1, good.len() - 20, good.len() / 2, 5, 1] {
        let mut m = good.clone();
        m[i] ^= 0x01;
        cases.push(m);
    }
    cases.push(good[..good.len() - 1].to_vec());
    cases.push(good[..10].to_vec());
    cases.push(Vec::new());
    cases.push(b"not cbor at all".to_vec());
    cases.push(vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    cases.push(std::iter::repeat_n(0x81, 5000).collect());
    let mut extra = good.clone();
    extra.push(0);
    cases.push(extra);
    for (n, case) in cases.iter().enumerate() {
        let name = format!("bad{n}.cose");
        fs::write(f.path(&name), case).unwrap();
        let out = f.open(&name, "doors", &["--replay-state", "r.replay"]);
        fails_cleanly(&out);
        // inspect may describe it or refuse it, but never panics.
        let out = f.run(&["inspect", "--in", &name], b"");
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        if !out.status.success() {
            fails_cleanly(&out);
        }
    }
    // The genuine message still opens: failures committed nothing.
    assert_eq!(
        ok(&f.open("cmd.cose", "doors", &["--replay-state", "r.replay"])).stdout,
        b"unlock"
    );
}

#[test]
fn wrong_target_group_or_signer_fails() {
    let f = Fleet::new();
    ok(&f.seal(b"unlock", "doors/unlock", "cmd.cose"));
    let err = fails_cleanly(&f.open("cmd.cose", "doors/lock", &[]));
    assert!(err.contains("--target"), "{err}");

    // Another group with the same signer cannot open it.
    ok(&f.run(
        &[
            "group",
            "create",
            "--group",
            "sprinklers",
            "--epoch",
            "1",
            "--alg",
            "a256gcm",
            "--signer",
            "door-gw=door-gw.pub:01",
            "--out",
            "sprinklers.gk",
        ],
        b"",
    ));
    let out = f.run(
        &[
            "open",
            "--group-key",
            "sprinklers.gk",
            "--target",
            "doors/unlock",
            "--in",
            "cmd.cose",
        ],
        b"",
    );
    assert!(fails_cleanly(&out).contains("another group"));

    // --signer-pub names the expected signer.
    ok(&f.open("cmd.cose", "doors/unlock", &["--signer-pub", "door-gw.pub"]));
    let err = fails_cleanly(&f.open("cmd.cose", "doors/unlock", &["--signer-pub", "door-17.pub"]));
    assert!(err.contains("door-17"), "{err}");

    // A key that is not a group signer cannot seal for it.
    let out = f.run(
        &[
            "seal",
            "--group-key",
            "fire-doors.gk",
            "--key",
            "door-17.key",
            "--target",
            "t",
            "--seq",
            "1",
        ],
        b"x",
    );
    assert!(fails_cleanly(&out).contains("not an authorized signer"));
}

#[test]
fn inspect_redacts_secrets() {
    let f = Fleet::new();
    let cred =
        EntityCredential::from_cose_key_set(&fs::read(f.path("door-gw.key")).unwrap()).unwrap();
    let material =
        GroupKeyMaterial::from_cbor(&fs::read(f.path("fire-doors.gk")).unwrap()).unwrap();
    let secrets = [
        hex(&cred.signing_key().to_bytes()),
        hex(&cred.agreement_secret().to_bytes()),
        hex(material.master_secret()),
        hex(material.master_salt()),
    ];
    let public_x = hex(cred.public().verifying_key().as_bytes());

    let key = stdout(ok(&f.run(&["inspect", "--in", "door-gw.key"], b"")));
    assert!(key.contains("COSE_KeySet"), "{key}");
    assert!(key.contains("/ d / -4: <redacted, 32 bytes>"), "{key}");
    assert!(key.contains("/ crv / -1: 6 / Ed25519 /"), "{key}");
    assert!(key.contains(&public_x), "{key}");
    let group = stdout(ok(&f.run(&["inspect", "--in", "fire-doors.gk"], b"")));
    assert!(
        group.contains("/ master secret / 4: <redacted, 32 bytes>"),
        "{group}"
    );
    assert!(group.contains("\"door-gw\""), "{group}");
    let hexed = f.run(
        &["inspect", "--hex"],
        hex(&fs::read(f.path("door-gw.key")).unwrap()).as_bytes(),
    );
    let hexed = stdout(ok(&hexed));
    for text in [&key, &group, &hexed] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "secret shown in\n{text}");
            assert!(
                !text.contains(&secret[..16]),
                "secret prefix shown in\n{text}"
            );
        }
    }
    // Nor do the other commands print them.
    for out in [
        f.run(&["keygen", "--id", "x1", "--pem"], b""),
        f.run(
            &["open", "--group-key", "door-gw.key", "--target", "t"],
            b"x",
        ),
        f.run(
            &[
                "seal",
                "--group-key",
                "fire-doors.gk",
                "--key",
                "fire-doors.gk",
                "--target",
                "t",
                "--seq",
                "1",
            ],
            b"x",
        ),
    ] {
        let all = format!("{}{}", stdout(&out), stderr(&out));
        for secret in &secrets {
            assert!(!all.contains(&secret[..16]), "{all}");
        }
    }
}

#[test]
fn usage_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &["keygen"][..],
        &["keygen", "--id", "bad/id"],
        &["frobnicate"],
        &[
            "group", "create", "--group", "g", "--epoch", "1", "--out", "g.gk",
        ],
        &[
            "group",
            "create",
            "--group",
            "g",
            "--epoch",
            "x",
            "--signer",
            "a=a.pub:01",
            "--out",
            "g.gk",
        ],
        &[
            "group", "create", "--group", "g", "--epoch", "1", "--signer", "a=a.pub", "--out",
            "g.gk",
        ],
        &[
            "group",
            "create",
            "--group",
            "g",
            "--epoch",
            "1",
            "--signer",
            "a=missing.pub:01",
            "--out",
            "g.gk",
        ],
        &[
            "group",
            "create",
            "--group",
            "g",
            "--epoch",
            "1",
            "--signer",
            "a=a.pub:01",
            "--valid-for",
            "30",
            "--out",
            "g.gk",
        ],
        &[
            "group",
            "create",
            "--group",
            &"g".repeat(33),
            "--epoch",
            "1",
            "--signer",
            "a=a.pub:01",
            "--out",
            "g.gk",
        ],
        &[
            "seal",
            "--group-key",
            "missing.gk",
            "--key",
            "k",
            "--target",
            "t",
            "--seq",
            "1",
        ],
        &[
            "seal",
            "--group-key",
            "g",
            "--key",
            "k",
            "--target",
            "t",
            "--seq",
            "1",
            "--seq-state",
            "s",
        ],
        &["open", "--group-key", "missing.gk", "--target", "t"],
        &["inspect", "--in", "missing"],
        &["inspect", "--hex"],
        &["keygen", "--import-pem", "missing.pem", "--id", "a"],
    ] {
        let out = run_in(d, args, b"zz");
        let err = fails_cleanly(&out);
        assert!(err.len() < 400, "{args:?}: {err}");
    }
    // Help carries examples; --version works.
    for cmd in ["keygen", "seal", "open", "inspect"] {
        let out = run_in(d, &[cmd, "--help"], b"");
        assert!(stdout(ok(&out)).contains("Examples:"), "{cmd}");
    }
    let out = run_in(d, &["group", "create", "--help"], b"");
    assert!(stdout(ok(&out)).contains("--group-hex"));
    ok(&run_in(d, &["--version"], b""));
}

#[test]
fn imports_an_openssl_ed25519_key() {
    let have_openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_openssl {
        eprintln!(
            "\n!!!!! NOT RUN: imports_an_openssl_ed25519_key — `openssl` is not on the PATH !!!!!\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let genpkey = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out", "gw.pem"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(genpkey.status.success());
    ok(&run_in(
        d,
        &["keygen", "--import-pem", "gw.pem", "--id", "door-gw-2"],
        b"",
    ));
    let spki = Command::new("openssl")
        .args(["pkey", "-in", "gw.pem", "-pubout", "-outform", "DER"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(spki.status.success());
    let cred =
        EntityCredential::from_cose_key_set(&fs::read(d.join("door-gw-2.key")).unwrap()).unwrap();
    // The SPKI DER of an Ed25519 key ends with the 32 raw key bytes.
    assert!(
        spki.stdout
            .ends_with(cred.public().verifying_key().as_bytes())
    );
}

/// Runs the binary with `args` and kills it if it has not finished within
/// `limit` (a hung demo fails the test instead of hanging it).
fn run_bounded(args: &[&str], limit: std::time::Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "sealcast {} did not finish within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn demo_fire_safety_over_coap_passes() {
    let out = run_bounded(
        &[
            "demo",
            "fire-safety",
            "--transport",
            "coap",
            "--devices",
            "6",
        ],
        std::time::Duration::from_secs(120),
    );
    let text = stdout(ok(&out));
    assert!(text.contains("over CoAP on loopback"), "{text}");
    assert!(text.contains("pinned to 127.0.0.1"), "{text}");
    assert!(text.contains("PASSED"), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
}

#[test]
fn demo_fire_safety_refuses_a_broker_with_coap() {
    let out = run_bounded(
        &[
            "demo",
            "fire-safety",
            "--transport",
            "coap",
            "--broker",
            "mqtt://127.0.0.1:1883",
        ],
        std::time::Duration::from_secs(30),
    );
    let err = fails_cleanly(&out);
    assert!(err.contains("--broker"), "{err}");
}

#[test]
fn demo_fire_safety_over_mqtt_passes() {
    let out = run_bounded(
        &["demo", "fire-safety", "--devices", "6"],
        std::time::Duration::from_secs(120),
    );
    let text = stdout(ok(&out));
    assert!(text.contains("over MQTT on loopback"), "{text}");
    assert!(text.contains("last device acted"), "{text}");
    assert!(text.contains("PASSED"), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
}

#[test]
fn demo_smart_meter_passes() {
    let out = run_bounded(
        &["demo", "smart-meter", "--meters", "20", "--reports", "2"],
        std::time::Duration::from_secs(120),
    );
    let text = stdout(ok(&out));
    assert!(text.contains("PASSED"), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
}

/// Issue #10, item 9: a config without a required field names the field
/// (toml pointed at line 1, which reads as if line 1 were wrong); a demo
/// against a broker that refuses connections says so and leaves no
/// temporary directory behind.
#[test]
fn config_errors_name_the_field_and_failed_demos_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("door.toml"),
        "broker = \"mqtt://127.0.0.1:1883\"\nstate_dir = \"s\"\nmanager_public_key = \"m.pub\"\n",
    )
    .unwrap();
    let err = fails_cleanly(&run_in(
        dir.path(),
        &["device", "run", "--config", "door.toml"],
        b"",
    ));
    assert!(err.contains("missing field `key`"), "{err}");
    assert!(!err.contains("line 1"), "{err}");

    // A port nothing listens on: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let out = Command::new(BIN)
        .args([
            "demo",
            "fire-safety",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
        ])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the MQTT broker") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "the failed demo left its directory behind"
    );
}

/// `sealcast info` names the Ed25519 backend this CPU runs: the workspace
/// builds the AVX-512 IFMA backend with run-time detection by default, so
/// on a CPU with AVX-512 IFMA and VL it must be that one, and on any other
/// x86-64 CPU AVX2 (or serial without AVX2). (CI also runs the release
/// binary under qemu-x86_64 without AVX-512 and without AVX2.)
#[test]
fn info_names_the_backend_this_cpu_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["info", "--json"], b"");
    let v: serde_json::Value = serde_json::from_str(&stdout(ok(&out))).unwrap();
    let backend = v["ed25519_backend"].as_str().unwrap().to_owned();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpuinfo.split_whitespace().any(|w| w == flag);
    let expected = if cfg!(target_arch = "x86_64") {
        if has("avx512ifma") && has("avx512vl") {
            "avx512ifma"
        } else if has("avx2") {
            "avx2"
        } else {
            "serial"
        }
    } else {
        "serial"
    };
    assert_eq!(backend, expected, "{cpuinfo:.0}");
    let text = stdout(ok(&run_in(dir.path(), &["info"], b"")));
    assert!(
        text.contains(&format!("ed25519 backend: {expected}")),
        "{text}"
    );
}

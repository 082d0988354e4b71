#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Smoke run of every fuzz target (`sealcast_core::fuzzing`) on a bounded,
//! deterministic corpus, for machines without a nightly toolchain and
//! `cargo-fuzz` (see `fuzz/README.md`).
//!
//! Per target: hostile fixed inputs (empty, all-zero, deeply nested and
//! indefinite-length CBOR, huge declared lengths), the valid seeds of every
//! target and every truncation of the target's own seeds, 2 000 random
//! buffers and 2 000 random edits of valid objects from a seeded generator
//! (fewer for the targets listed in `REDUCED`, none at present). About 5 s
//! on two cores in a debug build, with the dependencies optimized as the
//! workspace's dev profile says.
//! A panic in any target fails the test and names the target and the input
//! (hex). The number of inputs and the time per target are written to
//! stderr.
//!
//! `SEALCAST_FUZZ_CORPUS_DIR=fuzz/corpus cargo test -p sealcast-core --test
//! fuzz_smoke` also writes the seeds as a starting corpus for `cargo fuzz`.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand_core::Rng;
use sealcast_core::fuzzing::{self, TARGETS};
use sealcast_core::testrng::TestRng;

/// Random buffers per target.
const RANDOM_INPUTS: usize = 2_000;
/// Random edits of valid objects per target.
const RANDOM_MUTATIONS: usize = 2_000;

/// Targets run with fewer inputs: (name, random buffers, random
/// mutations). Empty while the workspace builds dependencies optimized in
/// the dev profile (`[profile.dev.package."*"]`); without that, inputs that
/// reach Ed25519 / X25519 cost 5 to 40 ms each and the slowest targets
/// belong here.
const REDUCED: &[(&str, usize, usize)] = &[];

/// Random buffers and random mutations to run for `name`.
fn counts(name: &str) -> (usize, usize) {
    REDUCED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or((RANDOM_INPUTS, RANDOM_MUTATIONS), |&(_, r, m)| (r, m))
}
/// One input taking longer than this (debug build) counts as a hang.
const SLOW_INPUT: Duration = Duration::from_secs(5);

/// Bytes that matter to a CBOR decoder: heads with length escapes,
/// indefinite-length starts, break, tags, simple values, small ints.
const CBOR_BYTES: &[u8] = &[
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x38, 0x3b, 0x40, 0x41, 0x58, 0x5b,
    0x5f, 0x60, 0x61, 0x78, 0x7b, 0x7f, 0x80, 0x81, 0x83, 0x84, 0x98, 0x9b, 0x9f, 0xa0, 0xa1, 0xa5,
    0xb8, 0xbb, 0xbf, 0xc0, 0xd0, 0xd1, 0xd2, 0xd8, 0xdb, 0xf4, 0xf5, 0xf6, 0xf7, 0xf9, 0xfa, 0xfb,
    0xfc, 0xff,
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn repeat(prefix: &[u8], unit: &[u8], n: usize, suffix: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(prefix.len() + unit.len() * n + suffix.len());
    v.extend_from_slice(prefix);
    for _ in 0..n {
        v.extend_from_slice(unit);
    }
    v.extend_from_slice(suffix);
    v
}

/// Inputs that have broken CBOR decoders before.
fn hostile_inputs() -> Vec<Vec<u8>> {
    let ff8 = [0xff; 8];
    let mut v: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0; 2],
        vec![0; 64],
        vec![0; 4096],
        vec![0xff; 64],
        // Deep nesting: definite arrays, indefinite arrays (open and
        // closed), maps, indefinite maps, tags.
        vec![0x81; 100_000],
        vec![0x9f; 100_000],
        repeat(&[], &[0x9f], 50_000, &[0xff; 50_000]),
        repeat(&[], &[0xa1, 0x01], 50_000, &[0x00]),
        repeat(&[], &[0xbf, 0x01], 50_000, &[]),
        repeat(&[], &[0xd8, 0x12], 50_000, &[0x00]),
        vec![0xc6; 100_000],
        // The same behind a COSE tag and array head.
        repeat(&[0xd2, 0x84], &[0x81], 100_000, &[]),
        repeat(&[0xd0, 0x83], &[0x9f], 100_000, &[]),
        repeat(&[0xd8, 0x60, 0x84], &[0xa1, 0x01], 50_000, &[]),
        repeat(&[0xd1, 0x84, 0x40, 0xa1, 0x04], &[0x81], 100_000, &[]),
        // Huge declared lengths and counts.
        [&[0x5b][..], &ff8].concat(),
        [&[0x7b][..], &ff8].concat(),
        [&[0x9b][..], &ff8].concat(),
        [&[0xbb][..], &ff8].concat(),
        vec![0x5a, 0xff, 0xff, 0xff, 0xff, 0x00],
        vec![0x9a, 0xff, 0xff, 0xff, 0xff, 0x00],
        vec![0xba, 0x7f, 0xff, 0xff, 0xff, 0x00, 0x00],
        [&[0xd2, 0x84, 0x5b][..], &ff8].concat(),
        [&[0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27, 0xa0, 0x5b][..], &ff8].concat(),
        [&[0xd0, 0x83, 0x40, 0xa0, 0x5b][..], &ff8].concat(),
        [&[0x84, 0x40, 0xbb][..], &ff8].concat(),
        [&[0x82, 0xa1, 0x01, 0x5b][..], &ff8].concat(),
        // Indefinite-length items.
        vec![0x5f, 0x41, 0x00, 0xff],
        vec![0x7f, 0x61, 0x61, 0xff],
        vec![0x9f, 0xff],
        vec![0xbf, 0xff],
        vec![0x5f, 0x5f, 0xff, 0xff],
        repeat(&[0x5f], &[0x40], 100_000, &[0xff]),
        repeat(
            &[0xd2, 0x9f, 0x5f],
            &[0x41, 0x00],
            30_000,
            &[0xff, 0xa0, 0xf6, 0x40, 0xff],
        ),
        vec![0xd2, 0x9f, 0x40, 0xbf, 0xff, 0x40, 0x40, 0xff],
        // Reserved additional information, lone break, floats.
        vec![0x1c],
        vec![0xff],
        vec![0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
        // Text: truncated and oversized PEM.
        b"-----BEGIN PUBLIC KEY-----\n".to_vec(),
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n".to_vec(),
        repeat(
            b"-----BEGIN PUBLIC KEY-----\n",
            b"A",
            8_000,
            b"\n-----END PUBLIC KEY-----\n",
        ),
        [0xc3, 0x28, 0xa0, 0xa1].to_vec(),
    ];
    // Replay-window headers with every size byte.
    for words in [0u8, 1, 4, 64, 65, 255] {
        let mut w = vec![1, words, 1, 0xff, 0xff, 0xff, 0xff, 0xff];
        w.resize(8 + usize::from(words) * 8, 0xff);
        v.push(w);
    }
    v
}

fn random_buffer(rng: &mut TestRng) -> Vec<u8> {
    let r = rng.next_u32();
    let len = match r % 4 {
        0 => r as usize % 16,
        1 => r as usize % 64,
        2 => r as usize % 256,
        _ => r as usize % 1024,
    };
    let mut buf = vec![0u8; len];
    rng.fill_bytes(&mut buf);
    if r & 0x100 != 0 {
        // CBOR-flavoured: mostly heads that matter.
        for b in &mut buf {
            if *b & 1 == 0 {
                *b = CBOR_BYTES[usize::from(*b >> 1) % CBOR_BYTES.len()];
            }
        }
    }
    buf
}

/// An edit script of 1 to 8 edits (see `fuzzing::mutate`).
fn random_script(rng: &mut TestRng) -> Vec<u8> {
    let edits = 1 + rng.next_u32() as usize % 8;
    let mut script = vec![0u8; edits * 4];
    rng.fill_bytes(&mut script);
    script
}

struct Outcome {
    inputs: usize,
    elapsed: Duration,
    slowest: Duration,
    slowest_len: usize,
    failures: Vec<String>,
}

fn run_target(
    index: usize,
    name: &str,
    target: fn(&[u8]),
    hostile: &[Vec<u8>],
    all_seeds: &[Vec<u8>],
) -> Outcome {
    let started = Instant::now();
    let mut out = Outcome {
        inputs: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
        slowest_len: 0,
        failures: Vec::new(),
    };
    let mut run = |input: &[u8], what: &str| {
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(input)));
        let took = t.elapsed();
        out.inputs += 1;
        if took > out.slowest {
            out.slowest = took;
            out.slowest_len = input.len();
        }
        let shown = &input[..input.len().min(512)];
        if result.is_err() {
            out.failures.push(format!(
                "{name}: PANIC on {what} input, {} bytes: {}{}",
                input.len(),
                hex(shown),
                if shown.len() < input.len() { "…" } else { "" }
            ));
        } else if took > SLOW_INPUT {
            out.failures.push(format!(
                "{name}: {took:?} on {what} input, {} bytes: {}",
                input.len(),
                hex(shown)
            ));
        }
    };

    for input in hostile {
        run(input, "hostile");
    }
    let own = fuzzing::seeds(name);
    for seed in &own {
        for cut in 0..=seed.len() {
            run(&seed[..cut], "truncated seed");
        }
    }
    for seed in all_seeds {
        run(seed, "foreign seed");
    }
    let (random_inputs, random_mutations) = counts(name);
    let mut rng = TestRng::new(0x5eed_0000 + index as u64);
    for _ in 0..random_inputs {
        let buf = random_buffer(&mut rng);
        run(&buf, "random");
    }
    let mutating = name.ends_with("_mutated");
    for i in 0..random_mutations {
        let input = if mutating || own.is_empty() {
            // The target edits its valid object itself: the input is a
            // configuration byte and an edit script.
            let mut s = vec![rng.next_u32() as u8];
            s.extend(random_script(&mut rng));
            s
        } else {
            let base = if i % 4 == 0 {
                &all_seeds[rng.next_u32() as usize % all_seeds.len()]
            } else {
                &own[rng.next_u32() as usize % own.len()]
            };
            fuzzing::mutate(base, &random_script(&mut rng))
        };
        run(&input, "mutated");
    }
    out.elapsed = started.elapsed();
    out
}

#[test]
fn fixture_is_sound() {
    assert_eq!(fuzzing::self_check(), Ok(()));
    for (name, _) in TARGETS {
        assert!(!fuzzing::seeds(name).is_empty(), "{name} has no seeds");
    }
    for (name, _, _) in REDUCED {
        assert!(
            TARGETS.iter().any(|(n, _)| n == name),
            "REDUCED names no target {name}"
        );
    }
}

#[test]
fn mutate_is_bounded_and_identity_on_empty_script() {
    let base = b"sealcast".to_vec();
    assert_eq!(fuzzing::mutate(&base, &[]), base);
    let grow = [4u8, 0, 0, 0xaa].repeat(1000);
    assert!(fuzzing::mutate(&base, &grow).len() <= base.len() + 64);
    assert!(fuzzing::mutate(&[], &[0, 0, 0, 1, 5, 0, 0, 0, 6, 0, 0, 0]).is_empty());
}

#[test]
fn every_target_survives_the_smoke_corpus() {
    let hostile = hostile_inputs();
    let all_seeds: Vec<Vec<u8>> = TARGETS
        .iter()
        .filter(|(name, _)| !name.ends_with("_mutated"))
        .flat_map(|(name, _)| fuzzing::seeds(name))
        .collect();
    assert!(
        !all_seeds.is_empty(),
        "fixture failed: {:?}",
        fuzzing::self_check()
    );

    // Silence the default hook: panics are caught and reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(name, target)) = TARGETS.get(i) else {
                        break;
                    };
                    let outcome = run_target(i, name, target, &hostile, &all_seeds);
                    results.lock().unwrap().push((i, name, outcome));
                }
            });
        }
    });
    std::panic::set_hook(hook);

    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _, _)| *i);
    let mut report = String::from("fuzz smoke: target, inputs, time, slowest input\n");
    let mut total = 0;
    let mut failures = Vec::new();
    for (_, name, o) in &mut results {
        total += o.inputs;
        report.push_str(&format!(
            "  {name:<38} {:>6} inputs {:>8.2?}  slowest {:.2?} ({} bytes)\n",
            o.inputs, o.elapsed, o.slowest, o.slowest_len
        ));
        failures.append(&mut o.failures);
    }
    report.push_str(&format!(
        "  {} targets, {total} inputs, {:.2?} on {threads} threads\n",
        results.len(),
        started.elapsed()
    ));
    // Written past the test harness's capture, so it shows in every run.
    let _ = std::io::stderr().lock().write_all(report.as_bytes());

    assert_eq!(results.len(), TARGETS.len());
    assert!(
        failures.is_empty(),
        "{} failing inputs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// With `SEALCAST_FUZZ_CORPUS_DIR` set, writes every target's seeds to
/// `$SEALCAST_FUZZ_CORPUS_DIR/<target>/seed-<n>` (a starting corpus for
/// `cargo fuzz run`). Does nothing otherwise.
#[test]
fn write_seed_corpus_when_asked() {
    let Some(dir) = std::env::var_os("SEALCAST_FUZZ_CORPUS_DIR") else {
        return;
    };
    for (name, _) in TARGETS {
        let target_dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&target_dir).unwrap();
        for (n, seed) in fuzzing::seeds(name).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
}

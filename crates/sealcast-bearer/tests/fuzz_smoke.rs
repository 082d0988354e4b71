#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Smoke run of the `bearer_frame` fuzz target (`sealcast_bearer::fuzz_frame`,
//! also run by `fuzz/fuzz_targets/bearer_frame.rs` under cargo-fuzz) on a
//! bounded, deterministic corpus: hostile fixed inputs, the valid seeds and
//! every truncation of them, random buffers and random edits of the seeds.
//! A panic fails the test and names the input (hex).
//!
//! `SEALCAST_FUZZ_CORPUS_DIR=fuzz/corpus cargo test -p sealcast-bearer --test
//! fuzz_smoke` also writes the seeds as a starting corpus for `cargo fuzz`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand_core::Rng;
use sealcast_bearer::fuzz_frame;
use sealcast_bearer::fuzzing::{seeds, self_check};
use sealcast_core::testrng::TestRng;

const RANDOM_INPUTS: usize = 3_000;
const RANDOM_MUTATIONS: usize = 3_000;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| fuzz_frame(input))).is_err() {
        panic!("bearer_frame panicked on input {}", hex(input));
    }
}

#[test]
fn bearer_frame_smoke() {
    self_check().unwrap();
    let seeds = seeds();
    assert_eq!(seeds.len(), 4, "delivery, key frame, two data frames");

    if let Some(dir) = std::env::var_os("SEALCAST_FUZZ_CORPUS_DIR") {
        let dir = std::path::Path::new(&dir).join("bearer_frame");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }

    let mut fixed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        vec![1, 1],
        vec![1, 2],
        vec![1, 3],
        vec![0xff; 78],
        vec![0; 74],
        vec![1; 14 + 64 + 16],
        vec![0; 14 + 65_536 + 16],
        vec![0; 14 + 65_536 + 17],
        vec![1; 40],
    ];
    for s in &seeds {
        for cut in 0..=s.len() {
            fixed.push(s[..cut].to_vec());
        }
    }
    for input in &fixed {
        run(input);
    }

    let mut rng = TestRng::new(0xf022);
    for _ in 0..RANDOM_INPUTS {
        let len = match rng.next_u32() % 4 {
            0 => (rng.next_u32() % 16) as usize,
            1 => 40,
            2 => 78,
            _ => (rng.next_u32() % 400) as usize,
        };
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        run(&buf);
    }
    for _ in 0..RANDOM_MUTATIONS {
        let mut f = seeds[(rng.next_u32() as usize) % seeds.len()].clone();
        for _ in 0..1 + rng.next_u32() % 3 {
            let pos = (rng.next_u32() as usize) % (f.len() + 1);
            match rng.next_u32() % 4 {
                0 if pos < f.len() => f[pos] ^= 1 << (rng.next_u32() % 8),
                1 => f.insert(pos, rng.next_u32() as u8),
                2 if pos < f.len() => {
                    f.remove(pos);
                }
                _ => f.truncate(pos),
            }
        }
        run(&f);
    }
}

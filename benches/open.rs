//! Broadcast open and seal rates beside the raw Ed25519 operations on the
//! same signatures (so the ratio shows what the envelope costs around the
//! signature), burst open against one-by-one, and 2 threads against 1.
//!
//! `cargo bench --bench open` (see docs/PERFORMANCE.md for the fast backend).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Group, NOW, TARGET, at_stack_offset, open_loop};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::Signer;

const POOL: usize = 1024;

fn open_vs_verify(c: &mut Criterion) {
    let group = Group::new(7);
    let vk = group.verifying_key();
    let mut g = c.benchmark_group(format!(
        "open_vs_verify[{}]",
        sealcast_core::crypto::ed25519_backend()
    ));
    g.throughput(Throughput::Elements(1));
    for len in [16usize, 100, 1024] {
        let pool = group.pool(POOL, len);
        let signed = group.signed_pool(POOL, len);
        g.bench_with_input(BenchmarkId::new("open", len), &len, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                open_loop(&group, &pool, iters);
                start.elapsed()
            })
        });
        g.bench_with_input(BenchmarkId::new("verify_strict", len), &len, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let (tbs, sig) = &signed[i % POOL];
                    at_stack_offset(i / 16, &mut || vk.verify_strict(tbs, sig).unwrap());
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn seal_vs_sign(c: &mut Criterion) {
    let group = Group::new(7);
    let payload = common::payload(0, 100);
    let (tbs, _) = group.signed(0, 100);
    let mut g = c.benchmark_group("seal_vs_sign");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal_100", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            group.seal(seq, &payload)
        })
    });
    g.bench_function("sign_100", |b| {
        b.iter(|| group.signer.signing_key().sign(&tbs))
    });
    g.finish();
}

fn burst_vs_single(c: &mut Criterion) {
    let group = Group::new(7);
    let mut g = c.benchmark_group("burst_open");
    for n in [8usize, 64, 256] {
        let pool = group.pool(n, 100);
        let items: Vec<(&[u8], &str)> = pool.iter().map(|b| (b.as_slice(), TARGET)).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("open_burst", n), &n, |b, _| {
            b.iter(|| {
                let mut rx = group.receiver();
                let out = rx.open_burst(&items, NOW);
                assert!(out.iter().all(Result::is_ok));
                out
            })
        });
        g.bench_with_input(BenchmarkId::new("one_by_one", n), &n, |b, _| {
            b.iter(|| {
                let mut rx = group.receiver();
                pool.iter()
                    .map(|m| rx.open(m, TARGET, NOW).unwrap())
                    .collect::<Vec<_>>()
            })
        });
    }
    g.finish();
}

fn threads(c: &mut Criterion) {
    let group = Group::new(7);
    let pools = [group.pool(POOL, 100), group.pool(POOL, 100)];
    let mut g = c.benchmark_group("open_threads");
    // One element = one broadcast opened; with 2 threads each iteration
    // opens two (one per thread), so equal times mean a 2x rate.
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_with_input(BenchmarkId::new("open_100", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for pool in pools.iter().take(t) {
                        let group = &group;
                        s.spawn(move || open_loop(group, pool, iters));
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = open_vs_verify, seal_vs_sign, burst_vs_single, threads
}
criterion_main!(benches);

//! DAP authentication: reports verified per second with one batch
//! verification of 8 / 64 / 256 reports, beside one by one.
//!
//! `cargo bench --bench batch`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::report::{PairwiseKey, seal_report, verify_report, verify_reports_batch};
use sealcast_core::testrng::TestRng;

const NOW: UnixMillis = UnixMillis::new(1_790_000_000_000);

/// One report (a 48-byte reading) from each of 256 meters to one headend: a
/// DAP sees many meters, so no key repeats inside a batch.
struct Reports {
    headend: EntityId,
    keys: std::collections::HashMap<EntityId, VerifyingKey>,
    reports: Vec<Vec<u8>>,
}

impl Reports {
    fn new(count: usize) -> Self {
        let mut rng = TestRng::new(11);
        let headend = EntityCredential::generate(EntityId::new("headend").unwrap(), &mut rng);
        let meters: Vec<EntityCredential> = (0..count)
            .map(|i| {
                EntityCredential::generate(EntityId::new(&format!("meter-{i}")).unwrap(), &mut rng)
            })
            .collect();
        let pairwise: Vec<PairwiseKey> = meters
            .iter()
            .map(|m| {
                PairwiseKey::derive(
                    AeadAlg::A128Gcm,
                    m.agreement_secret(),
                    headend.public().agreement_key(),
                    m.id(),
                    headend.id(),
                )
                .unwrap()
            })
            .collect();
        let reports = (0..count)
            .map(|i| {
                let k = i % meters.len();
                seal_report(
                    meters[k].id(),
                    meters[k].signing_key(),
                    headend.id(),
                    &pairwise[k],
                    SeqNum::new((i / meters.len()) as u64).unwrap(),
                    NOW,
                    &[i as u8; 48],
                )
                .unwrap()
            })
            .collect();
        Self {
            headend: headend.id().clone(),
            keys: meters
                .iter()
                .map(|m| (m.id().clone(), *m.public().verifying_key()))
                .collect(),
            reports,
        }
    }

    fn key(&self, id: &EntityId) -> Option<&VerifyingKey> {
        self.keys.get(id)
    }
}

fn dap_batch(c: &mut Criterion) {
    let r = Reports::new(256);
    let mut g = c.benchmark_group(format!(
        "dap_reports[{}]",
        sealcast_core::crypto::ed25519_backend()
    ));
    for n in [8usize, 64, 256] {
        let slice: Vec<&[u8]> = r.reports[..n].iter().map(Vec::as_slice).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("batch", n), &n, |b, _| {
            b.iter(|| {
                let out = verify_reports_batch(&slice, &r.headend, |id| r.key(id));
                assert!(out.iter().all(Result::is_ok));
                out
            })
        });
        g.bench_with_input(BenchmarkId::new("one_by_one", n), &n, |b, _| {
            b.iter(|| {
                slice
                    .iter()
                    .map(|rep| verify_report(rep, &r.headend, |id| r.key(id)).unwrap())
                    .collect::<Vec<_>>()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = dap_batch
}
criterion_main!(benches);

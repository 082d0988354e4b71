//! Rekey cost of one eviction: point-to-point key deliveries (n − 1 of
//! them, `seal_key_delivery`) beside one key-tree rekey
//! (`KeyTree::remove_member`, its CBOR and the manager's signature).
//!
//! Point-to-point is measured at n = 1 000 (999 deliveries per iteration);
//! for 10 000 and 100 000 members its cost is that figure scaled by
//! (n − 1) / 999 — linear, since every delivery is the same work. The bench
//! prints that extrapolation and the message bytes; criterion measures the
//! tree at every size.
//!
//! `cargo bench --bench rekey`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::delivery::seal_key_delivery;
use sealcast_core::groupkey::{AuthorizedSigner, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId};
use sealcast_core::statement::sign_statement;
use sealcast_core::testrng::TestRng;
use sealcast_group::lkh::{KeyTree, LeafIndex};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

struct P2p {
    manager: EntityCredential,
    recipients: Vec<EntityCredential>,
    material: GroupKeyMaterial,
}

impl P2p {
    fn new() -> Self {
        let mut rng = TestRng::new(21);
        let manager = EntityCredential::generate(EntityId::new("manager").unwrap(), &mut rng);
        let signer = EntityCredential::generate(EntityId::new("alarm-panel-1").unwrap(), &mut rng);
        let material = GroupKeyMaterial::generate(
            GroupId::new(b"fire-site-4").unwrap(),
            Epoch::new(2),
            AeadAlg::A128Gcm,
            vec![AuthorizedSigner {
                sender_id: SenderId::new([0x01]).unwrap(),
                entity: signer.id().clone(),
                verifying_key: *signer.public().verifying_key(),
            }],
            None,
            &mut rng,
        )
        .unwrap();
        let recipients = (0..64)
            .map(|i| {
                EntityCredential::generate(EntityId::new(&format!("dev-{i}")).unwrap(), &mut rng)
            })
            .collect();
        Self {
            manager,
            recipients,
            material,
        }
    }

    /// The `deliveries` key deliveries of one eviction; returns their bytes.
    fn evict(&self, deliveries: usize, rng: &mut TestRng) -> usize {
        (0..deliveries)
            .map(|i| {
                let r = &self.recipients[i % self.recipients.len()];
                seal_key_delivery(
                    self.manager.id(),
                    self.manager.signing_key(),
                    r.id(),
                    r.public().agreement_key(),
                    &self.material,
                    rng,
                )
                .unwrap()
                .len()
            })
            .sum()
    }
}

fn tree_evict(tree: &mut KeyTree, manager: &EntityCredential, k: u32, rng: &mut TestRng) -> usize {
    let n = tree.capacity() as u32;
    // Walk the leaves with a stride coprime to the capacity; skip empty ones.
    let mut leaf = (k.wrapping_mul(7919)) % n;
    while !tree.is_member(LeafIndex::new(leaf)) {
        leaf = (leaf + 1) % n;
    }
    let epoch = Epoch::new(tree.epoch().get() + 1);
    let rekey = tree
        .remove_member(LeafIndex::new(leaf), epoch, rng)
        .unwrap();
    sign_statement(
        manager.id(),
        manager.signing_key(),
        "sealcast tree rekey v1",
        &rekey.to_cbor(),
    )
    .len()
}

fn rekey(c: &mut Criterion) {
    let p2p = P2p::new();
    let mut rng = TestRng::new(5);

    // Point-to-point at 1 000, measured directly; printed with the
    // extrapolation to the larger groups.
    let start = Instant::now();
    let bytes = p2p.evict(SIZES[0] - 1, &mut rng);
    let per_delivery = start.elapsed().as_secs_f64() / (SIZES[0] - 1) as f64;
    let per_bytes = bytes / (SIZES[0] - 1);

    let mut g = c.benchmark_group("rekey");
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("p2p", SIZES[0]), |b| {
        b.iter(|| p2p.evict(SIZES[0] - 1, &mut rng))
    });
    for n in SIZES {
        let mut tree = KeyTree::with_members(n, Epoch::new(1), &mut rng).unwrap();
        let mut k = 0u32;
        let mut tree_bytes = 0usize;
        let mut samples = 0usize;
        let mut tree_time = Duration::ZERO;
        g.sample_size(50);
        g.bench_with_input(BenchmarkId::new("tree", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut e = Duration::ZERO;
                for _ in 0..iters {
                    // Keep the group near n: refill (untimed) at 3/4.
                    if tree.len() < n * 3 / 4 {
                        let epoch = Epoch::new(tree.epoch().get() + 1);
                        tree = KeyTree::with_members(n, epoch, &mut rng).unwrap();
                    }
                    k += 1;
                    let start = Instant::now();
                    tree_bytes += tree_evict(&mut tree, &p2p.manager, k, &mut rng);
                    e += start.elapsed();
                    samples += 1;
                }
                tree_time += e;
                e
            })
        });
        let tree_cpu = tree_time.as_secs_f64() / samples.max(1) as f64;
        let p2p_cpu = per_delivery * (n - 1) as f64;
        println!(
            "rekey n={n}: tree {:.1} µs, {} B | p2p {:.3} s, {} B{} | tree {:.0}x cheaper in CPU",
            tree_cpu * 1e6,
            tree_bytes / samples.max(1),
            p2p_cpu,
            per_bytes * (n - 1),
            if n == SIZES[0] {
                " (measured)"
            } else {
                " (extrapolated linearly from n = 1 000)"
            },
            p2p_cpu / tree_cpu,
        );
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = rekey
}
criterion_main!(benches);

//! End to end: the fire-safety deployment over the embedded MQTT broker on
//! loopback, timed from the sensor's alert to the last door and
//! extinguisher acting on its command, at 30 and 300 devices; beside it, in
//! the same run, one open of a command-sized broadcast on one core, so the
//! pipeline efficiency — (opens × one open) ÷ (wall × cores) — can be read
//! off the two (`sealcast bench` prints it).
//!
//! Each sample builds a whole deployment (seconds); only the alert →
//! last action span is timed.
//!
//! `cargo bench --bench e2e`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sealcast_core::broadcast::{BroadcastReceiver, ReplayPolicy, seal_broadcast};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_demo::fire_safety::{FireSafetyConfig, fire_safety};

const NOW: UnixMillis = UnixMillis::new(1_790_000_000_000);
const TARGET: &str = "sealcast/v1/g/646f6f7273/cmd";

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("fire_safety_alert_to_last_action");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(5));
    for devices in [30usize, 300] {
        g.bench_with_input(BenchmarkId::from_parameter(devices), &devices, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let config = FireSafetyConfig {
                        devices: n,
                        ..FireSafetyConfig::default()
                    };
                    let report = rt.block_on(fire_safety(config, &mut |_| {})).unwrap();
                    assert!(report.passed(), "the fire-safety run failed its checks");
                    total += report.pipeline.unwrap().alert_to_last_action;
                }
                total
            });
        });
    }
    g.finish();
}

/// The baseline: one open of a 16-byte command on one core.
fn single_open(c: &mut Criterion) {
    let mut rng = TestRng::new(3);
    let signer = EntityCredential::generate(EntityId::new("gateway").unwrap(), &mut rng);
    let material = GroupKeyMaterial::generate(
        GroupId::new(b"doors").unwrap(),
        Epoch::new(1),
        AeadAlg::A128Gcm,
        vec![AuthorizedSigner {
            sender_id: SenderId::new([1]).unwrap(),
            entity: signer.id().clone(),
            verifying_key: *signer.public().verifying_key(),
        }],
        None,
        &mut rng,
    )
    .unwrap();
    let ctx = GroupContext::new(&material).unwrap();
    let pool: Vec<Vec<u8>> = (0..512u64)
        .map(|s| {
            seal_broadcast(
                &ctx,
                signer.id(),
                signer.signing_key(),
                SeqNum::new(s).unwrap(),
                NOW,
                TARGET,
                b"unlock all doors",
            )
            .unwrap()
        })
        .collect();
    let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    let mut next = 0usize;
    c.bench_function("single_open_16b", |b| {
        b.iter(|| {
            if next == pool.len() {
                next = 0;
                rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
            }
            let opened = rx.open(&pool[next], TARGET, NOW).unwrap();
            next += 1;
            opened
        });
    });
}

criterion_group!(benches, single_open, pipeline);
criterion_main!(benches);

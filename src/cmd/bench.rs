//! `sealcast bench`: the core measurements, each beside a baseline measured
//! in the same run on the same core, so the ratios mean something on a
//! shared, noisy machine.
//!
//! No criterion here (the criterion benches live in `benches/`): simple timed
//! loops on the thread's CPU clock, a warm-up, then the measured operation
//! and its baseline in alternating 2 ms slices, both rotating through the
//! same stack offsets (see [`at_stack_offset`]). docs/PERFORMANCE.md says
//! why each of these matters here. The whole run is bounded: about 1 s with
//! `--quick`, about 15 s without (plus fixtures).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use ed25519_dalek::{Signer, VerifyingKey};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::{AeadAlg, AeadKey, ed25519_backend};
use sealcast_core::delivery::seal_key_delivery;
use sealcast_core::groupkey::{AuthorizedSigner, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum};
use sealcast_core::report::{
    PairwiseKey, seal_report, verify_report, verify_reports_batch, verify_reports_batch_expecting,
};
use sealcast_core::statement::sign_statement;
use sealcast_group::lkh::{KeyTree, LeafIndex};

use sealcast_demo::fixture::{
    FixtureResult, Group, NOW, Opener, TARGET, at_stack_offset, bench_rng, payload,
};

use serde_json::Value;

use crate::error::{CliError, Result};

mod dap;
mod e2e;
mod load;
mod output;

use dap::{DapService, dap_service};
use e2e::{EndToEnd, end_to_end};
use load::{LoadedGateway, loaded_gateway};
use output::{ratio, thousands};

const EXAMPLES: &str = "\
Examples:
  sealcast bench
  sealcast bench --quick --json > bench.json
  sealcast info            # which Ed25519 backend this CPU runs (AVX-512 IFMA, AVX2 or serial)";

/// Measure open, seal, report-batch, burst, multi-core and rekey rates.
///
/// Every figure stands beside a baseline measured in the same run (raw
/// Ed25519 verify_strict and sign, one-by-one verification and open, one
/// thread, point-to-point rekey) and is reported as a ratio to it. The
/// output names the curve25519-dalek backend, whether strict verification
/// is on and the build profile: a debug build measures nothing useful
/// (build with --release). Progress goes to standard error.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// Short rounds (about 1 s in all): a smoke test, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object on standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// Devices in the end-to-end fire-safety run (default: 300, or 30 with
    /// --quick; 0 skips it). It runs the whole deployment over the embedded
    /// MQTT broker on loopback and times the alert to the last device acting.
    #[arg(long, value_name = "N")]
    e2e_devices: Option<usize>,
    /// Alerts in the loaded-gateway run (default: 20000, or 2000 with
    /// --quick; 0 skips it). A gateway on a thread of its own opens them
    /// from the embedded MQTT broker, as they queue up, with and without
    /// bursts; its CPU time is measured.
    #[arg(long, value_name = "N")]
    load_alerts: Option<usize>,
    /// Reports per DAP service run (default: 10000, or 2000 with --quick;
    /// 0 skips them). The DAP runtime on a thread of its own takes meters'
    /// reports from the embedded MQTT broker and sends signed batches, with
    /// 1 000 and 10 000 meters and with 1 % and 10 % forged reports; its
    /// CPU time is measured.
    #[arg(long, value_name = "N")]
    dap_reports: Option<usize>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let plan = if args.quick { Plan::QUICK } else { Plan::FULL };
    let e2e_devices = args.e2e_devices.unwrap_or(plan.e2e_devices);
    if e2e_devices != 0 && !(6..=5_000).contains(&e2e_devices) {
        return Err(CliError::usage(
            "--e2e-devices must be 0 (skip) or 6..=5000",
        ));
    }
    let load_alerts = args.load_alerts.unwrap_or(plan.load_alerts);
    if load_alerts != 0 && !(100..=1_000_000).contains(&load_alerts) {
        return Err(CliError::usage(
            "--load-alerts must be 0 (skip) or 100..=1000000",
        ));
    }
    let dap_reports = args.dap_reports.unwrap_or(plan.dap_reports);
    if dap_reports != 0 && !(100..=1_000_000).contains(&dap_reports) {
        return Err(CliError::usage(
            "--dap-reports must be 0 (skip) or 100..=1000000",
        ));
    }
    let mut progress = Progress::new(
        STEPS
            + usize::from(e2e_devices > 0)
            + usize::from(load_alerts > 0)
            + usize::from(dap_reports > 0),
    );
    let mut results = measure(plan, &mut progress)
        .map_err(|e| CliError::other(format!("benchmark fixture failed: {e} (this is a bug)")))?;
    if e2e_devices > 0 {
        progress.step(&format!(
            "end to end: fire-safety with {e2e_devices} devices over MQTT"
        ));
        results.e2e = Some(end_to_end(e2e_devices, plan.e2e_runs, &results)?);
    }
    if load_alerts > 0 {
        progress.step(&format!(
            "loaded gateway: {load_alerts} alerts from {} sensors over MQTT, one by one and in bursts",
            plan.load_sensors
        ));
        results.load = Some(loaded_gateway(
            plan.load_sensors,
            load_alerts,
            plan.e2e_runs,
            &results,
        )?);
    }
    if dap_reports > 0 {
        progress.step(&format!(
            "DAP service: {dap_reports} reports over MQTT, 1 000 and 10 000 meters, 1 % and 10 % forged"
        ));
        results.dap = Some(dap_service(dap_reports, plan.e2e_runs.min(2), &results)?);
    }
    progress.done();
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        results.json()
    } else {
        results.table()
    };
    // A closed pipe is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------

/// How long to measure.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Untimed time per operation before the rounds.
    warm_up: Duration,
    /// Time per round: with `rounds`, the time each comparison runs.
    round: Duration,
    /// Rounds per operation (alternating with its baseline).
    rounds: usize,
    /// Evictions timed per tree size.
    tree_evictions: usize,
    /// Devices of the end-to-end run.
    e2e_devices: usize,
    /// End-to-end runs (the fastest counts: the others met more noise);
    /// also the loaded-gateway runs of each kind.
    e2e_runs: usize,
    /// Sensors of the loaded-gateway run.
    load_sensors: usize,
    /// Alerts of the loaded-gateway run.
    load_alerts: usize,
    /// Reports of each DAP service run.
    dap_reports: usize,
}

impl Plan {
    const QUICK: Plan = Plan {
        warm_up: Duration::from_millis(5),
        round: Duration::from_millis(15),
        rounds: 3,
        tree_evictions: 16,
        e2e_devices: 30,
        e2e_runs: 1,
        load_sensors: 20,
        load_alerts: 2_000,
        dap_reports: 2_000,
    };
    const FULL: Plan = Plan {
        warm_up: Duration::from_millis(100),
        round: Duration::from_millis(150),
        rounds: 7,
        tree_evictions: 256,
        e2e_devices: 300,
        e2e_runs: 3,
        load_sensors: 200,
        load_alerts: 20_000,
        dap_reports: 10_000,
    };
}

/// A stopwatch of the calling thread's CPU time where the OS offers one
/// (CLOCK_THREAD_CPUTIME_ID), else of wall time. On a shared machine the
/// CPU clock leaves out the time other processes held the core, which is
/// most of the noise; it does not remove cache and memory interference.
struct Stopwatch {
    wall: Instant,
    cpu: Option<cpu_time::ThreadTime>,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_time::ThreadTime::try_now().ok(),
        }
    }

    fn wall(&self) -> Duration {
        self.wall.elapsed()
    }

    /// CPU time of this thread since the start (wall time without a CPU
    /// clock).
    fn busy(&self) -> Duration {
        self.cpu
            .as_ref()
            .and_then(|c| c.try_elapsed().ok())
            .unwrap_or_else(|| self.wall.elapsed())
    }
}

/// Which clock the rates use.
fn clock_name() -> &'static str {
    if cpu_time::ThreadTime::try_now().is_ok() {
        "thread-cpu"
    } else {
        "wall"
    }
}

/// Runs `unit` (which returns how many operations it did) for at least
/// `time` of wall time; returns operations per second of busy time.
fn rate(time: Duration, unit: &mut dyn FnMut() -> u64) -> f64 {
    let watch = Stopwatch::start();
    let mut ops = 0u64;
    loop {
        ops += unit();
        if watch.wall() >= time {
            return ops as f64 / watch.busy().as_secs_f64().max(1e-9);
        }
    }
}

/// Rates of `a` and of its baseline `b`, measured interleaved: after a
/// warm-up, slices of about [`SLICE`] of one, then of the other, until the
/// plan's time is spent. Both see the same machine at (nearly) the same
/// moments, so load that comes and goes cancels out of the ratio; each rate
/// is operations per second of busy time over all of its slices.
fn paired(plan: Plan, a: &mut dyn FnMut() -> u64, b: &mut dyn FnMut() -> u64) -> (f64, f64) {
    rate(plan.warm_up, a);
    rate(plan.warm_up, b);
    let total = plan.round * plan.rounds as u32;
    let start = Instant::now();
    let (mut ops_a, mut ops_b) = (0u64, 0u64);
    let (mut busy_a, mut busy_b) = (Duration::ZERO, Duration::ZERO);
    let mut offset = 0usize;
    while start.elapsed() < total {
        let (o, t) = slice(a, offset);
        ops_a += o;
        busy_a += t;
        let (o, t) = slice(b, offset);
        ops_b += o;
        busy_b += t;
        offset += 1;
    }
    let per_sec = |ops: u64, busy: Duration| ops as f64 / busy.as_secs_f64().max(1e-9);
    (per_sec(ops_a, busy_a), per_sec(ops_b, busy_b))
}

/// Wall time of one slice of [`paired`]: long against the clock reads,
/// short against the load changes of a shared machine.
const SLICE: Duration = Duration::from_millis(2);

/// Runs `unit` for about [`SLICE`] at stack offset `offset` (see
/// [`at_stack_offset`]); returns operations and busy time.
fn slice(unit: &mut dyn FnMut() -> u64, offset: usize) -> (u64, Duration) {
    let watch = Stopwatch::start();
    let mut ops = 0u64;
    while watch.wall() < SLICE {
        ops += at_stack_offset(offset, unit);
    }
    (ops, watch.busy())
}

// ---------------------------------------------------------------------------
// Progress on standard error
// ---------------------------------------------------------------------------

/// open ×3, seal, batch ×3, forged batch ×2, burst, threads,
/// point-to-point, tree ×3.
const STEPS: usize = 15;

struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Announces the next step.
    fn step(&mut self, what: &str) {
        const WIDTH: usize = 24;
        let filled = (WIDTH * self.done / self.total.max(1)).min(WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        let line = format!("[{bar}] {}/{} {what}", self.done + 1, self.total);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.done += 1;
    }

    fn done(&mut self) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            writeln!(err, "\r\x1b[2K[{}] done", "#".repeat(24))
        } else {
            writeln!(err, "done")
        };
    }
}

// ---------------------------------------------------------------------------
// Fixtures: sealcast_demo::fixture, shared with the criterion benches
// (seeded: every run measures the same bytes)
// ---------------------------------------------------------------------------

/// Broadcasts per pool: a receiver opens a pool once, then starts over.
const POOL: usize = 512;
/// The payload size of the headline figures.
const PAYLOAD: usize = 100;

// ---------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------

/// Open rate of one payload size beside raw `verify_strict` of the same
/// signatures.
#[derive(Debug)]
struct OpenFigure {
    payload: usize,
    open_per_sec: f64,
    verify_strict_per_sec: f64,
    /// AES-GCM open of the inner object, as a fraction of one verify.
    aead_share: f64,
}

#[derive(Debug)]
struct BatchFigure {
    size: usize,
    batch_per_sec: f64,
    single_per_sec: f64,
}

#[derive(Debug)]
struct RekeyFigure {
    members: usize,
    tree_cpu_s: f64,
    tree_bytes: usize,
    p2p_cpu_s: f64,
    p2p_bytes: u64,
    p2p_extrapolated: bool,
}

#[derive(Debug)]
struct Results {
    quick: bool,
    open: Vec<OpenFigure>,
    seal_per_sec: f64,
    sign_per_sec: f64,
    batches: Vec<BatchFigure>,
    /// A batch of 64 reports with one forgery, beside one by one.
    forged64: BatchFigure,
    /// With six forgeries (≈ 10 %), bisected from the whole batch.
    forged64_six: BatchFigure,
    /// With six forgeries, checked in groups planned for six.
    forged64_six_planned: BatchFigure,
    burst64_open_per_sec: f64,
    burst64_single_open_per_sec: f64,
    threads: ThreadRates,
    p2p_measured_members: usize,
    rekey: Vec<RekeyFigure>,
    failures: u64,
    e2e: Option<EndToEnd>,
    load: Option<LoadedGateway>,
    dap: Option<DapService>,
}

/// A batch of 64 reports with the reports at `forged` spoiled (their
/// signatures no longer hold), verified as one batch planned for
/// `planned_for` forgeries per 1 000, beside one by one; each run must refuse
/// exactly the spoiled ones (else counted in `failures`).
fn forged_batch(
    plan: Plan,
    reports: &ReportFixture,
    forged: &[usize],
    planned_for: u64,
    failures: &mut u64,
) -> BatchFigure {
    let mut spoiled: Vec<Vec<u8>> = reports.reports[..64].to_vec();
    for i in forged {
        if let Some(last) = spoiled[*i].len().checked_sub(3) {
            spoiled[*i][last] ^= 0x40;
        }
    }
    let slice: Vec<&[u8]> = spoiled.iter().map(Vec::as_slice).collect();
    let slice = slice.as_slice();
    let (mut batch_wrong, mut single_wrong) = (0u64, 0u64);
    let (batch_per_sec, single_per_sec) = paired(
        plan,
        &mut || {
            let out = verify_reports_batch_expecting(
                slice,
                &reports.headend,
                |id| reports.key(id),
                |_| Ok(()),
                planned_for,
            );
            let refused: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_err()).collect();
            batch_wrong += u64::from(refused != forged);
            64
        },
        &mut || {
            let refused: Vec<usize> = (0..slice.len())
                .filter(|i| {
                    verify_report(slice[*i], &reports.headend, |id| reports.key(id)).is_err()
                })
                .collect();
            single_wrong += u64::from(refused != forged);
            64
        },
    );
    *failures += batch_wrong + single_wrong;
    BatchFigure {
        size: 64,
        batch_per_sec,
        single_per_sec,
    }
}

fn measure(plan: Plan, progress: &mut Progress) -> FixtureResult<Results> {
    let group = Group::new(7)?;
    let vk: VerifyingKey = *group.signer.public().verifying_key();
    let mut failures = 0u64;

    // Open beside raw verify_strict, per payload size.
    let mut open = Vec::new();
    for len in [16usize, PAYLOAD, 1024] {
        progress.step(&format!("open {len} B vs verify_strict"));
        let pool = group.pool(POOL, len)?;
        let signed = group.signed_pool(POOL, len)?;
        let mut opener = Opener::new(&group, &pool)?;
        let mut i = 0usize;
        let mut verify_failures = 0u64;
        let (open_rate, verify_rate) = paired(plan, &mut || opener.open_one(), &mut || {
            let (tbs, sig) = &signed[i % signed.len()];
            i += 1;
            if vk.verify_strict(tbs, sig).is_err() {
                verify_failures += 1;
            }
            1
        });
        failures += opener.failures + verify_failures;
        // What part of the envelope's cost is the AEAD itself: AES-128-GCM
        // open of a buffer the size of the inner object (payload + ~80 B).
        let aead = AeadKey::new(AeadAlg::A128Gcm, &[7u8; 16])?;
        let sealed = aead.seal(&[1u8; 12], b"aad", &payload(0, len + 80))?;
        let mut aead_failures = 0u64;
        let aead_rate = rate(plan.round, &mut || {
            match aead.open_data(&[1u8; 12], b"aad", &sealed) {
                Ok(pt) => {
                    std::hint::black_box(pt);
                }
                Err(_) => aead_failures += 1,
            }
            1
        });
        failures += aead_failures;
        open.push(OpenFigure {
            payload: len,
            open_per_sec: open_rate,
            verify_strict_per_sec: verify_rate,
            aead_share: ratio(verify_rate, aead_rate),
        });
    }

    // Seal beside raw sign.
    progress.step("seal vs sign");
    let body = payload(0, PAYLOAD);
    let (tbs, _) = group
        .signed_pool(1, PAYLOAD)?
        .pop()
        .ok_or(sealcast_core::Error::Malformed("empty pool"))?;
    let mut seq = 0u64;
    let mut seal_failures = 0u64;
    let (seal_per_sec, sign_per_sec) = paired(
        plan,
        &mut || {
            seq = (seq + 1) % SeqNum::MAX;
            match group.seal(seq, &body) {
                Ok(b) => {
                    std::hint::black_box(b);
                }
                Err(_) => seal_failures += 1,
            }
            1
        },
        &mut || {
            std::hint::black_box(group.signer.signing_key().sign(&tbs));
            1
        },
    );
    failures += seal_failures;

    // DAP: batch verification of reports beside one by one.
    let reports = ReportFixture::new(256)?;
    let mut batches = Vec::new();
    for size in [8usize, 64, 256] {
        progress.step(&format!("report batch {size} vs one by one"));
        let slice: Vec<&[u8]> = reports.reports[..size].iter().map(Vec::as_slice).collect();
        let slice = slice.as_slice();
        let (mut batch_failures, mut single_failures) = (0u64, 0u64);
        let (batch_rate, single_rate) = paired(
            plan,
            &mut || {
                let out = verify_reports_batch(slice, &reports.headend, |id| reports.key(id));
                batch_failures += out.iter().filter(|r| r.is_err()).count() as u64;
                size as u64
            },
            &mut || {
                for r in slice {
                    if verify_report(r, &reports.headend, |id| reports.key(id)).is_err() {
                        single_failures += 1;
                    }
                }
                size as u64
            },
        );
        failures += batch_failures + single_failures;
        batches.push(BatchFigure {
            size,
            batch_per_sec: batch_rate,
            single_per_sec: single_rate,
        });
    }

    // The same batch of 64 with one forged report (its signature spoiled):
    // the batch finds it by bisection, beside one by one. Then 6 forged
    // (about 10 %), bisected from the whole batch and planned for (as a
    // DAP that has been receiving forgeries checks them).
    progress.step("report batch 64 with one forgery vs one by one");
    let forged64 = forged_batch(plan, &reports, &[37], 0, &mut failures);
    progress.step("report batch 64 with 6 forgeries vs one by one");
    let six = [5, 14, 29, 37, 48, 60];
    let forged64_six = forged_batch(plan, &reports, &six, 0, &mut failures);
    let forged64_six_planned = forged_batch(plan, &reports, &six, 94, &mut failures);

    // Burst open of 64 beside one-by-one open.
    progress.step("burst open 64 vs one by one");
    let burst_pool = group.pool(64, PAYLOAD)?;
    let items: Vec<(&[u8], &str)> = burst_pool.iter().map(|b| (b.as_slice(), TARGET)).collect();
    let (mut burst_failures, mut single_failures) = (0u64, 0u64);
    let (burst64_open_per_sec, burst64_single_open_per_sec) = paired(
        plan,
        &mut || {
            match group.receiver() {
                Ok(mut rx) => {
                    let out = rx.open_burst(&items, NOW);
                    burst_failures += out.iter().filter(|r| r.is_err()).count() as u64;
                }
                Err(_) => burst_failures += 1,
            }
            items.len() as u64
        },
        &mut || {
            match group.receiver() {
                Ok(mut rx) => {
                    for (b, t) in &items {
                        if rx.open(b, t, NOW).is_err() {
                            single_failures += 1;
                        }
                    }
                }
                Err(_) => single_failures += 1,
            }
            items.len() as u64
        },
    );
    failures += burst_failures + single_failures;

    // Two threads beside one.
    progress.step("open on 2 threads vs 1");
    let pools = [group.pool(POOL, PAYLOAD)?, group.pool(POOL, PAYLOAD)?];
    let thread_rates = threads(plan, &group, &pools);
    failures += thread_rates.failures;

    // Rekey: point-to-point deliveries beside one tree eviction.
    progress.step("rekey point-to-point (1 000 members)");
    let p2p = P2pCost::measure(1_000)?;
    let mut rekey = Vec::new();
    for members in [1_000usize, 10_000, 100_000] {
        progress.step(&format!("rekey tree ({} members)", thousands(members)));
        let (tree_cpu_s, tree_bytes) = tree_eviction(members, plan.tree_evictions)?;
        let deliveries = (members - 1) as f64;
        rekey.push(RekeyFigure {
            members,
            tree_cpu_s,
            tree_bytes,
            p2p_cpu_s: p2p.cpu_per_delivery_s * deliveries,
            p2p_bytes: p2p.bytes_per_delivery * (members as u64 - 1),
            p2p_extrapolated: members != p2p.members,
        });
    }

    Ok(Results {
        quick: plan.rounds == Plan::QUICK.rounds,
        open,
        seal_per_sec,
        sign_per_sec,
        batches,
        burst64_open_per_sec,
        forged64,
        forged64_six,
        forged64_six_planned,
        burst64_single_open_per_sec,
        threads: thread_rates,
        p2p_measured_members: p2p.members,
        rekey,
        failures,
        e2e: None,
        load: None,
        dap: None,
    })
}

/// Open rates on two threads (each its own receiver and pool) and on one,
/// in alternating rounds of the same wall time.
#[derive(Debug, Default)]
struct ThreadRates {
    /// Sum over the threads of each one's operations per second of its own
    /// CPU time: how well the work scales when the cores are there.
    two_cpu: f64,
    one_cpu: f64,
    /// Operations per second of wall time: what this machine delivered,
    /// other processes included.
    two_wall: f64,
    one_wall: f64,
    failures: u64,
}

fn threads(plan: Plan, group: &Group, pools: &[Vec<Vec<u8>>; 2]) -> ThreadRates {
    // (sum of per-thread CPU rates, wall rate, failures)
    let run = |n: usize, time: Duration| -> (f64, f64, u64) {
        let start = Instant::now();
        let per_thread: Vec<(u64, f64, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = pools
                .iter()
                .take(n)
                .map(|pool| {
                    s.spawn(move || match Opener::new(group, pool) {
                        Ok(mut opener) => {
                            let watch = Stopwatch::start();
                            let mut ops = 0u64;
                            while watch.wall() < time {
                                ops += opener.open_one();
                            }
                            let busy = watch.busy().as_secs_f64().max(1e-9);
                            (ops, ops as f64 / busy, opener.failures)
                        }
                        Err(_) => (0, 0.0, 1),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or((0, 0.0, 1)))
                .collect()
        });
        let elapsed = start.elapsed().as_secs_f64().max(1e-9);
        let ops: u64 = per_thread.iter().map(|t| t.0).sum();
        let cpu_rate = per_thread.iter().map(|t| t.1).sum();
        let failures = per_thread.iter().map(|t| t.2).sum();
        (cpu_rate, ops as f64 / elapsed, failures)
    };
    run(2, plan.warm_up);
    run(1, plan.warm_up);
    let mut r = ThreadRates::default();
    for _ in 0..plan.rounds {
        let (two_cpu, two_wall, f2) = run(2, plan.round);
        let (one_cpu, one_wall, f1) = run(1, plan.round);
        r.two_cpu = r.two_cpu.max(two_cpu);
        r.one_cpu = r.one_cpu.max(one_cpu);
        r.two_wall = r.two_wall.max(two_wall);
        r.one_wall = r.one_wall.max(one_wall);
        r.failures += f1 + f2;
    }
    r
}

/// One report from each of `count` meters to one headend (a DAP sees many
/// meters, so no key repeats inside a batch).
struct ReportFixture {
    headend: EntityId,
    keys: std::collections::HashMap<EntityId, VerifyingKey>,
    reports: Vec<Vec<u8>>,
}

impl ReportFixture {
    fn new(count: usize) -> FixtureResult<Self> {
        let mut rng = bench_rng(11);
        let headend = EntityCredential::generate(EntityId::new("headend")?, &mut rng);
        let meters: Vec<EntityCredential> = (0..count)
            .map(|i| {
                Ok(EntityCredential::generate(
                    EntityId::new(&format!("meter-{i}"))?,
                    &mut rng,
                ))
            })
            .collect::<FixtureResult<_>>()?;
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
            })
            .collect::<FixtureResult<_>>()?;
        let reports = (0..count)
            .map(|i| {
                let k = i % meters.len();
                seal_report(
                    meters[k].id(),
                    meters[k].signing_key(),
                    headend.id(),
                    &pairwise[k],
                    SeqNum::new((i / meters.len()) as u64)?,
                    NOW,
                    &payload(i as u64, 48),
                )
            })
            .collect::<FixtureResult<_>>()?;
        Ok(Self {
            headend: headend.id().clone(),
            keys: meters
                .iter()
                .map(|m| (m.id().clone(), *m.public().verifying_key()))
                .collect(),
            reports,
        })
    }

    fn key(&self, id: &EntityId) -> Option<&VerifyingKey> {
        self.keys.get(id)
    }
}

/// The cost of one point-to-point key delivery, measured over the `n − 1`
/// deliveries of an eviction from a group of `n`.
struct P2pCost {
    members: usize,
    cpu_per_delivery_s: f64,
    bytes_per_delivery: u64,
}

impl P2pCost {
    fn measure(members: usize) -> FixtureResult<Self> {
        let mut rng = bench_rng(21);
        let manager = EntityCredential::generate(EntityId::new("manager")?, &mut rng);
        let signer = EntityCredential::generate(EntityId::new("alarm-panel-1")?, &mut rng);
        let material = GroupKeyMaterial::generate(
            GroupId::new(b"fire-site-4")?,
            Epoch::new(2),
            AeadAlg::A128Gcm,
            vec![AuthorizedSigner {
                sender_id: SenderId::new([0x01])?,
                entity: signer.id().clone(),
                verifying_key: *signer.public().verifying_key(),
            }],
            None,
            &mut rng,
        )?;
        // Recipients' public keys: 64 distinct ones, reused (the cost does
        // not depend on which key).
        let recipients: Vec<(EntityId, _)> = (0..64)
            .map(|i| {
                let c = EntityCredential::generate(EntityId::new(&format!("dev-{i}"))?, &mut rng);
                Ok((c.id().clone(), *c.public().agreement_key()))
            })
            .collect::<FixtureResult<_>>()?;
        let deliveries = members - 1;
        let mut bytes = 0u64;
        let start = Stopwatch::start();
        for i in 0..deliveries {
            let (id, key) = &recipients[i % recipients.len()];
            let d = seal_key_delivery(
                manager.id(),
                manager.signing_key(),
                id,
                key,
                &material,
                &mut rng,
            )?;
            bytes += d.len() as u64;
        }
        let cpu = start.busy().as_secs_f64();
        Ok(Self {
            members,
            cpu_per_delivery_s: cpu / deliveries as f64,
            bytes_per_delivery: bytes / deliveries as u64,
        })
    }
}

/// Mean CPU time and bytes of one tree eviction from a group of `members`:
/// `KeyTree::remove_member`, its CBOR, and the manager's signature over it.
fn tree_eviction(members: usize, evictions: usize) -> FixtureResult<(f64, usize)> {
    let mut rng = bench_rng(31);
    let manager = EntityCredential::generate(EntityId::new("manager")?, &mut rng);
    let mut tree = KeyTree::with_members(members, Epoch::new(1), &mut rng)
        .map_err(|_| sealcast_core::Error::Malformed("key tree"))?;
    let stride = (members / evictions).max(1);
    let mut bytes = 0usize;
    let mut elapsed = Duration::ZERO;
    for k in 0..evictions {
        let leaf = LeafIndex::new(((k * stride + k / members) % members) as u32);
        let epoch = Epoch::new(2 + k as u32);
        let start = Stopwatch::start();
        let rekey = tree
            .remove_member(leaf, epoch, &mut rng)
            .map_err(|_| sealcast_core::Error::Malformed("tree eviction"))?;
        let signed = sign_statement(
            manager.id(),
            manager.signing_key(),
            "sealcast tree rekey v1",
            &rekey.to_cbor(),
        );
        elapsed += start.busy();
        bytes += signed.len();
    }
    Ok((elapsed.as_secs_f64() / evictions as f64, bytes / evictions))
}

//! The DAP as a service: reports in through the broker, signed batches out.

use super::*;
use sealcast_demo::load::{DapLoad, DapLoadReport, dap_under_load};

/// One DAP service run's shape.
#[derive(Clone, Copy, Debug)]
pub(super) struct DapCase {
    pub(super) meters: usize,
    pub(super) forged_per_mille: usize,
}

/// The cases `sealcast bench` runs: 1 000 and 10 000 meters, then 1 % and
/// 10 % forged reports at 1 000 meters.
pub(super) const DAP_CASES: [DapCase; 4] = [
    DapCase {
        meters: 1_000,
        forged_per_mille: 0,
    },
    DapCase {
        meters: 10_000,
        forged_per_mille: 0,
    },
    DapCase {
        meters: 1_000,
        forged_per_mille: 10,
    },
    DapCase {
        meters: 1_000,
        forged_per_mille: 100,
    },
];

/// The DAP service's figures of one run of `sealcast bench`.
#[derive(Debug)]
pub(super) struct DapService {
    pub(super) reports: usize,
    pub(super) runs: usize,
    /// Per case (as [`DAP_CASES`]), the best run.
    pub(super) cases: Vec<(DapCase, DapLoadReport)>,
    /// Pure batch verification of 64 reports, per report and CPU-second,
    /// from this run.
    pub(super) batch_verify_per_sec: f64,
}

impl DapService {
    /// Reports per CPU-second of the DAP service over its pure batch
    /// verification rate, for `meters` meters and `forged_per_mille`.
    pub(super) fn ratio(&self, meters: usize, forged_per_mille: usize) -> Option<f64> {
        self.cases
            .iter()
            .find(|(c, _)| c.meters == meters && c.forged_per_mille == forged_per_mille)
            .map(|(_, r)| ratio(r.reports_per_cpu_second(), self.batch_verify_per_sec))
    }
}

/// Runs every case `runs` times, in turn.
pub(super) fn dap_service(reports: usize, runs: usize, results: &Results) -> Result<DapService> {
    let batch_verify_per_sec = results
        .batches
        .iter()
        .find(|b| b.size == 64)
        .map_or(0.0, |b| b.batch_per_sec);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))?;
    let mut best: Vec<Option<DapLoadReport>> = vec![None; DAP_CASES.len()];
    for _ in 0..runs.max(1) {
        for (case, slot) in DAP_CASES.iter().zip(best.iter_mut()) {
            let report = rt
                .block_on(dap_under_load(DapLoad {
                    meters: case.meters,
                    reports,
                    forged_per_mille: case.forged_per_mille,
                    batch_size: 64,
                }))
                .map_err(|e| CliError::other(format!("the DAP service run failed: {e}")))?;
            if slot.is_none_or(|b| report.reports_per_cpu_second() > b.reports_per_cpu_second()) {
                *slot = Some(report);
            }
        }
    }
    let cases = DAP_CASES
        .iter()
        .zip(best)
        .filter_map(|(c, r)| Some((*c, r?)))
        .collect();
    Ok(DapService {
        reports,
        runs: runs.max(1),
        cases,
        batch_verify_per_sec,
    })
}

//! A gateway under a sustained alert load, with and without bursts.

use super::*;
use sealcast_demo::load::{AlertLoad, LoadReport, gateway_under_load};

/// The loaded gateway: the same load opened one by one (`max_burst` 1)
/// and with the runtime's bursts (the default), runs alternating, the best
/// of each kept.
#[derive(Debug)]
pub(super) struct LoadedGateway {
    pub(super) sensors: usize,
    pub(super) alerts: usize,
    pub(super) runs: usize,
    pub(super) one_by_one: LoadReport,
    pub(super) bursts: LoadReport,
    /// One open of a 16-byte broadcast on one core, from this run.
    pub(super) single_open_per_sec: f64,
}

impl LoadedGateway {
    /// Opens per CPU-second of the loaded gateway with bursts, over one
    /// open's rate on one core (the goal: ≥ 2.5).
    pub(super) fn ratio(&self) -> f64 {
        ratio(self.bursts.opens_per_cpu_second(), self.single_open_per_sec)
    }

    /// The same, every alert opened alone: what the runtime costs around
    /// an open.
    pub(super) fn one_by_one_ratio(&self) -> f64 {
        ratio(
            self.one_by_one.opens_per_cpu_second(),
            self.single_open_per_sec,
        )
    }

    /// Alerts per burst, on average.
    pub(super) fn mean_burst(&self) -> f64 {
        ratio(self.bursts.in_bursts as f64, self.bursts.bursts as f64)
    }
}

/// Runs the load `runs` times each way.
pub(super) fn loaded_gateway(
    sensors: usize,
    alerts: usize,
    runs: usize,
    results: &Results,
) -> Result<LoadedGateway> {
    let single_open_per_sec = results
        .open
        .iter()
        .find(|o| o.payload == 16)
        .map_or(0.0, |o| o.open_per_sec);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))?;
    let mut best: [Option<LoadReport>; 2] = [None, None];
    for _ in 0..runs.max(1) {
        for (i, max_burst) in [1, sealcast_node::device::BURST_MAX]
            .into_iter()
            .enumerate()
        {
            let report = rt
                .block_on(gateway_under_load(AlertLoad {
                    sensors,
                    alerts,
                    max_burst,
                }))
                .map_err(|e| CliError::other(format!("the loaded-gateway run failed: {e}")))?;
            if let Some(slot) = best.get_mut(i)
                && slot.is_none_or(|b| report.opens_per_cpu_second() > b.opens_per_cpu_second())
            {
                *slot = Some(report);
            }
        }
    }
    let [Some(one_by_one), Some(bursts)] = best else {
        return Err(CliError::other("no loaded-gateway run (this is a bug)"));
    };
    Ok(LoadedGateway {
        sensors,
        alerts,
        runs: runs.max(1),
        one_by_one,
        bursts,
        single_open_per_sec,
    })
}

//! `sealcast bench --quick --json` runs and reports every field the issue
//! asks for. No timing is asserted: only that each figure is a finite
//! positive number and that the run names its backend, strictness and
//! build profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sealcast");

const NUMBERS: &[&str] = &[
    "open_per_sec",
    "verify_strict_per_sec",
    "open_to_verify_ratio",
    "seal_per_sec",
    "sign_per_sec",
    "batch64_per_sec",
    "single_verify_per_sec",
    "batch64_ratio",
    "batch64_six_forged_ratio",
    "batch64_six_forged_planned_ratio",
    "burst64_open_per_sec",
    "burst64_ratio",
    "two_thread_ratio",
    "rekey_tree_vs_p2p_cpu_ratio_100k",
    "open_16b_per_sec",
    "open_1024b_per_sec",
    "batch8_ratio",
    "batch256_ratio",
    "rekey_tree_bytes_100k",
    "rekey_p2p_bytes_100k",
    "e2e_devices",
    "e2e_opens",
    "e2e_alert_to_last_ms",
    "e2e_alert_to_gateway_ms",
    "e2e_alert_to_first_ms",
    "e2e_single_open_us",
    "e2e_cores",
    "e2e_pipeline_efficiency",
    "e2e_transport_floor_ms",
    "loaded_gateway_alerts",
    "loaded_gateway_sensors",
    "loaded_gateway_opens_per_cpu_sec",
    "loaded_gateway_ratio",
    "loaded_gateway_one_by_one_opens_per_cpu_sec",
    "loaded_gateway_one_by_one_ratio",
    "loaded_gateway_bursts_vs_one_by_one",
    "loaded_gateway_alerts_per_sec_wall",
    "loaded_gateway_one_by_one_alerts_per_sec_wall",
    "dap_reports",
    "dap_batch_verify_per_sec",
    "dap_service_1000_reports_per_cpu_sec",
    "dap_service_1000_ratio",
    "dap_service_10000_reports_per_cpu_sec",
    "dap_service_10000_ratio",
    "dap_forged_10pm_1000_ratio",
    "dap_forged_100pm_1000_ratio",
    "dap_service_ratio",
    "dap_forged_ratio",
];

#[test]
fn bench_quick_json_has_every_field() {
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sealcast bench failed: {stderr}");
    assert!(stderr.contains("open"), "no progress on stderr: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let obj = json.as_object().expect("a JSON object");

    let backend = obj["backend"].as_str().expect("backend is a string");
    assert!(
        ["serial", "fiat", "avx2", "avx512ifma"].contains(&backend),
        "backend {backend}"
    );
    assert_eq!(obj["strict"], serde_json::Value::Bool(true));
    let profile = obj["profile"].as_str().expect("profile is a string");
    assert!(["debug", "release"].contains(&profile), "profile {profile}");
    let expected_profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert_eq!(profile, expected_profile);

    for key in NUMBERS {
        let v = obj
            .get(*key)
            .unwrap_or_else(|| panic!("missing field {key}"))
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number: {}", obj[*key]));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(
        obj["failures"].as_u64(),
        Some(0),
        "operations failed during the run"
    );
    // The security overhead factor is what its definition says, from the
    // same run's figures (it may be below 0 on a noisy quick run).
    let f = |k: &str| {
        obj[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number"))
    };
    // The headline DAP ratios are the worst of their cases.
    assert_eq!(
        f("dap_service_ratio"),
        f("dap_service_1000_ratio").min(f("dap_service_10000_ratio"))
    );
    assert_eq!(
        f("dap_forged_ratio"),
        f("dap_forged_10pm_1000_ratio").min(f("dap_forged_100pm_1000_ratio"))
    );
    // Bursts form only when alerts queue up: at least none.
    assert!(f("loaded_gateway_mean_burst") >= 0.0);
    // The gateway verified the alert before any device acted on the
    // commands it issued, and the first device acted no later than the last.
    assert!(f("e2e_alert_to_gateway_ms") <= f("e2e_alert_to_first_ms"));
    assert!(f("e2e_alert_to_first_ms") <= f("e2e_alert_to_last_ms"));
    let factor = f("e2e_security_overhead_factor");
    let expected = (f("e2e_alert_to_last_ms") - f("e2e_transport_floor_ms"))
        / (f("e2e_opens") * f("e2e_single_open_us") / 1e3 / f("e2e_cores"));
    assert!(
        (factor - expected).abs() <= 1e-3 * expected.abs().max(1.0),
        "factor {factor} vs {expected}"
    );
}

#[test]
fn bench_table_names_backend_and_profile() {
    let out = Command::new(BIN)
        .args(["bench", "--quick"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("backend "), "{table}");
    assert!(table.contains("strict verification on"), "{table}");
    assert!(table.contains(" build"), "{table}");
    assert!(table.contains("open 100 B / raw verify_strict"), "{table}");
    assert!(table.contains("extrapolated linearly"), "{table}");
    assert!(table.contains("pipeline efficiency"), "{table}");
    assert!(table.contains("security overhead factor"), "{table}");
    assert!(table.contains("no security (MQTT alone"), "{table}");
    assert!(table.contains("loaded gateway:"), "{table}");
    assert!(table.contains("queued bursts"), "{table}");
    assert!(table.contains("DAP service:"), "{table}");
    assert!(table.contains("service ratio"), "{table}");
}

#[test]
fn bench_end_to_end_can_be_skipped_and_is_bounded() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--quick",
            "--json",
            "--e2e-devices",
            "0",
            "--load-alerts",
            "0",
            "--dap-reports",
            "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("e2e_devices").is_none(), "{json}");
    assert!(json.get("loaded_gateway_ratio").is_none(), "{json}");
    assert!(json.get("dap_service_ratio").is_none(), "{json}");
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--load-alerts", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--load-alerts must be"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--e2e-devices", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--e2e-devices must be"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

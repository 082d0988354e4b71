#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `sealcast demo fire-safety --transport onem2m` through a real oneM2M
//! deployment: the ACME CSE (an IN-CSE and an MN-CSE registered to it,
//! started here on free loopback ports), run the way a user runs it — the
//! `sealcast` binary. The demo checks every step and every attack itself
//! (a forged command, a CSE administrator reading a door's container, a
//! genuine command posted by a member's AE (refused by the CSE's ACPs) and
//! by the manager's AE (refused by sealcast as impersonation), the same
//! replayed with an
//! `X-M2M-Origin` claiming the gateway, a re-wrap into another group, the
//! command posted unchanged into another group's containers, an evicted
//! door) and exits 0 only if all of them held.
//!
//! Needs `SEALCAST_ACME`: a Python with `acmecse==2026.5.3` (`.ci/run`
//! installs it in a venv). Without it the tests print NOT RUN.

mod common;

use sealcast_testkit::acme::{ACME_ENV, AcmePair};

fn acme(test: &str) -> Option<String> {
    sealcast_testkit::require(
        ACME_ENV,
        test,
        "the ACME oneM2M CSE: a Python with `pip install acmecse==2026.5.3` (README: the oneM2M demo)",
    )
}

/// Runs `sealcast demo <args> --transport onem2m` through a fresh IN + MN
/// pair — over their HTTP binding, or with `mqtt` over their MQTT binding
/// on that broker port — and returns its standard output once it
/// succeeded (None: NOT RUN).
fn demo_through_cses(test: &str, args: &[&str], mqtt: Option<u16>) -> Option<String> {
    let python = acme(test)?;
    let dir = tempfile::tempdir().expect("temp dir");
    let cses = AcmePair::start_with(&python, dir.path(), mqtt).unwrap_or_else(|e| panic!("{e}"));
    let (infra, mn) = match mqtt {
        Some(_) => (
            cses.infra.mqtt_url.clone().expect("MQTT url"),
            cses.mn.mqtt_url.clone().expect("MQTT url"),
        ),
        None => (cses.infra.url.clone(), cses.mn.url.clone()),
    };
    let out = std::process::Command::new(common::bin())
        .arg("demo")
        .args(args)
        .args(["--transport", "onem2m"])
        .args(["--cse", &infra, "--cse", &mn])
        .output()
        .expect("run sealcast");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the oneM2M demo {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nMN log:\n{}",
        cses.mn.log_tail()
    );
    Some(stdout)
}

fn run_demo(test: &str, serialization: &str, mqtt: Option<u16>) {
    let args = [
        "fire-safety",
        "--devices",
        "9",
        "--cse-serialization",
        serialization,
    ];
    let Some(stdout) = demo_through_cses(test, &args, mqtt) else {
        return;
    };
    for line in [
        "PASSED",
        if mqtt.is_some() {
            "oneM2M over MQTT"
        } else {
            "oneM2M over HTTP"
        },
        "the CSE admin reading a door's container finds the gateway's command, as ciphertext only",
        "posted by mallory's own AE: refused by the CSE's ACPs (4103)",
        "posted as the manager's AE: doors that refused the impersonation",
        "attack 2, replayed \"unlock\": doors that refused it",
        "devices outside the door group the CSE fanned \"unlock\" out to",
        "re-posted into the extinguishers' containers: extinguishers that refused it",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert!(
        stdout.contains(&format!("application/{serialization}")),
        "{stdout}"
    );
}

#[test]
fn fire_safety_through_an_in_and_mn_cse_over_http_json() {
    run_demo(
        "fire_safety_through_an_in_and_mn_cse_over_http_json",
        "json",
        None,
    );
}

#[test]
fn fire_safety_through_an_in_and_mn_cse_over_http_cbor() {
    run_demo(
        "fire_safety_through_an_in_and_mn_cse_over_http_cbor",
        "cbor",
        None,
    );
}

/// The same over the CSEs' MQTT binding: every request primitive, response
/// and notification through the broker.
#[test]
fn fire_safety_through_an_in_and_mn_cse_over_mqtt() {
    let test = "fire_safety_through_an_in_and_mn_cse_over_mqtt";
    if acme(test).is_none() {
        return;
    }
    let Some(port) = sealcast_testkit::acme::mqtt_binding_port(test) else {
        return;
    };
    run_demo(test, "json", Some(port));
}

/// A CSE that is not there, or a URL that is not a CSE, is a clear error,
/// not a hang or a panic.
#[test]
fn a_missing_cse_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}/cse-in");
    let out = std::process::Command::new(common::bin())
        .args([
            "demo",
            "fire-safety",
            "--transport",
            "onem2m",
            "--cse",
            &url,
        ])
        .output()
        .expect("run sealcast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach the CSE at") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let out = std::process::Command::new(common::bin())
        .args(["demo", "fire-safety", "--transport", "onem2m"])
        .output()
        .expect("run sealcast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs --cse"),
        "{stderr}"
    );
}

/// Smart metering through the same pair of CSEs: the headend an AE on the
/// IN-CSE, the DAP and every meter AEs on the MN-CSE. Forgeries and replays
/// are posted with the victim meter's originator (ACME believes it) and
/// dropped by the DAP's end-to-end checks; a genuine report posted by
/// another meter's AE is dropped as impersonation.
#[test]
fn smart_metering_through_an_in_and_mn_cse() {
    let args = ["smart-meter", "--meters", "40"];
    let Some(stdout) = demo_through_cses("smart_metering_through_an_in_and_mn_cse", &args, None)
    else {
        return;
    };
    for line in [
        "PASSED",
        "40 meters registered as AEs",
        "a genuine report posted by another meter's AE, dropped as impersonation",
        "readings the headend decrypted                                                      120      120  ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
}

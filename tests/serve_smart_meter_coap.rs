#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Smart metering over CoAP as separate `sealcast` processes, through the
//! same link as the fire-safety services: a headend, a DAP (`agent serve`
//! with `[dap]`) and meters sending with `device report`, each on the
//! endpoint of its config. A meter's report is answered only once the DAP
//! forwarded its batch and the headend took it: with the headend stopped a
//! report fails instead of vanishing, and succeeds once it is back. A
//! forgery sent with a raw CoAP client is dropped at the DAP; a SIGKILLed
//! DAP restarted on the same endpoint carries on with no reading lost or
//! doubled.

mod common;

/// A `[coap]` section: `listen`, the multicast `group` pinned to
/// 127.0.0.1, and an endpoint for each of `peers` (id, address).
fn coap_section(listen: &str, group: &str, peers: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[coap]\nlisten = \"{listen}\"\n\
         group = \"{group}\"\nmulticast_interface = \"127.0.0.1\"\n"
    );
    for (id, at) in peers {
        s.push_str(&format!(
            "[[coap.endpoint]]\nid = \"{id}\"\naddress = \"{at}\"\n"
        ));
    }
    s
}

use std::fs;
use std::time::{Duration, Instant};

use common::{
    Procs, free_udp_port, headend_readings, keygen, reading_line, report_seqs, run_prefix,
    start_headend, wait_until,
};
use sealcast_coap::{ClientConfig, CoapClient, ContentFormat, Request, ResponseCode};
use sealcast_core::ids::EntityId;
use sealcast_core::target::{AgentChannel, TopicScheme};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smart_metering_over_coap_as_separate_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("m");
    let (headend, dap) = ("headend", "dap-1");
    let meters = ["meter-1", "meter-2"];
    keygen(&dir, [headend, dap, meters[0], meters[1]]);
    common::meters_dir(&dir, &meters);
    let (headend_at, dap_at) = (
        format!("127.0.0.1:{}", free_udp_port()),
        format!("127.0.0.1:{}", free_udp_port()),
    );
    let group = format!("224.0.1.187:{}", free_udp_port());
    let coap = |listen: &str, peers: &[(&str, &str)]| coap_section(listen, &group, peers);
    // The top-level keys first: the tables close the top level.
    let top = format!("transport = \"coap\"\ntopic_prefix = \"{run}\"\n");
    fs::write(
        dir.join("headend.toml"),
        format!(
            "{top}key = \"{headend}.key\"\nstate_dir = \"headend-state\"\nmeters_dir = \"meters\"\n\
             [[dap]]\nid = \"{dap}\"\npublic_key = \"{dap}.pub\"\n{}",
            coap(&headend_at, &[(dap, &dap_at)])
        ),
    )
    .unwrap();
    fs::write(
        dir.join("agent.toml"),
        format!(
            "{top}key = \"{dap}.key\"\nstate_dir = \"dap-state\"\n\
             [dap]\ngroup = \"street-7\"\nheadend = \"{headend}\"\n\
             headend_public_key = \"{headend}.pub\"\nmeters_dir = \"meters\"\n\
             batch_size = 16\nmax_batch_delay_ms = 100\n{}",
            coap(&dap_at, &[(headend, &headend_at)])
        ),
    )
    .unwrap();
    for m in meters {
        fs::write(
            dir.join(format!("{m}.toml")),
            format!(
                "{top}key = \"{m}.key\"\nstate_dir = \"{m}-state\"\ndap = \"{dap}\"\n\
                 headend_public_key = \"{headend}.pub\"\n{}",
                coap("127.0.0.1:0", &[(dap, &dap_at)])
            ),
        )
        .unwrap();
    }

    // --- the services ----------------------------------------------------------
    let mut procs = Procs::new(&dir);
    start_headend(&mut procs);
    procs.start_appending("dap", &["agent", "serve", "--config", "agent.toml"]);
    wait_until("the headend accepts the DAP's announcement", &procs, || {
        procs.log("headend").contains("DAP announcement accepted")
    })
    .await;
    assert!(
        procs.log("headend").contains("transport=CoAP"),
        "{}",
        procs.logs()
    );

    // --- genuine readings: a batch of ten from one meter, one from another --
    let m1 = report_seqs(&common::device_report(&dir, meters[0], "m1 {n} kWh", 10));
    assert_eq!(m1, (0..10).collect::<Vec<_>>());
    let m2 = report_seqs(&common::device_report(&dir, meters[1], "m2 0 kWh", 1));
    let mut expected: Vec<String> = (0..10)
        .map(|n| reading_line(meters[0], n, dap, &format!("m1 {n} kWh")))
        .chain([reading_line(meters[1], m2[0], dap, "m2 0 kWh")])
        .collect();
    expected.sort();
    // `device report` returned after the headend took them: no waiting.
    assert_eq!(headend_readings(&dir), expected, "{}", procs.logs());
    // More reports in one run than a CoAP peer's queue holds (1 024): the
    // meter paces itself and every one arrives.
    let bulk = report_seqs(&common::device_report(&dir, meters[1], "bulk {n}", 1100));
    assert_eq!(bulk.len(), 1100);
    for (i, seq) in bulk.iter().enumerate() {
        expected.push(reading_line(meters[1], *seq, dap, &format!("bulk {i}")));
    }
    expected.sort();
    assert_eq!(headend_readings(&dir), expected, "{}", procs.logs());

    // --- a forgery from a raw CoAP client: answered, dropped at the DAP ----
    // Under a sequence number the meter has not used (the bulk run used
    // 0…1 100; a number in the window would be refused as a replay before
    // any signature work).
    let forged = common::forged_report(&dir, headend, meters[1], 50_000);
    let target = TopicScheme::with_prefix(&run)
        .unwrap()
        .agent(&EntityId::new(dap).unwrap(), AgentChannel::Report);
    let client = CoapClient::bind(ClientConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let answer = client
        .request(
            dap_at.parse().unwrap(),
            &Request::post(&target, ContentFormat::COSE_SIGN1, forged).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.code(), ResponseCode::CHANGED);
    assert!(answer.payload().is_empty());
    wait_until("the DAP drops the forgery", &procs, || {
        procs.log("dap").contains("forged=1")
    })
    .await;
    // … and reports it to the headend over CoAP (a forgery only names the
    // meter: audited, and no rule here acts on it).
    wait_until(
        "the headend hears the DAP's misbehaviour report",
        &procs,
        || {
            procs.log("headend").contains("misbehaviour reported")
                && procs.log("headend").contains("evidence=forgery")
        },
    )
    .await;

    // --- the headend stops: a report fails instead of vanishing -------------
    let status = procs.terminate_async("headend").await;
    assert!(status.success(), "headend on SIGTERM: {status:?}");
    let started = Instant::now();
    let lost = common::device_report(&dir, meters[1], "m2 lost kWh", 1);
    assert!(!lost.status.success(), "a report succeeded with no headend");
    let err = String::from_utf8_lossy(&lost.stderr).into_owned();
    assert!(err.contains("the report was not sent"), "{err}");
    assert!(err.contains("not accepted"), "{err}");
    eprintln!(
        "report without a headend failed after {:?}",
        started.elapsed()
    );
    // The DAP gives up on the headend about when the meter gives up on it.
    wait_until("the DAP leaves the report unacknowledged", &procs, || {
        procs
            .log("dap")
            .contains("the reports are not acknowledged")
    })
    .await;

    // --- back: the DAP is asked to announce again and reports flow ----------
    start_headend(&mut procs);
    wait_until("the restarted headend hears the DAP", &procs, || {
        procs
            .log("headend")
            .matches("DAP announcement accepted")
            .count()
            >= 2
    })
    .await;
    let again = report_seqs(&common::device_report(&dir, meters[1], "m2 1 kWh", 1));
    expected.push(reading_line(meters[1], again[0], dap, "m2 1 kWh"));
    expected.sort();
    assert_eq!(headend_readings(&dir), expected, "{}", procs.logs());

    // --- SIGKILL the DAP, restart it on the same endpoint --------------------
    procs.sigkill("dap");
    procs.start_appending("dap", &["agent", "serve", "--config", "agent.toml"]);
    wait_until("the restarted DAP announces", &procs, || {
        procs
            .log("headend")
            .matches("DAP announcement accepted")
            .count()
            >= 3
    })
    .await;
    let later = report_seqs(&common::device_report(
        &dir,
        meters[0],
        "m1 late {n} kWh",
        3,
    ));
    assert!(later[0] >= 10, "sequence number reused: {later:?}");
    for (i, seq) in later.iter().enumerate() {
        expected.push(reading_line(
            meters[0],
            *seq,
            dap,
            &format!("m1 late {i} kWh"),
        ));
    }
    expected.sort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(headend_readings(&dir), expected, "{}", procs.logs());
    procs.exit_on_ctrl_c("headend").await;
}

/// The downlink over CoAP: the DAP relays each key delivery to its meter's
/// endpoint and the configuration by multicast to the meter group; the
/// meters (`device listen`, each on the endpoint of its config) apply and
/// confirm through the DAP. A meter started late catches up; a command
/// sealed under a forger's key and posted to a meter's endpoint changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meters_are_reconfigured_over_coap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("mdl");
    let (headend, dap) = ("headend", "dap-1");
    let meters = ["meter-1", "meter-2"];
    keygen(&dir, [headend, dap, meters[0], meters[1]]);
    common::meters_dir(&dir, &meters);
    let at = |_: &str| format!("127.0.0.1:{}", free_udp_port());
    let (headend_at, dap_at) = (at(headend), at(dap));
    let meter_at = [at(meters[0]), at(meters[1])];
    let group = format!("224.0.1.187:{}", free_udp_port());
    let coap = |listen: &str, peers: &[(&str, &str)]| coap_section(listen, &group, peers);
    let top = format!("transport = \"coap\"\ntopic_prefix = \"{run}\"\n");
    fs::write(
        dir.join("headend.toml"),
        format!(
            "{top}key = \"{headend}.key\"\nstate_dir = \"headend-state\"\nmeters_dir = \"meters\"\n\
             [[dap]]\nid = \"{dap}\"\npublic_key = \"{dap}.pub\"\n\
             [downlink]\nretry_ms = 300\n{}",
            coap(&headend_at, &[(dap, &dap_at)])
        ),
    )
    .unwrap();
    fs::write(
        dir.join("agent.toml"),
        format!(
            "{top}key = \"{dap}.key\"\nstate_dir = \"dap-state\"\n\
             [dap]\nheadend = \"{headend}\"\n\
             headend_public_key = \"{headend}.pub\"\nmeters_dir = \"meters\"\n\
             batch_size = 4\nmax_batch_delay_ms = 50\n{}",
            coap(
                &dap_at,
                &[
                    (headend, &headend_at),
                    (meters[0], &meter_at[0]),
                    (meters[1], &meter_at[1])
                ]
            )
        ),
    )
    .unwrap();
    for (m, listen) in meters.iter().zip(&meter_at) {
        fs::write(
            dir.join(format!("{m}.toml")),
            format!(
                "{top}key = \"{m}.key\"\nstate_dir = \"{m}-state\"\ndap = \"{dap}\"\n\
                 headend_public_key = \"{headend}.pub\"\n{}",
                coap(listen, &[(dap, &dap_at)])
            ),
        )
        .unwrap();
    }
    let json = |noun: &str, file: &str| -> serde_json::Value {
        let out = common::run(&dir, &[noun, "meter-config", "--config", file, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let confirmed = |m: &str| {
        json("headend", "headend.toml")["meters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["meter"] == m && x["current"] == true)
    };

    let mut procs = Procs::new(&dir);
    start_headend(&mut procs);
    procs.start_appending("dap", &["agent", "serve", "--config", "agent.toml"]);
    wait_until("the headend accepts the DAP's announcement", &procs, || {
        procs.log("headend").contains("DAP announcement accepted")
    })
    .await;
    procs.start_appending(
        "meter-1-listen",
        &["device", "listen", "--config", "meter-1.toml"],
    );
    wait_until("meter-1 confirms the group key", &procs, || {
        confirmed(meters[0])
    })
    .await;
    let out = common::run_bounded(
        &dir,
        &[
            "headend",
            "configure-meters",
            "--config",
            "headend.toml",
            "--set",
            "report_interval_s=900",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("meter-1 applies and confirms version 1", &procs, || {
        confirmed(meters[0]) && json("device", "meter-1.toml")["version"] == 1
    })
    .await;
    assert_eq!(
        json("device", "meter-1.toml")["settings"]["report_interval_s"],
        "900"
    );
    // A reading still gets through while the listener runs (they share the
    // meter's sequence state under its lock).
    let seqs = report_seqs(&common::device_report(&dir, meters[0], "m1 1 kWh", 1));
    assert_eq!(seqs.len(), 1);

    // --- meter-2 starts late and catches up ---------------------------------
    procs.start_appending(
        "meter-2-listen",
        &["device", "listen", "--config", "meter-2.toml"],
    );
    wait_until("meter-2 catches up to version 1", &procs, || {
        confirmed(meters[1]) && json("device", "meter-2.toml")["version"] == 1
    })
    .await;

    // --- a forged command posted to meter-1's endpoint ----------------------
    let target = TopicScheme::with_prefix(&run).unwrap().group(
        &sealcast_core::ids::GroupId::new("meters").unwrap(),
        sealcast_core::target::GroupChannel::Command,
    );
    let (_, forged) =
        common::forged_meter_command(headend, &target, &[("report_interval_s", "1")], 5);
    let client = CoapClient::bind(ClientConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let _ = client
        .request(
            meter_at[0].parse().unwrap(),
            &Request::post(&target, ContentFormat::COSE_ENCRYPT0, forged).unwrap(),
        )
        .await;
    wait_until("meter-1 refuses the forged command", &procs, || {
        procs.log("meter-1-listen").lines().any(|l| {
            l.contains("downlink refused")
                && !l.contains("error=replay")
                && !l.contains("no meter group key yet")
        })
    })
    .await;
    assert_eq!(json("device", "meter-1.toml")["version"], 1);
    assert_eq!(
        json("device", "meter-1.toml")["settings"]["report_interval_s"],
        "900"
    );

    // --- the security associations refreshed over CoAP: both meters move
    // to epoch 1 and their readings still get through --------------------
    let out = common::run_bounded(
        &dir,
        &[
            "headend",
            "sa",
            "refresh",
            "--config",
            "headend.toml",
            "--all",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sa = || -> serde_json::Value {
        let out = common::run(
            &dir,
            &[
                "headend",
                "sa",
                "show",
                "--config",
                "headend.toml",
                "--json",
            ],
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    wait_until("both meters report under epoch 1", &procs, || {
        sa()["meters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["epoch"] == 1 && m["state"] == "established")
    })
    .await;
    let before = procs.log("headend").matches("reading meter=").count();
    let seqs = report_seqs(&common::device_report(&dir, meters[1], "m2 2 kWh", 1));
    assert_eq!(seqs.len(), 1);
    wait_until("meter-2's reading under epoch 1", &procs, || {
        procs.log("headend").matches("reading meter=").count() > before
    })
    .await;

    // --- the DAP deactivated over CoAP: a meter's report is refused (the
    // meter sees it), and goes through once the DAP is re-activated -------
    let order = |verb: &str| {
        let out = common::run_bounded(
            &dir,
            &["headend", verb, "--config", "headend.toml", "--dap", dap],
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dap_acknowledged = |reports: bool| {
        let out = common::run(
            &dir,
            &[
                "headend",
                "transmission",
                "--config",
                "headend.toml",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["meters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["meter"] == dap && m["acknowledged"] == true && m["reports"] == reports)
    };
    order("deactivate");
    wait_until("the DAP acknowledges its deactivation", &procs, || {
        dap_acknowledged(false)
    })
    .await;
    let refused = common::device_report(&dir, meters[1], "m2 3 kWh", 1);
    assert!(
        !refused.status.success(),
        "a deactivated DAP took a report over CoAP"
    );
    order("activate");
    wait_until("the DAP acknowledges its re-activation", &procs, || {
        dap_acknowledged(true)
    })
    .await;
    let before = procs.log("headend").matches("reading meter=").count();
    report_seqs(&common::device_report(&dir, meters[1], "m2 4 kWh", 1));
    wait_until(
        "meter-2's reading through the re-activated DAP",
        &procs,
        || procs.log("headend").matches("reading meter=").count() > before,
    )
    .await;
    drop(procs);
}

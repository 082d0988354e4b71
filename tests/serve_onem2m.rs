#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Manager, agent and devices as separate `sealcast` processes through a
//! oneM2M deployment: the ACME CSE, an IN-CSE (the manager's registrar) and
//! an MN-CSE registered to it (everyone else's, and the groups' host),
//! started here on free loopback ports. `transport = "onem2m"` with an
//! `[onem2m]` section in every config. The fire-safety flow through the
//! CSEs (alert → unlock fanned out by the MN-CSE's <group>), then a door
//! killed with SIGKILL and restarted: it keeps its AE, containers and place
//! in the group, executes the next command and nothing twice; then the
//! manager stops cleanly on SIGTERM.
//!
//! Needs `SEALCAST_ACME` (a Python with acmecse==2026.5.3); NOT RUN
//! without it.

mod common;

use std::fs;
use std::time::Duration;

use common::{
    FIRE_RULE, Procs, alert, executed, fire_safety_tables, keygen, manager_config, node_config,
    relays_for, run_prefix, wait_until_blocking,
};
use sealcast_testkit::acme::{ACME_ENV, AcmePair};

fn onem2m_section(cses: &AcmePair, serialization: &str) -> String {
    let (infra, mn) = match (&cses.infra.mqtt_url, &cses.mn.mqtt_url) {
        (Some(i), Some(m)) => (i, m),
        _ => (&cses.infra.url, &cses.mn.url),
    };
    format!(
        "\n[onem2m]\ninfrastructure = \"{infra}\"\nfield = \"{mn}\"\nserialization = \"{serialization}\"\n"
    )
}

#[test]
fn fire_safety_as_separate_processes_through_an_in_and_mn_cse() {
    fire_safety_services(
        "fire_safety_as_separate_processes_through_an_in_and_mn_cse",
        false,
    );
}

/// The same with every primitive on the CSEs' MQTT binding (the broker of
/// `SEALCAST_MQTT_URL`).
#[test]
fn fire_safety_as_separate_processes_over_the_mqtt_binding() {
    fire_safety_services(
        "fire_safety_as_separate_processes_over_the_mqtt_binding",
        true,
    );
}

fn fire_safety_services(test: &str, mqtt: bool) {
    let Some(python) = sealcast_testkit::require(
        ACME_ENV,
        test,
        "the ACME oneM2M CSE: a Python with `pip install acmecse==2026.5.3`",
    ) else {
        return;
    };
    let port = if mqtt {
        let Some(port) = sealcast_testkit::acme::mqtt_binding_port(test) else {
            return;
        };
        Some(port)
    } else {
        None
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cses =
        AcmePair::start_with(&python, &dir.join("cses"), port).unwrap_or_else(|e| panic!("{e}"));
    let run = run_prefix("o");
    let (manager, gateway, sensor) = ("manager", "gateway", "sensor-1");
    let doors = ["door-1", "door-2"];
    keygen(&dir, [manager, gateway, sensor, doors[0], doors[1]]);
    let onem2m = onem2m_section(&cses, "cbor");
    let head = "transport = \"onem2m\"\n";
    fs::write(
        dir.join("manager.toml"),
        manager_config(head, &run, manager)
            + &onem2m
            + &fire_safety_tables(gateway, &[sensor], &doors)
            // The doors execute the gateway's commands on its access token
            // (issued and renewed by the manager through the CSEs).
            + "\n[[access_token]]\nentity = \"gateway\"\ngroups = [\"fire-doors\"]\n\
               operations = [\"unlock\"]\nlifetime_s = 3600\n",
    )
    .unwrap();
    let node = |id: &str| node_config(head, &run, id, manager);
    fs::write(
        dir.join("agent.toml"),
        node(gateway) + &relays_for([sensor, doors[0], doors[1]]) + &onem2m + FIRE_RULE,
    )
    .unwrap();
    fs::write(dir.join(format!("{sensor}.toml")), node(sensor) + &onem2m).unwrap();
    for d in doors {
        fs::write(
            dir.join(format!("{d}.toml")),
            node(d) + "accept_access_tokens = true\n" + &onem2m,
        )
        .unwrap();
    }

    let mut procs = Procs::new(&dir);
    common::start_fire_safety(&mut procs, sensor, doors);
    assert!(
        procs.log("manager").contains("transport=oneM2M"),
        "{}",
        procs.logs()
    );
    // Every member acknowledged: the manager has put each of them into its
    // groups' <group> (a member is added once it is heard from).
    wait_until_blocking("every member acknowledged", &procs, || {
        ["fire-sensors", "fire-doors"].iter().all(|g| {
            let shown = common::group_show_json(&dir, "manager.toml", g);
            shown["current"] == shown["members"]
        })
    });

    wait_until_blocking("the gateway holds its access token", &procs, || {
        procs
            .log("agent")
            .contains("access token received from the manager")
    });
    procs.interrupt(sensor);
    let send = |text: &str| alert(&dir, sensor, text);
    common::first_alert_unlocks_both_doors(&dir, &procs, gateway, doors, send);

    // The CSE's access control, surfaced as a clear error: a door may not
    // read another door's container (only its own AE and the group host
    // may), while the CSE's administrator may.
    let link = sealcast_node::link::OneM2mLinkConfig::new(
        &cses.infra.url,
        Some(&cses.mn.url),
        sealcast_core::ids::EntityId::new(manager).unwrap(),
    );
    let door_1 = sealcast_core::ids::EntityId::new(doors[0]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let read = |who: &str| {
        rt.block_on(sealcast_node::link::onem2m::read_latest(
            &link,
            who,
            &door_1,
            sealcast_onem2m::GROUP_CONTAINER,
        ))
    };
    let refused = read("Cdoor-2").unwrap_err().to_string();
    assert!(
        refused.contains("4103") && refused.contains("access-control policy"),
        "{refused}"
    );
    assert!(read("CAdmin").is_ok());

    // SIGKILL a door and restart it: same AE, same containers, still a
    // member of the door group's <group>.
    common::sigkilled_door_runs_the_next_command(&dir, &mut procs, doors, send);

    // Remote transmission control through the CSEs.
    let done =
        common::transmission_control_stops_and_resumes(&dir, &procs, sensor, gateway, doors, 2);
    // Authorization status through the CSEs.
    let done =
        common::suspension_is_enforced_and_lifted(&dir, &procs, sensor, gateway, doors, done);

    // The MN-CSE restarts and loses every resource (in-memory database):
    // each AE notices, registers again and re-creates its containers and
    // subscriptions; the manager re-creates the groups' <group>s. The next
    // command reaches both doors, once; nothing is executed twice.
    let mut cses = cses;
    cses.restart_mn().unwrap_or_else(|e| panic!("{e}"));
    wait_until_blocking("every AE registered again", &procs, || {
        ["manager", "agent", doors[0], doors[1]]
            .iter()
            .all(|p| procs.log(p).contains("registered again with the CSE"))
    });
    wait_until_blocking("the door group's <group> re-created", &procs, || {
        let shown = common::group_show_json(&dir, "manager.toml", "fire-doors");
        shown["current"] == shown["members"]
    });
    // The sensor's one-shot send registers it again itself; the manager
    // adds it to the sensors' <group> within its 2 s look-up.
    let mut third = 0;
    for attempt in 0..10 {
        send(&format!("smoke in hall 3, attempt {attempt}"));
        std::thread::sleep(Duration::from_secs(2));
        if doors.iter().all(|d| executed(&dir, d).len() > done) {
            third = attempt + 1;
            break;
        }
    }
    assert!(
        third > 0,
        "no door executed after the CSE restart\n{}",
        procs.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    for d in doors {
        let lines = executed(&dir, d);
        let seqs: std::collections::BTreeSet<&String> = lines.iter().collect();
        assert_eq!(
            seqs.len(),
            lines.len(),
            "{d} executed a command twice: {lines:?}"
        );
    }
    // Every command the doors executed was permitted by the token (they
    // have no [[acp]] rules): none was refused for want of one.
    for d in doors {
        assert!(!procs.log(d).contains("no token"), "{}", procs.log(d));
    }
    let status = procs.interrupt("manager");
    assert!(
        status.success(),
        "manager: {status:?}\n{}",
        procs.log("manager")
    );
}

#[test]
fn onem2m_settings_are_checked_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(dir, ["door-9", "manager"]);
    let base = "key = \"door-9.key\"\nmanager_public_key = \"manager.pub\"\nstate_dir = \"s\"\n";
    let section = "\n[onem2m]\ninfrastructure = \"http://127.0.0.1:1/cse-in\"\n";
    for (config, needle) in [
        (
            format!("transport = \"onem2m\"\n{base}"),
            "[onem2m] section",
        ),
        (format!("{base}{section}"), "transport = \"onem2m\""),
        (
            format!("transport = \"onem2m\"\nbroker = \"mqtt://127.0.0.1:1\"\n{base}{section}"),
            "not for transport = \"onem2m\"",
        ),
        (
            format!(
                "transport = \"onem2m\"\n{base}\n[onem2m]\ninfrastructure = \"coap://x/cse\"\n"
            ),
            "must be http://",
        ),
        (
            format!("transport = \"onem2m\"\n{base}{section}serialization = \"xml\"\n"),
            "serialization must be",
        ),
        (
            format!("transport = \"onem2m\"\n{base}{section}"),
            "cannot reach the CSE",
        ),
    ] {
        common::refused_before_start(dir, "door-9.toml", &config, needle);
    }
}

/// A headend (`headend_extra` appended), a DAP (`dap_extra` in its
/// `[dap]`) and meters 1 and 2, keys and configs in `dir`, everyone on the
/// IN-CSE with absolute resource ids (//<sp-id>/<cse-id>/…); the
/// fire-safety tests use two CSEs and SP-relative ids. (ACME 2026.5.3 does
/// not forward a request whose target is an absolute id on another CSE of
/// its own service provider: "Not registered to remote CSE".)
fn onem2m_metering_configs(
    dir: &std::path::Path,
    cses: &AcmePair,
    run: &str,
    headend_extra: &str,
    dap_extra: &str,
) -> (&'static str, &'static str, [&'static str; 2]) {
    let (headend, dap) = ("headend", "dap-1");
    let meters = ["meter-1", "meter-2"];
    keygen(dir, [headend, dap, meters[0], meters[1]]);
    common::meters_dir(dir, &meters);
    let onem2m = format!(
        "\n[onem2m]\ninfrastructure = \"{}\"\naddressing = \"absolute\"\n",
        cses.infra.url
    );
    let head = format!("transport = \"onem2m\"\ntopic_prefix = \"{run}\"\n");
    fs::write(
        dir.join("headend.toml"),
        format!(
            "{head}key = \"{headend}.key\"\nstate_dir = \"headend-state\"\nmeters_dir = \"meters\"\n\n\
             [[dap]]\nid = \"{dap}\"\npublic_key = \"{dap}.pub\"\n{headend_extra}{onem2m}"
        ),
    )
    .unwrap();
    fs::write(
        dir.join("agent.toml"),
        format!(
            "{head}key = \"{dap}.key\"\nstate_dir = \"dap-state\"\n{onem2m}\n[dap]\n{dap_extra}\
             headend = \"{headend}\"\nheadend_public_key = \"{headend}.pub\"\nmeters_dir = \"meters\"\n\
             batch_size = 4\nmax_batch_delay_ms = 100\n"
        ),
    )
    .unwrap();
    for m in meters {
        fs::write(
            dir.join(format!("{m}.toml")),
            format!(
                "{head}key = \"{m}.key\"\nstate_dir = \"{m}-state\"\ndap = \"{dap}\"\n\
                 headend_public_key = \"{headend}.pub\"\n{onem2m}"
            ),
        )
        .unwrap();
    }
    (headend, dap, meters)
}

/// Smart metering as separate processes through one CSE with absolute
/// resource ids: the headend (`headend serve`), the DAP (`agent serve` with
/// `[dap]`) and the meters (`device report`), all AEs on the IN-CSE. The
/// headend's readings file holds exactly the genuine readings; a forged
/// report posted with the victim meter's originator (ACME believes it) is
/// dropped at the DAP; the DAP stops cleanly on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_metering_as_separate_processes_on_one_cse_with_absolute_ids() {
    let Some(python) = sealcast_testkit::require(
        ACME_ENV,
        "smart_metering_as_separate_processes_on_one_cse_with_absolute_ids",
        "the ACME oneM2M CSE: a Python with `pip install acmecse==2026.5.3`",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cses = AcmePair::start(&python, &dir.join("cses")).unwrap_or_else(|e| panic!("{e}"));
    let run = run_prefix("m");
    let (headend, dap, meters) =
        onem2m_metering_configs(&dir, &cses, &run, "", "group = \"street-7\"\n");

    let mut procs = Procs::new(&dir);
    common::start_headend(&mut procs);
    common::wait_until("the headend runs", &procs, || {
        procs.log("headend").contains("headend service running")
    })
    .await;
    procs.start_appending("dap", &["agent", "serve", "--config", "agent.toml"]);
    common::wait_until("the headend accepts the DAP's announcement", &procs, || {
        procs.log("headend").contains("DAP announcement accepted")
    })
    .await;

    let seqs =
        |m: &str, text: &str, n: u32| common::report_seqs(&common::device_report(&dir, m, text, n));
    assert_eq!(seqs(meters[0], "m1 {n} kWh", 2), vec![0, 1]);
    assert_eq!(seqs(meters[1], "m2 0 kWh", 1), vec![0]);
    let mut expected = vec![
        common::reading_line(meters[0], 0, dap, "m1 0 kWh"),
        common::reading_line(meters[0], 1, dap, "m1 1 kWh"),
        common::reading_line(meters[1], 0, dap, "m2 0 kWh"),
    ];
    expected.sort();
    common::wait_until("the three readings", &procs, || {
        common::headend_readings(&dir).len() >= 3
    })
    .await;
    assert_eq!(common::headend_readings(&dir), expected);

    // An attacker posts a forgery through the CSE under meter-1's name.
    let mut link = sealcast_node::link::OneM2mLinkConfig::new(
        &cses.infra.url,
        None,
        sealcast_core::ids::EntityId::new(headend).unwrap(),
    );
    link.addressing = sealcast_onem2m::Addressing::Absolute;
    let topics = sealcast_core::target::TopicScheme::with_prefix(&run).unwrap();
    let dap_id = sealcast_core::ids::EntityId::new(dap).unwrap();
    let target = topics.agent(&dap_id, sealcast_core::target::AgentChannel::Report);
    let forged = common::forged_report(&dir, headend, meters[0], 7);
    sealcast_node::link::onem2m::send_as(&link, "Cmeter-1", &dap_id, &target, &forged)
        .await
        .unwrap();
    common::wait_until("the DAP drops the forgery", &procs, || {
        procs.log("dap").contains("forged=1")
    })
    .await;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(common::headend_readings(&dir), expected, "{}", procs.logs());
    let status = procs.interrupt("dap");
    assert!(status.success(), "dap: {status:?}\n{}", procs.log("dap"));
}

/// The smart-meter downlink on oneM2M, where the CSEs are the relay: the
/// headend writes each meter's key delivery, association update and
/// transmission order into the meter's inbox and publishes the
/// configuration command to the meter group's `<group>`, which fans it out.
/// Both meters (`device listen`) install the key, apply the configuration,
/// move to a refreshed association, and meter-1 is deactivated and
/// re-activated — each confirmed through the DAP as an ordinary report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_downlink_associations_and_orders_run_through_the_cses() {
    let Some(python) = sealcast_testkit::require(
        ACME_ENV,
        "the_meter_downlink_associations_and_orders_run_through_the_cses",
        "the ACME oneM2M CSE: a Python with `pip install acmecse==2026.5.3`",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cses = AcmePair::start(&python, &dir.join("cses")).unwrap_or_else(|e| panic!("{e}"));
    let run = run_prefix("md");
    let (_, dap, meters) =
        onem2m_metering_configs(&dir, &cses, &run, "\n[downlink]\nretry_ms = 500\n", "");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = common::run(&dir, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let headend_view = || {
        json(&[
            "headend",
            "meter-config",
            "--config",
            "headend.toml",
            "--json",
        ])
    };
    let current = |m: &str| {
        headend_view()["meters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["meter"] == m && x["current"] == true)
    };
    let run_ok = |args: &[&str]| {
        let out = common::run_bounded(&dir, args, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    let mut procs = Procs::new(&dir);
    common::start_headend(&mut procs);
    common::wait_until("the headend runs", &procs, || {
        procs.log("headend").contains("headend service running")
    })
    .await;
    procs.start_appending("dap", &["agent", "serve", "--config", "agent.toml"]);
    common::wait_until("the headend accepts the DAP's announcement", &procs, || {
        procs.log("headend").contains("DAP announcement accepted")
    })
    .await;
    for m in meters {
        procs.start_appending(
            &format!("{m}-listen"),
            &["device", "listen", "--config", &format!("{m}.toml")],
        );
    }
    common::wait_until("both meters confirm the group key", &procs, || {
        current(meters[0]) && current(meters[1])
    })
    .await;

    // --- the configuration, fanned out by the CSE's <group> ------------------
    run_ok(&[
        "headend",
        "configure-meters",
        "--config",
        "headend.toml",
        "--set",
        "tariff=night-4242",
    ]);
    common::wait_until("both meters apply and confirm version 1", &procs, || {
        current(meters[0]) && current(meters[1])
    })
    .await;
    for m in meters {
        let c = json(&[
            "device",
            "meter-config",
            "--config",
            &format!("{m}.toml"),
            "--json",
        ]);
        assert_eq!(c["version"], 1, "{m}");
        assert_eq!(c["settings"]["tariff"], "night-4242", "{m}");
    }

    // --- both associations refreshed --------------------------------------------
    run_ok(&[
        "headend",
        "sa",
        "refresh",
        "--config",
        "headend.toml",
        "--all",
    ]);
    common::wait_until("both meters report under epoch 1", &procs, || {
        json(&[
            "headend",
            "sa",
            "show",
            "--config",
            "headend.toml",
            "--json",
        ])["meters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["epoch"] == 1 && m["state"] == "established")
    })
    .await;

    // --- meter-1 deactivated, then re-activated ---------------------------------
    let acknowledged = |reports: bool| {
        json(&[
            "headend",
            "transmission",
            "--config",
            "headend.toml",
            "--json",
        ])["meters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| {
                m["meter"] == meters[0] && m["acknowledged"] == true && m["reports"] == reports
            })
    };
    run_ok(&[
        "headend",
        "deactivate",
        "--config",
        "headend.toml",
        "--meter",
        meters[0],
    ]);
    common::wait_until("meter-1 acknowledges its deactivation", &procs, || {
        acknowledged(false)
    })
    .await;
    let refused = common::device_report(&dir, meters[0], "m1 7 kWh", 1);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("deactivated by its headend"));
    run_ok(&[
        "headend",
        "activate",
        "--config",
        "headend.toml",
        "--meter",
        meters[0],
    ]);
    common::wait_until("meter-1 acknowledges its re-activation", &procs, || {
        acknowledged(true)
    })
    .await;
    let seqs = common::report_seqs(&common::device_report(&dir, meters[0], "m1 8 kWh", 1));
    let line = common::reading_line(meters[0], seqs[0], dap, "m1 8 kWh");
    common::wait_until("meter-1's reading under epoch 1", &procs, || {
        common::headend_readings(&dir).contains(&line)
    })
    .await;
    assert!(!procs.log("headend").contains("night-4242"));
    assert!(!procs.log("dap").contains("night-4242"));
    // The CSEs relayed: the DAP had nothing to relay.
    assert!(!procs.log("dap").contains("relayed the headend's downlink"));
    for m in meters {
        assert!(procs.interrupt(&format!("{m}-listen")).success());
    }
    assert!(procs.interrupt("dap").success());
}

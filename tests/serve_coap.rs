#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Manager, agent and devices as separate `sealcast` processes over CoAP:
//! key deliveries, acks and pulls by confirmable unicast between the
//! endpoints of their configs, group channels by multicast to a group
//! pinned to 127.0.0.1. The fire-safety flow, then a door killed with
//! SIGKILL and restarted on the same endpoint: it executes the next command
//! and nothing twice.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    FIRE_RULE, Procs, alert, bin, executed, fire_safety_tables, free_udp_port, keygen,
    manager_config, node_config, relays_for, run_prefix, wait_until_blocking,
};

#[test]
fn fire_safety_as_separate_processes_over_coap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("c");
    let (manager, gateway, sensor) = ("manager", "gateway", "sensor-1");
    let doors = ["door-1", "door-2"];
    let all = [manager, gateway, sensor, doors[0], doors[1]];
    keygen(&dir, all);
    let port: Vec<u16> = all.iter().map(|_| free_udp_port()).collect();
    let addr = |id: &str| {
        let i = all.iter().position(|x| *x == id).unwrap();
        format!("127.0.0.1:{}", port[i])
    };
    let group = format!("224.0.1.187:{}", free_udp_port());
    let coap = |id: &str, peers: &[&str]| {
        let mut s = format!(
            "\n[coap]\nlisten = \"{}\"\ngroup = \"{group}\"\nmulticast_interface = \"127.0.0.1\"\n",
            addr(id)
        );
        for p in peers {
            s.push_str(&format!(
                "\n[[coap.endpoint]]\nid = \"{p}\"\naddress = \"{}\"\n",
                addr(p)
            ));
        }
        s
    };

    // --- configs: the manager knows the agent's endpoint (deliveries go
    // through it), the agent its devices', everyone the manager's ---------
    let head = "transport = \"coap\"\n";
    fs::write(
        dir.join("manager.toml"),
        manager_config(head, &run, manager)
            + &coap(manager, &[gateway])
            + &fire_safety_tables(gateway, &[sensor], &doors),
    )
    .unwrap();
    let node = |id: &str| node_config(head, &run, id, manager);
    fs::write(
        dir.join("agent.toml"),
        node(gateway)
            + &relays_for([sensor, doors[0], doors[1]])
            + &coap(gateway, &[manager, sensor, doors[0], doors[1]])
            + FIRE_RULE,
    )
    .unwrap();
    for d in [sensor, doors[0], doors[1]] {
        fs::write(
            dir.join(format!("{d}.toml")),
            format!("{}{}", node(d), coap(d, &[manager])),
        )
        .unwrap();
    }

    // --- the services ----------------------------------------------------------
    let mut procs = Procs::new(&dir);
    // Field nodes first: the manager delivers keys as soon as it starts, and
    // re-sends what is not acknowledged.
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in [sensor, doors[0], doors[1]] {
        procs.start_device(d);
    }
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("every key installed", &procs, || {
        procs.installed("agent") >= 2
            && [sensor, doors[0], doors[1]]
                .iter()
                .all(|d| procs.installed(d) >= 1)
    });
    assert!(procs.log("manager").contains("transport=CoAP"));

    // The sensor stops (Ctrl-C); its one-shot sends use its state file.
    procs.interrupt(sensor);
    let send = |text: &str| alert(&dir, sensor, text);

    // --- alert (multicast) → unlock (multicast) at both doors --------------
    send("smoke in hall 1");
    wait_until_blocking("both doors unlock", &procs, || {
        doors.iter().all(|d| !executed(&dir, d).is_empty())
    });
    for d in doors {
        let lines = executed(&dir, d);
        assert_eq!(lines.len(), 1, "{d}: {lines:?}");
        assert!(lines[0].contains(&format!("signer={gateway}")), "{lines:?}");
        assert!(lines[0].ends_with("payload=unlock"), "{lines:?}");
    }

    // --- SIGKILL a door, restart it on the same endpoint --------------------
    procs.sigkill(doors[0]);
    procs.restart_device(doors[0], 1);
    wait_until_blocking("the restarted door runs", &procs, || {
        procs.log(doors[0]).contains("device running")
    });
    send("smoke in hall 2");
    wait_until_blocking("both doors execute the second command", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() >= 2)
    });
    std::thread::sleep(Duration::from_millis(500));
    for d in doors {
        assert_eq!(executed(&dir, d).len(), 2, "{d}: {:?}", executed(&dir, d));
    }
}

#[test]
fn coap_settings_are_checked_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(dir, ["door-9", "manager"]);
    let base = "key = \"door-9.key\"\nmanager_public_key = \"manager.pub\"\nstate_dir = \"s\"\n";
    let coap = "\n[coap]\nlisten = \"127.0.0.1:0\"\ngroup = \"224.0.1.187:5683\"\n";
    for (config, needle) in [
        (format!("transport = \"coap\"\n{base}"), "[coap] section"),
        (format!("{base}{coap}"), "transport = \"coap\""),
        (
            format!("transport = \"coap\"\nbroker = \"mqtt://127.0.0.1:1\"\n{base}{coap}"),
            "`broker` is for",
        ),
        (
            format!(
                "transport = \"coap\"\n{base}\n[coap]\nlisten = \"127.0.0.1:0\"\ngroup = \"127.0.0.1:5683\"\n"
            ),
            "multicast",
        ),
    ] {
        fs::write(dir.join("door-9.toml"), &config).unwrap();
        let out = Command::new(bin())
            .args(["device", "run", "--config", "door-9.toml"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}");
        assert!(err.contains(needle), "{config}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

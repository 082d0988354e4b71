#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Manager, agent and devices as separate `sealcast` processes over CoAP:
//! key deliveries, acks and pulls by confirmable unicast between the
//! endpoints of their configs, group channels by multicast to a group
//! pinned to 127.0.0.1. The fire-safety flow, then a door killed with
//! SIGKILL and restarted on the same endpoint: it executes the next command
//! and nothing twice.

mod common;

use std::fs;
use std::time::Duration;

use common::{
    CoapPlan, FIRE_RULE, Procs, alert, executed, fire_safety_tables, keygen, manager_config,
    node_config, relays_for, run_prefix, wait_until,
};

#[test]
fn fire_safety_as_separate_processes_over_coap() {
    let (sensor, doors) = ("sensor-1", ["door-1", "door-2"]);
    let (_tmp, dir, _) = coap_site("c", None);
    let gateway = "gateway";

    // --- the services ----------------------------------------------------------
    let mut procs = Procs::new(&dir);
    // Field nodes first: the manager delivers keys as soon as it starts, and
    // re-sends what is not acknowledged.
    common::start_fire_safety(&mut procs, sensor, doors);
    assert!(procs.log("manager").contains("transport=CoAP"));

    // The sensor stops (Ctrl-C); its one-shot sends use its state file.
    procs.interrupt(sensor);
    let send = |text: &str| alert(&dir, sensor, text);

    // --- alert (multicast) → unlock (multicast) at both doors --------------
    common::first_alert_unlocks_both_doors(&dir, &procs, gateway, doors, send);

    // --- SIGKILL a door, restart it on the same endpoint --------------------
    common::sigkilled_door_runs_the_next_command(&dir, &mut procs, doors, send);

    // --- remote transmission control over CoAP (the gateway relays the
    // sensor's orders to its one-shot endpoint) -----------------------------
    let done =
        common::transmission_control_stops_and_resumes(&dir, &procs, sensor, gateway, doors, 2);

    // --- authorization status over CoAP: the doors refuse a suspended
    // gateway, then hear it again --------------------------------------------
    common::suspension_is_enforced_and_lifted(&dir, &procs, sensor, gateway, doors, done);
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
        common::refused_before_start(dir, "door-9.toml", &config, needle);
    }
}

/// The fire-safety services over CoAP with the group channels on the
/// MBMS-like bearer (issue #13): the gateway is the bearer service, the
/// sensor and the doors its entitled devices, the manager sends its notices
/// through it. A listener on the multicast group without the MSK hears only
/// bearer frames — one constant path, no group id, no command, padded
/// sizes — while both doors execute the alert's command. A door killed with
/// SIGKILL gets the MSK again and executes the next command. Removing
/// door-2's key from the service's devices_dir and sending SIGHUP revokes it:
/// the next command reaches door-1 only, though door-2 still holds the
/// group's COSE keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bearer_hides_group_traffic_and_revocation_locks_a_door_out() {
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("b");
    let (manager, gateway, sensor) = ("manager", "gateway", "sensor-1");
    let doors = ["door-1", "door-2"];
    let all = [manager, gateway, sensor, doors[0], doors[1]];
    keygen(&dir, all);
    fs::create_dir(dir.join("bearer-devices")).unwrap();
    for d in [sensor, doors[0], doors[1]] {
        fs::copy(
            dir.join(format!("{d}.pub")),
            dir.join("bearer-devices").join(format!("{d}.pub")),
        )
        .unwrap();
    }
    let plan = CoapPlan::new(&all);
    let group_port = plan.group_port;
    let coap = |id: &str, peers: &[&str], bearer: &str| {
        format!("{}\n[coap.bearer]\n{bearer}", plan.section(id, peers))
    };
    let head = "transport = \"coap\"\n";
    let member = format!("service = \"{gateway}\"\nservice_public_key = \"{gateway}.pub\"\n");
    fs::write(
        dir.join("manager.toml"),
        manager_config(head, &run, manager)
            + &fire_safety_tables(gateway, &[sensor], &doors)
            + &coap(manager, &[gateway], &format!("service = \"{gateway}\"\n")),
    )
    .unwrap();
    let node = |id: &str| node_config(head, &run, id, manager);
    fs::write(
        dir.join("agent.toml"),
        node(gateway)
            + &relays_for([sensor, doors[0], doors[1]])
            + FIRE_RULE
            + &coap(
                gateway,
                &[manager, sensor, doors[0], doors[1]],
                "devices_dir = \"bearer-devices\"\nredeliver_s = 2\n",
            ),
    )
    .unwrap();
    for d in [sensor, doors[0], doors[1]] {
        fs::write(
            dir.join(format!("{d}.toml")),
            format!("{}{}", node(d), coap(d, &[manager, gateway], &member)),
        )
        .unwrap();
    }

    // --- an outsider on the multicast group: every datagram it hears ------
    // (Uri-Path, payload) of each datagram.
    type Heard = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let heard: Heard = Arc::default();
    let config = sealcast_coap::MulticastConfig::new(
        "224.0.1.187".parse().unwrap(),
        sealcast_coap::MulticastInterface::LOOPBACK_V4,
    )
    .unwrap()
    .with_port(group_port)
    .with_loopback(true);
    let mut listener = sealcast_coap::MulticastReceiver::join(config)
        .await
        .unwrap();
    let h = Arc::clone(&heard);
    let listening = tokio::spawn(async move {
        while let Ok(r) = listener.recv().await {
            let path = r.path();
            let payload = r.into_request().into_payload();
            h.lock().unwrap().push((path, payload));
        }
    });

    // --- the services: field nodes first, then the service, then the manager
    let mut procs = Procs::new(&dir);
    for d in [sensor, doors[0], doors[1]] {
        procs.start_device(d);
    }
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until("every key installed over the bearer", &procs, || {
        procs.installed("agent") >= 2
            && [sensor, doors[0], doors[1]]
                .iter()
                .all(|d| procs.installed(d) >= 1)
    })
    .await;
    assert!(
        procs.log("agent").contains("bearer service running"),
        "{}",
        procs.logs()
    );
    procs.interrupt_async(sensor).await;

    // --- alert → unlock at both doors, all of it on the bearer --------------
    alert(&dir, sensor, "smoke in hall 1");
    wait_until("both doors unlock", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 1)
    })
    .await;
    {
        let heard = heard.lock().unwrap();
        assert!(
            heard.len() >= 4,
            "the listener heard {} datagrams",
            heard.len()
        );
        let group_hex: String = b"fire-doors".iter().map(|b| format!("{b:02x}")).collect();
        for (path, payload) in heard.iter() {
            assert_eq!(
                path, "sealcast/v1/bearer",
                "a clear group message on the wire"
            );
            let text = String::from_utf8_lossy(payload);
            assert!(
                !text.contains(&group_hex) && !text.contains("unlock"),
                "{text}"
            );
        }
        // Padded: every data frame has one of a few bucket sizes.
        let sizes: std::collections::BTreeSet<usize> = heard.iter().map(|(_, p)| p.len()).collect();
        assert!(sizes.len() <= 6, "frame sizes {sizes:?}");
    }

    // --- SIGKILL door-1: back, it gets the MSK again and follows ------------
    procs.sigkill(doors[0]);
    procs.restart_device(doors[0], 1);
    wait_until("the restarted door runs", &procs, || {
        procs.log(doors[0]).contains("device running")
    })
    .await;
    // The service re-delivers the MSK every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    alert(&dir, sensor, "smoke in hall 2");
    wait_until("both doors execute the second command", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 2)
    })
    .await;

    // --- revoke door-2 on the bearer: SIGHUP after removing its key ---------
    fs::remove_file(dir.join("bearer-devices").join(format!("{}.pub", doors[1]))).unwrap();
    procs.hangup("agent");
    wait_until("the service revokes door-2", &procs, || {
        procs
            .log("agent")
            .contains("SIGHUP: bearer devices reloaded")
    })
    .await;
    assert!(
        procs.log("agent").contains("revoked=[\"door-2\"]"),
        "{}",
        procs.logs()
    );
    // The revocation switched the bearer to a fresh MSK. The sensor is a
    // one-shot `device send`, so its endpoint was down when the service
    // first sent it the new MSK; that confirmable exchange is in CoAP's
    // retransmission back-off (2, 4, 8, 16 s …) when the send starts, and
    // the sensor hears the manager's answer only once a retransmission
    // lands. Seen once in CI as more than the default 10 s, so this send
    // may wait longer; the checks below are unchanged.
    common::alert_waiting(&dir, sensor, "smoke in hall 3", 45);
    wait_until("door-1 executes the third command", &procs, || {
        executed(&dir, doors[0]).len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        executed(&dir, doors[1]).len(),
        2,
        "the revoked door executed a command sent after its revocation: {:?}",
        executed(&dir, doors[1])
    );
    assert_eq!(executed(&dir, doors[0]).len(), 3);
    listening.abort();
    for name in ["manager", "agent", doors[0], doors[1]] {
        procs.exit_on_ctrl_c(name).await;
    }
}

/// The fire-safety site over CoAP (manager, gateway, sensor-1, door-1 and
/// door-2, each on an endpoint of its own): the manager knows the agent's
/// endpoint (deliveries go through it), the agent its devices', everyone the
/// manager's. With `token_lifetime_s`, the doors accept access tokens and
/// the manager grants the gateway `unlock` on `fire-doors` in tokens of that
/// lifetime. Returns its temp dir, the dir and the manager config without a
/// grant. Nothing runs yet.
fn coap_site(
    tag: &str,
    token_lifetime_s: Option<u64>,
) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix(tag);
    let (manager, gateway, sensor) = ("manager", "gateway", "sensor-1");
    let doors = ["door-1", "door-2"];
    let all = [manager, gateway, sensor, doors[0], doors[1]];
    keygen(&dir, all);
    let plan = CoapPlan::new(&all);
    let coap = |id: &str, peers: &[&str]| plan.section(id, peers);
    let head = "transport = \"coap\"\n";
    let base_manager = manager_config(head, &run, manager)
        + &coap(manager, &[gateway])
        + &fire_safety_tables(gateway, &[sensor], &doors);
    let grant = token_lifetime_s.map_or_else(String::new, |s| {
        format!(
            "\n[[access_token]]\nentity = \"gateway\"\ngroups = [\"fire-doors\"]\n\
             operations = [\"unlock\"]\nlifetime_s = {s}\n"
        )
    });
    fs::write(dir.join("manager.toml"), base_manager.clone() + &grant).unwrap();
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
        let tokens = if d == sensor || token_lifetime_s.is_none() {
            ""
        } else {
            "accept_access_tokens = true\n"
        };
        fs::write(
            dir.join(format!("{d}.toml")),
            format!("{}{tokens}{}", node(d), coap(d, &[manager])),
        )
        .unwrap();
    }
    (tmp, dir, base_manager)
}

fn tokens_received(procs: &Procs) -> usize {
    procs
        .log("agent")
        .matches("access token received from the manager")
        .count()
}

/// Issue #15, item 4 over CoAP: the manager's access tokens reach the
/// gateway by confirmable unicast and renew before they expire; the doors
/// (no `[[acp]]`, `accept_access_tokens`) execute the gateway's multicast
/// commands on the strength of its token, and refuse them once the token
/// expired (the manager restarted without the grant).
#[test]
fn access_tokens_over_coap() {
    let (sensor, doors) = ("sensor-1", ["door-1", "door-2"]);
    let (_tmp, dir, base_manager) = coap_site("ct", Some(4));
    let mut procs = Procs::new(&dir);
    common::start_fire_safety(&mut procs, sensor, doors);
    procs.interrupt(sensor);
    let received = tokens_received;
    common::wait_until_blocking("the gateway holds a token", &procs, || {
        received(&procs) >= 1
    });
    alert(&dir, sensor, "smoke 1");
    common::wait_until_blocking("both doors unlock on the token", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 1)
    });
    // Renewed (4 s tokens, renewed every 2 s): a command 5 s later still runs.
    std::thread::sleep(Duration::from_secs(5));
    assert!(received(&procs) >= 2, "{}", procs.log("agent"));
    alert(&dir, sensor, "smoke 2");
    common::wait_until_blocking("both doors unlock on the renewed token", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 2)
    });
    // The manager back without the grant: the token runs out.
    procs.sigkill("manager");
    fs::write(dir.join("manager.toml"), base_manager).unwrap();
    procs.start_appending("manager", &["manager", "serve", "--config", "manager.toml"]);
    common::wait_until_blocking("the gateway's token expired", &procs, || {
        common::sealcast(&dir, &["agent", "token", "--config", "agent.toml"]).contains("EXPIRED")
    });
    alert(&dir, sensor, "smoke 3");
    common::wait_until_blocking("the gateway commands without a token", &procs, || {
        procs.log("agent").matches("rule fired").count() >= 3
    });
    common::wait_until_blocking("both doors refuse it", &procs, || {
        doors.iter().all(|d| {
            procs
                .log(d)
                .contains("refused by the access-control policy")
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    for d in doors {
        assert_eq!(executed(&dir, d).len(), 2, "{d}");
    }
}

/// "Obtain/update access control tokens" from the node's side, over CoAP:
/// the gateway is away when the manager renews its 20-second token (the
/// push cannot reach it); back, it sees its token past half its lifetime
/// and asks the manager (a pull, answered with the current token) instead
/// of waiting for the next renewal.
#[test]
fn a_gateway_back_from_an_absence_asks_for_its_token() {
    let (sensor, doors) = ("sensor-1", ["door-1", "door-2"]);
    let (_tmp, dir, _) = coap_site("cta", Some(20));
    let mut procs = Procs::new(&dir);
    common::start_fire_safety(&mut procs, sensor, doors);
    procs.interrupt(sensor);
    common::wait_until_blocking("the gateway holds a token", &procs, || {
        tokens_received(&procs) >= 1
    });
    let token = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(
            common::sealcast(dir, &["agent", "token", "--config", "agent.toml", "--json"]).trim(),
        )
        .unwrap()
    };
    let first = token(&dir)["token"].clone();
    let half = first["issued_at"].as_u64().unwrap() + 10;
    procs.interrupt("agent");
    // Away past the renewal at half the lifetime.
    let now_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now_s() <= half + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    procs.move_log_aside("agent", 1);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    common::wait_until_blocking("the gateway asks and gets a newer token", &procs, || {
        procs.log("agent").contains("asking the manager")
            && tokens_received(&procs) >= 1
            && token(&dir)["token"]["issued_at"].as_u64() > first["issued_at"].as_u64()
    });
    assert_eq!(token(&dir)["token"]["valid"], true);
    // The token it held came back from its file at the restart.
    assert!(
        procs
            .log("agent")
            .contains("access token kept across the restart"),
        "{}",
        procs.log("agent")
    );
}

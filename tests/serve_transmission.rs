#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Remote transmission control (issue #15, item 1) through the services as
//! separate processes over a broker: `sealcast node deactivate|activate|show`
//! against a running manager; the order reaches the node end to end (the
//! gateway relays the sensor's), is acknowledged, is kept across a clean
//! stop and a SIGKILL, and is enforced by the node (`device send` refuses,
//! a gateway's rule does not fire) while the node keeps receiving. Forged,
//! replayed, stale and misaddressed orders are refused and change nothing.

mod common;

use std::fs;
use std::time::Duration;

use common::{
    FIRE_RULE, MqttRun, Procs, executed, fire_safety_tables, keygen, manager_config, node_cmd,
    node_config, relays_for, spy, start_fire_safety, wait_until_blocking,
};
use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::statement::UnverifiedStatement;
use sealcast_group::status::{Status, StatusList};
use sealcast_group::transmission::TransmissionOrder;
use sealcast_mqtt::{Bytes, DeviceChannel, TopicScheme};

fn node_json(dir: &std::path::Path, id: &str) -> serde_json::Value {
    serde_json::from_str(node_cmd(dir, &["show", "--id", id, "--json"]).trim()).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The orders among captured deliveries, with their bytes.
fn orders(captured: &[(String, Vec<u8>)]) -> Vec<(TransmissionOrder, Vec<u8>)> {
    captured
        .iter()
        .filter_map(|(_, bytes)| {
            let st = UnverifiedStatement::parse(bytes, 1 << 16).ok()?;
            let order = TransmissionOrder::from_cbor(st.payload()).ok()?;
            Some((order, bytes.clone()))
        })
        .collect()
}

/// The entities of a fire-safety site: manager, gateway, one sensor, two
/// doors (ids unique to the run).
struct Site {
    manager: String,
    gateway: String,
    sensor: String,
    doors: [String; 2],
}

/// Keys and configs of a fire-safety site over the broker of `t`: the
/// gateway relays for the sensor and doors and commands the doors on an
/// alert; `agent_extra` goes into its config.
fn fire_safety_site(t: &MqttRun, agent_extra: &str) -> Site {
    let (dir, prefix) = (&t.dir, &t.run);
    let name = |n: &str| format!("{prefix}-{n}");
    let site = Site {
        manager: name("manager"),
        gateway: name("gateway"),
        sensor: name("sensor"),
        doors: [name("door-1"), name("door-2")],
    };
    let (manager, gateway, sensor, doors) =
        (&site.manager, &site.gateway, &site.sensor, &site.doors);
    keygen(dir, [manager, gateway, sensor].into_iter().chain(doors));
    let head = format!("broker = \"{}\"\n", t.url);
    fs::write(
        dir.join("manager.toml"),
        manager_config(&head, prefix, manager)
            + &fire_safety_tables(gateway, std::slice::from_ref(sensor), doors),
    )
    .unwrap();
    let node = |id: &str| node_config(&head, prefix, id, manager);
    fs::write(
        dir.join("agent.toml"),
        node(gateway) + agent_extra + &relays_for([sensor].into_iter().chain(doors)) + FIRE_RULE,
    )
    .unwrap();
    for d in [sensor].into_iter().chain(doors) {
        fs::write(dir.join(format!("{d}.toml")), node(d)).unwrap();
    }
    site
}

/// A raw client watching `gateway`'s delivery topic (to capture what the
/// manager sends it) and able to publish anything anywhere: the run's topic
/// scheme, the gateway's id and delivery topic, the client and what it
/// captured.
async fn gateway_spy(
    url: &str,
    prefix: &str,
    gateway: &str,
) -> (
    TopicScheme,
    EntityId,
    String,
    sealcast_mqtt::MqttClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let topics = TopicScheme::with_prefix(prefix).unwrap();
    let gateway_id = EntityId::new(gateway).unwrap();
    let gateway_inbox = topics.device(&gateway_id, DeviceChannel::Delivery);
    let watched = gateway_inbox.clone();
    let (spy, captured) = spy(
        url,
        format!("{prefix}-spy"),
        [topics.device_filter(&gateway_id)],
        move |t| t == watched,
    )
    .await;
    (topics, gateway_id, gateway_inbox, spy, captured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_orders_stop_and_resume_nodes_end_to_end_and_forgeries_change_nothing() {
    let t = MqttRun::start("tx").await;
    let (dir, url, prefix) = (t.dir.clone(), t.url.clone(), t.run.clone());
    let metrics_port = common::Mosquitto::free_port();
    let Site {
        manager,
        gateway,
        sensor,
        doors,
    } = fire_safety_site(
        &t,
        // Metrics, and a small audit log, so that it rotates during the test.
        &format!(
            "metrics_listen = \"127.0.0.1:{metrics_port}\"\naudit_max_kib = 4\naudit_keep = 2\n"
        ),
    );
    let refused = |reason: &str| {
        let body = common::http_get(metrics_port, "/metrics").1;
        let key = format!("sealcast_transmission_orders_refused_total{{reason=\"{reason}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };

    // A raw client watching the gateway's delivery topic (to capture the
    // manager's genuine orders) and able to publish anything anywhere.
    let (_, _, gateway_inbox, spy, mut captured_rx) = gateway_spy(&url, &prefix, &gateway).await;
    let mut captured = Vec::new();

    let mut procs = Procs::new(&dir);
    let door_refs = [doors[0].as_str(), doors[1].as_str()];
    start_fire_safety(&mut procs, &sensor, door_refs);
    let alert = |text: &str| common::alert_run(&dir, &sensor, text, 15);
    let unlocks = |procs: &Procs, n: usize| {
        wait_until_blocking(&format!("both doors execute {n} commands"), procs, || {
            doors.iter().all(|d| executed(&dir, d).len() >= n)
        });
    };

    // --- never ordered: the node sends everything --------------------------
    let status = node_json(&dir, &sensor);
    assert_eq!(status["version"], serde_json::Value::Null, "{status}");
    assert_eq!(status["acked"], true);

    // --- deactivate the sensor's alerts while its runtime runs: acked -------
    let out = node_cmd(
        &dir,
        &[
            "deactivate",
            "--id",
            &sensor,
            "--kind",
            "alert",
            "--wait",
            "20",
        ],
    );
    assert!(out.contains("stopped  alert"), "{out}");
    assert!(out.contains("acked    yes"), "{out}");
    wait_until_blocking("the sensor applied the order", &procs, || {
        procs.log(&sensor).contains("transmission order applied")
    });
    // A clean stop, then the one-shot send restores the order and refuses.
    procs.exit_on_ctrl_c(&sensor).await;
    let not_sent = alert("smoke while deactivated");
    assert!(!not_sent.status.success());
    let stderr = String::from_utf8_lossy(&not_sent.stderr);
    assert!(
        stderr.contains("stopped by the manager's transmission order")
            && stderr.contains("sealcast node activate"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(doors.iter().all(|d| executed(&dir, d).is_empty()));

    // --- activate while the sensor is off: its next send learns it first ---
    let out = node_cmd(&dir, &["activate", "--id", &sensor]);
    assert!(out.contains("stopped  nothing"), "{out}");
    assert!(out.contains("not yet"), "{out}");
    let sent = alert("smoke in hall 1");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    unlocks(&procs, 1);
    let status = node_json(&dir, &sensor);
    assert_eq!(status["acked"], true, "{status}");
    assert_eq!(status["stopped"], serde_json::json!([]));

    // --- stop the gateway's commands to the doors: alerts still verified ----
    let out = node_cmd(
        &dir,
        &[
            "deactivate",
            "--id",
            &gateway,
            "--kind",
            "command:fire-doors",
            "--wait",
            "20",
        ],
    );
    assert!(out.contains("stopped  command:fire-doors"), "{out}");
    assert!(alert("smoke in hall 2").status.success());
    wait_until_blocking("the gateway suppresses its rule", &procs, || {
        procs.log("agent").contains("rule not fired")
    });
    // --- SIGKILL the gateway: the order survives -----------------------------
    procs.sigkill("agent");
    procs.move_log_aside("agent", 1);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    wait_until_blocking("the restarted gateway runs", &procs, || {
        procs.log("agent").contains("kept across the restart")
            && procs.log("agent").contains("running")
    });
    assert!(alert("smoke in hall 3").status.success());
    wait_until_blocking("the restarted gateway suppresses its rule", &procs, || {
        procs.log("agent").contains("rule not fired")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        doors.iter().all(|d| executed(&dir, d).len() == 1),
        "a stopped gateway commanded the doors"
    );

    // --- attacks on the stopped gateway: none of them resumes it ------------
    while let Ok((topic, bytes)) = captured_rx.try_recv() {
        captured.push((topic, bytes));
    }
    let genuine = orders(&captured);
    let (stop_order, stop_bytes) = genuine
        .iter()
        .find(|(o, _)| !o.stopped.is_empty())
        .cloned()
        .expect("the manager's order to the gateway was captured");
    let manager_key =
        EntityCredential::from_cose_key_set(&fs::read(dir.join(format!("{manager}.key"))).unwrap())
            .unwrap();
    let resume = |version: u64, issued: u64, node: &str| TransmissionOrder {
        manager: manager_key.id().clone(),
        node: EntityId::new(node).unwrap(),
        version,
        issued: UnixMillis::new(issued),
        stopped: Default::default(),
    };
    // Forged: a resume order under the manager's name, another key.
    let mallory = EntityCredential::generate(
        manager_key.id().clone(),
        &mut sealcast_core::testrng::TestRng::new(99),
    );
    let forged = resume(stop_order.version + 10, now_ms(), &gateway)
        .sign(&mallory)
        .unwrap();
    // Genuine signature, but for another node.
    let misaddressed = resume(stop_order.version + 10, now_ms(), &doors[0])
        .sign(&manager_key)
        .unwrap();
    // Genuine signature and node, but issued an hour ago (a replay of an
    // old capture to a node that lost its state).
    let stale = resume(stop_order.version + 10, now_ms() - 3_600_000, &gateway)
        .sign(&manager_key)
        .unwrap();
    for bytes in [forged, misaddressed, stale] {
        spy.publish(gateway_inbox.clone(), Bytes::from(bytes))
            .await
            .unwrap();
    }
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until_blocking("the gateway refuses the three orders", &procs, || {
        refused("forged") >= 1.0 && refused("other-node") >= 1.0 && refused("stale") >= 1.0
    });
    assert!(procs.log("agent").contains("transmission order refused"));
    assert!(alert("smoke in hall 4").status.success());
    wait_until_blocking("the gateway still suppresses its rule", &procs, || {
        procs.log("agent").matches("rule not fired").count() >= 2
    });
    assert!(doors.iter().all(|d| executed(&dir, d).len() == 1));
    assert_eq!(
        node_json(&dir, &gateway)["stopped"],
        serde_json::json!(["command:fire-doors"])
    );

    // --- resume the gateway; a replay of the stop order changes nothing -----
    let out = node_cmd(&dir, &["activate", "--id", &gateway, "--wait", "20"]);
    assert!(out.contains("acked    yes"), "{out}");
    spy.publish(gateway_inbox.clone(), Bytes::from(stop_bytes))
        .await
        .unwrap();
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until_blocking(
        "the gateway refuses the replayed stop order",
        &procs,
        || refused("replay") >= 1.0,
    );
    assert!(alert("smoke in hall 5").status.success());
    unlocks(&procs, 2);
    std::thread::sleep(Duration::from_millis(500));
    for d in &doors {
        assert_eq!(executed(&dir, d).len(), 2, "{d}: {:?}", executed(&dir, d));
    }

    // --- operator errors say what to do -------------------------------------
    let out = common::sealcast_fails(
        &dir,
        &[
            "node",
            "deactivate",
            "--config",
            "manager.toml",
            "--id",
            "nobody",
        ],
    );
    assert!(
        out.contains("not enrolled") && out.contains("sealcast group enrol"),
        "{out}"
    );
    let out = common::sealcast_fails(
        &dir,
        &[
            "node",
            "deactivate",
            "--config",
            "manager.toml",
            "--id",
            &sensor,
            "--kind",
            "reboot",
        ],
    );
    assert!(out.contains("use all, alert, command"), "{out}");

    // --- the manager audited every order and ack ---------------------------
    let audit = fs::read_to_string(dir.join("manager-state/audit.jsonl")).unwrap();
    assert!(audit.matches("\"transmission\"").count() >= 4, "{audit}");
    assert!(audit.contains("transmission-ack"), "{audit}");

    // --- audit at every node (issue #15, item 7): each field node's log
    // verifies (the gateway's across its rotated segments and its SIGKILL),
    // records what came in and went out, and never a payload ---------------
    // A clean stop writes the refusals still counted in the last interval.
    for p in ["agent", doors[0].as_str(), doors[1].as_str()] {
        assert!(procs.terminate_async(p).await.success(), "{p}");
    }
    let secrets = ["unlock", "smoke"];
    for d in &doors {
        let log = format!("{d}-state/audit.jsonl");
        common::audit_intact(&dir, &log, &secrets);
        let text = common::audit_text(&dir, &log);
        assert!(
            text.matches("verified, executed").count() >= 2,
            "{d}: {text}"
        );
    }
    let sensor_log = common::audit_text(&dir, &format!("{sensor}-state/audit.jsonl"));
    common::audit_intact(&dir, &format!("{sensor}-state/audit.jsonl"), &secrets);
    assert!(sensor_log.contains("\"sent\""), "{sensor_log}");
    assert!(
        sensor_log.contains("transmission order version"),
        "{sensor_log}"
    );
    let out = common::audit_intact(&dir, &format!("{gateway}-state/audit.jsonl"), &secrets);
    assert!(
        out.contains("segments"),
        "the gateway's log did not rotate: {out}"
    );
    let gateway_log = common::audit_text(&dir, &format!("{gateway}-state/audit.jsonl"));
    assert!(gateway_log.contains("\"rotate\""), "{gateway_log}");
    for needle in [
        "transmission order: forged",
        "transmission order: other-node",
        "transmission order: stale",
        "transmission order: replay",
        "alert seq=",
        "command seq=",
    ] {
        assert!(gateway_log.contains(needle), "{needle}: {gateway_log}");
    }
    common::audit_tamper_is_found(&dir, &format!("{}-state/audit.jsonl", doors[0]));
    drop(procs);
    let _ = spy.disconnect(Duration::from_secs(2)).await;
}

/// Issue #15, item 5 (credential lifecycle: "there is no un-enrol"):
/// `sealcast node remove` evicts a door from every group — the group moves
/// to a key the door cannot compute, so it executes nothing more while it
/// keeps running — and deletes its enrolment. A manager restarted with the
/// same config does not enrol it again (the store is the authority); an
/// operator's `group enrol` with a NEW key for the same id does, and once
/// added it executes commands again. An agent that relays for devices is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_door_executes_nothing_and_its_id_takes_a_new_key() {
    let t = MqttRun::start("rm").await;
    let dir = t.dir.clone();
    let Site {
        gateway,
        sensor,
        doors,
        ..
    } = fire_safety_site(&t, "");
    let mut procs = Procs::new(&dir);
    start_fire_safety(&mut procs, &sensor, [doors[0].as_str(), doors[1].as_str()]);
    procs.exit_on_ctrl_c(&sensor).await;
    let alert = |text: &str| common::alert(&dir, &sensor, text);
    alert("smoke 1");
    wait_until_blocking("both doors unlock", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 1)
    });

    let out = common::sealcast_fails(
        &dir,
        &[
            "node",
            "remove",
            "--config",
            "manager.toml",
            "--id",
            &gateway,
        ],
    );
    assert!(out.contains("relays for 3 enrolled device(s)"), "{out}");
    let out = node_cmd(&dir, &["remove", "--id", &doors[1]]);
    assert!(out.contains("evicted from fire-doors (now epoch"), "{out}");
    alert("smoke 2");
    wait_until_blocking("door-1 unlocks again", &procs, || {
        executed(&dir, &doors[0]).len() == 2
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        executed(&dir, &doors[1]).len(),
        1,
        "a removed door executed"
    );
    let out = common::sealcast_fails(
        &dir,
        &[
            "node",
            "show",
            "--config",
            "manager.toml",
            "--id",
            &doors[1],
        ],
    );
    assert!(out.contains("not enrolled"), "{out}");

    // A restart with the same config (which still enrols door-2) does not
    // bring it back.
    assert!(procs.terminate_async("manager").await.success());
    procs.move_log_aside("manager", 1);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the manager runs again", &procs, || {
        procs.log("manager").contains("manager running")
    });
    assert!(
        procs
            .log("manager")
            .contains("it was removed with `sealcast node remove`"),
        "{}",
        procs.log("manager")
    );
    let shown = common::group_show_json(&dir, "manager.toml", "fire-doors");
    assert_eq!(shown["members"], 2, "{shown}"); // the gateway and door-1

    // The same id with a new key: enrolled by the operator, added, and it
    // executes again (run with the new key).
    assert!(procs.terminate_async(&doors[1]).await.success());
    fs::create_dir_all(dir.join("new")).unwrap();
    common::sealcast(&dir, &["keygen", "--id", &doors[1], "--out-dir", "new"]);
    for ext in ["key", "pub"] {
        fs::copy(
            dir.join("new").join(format!("{}.{ext}", doors[1])),
            dir.join(format!("{}.{ext}", doors[1])),
        )
        .unwrap();
    }
    fs::remove_dir_all(dir.join(format!("{}-state", doors[1]))).unwrap();
    let pubfile = format!("{}.pub", doors[1]);
    common::sealcast(
        &dir,
        &[
            "group",
            "enrol",
            "--config",
            "manager.toml",
            "--public-key",
            &pubfile,
            "--kind",
            "device",
            "--agent",
            &gateway,
        ],
    );
    common::sealcast(
        &dir,
        &[
            "group",
            "add",
            "--config",
            "manager.toml",
            "--group",
            "fire-doors",
            "--member",
            &format!("{}:receiver", doors[1]),
        ],
    );
    procs.restart_device(&doors[1], 1);
    wait_until_blocking("the re-enrolled door holds the key", &procs, || {
        procs.installed(&doors[1]) >= 1
    });
    alert("smoke 3");
    wait_until_blocking("both doors execute the third command", &procs, || {
        executed(&dir, &doors[0]).len() == 3 && executed(&dir, &doors[1]).len() == 2
    });
    let audit = fs::read_to_string(dir.join("manager-state/audit.jsonl")).unwrap();
    assert!(audit.contains("remove-entity"), "{audit}");
    drop(procs);
}

/// Issue #15, item 4 (access-control policies, as processes): each door
/// holds its own `[[acp]]` rules, evaluated permit-overrides with deny by
/// default on the verified signer, the command's operation (its first
/// word), the group and the signed time. Door-1 permits the gateway's
/// `unlock` and executes it; door-2 permits only `extinguish`, so the same
/// genuine, correctly keyed command is refused there (counted, audited, not
/// executed). Restarted with a rule limited to hours that exclude now,
/// door-1 refuses the next unlock too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_control_policies_decide_who_may_order_what() {
    let t = MqttRun::start("acp").await;
    let dir = t.dir.clone();
    let Site {
        gateway,
        sensor,
        doors,
        ..
    } = fire_safety_site(&t, "");
    let append = |file: &str, text: &str| {
        let path = dir.join(file);
        let mut toml = fs::read_to_string(&path).unwrap();
        toml.push_str(text);
        fs::write(path, toml).unwrap();
    };
    let policy = |ops: &str, hours: &str| {
        format!(
            "\n[[acp]]\noriginators = [\"{gateway}\"]\noperations = [{ops}]\ngroups = [\"fire-doors\"]\n{hours}\n[[acp]]\neffect = \"deny\"\noriginators = [\"*\"]\noperations = [\"*\"]\n"
        )
    };
    append(&format!("{}.toml", doors[0]), &policy("\"unlock\"", ""));
    append(&format!("{}.toml", doors[1]), &policy("\"extinguish\"", ""));
    // The gateway acts on alerts of the sensor only.
    append(
        "agent.toml",
        &format!("\n[[acp]]\noriginators = [\"{sensor}\"]\noperations = [\"alert\"]\n"),
    );
    let mut procs = Procs::new(&dir);
    start_fire_safety(&mut procs, &sensor, [doors[0].as_str(), doors[1].as_str()]);
    procs.exit_on_ctrl_c(&sensor).await;
    common::alert(&dir, &sensor, "smoke 1");
    wait_until_blocking("door-1 unlocks, door-2 refuses", &procs, || {
        executed(&dir, &doors[0]).len() == 1
            && procs
                .log(&doors[1])
                .contains("refused by the access-control policy")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        executed(&dir, &doors[1]).is_empty(),
        "door-2 executed a command its policy refuses"
    );
    assert!(
        procs.log(&doors[1]).contains("DenyByRule(2)"),
        "{}",
        procs.log(&doors[1])
    );

    // Door-1 restarted with its rule limited to hours that exclude now.
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600)
        % 24;
    let later = format!("hours = \"{}-{}\"", (hour + 1) % 24, (hour + 2) % 24);
    let cfg = dir.join(format!("{}.toml", doors[0]));
    let toml = fs::read_to_string(&cfg).unwrap().replace(
        "groups = [\"fire-doors\"]\n",
        &format!("groups = [\"fire-doors\"]\n{later}\n"),
    );
    fs::write(&cfg, toml).unwrap();
    assert!(procs.terminate_async(&doors[0]).await.success());
    procs.restart_device(&doors[0], 1);
    wait_until_blocking("door-1 runs again", &procs, || {
        procs.log(&doors[0]).contains("device running")
    });
    common::alert(&dir, &sensor, "smoke 2");
    wait_until_blocking("door-1 refuses outside its hours", &procs, || {
        procs
            .log(&doors[0])
            .contains("refused by the access-control policy")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(executed(&dir, &doors[0]).len(), 1);
    for p in [doors[0].as_str(), doors[1].as_str()] {
        assert!(procs.terminate_async(p).await.success());
    }
    let text = common::audit_text(&dir, &format!("{}-state/audit.jsonl", doors[1]));
    assert!(
        text.contains("access-control policy: DenyByRule(2)"),
        "{text}"
    );
    // A bad rule is refused before anything starts.
    common::refused_before_start(
        &dir,
        "bad.toml",
        &(fs::read_to_string(dir.join(format!("{}.toml", doors[1]))).unwrap()
            + "\n[[acp]]\neffect = \"maybe\"\noriginators = [\"x\"]\noperations = [\"y\"]\n"),
        "[[acp]] number 3",
    );
    drop(procs);
}

/// `sealcast node statuses --json`.
fn statuses_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(node_cmd(dir, &["statuses", "--json"]).trim()).unwrap()
}

/// Issue #15, item 2, the whole chain as processes: a compromised sensor
/// (its own key) floods genuine alerts; the gateway refuses those over its
/// rate cap (no rule fires) and sends a signed misbehaviour report; the
/// manager's policy revokes the sensor — listed, evicted from its group
/// (rekeyed), enrolment deleted — and the signed status list reaches the
/// gateway and the doors. The sensor can send nothing more, its revoked key
/// cannot be enrolled again, and the revocation cannot be undone by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_sensor_is_reported_revoked_and_evicted() {
    let t = MqttRun::start("mb").await;
    let dir = t.dir.clone();
    let Site {
        gateway,
        sensor,
        doors,
        ..
    } = fire_safety_site(&t, "");
    let append = |file: &str, text: &str| {
        let path = dir.join(file);
        let mut all = fs::read_to_string(&path).unwrap();
        all.push_str(text);
        fs::write(path, all).unwrap();
    };
    append(
        "agent.toml",
        "\n[misbehaviour]\nmax_messages_per_sender_per_minute = 2\nreport_interval_ms = 300\n",
    );
    append(
        "manager.toml",
        "\n[[misbehaviour]]\nevidence = \"flood\"\nthreshold = 2\nwindow_s = 600\naction = \"revoke\"\n",
    );
    let mut procs = Procs::new(&dir);
    start_fire_safety(&mut procs, &sensor, [doors[0].as_str(), doors[1].as_str()]);
    procs.exit_on_ctrl_c(&sensor).await;
    let epoch_before = common::group_show_json(&dir, "manager.toml", "fire-sensors")["epoch"]
        .as_u64()
        .unwrap();

    // Two alerts within the cap: both doors unlock twice.
    for n in 1..=2 {
        common::alert(&dir, &sensor, &format!("smoke {n}"));
    }
    wait_until_blocking("both doors execute 2 commands", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 2)
    });
    // Two more within the minute: verified, refused, reported.
    for n in 3..=4 {
        common::alert(&dir, &sensor, &format!("smoke {n}"));
    }
    wait_until_blocking("the manager's policy revokes the sensor", &procs, || {
        procs.log("manager").contains("misbehaviour policy acted")
    });
    assert!(
        procs.log("agent").contains("is over the rate cap"),
        "{}",
        procs.log("agent")
    );
    assert!(procs.log("agent").contains("misbehaviour report sent"));
    let listed = statuses_json(&dir);
    assert_eq!(listed["listed"][0]["node"], sensor.as_str(), "{listed}");
    assert_eq!(listed["listed"][0]["status"], "revoked", "{listed}");
    let reason = listed["listed"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("flood") && reason.contains(&gateway),
        "{reason}"
    );
    // Evicted: the sensor group moved on without it.
    let shown = common::group_show_json(&dir, "manager.toml", "fire-sensors");
    assert!(shown["epoch"].as_u64().unwrap() > epoch_before, "{shown}");
    assert_eq!(shown["members"], 1, "{shown}"); // the gateway alone
    // The signed list reached the gateway and (relayed) both doors.
    for who in ["agent", doors[0].as_str(), doors[1].as_str()] {
        wait_until_blocking(&format!("{who} applies the status list"), &procs, || {
            procs.log(who).contains("status list applied")
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(doors.iter().all(|d| executed(&dir, d).len() == 2));

    // The revoked sensor gets no key any more: its next send fails.
    let out = common::alert_run(&dir, &sensor, "smoke 5", 3);
    assert!(!out.status.success());
    // Its key cannot come back, and a revocation is not undone by hand.
    let pubfile = format!("{sensor}.pub");
    let out = common::sealcast_fails(
        &dir,
        &[
            "group",
            "enrol",
            "--config",
            "manager.toml",
            "--public-key",
            &pubfile,
            "--kind",
            "device",
            "--agent",
            &gateway,
        ],
    );
    assert!(out.contains("revoked under this very key"), "{out}");
    let out = common::sealcast_fails(
        &dir,
        &[
            "node",
            "reinstate",
            "--config",
            "manager.toml",
            "--id",
            &sensor,
        ],
    );
    assert!(out.contains("final"), "{out}");

    // The manager audited reports, status and removal; the gateway its report.
    let audit = common::audit_text(&dir, "manager-state/audit.jsonl");
    for needle in [
        "misbehaviour",
        "flood x",
        "revoked (list version",
        "remove-entity",
    ] {
        assert!(audit.contains(needle), "{needle}: {audit}");
    }
    let gw_log = format!("{gateway}-state/audit.jsonl");
    common::audit_intact(&dir, &gw_log, &["smoke"]);
    assert!(common::audit_text(&dir, &gw_log).contains("misbehaviour report"));
    drop(procs);
}

/// Issue #15, item 2, suspension by hand: every node refuses what a
/// suspended entity signs (the gateway a sensor's alerts, the doors a
/// gateway's commands) while it keeps its keys; the list survives a
/// SIGKILL; reinstated, it is heard again. An older list replayed, a list
/// forged under the manager's name and a genuine list issued an hour ago
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suspension_is_enforced_everywhere_kept_and_not_undone_by_old_or_forged_lists() {
    let t = MqttRun::start("su").await;
    let (dir, url, prefix) = (t.dir.clone(), t.url.clone(), t.run.clone());
    let Site {
        manager,
        gateway,
        sensor,
        doors,
    } = fire_safety_site(&t, "");
    let (_, _, gateway_inbox, spy, mut captured_rx) = gateway_spy(&url, &prefix, &gateway).await;
    let mut procs = Procs::new(&dir);
    start_fire_safety(&mut procs, &sensor, [doors[0].as_str(), doors[1].as_str()]);
    procs.exit_on_ctrl_c(&sensor).await;
    let alert = |text: &str| common::alert(&dir, &sensor, text);
    let unlocks = |procs: &Procs, n: usize| {
        wait_until_blocking(&format!("both doors execute {n} commands"), procs, || {
            doors.iter().all(|d| executed(&dir, d).len() >= n)
        });
    };
    let applied = |procs: &Procs, who: &str, n: usize| {
        wait_until_blocking(&format!("{who} applies status list {n}"), procs, || {
            procs.log(who).matches("status list applied").count() >= n
        });
    };
    alert("smoke 1");
    unlocks(&procs, 1);

    // --- suspend the sensor: the gateway refuses its alerts ------------------
    let out = node_cmd(
        &dir,
        &["suspend", "--id", &sensor, "--reason", "tampered case"],
    );
    assert!(out.contains("is suspended"), "{out}");
    applied(&procs, "agent", 1);
    alert("smoke 2"); // it keeps its keys: the send itself succeeds
    wait_until_blocking("the gateway refuses the suspended sensor", &procs, || {
        procs.log("agent").contains("is suspended by the manager")
    });
    // Kept across a SIGKILL of the gateway.
    procs.sigkill("agent");
    procs.move_log_aside("agent", 1);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    wait_until_blocking("the gateway runs again", &procs, || {
        procs.log("agent").contains("kept across the restart")
    });
    alert("smoke 3");
    wait_until_blocking("the restarted gateway refuses it too", &procs, || {
        procs.log("agent").contains("is suspended by the manager")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(doors.iter().all(|d| executed(&dir, d).len() == 1));

    // --- reinstate: heard again ----------------------------------------------
    let out = node_cmd(&dir, &["reinstate", "--id", &sensor]);
    assert!(out.contains("in good standing"), "{out}");
    applied(&procs, "agent", 1);
    alert("smoke 4");
    unlocks(&procs, 2);

    // --- old, forged and stale lists change nothing ----------------------------
    let mut suspending = None;
    while let Ok((_, bytes)) = captured_rx.try_recv() {
        let Ok(st) = UnverifiedStatement::parse(&bytes, 1 << 20) else {
            continue;
        };
        if let Ok(list) = StatusList::from_cbor(st.payload())
            && !list.listed.is_empty()
        {
            suspending = Some((list, bytes));
        }
    }
    let (old, old_bytes) = suspending.expect("the suspending list was captured");
    let manager_key =
        EntityCredential::from_cose_key_set(&fs::read(dir.join(format!("{manager}.key"))).unwrap())
            .unwrap();
    let mallory = EntityCredential::generate(
        manager_key.id().clone(),
        &mut sealcast_core::testrng::TestRng::new(98),
    );
    let listing = |issued: u64| StatusList {
        manager: manager_key.id().clone(),
        version: old.version + 1_000_000,
        issued: UnixMillis::new(issued),
        listed: [(EntityId::new(&sensor).unwrap(), Status::Suspended)].into(),
    };
    let forged = listing(now_ms()).sign(&mallory).unwrap();
    let stale = listing(now_ms() - 3_600_000).sign(&manager_key).unwrap();
    for bytes in [old_bytes, forged, stale] {
        spy.publish(gateway_inbox.clone(), Bytes::from(bytes))
            .await
            .unwrap();
    }
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until_blocking("the gateway refuses the lists", &procs, || {
        procs.log("agent").contains("status list refused")
    });
    alert("smoke 5");
    unlocks(&procs, 3);

    // --- suspend the gateway: the doors refuse its commands ---------------------
    node_cmd(&dir, &["suspend", "--id", &gateway]);
    for d in &doors {
        wait_until_blocking(&format!("{d} applies the list"), &procs, || {
            procs.log(d).matches("status list applied").count() >= 3
        });
    }
    alert("smoke 6");
    wait_until_blocking("the doors refuse the suspended gateway", &procs, || {
        doors
            .iter()
            .all(|d| procs.log(d).contains("is suspended by the manager"))
    });
    assert!(doors.iter().all(|d| executed(&dir, d).len() == 3));
    let shown = statuses_json(&dir);
    assert_eq!(shown["listed"][0]["node"], gateway.as_str(), "{shown}");

    // --- a status file that is not the manager's list stops the start ----------
    assert!(procs.terminate_async(&doors[0]).await.success());
    fs::write(
        dir.join(format!("{}-state/status.cbor", doors[0])),
        b"\x84not a list",
    )
    .unwrap();
    let door_config = format!("{}.toml", doors[0]);
    let out = common::run_bounded(
        &dir,
        &["device", "run", "--config", &door_config],
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("status list file") && !err.contains("panicked"),
        "{err}"
    );
    drop(procs);
}

/// Issue #15, item 5 (credential rotation authorised by the operator): a
/// door's key is replaced through the running manager; it keeps its seat
/// (the same tree leaf) in its group, runs on the new key and executes the
/// next command, while the old key can no longer obtain key material. The
/// same key again is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_rotates_a_doors_key_and_it_keeps_its_seat() {
    let t = MqttRun::start("rk").await;
    let dir = t.dir.clone();
    let Site { sensor, doors, .. } = fire_safety_site(&t, "");
    let mut procs = Procs::new(&dir);
    start_fire_safety(&mut procs, &sensor, [doors[0].as_str(), doors[1].as_str()]);
    procs.exit_on_ctrl_c(&sensor).await;
    common::alert(&dir, &sensor, "smoke 1");
    wait_until_blocking("both doors unlock", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 1)
    });
    let leaf_of = |door: &str| {
        let shown = common::group_show_json(&dir, "manager.toml", "fire-doors");
        shown["member_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == door)
            .map(|m| m["leaf"].clone())
            .unwrap_or_else(|| panic!("{door} not in {shown}"))
    };
    let leaf = leaf_of(&doors[1]);

    // --- rotate door-2's key through the manager -------------------------------
    fs::create_dir_all(dir.join("next")).unwrap();
    fs::create_dir_all(dir.join("old")).unwrap();
    common::sealcast(&dir, &["keygen", "--id", &doors[1], "--out-dir", "next"]);
    let next_pub = format!("next/{}.pub", doors[1]);
    let out = node_cmd(&dir, &["rotate-key", "--public-key", &next_pub]);
    assert!(out.contains("still a member of fire-doors"), "{out}");
    assert_eq!(leaf_of(&doors[1]), leaf);
    let out = common::sealcast_fails(
        &dir,
        &[
            "node",
            "rotate-key",
            "--config",
            "manager.toml",
            "--public-key",
            &next_pub,
        ],
    );
    assert!(out.contains("equals"), "{out}");

    // --- the door restarts on its new key (and an empty state) -------------------
    assert!(procs.terminate_async(&doors[1]).await.success());
    for ext in ["key", "pub"] {
        let name = format!("{}.{ext}", doors[1]);
        fs::copy(dir.join(&name), dir.join("old").join(&name)).unwrap();
        fs::copy(dir.join("next").join(&name), dir.join(&name)).unwrap();
    }
    fs::remove_dir_all(dir.join(format!("{}-state", doors[1]))).unwrap();
    procs.restart_device(&doors[1], 1);
    wait_until_blocking(
        "door-2 holds the key again, under its new key",
        &procs,
        || procs.installed(&doors[1]) >= 1,
    );
    common::alert(&dir, &sensor, "smoke 2");
    wait_until_blocking("both doors execute the second command", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 2)
    });

    // --- the old key gets nothing: its pull is not answered ---------------------
    let old_config = fs::read_to_string(dir.join(format!("{}.toml", doors[1])))
        .unwrap()
        .replace(
            &format!("key = \"{}.key\"", doors[1]),
            &format!("key = \"old/{}.key\"", doors[1]),
        )
        .replace(
            &format!("state_dir = \"{}-state\"", doors[1]),
            "state_dir = \"old-state\"",
        );
    fs::write(dir.join("old.toml"), old_config).unwrap();
    let out = common::run(
        &dir,
        &[
            "device",
            "send",
            "--config",
            "old.toml",
            "--group",
            "fire-doors",
            "--alert",
            "x",
            "--wait",
            "4",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not confirm the current key material"),
        "{stderr}"
    );
    let audit = common::audit_text(&dir, "manager-state/audit.jsonl");
    assert!(audit.contains("rotate-key"), "{audit}");
    drop(procs);
}

/// `sealcast agent token --config agent.toml --json`.
fn gateway_token(dir: &std::path::Path) -> serde_json::Value {
    let out = common::sealcast(dir, &["agent", "token", "--config", "agent.toml", "--json"]);
    serde_json::from_str(out.trim()).unwrap()
}

fn now_s() -> u64 {
    now_ms() / 1000
}

/// The race CI found (baf8f04), forced: the manager starts before the
/// gateway ever connected, issues the gateway's token and pushes it — into
/// nothing: the broker holds no session for the gateway yet, so the publish
/// reaches no one. The token (600 s, renewed at 300 s) must not wait for
/// its renewal: it goes again on the gateway's first acknowledgement (of a
/// key delivery, which the manager re-sends until acknowledged), and the
/// gateway holds it well within the wait. Before the fix this timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_pushed_before_the_gateway_ever_connected_reaches_it_on_its_first_ack() {
    let t = MqttRun::start("tokrace").await;
    let dir = t.dir.clone();
    let Site {
        gateway,
        sensor,
        doors,
        ..
    } = fire_safety_site(&t, "");
    let mut manager = fs::read_to_string(dir.join("manager.toml")).unwrap();
    manager.push_str(&format!(
        "\n[[access_token]]\nentity = \"{gateway}\"\ngroups = [\"fire-doors\"]\noperations = [\"unlock\"]\nlifetime_s = 600\n"
    ));
    fs::write(dir.join("manager.toml"), manager).unwrap();

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the manager issued the gateway's token", &procs, || {
        // Not `node_json`: the manager's socket may not be up yet.
        let out = common::run(
            &dir,
            &[
                "node",
                "show",
                "--id",
                &gateway,
                "--json",
                "--config",
                "manager.toml",
            ],
        );
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["token"]["expires"].as_u64().is_some())
    });
    // Issued and pushed in one step; a moment for the publish to be gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in [&sensor, &doors[0], &doors[1]] {
        procs.start_device(d);
    }
    wait_until_blocking("the gateway holds its token", &procs, || {
        procs
            .log("agent")
            .contains("access token received from the manager")
    });
    let held = gateway_token(&dir);
    assert_eq!(held["token"]["valid"], true, "{held}");
    assert_eq!(
        held["token"]["grants"],
        serde_json::json!([{"group": "fire-doors", "operations": ["unlock"]}])
    );
}

/// Issue #15, item 4 (access-control tokens, as processes): the doors have
/// no `[[acp]]` rules and accept tokens, so they execute only what the
/// signer's token from the manager grants. The manager issues the gateway a
/// 4-second token for `unlock` on `fire-doors` and renews it at half its
/// life; the gateway carries it in its commands; the doors validate it
/// offline. A command after the first token's expiry still runs (renewed).
/// At the gateway, a token for another node, an older token replayed and
/// a token forged under the manager's name are refused; at the doors,
/// commands signed by the gateway carrying a manager-signed token that has
/// expired, or that is another entity's, are refused. Killed and
/// restarted with the grant narrowed to `extinguish`, the manager's new
/// token no longer grants the unlock: refused. Restarted without any grant,
/// the gateway's token expires and its next command carries none: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_tokens_let_the_gateway_order_what_they_grant_until_they_expire() {
    use sealcast_group::token::{AccessToken, Grant};
    let t = MqttRun::start("token").await;
    let (dir, url, prefix) = (t.dir.clone(), t.url.clone(), t.run.clone());
    let Site {
        manager,
        gateway,
        sensor,
        doors,
    } = fire_safety_site(&t, "");
    let append = |file: &str, text: &str| {
        let path = dir.join(file);
        let mut toml = fs::read_to_string(&path).unwrap();
        toml.push_str(text);
        fs::write(path, toml).unwrap();
    };
    for d in &doors {
        append(&format!("{d}.toml"), "accept_access_tokens = true\n");
    }
    let base_manager = fs::read_to_string(dir.join("manager.toml")).unwrap();
    let grant = |ops: &str| {
        format!(
            "\n[[access_token]]\nentity = \"{gateway}\"\ngroups = [\"fire-doors\"]\noperations = [{ops}]\nlifetime_s = 4\n"
        )
    };
    fs::write(
        dir.join("manager.toml"),
        base_manager.clone() + &grant("\"unlock\""),
    )
    .unwrap();

    // A raw client that captures what the manager sends the gateway.
    let (topics, gateway_id, gateway_inbox, spy, mut captured_rx) =
        gateway_spy(&url, &prefix, &gateway).await;
    let door_inbox = topics.device(&EntityId::new(&doors[0]).unwrap(), DeviceChannel::Delivery);

    let mut procs = Procs::new(&dir);
    start_fire_safety(&mut procs, &sensor, [doors[0].as_str(), doors[1].as_str()]);
    procs.exit_on_ctrl_c(&sensor).await;
    let received = |procs: &Procs| {
        procs
            .log("agent")
            .matches("access token received from the manager")
            .count()
    };
    wait_until_blocking("the gateway holds a token", &procs, || {
        received(&procs) >= 1
    });
    let first = gateway_token(&dir);
    let token = &first["token"];
    assert_eq!(token["valid"], true, "{first}");
    assert_eq!(token["issuer"], manager.as_str());
    assert_eq!(
        token["grants"],
        serde_json::json!([{"group": "fire-doors", "operations": ["unlock"]}])
    );
    let first_expires = token["expires"].as_u64().unwrap();
    // The manager shows what it issued.
    let shown = node_json(&dir, &gateway);
    assert_eq!(shown["token"]["grants"], "unlock on fire-doors", "{shown}");
    assert!(shown["token"]["expires"].as_u64().unwrap() >= first_expires);
    assert!(node_cmd(&dir, &["show", "--id", &gateway]).contains("token    "));

    // --- the token permits the gateway's unlock on both doors --------------
    common::alert(&dir, &sensor, "smoke 1");
    wait_until_blocking("both doors unlock on the token", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 1)
    });

    // --- renewed before it expires: a command after the first token's end --
    wait_until_blocking("the first token has expired", &procs, || {
        now_s() > first_expires
    });
    assert_ne!(gateway_token(&dir)["token"]["id"], token["id"]);
    common::alert(&dir, &sensor, "smoke 2");
    wait_until_blocking("both doors unlock on the renewed token", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() == 2)
    });

    // --- attacks at the holder ---------------------------------------------
    let mut captured = Vec::new();
    while let Ok((_, bytes)) = captured_rx.try_recv() {
        if AccessToken::looks_like(&bytes) {
            captured.push(bytes);
        }
    }
    assert!(captured.len() >= 2, "tokens captured: {}", captured.len());
    // The gateway's genuine token, sent to door-1: not door-1's.
    spy.publish(
        door_inbox.clone(),
        Bytes::from(captured[captured.len() - 1].clone()),
    )
    .await
    .unwrap();
    // An older genuine token replayed to the gateway.
    spy.publish(gateway_inbox.clone(), Bytes::from(captured[0].clone()))
        .await
        .unwrap();
    // A token forged under the manager's name: every operation everywhere,
    // for a day.
    let mallory = EntityCredential::generate(
        EntityId::new(&manager).unwrap(),
        &mut sealcast_core::testrng::TestRng::new(99),
    );
    let forged = AccessToken {
        issuer: EntityId::new(&manager).unwrap(),
        subject: gateway_id.clone(),
        issued_at: now_s() + 100,
        not_before: now_s() - 10,
        expires: now_s() + 86_400,
        id: [0xee; 8],
        scope: vec![Grant {
            group: None,
            operations: vec!["*".into()],
        }],
    }
    .sign(&mallory)
    .unwrap();
    spy.publish(gateway_inbox.clone(), Bytes::from(forged))
        .await
        .unwrap();
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until_blocking("door-1 and the gateway refuse them", &procs, || {
        procs
            .log(&doors[0])
            .contains("access token for another entity")
            && procs.log("agent").contains("access token refused")
    });
    let held = gateway_token(&dir);
    assert_ne!(held["token"]["id"], "eeeeeeeeeeeeeeee", "{held}");
    assert_eq!(
        held["token"]["grants"][0]["operations"],
        serde_json::json!(["unlock"])
    );

    // --- suspended, the gateway gets no new token; reinstated, it does ----
    node_cmd(&dir, &["suspend", "--id", &gateway, "--reason", "test"]);
    wait_until_blocking("the manager stops renewing", &procs, || {
        procs
            .log("manager")
            .contains("access token not renewed: the entity is on the status list")
    });
    node_cmd(&dir, &["reinstate", "--id", &gateway]);
    let before = received(&procs);
    wait_until_blocking("renewals resume", &procs, || received(&procs) > before);

    // --- commands carrying a token that is expired, or another's ---------
    // Sealed as the gateway would (its key and its group material, read
    // from its files; sequence numbers ahead of its own but inside the
    // doors' windows, so its own later commands still count), with tokens the
    // genuine manager key signed: the doors refuse both.
    let manager_key =
        EntityCredential::from_cose_key_set(&fs::read(dir.join(format!("{manager}.key"))).unwrap())
            .unwrap();
    let gateway_key =
        EntityCredential::from_cose_key_set(&fs::read(dir.join(format!("{gateway}.key"))).unwrap())
            .unwrap();
    let doors_group = sealcast_core::ids::GroupId::new(b"fire-doors").unwrap();
    let state = sealcast_group::state_file::MemberState::decode(
        &fs::read(dir.join(format!("{gateway}-state/state.cbor"))).unwrap(),
    )
    .unwrap();
    let material = state
        .groups
        .iter()
        .map(|(m, _)| m)
        .find(|m| *m.group() == doors_group)
        .unwrap()
        .clone();
    let ctx = sealcast_core::groupkey::GroupContext::new(&material).unwrap();
    let command_topic = topics.group(&doors_group, sealcast_core::target::GroupChannel::Command);
    let token_for = |subject: &str, from: u64, until: u64| {
        AccessToken {
            issuer: manager_key.id().clone(),
            subject: EntityId::new(subject).unwrap(),
            issued_at: from,
            not_before: from,
            expires: until,
            id: [0x42; 8],
            scope: vec![Grant {
                group: Some(doors_group.clone()),
                operations: vec!["unlock".into()],
            }],
        }
        .sign(&manager_key)
        .unwrap()
    };
    let expired = token_for(&gateway, now_s() - 600, now_s() - 300);
    let anothers = token_for(&doors[1], now_s() - 10, now_s() + 600);
    for (seq, token) in [(40u64, &expired), (41, &anothers)] {
        let bytes = sealcast_core::broadcast::seal_broadcast_with_token(
            &ctx,
            gateway_key.id(),
            gateway_key.signing_key(),
            sealcast_core::ids::SeqNum::new(seq).unwrap(),
            UnixMillis::new(now_ms()),
            &command_topic,
            b"unlock",
            Some(token),
        )
        .unwrap();
        spy.publish(command_topic.clone(), Bytes::from(bytes))
            .await
            .unwrap();
    }
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until_blocking("door-1 refuses the expired token", &procs, || {
        procs.log(&doors[0]).contains("token expired")
    });
    std::thread::sleep(Duration::from_millis(500));
    for d in &doors {
        assert_eq!(
            executed(&dir, d).len(),
            2,
            "{d} executed a command its token did not permit"
        );
    }

    // --- the manager killed, restarted granting only `extinguish` ----------
    procs.sigkill("manager");
    fs::write(
        dir.join("manager.toml"),
        base_manager.clone() + &grant("\"extinguish\""),
    )
    .unwrap();
    let before = received(&procs);
    procs.start_appending("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the gateway holds the narrowed token", &procs, || {
        received(&procs) > before
            && gateway_token(&dir)["token"]["grants"][0]["operations"]
                == serde_json::json!(["extinguish"])
    });
    common::alert(&dir, &sensor, "smoke 3");
    // (Refusals are warned at most every 5 s: the audit, below, has each.)
    wait_until_blocking(
        "the gateway commands under the narrowed token",
        &procs,
        || procs.log("agent").matches("rule fired").count() >= 3,
    );
    std::thread::sleep(Duration::from_millis(1000));

    // --- restarted without any grant: the token expires, commands carry none
    assert!(procs.terminate_async("manager").await.success());
    fs::write(dir.join("manager.toml"), base_manager).unwrap();
    procs.start_appending("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the gateway's token has expired", &procs, || {
        gateway_token(&dir)["token"]["valid"] == false
    });
    let text = common::sealcast(&dir, &["agent", "token", "--config", "agent.toml"]);
    assert!(text.contains("EXPIRED"), "{text}");
    common::alert(&dir, &sensor, "smoke 4");
    wait_until_blocking("the gateway commands without a token", &procs, || {
        procs.log("agent").matches("rule fired").count() >= 4
    });
    std::thread::sleep(Duration::from_millis(1500));
    for d in &doors {
        assert_eq!(executed(&dir, d).len(), 2, "{d} executed a refused command");
    }
    for d in [doors[0].as_str(), doors[1].as_str(), "agent"] {
        assert!(procs.terminate_async(d).await.success());
    }
    // Each refusal at the gateway is audited with its reason.
    let gateway_audit = common::audit_text(&dir, &format!("{gateway}-state/audit.jsonl"));
    assert!(
        gateway_audit.contains("access token older than the one held")
            && gateway_audit.contains("access token not signed by the manager"),
        "{gateway_audit}"
    );
    let door_audit = common::audit_text(&dir, &format!("{}-state/audit.jsonl", doors[1]));
    assert!(
        door_audit.contains("token does not grant it"),
        "{door_audit}"
    );
    assert!(door_audit.contains("no token"), "{door_audit}");
    assert!(door_audit.contains("token expired"), "{door_audit}");
    assert!(
        door_audit.contains("token for another entity"),
        "{door_audit}"
    );
    let manager_audit = fs::read_to_string(dir.join("manager-state/audit.jsonl")).unwrap();
    assert!(manager_audit.contains("access-token"), "{manager_audit}");
    assert!(manager_audit.contains("renewed"), "{manager_audit}");
    // The token file is the gateway's, 0600.
    let mode = fs::metadata(dir.join(format!("{gateway}-state/access-token.cbor")))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    drop(procs);
    drop(spy);
}

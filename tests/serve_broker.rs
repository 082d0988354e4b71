#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The services on a broker that restarts (issue #11, item 4): a Mosquitto
//! the test starts on a free port with persistence on, stopped and started
//! again twice in the middle of a stream of alerts. Manager, gateway,
//! sensor and doors keep persistent MQTT sessions under stable client ids,
//! so whatever the broker routed to them — before, during and after its
//! restart, and while a door itself was down across the restart — reaches
//! them: every door executes every command the gateway issued, and none
//! twice. Needs mosquitto (CI installs it); without it a NOT RUN banner
//! says so.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::{
    FIRE_RULE, Mosquitto, Procs, executed_seqs, fire_safety_tables, keygen, manager_config,
    node_config, relays_for, run_prefix, wait_until,
};
use sealcast_core::ids::GroupId;
use sealcast_mqtt::{GroupChannel, TopicScheme};

/// Collects the commands the spy captured into `commands` until there are
/// `sent` of them and every door executed as many, or [`common::WAIT`]
/// passes (the caller's assertions then say what is missing).
async fn all_commands_executed(
    captured: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    commands: &mut BTreeSet<u64>,
    sent: usize,
    dir: &std::path::Path,
    doors: &[String],
) {
    let settle = std::time::Instant::now() + common::WAIT;
    loop {
        while let Ok((_, c)) = captured.try_recv() {
            commands.insert(
                sealcast_core::broadcast::peek_broadcast(&c)
                    .unwrap()
                    .seq
                    .get(),
            );
        }
        let done = commands.len() >= sent
            && doors
                .iter()
                .all(|d| executed_seqs(dir, d).len() >= commands.len());
        if done || std::time::Instant::now() > settle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `count` alerts from `sensor`, one after the other, each bounded;
/// returns how many succeeded. Some fail while the broker is down; that is
/// the sender's to see and retry, and a failed one may still have reached
/// the broker.
fn alerts(dir: std::path::PathBuf, sensor: String, from: usize, count: usize) -> usize {
    (from..from + count)
        .filter(|i| {
            common::run_bounded(
                &dir,
                &[
                    "device",
                    "send",
                    "--config",
                    &format!("{sensor}.toml"),
                    "--group",
                    "fire-sensors",
                    "--alert",
                    &format!("smoke {i}"),
                    "--wait",
                    "15",
                ],
                Duration::from_secs(60),
            )
            .status
            .success()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_with_persistence_loses_no_command() {
    let test = "a_broker_restart_with_persistence_loses_no_command";
    let Some(bin) = Mosquitto::program(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("br");
    let name = |n: &str| format!("{run}-{n}");
    let (manager, gateway, sensor) = (name("manager"), name("gateway"), name("sensor"));
    let doors = [name("door-1"), name("door-2")];
    keygen(
        &dir,
        [&manager, &gateway, &sensor].into_iter().chain(&doors),
    );
    let port = Mosquitto::free_port();
    let mut broker = Mosquitto::start(
        &bin,
        &dir,
        port,
        &format!(
            "allow_anonymous true\npersistence true\npersistence_location {}/\n\
             autosave_interval 1\nmax_queued_messages 100000",
            dir.display()
        ),
        &format!("listener {port} 127.0.0.1\n"),
    );
    let url = format!("mqtt://127.0.0.1:{port}");
    let head = format!("broker = \"{url}\"\n");
    fs::write(
        dir.join("manager.toml"),
        manager_config(&head, &run, &manager)
            + &fire_safety_tables(&gateway, &[&sensor], &[&doors[0], &doors[1]]),
    )
    .unwrap();
    let node = |id: &str| node_config(&head, &run, id, &manager);
    fs::write(
        dir.join("agent.toml"),
        node(&gateway) + &relays_for([&sensor, &doors[0], &doors[1]]) + FIRE_RULE,
    )
    .unwrap();
    for d in std::iter::once(&sensor).chain(&doors) {
        fs::write(dir.join(format!("{d}.toml")), node(d)).unwrap();
    }

    // Every command the gateway issues, as the broker routes it to a
    // persistent session of the test's own.
    let topics = TopicScheme::with_prefix(&run).unwrap();
    let doors_g = GroupId::new(b"fire-doors").unwrap();
    let command_topic = topics.group(&doors_g, GroupChannel::Command);
    let (spy, mut captured) = common::spy_session(
        &url,
        name("spy"),
        [topics.group_filter(&doors_g)],
        move |t| t == command_topic,
        true,
    )
    .await;

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in std::iter::once(&sensor).chain(&doors) {
        procs.start_device(d);
    }
    wait_until("every key installed", &procs, || {
        procs.installed("agent") >= 2
            && std::iter::once(&sensor)
                .chain(&doors)
                .all(|d| procs.installed(d) >= 1)
    })
    .await;
    // One-shot sends use the sensor's state file.
    procs.exit_on_ctrl_c(&sensor).await;

    let send = |from: usize, count: usize| {
        let (dir, sensor) = (dir.clone(), sensor.clone());
        tokio::task::spawn_blocking(move || alerts(dir, sensor, from, count))
    };
    let mut sent_ok = send(0, 5).await.unwrap();

    // --- restart 1: in the middle of a stream of alerts -----------------------
    let stream = send(5, 15);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    sent_ok += stream.await.unwrap();

    // --- restart 2: door-2 is down across it and while alerts flow -----------
    // door-2 goes down idle, after it executed every command so far. Killed
    // between saving a command's window and executing it, a node loses that
    // command by design (the window is saved first, so no command ever runs
    // twice: ARCHITECTURE.md, "Crashes: a command runs at most once"), and
    // that is not what this restart is about. CI once killed door-2 just as
    // the stream's last command reached it, and the test reported it lost.
    let mut commands = BTreeSet::new();
    all_commands_executed(&mut captured, &mut commands, sent_ok, &dir, &doors).await;
    procs.sigkill(&doors[1]);
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    sent_ok += send(20, 5).await.unwrap();
    procs.restart_device(&doors[1], 1);
    sent_ok += send(25, 5).await.unwrap();

    // --- every command reaches every door, once -------------------------------
    all_commands_executed(&mut captured, &mut commands, sent_ok, &dir, &doors).await;
    // Late copies have had their chance to arrive and be refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        commands.len() >= sent_ok,
        "{sent_ok} alerts sent, {} commands seen",
        commands.len()
    );
    for d in &doors {
        let seqs = executed_seqs(&dir, d);
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            seqs.len(),
            "{d} executed a command twice: {seqs:?}"
        );
        let lost: Vec<&u64> = commands.difference(&distinct).collect();
        assert!(
            lost.is_empty(),
            "{d} lost {} of {} commands {lost:?}\n{}\n{}",
            lost.len(),
            commands.len(),
            procs.logs(),
            broker.log()
        );
        assert!(
            distinct.is_subset(&commands),
            "{d} executed a command nobody saw"
        );
    }
    for n in ["manager", "agent", &doors[0]] {
        assert!(
            procs.log(n).matches("connected to the MQTT broker").count() >= 3,
            "{n} did not reconnect after both restarts:\n{}",
            procs.log(n)
        );
    }
    eprintln!(
        "broker restarts: 30 alerts, {sent_ok} sends confirmed, {} commands, each executed once by both doors (door-2 was down across the second restart)",
        commands.len()
    );
    drop(procs);
    let _ = spy.disconnect(Duration::from_secs(2)).await;
    drop(broker);
}

/// Issue #11, item 4: a demo on an external broker used to publish on the
/// production topics (`sealcast/v1/…`) of whatever deployment shares the
/// broker. Each demo now takes a prefix of its own: two fire-safety demos
/// at once on one Mosquitto both pass, and nothing reaches the production
/// root.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demos_on_an_external_broker_keep_to_their_own_prefix() {
    let test = "demos_on_an_external_broker_keep_to_their_own_prefix";
    let Some(bin) = Mosquitto::program(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::anonymous(&bin, tmp.path());
    let url = broker.url();
    let (spy, mut captured) = common::spy(
        &url,
        "demo-watch".into(),
        [sealcast_mqtt::TopicFilter::new("#").unwrap()],
        |_| true,
    )
    .await;
    let demo = |url: String| {
        tokio::task::spawn_blocking(move || {
            common::run_bounded(
                std::path::Path::new("."),
                &["demo", "fire-safety", "--devices", "4", "--broker", &url],
                Duration::from_secs(120),
            )
        })
    };
    let (a, b) = (demo(url.clone()), demo(url.clone()));
    for out in [a.await.unwrap(), b.await.unwrap()] {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains("PASSED"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("topic prefix sealcast-demo-"), "{text}");
    }
    let mut roots = BTreeSet::new();
    while let Ok((topic, _)) = captured.try_recv() {
        assert!(
            !topic.starts_with("sealcast/"),
            "a demo published on the production root: {topic}"
        );
        roots.insert(topic.split('/').next().unwrap_or_default().to_owned());
    }
    assert_eq!(roots.len(), 2, "two demos, two prefixes: {roots:?}");
    let _ = spy.disconnect(Duration::from_secs(2)).await;
    drop(broker);
}

/// Issue #12, goal "fan-out past one broker": two Mosquitto brokers joined
/// by a bridge (the second forwards this deployment's topic tree both
/// ways). The manager and the gateway connect to one, the sensor and the
/// doors to the other: keys reach the doors, acknowledgements reach the
/// manager, the sensor's alert reaches the gateway and its command every
/// door, each executed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_spans_two_bridged_brokers() {
    let test = "a_deployment_spans_two_bridged_brokers";
    let Some(bin) = Mosquitto::program(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("bb");
    let name = |n: &str| format!("{run}-{n}");
    let (manager, gateway, sensor) = (name("manager"), name("gateway"), name("sensor"));
    let doors = [name("door-1"), name("door-2")];
    keygen(
        &dir,
        [&manager, &gateway, &sensor].into_iter().chain(&doors),
    );
    // The core broker (manager, gateway) and the edge broker (devices),
    // each in a directory of its own; the edge bridges to the core.
    let (core_dir, edge_dir) = (dir.join("core"), dir.join("edge"));
    fs::create_dir_all(&core_dir).unwrap();
    fs::create_dir_all(&edge_dir).unwrap();
    let core = Mosquitto::anonymous(&bin, &core_dir);
    let (core_port, edge_port) = (core.port, Mosquitto::free_port());
    let edge = Mosquitto::start(
        &bin,
        &edge_dir,
        edge_port,
        &format!(
            "allow_anonymous true\npersistence false\n\
             connection {run}-edge-to-core\naddress 127.0.0.1:{core_port}\n\
             topic {run}/sealcast/v1/# both 1\ncleansession false\n\
             bridge_protocol_version mqttv311\ntry_private true\nrestart_timeout 1 2"
        ),
        &format!("listener {edge_port} 127.0.0.1\n"),
    );
    let core_url = format!("mqtt://127.0.0.1:{core_port}");
    let edge_url = format!("mqtt://127.0.0.1:{edge_port}");
    let head = |url: &str| format!("broker = \"{url}\"\n");
    fs::write(
        dir.join("manager.toml"),
        manager_config(&head(&core_url), &run, &manager)
            + &fire_safety_tables(&gateway, &[&sensor], &[&doors[0], &doors[1]]),
    )
    .unwrap();
    fs::write(
        dir.join("agent.toml"),
        node_config(&head(&core_url), &run, &gateway, &manager)
            + &relays_for([&sensor, &doors[0], &doors[1]])
            + FIRE_RULE,
    )
    .unwrap();
    for d in std::iter::once(&sensor).chain(&doors) {
        fs::write(
            dir.join(format!("{d}.toml")),
            node_config(&head(&edge_url), &run, d, &manager),
        )
        .unwrap();
    }
    // The bridge is up before anyone publishes.
    let deadline = std::time::Instant::now() + common::WAIT;
    while !core.log().contains(&format!("{run}-edge-to-core")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge never connected:\n{}\n{}",
            edge.log(),
            core.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in std::iter::once(&sensor).chain(&doors) {
        procs.start_device(d);
    }
    wait_until("keys cross the bridge", &procs, || {
        procs.installed("agent") >= 2
            && std::iter::once(&sensor)
                .chain(&doors)
                .all(|d| procs.installed(d) >= 1)
    })
    .await;
    procs.exit_on_ctrl_c(&sensor).await;
    for i in 0..3 {
        common::send_alert(&dir, &sensor, &format!("smoke {i}"));
    }
    wait_until("every door executes three commands", &procs, || {
        doors.iter().all(|d| executed_seqs(&dir, d).len() >= 3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for d in &doors {
        let seqs = executed_seqs(&dir, d);
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(seqs.len(), 3, "{d}: {seqs:?}");
        assert_eq!(distinct.len(), 3, "{d} executed a command twice: {seqs:?}");
    }
    // The manager saw the doors' acknowledgements across the bridge.
    let shown = common::group_show_json(&dir, "manager.toml", "fire-doors");
    for d in &doors {
        let m = shown["member_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == d.as_str())
            .unwrap();
        assert_eq!(m["held"], shown["epoch"], "{shown}");
    }
    drop(procs);
    drop(edge);
    drop(core);
}

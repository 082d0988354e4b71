#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Manager, agent and devices as separate `sealcast` processes talking
//! through a broker (the Mosquitto at `SEALCAST_MQTT_URL` when set, else an
//! embedded one): the fire-safety flow, then a door killed with SIGKILL and
//! restarted — it executes the next command, accepts no replay, and the
//! sensor's one-shot sends never reuse a sequence number; and the gateway
//! and a door killed with SIGKILL in the middle of a stream of alerts — no
//! command's sequence number appears twice, no replay is executed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sealcast_core::ids::GroupId;
use sealcast_mqtt::{Bytes, EmbeddedBroker, GroupChannel, MqttClient, MqttConfig, TopicScheme};

const WAIT: Duration = Duration::from_secs(60);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sealcast")
}

/// Kills every child on drop (also on panic).
struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn start(&mut self, name: &str, args: &[&str]) {
        let log = fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin())
            .args(args)
            .current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    fn sigkill(&mut self, name: &str) {
        let child = self.child(name);
        child.kill().unwrap();
        child.wait().unwrap();
        self.children.retain(|(n, _)| n != name);
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_until(what: &str, procs: &Procs, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            let mut logs = String::new();
            for (name, _) in &procs.children {
                logs.push_str(&format!("--- {name}\n{}\n", procs.log(name)));
            }
            panic!("timed out waiting for {what}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sealcast(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sealcast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn executed(dir: &Path, name: &str) -> Vec<String> {
    fs::read_to_string(dir.join(format!("{name}.exec")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn send_alert(dir: &Path, sensor: &str, text: &str) -> u64 {
    let out = sealcast(
        dir,
        &[
            "device",
            "send",
            "--config",
            &format!("{sensor}.toml"),
            "--group",
            "fire-sensors",
            "--alert",
            text,
        ],
    );
    let seq = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("seq="))
        .unwrap_or_else(|| panic!("no seq in {out:?}"));
    seq.parse().unwrap()
}

/// A running deployment: manager, gateway, two sensors and two doors as
/// `sealcast` processes, every key installed, sensor-1's runtime stopped
/// (Ctrl-C) so that one-shot sends use its state file, and a raw MQTT client
/// capturing the door group's commands.
struct Deployment {
    _tmp: tempfile::TempDir,
    _broker: Option<EmbeddedBroker>,
    dir: PathBuf,
    gateway: String,
    sensors: [String; 2],
    doors: [String; 2],
    procs: Procs,
    spy: MqttClient,
    captured: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    command_topic: String,
}

impl Deployment {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (_broker, url) = match std::env::var("SEALCAST_MQTT_URL") {
            Ok(url) if !url.is_empty() => (None, url),
            _ => {
                let b = tokio::task::spawn_blocking(EmbeddedBroker::start)
                    .await
                    .unwrap()
                    .unwrap();
                let url = b.url();
                (Some(b), url)
            }
        };
        // Unique per run: topics (prefix) and MQTT client ids (entity ids).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let run = format!("t{}-{nanos}", std::process::id());
        let name = |n: &str| format!("{run}-{n}");
        let (manager, gateway) = (name("manager"), name("gateway"));
        let sensors = [name("sensor-1"), name("sensor-2")];
        let doors = [name("door-1"), name("door-2")];
        for id in [&manager, &gateway]
            .into_iter()
            .chain(&sensors)
            .chain(&doors)
        {
            sealcast(&dir, &["keygen", "--id", id]);
        }

        // --- configs -------------------------------------------------------------
        let mut m = format!(
            "broker = \"{url}\"\ntopic_prefix = \"{run}\"\nkey = \"{manager}.key\"\n\
             state_dir = \"manager-state\"\nkek = \"manager.kek\"\n\n\
             [[enrol]]\nid = \"{gateway}\"\nkind = \"agent\"\npublic_key = \"{gateway}.pub\"\n"
        );
        for d in sensors.iter().chain(&doors) {
            m.push_str(&format!(
                "\n[[enrol]]\nid = \"{d}\"\nkind = \"device\"\npublic_key = \"{d}.pub\"\nagent = \"{gateway}\"\n"
            ));
        }
        m.push_str(&format!(
            "\n[[group]]\nid = \"fire-sensors\"\nscheme = \"p2p\"\nmembers = [\n  \
             {{ id = \"{}\", role = \"sender\" }},\n  {{ id = \"{}\", role = \"sender\" }},\n  \
             {{ id = \"{gateway}\", role = \"receiver\" }},\n]\n",
            sensors[0], sensors[1]
        ));
        m.push_str(&format!(
            "\n[[group]]\nid = \"fire-doors\"\nscheme = \"tree\"\nmembers = [\n  \
             {{ id = \"{gateway}\", role = \"sender\" }},\n  {{ id = \"{}\", role = \"receiver\" }},\n  \
             {{ id = \"{}\", role = \"receiver\" }},\n]\n",
            doors[0], doors[1]
        ));
        fs::write(dir.join("manager.toml"), m).unwrap();
        let node = |id: &str| {
            format!(
                "broker = \"{url}\"\ntopic_prefix = \"{run}\"\nkey = \"{id}.key\"\n\
                 manager_public_key = \"{manager}.pub\"\nstate_dir = \"{id}-state\"\n"
            )
        };
        let relays: Vec<String> = sensors
            .iter()
            .chain(&doors)
            .map(|d| format!("\"{d}\""))
            .collect();
        fs::write(
            dir.join("agent.toml"),
            format!(
                "{}relays_for = [{}]\n\n[[rule]]\non_alert_from = \"fire-sensors\"\n\
                 then_command = \"fire-doors\"\npayload = \"unlock\"\n",
                node(&gateway),
                relays.join(", ")
            ),
        )
        .unwrap();
        for d in sensors.iter().chain(&doors) {
            fs::write(dir.join(format!("{d}.toml")), node(d)).unwrap();
        }

        // --- a raw MQTT client watching the door group's commands ---------------
        let topics = TopicScheme::with_prefix(&run).unwrap();
        let doors_g = GroupId::new(b"fire-doors").unwrap();
        let command_topic = topics.group(&doors_g, GroupChannel::Command);
        let (spy, mut inbox) = MqttClient::connect(
            MqttConfig::from_url(&url, name("spy"))
                .unwrap()
                .with_subscription(topics.group_filter(&doors_g)),
        )
        .unwrap();
        spy.wait_subscribed(Duration::from_secs(10)).await.unwrap();
        let (captured_tx, captured) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let watched = command_topic.clone();
        tokio::spawn(async move {
            while let Some(m) = inbox.next_message().await {
                if m.topic == watched {
                    let _ = captured_tx.send(m.payload.to_vec());
                }
                let _ = m.ack.ack().await;
            }
        });

        // --- the services ----------------------------------------------------------
        let mut procs = Procs {
            dir: dir.clone(),
            children: Vec::new(),
        };
        procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
        procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
        for d in sensors.iter().chain(&doors) {
            let cfg = format!("{d}.toml");
            let exec = format!("{d}.exec");
            procs.start(d, &["device", "run", "--config", &cfg, "--exec-log", &exec]);
        }
        let installed = |p: &Procs, n: &str| p.log(n).matches("key material installed").count();
        wait_until("every key installed", &procs, || {
            installed(&procs, "agent") >= 2
                && sensors
                    .iter()
                    .chain(&doors)
                    .all(|d| installed(&procs, d) >= 1)
        })
        .await;

        // The sensor's device runtime stops cleanly on Ctrl-C (its state is on
        // disk); one-shot sends then use the same state file.
        let pid = procs.child(&sensors[0]).id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(s) = procs.child(&sensors[0]).try_wait().unwrap() {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the sensor did not stop on Ctrl-C");
        assert!(status.success(), "sensor exit status {status:?}");
        procs.children.retain(|(n, _)| *n != sensors[0]);

        Deployment {
            _tmp: tmp,
            _broker,
            dir,
            gateway,
            sensors,
            doors,
            procs,
            spy,
            captured,
            command_topic,
        }
    }

    /// Restarts `name` (a device) after moving its log aside.
    async fn restart_device(&mut self, name: &str, round: usize) {
        let cfg = format!("{name}.toml");
        let exec = format!("{name}.exec");
        fs::rename(
            self.dir.join(format!("{name}.log")),
            self.dir.join(format!("{name}.log.{round}")),
        )
        .unwrap();
        self.procs.start(
            name,
            &["device", "run", "--config", &cfg, "--exec-log", &exec],
        );
        wait_until("the restarted device runs", &self.procs, || {
            self.procs.log(name).contains("device running")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fire_safety_as_separate_processes_survives_a_sigkilled_door() {
    let Deployment {
        _tmp,
        _broker,
        dir,
        gateway,
        sensors,
        doors,
        mut procs,
        spy,
        mut captured,
        command_topic,
    } = Deployment::start().await;

    // --- alert → unlock executed once by each door -------------------------
    let seq1 = send_alert(&dir, &sensors[0], "smoke in hall 1");
    wait_until("both doors unlock", &procs, || {
        doors.iter().all(|d| !executed(&dir, d).is_empty())
    })
    .await;
    let first = tokio::time::timeout(Duration::from_secs(10), captured.recv())
        .await
        .unwrap()
        .unwrap();
    for d in &doors {
        let lines = executed(&dir, d);
        assert_eq!(lines.len(), 1, "{d}: {lines:?}");
        assert!(lines[0].contains("group=fire-doors"), "{lines:?}");
        assert!(lines[0].contains(&format!("signer={gateway}")), "{lines:?}");
        assert!(lines[0].ends_with("payload=unlock"), "{lines:?}");
    }

    // --- SIGKILL a door, restart it -------------------------------------------
    procs.sigkill(&doors[0]);
    let cfg = format!("{}.toml", doors[0]);
    let exec = format!("{}.exec", doors[0]);
    fs::rename(
        dir.join(format!("{}.log", doors[0])),
        dir.join(format!("{}.log.1", doors[0])),
    )
    .unwrap();
    procs.start(
        &doors[0],
        &["device", "run", "--config", &cfg, "--exec-log", &exec],
    );
    wait_until("the restarted door runs", &procs, || {
        procs.log(&doors[0]).contains("device running")
    })
    .await;

    let seq2 = send_alert(&dir, &sensors[0], "smoke in hall 2");
    assert!(seq2 > seq1, "sequence number reused: {seq1} then {seq2}");
    wait_until("both doors execute the second command", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() >= 2)
    })
    .await;

    // --- a replay of the first command, then a third alert ------------------
    spy.publish(command_topic.clone(), Bytes::from(first))
        .await
        .unwrap();
    spy.flush(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seq3 = send_alert(&dir, &sensors[0], "smoke in hall 3");
    assert!(seq3 > seq2, "sequence number reused: {seq2} then {seq3}");
    wait_until("both doors execute the third command", &procs, || {
        doors.iter().all(|d| executed(&dir, d).len() >= 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in &doors {
        let lines = executed(&dir, d);
        assert_eq!(lines.len(), 3, "{d} executed a replay: {lines:?}");
        assert!(lines.iter().all(|l| l.ends_with("payload=unlock")));
    }
    drop(procs);
    let _ = spy.disconnect(Duration::from_secs(2)).await;
}

/// The gateway and a door are killed with SIGKILL while alerts stream in,
/// then restarted. Every command on the wire has its own sequence number
/// (the gateway reserved them on disk before using them), the door that
/// stayed up executed each command once, and a replay of everything
/// captured is refused by both doors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_reuses_no_sequence_number_and_accepts_no_replay() {
    use sealcast_core::broadcast::peek_broadcast;

    const ALERTS: usize = 24;
    let mut d = Deployment::start().await;
    let (dir, sensor) = (d.dir.clone(), d.sensors[0].clone());
    let streamer = std::thread::spawn(move || {
        (0..ALERTS)
            .map(|i| {
                let seq = send_alert(&dir, &sensor, &format!("smoke {i}"));
                std::thread::sleep(Duration::from_millis(40));
                seq
            })
            .collect::<Vec<u64>>()
    });

    // Mid-stream: a few commands went out; kill the gateway and a door.
    let (door0, door1) = (d.doors[0].clone(), d.doors[1].clone());
    wait_until("the first commands executed", &d.procs, || {
        executed(&d.dir, &door1).len() >= 4
    })
    .await;
    d.procs.sigkill("agent");
    d.procs.sigkill(&door0);
    fs::rename(d.dir.join("agent.log"), d.dir.join("agent.log.1")).unwrap();
    d.procs
        .start("agent", &["agent", "serve", "--config", "agent.toml"]);
    wait_until("the restarted gateway runs", &d.procs, || {
        d.procs.log("agent").contains("agent running")
    })
    .await;
    d.restart_device(&door0, 1).await;

    let seqs = streamer.join().unwrap();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "the sensor reused a sequence number: {seqs:?}"
    );

    // Let the stream drain: the door that stayed up has executed every
    // distinct command captured, and nothing moves for a second.
    let mut commands: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut stable_since = Instant::now();
    let mut last = (0, 0);
    loop {
        while let Ok(c) = d.captured.try_recv() {
            if !commands.contains(&c) {
                commands.push(c);
            }
        }
        let now = (commands.len(), executed(&d.dir, &door1).len());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        if now.0 == now.1 && now.0 > 4 && stable_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not settle: {} commands captured, {door1} executed {}\n{}",
            now.0,
            now.1,
            d.procs.log("agent")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No (sender, epoch, sequence number) twice among distinct commands: a
    // reuse would mean two different ciphertexts under one AEAD nonce.
    let mut nonces: Vec<(Vec<u8>, u32, u64)> = commands
        .iter()
        .map(|c| {
            let h = peek_broadcast(c).unwrap();
            (h.sender_id.as_bytes().to_vec(), h.epoch.get(), h.seq.get())
        })
        .collect();
    let n = nonces.len();
    nonces.sort();
    nonces.dedup();
    assert_eq!(
        nonces.len(),
        n,
        "a sequence number was reused across the gateway's SIGKILL"
    );
    let before = (
        executed(&d.dir, &door0).len(),
        executed(&d.dir, &door1).len(),
    );
    assert!(
        before.0 <= commands.len(),
        "{door0} executed more commands ({}) than were sent ({})",
        before.0,
        commands.len()
    );

    // Replay everything captured. The door that stayed up has seen it all
    // and refuses it all. The restarted door may still take a command it
    // missed while it was down (authentic, and new to its window), but
    // never more than were sent; a second replay then changes nothing.
    let replay = |spy: MqttClient, topic: String, commands: Vec<Vec<u8>>| async move {
        for c in commands {
            spy.publish(topic.clone(), Bytes::from(c)).await.unwrap();
        }
        spy.flush(Duration::from_secs(10)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    replay(d.spy.clone(), d.command_topic.clone(), commands.clone()).await;
    let after = (
        executed(&d.dir, &door0).len(),
        executed(&d.dir, &door1).len(),
    );
    assert_eq!(after.1, before.1, "{door1} executed a replayed command");
    assert!(
        after.0 <= commands.len(),
        "{door0} executed {} commands of {} sent: a replay was accepted",
        after.0,
        commands.len()
    );
    replay(d.spy.clone(), d.command_topic.clone(), commands.clone()).await;
    let again = (
        executed(&d.dir, &door0).len(),
        executed(&d.dir, &door1).len(),
    );
    assert_eq!(again, after, "a door executed a command replayed twice");
    drop(d.procs);
    let _ = d.spy.disconnect(Duration::from_secs(2)).await;
}

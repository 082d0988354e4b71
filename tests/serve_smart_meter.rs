#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Smart metering as separate `sealcast` processes through a broker (the one
//! at `SEALCAST_MQTT_URL` when set, else an embedded one): a headend and a
//! DAP (`agent serve` with `[dap]`), meters sending with `device report`.
//! A forged report, a bit-flipped one and a replayed one, published directly,
//! are dropped at the DAP; the headend's readings file holds exactly the
//! genuine readings; a SIGKILLed and restarted headend refuses a replayed
//! batch; a DAP stopped with Ctrl-C and restarted refuses a replayed report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::report::{PairwiseKey, seal_report};
use sealcast_mqtt::{
    AgentChannel, Bytes, EmbeddedBroker, MqttClient, MqttConfig, TopicFilter, TopicScheme,
};

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
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
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

    fn logs(&self) -> String {
        let mut logs = String::new();
        for name in ["headend", "dap"] {
            logs.push_str(&format!("--- {name}\n{}\n", self.log(name)));
        }
        logs
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
            panic!("timed out waiting for {what}\n{}", procs.logs());
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

fn readings(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = fs::read_to_string(dir.join("readings.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn report(dir: &Path, meter: &str, reading: &str, count: u32) -> Vec<u64> {
    let out = sealcast(
        dir,
        &[
            "device",
            "report",
            "--config",
            &format!("{meter}.toml"),
            "--reading",
            reading,
            "--count",
            &count.to_string(),
        ],
    );
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix("seq="))
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Sums `key=N` over the DAP's "reports dropped" log lines.
fn dap_dropped(log: &str, key: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("reports dropped"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

async fn exit_on_ctrl_c(procs: &mut Procs, name: &str) {
    let pid = procs.child(name).id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(s) = procs.child(name).try_wait().unwrap() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not stop on Ctrl-C"));
    assert!(status.success(), "{name} exit status {status:?}");
    procs.children.retain(|(n, _)| n != name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smart_metering_as_separate_processes() {
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let run = format!("t{}-{nanos}", std::process::id());
    let name = |n: &str| format!("{run}-{n}");
    let (headend, dap) = (name("headend"), name("dap"));
    let meters = [name("meter-1"), name("meter-2"), name("meter-3")];
    for id in [&headend, &dap].into_iter().chain(&meters) {
        sealcast(&dir, &["keygen", "--id", id]);
    }
    fs::create_dir(dir.join("meters")).unwrap();
    for m in &meters {
        fs::copy(
            dir.join(format!("{m}.pub")),
            dir.join("meters").join(format!("{m}.pub")),
        )
        .unwrap();
    }

    // --- configs -------------------------------------------------------------
    fs::write(
        dir.join("headend.toml"),
        format!(
            "broker = \"{url}\"\ntopic_prefix = \"{run}\"\nkey = \"{headend}.key\"\n\
             state_dir = \"headend-state\"\nmeters_dir = \"meters\"\n\n\
             [[dap]]\nid = \"{dap}\"\npublic_key = \"{dap}.pub\"\n"
        ),
    )
    .unwrap();
    fs::write(
        dir.join("agent.toml"),
        format!(
            "broker = \"{url}\"\ntopic_prefix = \"{run}\"\nkey = \"{dap}.key\"\n\
             state_dir = \"dap-state\"\n\n[dap]\ngroup = \"street-7\"\nheadend = \"{headend}\"\n\
             headend_public_key = \"{headend}.pub\"\nmeters_dir = \"meters\"\n\
             batch_size = 16\nmax_batch_delay_ms = 100\n"
        ),
    )
    .unwrap();
    for m in &meters {
        fs::write(
            dir.join(format!("{m}.toml")),
            format!(
                "broker = \"{url}\"\ntopic_prefix = \"{run}\"\nkey = \"{m}.key\"\n\
                 state_dir = \"{m}-state\"\ndap = \"{dap}\"\nheadend_public_key = \"{headend}.pub\"\n"
            ),
        )
        .unwrap();
    }

    // --- a raw MQTT client capturing reports and batches -----------------------
    let topics = TopicScheme::with_prefix(&run).unwrap();
    let dap_id = EntityId::new(&dap).unwrap();
    let report_topic = topics.agent(&dap_id, AgentChannel::Report);
    let batch_topic = topics.agent(&dap_id, AgentChannel::Batch);
    let (spy, mut inbox) = MqttClient::connect(
        MqttConfig::from_url(&url, name("spy"))
            .unwrap()
            .with_subscription(TopicFilter::new(&report_topic).unwrap())
            .with_subscription(TopicFilter::new(&batch_topic).unwrap()),
    )
    .unwrap();
    spy.wait_subscribed(Duration::from_secs(10)).await.unwrap();
    let (tx, mut captured) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some(m) = inbox.next_message().await {
            let _ = tx.send((m.topic.clone(), m.payload.to_vec()));
            let _ = m.ack.ack().await;
        }
    });

    // --- the services ----------------------------------------------------------
    let mut procs = Procs {
        dir: dir.clone(),
        children: Vec::new(),
    };
    procs.start(
        "headend",
        &[
            "headend",
            "serve",
            "--config",
            "headend.toml",
            "--readings",
            "readings.log",
        ],
    );
    wait_until("the headend runs", &procs, || {
        procs.log("headend").contains("headend service running")
    })
    .await;
    procs.start("dap", &["agent", "serve", "--config", "agent.toml"]);
    wait_until("the headend accepts the DAP's announcement", &procs, || {
        procs.log("headend").contains("DAP announcement accepted")
    })
    .await;
    assert!(
        procs.log("headend").contains("meters=3"),
        "{}",
        procs.logs()
    );

    // --- genuine readings ------------------------------------------------------
    let seqs = report(&dir, &meters[0], "m1 {n} kWh", 3);
    assert_eq!(seqs, vec![0, 1, 2]);
    assert_eq!(report(&dir, &meters[1], "m2 0 kWh", 1), vec![0]);
    assert_eq!(report(&dir, &meters[2], "m3 0 kWh", 1), vec![0]);
    // One-shot runs resume above their reservation: no number reused.
    let next = report(&dir, &meters[0], "m1 3 kWh", 1);
    assert!(next[0] > 2, "sequence number reused: {next:?}");
    let mut expected: Vec<String> = Vec::new();
    for (m, seq, text) in [
        (&meters[0], 0, "m1 0 kWh"),
        (&meters[0], 1, "m1 1 kWh"),
        (&meters[0], 2, "m1 2 kWh"),
        (&meters[1], 0, "m2 0 kWh"),
        (&meters[2], 0, "m3 0 kWh"),
        (&meters[0], next[0], "m1 3 kWh"),
    ] {
        expected.push(format!("meter={m} seq={seq} dap={dap} reading={text}"));
    }
    expected.sort();
    wait_until("the headend has six readings", &procs, || {
        readings(&dir).len() >= 6
    })
    .await;
    assert_eq!(readings(&dir), expected, "{}", procs.logs());

    // What the spy saw: the meters' reports and the DAP's batches.
    let mut reports = Vec::new();
    let mut batches = Vec::new();
    while let Ok((topic, bytes)) = captured.try_recv() {
        if topic == report_topic {
            reports.push(bytes);
        } else {
            batches.push(bytes);
        }
    }
    assert_eq!(reports.len(), 6);
    assert!(!batches.is_empty());

    // --- a forgery, a bit flip and a replay, published directly ----------------
    let headend_pub =
        PublicCredential::from_cose_key_set(&fs::read(dir.join(format!("{headend}.pub"))).unwrap())
            .unwrap();
    let victim = EntityId::new(&meters[1]).unwrap();
    let mut rng = sealcast_core::testrng::TestRng::new(7);
    let forger = EntityCredential::generate(victim.clone(), &mut rng);
    let pairwise = PairwiseKey::derive(
        AeadAlg::A128Gcm,
        forger.agreement_secret(),
        headend_pub.agreement_key(),
        &victim,
        headend_pub.id(),
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged = seal_report(
        &victim,
        forger.signing_key(),
        headend_pub.id(),
        &pairwise,
        SeqNum::new(500).unwrap(),
        UnixMillis::new(now),
        b"0 kWh",
    )
    .unwrap();
    let mut flipped = reports[3].clone();
    let n = flipped.len();
    flipped[n - 10] ^= 0x01;
    for bytes in [forged, flipped, reports[0].clone()] {
        spy.publish(report_topic.clone(), Bytes::from(bytes))
            .await
            .unwrap();
    }
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until("the DAP drops the three", &procs, || {
        let log = procs.log("dap");
        dap_dropped(&log, "forged") + dap_dropped(&log, "replayed") >= 3
    })
    .await;
    let log = procs.log("dap");
    assert_eq!(dap_dropped(&log, "forged"), 2, "{log}");
    assert_eq!(dap_dropped(&log, "replayed"), 1, "{log}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readings(&dir), expected, "{}", procs.logs());

    // --- SIGKILL the headend, restart it, replay a batch -----------------------
    procs.sigkill("headend");
    procs.start(
        "headend",
        &[
            "headend",
            "serve",
            "--config",
            "headend.toml",
            "--readings",
            "readings.log",
        ],
    );
    wait_until(
        "the restarted headend gets a fresh announcement",
        &procs,
        || {
            procs
                .log("headend")
                .matches("DAP announcement accepted")
                .count()
                >= 2
        },
    )
    .await;
    for b in &batches {
        spy.publish(batch_topic.clone(), Bytes::from(b.clone()))
            .await
            .unwrap();
    }
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until(
        "the restarted headend refuses the replayed batches",
        &procs,
        || procs.log("headend").matches("batch refused").count() >= batches.len(),
    )
    .await;
    assert_eq!(readings(&dir), expected, "{}", procs.logs());
    // And still takes new readings.
    let s = report(&dir, &meters[2], "m3 1 kWh", 1);
    expected.push(format!(
        "meter={} seq={} dap={dap} reading=m3 1 kWh",
        meters[2], s[0]
    ));
    expected.sort();
    wait_until("a reading after the restart", &procs, || {
        readings(&dir).len() >= 7
    })
    .await;
    assert_eq!(readings(&dir), expected, "{}", procs.logs());

    // --- Ctrl-C the DAP, restart it, replay a report ---------------------------
    exit_on_ctrl_c(&mut procs, "dap").await;
    assert!(procs.log("dap").contains("agent stopped"));
    let dropped_before = dap_dropped(&procs.log("dap"), "replayed");
    procs.start("dap", &["agent", "serve", "--config", "agent.toml"]);
    wait_until("the restarted DAP announces again", &procs, || {
        procs
            .log("headend")
            .matches("DAP announcement accepted")
            .count()
            >= 3
    })
    .await;
    spy.publish(report_topic.clone(), Bytes::from(reports[4].clone()))
        .await
        .unwrap();
    spy.flush(Duration::from_secs(10)).await.unwrap();
    wait_until("the restarted DAP drops the replay", &procs, || {
        dap_dropped(&procs.log("dap"), "replayed") > dropped_before
    })
    .await;
    let s = report(&dir, &meters[1], "m2 1 kWh", 1);
    expected.push(format!(
        "meter={} seq={} dap={dap} reading=m2 1 kWh",
        meters[1], s[0]
    ));
    expected.sort();
    wait_until("a reading after the DAP restart", &procs, || {
        readings(&dir).len() >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readings(&dir), expected, "{}", procs.logs());
    exit_on_ctrl_c(&mut procs, "headend").await;
    drop(procs);
    let _ = spy.disconnect(Duration::from_secs(2)).await;
    if std::env::var_os("SEALCAST_KEEP_TEST_DIR").is_some() {
        eprintln!("kept {}", tmp.keep().display());
    }
}

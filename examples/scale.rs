//! The 100 000-member scenario of issue #12, through the services: the
//! `sealcast` binary runs the manager as a separate process, the CLI
//! administers it over its control socket, exactly as an operator would.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example scale -- --members 100000
//! cargo run --release --example scale -- --members 100000 --postgres postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Options: `--members N` (default 100 000), `--postgres URL` (a schema of
//! its own, dropped afterwards; default SQLite), `--broker URL` (default:
//! an embedded broker in this process). The members stay offline, as a
//! fleet being provisioned would. Prints, per step, the wall time of the
//! command and the manager's resident memory after it (and its peak), then
//! the size of the eviction's group broadcast and the audit log; the last
//! line is the same as JSON. Figures go to docs/PERFORMANCE.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_mqtt::{EmbeddedBroker, GroupChannel, MqttClient, MqttConfig, TopicScheme};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Options {
    members: usize,
    postgres: Option<String>,
    broker: Option<String>,
}

fn options() -> Res<Options> {
    let mut o = Options {
        members: 100_000,
        postgres: None,
        broker: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--members" => o.members = value()?.parse()?,
            "--postgres" => o.postgres = Some(value()?),
            "--broker" => o.broker = Some(value()?),
            _ => return Err(format!("unknown option {a}; see the file's header").into()),
        }
    }
    if o.members < 2 {
        return Err("--members must be at least 2".into());
    }
    Ok(o)
}

/// `target/<profile>/sealcast`, beside this example's directory.
fn binary() -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let bin = dir.join("sealcast");
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --release` first",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// Resident and peak memory of `pid`, in MiB (`VmRSS`, `VmHWM`).
fn memory(pid: u32) -> (f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Run {
    bin: PathBuf,
    dir: PathBuf,
    manager: Option<Child>,
    rows: Vec<(String, f64, f64, f64)>,
}

impl Run {
    fn sealcast(&self, args: &[&str]) -> Res<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(&self.dir)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "sealcast {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one admin command, timed, and records the manager's memory.
    fn step(&mut self, what: &str, args: &[&str]) -> Res<String> {
        let started = Instant::now();
        let out = self.sealcast(args)?;
        let secs = started.elapsed().as_secs_f64();
        self.record(what, secs);
        Ok(out)
    }

    fn record(&mut self, what: &str, secs: f64) {
        let (rss, peak) = self.manager.as_ref().map_or((0.0, 0.0), |m| memory(m.id()));
        println!("{what:<34} {secs:>9.2} s   RSS {rss:>7.1} MiB   peak {peak:>7.1} MiB");
        self.rows.push((what.to_owned(), secs, rss, peak));
    }

    fn start_manager(&mut self) -> Res<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("manager.log"))?;
        let child = Command::new(&self.bin)
            .args(["manager", "serve", "--config", "manager.toml"])
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.manager = Some(child);
        Ok(())
    }

    /// Waits until the control socket answers `group list`; returns the
    /// time that took.
    fn wait_for_manager(&self) -> Res<f64> {
        let started = Instant::now();
        loop {
            if self
                .sealcast(&["group", "list", "--config", "manager.toml"])
                .is_ok()
            {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err("the manager did not answer within 10 minutes".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_manager(&mut self) {
        if let Some(mut m) = self.manager.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill_manager();
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let o = options()?;
    let bin = binary()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let n = o.members;
    let backend = if o.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!("scale: {n} members, {backend}, manager as a separate process");

    // --- broker --------------------------------------------------------------
    let _embedded;
    let url = match &o.broker {
        Some(u) => u.clone(),
        None => {
            let b = tokio::task::spawn_blocking(EmbeddedBroker::start).await??;
            let u = b.url();
            _embedded = b;
            u
        }
    };
    let prefix = format!("scale{}", std::process::id());

    // --- keys: the manager's and gateway's by the CLI, the fleet's here -----
    let mut run = Run {
        bin,
        dir: dir.clone(),
        manager: None,
        rows: Vec::new(),
    };
    run.sealcast(&["keygen", "--id", "manager"])?;
    run.sealcast(&["keygen", "--id", "gw"])?;
    let started = Instant::now();
    fs::create_dir(dir.join("fleet"))?;
    let mut rng = {
        use rand::SeedableRng as _;
        rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)?
    };
    let mut members = String::from("gw sender\n");
    for i in 0..n {
        let id = format!("dev-{i:06}");
        let c = EntityCredential::generate(EntityId::new(&id)?, &mut rng);
        fs::write(
            dir.join("fleet").join(format!("{id}.pub")),
            c.public().to_cose_key_set()?,
        )?;
        members.push_str(&format!("{id} receiver\n"));
    }
    fs::write(dir.join("members.txt"), members)?;
    println!(
        "{:<34} {:>9.2} s   (not the manager's work)",
        format!("generate {n} device keys"),
        started.elapsed().as_secs_f64()
    );

    let schema = format!("scale_{}", std::process::id());
    let store = match &o.postgres {
        Some(pg) => format!("postgres = \"{pg}\"\npostgres_schema = \"{schema}\"\n"),
        None => String::new(),
    };
    fs::write(
        dir.join("manager.toml"),
        format!(
            "broker = \"{url}\"\ntopic_prefix = \"{prefix}\"\nkey = \"manager.key\"\n\
             state_dir = \"state\"\nkek = \"manager.kek\"\n{store}"
        ),
    )?;

    // A listener on the group's rekey channel: the eviction's broadcast.
    let topics = TopicScheme::with_prefix(&prefix)?;
    let group = GroupId::new(b"fleet")?;
    let rekey_topic = topics.group(&group, GroupChannel::Rekey);
    let (listener, mut heard) = MqttClient::connect(
        MqttConfig::from_url(&url, format!("{prefix}:scale-listener"))?
            .with_subscription(topics.group_filter(&group)),
    )?;
    listener.wait_subscribed(Duration::from_secs(10)).await?;

    run.start_manager()?;
    let first = run.wait_for_manager()?;
    run.record("manager start (empty store)", first);
    let cfg = ["--config", "manager.toml"];
    let with = |sub: &str, rest: &[&str]| -> Vec<String> {
        let mut v = vec!["group".to_owned(), sub.to_owned()];
        v.extend(cfg.iter().map(|s| s.to_string()));
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let a = with("enrol", &["--public-key", "gw.pub", "--kind", "agent"]);
    run.step("enrol the gateway", &strs(&a))?;
    let a = with("enrol", &["--public-key-dir", "fleet", "--kind", "device"]);
    run.step(&format!("enrol {n} devices"), &strs(&a))?;
    let a = with("create", &["--group", "fleet", "--scheme", "tree"]);
    run.step("create a tree group", &strs(&a))?;
    let a = with(
        "add",
        &["--group", "fleet", "--members-file", "members.txt"],
    );
    run.step(&format!("add {n} members"), &strs(&a))?;
    let a = with("show", &["--group", "fleet"]);
    run.step("group show (summary)", &strs(&a))?;
    let a = with("show", &["--group", "fleet", "--json"]);
    let json = run.step("group show --json (every member)", &strs(&a))?;
    drop(json);
    let a = with("list", &[]);
    run.step("group list", &strs(&a))?;

    // Drain what the add published, then evict one and catch its broadcast.
    while tokio::time::timeout(Duration::from_millis(200), heard.next_message())
        .await
        .is_ok_and(|m| m.is_some())
    {}
    let a = with("evict", &["--group", "fleet", "--member", "dev-000042"]);
    run.step("evict one member", &strs(&a))?;
    let mut eviction_bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), heard.next_message()).await {
            Ok(Some(m)) if m.topic == rekey_topic => {
                eviction_bytes = m.payload.len();
                break;
            }
            Ok(None) => break,
            _ => {}
        }
    }
    let a = with("rekey", &["--group", "fleet"]);
    run.step("rekey", &strs(&a))?;
    let a = with("list", &[]);
    run.step("group list (re-sends running)", &strs(&a))?;

    // --- restart after SIGKILL --------------------------------------------
    run.kill_manager();
    run.start_manager()?;
    let restart = run.wait_for_manager()?;
    run.record("restart after SIGKILL, first answer", restart);
    std::thread::sleep(Duration::from_secs(5));
    run.record("5 s later (re-sends running)", 0.0);
    let a = with("list", &[]);
    run.step("group list", &strs(&a))?;

    let audit = fs::metadata(dir.join("state/audit.jsonl")).map_or(0, |m| m.len());
    println!("eviction broadcast: {eviction_bytes} bytes; audit log: {audit} bytes");
    let rows: Vec<String> = run
        .rows
        .iter()
        .map(|(w, s, r, p)| {
            format!(
                "{{\"step\":{},\"seconds\":{s:.3},\"rss_mib\":{r:.1},\"peak_mib\":{p:.1}}}",
                serde_json::Value::from(w.as_str())
            )
        })
        .collect();
    println!(
        "{{\"members\":{n},\"backend\":\"{backend}\",\"eviction_bytes\":{eviction_bytes},\"audit_bytes\":{audit},\"steps\":[{}]}}",
        rows.join(",")
    );
    run.kill_manager();
    let _ = listener.disconnect(Duration::from_secs(1)).await;
    if let Some(pg) = &o.postgres {
        let (pg, schema) = (pg.clone(), schema.clone());
        std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&pg, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
            }
        })
        .join()
        .map_err(|_| "dropping the schema panicked")?;
    }
    Ok(())
}

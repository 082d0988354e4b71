#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]
//! The harness shared by the multi-process tests (`serve`, `serve_coap`,
//! `serve_smart_meter`, `group_admin`): the `sealcast` binary run once or as
//! long-lived processes with their logs in the test directory, bounded waits
//! that dump those logs when they time out, the broker to talk through, key
//! generation, run-unique names and a raw MQTT client capturing traffic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sealcast_mqtt::{EmbeddedBroker, MqttClient, MqttConfig, TopicFilter};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long any awaited condition may take.
pub const WAIT: Duration = Duration::from_secs(60);
/// How often an awaited condition is checked.
const POLL: Duration = Duration::from_millis(100);
/// How long a process may take to exit on Ctrl-C, and how often it is checked.
const STOP_WAIT: Duration = Duration::from_secs(20);
const STOP_POLL: Duration = Duration::from_millis(50);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sealcast")
}

/// `sealcast` processes running in `dir`, each logging (stderr, at
/// `RUST_LOG=info`) to `<name>.log` there. Kills every child on drop (also
/// on panic).
pub struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    pub fn new(dir: &Path) -> Self {
        Procs {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    /// Starts `name`, its log started afresh.
    pub fn start(&mut self, name: &str, args: &[&str]) {
        let log = fs::File::create(self.log_path(name)).unwrap();
        self.spawn(name, args, log);
    }

    /// Starts `name`, its log continued after what an earlier run wrote.
    pub fn start_appending(&mut self, name: &str, args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap();
        self.spawn(name, args, log);
    }

    fn spawn(&mut self, name: &str, args: &[&str], log: fs::File) {
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

    /// Starts the device runtime `name` (config `<name>.toml`), its executed
    /// commands logged to `<name>.exec`.
    pub fn start_device(&mut self, name: &str) {
        let cfg = format!("{name}.toml");
        let exec = format!("{name}.exec");
        self.start(
            name,
            &["device", "run", "--config", &cfg, "--exec-log", &exec],
        );
    }

    /// Starts the device runtime `name` again after moving its log aside to
    /// `<name>.log.<round>`.
    pub fn restart_device(&mut self, name: &str, round: usize) {
        self.move_log_aside(name, round);
        self.start_device(name);
    }

    /// Renames `<name>.log` to `<name>.log.<round>`.
    pub fn move_log_aside(&self, name: &str, round: usize) {
        fs::rename(
            self.log_path(name),
            self.dir.join(format!("{name}.log.{round}")),
        )
        .unwrap();
    }

    pub fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    /// Kills `name` with SIGKILL and forgets it.
    pub fn sigkill(&mut self, name: &str) {
        let child = self.child(name);
        child.kill().unwrap();
        child.wait().unwrap();
        self.children.retain(|(n, _)| n != name);
    }

    /// Ctrl-C to `name`, and its exit status within 20 s; it is then
    /// forgotten. Blocks the calling thread.
    pub fn interrupt(&mut self, name: &str) -> ExitStatus {
        let deadline = self.ctrl_c(name);
        loop {
            if let Some(status) = self.exited(name, deadline) {
                return status;
            }
            std::thread::sleep(STOP_POLL);
        }
    }

    /// [`Procs::interrupt`] for async tests.
    pub async fn interrupt_async(&mut self, name: &str) -> ExitStatus {
        let deadline = self.ctrl_c(name);
        loop {
            if let Some(status) = self.exited(name, deadline) {
                return status;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// Ctrl-C to `name`, which must exit successfully within 20 s.
    pub async fn exit_on_ctrl_c(&mut self, name: &str) {
        let status = self.interrupt_async(name).await;
        assert!(status.success(), "{name} exit status {status:?}");
    }

    /// Sends SIGINT to `name`; returns by when it must have exited.
    fn ctrl_c(&mut self, name: &str) -> Instant {
        self.signal(name, "-INT")
    }

    /// Sends `signal` (`-INT`, `-TERM`) to `name`; returns by when it must
    /// have exited.
    fn signal(&mut self, name: &str, signal: &str) -> Instant {
        let pid = self.child(name).id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        Instant::now() + STOP_WAIT
    }

    /// SIGHUP to `name` (it re-reads what its config names and runs on).
    pub fn hangup(&mut self, name: &str) {
        self.signal(name, "-HUP");
    }

    /// SIGTERM to `name`, and its exit status within 20 s; it is then
    /// forgotten.
    pub async fn terminate_async(&mut self, name: &str) -> ExitStatus {
        let deadline = self.signal(name, "-TERM");
        loop {
            if let Some(status) = self.exited(name, deadline) {
                return status;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// The pid of the running child `name`.
    pub fn pid(&mut self, name: &str) -> u32 {
        self.child(name).id()
    }

    /// The exit status of `name` (then forgotten) once it has exited;
    /// panics past `deadline`.
    fn exited(&mut self, name: &str, deadline: Instant) -> Option<ExitStatus> {
        if let Some(status) = self.child(name).try_wait().unwrap() {
            self.children.retain(|(n, _)| n != name);
            return Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not stop on its signal\n{}",
            self.logs()
        );
        None
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// The logs of every running child, each under a `--- <name>` line.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for (name, _) in &self.children {
            logs.push_str(&format!("--- {name}\n{}\n", self.log(name)));
        }
        logs
    }

    /// How often `name` has logged that it installed key material.
    pub fn installed(&self, name: &str) -> usize {
        self.log(name).matches("key material installed").count()
    }

    /// Panics, with every log, when `deadline` has passed.
    fn give_up_after(&self, deadline: Instant, what: &str) {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", self.logs());
        }
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

/// Waits (at most [`WAIT`]) until `done`, else panics with every log.
pub async fn wait_until(what: &str, procs: &Procs, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        procs.give_up_after(deadline, what);
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] blocking the calling thread.
pub fn wait_until_blocking(what: &str, procs: &Procs, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        procs.give_up_after(deadline, what);
        std::thread::sleep(POLL);
    }
}

/// Runs `sealcast args` in `dir` to completion.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs `sealcast args` in `dir`, which must exit within `limit`: killed
/// and a panic otherwise (a regression that makes it run on must fail the
/// test, not hang it).
pub fn run_bounded(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sealcast {args:?} still ran after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed; returns its standard output.
pub fn sealcast(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "sealcast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its one-line error.
pub fn sealcast_fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(!out.status.success(), "sealcast {args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// `sealcast keygen --id <id>` in `dir` for each id.
pub fn keygen<S: AsRef<str>>(dir: &Path, ids: impl IntoIterator<Item = S>) {
    for id in ids {
        sealcast(dir, &["keygen", "--id", id.as_ref()]);
    }
}

/// The lines of `<name>.exec` in `dir`: the commands a device executed.
pub fn executed(dir: &Path, name: &str) -> Vec<String> {
    fs::read_to_string(dir.join(format!("{name}.exec")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `sealcast group show --config <config> --group <group> --json`: the
/// running manager's view of a group (epoch, `member_list` with each
/// member's acknowledged epoch as `held`).
pub fn group_show_json(dir: &Path, config: &str, group: &str) -> serde_json::Value {
    let out = sealcast(
        dir,
        &[
            "group", "show", "--config", config, "--group", group, "--json",
        ],
    );
    serde_json::from_str(&out).unwrap()
}

/// The `seq=` of each line of a door's exec log, in order.
pub fn executed_seqs(dir: &Path, door: &str) -> Vec<u64> {
    executed(dir, door)
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seq="))
                .unwrap_or_else(|| panic!("no seq in {l:?}"))
                .parse()
                .unwrap()
        })
        .collect()
}

/// `sealcast device send` of an alert from `sensor` to `fire-sensors`;
/// returns its standard output.
pub fn alert(dir: &Path, sensor: &str, text: &str) -> String {
    alert_waiting(dir, sensor, text, 10)
}

/// [`alert`] waiting up to `wait_s` seconds for the manager's answer.
pub fn alert_waiting(dir: &Path, sensor: &str, text: &str, wait_s: u64) -> String {
    let out = alert_run(dir, sensor, text, wait_s);
    assert!(
        out.status.success(),
        "device send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sealcast device send` of an alert from `sensor` to `fire-sensors`,
/// waiting up to `wait_s` seconds for the manager: its whole output,
/// success or not.
pub fn alert_run(dir: &Path, sensor: &str, text: &str, wait_s: u64) -> Output {
    run(
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
            "--wait",
            &wait_s.to_string(),
        ],
    )
}

/// [`alert`], returning the sequence number the alert was sent with.
pub fn send_alert(dir: &Path, sensor: &str, text: &str) -> u64 {
    let out = alert(dir, sensor, text);
    let seq = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("seq="))
        .unwrap_or_else(|| panic!("no seq in {out:?}"));
    seq.parse().unwrap()
}

/// A prefix unique to this run, for topics and MQTT client ids:
/// `<tag><pid>-<nanoseconds>`.
pub fn run_prefix(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}{}-{nanos}", std::process::id())
}

/// A test's temporary directory, the broker to talk through and a prefix
/// unique to the run.
pub struct MqttRun {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// The embedded broker (running while it lives), unless
    /// `SEALCAST_MQTT_URL` names one.
    pub broker: Option<EmbeddedBroker>,
    /// The broker's URL: `SEALCAST_MQTT_URL` when set, else the embedded one's.
    pub url: String,
    /// [`run_prefix`] of the tag.
    pub run: String,
}

impl MqttRun {
    pub async fn start(tag: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (broker, url) = match std::env::var("SEALCAST_MQTT_URL") {
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
        MqttRun {
            tmp,
            dir,
            broker,
            url,
            run: run_prefix(tag),
        }
    }
}

/// A raw MQTT client subscribed to `filters`; every message it receives on
/// a topic that `keep` accepts comes out of the channel as (topic, payload).
pub async fn spy(
    url: &str,
    client_id: String,
    filters: impl IntoIterator<Item = TopicFilter>,
    keep: impl Fn(&str) -> bool + Send + 'static,
) -> (MqttClient, UnboundedReceiver<(String, Vec<u8>)>) {
    spy_session(url, client_id, filters, keep, false).await
}

/// [`spy`] with a persistent session (`persistent`): the broker keeps
/// what it routes to the spy while the spy, or the broker, restarts.
pub async fn spy_session(
    url: &str,
    client_id: String,
    filters: impl IntoIterator<Item = TopicFilter>,
    keep: impl Fn(&str) -> bool + Send + 'static,
    persistent: bool,
) -> (MqttClient, UnboundedReceiver<(String, Vec<u8>)>) {
    let config = filters.into_iter().fold(
        MqttConfig::from_url(url, client_id)
            .unwrap()
            .with_persistent_session(persistent),
        MqttConfig::with_subscription,
    );
    let (spy, mut inbox) = MqttClient::connect(config).unwrap();
    spy.wait_subscribed(Duration::from_secs(10)).await.unwrap();
    let (tx, captured) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = inbox.next_message().await {
            if keep(&m.topic) {
                let _ = tx.send((m.topic.clone(), m.payload.to_vec()));
            }
            let _ = m.ack.ack().await;
        }
    });
    (spy, captured)
}

/// A manager config's first lines: `head` (its `broker = …` or `transport =
/// …` line), then its topic prefix, key, state directory and key-encryption
/// key.
pub fn manager_config(head: &str, run: &str, manager: &str) -> String {
    format!(
        "{head}topic_prefix = \"{run}\"\nkey = \"{manager}.key\"\n\
         state_dir = \"manager-state\"\nkek = \"manager.kek\"\n"
    )
}

/// A field node's config (agent or device) `id` under `manager`: `head`
/// (its `broker = …` or `transport = …` line), then its topic prefix, key,
/// the manager's public key and its state directory.
pub fn node_config(head: &str, run: &str, id: &str, manager: &str) -> String {
    format!(
        "{head}topic_prefix = \"{run}\"\nkey = \"{id}.key\"\n\
         manager_public_key = \"{manager}.pub\"\nstate_dir = \"{id}-state\"\n"
    )
}

/// The fire-safety tables of a manager config: `gateway` enrolled as the
/// agent, every sensor and door as a device behind it; the sensors send to
/// the gateway in `fire-sensors` (p2p), the gateway to the doors in
/// `fire-doors` (tree).
pub fn fire_safety_tables<S: AsRef<str>>(gateway: &str, sensors: &[S], doors: &[S]) -> String {
    let mut m = format!(
        "\n[[enrol]]\nid = \"{gateway}\"\nkind = \"agent\"\npublic_key = \"{gateway}.pub\"\n"
    );
    for d in sensors.iter().chain(doors).map(AsRef::as_ref) {
        m.push_str(&format!(
            "\n[[enrol]]\nid = \"{d}\"\nkind = \"device\"\npublic_key = \"{d}.pub\"\nagent = \"{gateway}\"\n"
        ));
    }
    let group = |id: &str, scheme: &str, senders: &[&str], receivers: &[&str]| {
        let mut g = format!("\n[[group]]\nid = \"{id}\"\nscheme = \"{scheme}\"\nmembers = [\n");
        for (ids, role) in [(senders, "sender"), (receivers, "receiver")] {
            for m in ids {
                g.push_str(&format!("  {{ id = \"{m}\", role = \"{role}\" }},\n"));
            }
        }
        g.push_str("]\n");
        g
    };
    let sensors: Vec<&str> = sensors.iter().map(AsRef::as_ref).collect();
    let doors: Vec<&str> = doors.iter().map(AsRef::as_ref).collect();
    m.push_str(&group("fire-sensors", "p2p", &sensors, &[gateway]));
    m.push_str(&group("fire-doors", "tree", &[gateway], &doors));
    m
}

/// The agent's rule of the fire-safety deployment: an alert in
/// `fire-sensors` makes it command `unlock` to `fire-doors`.
pub const FIRE_RULE: &str = "\n[[rule]]\non_alert_from = \"fire-sensors\"\n\
                             then_command = \"fire-doors\"\npayload = \"unlock\"\n";

/// `relays_for = [...]` naming `ids`, for an agent config.
pub fn relays_for<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> String {
    let quoted: Vec<String> = ids
        .into_iter()
        .map(|id| format!("\"{}\"", id.as_ref()))
        .collect();
    format!("relays_for = [{}]\n", quoted.join(", "))
}

/// A Mosquitto a test starts itself, on a free port of 127.0.0.1, with its
/// configuration, log and persistence file in `dir`. Killed on drop.
pub struct Mosquitto {
    bin: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
}

impl Mosquitto {
    /// The mosquitto program, or `None` after a loud NOT RUN (a failure in
    /// CI) naming `test`.
    pub fn program(test: &str) -> Option<PathBuf> {
        sealcast_testkit::program(
            "mosquitto",
            "SEALCAST_MOSQUITTO_BIN",
            test,
            "mosquitto (Debian: apt-get install mosquitto)",
        )
    }

    /// A broker on a free port with anonymous access and no persistence.
    pub fn anonymous(bin: &Path, dir: &Path) -> Self {
        let port = Self::free_port();
        Self::start(
            bin,
            dir,
            port,
            "allow_anonymous true\npersistence false",
            &format!("listener {port} 127.0.0.1\n"),
        )
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A free TCP port on 127.0.0.1 (the kernel's pick).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Writes `mosquitto.conf` in `dir` — `settings`, logging to stderr,
    /// `user root` when run as root, and the listener section `listener`
    /// (which must start with `listener <port> 127.0.0.1`) — and starts the
    /// broker; returns once it accepts connections.
    pub fn start(bin: &Path, dir: &Path, port: u16, settings: &str, listener: &str) -> Self {
        let mut conf = format!("{settings}\nlog_dest stderr\n");
        if sealcast_testkit::running_as_root() {
            conf.push_str("user root\n");
        }
        conf.push_str(listener);
        let path = dir.join("mosquitto.conf");
        fs::write(&path, conf).unwrap();
        let mut m = Mosquitto {
            bin: bin.to_path_buf(),
            conf: path,
            child: None,
            dir: dir.to_path_buf(),
            port,
        };
        m.restart();
        m
    }

    /// Starts the broker (again) with the same configuration, its log
    /// appended; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mosquitto exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (Mosquitto writes its persistence file as it exits); returns
    /// once it has exited.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("mosquitto is not running");
        assert!(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + STOP_WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mosquitto ignores SIGTERM");
            std::thread::sleep(STOP_POLL);
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET path` on 127.0.0.1:port: (status line, body).
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// A free UDP port on 127.0.0.1 (the kernel's pick), for CoAP endpoints and
/// multicast groups.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The headend's `readings.log` in `dir`, sorted.
pub fn headend_readings(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = fs::read_to_string(dir.join("readings.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Starts `headend serve --config headend.toml --readings readings.log`,
/// its log continued across restarts.
pub fn start_headend(procs: &mut Procs) {
    procs.start_appending(
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
}

/// A report that claims to be `victim`'s reading numbered `seq`, encrypted
/// for the headend whose public key is `dir/<headend>.pub` but signed with
/// a forger's key: what a DAP must drop as forged.
pub fn forged_report(dir: &Path, headend: &str, victim: &str, seq: u64) -> Vec<u8> {
    use sealcast_core::credential::{EntityCredential, PublicCredential};
    use sealcast_core::crypto::AeadAlg;
    use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
    use sealcast_core::report::{PairwiseKey, seal_report};
    let headend_pub =
        PublicCredential::from_cose_key_set(&fs::read(dir.join(format!("{headend}.pub"))).unwrap())
            .unwrap();
    let victim = EntityId::new(victim).unwrap();
    let mut rng = sealcast_core::testrng::TestRng::new(seq);
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
    seal_report(
        &victim,
        forger.signing_key(),
        headend_pub.id(),
        &pairwise,
        SeqNum::new(seq).unwrap(),
        UnixMillis::new(now),
        b"0 kWh",
    )
    .unwrap()
}

/// Loopback CoAP endpoints for a set of entities and a multicast group of
/// their own (free ports, picked once).
pub struct CoapPlan {
    ids: Vec<String>,
    ports: Vec<u16>,
    /// The group's port (224.0.1.187).
    pub group_port: u16,
}

impl CoapPlan {
    /// Endpoints for `ids`.
    pub fn new<S: AsRef<str>>(ids: &[S]) -> Self {
        Self {
            ids: ids.iter().map(|s| s.as_ref().to_owned()).collect(),
            ports: ids.iter().map(|_| free_udp_port()).collect(),
            group_port: free_udp_port(),
        }
    }

    /// Where `id` listens.
    pub fn addr(&self, id: &str) -> String {
        let i = self.ids.iter().position(|x| x == id).unwrap();
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// The `[coap]` section of `id`: its endpoint, the group pinned to
    /// 127.0.0.1, and `peers`' endpoints.
    pub fn section(&self, id: &str, peers: &[&str]) -> String {
        let mut s = format!(
            "\n[coap]\nlisten = \"{}\"\ngroup = \"224.0.1.187:{}\"\nmulticast_interface = \"127.0.0.1\"\n",
            self.addr(id),
            self.group_port
        );
        for p in peers {
            s.push_str(&format!(
                "\n[[coap.endpoint]]\nid = \"{p}\"\naddress = \"{}\"\n",
                self.addr(p)
            ));
        }
        s
    }
}

/// `sealcast device report` for `meter` (its `<meter>.toml`), bounded.
pub fn device_report(dir: &Path, meter: &str, reading: &str, count: u32) -> Output {
    run_bounded(
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
        Duration::from_secs(120),
    )
}

/// The sequence numbers a successful `device report` printed.
pub fn report_seqs(out: &Output) -> Vec<u64> {
    assert!(
        out.status.success(),
        "device report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("seq="))
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The line the headend writes for `meter`'s reading `text` numbered `seq`
/// through `dap`.
pub fn reading_line(meter: &str, seq: u64, dap: &str, text: &str) -> String {
    format!("meter={meter} seq={seq} dap={dap} reading={text}")
}

/// `dir/meters` holding a copy of each meter's public key (`<m>.pub`), as
/// a headend's and a DAP's `meters_dir`.
pub fn meters_dir<S: AsRef<str>>(dir: &Path, meters: &[S]) {
    fs::create_dir(dir.join("meters")).unwrap();
    for m in meters.iter().map(AsRef::as_ref) {
        fs::copy(
            dir.join(format!("{m}.pub")),
            dir.join("meters").join(format!("{m}.pub")),
        )
        .unwrap();
    }
}

/// `device run` with `config` written to `dir/<file>`: refused before
/// anything starts, with `needle` in its error and no panic.
pub fn refused_before_start(dir: &Path, file: &str, config: &str, needle: &str) {
    fs::write(dir.join(file), config).unwrap();
    let out = run(dir, &["device", "run", "--config", file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{config}");
    assert!(err.contains(needle), "{config}\n→ {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Starts the fire-safety services of `dir` (agent.toml, `<device>.toml`,
/// manager.toml): the field nodes first — the manager delivers keys as soon
/// as it starts, and re-sends what is not acknowledged — then waits until
/// every key is installed.
pub fn start_fire_safety(procs: &mut Procs, sensor: &str, doors: [&str; 2]) {
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in [sensor, doors[0], doors[1]] {
        procs.start_device(d);
    }
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("every key installed", procs, || {
        procs.installed("agent") >= 2
            && [sensor, doors[0], doors[1]]
                .iter()
                .all(|d| procs.installed(d) >= 1)
    });
}

/// `send`s the first alert: both doors execute `unlock`, signed by
/// `gateway`, once.
pub fn first_alert_unlocks_both_doors(
    dir: &Path,
    procs: &Procs,
    gateway: &str,
    doors: [&str; 2],
    send: impl Fn(&str) -> String,
) {
    send("smoke in hall 1");
    wait_until_blocking("both doors unlock", procs, || {
        doors.iter().all(|d| !executed(dir, d).is_empty())
    });
    for d in doors {
        let lines = executed(dir, d);
        assert_eq!(lines.len(), 1, "{d}: {lines:?}");
        assert!(lines[0].contains(&format!("signer={gateway}")), "{lines:?}");
        assert!(lines[0].ends_with("payload=unlock"), "{lines:?}");
    }
}

/// SIGKILLs the first door and restarts it; the second alert's command then
/// runs at both doors, and nothing twice.
pub fn sigkilled_door_runs_the_next_command(
    dir: &Path,
    procs: &mut Procs,
    doors: [&str; 2],
    send: impl Fn(&str) -> String,
) {
    procs.sigkill(doors[0]);
    procs.restart_device(doors[0], 1);
    wait_until_blocking("the restarted door runs", procs, || {
        procs.log(doors[0]).contains("device running")
    });
    send("smoke in hall 2");
    wait_until_blocking("both doors execute the second command", procs, || {
        doors.iter().all(|d| executed(dir, d).len() >= 2)
    });
    std::thread::sleep(Duration::from_millis(500));
    for d in doors {
        assert_eq!(executed(dir, d).len(), 2, "{d}: {:?}", executed(dir, d));
    }
}

/// `sealcast node <args…> --config manager.toml` in `dir`: its output.
pub fn node_cmd(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["node"];
    all.extend_from_slice(args);
    all.extend(["--config", "manager.toml"]);
    sealcast(dir, &all)
}

/// Remote transmission control on a running fire-safety deployment whose
/// sensor runtime is stopped and whose doors executed `done` commands:
/// the gateway's commands to the doors are stopped (acknowledged), so an
/// alert is verified but commands nobody; resumed, the next alert unlocks
/// both doors. The sensor's alerts are stopped while it is off: its next
/// one-shot send learns the order first (relayed by the gateway) and sends
/// nothing; resumed, the next send goes through. Returns the doors'
/// command count afterwards.
pub fn transmission_control_stops_and_resumes(
    dir: &Path,
    procs: &Procs,
    sensor: &str,
    gateway: &str,
    doors: [&str; 2],
    done: usize,
) -> usize {
    let send = |text: &str| alert_run(dir, sensor, text, 20);
    let out = node_cmd(
        dir,
        &[
            "deactivate",
            "--id",
            gateway,
            "--kind",
            "command:fire-doors",
            "--wait",
            "30",
        ],
    );
    assert!(out.contains("acked    yes"), "{out}");
    let suppressed = procs.log("agent").matches("rule not fired").count();
    assert!(send("smoke while the gateway is stopped").status.success());
    wait_until_blocking("the gateway suppresses its rule", procs, || {
        procs.log("agent").matches("rule not fired").count() > suppressed
    });
    let out = node_cmd(dir, &["activate", "--id", gateway, "--wait", "30"]);
    assert!(out.contains("acked    yes"), "{out}");
    assert!(send("smoke after the gateway resumed").status.success());
    wait_until_blocking("both doors execute the next command", procs, || {
        doors.iter().all(|d| executed(dir, d).len() > done)
    });

    let out = node_cmd(dir, &["deactivate", "--id", sensor]);
    assert!(out.contains("stopped  all"), "{out}");
    let not_sent = send("smoke while the sensor is stopped");
    let stderr = String::from_utf8_lossy(&not_sent.stderr);
    assert!(
        !not_sent.status.success()
            && stderr.contains("stopped by the manager's transmission order"),
        "{stderr}\n{}",
        procs.logs()
    );
    let shown = node_cmd(dir, &["show", "--id", sensor]);
    assert!(shown.contains("acked    yes"), "{shown}");
    node_cmd(dir, &["activate", "--id", sensor]);
    assert!(send("smoke after the sensor resumed").status.success());
    wait_until_blocking("both doors execute once more", procs, || {
        doors.iter().all(|d| executed(dir, d).len() > done + 1)
    });
    std::thread::sleep(Duration::from_millis(500));
    for d in doors {
        assert_eq!(
            executed(dir, d).len(),
            done + 2,
            "{d}: {:?}",
            executed(dir, d)
        );
    }
    done + 2
}

/// Authorization status on a running fire-safety deployment whose doors
/// executed `done` commands: the gateway suspended, both doors apply the
/// manager's signed status list (relayed by the gateway) and refuse its
/// next command; reinstated, the next alert unlocks both doors again.
/// Returns the doors' command count afterwards.
pub fn suspension_is_enforced_and_lifted(
    dir: &Path,
    procs: &Procs,
    sensor: &str,
    gateway: &str,
    doors: [&str; 2],
    done: usize,
) -> usize {
    let send = |text: &str| alert_run(dir, sensor, text, 20);
    let applied = |d: &str| procs.log(d).matches("status list applied").count();
    let before: Vec<usize> = doors.iter().map(|d| applied(d)).collect();
    let out = node_cmd(dir, &["suspend", "--id", gateway, "--reason", "test"]);
    assert!(out.contains("is suspended"), "{out}");
    wait_until_blocking("both doors apply the status list", procs, || {
        doors.iter().zip(&before).all(|(d, b)| applied(d) > *b)
    });
    assert!(
        send("smoke while the gateway is suspended")
            .status
            .success()
    );
    wait_until_blocking("both doors refuse the suspended gateway", procs, || {
        doors
            .iter()
            .all(|d| procs.log(d).contains("is suspended by the manager"))
    });
    let out = node_cmd(dir, &["reinstate", "--id", gateway]);
    assert!(out.contains("in good standing"), "{out}");
    wait_until_blocking("both doors apply the lifted list", procs, || {
        doors.iter().zip(&before).all(|(d, b)| applied(d) > *b + 1)
    });
    assert!(send("smoke after reinstatement").status.success());
    wait_until_blocking("both doors execute the next command", procs, || {
        doors.iter().all(|d| executed(dir, d).len() > done)
    });
    std::thread::sleep(Duration::from_millis(500));
    for d in doors {
        assert_eq!(
            executed(dir, d).len(),
            done + 1,
            "{d}: {:?}",
            executed(dir, d)
        );
    }
    done + 1
}

/// `sealcast audit verify <log>` in `dir` succeeds; returns its output.
/// The log's records (all segments) must name none of `secrets` (payloads,
/// readings): metadata only.
pub fn audit_intact(dir: &Path, log: &str, secrets: &[&str]) -> String {
    let out = sealcast(dir, &["audit", "verify", log]);
    assert!(out.contains("is intact"), "{out}");
    for segment in sealcast_store::audit_segments(dir.join(log)) {
        let text = fs::read_to_string(&segment).unwrap();
        for s in secrets {
            assert!(
                !text.contains(s),
                "{} holds {s:?}:\n{text}",
                segment.display()
            );
        }
    }
    out
}

/// Every record of an audit log and its rotated segments, as text.
pub fn audit_text(dir: &Path, log: &str) -> String {
    sealcast_store::audit_segments(dir.join(log))
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect()
}

/// Edits one record of `log` (a byte of its detail) and checks that
/// `sealcast audit verify` now fails naming it; then restores the file.
pub fn audit_tamper_is_found(dir: &Path, log: &str) {
    let path = dir.join(log);
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"detail\":\"", "\"detail\":\"X", 1);
    assert_ne!(edited, text);
    fs::write(&path, &edited).unwrap();
    let out = run(dir, &["audit", "verify", log]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("NOT intact") && err.contains("edited"),
        "{err}"
    );
    fs::write(&path, text).unwrap();
}

/// A genuine report of `meter` (its own key from `<meter>.key`) for
/// `headend`, sequence number `seq`, stamped `at_ms` (a meter with a wrong
/// clock, or a report held back).
pub fn report_stamped(dir: &Path, headend: &str, meter: &str, seq: u64, at_ms: u64) -> Vec<u8> {
    use sealcast_core::credential::{EntityCredential, PublicCredential};
    use sealcast_core::crypto::AeadAlg;
    use sealcast_core::ids::{SeqNum, UnixMillis};
    use sealcast_core::report::{PairwiseKey, seal_report};
    let headend_pub =
        PublicCredential::from_cose_key_set(&fs::read(dir.join(format!("{headend}.pub"))).unwrap())
            .unwrap();
    let me =
        EntityCredential::from_cose_key_set(&fs::read(dir.join(format!("{meter}.key"))).unwrap())
            .unwrap();
    let pairwise = PairwiseKey::derive(
        AeadAlg::A128Gcm,
        me.agreement_secret(),
        headend_pub.agreement_key(),
        me.id(),
        headend_pub.id(),
    )
    .unwrap();
    seal_report(
        me.id(),
        me.signing_key(),
        headend_pub.id(),
        &pairwise,
        SeqNum::new(seq).unwrap(),
        UnixMillis::new(at_ms),
        b"1 kWh",
    )
    .unwrap()
}

/// A meter configuration command forged under `headend`'s name for the
/// meter group `meters`: a group key and a signing key of the forger's
/// (returned, to forge more with), `settings`, and sequence number 1000 —
/// one the meters' windows have not seen, so a meter refuses it for its
/// key, not as a replay — sealed for `target`.
pub fn forged_meter_command(
    headend: &str,
    target: &str,
    settings: &[(&str, &str)],
    seed: u64,
) -> (sealcast_core::credential::EntityCredential, Vec<u8>) {
    let mut rng = sealcast_core::testrng::TestRng::new(seed);
    let mallory = sealcast_core::credential::EntityCredential::generate(
        sealcast_core::ids::EntityId::new(headend).unwrap(),
        &mut rng,
    );
    let group = sealcast_core::ids::GroupId::new("meters").unwrap();
    let state = sealcast_metering::downlink::HeadendDownlink::create(group, &mallory, &mut rng)
        .unwrap()
        .with_config(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .unwrap();
    let now = sealcast_core::ids::UnixMillis::new(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let seq = sealcast_core::ids::SeqNum::new(1000).unwrap();
    let command = state.seal_command(&mallory, seq, now, target).unwrap();
    (mallory, command)
}

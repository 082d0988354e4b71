#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Manager, agent and devices as separate `sealcast` processes over CoAP:
//! key deliveries, acks and pulls by confirmable unicast between the
//! endpoints of their configs, group channels by multicast to a group
//! pinned to 127.0.0.1. The fire-safety flow, then a door killed with
//! SIGKILL and restarted on the same endpoint: it executes the next command
//! and nothing twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(60);

/// Kills every child on drop (also on panic).
struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn start(&mut self, name: &str, args: &[&str]) {
        let log = fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sealcast"))
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

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            if Instant::now() > deadline {
                let mut logs = String::new();
                for (name, _) in &self.children {
                    logs.push_str(&format!("--- {name}\n{}\n", self.log(name)));
                }
                panic!("timed out waiting for {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
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

fn sealcast(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sealcast"))
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

/// A free UDP port on 127.0.0.1 (the kernel's pick).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn fire_safety_as_separate_processes_over_coap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let run = format!("c{}-{nanos}", std::process::id());
    let (manager, gateway, sensor) = ("manager", "gateway", "sensor-1");
    let doors = ["door-1", "door-2"];
    let all = [manager, gateway, sensor, doors[0], doors[1]];
    for id in all {
        sealcast(&dir, &["keygen", "--id", id]);
    }
    let port: Vec<u16> = all.iter().map(|_| free_port()).collect();
    let addr = |id: &str| {
        let i = all.iter().position(|x| *x == id).unwrap();
        format!("127.0.0.1:{}", port[i])
    };
    let group = format!("224.0.1.187:{}", free_port());
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
    let mut m = format!(
        "transport = \"coap\"\ntopic_prefix = \"{run}\"\nkey = \"{manager}.key\"\n\
         state_dir = \"manager-state\"\nkek = \"manager.kek\"\n{}\
         \n[[enrol]]\nid = \"{gateway}\"\nkind = \"agent\"\npublic_key = \"{gateway}.pub\"\n",
        coap(manager, &[gateway])
    );
    for d in [sensor, doors[0], doors[1]] {
        m.push_str(&format!(
            "\n[[enrol]]\nid = \"{d}\"\nkind = \"device\"\npublic_key = \"{d}.pub\"\nagent = \"{gateway}\"\n"
        ));
    }
    m.push_str(&format!(
        "\n[[group]]\nid = \"fire-sensors\"\nscheme = \"p2p\"\nmembers = [\n  \
         {{ id = \"{sensor}\", role = \"sender\" }},\n  {{ id = \"{gateway}\", role = \"receiver\" }},\n]\n\
         \n[[group]]\nid = \"fire-doors\"\nscheme = \"tree\"\nmembers = [\n  \
         {{ id = \"{gateway}\", role = \"sender\" }},\n  {{ id = \"{}\", role = \"receiver\" }},\n  \
         {{ id = \"{}\", role = \"receiver\" }},\n]\n",
        doors[0], doors[1]
    ));
    fs::write(dir.join("manager.toml"), m).unwrap();
    let node = |id: &str| {
        format!(
            "transport = \"coap\"\ntopic_prefix = \"{run}\"\nkey = \"{id}.key\"\n\
             manager_public_key = \"{manager}.pub\"\nstate_dir = \"{id}-state\"\n"
        )
    };
    fs::write(
        dir.join("agent.toml"),
        format!(
            "{}relays_for = [\"{sensor}\", \"{}\", \"{}\"]\n{}\
             \n[[rule]]\non_alert_from = \"fire-sensors\"\nthen_command = \"fire-doors\"\npayload = \"unlock\"\n",
            node(gateway),
            doors[0],
            doors[1],
            coap(gateway, &[manager, sensor, doors[0], doors[1]])
        ),
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
    let mut procs = Procs {
        dir: dir.clone(),
        children: Vec::new(),
    };
    // Field nodes first: the manager delivers keys as soon as it starts, and
    // re-sends what is not acknowledged.
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in [sensor, doors[0], doors[1]] {
        let cfg = format!("{d}.toml");
        let exec = format!("{d}.exec");
        procs.start(d, &["device", "run", "--config", &cfg, "--exec-log", &exec]);
    }
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    let installed = |p: &Procs, n: &str| p.log(n).matches("key material installed").count();
    procs.wait_until("every key installed", || {
        installed(&procs, "agent") >= 2
            && [sensor, doors[0], doors[1]]
                .iter()
                .all(|d| installed(&procs, d) >= 1)
    });
    assert!(procs.log("manager").contains("transport=CoAP"));

    // The sensor stops (Ctrl-C); its one-shot sends use its state file.
    let pid = procs.child(sensor).id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while procs.child(sensor).try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the sensor did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    procs.children.retain(|(n, _)| n != sensor);
    let send = |text: &str| {
        sealcast(
            &dir,
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
        )
    };

    // --- alert (multicast) → unlock (multicast) at both doors --------------
    send("smoke in hall 1");
    procs.wait_until("both doors unlock", || {
        doors.iter().all(|d| !executed(&dir, d).is_empty())
    });
    for d in doors {
        let lines = executed(&dir, d);
        assert_eq!(lines.len(), 1, "{d}: {lines:?}");
        assert!(lines[0].contains(&format!("signer={gateway}")), "{lines:?}");
        assert!(lines[0].ends_with("payload=unlock"), "{lines:?}");
    }

    // --- SIGKILL a door, restart it on the same endpoint --------------------
    {
        let child = procs.child(doors[0]);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    procs.children.retain(|(n, _)| n != doors[0]);
    fs::rename(
        dir.join(format!("{}.log", doors[0])),
        dir.join(format!("{}.log.1", doors[0])),
    )
    .unwrap();
    let cfg = format!("{}.toml", doors[0]);
    let exec = format!("{}.exec", doors[0]);
    procs.start(
        doors[0],
        &["device", "run", "--config", &cfg, "--exec-log", &exec],
    );
    procs.wait_until("the restarted door runs", || {
        procs.log(doors[0]).contains("device running")
    });
    send("smoke in hall 2");
    procs.wait_until("both doors execute the second command", || {
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
    sealcast(dir, &["keygen", "--id", "door-9"]);
    sealcast(dir, &["keygen", "--id", "manager"]);
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
        let out = Command::new(env!("CARGO_BIN_EXE_sealcast"))
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

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A door whose state directory fills up or turns read-only (issue #11,
//! item 5). It must execute nothing it cannot record — and it used to
//! acknowledge such a command anyway, so the command was gone for good, and
//! log a second, misleading "can never be opened" warning. Now it logs one
//! clear line, holds the commands unacknowledged, executes them once the
//! disk recovers; and when it is killed meanwhile the broker redelivers
//! them to the restarted door. The state directory is a small tmpfs the
//! test mounts, so this needs root (CI runs as root); elsewhere a NOT RUN
//! banner says so.

mod common;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    FIRE_RULE, MqttRun, Procs, executed_seqs, fire_safety_tables, keygen, manager_config,
    node_config, relays_for, send_alert, wait_until,
};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Lays a read-only bind mount of the directory over it: whatever opens
    /// a path in it from now on gets EROFS, even as root. (A remount of the
    /// tmpfs itself is refused while the door holds its lock file open.)
    fn read_only(&self) {
        for args in [vec!["--bind", "", ""], vec!["-o", "remount,bind,ro", ""]] {
            let mut cmd = Command::new("mount");
            for a in args {
                if a.is_empty() {
                    cmd.arg(&self.0);
                } else {
                    cmd.arg(a);
                }
            }
            assert!(cmd.status().unwrap().success(), "{cmd:?}");
        }
    }

    /// Takes the read-only bind mount away again.
    fn writable(&self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot unmount the read-only bind mount");
    }

    /// Fills the file system to the last byte with `filler`.
    fn fill(&self) {
        let mut f = fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Twice: the read-only bind mount may still lie over the tmpfs.
        for _ in 0..2 {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_or_read_only_disk_holds_commands_until_it_recovers() {
    let test = "a_full_or_read_only_disk_holds_commands_until_it_recovers";
    if !sealcast_testkit::running_as_root() {
        sealcast_testkit::not_run(test, "it mounts a small tmpfs, which needs root");
        return;
    }
    let t = MqttRun::start("disk").await;
    let (dir, url, run) = (t.dir.clone(), t.url.clone(), t.run.clone());
    let name = |n: &str| format!("{run}-{n}");
    let (manager, gateway, sensor, door) = (
        name("manager"),
        name("gateway"),
        name("sensor"),
        name("door"),
    );
    keygen(&dir, [&manager, &gateway, &sensor, &door]);
    let head = format!("broker = \"{url}\"\n");
    fs::write(
        dir.join("manager.toml"),
        manager_config(&head, &run, &manager) + &fire_safety_tables(&gateway, &[&sensor], &[&door]),
    )
    .unwrap();
    let node = |id: &str| node_config(&head, &run, id, &manager);
    fs::write(
        dir.join("agent.toml"),
        node(&gateway) + &relays_for([&sensor, &door]) + FIRE_RULE,
    )
    .unwrap();
    fs::write(dir.join(format!("{sensor}.toml")), node(&sensor)).unwrap();
    // The door's metrics endpoint counts its bursts (the last phase).
    let metrics_port = common::Mosquitto::free_port();
    fs::write(
        dir.join(format!("{door}.toml")),
        format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n") + &node(&door),
    )
    .unwrap();
    let disk = Tmpfs::mount(&dir.join(format!("{door}-state")), "256k");

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    procs.start_device(&sensor);
    procs.start_device(&door);
    wait_until("every key installed", &procs, || {
        procs.installed("agent") >= 2
            && procs.installed(&sensor) >= 1
            && procs.installed(&door) >= 1
    })
    .await;
    procs.exit_on_ctrl_c(&sensor).await;
    send_alert(&dir, &sensor, "smoke 1");
    wait_until("the door executes", &procs, || {
        executed_seqs(&dir, &door).len() == 1
    })
    .await;

    // --- the disk fills: two commands held, one warning ------------------------
    disk.fill();
    send_alert(&dir, &sensor, "smoke 2");
    send_alert(&dir, &sensor, "smoke 3");
    wait_until("the door says its disk is full", &procs, || {
        procs.log(&door).contains("state file not written")
    })
    .await;
    // Both commands have reached the door (the gateway fired twice).
    wait_until("the gateway fired three rules", &procs, || {
        procs.log("agent").matches("rule fired").count() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        executed_seqs(&dir, &door).len(),
        1,
        "executed without saving"
    );
    let log = procs.log(&door);
    assert_eq!(
        log.matches("state file not written").count(),
        1,
        "one warning per fault:\n{log}"
    );
    assert!(
        log.contains("No space left on device") || log.contains("os error 28"),
        "the cause is not named:\n{log}"
    );
    assert!(
        !log.contains("can never be opened"),
        "the misleading warning is back:\n{log}"
    );

    // --- space again: both execute, once --------------------------------------
    disk.free();
    wait_until("the held commands execute", &procs, || {
        executed_seqs(&dir, &door).len() == 3
    })
    .await;
    assert!(procs.log(&door).contains("state file written again"));

    // --- read-only, and the door killed meanwhile: the broker redelivers -------
    disk.read_only();
    send_alert(&dir, &sensor, "smoke 4");
    wait_until("the door says it cannot write", &procs, || {
        procs.log(&door).matches("state file not written").count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        executed_seqs(&dir, &door).len(),
        3,
        "executed without saving"
    );
    assert!(
        procs.log(&door).contains("Read-only file system")
            || procs.log(&door).contains("os error 30")
    );
    procs.sigkill(&door);
    disk.writable();
    procs.restart_device(&door, 1);
    wait_until("the redelivered command executes", &procs, || {
        executed_seqs(&dir, &door).len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // --- a burst on a full disk (issue #16): the door catches up on queued
    // commands as one burst, cannot save its windows, holds them all
    // unexecuted, and executes each once when space returns -----------------
    let pid = procs.pid(&door).to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    disk.fill();
    const QUEUED: usize = 6;
    for i in 0..QUEUED {
        send_alert(
            &dir,
            &sensor,
            &format!("smoke while the door is stopped {i}"),
        );
    }
    wait_until("the gateway fired for the queued alerts", &procs, || {
        procs.log("agent").matches("rule fired").count() >= 4 + QUEUED
    })
    .await;
    signal("-CONT");
    wait_until("the restarted door says its disk is full", &procs, || {
        procs.log(&door).contains("state file not written")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        executed_seqs(&dir, &door).len(),
        4,
        "a burst executed without saving"
    );
    let metrics = common::http_get(metrics_port, "/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sealcast_bursts_total") && !l.ends_with(" 0")),
        "the queued commands were not opened as a burst:\n{metrics}"
    );
    disk.free();
    wait_until("the held burst executes", &procs, || {
        executed_seqs(&dir, &door).len() == 4 + QUEUED
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let all = executed_seqs(&dir, &door);
    let mut distinct = all.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), all.len(), "a command ran twice: {all:?}");
    // The door's audit log shares the faulty disk (appends may fail, and
    // are then skipped and counted, while the door goes on; on tmpfs they
    // often still fit the file's last page): what it holds after the
    // faults and the SIGKILL is one intact chain.
    common::audit_intact(&dir, &format!("{door}-state/audit.jsonl"), &["unlock"]);
    eprintln!(
        "disk faults: 9 commands held (2 on a full disk, 1 read-only across a SIGKILL, 6 of a burst on a full disk), each executed once after recovery: seqs {all:?}"
    );
    drop(procs);
    drop(disk);
}

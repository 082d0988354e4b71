#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `sealcast manager serve` on PostgreSQL, as a separate process with a
//! gateway, a sensor and a door (issue #12, item 1: the manager service
//! aborted on its first write, "Cannot start a runtime from within a
//! runtime", exit 134). Needs `SEALCAST_PG_URL` (CI sets it); without it the
//! test prints a NOT RUN banner.

mod common;

use std::fs;

use common::{
    FIRE_RULE, MqttRun, Procs, executed, fire_safety_tables, keygen, manager_config, node_config,
    relays_for, send_alert, wait_until,
};

/// A schema of its own, dropped afterwards.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    /// A schema named `<tag>_<pid>` on `SEALCAST_PG_URL`, or `None` after a
    /// NOT RUN banner (a failure in CI) naming `test`.
    fn require(test: &str, tag: &str) -> Option<Self> {
        let url = sealcast_testkit::require(
            "SEALCAST_PG_URL",
            test,
            "a PostgreSQL server (CI uses postgres://postgres@127.0.0.1:5432/test)",
        )?;
        Some(Schema {
            url,
            name: format!("{tag}_{}", std::process::id()),
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // On a thread of its own: the blocking client must not run on a
        // thread of the test's async runtime.
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manager_service_runs_on_postgres_and_stops_cleanly() {
    let test = "manager_service_runs_on_postgres_and_stops_cleanly";
    let Some(schema) = Schema::require(test, "serve_pg") else {
        return;
    };
    let url = schema.url.clone();
    let t = MqttRun::start("p").await;
    let (dir, broker, run) = (t.dir.clone(), &t.url, &t.run);
    let name = |n: &str| format!("{run}-{n}");
    let (manager, gateway) = (name("manager"), name("gateway"));
    let sensors = [name("sensor")];
    let doors = [name("door")];
    keygen(&dir, [&manager, &gateway, &sensors[0], &doors[0]]);
    let head = format!("broker = \"{broker}\"\n");
    fs::write(
        dir.join("manager.toml"),
        manager_config(&head, run, &manager)
            + &format!(
                "postgres = \"{url}\"\npostgres_schema = \"{}\"\n",
                schema.name
            )
            + &fire_safety_tables(&gateway, &sensors, &doors),
    )
    .unwrap();
    let node = |id: &str| node_config(&head, run, id, &manager);
    fs::write(
        dir.join("agent.toml"),
        node(&gateway) + &relays_for(sensors.iter().chain(&doors)) + FIRE_RULE,
    )
    .unwrap();
    for d in sensors.iter().chain(&doors) {
        fs::write(dir.join(format!("{d}.toml")), node(d)).unwrap();
    }

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    procs.start_device(&doors[0]);
    wait_until(
        "the gateway and the door installed their keys",
        &procs,
        || procs.installed("agent") >= 2 && procs.installed(&doors[0]) >= 1,
    )
    .await;
    send_alert(&dir, &sensors[0], "smoke");
    wait_until("the door unlocks", &procs, || {
        !executed(&dir, &doors[0]).is_empty()
    })
    .await;

    // A stop and a restart: the state comes back from PostgreSQL.
    let status = procs.terminate_async("manager").await;
    let log = procs.log("manager");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    procs.move_log_aside("manager", 1);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until("the restarted manager", &procs, || {
        procs.log("manager").contains("control socket listening")
    })
    .await;
    let shown = common::group_show_json(&dir, "manager.toml", "fire-doors");
    assert_eq!(shown["member_list"].as_array().unwrap().len(), 2, "{shown}");
    let out = common::sealcast(
        &dir,
        &[
            "group",
            "rekey",
            "--config",
            "manager.toml",
            "--group",
            "fire-doors",
        ],
    );
    assert!(out.contains("rekeyed fire-doors"), "{out}");
    wait_until("the door follows the rekey", &procs, || {
        procs.installed(&doors[0]) >= 2
    })
    .await;
    let status = procs.terminate_async("manager").await;
    assert!(status.success(), "{status:?}\n{}", procs.log("manager"));
    drop(procs);
}

/// The store's epoch and members of `group`, read from PostgreSQL itself.
fn store_view(url: &str, schema: &str, group: &str) -> (i64, Vec<String>) {
    let (url, schema, group) = (url.to_owned(), schema.to_owned(), group.to_owned());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let epoch: i64 = c
            .query_one(
                &format!("SELECT epoch FROM \"{schema}\".key_groups WHERE group_id = $1"),
                &[&group.as_bytes()],
            )
            .unwrap()
            .get(0);
        let mut members: Vec<String> = c
            .query(
                &format!("SELECT entity_id FROM \"{schema}\".members WHERE group_id = $1"),
                &[&group.as_bytes()],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        members.sort();
        (epoch, members)
    })
    .join()
    .unwrap()
}

fn ids(shown: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = shown["member_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// Issue #12, item 2 and the goal "two managers on one PostgreSQL": two
/// manager services of one identity on one schema, with distinct MQTT
/// client ids, take concurrent add/evict/rekey requests for a bounded
/// number of rounds; one is killed with SIGKILL in the middle of a request
/// and restarted. Every request either succeeds or is refused as a
/// conflict (never another error); afterwards both managers agree with the
/// store on each group's epoch and members, and after one more rekey every
/// member door — and no evicted one — executes the gateway's next command,
/// so every member holds the store's key for the final epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_managers_on_one_postgres_agree_with_the_store() {
    let test = "two_managers_on_one_postgres_agree_with_the_store";
    let Some(schema) = Schema::require(test, "serve_pg2") else {
        return;
    };
    let url = schema.url.clone();
    let t = MqttRun::start("p2").await;
    let (dir, broker, run) = (t.dir.clone(), &t.url, &t.run);
    let name = |n: &str| format!("{run}-{n}");
    let (manager, gateway, sensor) = (name("manager"), name("gateway"), name("sensor"));
    let doors: Vec<String> = (1..=4).map(|i| name(&format!("door-{i}"))).collect();
    keygen(
        &dir,
        [&manager, &gateway, &sensor].into_iter().chain(&doors),
    );
    let head = format!("broker = \"{broker}\"\n");
    let manager_toml = |tag: &str| {
        format!(
            "{head}topic_prefix = \"{run}\"\nkey = \"{manager}.key\"\n\
             state_dir = \"{tag}-state\"\nkek = \"manager.kek\"\n\
             mqtt_client_id = \"{run}:manager-{tag}\"\n\
             postgres = \"{url}\"\npostgres_schema = \"{}\"\n",
            schema.name
        ) + &fire_safety_tables(&gateway, &[&sensor], &doors.iter().collect::<Vec<_>>())
    };
    fs::write(dir.join("a.toml"), manager_toml("a")).unwrap();
    fs::write(dir.join("b.toml"), manager_toml("b")).unwrap();
    let node = |id: &str| node_config(&head, run, id, &manager);
    fs::write(
        dir.join("agent.toml"),
        node(&gateway) + &relays_for(std::iter::once(&sensor).chain(&doors)) + FIRE_RULE,
    )
    .unwrap();
    for d in std::iter::once(&sensor).chain(&doors) {
        fs::write(dir.join(format!("{d}.toml")), node(d)).unwrap();
    }

    let mut procs = Procs::new(&dir);
    procs.start("a", &["manager", "serve", "--config", "a.toml"]);
    wait_until("manager A", &procs, || {
        procs.log("a").contains("control socket listening")
    })
    .await;
    procs.start("b", &["manager", "serve", "--config", "b.toml"]);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    for d in std::iter::once(&sensor).chain(&doors) {
        procs.start_device(d);
    }
    wait_until("every key installed, manager B up", &procs, || {
        procs.log("b").contains("control socket listening")
            && procs.installed("agent") >= 2
            && std::iter::once(&sensor)
                .chain(&doors)
                .all(|d| procs.installed(d) >= 1)
    })
    .await;
    procs.exit_on_ctrl_c(&sensor).await;

    // --- concurrent requests on both managers ------------------------------------
    // door-3 toggles through A, door-4 through B, and both rekey now and
    // then: every round sends one request to each, at the same moment.
    let request = |config: &str, round: usize, door: &str| -> Vec<String> {
        let mut args = vec!["group".to_owned()];
        match round % 3 {
            0 => args.extend(["evict".into(), "--config".into(), config.into()]),
            1 => args.extend(["add".into(), "--config".into(), config.into()]),
            _ => args.extend(["rekey".into(), "--config".into(), config.into()]),
        }
        args.extend(["--group".into(), "fire-doors".into()]);
        match round % 3 {
            0 => args.extend(["--member".into(), door.to_owned()]),
            1 => args.extend(["--member".into(), format!("{door}:receiver")]),
            _ => {}
        }
        args
    };
    let spawn = |args: Vec<String>| {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run_bounded(&dir, &args, std::time::Duration::from_secs(60))
        })
    };
    let (mut ok, mut refused) = (0, 0);
    let mut judge = |out: std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            ok += 1;
        } else {
            // A conflict, or an add of a member already there / an evict of
            // one already gone after the other manager's change.
            assert!(
                err.contains("another manager")
                    || err.contains("already a member")
                    || err.contains("not a member"),
                "{what}: {err}"
            );
            refused += 1;
        }
    };
    let rounds = 12;
    for round in 0..rounds {
        let a = spawn(request("a.toml", round, &doors[2]));
        let b = spawn(request("b.toml", round + 1, &doors[3]));
        if round == rounds / 2 {
            // B dies in the middle of a request; A carries on alone.
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            procs.sigkill("b");
            judge(a.join().unwrap(), "A while B was killed");
            let _ = b.join();
            for r in 0..3 {
                judge(
                    spawn(request("a.toml", round + r, &doors[2]))
                        .join()
                        .unwrap(),
                    "A alone",
                );
            }
            procs.start_appending("b", &["manager", "serve", "--config", "b.toml"]);
            wait_until("manager B restarted", &procs, || {
                procs.log("b").matches("control socket listening").count() >= 2
            })
            .await;
            continue;
        }
        judge(a.join().unwrap(), "A");
        judge(b.join().unwrap(), "B");
    }
    assert!(ok >= rounds, "{ok} requests succeeded, {refused} refused");

    // --- one truth: the store's ----------------------------------------------------
    // A last rekey through A; B reloads when it sees members acknowledge
    // an epoch it does not know, or at its next request.
    common::sealcast(
        &dir,
        &[
            "group",
            "rekey",
            "--config",
            "a.toml",
            "--group",
            "fire-doors",
        ],
    );
    let (epoch, members) = store_view(&url, &schema.name, "fire-doors");
    for config in ["a.toml", "b.toml"] {
        let shown = common::group_show_json(&dir, config, "fire-doors");
        assert_eq!(
            shown["epoch"], epoch,
            "{config} disagrees with the store: {shown}"
        );
        assert_eq!(
            ids(&shown),
            members,
            "{config} disagrees with the store: {shown}"
        );
    }
    let member_doors: Vec<&String> = doors.iter().filter(|d| members.contains(d)).collect();
    wait_until("every member door holds the final epoch", &procs, || {
        let shown = common::group_show_json(&dir, "a.toml", "fire-doors");
        member_doors.iter().all(|d| {
            shown["member_list"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == d.as_str() && m["held"] == epoch)
        })
    })
    .await;
    let before: Vec<usize> = doors.iter().map(|d| executed(&dir, d).len()).collect();
    send_alert(&dir, &sensor, "smoke after the storm");
    wait_until("every member door unlocks", &procs, || {
        member_doors
            .iter()
            .all(|d| executed(&dir, d).len() > before[doors.iter().position(|x| x == *d).unwrap()])
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for (i, d) in doors.iter().enumerate() {
        if !members.contains(d) {
            assert_eq!(
                executed(&dir, d).len(),
                before[i],
                "{d} is not a member but executed the new command"
            );
        }
    }
    for n in ["a", "b"] {
        assert!(!procs.log(n).contains("panicked"), "{}", procs.log(n));
    }
    eprintln!(
        "two managers: {ok} requests succeeded, {refused} refused cleanly; final epoch {epoch}, members {members:?}"
    );

    // --- the status list: one version, one content, whichever manager -----------
    // Both suspend a door at the same moment: each request succeeds or is
    // refused as a conflict (then repeated); both end up listed, both
    // managers show the store's list, and each door applies a list naming
    // both (manager B sends what manager A changed, and the reverse).
    let suspend = |config: &str, door: &str| {
        let (dir, config, door) = (dir.clone(), config.to_owned(), door.to_owned());
        std::thread::spawn(move || {
            common::run_bounded(
                &dir,
                &["node", "suspend", "--config", &config, "--id", &door],
                std::time::Duration::from_secs(60),
            )
        })
    };
    let (a, b) = (suspend("a.toml", &doors[0]), suspend("b.toml", &doors[1]));
    for (out, config, door) in [
        (a.join().unwrap(), "a.toml", &doors[0]),
        (b.join().unwrap(), "b.toml", &doors[1]),
    ] {
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("another manager"), "{err}");
            common::sealcast(&dir, &["node", "suspend", "--config", config, "--id", door]);
        }
    }
    let listed = |config: &str| {
        let out = common::sealcast(&dir, &["node", "statuses", "--config", config, "--json"]);
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let (via_a, via_b) = (listed("a.toml"), listed("b.toml"));
    assert_eq!(via_a, via_b);
    assert_eq!(via_a["listed"].as_array().unwrap().len(), 2, "{via_a}");
    wait_until("the listed doors apply a list naming both", &procs, || {
        doors[..2].iter().all(|d| {
            procs
                .log(d)
                .lines()
                .any(|l| l.contains("status list applied") && l.contains("listed=2"))
        })
    })
    .await;
    drop(procs);
}

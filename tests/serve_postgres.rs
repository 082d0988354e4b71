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
    let Some(url) = sealcast_testkit::require(
        "SEALCAST_PG_URL",
        test,
        "a PostgreSQL server (CI uses postgres://postgres@127.0.0.1:5432/test)",
    ) else {
        return;
    };
    let schema = Schema {
        url: url.clone(),
        name: format!("serve_pg_{}", std::process::id()),
    };
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
    let shown = common::sealcast(
        &dir,
        &[
            "group",
            "show",
            "--config",
            "manager.toml",
            "--group",
            "fire-doors",
            "--json",
        ],
    );
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
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

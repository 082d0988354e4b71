#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `sealcast group …` against a running `sealcast manager serve`, as
//! separate processes through a broker (the one at `SEALCAST_MQTT_URL` when
//! set, else an embedded one): enrol a gateway and a door, create a group,
//! add both, run the door (`sealcast device run`) and see it install the
//! key; `group show` reports it on the current epoch; `group rekey` moves
//! the epoch and the door follows; `group evict` removes it. Then the
//! errors: an unknown group, a manager that is not running.

mod common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;

use common::{
    MqttRun, Procs, keygen, manager_config, run, sealcast, sealcast_fails, wait_until_blocking,
};
use serde_json::Value;

/// `group <sub> --config manager.toml <args…>`: a request to the manager.
fn admin<'a>(sub: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["group", sub, "--config", "manager.toml"];
    all.extend_from_slice(args);
    all
}

fn show(dir: &Path, group: &str) -> Value {
    let out = sealcast(dir, &admin("show", &["--group", group, "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn member<'a>(shown: &'a Value, id: &str) -> Option<&'a Value> {
    shown["member_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admin_against_a_running_manager() {
    let t = MqttRun::start("g").await;
    let (dir, url, run_id) = (t.dir.clone(), &t.url, &t.run);
    let name = |n: &str| format!("{run_id}-{n}");
    let (manager, gateway, door) = (name("manager"), name("gw"), name("door"));
    keygen(&dir, [&manager, &gateway, &door]);
    fs::write(
        dir.join("manager.toml"),
        manager_config(&format!("broker = \"{url}\"\n"), run_id, &manager),
    )
    .unwrap();
    fs::write(
        dir.join("door.toml"),
        format!(
            "broker = \"{url}\"\ntopic_prefix = \"{run_id}\"\nkey = \"{door}.key\"\n\
             manager_public_key = \"{manager}.pub\"\nstate_dir = \"door-state\"\n"
        ),
    )
    .unwrap();

    // Not running yet: the error says how to start it.
    let err = sealcast_fails(&dir, &admin("list", &[]));
    assert!(err.contains("no manager answers on"), "{err}");
    assert!(
        err.contains("sealcast manager serve --config manager.toml"),
        "{err}"
    );

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the control socket", &procs, || {
        procs.log("manager").contains("control socket listening")
    });
    let socket = dir.join("manager-state").join("manager.sock");
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "owner-only socket");
    assert_eq!(
        fs::metadata(dir.join("manager-state")).unwrap().mode() & 0o777,
        0o700
    );
    // A second manager on the same state directory refuses to start and
    // leaves the socket of the first alone.
    let second = run(&dir, &["manager", "serve", "--config", "manager.toml"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another manager (pid"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(socket.exists());

    // --- enrol, create, add ----------------------------------------------------
    let gw_pub = format!("{gateway}.pub");
    let door_pub = format!("{door}.pub");
    let enrol_door = || {
        sealcast(
            &dir,
            &admin(
                "enrol",
                &[
                    "--public-key",
                    &door_pub,
                    "--kind",
                    "device",
                    "--agent",
                    &gateway,
                ],
            ),
        )
    };
    let out = sealcast(
        &dir,
        &admin("enrol", &["--public-key", &gw_pub, "--kind", "agent"]),
    );
    assert!(
        out.contains("enrolled 1 entities (0 were enrolled already)"),
        "{out}"
    );
    let out = enrol_door();
    assert!(out.contains("enrolled 1 entities"), "{out}");
    // Again: unchanged, not an error.
    let out = enrol_door();
    assert!(
        out.contains("enrolled 0 entities (1 were enrolled already)"),
        "{out}"
    );
    // The same id as another kind is refused.
    let err = sealcast_fails(
        &dir,
        &admin("enrol", &["--public-key", &door_pub, "--kind", "agent"]),
    );
    assert!(err.contains("enrolled already"), "{err}");

    let out = sealcast(
        &dir,
        &admin("create", &["--group", "fire-doors", "--scheme", "tree"]),
    );
    assert!(
        out.contains("created group fire-doors (tree, A128GCM) at epoch 0"),
        "{out}"
    );
    let err = sealcast_fails(&dir, &admin("create", &["--group", "fire-doors"]));
    assert!(err.contains("exists already"), "{err}");
    let err = sealcast_fails(
        &dir,
        &admin(
            "add",
            &["--group", "fire-doors", "--member", "nobody:receiver"],
        ),
    );
    assert!(err.contains("enrol it first"), "{err}");

    let door_member = format!("{door}:receiver");
    let gw_member = format!("{gateway}:sender");
    let out = sealcast(
        &dir,
        &admin(
            "add",
            &[
                "--group",
                "fire-doors",
                "--member",
                &door_member,
                "--member",
                &gw_member,
            ],
        ),
    );
    assert!(
        out.contains("added 2 member(s) to fire-doors: now at epoch 1"),
        "{out}"
    );

    let list = sealcast(&dir, &admin("list", &[]));
    let row = list.lines().find(|l| l.starts_with("fire-doors")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..4], ["1", "tree", "2"], "{list}");

    // --- the door installs the key -------------------------------------------
    procs.start("door", &["device", "run", "--config", "door.toml"]);
    wait_until_blocking("the door installs epoch 1", &procs, || {
        procs.installed("door") >= 1
    });
    wait_until_blocking("the manager sees the door's ack", &procs, || {
        member(&show(&dir, "fire-doors"), &door).unwrap()["current"] == true
    });
    let shown = show(&dir, "fire-doors");
    assert_eq!(shown["epoch"], 1);
    assert_eq!(shown["scheme"], "tree");
    assert_eq!(shown["members"], 2);
    let d = member(&shown, &door).unwrap();
    assert_eq!(
        (d["role"].as_str(), d["held"].as_u64()),
        (Some("receiver"), Some(1))
    );
    let g = member(&shown, &gateway).unwrap();
    assert_eq!(g["role"], "sender");
    assert_eq!(g["current"], false, "the gateway is not running");
    assert!(g["sender_id"].is_string());
    // The readable table says the same (with --members); without it, the
    // counts by acknowledged epoch.
    let summary = sealcast(&dir, &admin("show", &["--group", "fire-doors"]));
    assert!(summary.contains("1 hold epoch 1"), "{summary}");
    assert!(!summary.contains(door.as_str()), "{summary}");
    let table = sealcast(
        &dir,
        &admin("show", &["--group", "fire-doors", "--members"]),
    );
    assert!(table.contains("epoch    1"), "{table}");
    let door_row = table
        .lines()
        .find(|l| l.starts_with(door.as_str()))
        .unwrap();
    assert!(door_row.ends_with("yes"), "{table}");
    assert!(door_row.contains("receiver"), "{table}");

    // --- rekey: the epoch moves, the door follows ---------------------------
    let out = sealcast(&dir, &admin("rekey", &["--group", "fire-doors"]));
    assert!(out.contains("rekeyed fire-doors: now at epoch 2"), "{out}");
    wait_until_blocking("the door installs epoch 2", &procs, || {
        procs.installed("door") >= 2
    });
    wait_until_blocking("the door holds epoch 2", &procs, || {
        let s = show(&dir, "fire-doors");
        s["epoch"] == 2 && member(&s, &door).unwrap()["held"] == 2
    });
    assert!(
        procs.log("door").contains("epoch=2"),
        "{}",
        procs.log("door")
    );

    // --- evict ------------------------------------------------------------------
    let out = sealcast(
        &dir,
        &admin("evict", &["--group", "fire-doors", "--member", &door]),
    );
    assert!(out.contains("now at epoch 3"), "{out}");
    let shown = show(&dir, "fire-doors");
    assert_eq!(shown["epoch"], 3);
    assert_eq!(shown["members"], 1);
    assert!(member(&shown, &door).is_none());
    let err = sealcast_fails(
        &dir,
        &admin("evict", &["--group", "fire-doors", "--member", &door]),
    );
    assert!(err.contains("not a member"), "{err}");
    // Issue #10 item 9: an eviction of a non-member said "enrol it first".
    assert!(
        err.contains("nothing to evict") && !err.contains("enrol it first"),
        "{err}"
    );

    // --- unknown group -------------------------------------------------------
    for args in [
        &admin("show", &["--group", "nope"]),
        &admin("rekey", &["--group", "nope"]),
        &admin("evict", &["--group", "nope", "--member", &door]),
    ] {
        let err = sealcast_fails(&dir, args);
        assert!(err.contains("no group \"nope\""), "{args:?}: {err}");
        assert!(err.contains("sealcast group list"), "{err}");
    }

    // The audit log recorded the rekey before it was published.
    let audit = fs::read_to_string(dir.join("manager-state").join("audit.jsonl")).unwrap();
    assert!(audit.contains("no membership change"), "{audit}");
    assert_eq!(audit.matches("\"enrol\"").count(), 2, "{audit}");

    // --- a clean stop removes the socket; then "not running" ----------------
    let status = procs.interrupt("manager");
    assert!(status.success(), "manager exit status {status:?}");
    assert!(!socket.exists(), "socket removed at shutdown");
    let err = sealcast_fails(&dir, &admin("list", &[]));
    assert!(err.contains("no manager answers on"), "{err}");
    drop(procs);

    // The offline form still works, and needs exactly one of --config / --out.
    let gk = sealcast(
        &dir,
        &[
            "group",
            "create",
            "--group",
            "offline",
            "--epoch",
            "1",
            "--signer",
            &format!("{gateway}={gateway}.pub:01"),
            "--out",
            "offline.gk",
        ],
    );
    assert!(gk.contains("wrote offline.gk"), "{gk}");
    let both = run(&dir, &admin("create", &["--out", "x.gk", "--group", "g"]));
    assert_eq!(both.status.code(), Some(2));
    let neither = run(&dir, &["group", "create", "--group", "g"]);
    assert_eq!(neither.status.code(), Some(2));
}

/// A socket file nobody answers on (a manager killed with SIGKILL) reads as
/// "not running", with the socket's path and how to start the manager.
#[test]
fn a_stale_socket_reads_as_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
    // Leave a socket nobody listens on.
    let stale = state.join("manager.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    keygen(dir, ["m"]);
    fs::write(
        dir.join("manager.toml"),
        "broker = \"mqtt://127.0.0.1:1\"\nkey = \"m.key\"\nstate_dir = \"state\"\nkek = \"m.kek\"\n",
    )
    .unwrap();
    let err = sealcast_fails(dir, &admin("list", &[]));
    assert!(err.contains("no manager answers on"), "{err}");
    assert!(err.contains("state/manager.sock"), "{err}");
}

/// Issue #10, item 4: two `manager serve` started at once on a fresh state
/// directory. Exactly one runs; the other exits 1 naming the running one's
/// pid and the directory (both used to generate a KEK, and one in three
/// times the store was sealed under a KEK that was then replaced: every
/// later start failed with "this KEK does not open the store"). The
/// survivor, stopped with SIGTERM and started again, opens its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_started_at_once_one_runs_and_the_store_stays_readable() {
    let t = MqttRun::start("m").await;
    let (dir, url, run_id) = (t.dir.clone(), &t.url, &t.run);
    let manager = format!("{run_id}-manager");
    keygen(&dir, [&manager]);
    fs::write(
        dir.join("manager.toml"),
        manager_config(&format!("broker = \"{url}\"\n"), run_id, &manager),
    )
    .unwrap();
    let serve = ["manager", "serve", "--config", "manager.toml"];
    for trial in 0..3 {
        let _ = fs::remove_dir_all(dir.join("manager-state"));
        let _ = fs::remove_file(dir.join("manager.kek"));
        let mut procs = Procs::new(&dir);
        procs.start("a", &serve);
        procs.start("b", &serve);
        wait_until_blocking("one manager running, the other refused", &procs, || {
            let (a, b) = (procs.log("a"), procs.log("b"));
            let running = |l: &str| l.contains("control socket listening");
            let refused = |l: &str| l.contains("another manager (pid");
            (running(&a) && refused(&b)) || (running(&b) && refused(&a))
        });
        let (winner, loser) = if procs.log("a").contains("control socket listening") {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let status = procs.interrupt(loser);
        assert_eq!(
            status.code(),
            Some(1),
            "trial {trial}: {}",
            procs.log(loser)
        );
        let winner_pid = procs.pid(winner);
        let refusal = procs.log(loser);
        assert!(
            refusal.contains(&format!("pid {winner_pid}")) && refusal.contains("manager-state"),
            "{refusal}"
        );
        let status = procs.terminate_async(winner).await;
        assert!(status.success(), "trial {trial}: {status:?}");
        procs.start("again", &serve);
        wait_until_blocking("the restarted manager", &procs, || {
            procs.log("again").contains("control socket listening")
        });
        assert!(!procs.log("again").contains("does not open"));
        assert!(procs.terminate_async("again").await.success());
    }
}

/// Issue #12, item 3: two managers on one store. Manager A advances a group
/// (adds door X); manager B, still holding the older epoch in memory, is
/// asked to add door Y. B used to act on its stale state: refused by the
/// store, it kept Y as a member in memory and, a few seconds later, re-sent
/// that non-member its own, never-stored key for the group. Now B reloads a
/// group whose stored epoch moved before it acts on it (and before each
/// re-send round), so its add lands on top of A's: X and Y are members, Y
/// holds the store's key, and both managers show the store's state. (The
/// refusal path that remains, for true races, rolls back too: the
/// two-manager test in `serve_postgres.rs` drives it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_behind_another_reloads_before_it_acts() {
    let t = MqttRun::start("r").await;
    let (dir, url, run_id) = (t.dir.clone(), &t.url, &t.run);
    // Manager A talks through a broker of its own: both managers have the
    // same id, and one broker would make them fight over the client id.
    let private = tokio::task::spawn_blocking(sealcast_mqtt::EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap();
    let name = |n: &str| format!("{run_id}-{n}");
    let (manager, gateway, x, y) = (name("manager"), name("gw"), name("x"), name("y"));
    keygen(&dir, [&manager, &gateway, &x, &y]);
    let shared = "sqlite = \"shared.db\"\n";
    let config = |broker: &str, state: &str| {
        manager_config(&format!("broker = \"{broker}\"\n"), run_id, &manager)
            .replace("manager-state", state)
            + shared
    };
    let mut tables = format!(
        "\n[[enrol]]\nid = \"{gateway}\"\nkind = \"agent\"\npublic_key = \"{gateway}.pub\"\n"
    );
    for d in [&x, &y] {
        tables.push_str(&format!(
            "\n[[enrol]]\nid = \"{d}\"\nkind = \"device\"\npublic_key = \"{d}.pub\"\nagent = \"{gateway}\"\n"
        ));
    }
    tables.push_str(&format!(
        "\n[[group]]\nid = \"doors\"\nscheme = \"tree\"\nmembers = [{{ id = \"{gateway}\", role = \"sender\" }}]\n"
    ));
    fs::write(
        dir.join("a.toml"),
        config(&private.url(), "a-state") + &tables,
    )
    .unwrap();
    fs::write(dir.join("b.toml"), config(url, "b-state")).unwrap();
    fs::write(
        dir.join("y.toml"),
        format!(
            "broker = \"{url}\"\ntopic_prefix = \"{run_id}\"\nkey = \"{y}.key\"\n\
             manager_public_key = \"{manager}.pub\"\nstate_dir = \"y-state\"\n"
        ),
    )
    .unwrap();

    let mut procs = Procs::new(&dir);
    procs.start("a", &["manager", "serve", "--config", "a.toml"]);
    wait_until_blocking("manager A", &procs, || {
        procs.log("a").contains("control socket listening")
    });
    procs.start("b", &["manager", "serve", "--config", "b.toml"]);
    procs.start("y", &["device", "run", "--config", "y.toml"]);
    wait_until_blocking("manager B and device Y", &procs, || {
        procs.log("b").contains("control socket listening")
            && procs.log("y").contains("device running")
    });

    let group = |cfg: &str, sub: &str, args: &[&str]| {
        let mut all = vec!["group", sub, "--config", cfg];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let x_member = format!("{x}:receiver");
    let args = group(
        "a.toml",
        "add",
        &["--group", "doors", "--member", &x_member],
    );
    sealcast(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let y_member = format!("{y}:receiver");
    let args = group(
        "b.toml",
        "add",
        &["--group", "doors", "--member", &y_member],
    );
    sealcast(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        procs.log("b").contains("reloaded it from the store"),
        "{}",
        procs.log("b")
    );
    // Y holds the key of the store's epoch; both managers show that epoch
    // and both members.
    wait_until_blocking("Y installs its key", &procs, || {
        procs.log("y").contains("key material installed")
    });
    let show = |cfg: &str| -> Value {
        let args = group(cfg, "show", &["--group", "doors", "--json"]);
        serde_json::from_str(&sealcast(
            &dir,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
        .unwrap()
    };
    let (a, b) = (show("a.toml"), show("b.toml"));
    assert_eq!(a["epoch"], b["epoch"], "{a}\n{b}");
    for shown in [&a, &b] {
        assert!(member(shown, &x).is_some(), "{shown}");
        assert!(member(shown, &y).is_some(), "{shown}");
    }
    drop(procs);
    drop(private);
}

/// Issue #12, item 6: `group show` of a large group. The answer used to be
/// one line with every member, and above ~10 900 members it exceeded the
/// 1 MiB line limit ("unreadable answer from the manager"). Now the summary
/// counts members by acknowledged epoch, and `--members`/`--json` fetch the
/// list in pages of 2 000. 2 500 members here: two pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_show_pages_through_a_large_group() {
    use sealcast_core::credential::EntityCredential;
    use sealcast_core::ids::EntityId;
    use sealcast_core::testrng::TestRng;

    const N: usize = 2_500;
    let t = MqttRun::start("s").await;
    let (dir, url, run_id) = (t.dir.clone(), &t.url, &t.run);
    let manager = format!("{run_id}-manager");
    keygen(&dir, [&manager]);
    fs::write(
        dir.join("manager.toml"),
        manager_config(&format!("broker = \"{url}\"\n"), run_id, &manager),
    )
    .unwrap();
    fs::create_dir(dir.join("meters")).unwrap();
    let mut rng = TestRng::new(3);
    let mut members = String::new();
    for i in 0..N {
        let id = format!("{run_id}-m{i:05}");
        let c = EntityCredential::generate(EntityId::new(&id).unwrap(), &mut rng);
        fs::write(
            dir.join("meters").join(format!("{id}.pub")),
            c.public().to_cose_key_set().unwrap(),
        )
        .unwrap();
        members.push_str(&format!("{id} receiver\n"));
    }
    fs::write(dir.join("members.txt"), members).unwrap();
    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the control socket", &procs, || {
        procs.log("manager").contains("control socket listening")
    });
    sealcast(
        &dir,
        &admin("enrol", &["--public-key-dir", "meters", "--kind", "device"]),
    );
    sealcast(
        &dir,
        &admin("create", &["--group", "meters", "--scheme", "tree"]),
    );
    sealcast(
        &dir,
        &admin(
            "add",
            &["--group", "meters", "--members-file", "members.txt"],
        ),
    );
    let summary = sealcast(&dir, &admin("show", &["--group", "meters"]));
    assert!(summary.contains(&format!("members  {N}")), "{summary}");
    assert!(
        summary.contains(&format!("{N} hold no epoch yet")),
        "{summary}"
    );
    let shown = show(&dir, "meters");
    let list = shown["member_list"].as_array().unwrap();
    assert_eq!(list.len(), N);
    assert!(
        list.windows(2)
            .all(|w| w[0]["id"].as_str() < w[1]["id"].as_str())
    );
    let table = sealcast(&dir, &admin("show", &["--group", "meters", "--members"]));
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with(run_id.as_str()))
            .count(),
        N
    );
    // The 2 500 deliveries were audited in one append: the chain verifies
    // and holds one delivery record per member.
    let verified = sealcast(&dir, &["audit", "verify", "manager-state/audit.jsonl"]);
    assert!(verified.contains("is intact"), "{verified}");
    let audit = fs::read_to_string(dir.join("manager-state/audit.jsonl")).unwrap();
    assert!(
        audit.lines().filter(|l| l.contains("\"delivery\"")).count() >= N,
        "delivery records missing"
    );
    // Issue #12, goal "audit log bounded": the members stay offline, and
    // every re-send round (the first after 5 s) used to append one record
    // per re-sent delivery. A round is now one record that counts them.
    let per_member = |audit: &str| {
        audit
            .lines()
            .filter(|l| l.contains("\"delivery\"") && !l.contains("re-send round"))
            .count()
    };
    let before = per_member(&audit);
    wait_until_blocking("a re-send round", &procs, || {
        fs::read_to_string(dir.join("manager-state/audit.jsonl"))
            .unwrap()
            .contains("re-send round")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let audit = fs::read_to_string(dir.join("manager-state/audit.jsonl")).unwrap();
    assert_eq!(per_member(&audit), before, "re-sends audited one by one");
    let rounds = audit
        .lines()
        .filter(|l| l.contains("re-send round"))
        .count();
    assert!(rounds * 10 < N, "{rounds} round records");
    drop(procs);
}

/// Issue #15, item 4 (policies on the manager's administration): with
/// `[[admin_acp]]`, each request on the control socket is decided by the
/// rules over the connecting operating-system user (by name and `uid:N`),
/// the operation and the group — permit-overrides, deny by default, the
/// socket's owner included. Here the owner may enrol, create, add, show
/// and list, evict only in `sandbox`, and nobody may remove: an eviction
/// from `fire-doors` and a removal are refused with what to do, and change
/// nothing. With `SEALCAST_OTHER_USER` (set by `.ci/run`, which creates
/// that user), the socket is opened to every local user (`666`) and that
/// user may list but not show; a manager without rules refuses the user's
/// connection outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administration_policy_decides_who_may_do_what_on_the_control_socket() {
    let t = MqttRun::start("adm").await;
    let (dir, url, run_id) = (t.dir.clone(), &t.url, &t.run);
    let name = |n: &str| format!("{run_id}-{n}");
    let (manager, door) = (name("manager"), name("door"));
    keygen(&dir, [&manager, &door]);
    let me = fs::metadata(dir.join(format!("{door}.pub"))).unwrap().uid();
    let other = std::env::var("SEALCAST_OTHER_USER")
        .ok()
        .filter(|u| !u.is_empty());
    if other.is_none() {
        sealcast_testkit::not_run(
            "an_administration_policy_decides_who_may_do_what_on_the_control_socket (second user)",
            "SEALCAST_OTHER_USER (an unprivileged local user; the test runs commands as it with runuser, as root) is not set",
        );
    }
    // The socket in a directory every user can traverse but not write.
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dir.join("ctl"))
        .unwrap();
    let socket = dir.join("ctl/manager.sock");
    let other_rule = other.as_ref().map_or_else(String::new, |u| {
        format!("[[admin_acp]]\noriginators = [\"{u}\"]\noperations = [\"list\"]\n")
    });
    let config = manager_config(&format!("broker = \"{url}\"\n"), run_id, &manager)
        + &format!(
            "control_socket = \"ctl/manager.sock\"\ncontrol_socket_mode = \"666\"\n\
             [[admin_acp]]\noriginators = [\"uid:{me}\"]\n\
             operations = [\"enrol\", \"create\", \"add\", \"show\", \"list\"]\n\
             [[admin_acp]]\noriginators = [\"uid:{me}\"]\noperations = [\"evict\"]\ngroups = [\"sandbox\"]\n\
             [[admin_acp]]\neffect = \"deny\"\noriginators = [\"*\"]\noperations = [\"remove\"]\n\
             {other_rule}"
        );
    fs::write(dir.join("manager.toml"), &config).unwrap();
    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    wait_until_blocking("the control socket", &procs, || {
        procs.log("manager").contains("control socket listening")
    });
    assert!(
        procs.log("manager").contains("administration policy"),
        "{}",
        procs.log("manager")
    );
    assert_eq!(fs::metadata(&socket).unwrap().mode() & 0o777, 0o666);

    let door_pub = format!("{door}.pub");
    sealcast(
        &dir,
        &admin("enrol", &["--public-key", &door_pub, "--kind", "device"]),
    );
    let member = format!("{door}:receiver");
    for g in ["fire-doors", "sandbox"] {
        sealcast(&dir, &admin("create", &["--group", g]));
        sealcast(&dir, &admin("add", &["--group", g, "--member", &member]));
    }
    // Evicting from fire-doors: no rule permits it.
    let err = sealcast_fails(
        &dir,
        &admin("evict", &["--group", "fire-doors", "--member", &door]),
    );
    assert!(
        err.contains("administration policy does not permit")
            && err.contains(&format!("uid:{me}"))
            && err.contains("evict in group fire-doors")
            && err.contains("[[admin_acp]]"),
        "{err}"
    );
    assert!(member_of(&dir, "fire-doors", &door));
    // Rekey is not granted at all.
    let err = sealcast_fails(&dir, &admin("rekey", &["--group", "fire-doors"]));
    assert!(err.contains("DenyByDefault"), "{err}");
    assert_eq!(show(&dir, "fire-doors")["epoch"], 1);
    // Removal: denied by rule 3 for everyone.
    let err = sealcast_fails(
        &dir,
        &["node", "remove", "--config", "manager.toml", "--id", &door],
    );
    assert!(err.contains("DenyByRule(3)"), "{err}");
    // Evicting from sandbox: permitted.
    sealcast(
        &dir,
        &admin("evict", &["--group", "sandbox", "--member", &door]),
    );
    assert!(!member_of(&dir, "sandbox", &door));
    assert!(member_of(&dir, "fire-doors", &door));
    // Each refusal is in the manager's hash-chained audit log, with the user.
    common::audit_intact(&dir, "manager-state/audit.jsonl", &[]);
    let text = common::audit_text(&dir, "manager-state/audit.jsonl");
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("admin-refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{text}");
    assert!(
        refused[0].contains(&format!("uid:{me}")) && refused[0].contains("evict"),
        "{}",
        refused[0]
    );

    if let Some(user) = &other {
        let sock = socket.to_str().unwrap();
        let as_other = |args: &[&str]| {
            std::process::Command::new("runuser")
                .args(["-u", user, "--", common::bin()])
                .args(args)
                .current_dir("/")
                .output()
                .unwrap()
        };
        let listed = as_other(&["group", "list", "--socket", sock]);
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        assert!(String::from_utf8_lossy(&listed.stdout).contains("fire-doors"));
        let shown = as_other(&["group", "show", "--socket", sock, "--group", "fire-doors"]);
        assert!(!shown.status.success());
        let err = String::from_utf8_lossy(&shown.stderr);
        assert!(
            err.contains(&format!("does not permit {user}"))
                && err.contains("show in group fire-doors"),
            "{err}"
        );
        // Without rules the socket is the owner's only: the same user is
        // turned away (and a shared mode without rules is refused).
        assert!(procs.terminate_async("manager").await.success());
        let open = config.replace("control_socket_mode = \"666\"\n", "");
        let bare: String = open.split("[[admin_acp]]").next().unwrap().to_owned();
        fs::write(
            dir.join("manager.toml"),
            bare.clone() + "control_socket_mode = \"666\"\n",
        )
        .unwrap();
        let refused = run(&dir, &["manager", "serve", "--config", "manager.toml"]);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("add [[admin_acp]] rules"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        fs::write(dir.join("manager.toml"), bare).unwrap();
        procs.start_appending("manager", &["manager", "serve", "--config", "manager.toml"]);
        wait_until_blocking("the control socket (owner only)", &procs, || {
            procs
                .log("manager")
                .contains("control socket listening (owner only)")
        });
        let turned_away = as_other(&["group", "list", "--socket", sock]);
        assert!(!turned_away.status.success());
    }
    drop(procs);
}

fn member_of(dir: &Path, group: &str, id: &str) -> bool {
    member(&show(dir, group), id).is_some()
}

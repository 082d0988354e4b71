#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The services on a broker that demands TLS and a password and enforces an
//! ACL (issue #11, item 6): a Mosquitto the test starts on a free port with
//! a TLS listener, certificates generated here with `openssl`, a password
//! file made with `mosquitto_passwd` and an ACL. The fire-safety flow works
//! end to end over `mqtts://` with usernames and password files; a wrong
//! password and a wrong CA are refused with errors that say so; the ACL
//! stops a door from publishing on the sensors' alert topic; no password
//! appears in any log. Needs mosquitto, mosquitto_passwd and openssl
//! (CI installs them); without them a NOT RUN banner says so.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    FIRE_RULE, Procs, executed, fire_safety_tables, keygen, relays_for, run_prefix, wait_until,
};
use sealcast_core::ids::GroupId;
use sealcast_mqtt::{Bytes, GroupChannel, MqttClient, MqttConfig, TopicScheme};

fn sh(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`).
fn make_ca(openssl: &str, dir: &Path, name: &str) {
    sh(
        dir,
        openssl,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// The broker's certificate for 127.0.0.1, signed by `ca`.
fn make_server_cert(openssl: &str, dir: &Path, ca: &str) {
    sh(
        dir,
        openssl,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    sh(
        dir,
        openssl,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_over_tls_with_passwords_and_an_acl() {
    let test = "services_over_tls_with_passwords_and_an_acl";
    // Each missing tool: a loud NOT RUN here, a failure in CI.
    let why = "mosquitto, mosquitto_passwd and openssl (Debian: apt-get install mosquitto openssl)";
    let Some(mosquitto) =
        sealcast_testkit::program("mosquitto", "SEALCAST_MOSQUITTO_BIN", test, why)
    else {
        return;
    };
    let Some(passwd) = sealcast_testkit::program(
        "mosquitto_passwd",
        "SEALCAST_MOSQUITTO_PASSWD_BIN",
        test,
        why,
    ) else {
        return;
    };
    let Some(openssl) = sealcast_testkit::program("openssl", "SEALCAST_OPENSSL_BIN", test, why)
    else {
        return;
    };
    let openssl = openssl.to_str().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let run = run_prefix("tls");
    let name = |n: &str| format!("{run}-{n}");
    let (manager, gateway, sensor, door) = (
        name("manager"),
        name("gateway"),
        name("sensor"),
        name("door"),
    );
    keygen(&dir, [&manager, &gateway, &sensor, &door]);

    // --- the broker: TLS, passwords, ACL -------------------------------------
    make_ca(&openssl, &dir, "ca");
    make_ca(&openssl, &dir, "other-ca");
    make_server_cert(&openssl, &dir, "ca");
    let secret = |id: &str| format!("pw-{id}-{}", std::process::id());
    for (i, id) in [&manager, &gateway, &sensor, &door].into_iter().enumerate() {
        let mut args = vec!["-b"];
        if i == 0 {
            args.push("-c");
        }
        let pw = secret(id);
        args.extend(["passwd", id.as_str(), pw.as_str()]);
        sh(&dir, passwd.to_str().unwrap(), &args);
        fs::write(dir.join(format!("{id}.pass")), format!("{pw}\n")).unwrap();
    }
    fs::write(dir.join("wrong.pass"), "not-the-password\n").unwrap();
    let root = format!("{run}/sealcast/v1");
    fs::write(
        dir.join("acl"),
        format!(
            "user {manager}\ntopic readwrite #\nuser {gateway}\ntopic readwrite #\n\
             user {sensor}\ntopic readwrite #\n\
             user {door}\ntopic read {root}/g/#\ntopic readwrite {root}/d/{door}/#\n"
        ),
    )
    .unwrap();
    let port = common::Mosquitto::free_port();
    let broker = common::Mosquitto::start(
        &mosquitto,
        &dir,
        port,
        &format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\n\
             acl_file {d}/acl\npersistence false",
            d = dir.display()
        ),
        &format!(
            "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            d = dir.display()
        ),
    );

    // --- the services over mqtts:// -------------------------------------------
    let head = |id: &str, ca: &str, pass: &str| {
        format!(
            "broker = \"mqtts://127.0.0.1:{port}\"\ntls_ca = \"{ca}\"\nusername = \"{id}\"\n\
             password_file = \"{pass}\"\ntopic_prefix = \"{run}\"\nkey = \"{id}.key\"\n"
        )
    };
    let node = |id: &str, ca: &str, pass: &str, state: &str| {
        head(id, ca, pass)
            + &format!("manager_public_key = \"{manager}.pub\"\nstate_dir = \"{state}\"\n")
    };
    fs::write(
        dir.join("manager.toml"),
        head(&manager, "ca.pem", &format!("{manager}.pass"))
            + "state_dir = \"manager-state\"\nkek = \"manager.kek\"\n"
            + &fire_safety_tables(&gateway, &[&sensor], &[&door]),
    )
    .unwrap();
    fs::write(
        dir.join("agent.toml"),
        node(&gateway, "ca.pem", &format!("{gateway}.pass"), "gw-state")
            + &relays_for([&sensor, &door])
            + FIRE_RULE,
    )
    .unwrap();
    for id in [&sensor, &door] {
        fs::write(
            dir.join(format!("{id}.toml")),
            node(id, "ca.pem", &format!("{id}.pass"), &format!("{id}-state")),
        )
        .unwrap();
    }
    fs::write(
        dir.join("sensor-wrong-pass.toml"),
        node(&sensor, "ca.pem", "wrong.pass", &format!("{sensor}-state")),
    )
    .unwrap();
    fs::write(
        dir.join("sensor-wrong-ca.toml"),
        node(
            &sensor,
            "other-ca.pem",
            &format!("{sensor}.pass"),
            &format!("{sensor}-state"),
        ),
    )
    .unwrap();

    let mut procs = Procs::new(&dir);
    procs.start("manager", &["manager", "serve", "--config", "manager.toml"]);
    procs.start("agent", &["agent", "serve", "--config", "agent.toml"]);
    procs.start_device(&door);
    wait_until("keys installed over TLS", &procs, || {
        procs.installed("agent") >= 2 && procs.installed(&door) >= 1
    })
    .await;
    let send = |config: &str| {
        common::run_bounded(
            &dir,
            &[
                "device",
                "send",
                "--config",
                config,
                "--group",
                "fire-sensors",
                "--alert",
                "smoke",
                "--wait",
                "5",
            ],
            Duration::from_secs(60),
        )
    };
    let out = send(&format!("{sensor}.toml"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    wait_until("the door unlocks over TLS", &procs, || {
        !executed(&dir, &door).is_empty()
    })
    .await;

    // --- refusals ---------------------------------------------------------------
    let out = send("sensor-wrong-pass.toml");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused") && err.contains("cannot reach the MQTT broker"),
        "{err}"
    );
    eprintln!("wrong password: {}", err.trim());
    let out = send("sensor-wrong-ca.toml");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the wrong CA was not named: {err}"
    );
    eprintln!("wrong CA: {}", err.trim());

    // --- the ACL: the door may not publish on the sensors' alert topic --------
    let topics = TopicScheme::with_prefix(&run).unwrap();
    let alerts = topics.group(&GroupId::new(b"fire-sensors").unwrap(), GroupChannel::Alert);
    let ca_path = dir.join("ca.pem");
    let url = |id: &str| {
        format!(
            "mqtts://127.0.0.1:{port}?ca={}&username={id}&password_file={}",
            ca_path.display(),
            dir.join(format!("{id}.pass")).display()
        )
    };
    let watch = MqttConfig::from_url(&url(&gateway), format!("{gateway}-acl-watch"))
        .unwrap()
        .with_subscription(sealcast_mqtt::TopicFilter::new(&alerts).unwrap());
    let (watcher, mut inbox) = MqttClient::connect(watch).unwrap();
    watcher
        .wait_subscribed(Duration::from_secs(10))
        .await
        .unwrap();
    let (intruder, _) =
        MqttClient::connect(MqttConfig::from_url(&url(&door), format!("{door}-acl")).unwrap())
            .unwrap();
    intruder
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    intruder
        .publish(alerts.clone(), Bytes::from_static(b"forged alert"))
        .await
        .unwrap();
    let _ = intruder.flush(Duration::from_secs(5)).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), inbox.next_message())
            .await
            .is_err(),
        "the ACL let the door publish on the alert topic"
    );

    // --- no password in any log -------------------------------------------------
    let logs = procs.logs();
    for id in [&manager, &gateway, &sensor, &door] {
        assert!(!logs.contains(&secret(id)), "a password was logged");
    }
    drop(procs);
    drop(broker);
}

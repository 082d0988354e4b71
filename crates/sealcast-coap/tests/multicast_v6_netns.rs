#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! IPv6 multicast between two network namespaces this test makes itself.
//!
//! ff02/ff05 multicast does not work on `lo`, so the test builds
//! `sc-<random>-a` and `sc-<random>-b`, joined by a veth pair, with ULA
//! addresses (a random fdXX:… /64) inside them and a route for ff05::/16 on
//! the veth. The receiver and the sender run as helper processes inside the
//! namespaces: this test binary re-executed through `ip netns exec <ns>`
//! with `--exact netns_helper --ignored` and its role in the environment
//! (entering a namespace from this process would need unsafe `setns`). The
//! namespaces, and the veth pair with them, are deleted by a Drop guard,
//! even when the test fails. Nothing is ever sent in the host's own
//! namespace.
//!
//! Needs root and iproute2; without them the test prints NOT RUN (or fails
//! under SEALCAST_REQUIRE_EXTERNAL=1).

mod common;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::hex;
use sealcast_coap::{
    ALL_COAP_NODES_V6_LINK, ALL_COAP_NODES_V6_SITE, ContentFormat, MulticastConfig,
    MulticastInterface, MulticastReceiver, MulticastSender,
};
use sealcast_core::broadcast::{BroadcastReceiver, ReplayPolicy, seal_broadcast};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_testkit::not_run;

const TEST: &str = "multicast_v6_netns::ipv6_multicast_between_namespaces";
const ROLE: &str = "SC_NETNS_ROLE";
const NOW: UnixMillis = UnixMillis::new(1_704_067_200_000);
const TARGET: &str = "grp/sirens/cmd";

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespaces (and the veth pair inside them) and kills helper
/// processes, whatever happened.
#[derive(Default)]
struct Cleanup {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Starts this test binary as helper `role` inside `ns`; its stdout lines
/// starting with `SC-` arrive on the returned channel.
fn helper(
    cleanup: &mut Cleanup,
    ns: &str,
    role: &str,
    env: &[(&str, String)],
) -> mpsc::Receiver<String> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(exe)
        .args(["--exact", "netns_helper", "--ignored", "--nocapture"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    cleanup.children.push(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("SC-") && tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("no {prefix} line from the helper: {e}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

fn sealed_command() -> (GroupContext, Vec<u8>) {
    let mut rng = TestRng::new(66);
    let agent = EntityCredential::generate(EntityId::new("fire-panel").unwrap(), &mut rng);
    let material = GroupKeyMaterial::generate(
        GroupId::new(b"sirens").unwrap(),
        Epoch::new(3),
        AeadAlg::A256Gcm,
        vec![AuthorizedSigner {
            sender_id: SenderId::new([0x07]).unwrap(),
            entity: agent.id().clone(),
            verifying_key: agent.signing_key().verifying_key(),
        }],
        None,
        &mut rng,
    )
    .unwrap();
    let ctx = GroupContext::new(&material).unwrap();
    let bytes = seal_broadcast(
        &ctx,
        agent.id(),
        agent.signing_key(),
        SeqNum::new(9).unwrap(),
        NOW,
        TARGET,
        b"evacuate",
    )
    .unwrap();
    (ctx, bytes)
}

#[test]
fn ipv6_multicast_between_namespaces() {
    if !is_root() {
        not_run(TEST, "it needs root to make network namespaces");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        not_run(TEST, "iproute2 (`ip`) is not installed");
        return;
    }
    let r = random_u64();
    let tag = format!("sc-{:08x}", r as u32);
    let (ns_a, ns_b) = (format!("{tag}-a"), format!("{tag}-b"));
    let (veth_a, veth_b) = (format!("sca{:06x}", r >> 40), format!("scb{:06x}", r >> 40));
    let prefix = format!(
        "fd{:02x}:{:x}:{:x}:1",
        (r >> 8) as u8,
        (r >> 16) as u16,
        (r >> 32) as u16
    );

    let mut cleanup = Cleanup::default();
    for ns in [&ns_a, &ns_b] {
        if let Err(e) = ip(&["netns", "add", ns]) {
            not_run(TEST, &format!("network namespaces are not available ({e})"));
            return;
        }
        cleanup.namespaces.push(ns.clone());
    }
    // The veth ends are created directly inside the namespaces.
    ip(&[
        "link", "add", &veth_a, "netns", &ns_a, "type", "veth", "peer", "name", &veth_b, "netns",
        &ns_b,
    ])
    .unwrap();
    for (ns, dev, host) in [(&ns_a, &veth_a, "1"), (&ns_b, &veth_b, "2")] {
        ip(&["-n", ns, "link", "set", "lo", "up"]).unwrap();
        ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
        ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{prefix}::{host}/64"),
            "dev",
            dev,
            "nodad",
        ])
        .unwrap();
        ip(&["-n", ns, "-6", "route", "add", "ff05::/16", "dev", dev]).unwrap();
    }

    let (ctx, command) = sealed_command();
    for (round, group) in [ALL_COAP_NODES_V6_SITE, ALL_COAP_NODES_V6_LINK]
        .into_iter()
        .enumerate()
    {
        let port = 40_000 + (r % 20_000) as u16 + round as u16;
        let common_env = [
            ("SC_NETNS_GROUP", group.to_string()),
            ("SC_NETNS_PORT", port.to_string()),
        ];
        let mut env = common_env.to_vec();
        env.push(("SC_NETNS_IF", veth_b.clone()));
        let receiver = helper(&mut cleanup, &ns_b, "receive", &env);
        expect_line(&receiver, "SC-READY");

        let mut env = common_env.to_vec();
        env.push(("SC_NETNS_IF", veth_a.clone()));
        env.push(("SC_NETNS_PAYLOAD", hex(&command)));
        let sender = helper(&mut cleanup, &ns_a, "send", &env);

        let got = expect_line(&receiver, "SC-GOT");
        let fields: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{got}");
        let source: IpAddr = fields[0].parse().unwrap();
        let ula = IpAddr::V6(format!("{prefix}::1").parse::<Ipv6Addr>().unwrap());
        if group == ALL_COAP_NODES_V6_LINK {
            // For a link-scope group the kernel prefers a link-local source
            // (RFC 6724 rule 2) once the veth's fe80:: address has finished
            // duplicate address detection, the ULA before: either way it
            // left namespace a over the veth.
            let link_local = matches!(source, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
            assert!(
                source == ula || link_local,
                "sent from namespace a over the veth, got {source}"
            );
        } else {
            assert_eq!(
                source, ula,
                "sent from namespace a's ULA address over the veth"
            );
        }
        assert_eq!(fields[1], TARGET);
        assert_eq!(fields[2], "16");
        let payload = sealcast_testkit::unhex(fields[3]);
        assert_eq!(payload, command);
        let mut opener = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
        let opened = opener.open(&payload, fields[1], NOW).unwrap();
        assert_eq!(opened.payload, b"evacuate");
        expect_line(&sender, "SC-SENT");
    }
    drop(cleanup);
    for ns in [&ns_a, &ns_b] {
        assert!(
            ip(&["netns", "exec", ns, "true"]).is_err(),
            "namespace {ns} was not deleted"
        );
    }
}

/// The helper roles, run inside a namespace by the test above. Without
/// `SC_NETNS_ROLE` (a plain `cargo test -- --ignored`) it does nothing.
#[tokio::test]
#[ignore = "helper process of ipv6_multicast_between_namespaces"]
async fn netns_helper() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap();
    let group: IpAddr = env("SC_NETNS_GROUP").parse().unwrap();
    let port: u16 = env("SC_NETNS_PORT").parse().unwrap();
    let interface = MulticastInterface::v6_by_name(&env("SC_NETNS_IF")).unwrap();
    let config = MulticastConfig::new(group, interface)
        .unwrap()
        .with_port(port)
        .with_hops(1)
        .unwrap()
        .with_loopback(true);
    match role.as_str() {
        "receive" => {
            let mut receiver = MulticastReceiver::join(config).await.unwrap();
            println!("SC-READY");
            let got = tokio::time::timeout(Duration::from_secs(20), receiver.recv())
                .await
                .expect("nothing received")
                .unwrap();
            println!(
                "SC-GOT {} {} {} {}",
                got.source().ip(),
                got.path(),
                got.content_format().map(|c| c.number()).unwrap_or(0),
                hex(got.payload())
            );
        }
        "send" => {
            let sender = MulticastSender::bind(config).await.unwrap();
            let payload = sealcast_testkit::unhex(&env("SC_NETNS_PAYLOAD"));
            let cf = ContentFormat::of_tagged_cose(&payload).unwrap();
            // A fresh veth may still be settling: send a few times. The
            // receiver reports the first it gets; the COSE replay window
            // would refuse the others.
            for _ in 0..5 {
                sender.send(TARGET, cf, &payload).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            println!("SC-SENT");
        }
        other => panic!("unknown role {other}"),
    }
}

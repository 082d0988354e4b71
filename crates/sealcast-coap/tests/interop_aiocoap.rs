#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Interoperability with a CoAP implementation we did not write: aiocoap.
//!
//! `SEALCAST_AIOCOAP` names a Python interpreter with aiocoap installed
//! (`pip install 'aiocoap[oscore]'`); without it these tests print NOT RUN,
//! and fail under `SEALCAST_REQUIRE_EXTERNAL=1`. The scripts are in
//! `tests/aiocoap/`. Everything runs on loopback; multicast on both sides is
//! pinned to 127.0.0.1 with TTL 1.
//!
//! - aiocoap's client POSTs 10 KiB to our server (its Block1, our Block2)
//!   and GETs 10 KiB from it;
//! - our client POSTs 10 KiB to aiocoap's server and GETs 10 KiB from it;
//! - our multicast sender reaches aiocoap's server joined to 224.0.1.187;
//! - a datagram encoded by aiocoap reaches our multicast receiver.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{free_udp_port, hex, loopback_any_port, pattern, within};
use sealcast_coap::{
    ALL_COAP_NODES_V4, ClientConfig, CoapClient, CoapServer, ContentFormat, Method,
    MulticastConfig, MulticastInterface, MulticastReceiver, MulticastSender, Request, Response,
    ResponseCode, ServerConfig, ServerHandle,
};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn python(test: &str) -> Option<String> {
    sealcast_testkit::require(
        "SEALCAST_AIOCOAP",
        test,
        "a Python 3 interpreter with aiocoap installed (pip install 'aiocoap[oscore]')",
    )
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/aiocoap")
        .join(name)
}

/// Runs an aiocoap script to completion; returns its last stdout line as JSON.
async fn run_json(py: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(py)
        .arg(script(args[0]))
        .args(&args[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn unhex_json(v: &serde_json::Value) -> Vec<u8> {
    sealcast_testkit::unhex(v.as_str().unwrap())
}

/// Our server: `kd/…` echoes the body reversed with its Content-Format,
/// `pull/big` answers 10 KiB.
async fn our_server() -> ServerHandle {
    CoapServer::bind(
        ServerConfig::new(loopback_any_port()),
        |req: &Request, _peer: SocketAddr| match (req.method(), req.path().as_str()) {
            (Method::Post, p) if p.starts_with("kd/") => {
                let mut body = req.payload().to_vec();
                body.reverse();
                Response::new(ResponseCode::CHANGED).with_payload(
                    req.content_format().unwrap_or(ContentFormat::OCTET_STREAM),
                    body,
                )
            }
            (Method::Get, "pull/big") => {
                Response::content(ContentFormat::COSE_SIGN1, pattern(10 * 1024))
            }
            _ => Response::new(ResponseCode::NOT_FOUND),
        },
    )
    .await
    .unwrap()
    .spawn()
    .unwrap()
}

#[tokio::test]
async fn aiocoap_client_against_our_server() {
    let Some(py) = python("interop_aiocoap::aiocoap_client_against_our_server") else {
        return;
    };
    within(60, async {
        let server = our_server().await;
        let base = format!("coap://127.0.0.1:{}", server.local_addr().port());

        let mut body = vec![0xd2, 0x84];
        body.extend(pattern(10 * 1024 - 2));
        let file = std::env::temp_dir().join(format!("sc-coap-{}.hex", std::process::id()));
        std::fs::write(&file, hex(&body)).unwrap();
        let v = run_json(
            &py,
            &[
                "client.py",
                "post",
                &format!("{base}/kd/device-x"),
                "18",
                file.to_str().unwrap(),
            ],
        )
        .await;
        let _ = std::fs::remove_file(&file);
        assert_eq!(v["code"], "2.04");
        assert_eq!(v["cf"], 18);
        let mut expected = body.clone();
        expected.reverse();
        assert_eq!(unhex_json(&v["payload"]), expected);
        let s = server.stats();
        assert_eq!(s.requests, 1);
        assert_eq!(s.blocks_received, 10, "aiocoap sent ten Block1 blocks");
        assert_eq!(s.blocks_served, 9, "and fetched nine more Block2 blocks");

        let v = run_json(&py, &["client.py", "get", &format!("{base}/pull/big")]).await;
        assert_eq!(v["code"], "2.05");
        assert_eq!(v["cf"], 18);
        assert_eq!(unhex_json(&v["payload"]), pattern(10 * 1024));
    })
    .await;
}

/// server.py, started and READY.
struct AiocoapServer {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    unicast: SocketAddr,
    multicast_port: u16,
}

impl AiocoapServer {
    async fn start(py: &str) -> Self {
        let uport = free_udp_port();
        let mport = free_udp_port();
        let mut child = Command::new(py)
            .arg(script("server.py"))
            .arg(uport.to_string())
            .arg(mport.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = within(30, lines.next_line())
                .await
                .unwrap()
                .expect("server.py exited before READY");
            if line.trim() == "READY" {
                break;
            }
        }
        Self {
            _child: child,
            lines,
            unicast: SocketAddr::from(([127, 0, 0, 1], uport)),
            multicast_port: mport,
        }
    }

    async fn next_event(&mut self) -> serde_json::Value {
        loop {
            let line = within(10, self.lines.next_line())
                .await
                .unwrap()
                .expect("server.py exited");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn our_client_against_aiocoap_server() {
    let Some(py) = python("interop_aiocoap::our_client_against_aiocoap_server") else {
        return;
    };
    within(60, async {
        let peer = AiocoapServer::start(&py).await;
        let client = CoapClient::bind(ClientConfig::new(loopback_any_port()))
            .await
            .unwrap();

        // Small: one datagram each way.
        let req = Request::post("echo", ContentFormat::COSE_ENCRYPT0, vec![1, 2, 3]).unwrap();
        let resp = client.request(peer.unicast, &req).await.unwrap();
        assert_eq!(resp.code(), ResponseCode::CHANGED);
        assert_eq!(resp.content_format(), Some(ContentFormat::COSE_ENCRYPT0));
        assert_eq!(resp.payload(), [3, 2, 1]);

        // 10 KiB up (our Block1), 10 KiB back (aiocoap's Block2).
        let body = pattern(10 * 1024 + 100);
        let req = Request::post("echo", ContentFormat::COSE_SIGN1, body.clone()).unwrap();
        let resp = client.request(peer.unicast, &req).await.unwrap();
        assert_eq!(resp.code(), ResponseCode::CHANGED);
        let mut expected = body;
        expected.reverse();
        assert_eq!(resp.payload(), &expected[..]);
        let stats = client.stats().await;
        assert_eq!(stats.blocks_sent, 11);
        assert_eq!(stats.blocks_received, 11);

        // 10 KiB pulled.
        let resp = client
            .request(peer.unicast, &Request::get("big").unwrap())
            .await
            .unwrap();
        assert_eq!(resp.code(), ResponseCode::CONTENT);
        assert_eq!(resp.content_format(), Some(ContentFormat::COSE_SIGN1));
        assert_eq!(resp.payload(), &pattern(10 * 1024)[..]);
    })
    .await;
}

fn loopback_group(port: u16) -> MulticastConfig {
    MulticastConfig::new(
        IpAddr::V4(ALL_COAP_NODES_V4),
        MulticastInterface::LOOPBACK_V4,
    )
    .unwrap()
    .with_port(port)
    .with_hops(1)
    .unwrap()
    .with_loopback(true)
}

#[tokio::test]
async fn our_multicast_sender_reaches_aiocoap_server() {
    let Some(py) = python("interop_aiocoap::our_multicast_sender_reaches_aiocoap_server") else {
        return;
    };
    within(60, async {
        let mut peer = AiocoapServer::start(&py).await;
        let sender = MulticastSender::bind(loopback_group(peer.multicast_port))
            .await
            .unwrap();
        let command = [0xd0, 0x83, 0x43, 0xa1, 0x01, 0x01, 0xa0, 0x41, 0x00];
        sender
            .send("grp/cmd", ContentFormat::COSE_ENCRYPT0, &command)
            .await
            .unwrap();
        let event = peer.next_event().await;
        assert_eq!(event["event"], "group");
        assert_eq!(event["cf"], 16);
        assert_eq!(unhex_json(&event["payload"]), command);
    })
    .await;
}

#[tokio::test]
async fn aiocoap_encoded_multicast_reaches_our_receiver() {
    let Some(py) = python("interop_aiocoap::aiocoap_encoded_multicast_reaches_our_receiver") else {
        return;
    };
    within(60, async {
        let port = free_udp_port();
        let mut receiver = MulticastReceiver::join(loopback_group(port)).await.unwrap();
        let command = [0xd0, 0x83, 0x43, 0xa1, 0x01, 0x01, 0xa0, 0x41, 0x07];
        let port_s = port.to_string();
        let group_s = ALL_COAP_NODES_V4.to_string();
        let payload_s = hex(&command);
        let sent = Command::new(&py)
            .arg(script("mcast_send.py"))
            .args([&group_s, &port_s, "grp/cmd", "16", &payload_s, "4660"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        let got = within(10, receiver.recv()).await.unwrap();
        assert_eq!(got.path(), "grp/cmd");
        assert_eq!(got.content_format(), Some(ContentFormat::COSE_ENCRYPT0));
        assert_eq!(got.payload(), command);
        assert_eq!(got.message_id().get(), 4660);
        assert_eq!(got.source().ip(), IpAddr::from([127, 0, 0, 1]));
        let more = tokio::time::timeout(Duration::from_millis(200), receiver.recv()).await;
        assert!(more.is_err());
    })
    .await;
}

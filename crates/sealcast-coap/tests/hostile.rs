#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Hostile datagrams: random bytes and mutated valid messages fed to the
//! decoder paths (the sans-IO server core and the group-request parser)
//! must never panic, and whatever the server answers is a well-formed CoAP
//! header. Then the same against live sockets, which keep working.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{fast_params, fast_server_settings, free_udp_port, loopback_any_port, within};
use proptest::prelude::*;
use rand_core::Rng;
use sealcast_coap::{
    ALL_COAP_NODES_V4, BlockSize, ClientConfig, CoapClient, CoapServer, ContentFormat, MessageId,
    MulticastConfig, MulticastInterface, MulticastReceiver, MulticastSender, Request, Response,
    ServerConfig, ServerCore, ServerSettings, parse_group_request,
};
use sealcast_core::testrng::TestRng;

fn handler(req: &Request, _peer: SocketAddr) -> Response {
    // Large answers for some paths, so Block2 caching is exercised too.
    if req.path().len().is_multiple_of(2) {
        Response::content(ContentFormat::COSE_SIGN1, vec![0xa5; 3000])
    } else {
        Response::changed()
    }
}

fn core() -> ServerCore {
    ServerCore::new(
        ServerSettings {
            block_size: BlockSize::B64,
            max_body: 8 * 1024,
            dedup_capacity: 64,
            transfer_capacity: 8,
            ..fast_server_settings()
        },
        MessageId::new(1),
    )
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + u16::from(n % 4)))
}

fn check_reply(reply: Option<Vec<u8>>) {
    if let Some(r) = reply {
        assert!(r.len() >= 4, "a reply shorter than a header");
        assert_eq!(r[0] >> 6, 1, "a reply that is not CoAP version 1");
    }
}

/// Valid messages to mutate: requests with paths, queries, Content-Format,
/// Block1/Block2/Size1 options, an empty ping, a response, a NON.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    // CON POST /kd/x, CF 18, Block1 NUM 0 M SZX 2 (64), Size1 200, 64 bytes.
    let mut a = vec![0x42, 0x02, 0x00, 0x01, 0xaa, 0xbb, 0xb2];
    a.extend_from_slice(b"kd");
    a.push(0x01);
    a.push(b'x');
    a.extend_from_slice(&[0x11, 18]);
    a.extend_from_slice(&[0xd1, 0x02, 0x0a]);
    a.extend_from_slice(&[0xd1, 0x14, 200]);
    a.push(0xff);
    a.extend(std::iter::repeat_n(0x33, 64));
    v.push(a);
    // CON GET /ab with Block2 NUM 3 SZX 2 and a query.
    let mut b = vec![0x41, 0x01, 0x00, 0x02, 0x07, 0xb2, b'a', b'b', 0x43];
    b.extend_from_slice(b"q=1");
    b.extend_from_slice(&[0x81, 0x32]);
    v.push(b);
    v.push(vec![0x40, 0x00, 0x00, 0x03]);
    v.push(vec![0x60, 0x45, 0x00, 0x04, 0xff, 0x01]);
    let mut c = vec![0x50, 0x02, 0x00, 0x05, 0xb3];
    c.extend_from_slice(b"grp");
    c.extend_from_slice(&[0x11, 0x10, 0xff, 0xd0, 0x83]);
    v.push(c);
    // Extended option deltas and lengths (13 and 14 nibbles).
    let mut d = vec![0x40, 0x01, 0x00, 0x06, 0xdd, 0x00, 0x05];
    d.extend_from_slice(&[0x41; 18]);
    d.extend_from_slice(&[0xee, 0x00, 0x10, 0x00, 0x00]);
    v.push(d);
    v
}

fn mutate(rng: &mut TestRng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    let edits = 1 + rng.next_u32() % 4;
    for _ in 0..edits {
        let r = rng.next_u32();
        let len = m.len().max(1);
        let at = (rng.next_u32() as usize) % len;
        match r % 5 {
            0 if !m.is_empty() => m[at] ^= 1 << ((r >> 8) % 8),
            1 if !m.is_empty() => m[at] = (r >> 8) as u8,
            2 => m.truncate(at),
            3 => m.insert(at.min(m.len()), (r >> 8) as u8),
            _ => {
                let extra = (r >> 8) as usize % 40;
                for _ in 0..extra {
                    m.push(rng.next_u32() as u8);
                }
            }
        }
    }
    m
}

#[test]
fn mutated_messages_never_panic() {
    let mut rng = TestRng::new(0x5eed);
    let mut core = core();
    let start = Instant::now();
    let seeds = seeds();
    for i in 0..30_000u32 {
        let seed = &seeds[i as usize % seeds.len()];
        let m = mutate(&mut rng, seed);
        // Time moves forward so entries expire and get evicted too.
        let now = start + Duration::from_millis(u64::from(i) * 3);
        check_reply(core.handle_datagram(&m, peer(i as u8), now, &handler));
        let _ = parse_group_request(&m);
    }
    let s = core.stats();
    assert!(s.malformed > 0 && s.requests > 0, "{s:?}");
}

#[test]
fn random_headers_with_random_bodies_never_panic() {
    let mut rng = TestRng::new(99);
    let mut core = core();
    let now = Instant::now();
    for i in 0..30_000u32 {
        let len = (rng.next_u32() % 64) as usize;
        let mut m = vec![0u8; len + 4];
        rng.fill_bytes(&mut m);
        // Version 1 and a token length of 0-8, so decoding gets past the
        // first checks and into the options.
        m[0] = 0x40 | (m[0] & 0x30) | ((m[0] & 0x0f) % 9);
        check_reply(core.handle_datagram(&m, peer(i as u8), now, &handler));
        let _ = parse_group_request(&m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let mut core = core();
        check_reply(core.handle_datagram(&bytes, peer(0), Instant::now(), &handler));
        let _ = parse_group_request(&bytes);
    }
}

#[test]
fn an_oversized_datagram_is_refused_before_parsing() {
    let mut core = core();
    let mut big = vec![0x50, 0x02, 0x00, 0x01, 0xff];
    big.resize(70_000, 0x00);
    assert_eq!(
        core.handle_datagram(&big, peer(0), Instant::now(), &handler),
        None
    );
    assert!(parse_group_request(&big).is_err());
}

#[tokio::test]
async fn live_endpoints_survive_garbage() {
    within(20, async {
        let server = CoapServer::bind(ServerConfig::new(loopback_any_port()), handler)
            .await
            .unwrap()
            .spawn()
            .unwrap();
        let port = free_udp_port();
        let group = MulticastConfig::new(
            IpAddr::V4(ALL_COAP_NODES_V4),
            MulticastInterface::LOOPBACK_V4,
        )
        .unwrap()
        .with_port(port)
        .with_hops(1)
        .unwrap()
        .with_loopback(true);
        let mut receiver = MulticastReceiver::join(group.clone()).await.unwrap();
        // The receiver drains its socket while the garbage arrives.
        let listening = tokio::spawn(async move {
            let got = receiver.recv().await.unwrap();
            (got, receiver.stats())
        });

        let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let multicast_raw = common::raw_loopback_multicast_sender();
        let mut rng = TestRng::new(3);
        let seeds = seeds();
        for i in 0..500usize {
            let m = mutate(&mut rng, &seeds[i % seeds.len()]);
            raw.send_to(&m, server.local_addr()).await.unwrap();
            // Never a valid NON request by construction: the CON bit is set.
            let mut g = m.clone();
            if let Some(b) = g.first_mut() {
                *b &= !0x30;
            }
            multicast_raw
                .send_to(&g, (ALL_COAP_NODES_V4, port))
                .unwrap();
            tokio::task::yield_now().await;
        }

        // Both still serve well-formed traffic.
        let client =
            CoapClient::bind(ClientConfig::new(loopback_any_port()).with_params(fast_params()))
                .await
                .unwrap();
        let resp = client
            .request(server.local_addr(), &Request::get("xy").unwrap())
            .await
            .unwrap();
        assert_eq!(resp.payload().len(), 3000);
        let sender = MulticastSender::bind(group).await.unwrap();
        sender
            .send("grp/ok", ContentFormat::COSE_ENCRYPT0, &[0xd0])
            .await
            .unwrap();
        let (got, stats) = within(5, listening).await.unwrap();
        assert_eq!(got.path(), "grp/ok");
        assert!(stats.rejected > 0, "{stats:?}");
        assert!(server.stats().malformed > 0);
    })
    .await;
}

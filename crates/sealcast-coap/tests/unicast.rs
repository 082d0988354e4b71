#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Unicast over loopback: confirmable requests under loss (retransmission
//! on the client, deduplication on the server), block-wise transfer of
//! 10 KiB both ways, and the message-level rules (ping, Reset, NON, 4.02,
//! separate responses).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{fast_params, fast_server_settings, loopback_any_port, pattern, within};
use sealcast_coap::{
    BlockSize, ClientConfig, CoapClient, CoapServer, ContentFormat, DatagramFilter, Direction,
    DropFirst, Error, Method, Request, Response, ResponseCode, ServerConfig, ServerHandle,
    ServerSettings,
};
use sealcast_core::testrng::TestRng;

fn client_config() -> ClientConfig {
    ClientConfig::new(loopback_any_port()).with_params(fast_params())
}

async fn client(config: ClientConfig) -> CoapClient {
    CoapClient::bind_with_rng(config, TestRng::new(7))
        .await
        .unwrap()
}

/// A server whose handler counts its calls and answers key deliveries
/// (`kd/…`, echoing the body reversed) and pulls (`pull/big`, 10 KiB).
async fn counting_server(config: ServerConfig) -> (ServerHandle, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = CoapServer::bind(config, move |req: &Request, _peer: SocketAddr| {
        seen.fetch_add(1, Ordering::SeqCst);
        match (req.method(), req.path().as_str()) {
            (Method::Post, p) if p.starts_with("kd/") => {
                let mut body = req.payload().to_vec();
                body.reverse();
                Response::new(ResponseCode::CHANGED).with_payload(ContentFormat::COSE_SIGN1, body)
            }
            (Method::Get, "pull/big") => {
                Response::content(ContentFormat::COSE_SIGN1, pattern(10 * 1024))
            }
            _ => Response::new(ResponseCode::NOT_FOUND),
        }
    })
    .await
    .unwrap()
    .spawn()
    .unwrap();
    (server, calls)
}

fn key_delivery(len: usize) -> Request {
    let mut body = vec![0xd2, 0x84];
    body.extend(pattern(len - 2));
    Request::post("kd/device-x", ContentFormat::COSE_SIGN1, body).unwrap()
}

#[tokio::test]
async fn lost_requests_are_retransmitted() {
    within(10, async {
        let (server, calls) = counting_server(
            ServerConfig::new(loopback_any_port()).with_settings(fast_server_settings()),
        )
        .await;
        let drop = DropFirst::new(Direction::Outgoing, 2);
        let client = client(client_config().with_fault_injection(drop.clone())).await;

        let req = key_delivery(200);
        let resp = client.request(server.local_addr(), &req).await.unwrap();
        assert_eq!(resp.code(), ResponseCode::CHANGED);
        let mut expected = req.payload().to_vec();
        expected.reverse();
        assert_eq!(resp.payload(), &expected[..]);

        assert_eq!(drop.dropped(), 2);
        let stats = client.stats().await;
        assert_eq!(stats.messages, 1);
        assert_eq!(stats.retransmissions, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(server.stats().duplicates, 0);
    })
    .await;
}

#[tokio::test]
async fn lost_acks_are_answered_from_the_dedup_cache() {
    within(10, async {
        // The server's first two ACKs (piggybacked responses) are lost: the
        // client retransmits the same message id, the server recognises it
        // and resends the cached ACK without running the handler again.
        let drop = DropFirst::new(Direction::Outgoing, 2);
        let (server, calls) = counting_server(
            ServerConfig::new(loopback_any_port())
                .with_settings(fast_server_settings())
                .with_fault_injection(drop.clone()),
        )
        .await;
        let client = client(client_config()).await;

        let resp = client
            .request(server.local_addr(), &key_delivery(100))
            .await
            .unwrap();
        assert_eq!(resp.code(), ResponseCode::CHANGED);
        assert_eq!(drop.dropped(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
        let s = server.stats();
        assert_eq!(s.requests, 1);
        assert_eq!(s.duplicates, 2);
        assert_eq!(client.stats().await.retransmissions, 2);
    })
    .await;
}

#[tokio::test]
async fn gives_up_after_max_retransmit() {
    within(10, async {
        // Everything towards the server is lost.
        let drop = DropFirst::new(Direction::Incoming, u64::MAX);
        let (server, calls) = counting_server(
            ServerConfig::new(loopback_any_port())
                .with_settings(fast_server_settings())
                .with_fault_injection(drop),
        )
        .await;
        let client = client(client_config()).await;
        let started = Instant::now();
        let err = client
            .request(server.local_addr(), &key_delivery(10))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        let stats = client.stats().await;
        assert_eq!(stats.retransmissions, 4, "MAX_RETRANSMIT");
        assert_eq!(stats.timeouts, 1);
        // 20 ms × (1 + 2 + 4 + 8 + 16) = 620 ms at least, 930 ms at most
        // with the random factor.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(620), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn block1_upload_of_10_kib() {
    within(10, async {
        let (server, calls) = counting_server(
            ServerConfig::new(loopback_any_port()).with_settings(fast_server_settings()),
        )
        .await;
        let client = client(client_config()).await;
        let req = key_delivery(10 * 1024);
        let resp = client.request(server.local_addr(), &req).await.unwrap();
        assert_eq!(resp.code(), ResponseCode::CHANGED);
        let mut expected = req.payload().to_vec();
        expected.reverse();
        // 10 KiB up in ten Block1 blocks, 10 KiB back in ten Block2 blocks.
        assert_eq!(resp.payload(), &expected[..]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let s = server.stats();
        assert_eq!(s.blocks_received, 10);
        assert_eq!(s.blocks_served, 9);
        let c = client.stats().await;
        assert_eq!(c.blocks_sent, 10);
        assert_eq!(c.blocks_received, 10);
        assert_eq!(c.retransmissions, 0);
    })
    .await;
}

#[tokio::test]
async fn block2_download_of_10_kib() {
    within(10, async {
        let (server, calls) = counting_server(
            ServerConfig::new(loopback_any_port()).with_settings(fast_server_settings()),
        )
        .await;
        let client = client(client_config()).await;
        let resp = client
            .request(server.local_addr(), &Request::get("pull/big").unwrap())
            .await
            .unwrap();
        assert_eq!(resp.code(), ResponseCode::CONTENT);
        assert_eq!(resp.content_format(), Some(ContentFormat::COSE_SIGN1));
        assert_eq!(resp.payload(), &pattern(10 * 1024)[..]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "later blocks come from the cache"
        );
        assert_eq!(server.stats().blocks_served, 9);
    })
    .await;
}

/// Drops every `n`-th datagram in both directions.
#[derive(Debug)]
struct DropEvery {
    n: u64,
    count: AtomicU64,
    dropped: AtomicU64,
}

impl DatagramFilter for DropEvery {
    fn drop_datagram(&self, _direction: Direction, _datagram: &[u8]) -> bool {
        let c = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let drop = c.is_multiple_of(self.n);
        if drop {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        drop
    }
}

#[tokio::test]
async fn block_wise_both_ways_under_loss() {
    within(20, async {
        let server_loss = Arc::new(DropEvery {
            n: 5,
            count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let client_loss = Arc::new(DropEvery {
            n: 7,
            count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (server, calls) = counting_server(
            ServerConfig::new(loopback_any_port())
                .with_settings(fast_server_settings())
                .with_fault_injection(server_loss.clone()),
        )
        .await;
        let client = client(client_config().with_fault_injection(client_loss.clone())).await;
        let req = key_delivery(10 * 1024 + 333);
        let resp = client.request(server.local_addr(), &req).await.unwrap();
        let mut expected = req.payload().to_vec();
        expected.reverse();
        assert_eq!(resp.payload(), &expected[..]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(server_loss.dropped.load(Ordering::SeqCst) > 0);
        assert!(client_loss.dropped.load(Ordering::SeqCst) > 0);
        assert!(client.stats().await.retransmissions > 0);
    })
    .await;
}

#[tokio::test]
async fn server_with_smaller_blocks_steers_the_client() {
    within(10, async {
        let settings = ServerSettings {
            block_size: BlockSize::B256,
            ..fast_server_settings()
        };
        let (server, _calls) =
            counting_server(ServerConfig::new(loopback_any_port()).with_settings(settings)).await;
        let client = client(client_config()).await;
        let req = key_delivery(3000);
        let resp = client.request(server.local_addr(), &req).await.unwrap();
        let mut expected = req.payload().to_vec();
        expected.reverse();
        assert_eq!(resp.payload(), &expected[..]);
        // One 1024-byte block, then 256-byte blocks: 1 + ceil(1976 / 256) = 9.
        assert_eq!(server.stats().blocks_received, 9);
        // The response comes in 256-byte blocks: ceil(3000 / 256) = 12.
        assert_eq!(client.stats().await.blocks_received, 12);
    })
    .await;
}

#[tokio::test]
async fn body_limits_are_enforced() {
    within(10, async {
        let settings = ServerSettings {
            max_body: 4096,
            ..fast_server_settings()
        };
        let (server, calls) =
            counting_server(ServerConfig::new(loopback_any_port()).with_settings(settings)).await;
        let client = client(client_config()).await;
        let resp = client
            .request(server.local_addr(), &key_delivery(5000))
            .await
            .unwrap();
        assert_eq!(resp.code(), ResponseCode::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        // And a client refuses a response body above its own limit.
        let (server, _) = counting_server(
            ServerConfig::new(loopback_any_port()).with_settings(fast_server_settings()),
        )
        .await;
        let small = client_config().with_max_body(4096);
        let client = CoapClient::bind_with_rng(small, TestRng::new(1))
            .await
            .unwrap();
        let err = client
            .request(server.local_addr(), &Request::get("pull/big").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn ipv6_loopback() {
    within(10, async {
        let bind: SocketAddr = "[::1]:0".parse().unwrap();
        let (server, _) =
            counting_server(ServerConfig::new(bind).with_settings(fast_server_settings())).await;
        let client = client(ClientConfig::new(bind).with_params(fast_params())).await;
        let resp = client
            .request(server.local_addr(), &Request::get("pull/big").unwrap())
            .await
            .unwrap();
        assert_eq!(resp.payload().len(), 10 * 1024);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Message-level rules, checked with a raw socket on one side
// ---------------------------------------------------------------------------

async fn raw_exchange(server: SocketAddr, datagram: &[u8]) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(datagram, server).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from) = within(5, sock.recv_from(&mut buf)).await.unwrap();
    assert_eq!(from, server);
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn ping_gets_a_reset() {
    let (server, calls) = counting_server(ServerConfig::new(loopback_any_port())).await;
    let reply = raw_exchange(server.local_addr(), &[0x40, 0x00, 0xbe, 0xef]).await;
    assert_eq!(reply, [0x70, 0x00, 0xbe, 0xef]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unparseable_confirmable_gets_a_reset() {
    let (server, _) = counting_server(ServerConfig::new(loopback_any_port())).await;
    // CON GET, option delta nibble 15 (reserved).
    let reply = raw_exchange(server.local_addr(), &[0x40, 0x01, 0x12, 0x34, 0xf0]).await;
    assert_eq!(reply, [0x70, 0x00, 0x12, 0x34]);
    assert_eq!(server.stats().malformed, 1);
}

#[tokio::test]
async fn unknown_critical_option_gets_4_02() {
    let (server, calls) = counting_server(ServerConfig::new(loopback_any_port())).await;
    // CON POST, token 0xaa, option 9 (OSCORE, critical) with a 1-byte value.
    let reply = raw_exchange(
        server.local_addr(),
        &[0x41, 0x02, 0x00, 0x07, 0xaa, 0x91, 0x00],
    )
    .await;
    // ACK, 4.02, same id and token.
    assert_eq!(reply, [0x61, 0x82, 0x00, 0x07, 0xaa]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn non_request_gets_a_non_response_and_duplicates_are_dropped() {
    let (server, calls) = counting_server(ServerConfig::new(loopback_any_port())).await;
    // NON GET /pull/nothing, token 0x01 0x02.
    let mut req = vec![0x52, 0x01, 0x00, 0x09, 0x01, 0x02];
    req.extend_from_slice(&[0xb4]);
    req.extend_from_slice(b"pull");
    req.extend_from_slice(&[0x07]);
    req.extend_from_slice(b"nothing");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&req, server.local_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = within(5, sock.recv_from(&mut buf)).await.unwrap();
    let reply = &buf[..n];
    assert_eq!(reply[0], 0x52, "NON, token length 2");
    assert_eq!(reply[1], 0x84, "4.04");
    assert_eq!(&reply[4..6], &[0x01, 0x02]);

    // The same datagram again from the same endpoint: silently dropped
    // (RFC 7252 §4.5).
    sock.send_to(&req, server.local_addr()).await.unwrap();
    let silent = tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await;
    assert!(silent.is_err(), "a duplicate NON must not be answered");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats().duplicates, 1);
}

/// A hand-rolled peer that answers the first request with an empty ACK and
/// then a separate confirmable response, expecting our ACK for it.
#[tokio::test]
async fn separate_response_is_acknowledged() {
    within(10, async {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let (n, from) = peer.recv_from(&mut buf).await.unwrap();
            let req = &buf[..n];
            let tkl = usize::from(req[0] & 0x0f);
            let token = req[4..4 + tkl].to_vec();
            // Empty ACK.
            peer.send_to(&[0x60, 0x00, req[2], req[3]], from)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            // CON 2.05, own message id 0x7777, same token, payload "late".
            let mut resp = vec![0x40 | tkl as u8, 0x45, 0x77, 0x77];
            resp.extend_from_slice(&token);
            resp.push(0xff);
            resp.extend_from_slice(b"late");
            peer.send_to(&resp, from).await.unwrap();
            let (n, _) = peer.recv_from(&mut buf).await.unwrap();
            buf[..n].to_vec()
        });
        let client = client(client_config()).await;
        let resp = client
            .request(peer_addr, &Request::get("pull/x").unwrap())
            .await
            .unwrap();
        assert_eq!(resp.code(), ResponseCode::CONTENT);
        assert_eq!(resp.payload(), b"late");
        let ack = fake.await.unwrap();
        assert_eq!(
            ack,
            [0x60, 0x00, 0x77, 0x77],
            "empty ACK for the separate response"
        );
    })
    .await;
}

#[tokio::test]
async fn reset_ends_the_exchange() {
    within(10, async {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let (_, from) = peer.recv_from(&mut buf).await.unwrap();
            peer.send_to(&[0x70, 0x00, buf[2], buf[3]], from)
                .await
                .unwrap();
        });
        let client = client(client_config()).await;
        let err = client
            .request(peer_addr, &Request::get("x").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Reset), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn replies_from_another_address_are_ignored() {
    within(10, async {
        // The "server" answers from a different socket: the client must not
        // take that as the response (RFC 7252 §5.3.2) and times out.
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = peer.recv_from(&mut buf).await.unwrap();
                let tkl = usize::from(buf[0] & 0x0f);
                let mut resp = vec![0x60 | tkl as u8, 0x45, buf[2], buf[3]];
                resp.extend_from_slice(&buf[4..4 + tkl]);
                let _ = n;
                other.send_to(&resp, from).await.unwrap();
            }
        });
        let client = client(client_config()).await;
        let err = client
            .request(peer_addr, &Request::get("x").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
    })
    .await;
}

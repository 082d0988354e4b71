#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]
//! Shared test helpers: fast timing, free ports, time limits, and the
//! loopback-pinned raw multicast socket used to inject hand-made datagrams.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use sealcast_coap::{ServerSettings, TransmissionParams};

/// RFC 7252 timing shrunk 100×: ACK_TIMEOUT 20 ms, factor 1.5,
/// MAX_RETRANSMIT 4, MAX_LATENCY 1 s.
pub fn fast_params() -> TransmissionParams {
    TransmissionParams::new(Duration::from_millis(20), 1.5, 4, Duration::from_secs(1)).unwrap()
}

pub fn fast_server_settings() -> ServerSettings {
    ServerSettings {
        params: fast_params(),
        ..ServerSettings::default()
    }
}

/// A port that was free a moment ago on 127.0.0.1 for UDP **and** TCP:
/// aiocoap's server context also opens CoAP-over-TCP on the port it is
/// given, and a port free for UDP alone may be some TCP connection's
/// ephemeral port (it happened in CI while other tests held many).
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 100 tries");
}

pub fn loopback_any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `fut`, failing the test if it takes longer than `secs`.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test step timed out")
}

/// A raw IPv4 multicast sender pinned to loopback: IP_MULTICAST_IF
/// 127.0.0.1, TTL 1, loop on, bound to 127.0.0.1. For datagrams the
/// library would never send (duplicates, confirmables, garbage).
pub fn raw_loopback_multicast_sender() -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s.set_multicast_ttl_v4(1).unwrap();
    s.set_multicast_loop_v4(true).unwrap();
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    s.into()
}

/// Deterministic pattern bytes (the same as tests/aiocoap/server.py's).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7) % 251) as u8).collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

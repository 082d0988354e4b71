#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Acknowledgements queued together go out together (issue #16, item 3):
//! a runtime that acknowledges a batch at once (a DAP after persisting 64
//! windows) used to cost one write per PUBACK, because rumqttc flushes every
//! request on its own. A TCP relay between the client and the embedded
//! broker, reading on threads of its own, records what crosses it: the
//! PUBACKs of 64 messages acknowledged in one go reach the broker in at
//! most two writes, in exactly the order the PUBLISHes arrived, every one
//! of them; and the broker, having its slots back, delivers the next
//! message. On the embedded broker and (with `SEALCAST_MQTT_URL`) on
//! Mosquitto.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sealcast_mqtt::{Bytes, EmbeddedBroker, TopicFilter};

/// What crossed the relay: the client's writes as the relay read them
/// (one entry per read), and the broker's bytes.
#[derive(Default)]
struct Seen {
    to_broker: Vec<Vec<u8>>,
    to_client: Vec<u8>,
}

/// Relays one connection at a time from a loopback port to `upstream`,
/// recording both directions. Threads, not tasks: each read returns as soon
/// as the client's write arrives, whatever the test's runtime is doing.
fn relay(upstream: std::net::SocketAddr) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(broker) = TcpStream::connect(upstream) else {
                return;
            };
            client.set_nodelay(true).unwrap();
            broker.set_nodelay(true).unwrap();
            let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
            let (mut b_in, mut b_out) = (broker.try_clone().unwrap(), broker);
            let up = record.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = c_in.read(&mut buf) {
                    up.lock().unwrap().to_broker.push(buf[..n].to_vec());
                    if b_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = b_out.shutdown(Shutdown::Both);
            });
            let down = record.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = b_in.read(&mut buf) {
                    down.lock().unwrap().to_client.extend_from_slice(&buf[..n]);
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    (port, seen)
}

/// One MQTT 3.1.1 packet: its type, packet id where it has one at a known
/// place (PUBLISH with QoS > 0, PUBACK), and the relay read it ended in.
#[derive(Debug)]
struct Packet {
    kind: u8,
    pkid: Option<u16>,
    read: usize,
}

/// Splits a byte stream, given as reads, into packets.
fn packets(reads: &[Vec<u8>]) -> Vec<Packet> {
    let mut bytes = Vec::new();
    let mut read_of = Vec::new();
    for (i, r) in reads.iter().enumerate() {
        bytes.extend_from_slice(r);
        read_of.extend(std::iter::repeat_n(i, r.len()));
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes[at];
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            let Some(&b) = bytes.get(i) else { return out };
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = i + len;
        if end > bytes.len() {
            return out;
        }
        let body = &bytes[i..end];
        let kind = header >> 4;
        let pkid = match kind {
            3 if header & 0x06 != 0 => {
                let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                Some(u16::from_be_bytes([body[2 + topic], body[3 + topic]]))
            }
            4 => Some(u16::from_be_bytes([body[0], body[1]])),
            _ => None,
        };
        out.push(Packet {
            kind,
            pkid,
            read: read_of[end - 1],
        });
        at = end;
    }
    out
}

/// The scenario against the broker at `broker` (its address and URL):
/// `messages` delivered, held, then acknowledged in one go.
async fn acks_in_one_write(broker: std::net::SocketAddr, url: &str, messages: usize) {
    let (port, seen) = relay(broker);
    let id = unique("ackbatch");
    let topic = format!("{id}/reports");
    let rx_cfg = config(&format!("mqtt://127.0.0.1:{port}"), &format!("{id}-rx"))
        .with_subscription(TopicFilter::new(&topic).unwrap())
        .with_incoming_capacity(256);
    let (_rx_client, mut inbox) = connect(rx_cfg).await;
    let (tx_client, _tx_inbox) = connect(config(url, &format!("{id}-tx"))).await;

    for i in 0..messages {
        tx_client
            .publish(topic.clone(), Bytes::from(vec![i as u8; 8]))
            .await
            .unwrap();
    }
    let mut tokens = Vec::new();
    for i in 0..messages {
        let m = next(&mut inbox).await;
        assert_eq!(
            m.payload.as_ref(),
            &[i as u8; 8][..],
            "message {i} out of order"
        );
        tokens.push(m.ack);
    }
    // What a DAP does after persisting a batch: acknowledge all of it.
    for t in tokens {
        t.ack().await.unwrap();
    }

    let deadline = Instant::now() + STEP;
    let (published, acked) = loop {
        let (published, acked) = {
            let s = seen.lock().unwrap();
            let down = packets(std::slice::from_ref(&s.to_client));
            let up = packets(&s.to_broker);
            let published: Vec<u16> = down
                .iter()
                .filter(|p| p.kind == 3)
                .filter_map(|p| p.pkid)
                .collect();
            let acked: Vec<(u16, usize)> = up
                .iter()
                .filter(|p| p.kind == 4)
                .map(|p| (p.pkid.unwrap(), p.read))
                .collect();
            (published, acked)
        };
        if acked.len() >= messages || Instant::now() > deadline {
            break (published, acked);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(published.len(), messages, "PUBLISHes seen by the relay");
    let acked_ids: Vec<u16> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        acked_ids, published,
        "every message acknowledged once, in the order it arrived"
    );
    let mut writes: Vec<usize> = acked.iter().map(|(_, read)| *read).collect();
    writes.dedup();
    assert!(
        writes.len() <= 2,
        "{messages} acknowledgements queued together reached the broker in {} reads",
        writes.len()
    );

    // The broker has its in-flight slots back: the next message arrives.
    tx_client
        .publish(topic.clone(), Bytes::from_static(b"after"))
        .await
        .unwrap();
    let m = next(&mut inbox).await;
    assert_eq!(m.payload.as_ref(), b"after");
    m.ack.ack().await.unwrap();
}

#[tokio::test]
async fn acknowledgements_queued_together_go_out_in_one_write_in_order() {
    let broker = tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap();
    acks_in_one_write(broker.addr(), &broker.url(), 64).await;
}

/// The same through Mosquitto (`SEALCAST_MQTT_URL`; CI runs it), a broker
/// we did not write: it takes the PUBACKs written together. 16 messages:
/// Mosquitto sends at most 20 unacknowledged by default.
#[tokio::test]
async fn acknowledgements_in_one_write_through_mosquitto() {
    let Some(url) = sealcast_testkit::require(
        "SEALCAST_MQTT_URL",
        "acknowledgements_in_one_write_through_mosquitto",
        "an MQTT broker such as Mosquitto (CI: mqtt://127.0.0.1:1883)",
    ) else {
        return;
    };
    let addr = url
        .strip_prefix("mqtt://")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .expect("SEALCAST_MQTT_URL as mqtt://127.0.0.1:<port>");
    assert!(addr.ip().is_loopback(), "tests talk to loopback only");
    acks_in_one_write(addr, &url, 16).await;
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! One sealcast broadcast to several receivers over IPv4 multicast on the
//! loopback interface.
//!
//! Every multicast socket here is pinned to loopback: the sender sets
//! IP_MULTICAST_IF 127.0.0.1, TTL 1 and loopback on; receivers join on
//! 127.0.0.1. Nothing leaves the machine. The port is a free high port, not
//! 5683, so parallel runs and real CoAP nodes do not collide.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{free_udp_port, raw_loopback_multicast_sender, within};
use sealcast_coap::{
    ALL_COAP_NODES_V4, ContentFormat, Error, MulticastConfig, MulticastInterface,
    MulticastReceiver, MulticastSender,
};
use sealcast_core::Error as CoreError;
use sealcast_core::broadcast::{BroadcastReceiver, ReplayPolicy, seal_broadcast};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::testrng::TestRng;

const NOW: UnixMillis = UnixMillis::new(1_704_067_200_000);
const RECEIVERS: usize = 4;

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
async fn one_broadcast_reaches_every_receiver_once() {
    within(20, async {
        // A group with one authorized signer, keys from a seeded generator.
        let mut rng = TestRng::new(2024);
        let agent = EntityCredential::generate(EntityId::new("agent-a").unwrap(), &mut rng);
        let material = GroupKeyMaterial::generate(
            GroupId::new(b"lights-3").unwrap(),
            Epoch::new(1),
            AeadAlg::A128Gcm,
            vec![AuthorizedSigner {
                sender_id: SenderId::new([0x01]).unwrap(),
                entity: agent.id().clone(),
                verifying_key: agent.signing_key().verifying_key(),
            }],
            None,
            &mut rng,
        )
        .unwrap();
        let ctx = GroupContext::new(&material).unwrap();
        let target = "grp/lights-3/cmd";
        let command = seal_broadcast(
            &ctx,
            agent.id(),
            agent.signing_key(),
            SeqNum::new(1).unwrap(),
            NOW,
            target,
            b"switch on",
        )
        .unwrap();
        let content_format = ContentFormat::of_tagged_cose(&command).unwrap();
        assert_eq!(content_format, ContentFormat::COSE_ENCRYPT0);

        // Several receivers on this host share the group and port.
        let config = loopback_group(free_udp_port());
        let mut receivers = Vec::new();
        for _ in 0..RECEIVERS {
            let socket = MulticastReceiver::join(config.clone()).await.unwrap();
            let opener = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
            receivers.push((socket, opener));
        }

        let sender = MulticastSender::bind(config.clone()).await.unwrap();
        assert_eq!(
            sender.local_addr().unwrap().ip(),
            IpAddr::from([127, 0, 0, 1]),
            "the sender is bound to loopback"
        );
        sender.send(target, content_format, &command).await.unwrap();

        for (socket, opener) in &mut receivers {
            let got = within(5, socket.recv()).await.unwrap();
            assert_eq!(got.path(), target);
            assert_eq!(got.content_format(), Some(ContentFormat::COSE_ENCRYPT0));
            let opened = opener.open(got.payload(), &got.path(), NOW).unwrap();
            assert_eq!(opened.payload, b"switch on");
            assert_eq!(&opened.signer, agent.id());
        }
        // Each receiver got it exactly once.
        for (socket, _) in &mut receivers {
            let more = tokio::time::timeout(Duration::from_millis(200), socket.recv()).await;
            assert!(more.is_err(), "a second delivery");
            assert_eq!(socket.stats().delivered, 1);
        }

        // Sent again (a fresh CoAP message, so not a CoAP duplicate): every
        // receiver gets it, and the COSE replay window refuses it.
        sender.send(target, content_format, &command).await.unwrap();
        for (socket, opener) in &mut receivers {
            let got = within(5, socket.recv()).await.unwrap();
            let err = opener.open(got.payload(), &got.path(), NOW).unwrap_err();
            assert!(matches!(err, CoreError::Replay(_)), "{err:?}");
        }
    })
    .await;
}

/// A NON POST to grp/cmd with Content-Format 16 and `payload`, by hand.
fn non_post(mid: u16, payload: &[u8]) -> Vec<u8> {
    let [m0, m1] = mid.to_be_bytes();
    let mut d = vec![0x50, 0x02, m0, m1];
    d.push(0xb3);
    d.extend_from_slice(b"grp");
    d.push(0x03);
    d.extend_from_slice(b"cmd");
    d.extend_from_slice(&[0x11, 0x10]);
    d.push(0xff);
    d.extend_from_slice(payload);
    d
}

#[tokio::test]
async fn receivers_drop_duplicates_confirmables_and_garbage() {
    within(20, async {
        let port = free_udp_port();
        let mut receiver = MulticastReceiver::join(loopback_group(port)).await.unwrap();
        let raw = raw_loopback_multicast_sender();
        let group = (ALL_COAP_NODES_V4, port);

        let mut confirmable = non_post(0x0a0a, b"con");
        confirmable[0] = 0x40;
        // Block1 (27, critical) right after Content-Format: delta 15 → 13 + 2.
        let mut blockwise = vec![0x50, 0x02, 0x0b, 0x0b, 0xb3];
        blockwise.extend_from_slice(b"grp");
        blockwise.extend_from_slice(&[0x11, 0x10, 0xd1, 0x02, 0x08, 0xff, 0xd0]);
        for d in [
            vec![0xff; 40],
            confirmable,
            blockwise,
            non_post(0x0001, b"first"),
            non_post(0x0001, b"first"),
            non_post(0x0002, b"second"),
        ] {
            raw.send_to(&d, group).unwrap();
        }

        let a = within(5, receiver.recv()).await.unwrap();
        assert_eq!(a.payload(), b"first");
        assert_eq!(a.path(), "grp/cmd");
        let b = within(5, receiver.recv()).await.unwrap();
        assert_eq!(b.payload(), b"second");
        let s = receiver.stats();
        assert_eq!(s.delivered, 2);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.rejected, 3);
    })
    .await;
}

#[tokio::test]
async fn configuration_guards() {
    let unicast = MulticastConfig::new(
        IpAddr::from([127, 0, 0, 1]),
        MulticastInterface::LOOPBACK_V4,
    );
    assert!(matches!(unicast, Err(Error::Config(_))));
    let mixed = MulticastConfig::new(
        IpAddr::V4(ALL_COAP_NODES_V4),
        MulticastInterface::V6 { index: 1 },
    );
    assert!(matches!(mixed, Err(Error::Config(_))));
    assert!(loopback_group(1).with_hops(256).is_err());

    // A group command must fit one datagram.
    let sender = MulticastSender::bind(loopback_group(free_udp_port()))
        .await
        .unwrap();
    let err = sender
        .send("grp/cmd", ContentFormat::COSE_ENCRYPT0, &[0u8; 2000])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
}

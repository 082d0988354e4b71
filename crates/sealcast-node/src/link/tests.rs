//! The link on CoAP: answers held until processed, deferred and in any
//! order, unicast by address book, group channels by pinned multicast,
//! relays.

use super::*;
use sealcast_coap::{ClientConfig, CoapClient, ContentFormat, Request, TransmissionParams};

const WAIT: Duration = Duration::from_secs(10);

fn entity(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

async fn coap_link(id: &str, config: &CoapLinkConfig, multicast: bool) -> (Link, Inbox) {
    Link::connect(
        &entity(id),
        &LinkConfig::Coap(config.clone()),
        TopicScheme::new(),
        Interest {
            multicast,
            ..Interest::default()
        },
    )
    .await
    .unwrap()
}

async fn next(inbox: &mut Inbox) -> Incoming {
    tokio::time::timeout(WAIT, inbox.next_message())
        .await
        .expect("a message in time")
        .expect("the link is open")
}

async fn raw_client() -> CoapClient {
    let params =
        TransmissionParams::new(Duration::from_millis(200), 1.5, 4, Duration::from_secs(1))
            .unwrap();
    CoapClient::bind(ClientConfig::new("127.0.0.1:0".parse().unwrap()).with_params(params))
        .await
        .unwrap()
}

#[test]
fn loopback_config_is_pinned() {
    let c = CoapLinkConfig::loopback(40_000, AddressBook::new()).unwrap();
    assert_eq!(c.interface, MulticastInterface::LOOPBACK_V4);
    assert!(c.group.ip().is_multicast());
    assert!(c.listen.ip().is_loopback());
    let m = c.multicast().unwrap();
    assert_eq!(m.interface(), MulticastInterface::LOOPBACK_V4);
    assert_eq!(m.port(), 40_000);
}

#[tokio::test]
async fn the_response_is_the_acknowledgement_and_waits_for_it() {
    let config =
        CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
    let (link, mut inbox) = coap_link("door-1", &config, false).await;
    let endpoint = link.endpoint().unwrap();
    assert_eq!(config.book.get(&entity("door-1")), Some(endpoint));

    let client = Arc::new(raw_client().await);
    let target = "sealcast/v1/d/door-1/delivery";
    let request = Request::post(target, ContentFormat::COSE_SIGN1, vec![0xd2, 0x84, 1, 2]).unwrap();
    let c = Arc::clone(&client);
    let exchange = tokio::spawn(async move { c.request(endpoint, &request).await });
    let m = next(&mut inbox).await;
    assert_eq!(m.target, target);
    assert_eq!(&m.payload[..], &[0xd2, 0x84, 1, 2]);
    // Not answered (and retransmitted meanwhile) until the runtime acks.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!exchange.is_finished());
    m.ack.ack().await;
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.code(), ResponseCode::CHANGED);
    // The retransmissions were answered from the cache, not delivered again.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.next_message())
            .await
            .is_err()
    );
    assert!(client.stats().await.retransmissions >= 1);
}

#[tokio::test]
async fn deliver_once_answers_after_open_and_refuses_opaquely() {
    let config =
        CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
    let (link, mut inbox) = coap_link("door-2", &config, false).await;
    let endpoint = link.endpoint().unwrap();
    let client = Arc::new(raw_client().await);
    let send = |payload: Vec<u8>| {
        let c = Arc::clone(&client);
        tokio::spawn(async move {
            let r = Request::post(
                "sealcast/v1/g/01/cmd",
                ContentFormat::COSE_ENCRYPT0,
                payload,
            )
            .unwrap();
            c.request(endpoint, &r).await.unwrap()
        })
    };

    // Opened: 2.04, and `open` saw the target and bytes.
    let x = send(vec![0xd0, 1]);
    let d = deliver_once(next(&mut inbox).await, |target, bytes| {
        assert_eq!(target, "sealcast/v1/g/01/cmd");
        Ok::<_, sealcast_core::Error>(bytes.len())
    })
    .await;
    assert!(matches!(d, Delivery::Executed { value: 2 }));
    assert_eq!(x.await.unwrap().code(), ResponseCode::CHANGED);

    // A replay: acknowledged (2.04) and dropped.
    let x = send(vec![0xd0, 2]);
    let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
        Err(sealcast_core::Error::Replay(ReplayKind::Duplicate))
    })
    .await;
    assert!(matches!(d, Delivery::Duplicate { .. }));
    assert_eq!(x.await.unwrap().code(), ResponseCode::CHANGED);

    // Garbage: 4.00 without a diagnostic payload.
    let x = send(vec![0xd0, 3]);
    let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
        Err(sealcast_core::Error::DecryptFailed)
    })
    .await;
    assert!(matches!(d, Delivery::Rejected { .. }));
    let r = x.await.unwrap();
    assert_eq!(r.code(), ResponseCode::BAD_REQUEST);
    assert!(r.payload().is_empty());

    // A newer epoch: held back, answered when the caller decides.
    let x = send(vec![0xd0, 4]);
    let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
        Err(sealcast_core::Error::FutureEpoch)
    })
    .await;
    let Delivery::Deferred { incoming, .. } = d else {
        panic!("deferred expected");
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!x.is_finished());
    incoming.ack.ack().await;
    assert_eq!(x.await.unwrap().code(), ResponseCode::CHANGED);

    // Opened but not saved: not acknowledged; CoAP cannot hold it, and
    // dropping it answers 5.03 so that the sender retries.
    let x = send(vec![0xd0, 5]);
    let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
        Err(OpenError::NotSaved("no space left".into()))
    })
    .await;
    let Delivery::NotSaved { incoming, reason } = d else {
        panic!("not saved expected");
    };
    assert_eq!(reason, "no space left");
    assert!(!incoming.can_wait());
    drop(incoming);
    assert_eq!(x.await.unwrap().code(), ResponseCode::SERVICE_UNAVAILABLE);

    // Only POST is served.
    let r = client
        .request(endpoint, &Request::get("sealcast/v1/d/door-2/ack").unwrap())
        .await
        .unwrap();
    assert_eq!(r.code(), ResponseCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unicast_by_address_book_and_group_channels_by_pinned_multicast() {
    let config =
        CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
    let (manager, mut manager_inbox) = coap_link("manager", &config, false).await;
    let (device, mut device_inbox) = coap_link("sensor-1", &config, true).await;
    let (other, mut other_inbox) = coap_link("sensor-2", &config, true).await;
    assert_eq!(config.book.len(), 3);

    // An ack to the manager: CON to its endpoint, target = Uri-Path.
    let target = device.topics().device(
        &entity("sensor-1"),
        sealcast_core::target::DeviceChannel::Ack,
    );
    device
        .send_to(&entity("manager"), target.clone(), vec![0xd2, 9])
        .await
        .unwrap();
    let m = next(&mut manager_inbox).await;
    assert_eq!(m.target, target);
    assert_eq!(&m.payload[..], &[0xd2, 9]);
    m.ack.ack().await;

    // A group command: NON to the group, heard by every joined link
    // (the sender's own included: loopback is on), not by the manager.
    let group = GroupId::new(b"fire-doors").unwrap();
    other
        .publish_group(&group, GroupChannel::Command, vec![0xd0, 7])
        .await
        .unwrap();
    let expected = TopicScheme::new().group(&group, GroupChannel::Command);
    for inbox in [&mut device_inbox, &mut other_inbox] {
        let m = next(inbox).await;
        assert_eq!(m.target, expected);
        assert_eq!(&m.payload[..], &[0xd0, 7]);
        m.ack.ack().await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), manager_inbox.next_message())
            .await
            .is_err()
    );

    // Nobody listens at an unknown entity.
    assert!(
        manager
            .send_to(&entity("nobody"), target, vec![1])
            .await
            .is_err()
    );
    // A closed link stops answering.
    device.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_relay_forwards_on_coap() {
    let config =
        CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
    let (gateway, _gw_inbox) = coap_link("gateway", &config, false).await;
    let (_door, mut door_inbox) = coap_link("door-3", &config, false).await;
    let target = "sealcast/v1/d/door-3/delivery".to_owned();
    gateway
        .relay(
            &entity("door-3"),
            target.clone(),
            Bytes::from_static(&[0xd2, 5]),
        )
        .await
        .unwrap();
    let m = next(&mut door_inbox).await;
    assert_eq!(m.target, target);
    m.ack.ack().await;
}

#[tokio::test]
async fn many_requests_stay_open_at_once_and_are_answered_in_any_order() {
    let config =
        CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
    let (link, mut inbox) = coap_link("dap-1", &config, false).await;
    let endpoint = link.endpoint().unwrap();
    let mut exchanges = Vec::new();
    for i in 0..8u8 {
        let client = raw_client().await;
        exchanges.push(tokio::spawn(async move {
            let r = Request::post(
                "sealcast/v1/a/dap-1/report",
                ContentFormat::COSE_SIGN1,
                vec![0xd2, i],
            )
            .unwrap();
            client.request(endpoint, &r).await.unwrap()
        }));
    }
    // All eight reach the runtime before any is answered: the server
    // does not wait on the runtime.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(next(&mut inbox).await);
    }
    assert!(exchanges.iter().all(|x| !x.is_finished()));
    // Answered last to first; one refused, one dropped unanswered.
    held.sort_by_key(|m| m.payload[1]);
    let dropped = held.remove(0);
    let refused = held.remove(0);
    for m in held.into_iter().rev() {
        m.ack.ack().await;
    }
    refused.ack.reject().await;
    drop(dropped);
    let mut codes = Vec::new();
    for x in exchanges {
        codes.push(tokio::time::timeout(WAIT, x).await.unwrap().unwrap().code());
    }
    assert_eq!(codes[0], ResponseCode::SERVICE_UNAVAILABLE);
    assert_eq!(codes[1], ResponseCode::BAD_REQUEST);
    assert!(codes[2..].iter().all(|c| *c == ResponseCode::CHANGED));
}

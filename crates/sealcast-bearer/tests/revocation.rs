#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! MSK delivery, revocation and MSK lifetime: a revoked device is locked
//! out of the bearer while the others keep reading it.

mod common;

use common::{Fleet, at, payload, topic};
use sealcast_bearer::{
    BearerReceiver, BearerSender, Error, FrameKind, MskId, Muk, ReceiverConfig, SenderConfig, peek,
};
use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::EntityId;

#[test]
fn a_revoked_device_is_locked_out_while_the_others_read_on() {
    let mut fleet = Fleet::new(10, 3, SenderConfig::default(), ReceiverConfig::default());
    let t = topic("sealcast/g/02/cmd");
    for i in 0..5 {
        for f in fleet.protect(&t, &payload(i), at(100)) {
            for rx in &mut fleet.receivers {
                rx.handle(&f, at(100)).unwrap();
            }
        }
    }
    let revoked = fleet.id(1);
    let deliveries = fleet
        .sender
        .revoke(&revoked, at(200), &mut fleet.rng)
        .unwrap();
    let new_msk = fleet.sender.active_msk_id();
    assert_eq!(new_msk, MskId::new(2));
    let recipients: Vec<_> = deliveries.iter().map(|d| d.device.clone()).collect();
    assert_eq!(recipients, vec![fleet.id(0), fleet.id(2)]);
    assert!(!fleet.sender.is_entitled(&revoked));

    // Another device's delivery is of no use to the revoked one.
    for d in &deliveries {
        assert_eq!(
            fleet.receivers[1].handle_msk_delivery(&d.bytes, at(200)),
            Err(Error::DecryptFailed)
        );
    }
    fleet.deliver(&deliveries, at(200));

    for i in 5..40 {
        for f in fleet.protect(&t, &payload(i), at(300)) {
            let info = peek(&f).unwrap();
            assert_eq!(info.msk_id, new_msk);
            for (r, rx) in fleet.receivers.iter_mut().enumerate() {
                let got = rx.handle(&f, at(300));
                if r == 1 {
                    assert_eq!(got, Err(Error::UnknownMsk(new_msk)));
                } else if info.kind == FrameKind::Data {
                    assert_eq!(got.unwrap().unwrap().payload, payload(i));
                } else {
                    assert_eq!(got, Ok(None));
                }
            }
        }
    }
    // The revoked device still holds only the old MSK.
    assert_eq!(
        fleet.receivers[1].msk_ids().collect::<Vec<_>>(),
        vec![MskId::new(1)]
    );
    assert_eq!(
        fleet.sender.revoke(&revoked, at(400), &mut fleet.rng),
        Err(Error::NotEntitled)
    );
}

#[test]
fn revocation_discards_a_prepared_msk_the_revoked_device_holds() {
    let mut fleet = Fleet::new(11, 3, SenderConfig::default(), ReceiverConfig::default());
    let t = topic("sealcast/g/02/cmd");
    let prepared = fleet.sender.prepare_msk(at(10), &mut fleet.rng).unwrap();
    fleet.deliver(&prepared, at(10)); // all three, the soon-revoked one too
    let prepared_id = prepared[0].msk_id;
    let deliveries = fleet
        .sender
        .revoke(&fleet.id(2), at(20), &mut fleet.rng)
        .unwrap();
    assert_eq!(fleet.sender.prepared_msk_id(), None);
    assert!(fleet.sender.active_msk_id() > prepared_id);
    assert_eq!(fleet.sender.activate_prepared_msk(), None);
    fleet.deliver(&deliveries, at(20));
    for i in 0..10 {
        for f in fleet.protect(&t, &payload(i), at(30)) {
            let got = fleet.receivers[2].handle(&f, at(30));
            assert_eq!(got, Err(Error::UnknownMsk(fleet.sender.active_msk_id())));
            assert!(fleet.receivers[0].handle(&f, at(30)).is_ok());
        }
    }
}

#[test]
fn frames_under_the_old_msk_are_refused_once_the_new_one_is_in_use() {
    // What the revoked device could still make (it knows the old MSK and
    // MTK) is modelled by frames under the old keys the others never saw.
    let mut fleet = Fleet::new(12, 2, SenderConfig::default(), ReceiverConfig::default());
    let t = topic("sealcast/g/02/cmd");
    let old_delivery = fleet
        .sender
        .redeliver(&fleet.id(0), &mut fleet.rng)
        .unwrap();
    let first = fleet.protect(&t, &payload(0), at(0));
    for f in &first {
        fleet.receivers[0].handle(f, at(0)).unwrap();
    }
    let unseen = fleet.protect(&t, &payload(1), at(0));
    let deliveries = fleet
        .sender
        .revoke(&fleet.id(1), at(10), &mut fleet.rng)
        .unwrap();
    fleet.deliver(&deliveries, at(10));
    // Before the new MSK is in use, old-MSK frames still open (in-flight
    // frames must not be lost) …
    assert!(
        fleet.receivers[0]
            .handle(&unseen[0], at(10))
            .unwrap()
            .is_some()
    );
    for f in fleet.protect(&t, &payload(2), at(20)) {
        fleet.receivers[0].handle(&f, at(20)).unwrap();
    }
    // … afterwards the old MSK is retired: its key frames and data frames
    // are refused as stale, and its delivery cannot bring it back.
    for f in first.iter().chain(&unseen) {
        assert_eq!(
            fleet.receivers[0].handle(f, at(20)),
            Err(Error::StaleMsk(MskId::new(1)))
        );
    }
    assert_eq!(fleet.receivers[0].msk_ids().count(), 1);
    assert_eq!(
        fleet.receivers[0].handle_msk_delivery(&old_delivery[0].bytes, at(20)),
        Err(Error::StaleMsk(MskId::new(1)))
    );
}

#[test]
fn a_receiver_keeps_a_bounded_number_of_msks() {
    let mut fleet = Fleet::new(15, 1, SenderConfig::default(), ReceiverConfig::default());
    let mut all = Vec::new();
    for _ in 0..4 {
        // Each preparation replaces the previous one with a new id.
        let d = fleet.sender.prepare_msk(at(0), &mut fleet.rng).unwrap();
        all.push(d[0].bytes.clone());
        fleet.deliver(&d, at(0));
    }
    // MSK 1 (from entitlement) and 2 were pushed out by 3, 4, 5.
    let ids: Vec<u32> = fleet.receivers[0].msk_ids().map(|m| m.get()).collect();
    assert_eq!(ids, vec![3, 4, 5]);
    assert_eq!(
        fleet.receivers[0].handle_msk_delivery(&all[0], at(0)),
        Err(Error::StaleMsk(MskId::new(2)))
    );
    // A repeated delivery of a kept MSK is a no-op.
    assert_eq!(
        fleet.receivers[0].handle_msk_delivery(&all[3], at(0)),
        Ok(MskId::new(5))
    );
    // The sender used MSK 1 until now; the receiver, which dropped it, picks
    // up the stream as soon as the prepared MSK 5 is active.
    assert_eq!(fleet.sender.activate_prepared_msk(), Some(MskId::new(5)));
    for f in fleet.protect(&topic("t"), b"x", at(1)) {
        fleet.receivers[0].handle(&f, at(1)).unwrap();
    }
}

#[test]
fn expired_msks_are_refused() {
    let cfg = SenderConfig {
        msk_lifetime_ms: 10_000,
        ..SenderConfig::default()
    };
    let rx_cfg = ReceiverConfig {
        clock_skew_ms: 1_000,
        ..ReceiverConfig::default()
    };
    let mut fleet = Fleet::new(13, 1, cfg, rx_cfg);
    let t = topic("sealcast/g/03/cmd");
    let frames = fleet.protect(&t, &payload(0), at(10_000));
    // The receiver's clock is within the skew: still accepted.
    assert!(fleet.receivers[0].handle(&frames[0], at(10_900)).is_ok());
    // Past lifetime + skew: refused, and the state is unchanged.
    assert_eq!(
        fleet.receivers[0].handle(&frames[1], at(11_001)),
        Err(Error::MskExpired(MskId::new(1)))
    );
    // The sender refuses to use an expired MSK …
    assert_eq!(
        fleet.sender.protect(&t, b"x", at(10_001), &mut fleet.rng),
        Err(Error::MskExpired(MskId::new(1)))
    );
    // … until it rotates; the receiver takes the new MSK and drops the old.
    let deliveries = fleet.sender.rotate_msk(at(10_001), &mut fleet.rng).unwrap();
    fleet.deliver(&deliveries, at(11_001));
    fleet.receivers[0].expire(at(11_001));
    assert_eq!(
        fleet.receivers[0].msk_ids().collect::<Vec<_>>(),
        vec![MskId::new(2)]
    );
    assert_eq!(
        fleet.receivers[0].handle(&frames[1], at(11_001)),
        Err(Error::StaleMsk(MskId::new(1)))
    );
    for f in fleet.protect(&t, &payload(1), at(11_001)) {
        fleet.receivers[0].handle(&f, at(11_001)).unwrap();
    }
    // A delivery that arrives after its MSK expired is refused.
    let late = fleet
        .sender
        .redeliver(&fleet.id(0), &mut fleet.rng)
        .unwrap();
    assert_eq!(
        fleet.receivers[0].handle_msk_delivery(&late[0].bytes, at(30_000)),
        Err(Error::MskExpired(MskId::new(2)))
    );
}

#[test]
fn deliveries_and_frames_of_another_service_are_refused() {
    let mut fleet = Fleet::new(14, 1, SenderConfig::default(), ReceiverConfig::default());
    let mut rng = sealcast_core::testrng::TestRng::new(99);
    let other = EntityCredential::generate(EntityId::new("other-svc").unwrap(), &mut rng);
    let dev = &fleet.devices[0];
    let mut other_sender = BearerSender::new(
        other.id().clone(),
        MskId::new(1),
        SenderConfig::default(),
        at(0),
        &mut rng,
    )
    .unwrap();
    let d = other_sender
        .entitle(Muk::for_service(&other, &dev.public()).unwrap(), &mut rng)
        .unwrap();
    // Same MSK id, other service: neither the delivery nor the frames open.
    assert_eq!(
        fleet.receivers[0].handle_msk_delivery(&d[0].bytes, at(0)),
        Err(Error::DecryptFailed)
    );
    let mut fresh = BearerReceiver::new(
        Muk::for_device(dev, &fleet.service.public()).unwrap(),
        ReceiverConfig::default(),
    )
    .unwrap();
    assert_eq!(
        fresh.handle_msk_delivery(&d[0].bytes, at(0)),
        Err(Error::DecryptFailed)
    );
    let frames = other_sender
        .protect(&topic("t"), b"x", at(0), &mut rng)
        .unwrap();
    assert_eq!(
        fleet.receivers[0].handle(&frames[0], at(0)),
        Err(Error::DecryptFailed)
    );

    // Entitlement errors.
    let dev_muk = Muk::for_service(&other, &dev.public()).unwrap();
    assert_eq!(
        fleet.sender.entitle(dev_muk, &mut rng),
        Err(Error::WrongService)
    );
    let again = Muk::for_service(&fleet.service, &dev.public()).unwrap();
    assert_eq!(
        fleet.sender.entitle(again, &mut rng),
        Err(Error::AlreadyEntitled)
    );
}

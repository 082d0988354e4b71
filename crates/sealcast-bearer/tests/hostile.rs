#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Hostile frames: unknown and stale key ids, replays, tampering, random
//! bytes and seeded mutations of valid frames. Nothing panics, nothing
//! forged is delivered, and a refused frame changes no state.

mod common;

use std::collections::BTreeMap;

use common::{Fleet, at, payload, topic};
use rand_core::Rng;
use sealcast_bearer::frame::{
    DATA_HEADER_LEN, KEY_FRAME_LEN, MAX_FRAME_LEN, MSK_DELIVERY_LEN, PADDING_BUCKETS,
};
use sealcast_bearer::{Error, FrameKind, MskId, MtkId, ReceiverConfig, SenderConfig, peek};
use sealcast_core::ReplayKind;
use sealcast_core::testrng::TestRng;

fn with_u32(frame: &[u8], at_byte: usize, v: u32) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[at_byte..at_byte + 4].copy_from_slice(&v.to_be_bytes());
    f
}

#[test]
fn unknown_and_stale_key_ids_are_rejected_without_state_change() {
    let cfg = SenderConfig {
        mtk_max_frames: 3,
        ..SenderConfig::default()
    };
    let mut fleet = Fleet::new(20, 1, cfg, ReceiverConfig::default());
    let t = topic("sealcast/g/05/cmd");
    let first = fleet.protect(&t, &payload(0), at(0)); // key frame + data, MTK 1
    let (key1, data1) = (&first[0], &first[1]);
    let rx = &mut fleet.receivers[0];

    // Data before its key frame: unknown MTK.
    assert_eq!(
        rx.handle(data1, at(0)),
        Err(Error::UnknownMtk(MtkId::new(1)))
    );
    // Unknown MSK ids, in a key frame and a data frame.
    assert_eq!(
        rx.handle(&with_u32(key1, 2, 9), at(0)),
        Err(Error::UnknownMsk(MskId::new(9)))
    );
    assert_eq!(
        rx.handle(&with_u32(data1, 2, 0xffff_ffff), at(0)),
        Err(Error::UnknownMsk(MskId::new(0xffff_ffff)))
    );
    // A key frame whose MTK id was edited: the header is authenticated.
    assert_eq!(
        rx.handle(&with_u32(key1, 6, 2), at(0)),
        Err(Error::DecryptFailed)
    );
    assert_eq!(rx.mtk_ids(MskId::new(1)).count(), 0);

    rx.handle(key1, at(0)).unwrap();
    // Edited counter, edited MTK id, edited ciphertext.
    assert_eq!(
        rx.handle(&with_u32(data1, 10, 1), at(0)),
        Err(Error::DecryptFailed)
    );
    assert_eq!(
        rx.handle(&with_u32(data1, 6, 5), at(0)),
        Err(Error::UnknownMtk(MtkId::new(5)))
    );
    let mut flipped = data1.clone();
    flipped[DATA_HEADER_LEN + 3] ^= 1;
    assert_eq!(rx.handle(&flipped, at(0)), Err(Error::DecryptFailed));
    // None of that changed anything: the genuine frame opens, once.
    assert_eq!(
        rx.handle(data1, at(0)).unwrap().unwrap().payload,
        payload(0)
    );
    assert_eq!(
        rx.handle(data1, at(0)),
        Err(Error::Replay(ReplayKind::Duplicate))
    );
    // A repeated key frame is a no-op and keeps the replay window.
    assert_eq!(rx.handle(key1, at(0)), Ok(None));
    assert_eq!(
        rx.handle(data1, at(0)),
        Err(Error::Replay(ReplayKind::Duplicate))
    );

    // Two rollovers later MTK 1 is retired: its frames are stale, and its
    // key frame cannot bring it back with a fresh replay window.
    for i in 1..7 {
        for f in fleet.protect(&t, &payload(i), at(0)) {
            fleet.receivers[0].handle(&f, at(0)).unwrap();
        }
    }
    let rx = &mut fleet.receivers[0];
    assert_eq!(
        rx.mtk_ids(MskId::new(1)).collect::<Vec<_>>(),
        vec![MtkId::new(2), MtkId::new(3)]
    );
    assert_eq!(rx.handle(key1, at(0)), Err(Error::StaleMtk(MtkId::new(1))));
    assert_eq!(rx.handle(data1, at(0)), Err(Error::StaleMtk(MtkId::new(1))));
}

#[test]
fn expired_mtks_are_refused() {
    let cfg = SenderConfig {
        mtk_lifetime_ms: 1_000,
        ..SenderConfig::default()
    };
    let rx_cfg = ReceiverConfig {
        clock_skew_ms: 500,
        ..ReceiverConfig::default()
    };
    let mut fleet = Fleet::new(24, 1, cfg, rx_cfg);
    let first = fleet.protect(&topic("t"), b"a", at(0));
    let second = fleet.protect(&topic("t"), b"b", at(10));
    let rx = &mut fleet.receivers[0];
    // A key frame that arrives after its MTK's lifetime and the skew.
    assert_eq!(
        rx.handle(&first[0], at(1_501)),
        Err(Error::MtkExpired(MtkId::new(1)))
    );
    assert_eq!(rx.handle(&first[0], at(1_500)), Ok(None));
    assert!(rx.handle(&first[1], at(1_500)).unwrap().is_some());
    assert_eq!(
        rx.handle(&second[0], at(1_501)),
        Err(Error::MtkExpired(MtkId::new(1)))
    );
    // Housekeeping drops it for good.
    rx.expire(at(1_501));
    assert_eq!(
        rx.handle(&second[0], at(1_501)),
        Err(Error::StaleMtk(MtkId::new(1)))
    );
    assert_eq!(
        rx.handle(&first[0], at(0)),
        Err(Error::StaleMtk(MtkId::new(1)))
    );
}

#[test]
fn wrong_kinds_sizes_and_versions_are_malformed() {
    let mut fleet = Fleet::new(21, 1, SenderConfig::default(), ReceiverConfig::default());
    let frames = fleet.protect(&topic("t"), b"x", at(0));
    let delivery = fleet
        .sender
        .redeliver(&fleet.id(0), &mut fleet.rng)
        .unwrap()
        .remove(0)
        .bytes;
    let rx = &mut fleet.receivers[0];
    assert!(matches!(
        rx.handle(&delivery, at(0)),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        rx.handle_msk_delivery(&frames[0], at(0)),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        rx.handle(&vec![1u8; MAX_FRAME_LEN + 1], at(0)),
        Err(Error::TooLarge { .. })
    ));
    for f in frames.iter().chain([&delivery]) {
        let mut v2 = f.clone();
        v2[0] = 2;
        assert!(matches!(rx.handle(&v2, at(0)), Err(Error::Malformed(_))));
        for cut in 0..f.len() {
            assert!(rx.handle(&f[..cut], at(0)).is_err());
            assert!(rx.handle_msk_delivery(&f[..cut], at(0)).is_err());
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(rx.handle(&longer, at(0)).is_err());
    }
    assert_eq!(frames[0].len(), KEY_FRAME_LEN);
    assert_eq!(delivery.len(), MSK_DELIVERY_LEN);
    // Peers learn nothing from a refusal.
    let e = rx.handle(&[], at(0)).unwrap_err();
    assert_eq!(e.peer_view().to_string(), "message rejected");
}

/// Random inputs, many of them with a valid version, kind and length so
/// that they reach the key lookups and the AEAD.
#[test]
fn thousands_of_random_frames_never_panic() {
    let mut fleet = Fleet::new(22, 1, SenderConfig::default(), ReceiverConfig::default());
    for f in fleet.protect(&topic("t"), b"x", at(0)) {
        fleet.receivers[0].handle(&f, at(0)).unwrap();
    }
    let mut rng = TestRng::new(0x5eed);
    let rx = &mut fleet.receivers[0];
    let lens: Vec<usize> = [0, 1, 2, 10, 14, KEY_FRAME_LEN, MSK_DELIVERY_LEN]
        .into_iter()
        .chain(
            PADDING_BUCKETS
                .iter()
                .take(3)
                .map(|b| DATA_HEADER_LEN + b + 16),
        )
        .collect();
    for i in 0..5_000u32 {
        let len = if i % 3 == 0 {
            (rng.next_u32() % 1200) as usize
        } else {
            lens[(rng.next_u32() as usize) % lens.len()]
        };
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        if len >= 6 && i % 2 == 0 {
            buf[0] = 1; // current version
            buf[1] = 1 + (rng.next_u32() % 3) as u8;
            buf[2..6].copy_from_slice(&1u32.to_be_bytes()); // the MSK it holds
            if len >= 10 && i % 4 == 0 {
                buf[6..10].copy_from_slice(&1u32.to_be_bytes()); // and the MTK
            }
        }
        let _ = peek(&buf);
        assert!(!matches!(rx.handle(&buf, at(0)), Ok(Some(_))));
        assert!(rx.handle_msk_delivery(&buf, at(0)).is_err());
    }
}

/// Seeded edits of valid frames (flip, set, insert, remove, truncate,
/// extend); an edited frame that still opens must be one that was sent.
#[test]
fn thousands_of_mutated_frames_never_panic_nor_deliver_forgeries() {
    let cfg = SenderConfig {
        mtk_max_frames: 8,
        key_frame_interval: 3,
        ..SenderConfig::default()
    };
    let mut fleet = Fleet::new(23, 1, cfg, ReceiverConfig::default());
    let t = topic("sealcast/g/06/report");
    let mut valid = Vec::new();
    let mut sent = BTreeMap::new();
    for i in 0..40 {
        for f in fleet.protect(&t, &payload(i), at(i as u64)) {
            let info = peek(&f).unwrap();
            if info.kind == FrameKind::Data {
                sent.insert((info.mtk_id, info.counter.unwrap()), payload(i));
            }
            valid.push(f);
        }
    }
    valid.extend(
        fleet
            .sender
            .redeliver(&fleet.id(0), &mut fleet.rng)
            .unwrap()
            .into_iter()
            .map(|d| d.bytes),
    );
    let mut rng = TestRng::new(0xbad);
    let rx = &mut fleet.receivers[0];
    let mut opened = 0;
    for i in 0..6_000usize {
        let mut f = valid[(rng.next_u32() as usize) % valid.len()].clone();
        for _ in 0..1 + rng.next_u32() % 4 {
            let pos = (rng.next_u32() as usize) % (f.len() + 1);
            match rng.next_u32() % 6 {
                0 if pos < f.len() => f[pos] ^= 1 << (rng.next_u32() % 8),
                1 if pos < f.len() => f[pos] = rng.next_u32() as u8,
                2 => f.insert(pos, rng.next_u32() as u8),
                3 if pos < f.len() => {
                    f.remove(pos);
                }
                4 => f.truncate(pos),
                _ => f.extend(std::iter::repeat_n(0, pos % 64)),
            }
        }
        let _ = peek(&f);
        let _ = rx.handle_msk_delivery(&f, at(i as u64 / 150));
        if let Ok(Some(d)) = rx.handle(&f, at(i as u64 / 150)) {
            assert_eq!(Some(&d.payload), sent.get(&(d.mtk_id, d.counter)));
            assert_eq!(d.topic, t);
            opened += 1;
        }
    }
    // The receiver is still healthy: valid frames it has not seen open.
    for i in 40..45 {
        for f in fleet.protect(&t, &payload(i), at(40)) {
            if let Some(d) = fleet.receivers[0].handle(&f, at(40)).unwrap() {
                assert_eq!(d.payload, payload(i));
                opened += 1;
            }
        }
    }
    assert!(opened >= 5);
}

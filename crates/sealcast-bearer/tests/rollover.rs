#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! MTK rollover by count and by time, the key-frame repetition policy, and
//! recovery under seeded loss, reordering and duplication.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Fleet, at, payload, topic};
use rand_core::Rng;
use sealcast_bearer::{Error, FrameCounter, FrameKind, MtkId, ReceiverConfig, SenderConfig, peek};
use sealcast_core::testrng::TestRng;

fn cfg(max_frames: u32, lifetime_ms: u64, k: u32) -> SenderConfig {
    SenderConfig {
        mtk_max_frames: max_frames,
        mtk_lifetime_ms: lifetime_ms,
        key_frame_interval: k,
        ..SenderConfig::default()
    }
}

#[test]
fn key_frames_repeat_every_k_and_mtks_roll_by_count() {
    let mut fleet = Fleet::new(1, 1, cfg(10, 3_600_000, 4), ReceiverConfig::default());
    let t = topic("sealcast/g/01/cmd");
    let mut layout = Vec::new();
    let mut delivered = Vec::new();
    for i in 0..25 {
        for f in fleet.protect(&t, &payload(i), at(i as u64)) {
            let info = peek(&f).unwrap();
            layout.push((info.kind, info.mtk_id.get(), info.counter.map(|c| c.get())));
            if let Some(d) = fleet.receivers[0].handle(&f, at(i as u64)).unwrap() {
                delivered.push(d);
            }
        }
    }
    // Key frame before counters 0, 4, 8 of each MTK; 10 frames per MTK.
    let mut expected = Vec::new();
    for i in 0..25u32 {
        let (mtk, c) = (1 + i / 10, i % 10);
        if c % 4 == 0 {
            expected.push((FrameKind::Key, mtk, None));
        }
        expected.push((FrameKind::Data, mtk, Some(c)));
    }
    assert_eq!(layout, expected);
    assert_eq!(delivered.len(), 25);
    for (i, d) in delivered.iter().enumerate() {
        assert_eq!(d.payload, payload(i));
        assert_eq!(d.topic, t);
    }
    assert_eq!(fleet.sender.current_mtk_id(), Some(MtkId::new(3)));
}

#[test]
fn mtks_roll_by_time() {
    let mut fleet = Fleet::new(2, 1, cfg(1_000, 1_000, 100), ReceiverConfig::default());
    let t = topic("sealcast/g/01/cmd");
    let mut mtks = Vec::new();
    for (i, ms) in [0u64, 500, 999, 1_000, 1_500, 2_100]
        .into_iter()
        .enumerate()
    {
        let frames = fleet.protect(&t, &payload(i), at(ms));
        let data = peek(frames.last().unwrap()).unwrap();
        mtks.push(data.mtk_id.get());
        for f in &frames {
            fleet.receivers[0].handle(f, at(ms)).unwrap();
        }
        // A new MTK always comes with its key frame.
        assert_eq!(
            frames.len() == 2,
            data.counter == Some(FrameCounter::new(0))
        );
    }
    assert_eq!(mtks, vec![1, 1, 1, 2, 2, 3]);
}

#[test]
fn a_receiver_that_missed_a_key_frame_recovers_at_the_next_repetition() {
    let k = 4;
    let mut fleet = Fleet::new(3, 1, cfg(100, 3_600_000, k), ReceiverConfig::default());
    let t = topic("sealcast/g/01/alert");
    let mut first_key_dropped = false;
    for i in 0..12usize {
        for f in fleet.protect(&t, &payload(i), at(0)) {
            let info = peek(&f).unwrap();
            if info.kind == FrameKind::Key && !first_key_dropped {
                first_key_dropped = true;
                continue; // lost on the bearer
            }
            let got = fleet.receivers[0].handle(&f, at(0));
            match info.kind {
                FrameKind::Key => assert_eq!(got, Ok(None)),
                _ if i < k as usize => assert_eq!(got, Err(Error::UnknownMtk(MtkId::new(1)))),
                _ => assert_eq!(got.unwrap().unwrap().payload, payload(i)),
            }
        }
    }
}

/// One receiver's view of a stream: each frame is lost with probability
/// `loss`, duplicated with probability `dup`, and the survivors are shuffled
/// inside consecutive blocks of `block` frames.
fn impair(frames: &[Vec<u8>], rng: &mut TestRng, loss: u32, dup: u32, block: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, _) in frames.iter().enumerate() {
        if rng.next_u32() % 100 < loss {
            continue;
        }
        out.push(i);
        if rng.next_u32() % 100 < dup {
            out.push(i);
        }
    }
    for chunk in out.chunks_mut(block) {
        for j in (1..chunk.len()).rev() {
            let r = (rng.next_u32() as usize) % (j + 1);
            chunk.swap(j, r);
        }
    }
    out
}

/// Replays `order` into `rx` and checks every result against a model of
/// the receiver: per MSK it keeps the two highest MTK ids whose key frames
/// arrived; a key frame under a newer MSK retires the older MSKs; a data
/// frame opens iff its MSK is current and known, its MTK is kept and its
/// counter was not delivered before. `knows_msk(m)`: whether the device got
/// MSK `m`'s delivery. Returns (data frames handled, delivered).
fn check_against_model(
    rx: &mut sealcast_bearer::BearerReceiver,
    frames: &[(Vec<u8>, u64)],
    order: &[usize],
    sent: &Sent,
    knows_msk: impl Fn(u32) -> bool,
    expected_topic: &sealcast_bearer::Topic,
) -> (usize, usize) {
    let mut seen_keys: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    let mut newest_msk_in_use = 0u32;
    let mut done = BTreeSet::new();
    let (mut handled, mut delivered) = (0, 0);
    for &i in order {
        let (f, now) = &frames[i];
        let info = peek(f).unwrap();
        let got = rx.handle(f, at(*now + 5));
        let (msk, mtk) = (info.msk_id.get(), info.mtk_id.get());
        if !knows_msk(msk) {
            assert_eq!(got, Err(Error::UnknownMsk(info.msk_id)));
            handled += usize::from(info.kind == FrameKind::Data);
            continue;
        }
        if msk < newest_msk_in_use {
            assert_eq!(got, Err(Error::StaleMsk(info.msk_id)));
            handled += usize::from(info.kind == FrameKind::Data);
            continue;
        }
        let keys = seen_keys.entry(msk).or_default();
        match info.kind {
            FrameKind::Key => {
                keys.insert(mtk);
                newest_msk_in_use = msk;
                if keys.iter().rev().take(2).any(|&m| m == mtk) {
                    assert_eq!(got, Ok(None));
                } else {
                    assert_eq!(got, Err(Error::StaleMtk(info.mtk_id)));
                }
            }
            _ => {
                handled += 1;
                let counter = info.counter.unwrap().get();
                let kept = keys.iter().rev().take(2).any(|&m| m == mtk);
                if kept && done.insert((mtk, counter)) {
                    let d = got.unwrap().unwrap();
                    assert_eq!(Some(&d.payload), sent.get(&(mtk, counter)));
                    assert_eq!(&d.topic, expected_topic);
                    delivered += 1;
                } else {
                    match got {
                        Err(Error::UnknownMtk(_))
                        | Err(Error::StaleMtk(_))
                        | Err(Error::Replay(_)) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }
    (handled, delivered)
}

/// The payload sent under each (MTK id, frame counter).
type Sent = BTreeMap<(u32, u32), Vec<u8>>;

/// Protects `n` objects 37 ms apart and returns the frames with their send
/// times and the payload of every (MTK, counter). `between(fleet, i)` runs
/// before object `i`.
fn stream(
    fleet: &mut Fleet,
    t: &sealcast_bearer::Topic,
    n: usize,
    mut between: impl FnMut(&mut Fleet, usize),
) -> (Vec<(Vec<u8>, u64)>, Sent) {
    let mut frames = Vec::new();
    let mut sent = BTreeMap::new();
    for i in 0..n {
        between(fleet, i);
        let now = i as u64 * 37;
        for f in fleet.protect(t, &payload(i), at(now)) {
            let info = peek(&f).unwrap();
            if let Some(c) = info.counter {
                assert!(
                    sent.insert((info.mtk_id.get(), c.get()), payload(i))
                        .is_none()
                );
            }
            frames.push((f, now));
        }
    }
    (frames, sent)
}

#[test]
fn rollover_under_seeded_loss_reordering_and_duplication() {
    let (mut handled, mut delivered) = (0, 0);
    for seed in 1..=12u64 {
        let mut fleet = Fleet::new(100 + seed, 3, cfg(25, 700, 5), ReceiverConfig::default());
        let t = topic("sealcast/g/07/cmd");
        let (frames, sent) = stream(&mut fleet, &t, 300, |_, _| {});
        let mtk_count = sent.keys().map(|(m, _)| *m).max().unwrap();
        assert!(mtk_count > 300 / 25, "both rollover triggers fire");
        let bytes: Vec<Vec<u8>> = frames.iter().map(|(f, _)| f.clone()).collect();
        let mut rng = TestRng::new(seed);
        for rx in fleet.receivers.iter_mut() {
            let order = impair(&bytes, &mut rng, 15, 5, 6);
            let (h, d) = check_against_model(rx, &frames, &order, &sent, |_| true, &t);
            handled += h;
            delivered += d;
        }
    }
    // With 15 % loss and K = 5 most frames still arrive and open.
    assert!(delivered * 100 > handled * 70, "{delivered} of {handled}");
}

#[test]
fn msk_change_by_revocation_mid_stream_under_loss_and_reordering() {
    for seed in 1..=6u64 {
        let mut fleet = Fleet::new(200 + seed, 4, cfg(25, 700, 5), ReceiverConfig::default());
        let t = topic("sealcast/g/08/cmd");
        let revoked = fleet.id(3);
        let mut deliveries = Vec::new();
        let (frames, sent) = stream(&mut fleet, &t, 200, |fleet, i| {
            if i == 100 {
                deliveries = fleet
                    .sender
                    .revoke(&revoked, at(0), &mut fleet.rng)
                    .unwrap();
            }
        });
        // The point-to-point deliveries arrive before the bearer frames.
        fleet.deliver(&deliveries, at(0));
        let bytes: Vec<Vec<u8>> = frames.iter().map(|(f, _)| f.clone()).collect();
        let mut rng = TestRng::new(seed);
        for (r, rx) in fleet.receivers.iter_mut().enumerate() {
            let order = impair(&bytes, &mut rng, 15, 5, 6);
            let entitled = r != 3;
            let (_, delivered) =
                check_against_model(rx, &frames, &order, &sent, |m| m == 1 || entitled, &t);
            // The revoked device reads only what was sent before the change.
            let range = if entitled { 130..=200 } else { 50..=100 };
            assert!(
                range.contains(&delivered),
                "seed {seed} receiver {r}: {delivered}"
            );
        }
    }
}

#[test]
fn a_prepared_msk_takes_over_without_loss() {
    let mut fleet = Fleet::new(4, 2, cfg(50, 60_000, 8), ReceiverConfig::default());
    let t = topic("sealcast/g/01/cmd");
    let mut old_frames = Vec::new();
    for i in 0..5 {
        for f in fleet.protect(&t, &payload(i), at(10)) {
            for rx in &mut fleet.receivers {
                rx.handle(&f, at(10)).unwrap();
            }
            old_frames.push(f);
        }
    }
    let deliveries = fleet.sender.prepare_msk(at(20), &mut fleet.rng).unwrap();
    assert_eq!(deliveries.len(), 2);
    fleet.deliver(&deliveries, at(20));
    let next = fleet.sender.activate_prepared_msk().unwrap();
    for i in 5..15 {
        for f in fleet.protect(&t, &payload(i), at(30)) {
            assert_eq!(peek(&f).unwrap().msk_id, next);
            for rx in &mut fleet.receivers {
                if let Some(d) = rx.handle(&f, at(30)).unwrap() {
                    assert_eq!(d.payload, payload(i));
                }
            }
        }
    }
    // The first key frame under the new MSK retired the old one.
    for rx in &mut fleet.receivers {
        assert_eq!(rx.msk_ids().collect::<Vec<_>>(), vec![next]);
        let old = old_frames.last().unwrap();
        assert!(matches!(rx.handle(old, at(30)), Err(Error::StaleMsk(_))));
    }
}

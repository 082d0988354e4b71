#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Round trips of the core envelopes: broadcast, member report, key
//! delivery, single-message encryption and integrity check values.

mod common;

use std::collections::BTreeSet;

use common::*;
use ed25519_dalek::{SigningKey, VerifyingKey};
use proptest::prelude::*;
use sealcast_core::broadcast::{
    BroadcastReceiver, MAX_ACCESS_TOKEN_LEN, MAX_TARGET_LEN, ReplayPolicy, peek_broadcast,
    seal_broadcast, seal_broadcast_with_token,
};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::delivery::{open_key_delivery, peek_key_delivery, seal_key_delivery};
use sealcast_core::groupkey::{GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, KeyId, SenderId, SeqNum, UnixMillis};
use sealcast_core::replay::SeqWindow;
use sealcast_core::report::{
    PairwiseKey, open_report, open_report_unverified, peek_report, seal_report, verify_report,
    verify_reports_batch,
};
use sealcast_core::single::{MacKey, decrypt_from, encrypt_to, mac0_create, mac0_verify};
use sealcast_core::testrng::TestRng;
use sealcast_core::{Error, ReplayKind};

fn alg_strategy() -> impl Strategy<Value = AeadAlg> {
    prop_oneof![Just(AeadAlg::A128Gcm), Just(AeadAlg::A256Gcm)]
}

// ---------------------------------------------------------------------------
// Broadcast
// ---------------------------------------------------------------------------

/// A signer's access-control token rides in the inner protected header:
/// only members read it, the signature covers it, and without one the bytes
/// are exactly those of `seal_broadcast`.
#[test]
fn broadcast_carries_the_signers_access_token() {
    let f = Fixture::new();
    let ctx = f.context(b"doors", 1, AeadAlg::A128Gcm);
    let target = "grp/doors/cmd";
    let (a, key) = (f.agent_a.id(), f.agent_a.signing_key());
    let token = vec![0x5a; 300];
    let with =
        seal_broadcast_with_token(&ctx, a, key, seq(1), NOW, target, b"unlock", Some(&token))
            .unwrap();
    let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    let got = rx.open(&with, target, NOW).unwrap();
    assert_eq!(got.token.as_deref(), Some(&token[..]));
    assert_eq!(got.payload, b"unlock");
    // The token is not visible to a non-member.
    assert!(!with.windows(token.len()).any(|w| w == &token[..]));
    // Without a token: the same bytes as before, and no token opened.
    let plain =
        seal_broadcast_with_token(&ctx, a, key, seq(2), NOW, target, b"unlock", None).unwrap();
    assert_eq!(
        plain,
        seal_broadcast(&ctx, a, key, seq(2), NOW, target, b"unlock").unwrap()
    );
    assert_eq!(rx.open(&plain, target, NOW).unwrap().token, None);
    // Bounds are refused at sealing.
    for bad in [vec![], vec![1; MAX_ACCESS_TOKEN_LEN + 1]] {
        assert!(matches!(
            seal_broadcast_with_token(&ctx, a, key, seq(3), NOW, target, b"x", Some(&bad)),
            Err(Error::Malformed(_))
        ));
    }
    // Burst opening carries it too.
    let third = seal_broadcast_with_token(&ctx, a, key, seq(4), NOW, target, b"lock", Some(&token))
        .unwrap();
    let burst = rx.open_burst(&[(&third[..], target)], NOW);
    assert_eq!(
        burst[0].as_ref().unwrap().token.as_deref(),
        Some(&token[..])
    );
}

#[test]
fn broadcast_round_trip_both_algs() {
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let ctx = f.context(b"lights-3", 7, alg);
        let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
        let target = "grp/lights-3/cmd";
        let bytes = seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(42),
            NOW,
            target,
            b"switch on",
        )
        .unwrap();

        let h = peek_broadcast(&bytes).unwrap();
        assert_eq!(h.group, gid(b"lights-3"));
        assert_eq!(h.epoch, Epoch::new(7));
        assert_eq!(h.sender_id, sid(&[0x01]));
        assert_eq!(h.seq, seq(42));
        assert_eq!(h.timestamp, NOW);

        let got = rx.open(&bytes, target, NOW).unwrap();
        assert_eq!(got.group, gid(b"lights-3"));
        assert_eq!(got.epoch, Epoch::new(7));
        assert_eq!(got.sender_id, sid(&[0x01]));
        assert_eq!(got.signer, *f.agent_a.id());
        assert_eq!(got.seq, seq(42));
        assert_eq!(got.timestamp, NOW);
        assert_eq!(got.payload, b"switch on");
        assert_eq!(rx.window(&sid(&[0x01])).unwrap().highest(), Some(seq(42)));

        // The same bytes a second time are a replay.
        assert!(matches!(
            rx.open(&bytes, target, NOW),
            Err(Error::Replay(ReplayKind::Duplicate))
        ));
    }
}

#[test]
fn broadcast_output_is_deterministic_and_alg_specific() {
    let f = Fixture::new();
    let c128 = f.context(b"g", 1, AeadAlg::A128Gcm);
    let c256 = f.context(b"g", 1, AeadAlg::A256Gcm);
    let seal = |ctx: &GroupContext| {
        seal_broadcast(
            ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(1),
            NOW,
            "t",
            b"x",
        )
        .unwrap()
    };
    assert_eq!(seal(&c128), seal(&c128));
    assert_ne!(seal(&c128), seal(&c256));
    // A receiver for the other algorithm refuses it before any crypto.
    let mut rx = BroadcastReceiver::new(c256, ReplayPolicy::default()).unwrap();
    assert!(matches!(
        rx.open(&seal(&c128), "t", NOW),
        Err(Error::UnsupportedAlgorithm(1))
    ));
}

#[test]
fn broadcast_two_senders_interleaved_and_out_of_order() {
    let f = Fixture::new();
    let ctx = f.context(b"g-1", 1, AeadAlg::A128Gcm);
    let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    // Sender A and B use overlapping sequence numbers: separate windows.
    let order = [5u64, 3, 9, 4, 1, 8, 2, 7, 6];
    for n in order {
        for agent in [&f.agent_a, &f.agent_b] {
            let payload = format!("{}-{n}", agent.id());
            let b = seal_broadcast(
                &ctx,
                agent.id(),
                agent.signing_key(),
                seq(n),
                NOW,
                "t",
                payload.as_bytes(),
            )
            .unwrap();
            let got = rx.open(&b, "t", NOW).unwrap();
            assert_eq!(got.signer, *agent.id());
            assert_eq!(got.payload, payload.as_bytes());
        }
    }
    assert_eq!(rx.windows().count(), 2);
    assert_eq!(rx.window(&sid(&[1])).unwrap().highest(), Some(seq(9)));
    assert_eq!(rx.window(&sid(&[2])).unwrap().highest(), Some(seq(9)));
}

#[test]
fn broadcast_extreme_values() {
    let f = Fixture::new();
    let ctx = f.context(&[0xff; 32], u32::MAX, AeadAlg::A256Gcm);
    let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    let target = "x".repeat(MAX_TARGET_LEN);
    for (n, ts) in [(0u64, 0u64), (SeqNum::MAX, u64::MAX)] {
        let b = seal_broadcast(
            &ctx,
            f.agent_b.id(),
            f.agent_b.signing_key(),
            seq(n),
            UnixMillis::new(ts),
            &target,
            &[],
        )
        .unwrap();
        let got = rx.open(&b, &target, UnixMillis::new(ts)).unwrap();
        assert_eq!(got.seq, seq(n));
        assert_eq!(got.timestamp, UnixMillis::new(ts));
        assert!(got.payload.is_empty());
    }
    assert!(SeqNum::new(SeqNum::MAX + 1).is_err());
}

#[test]
fn broadcast_seal_refuses_bad_signers_and_targets() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A128Gcm);
    // Not in the group's signer list.
    assert!(matches!(
        seal_broadcast(
            &ctx,
            f.outsider.id(),
            f.outsider.signing_key(),
            seq(1),
            NOW,
            "t",
            b"x"
        ),
        Err(Error::SignerNotAuthorized)
    ));
    // Authorized id, but the key is someone else's.
    assert!(matches!(
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_b.signing_key(),
            seq(1),
            NOW,
            "t",
            b"x"
        ),
        Err(Error::InvalidKey(_))
    ));
    let long = "y".repeat(MAX_TARGET_LEN + 1);
    assert!(matches!(
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(1),
            NOW,
            &long,
            b"x"
        ),
        Err(Error::TooLarge { .. })
    ));
    let mut rx = BroadcastReceiver::new(ctx, ReplayPolicy::default()).unwrap();
    assert!(matches!(
        rx.open(&[0xd0], &long, NOW),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn broadcast_receiver_rejects_bad_window_sizes() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A128Gcm);
    for window in [0, 63, 65, 100, SeqWindow::MAX_SIZE + 64] {
        let policy = ReplayPolicy::Sequence {
            window,
            max_skew_ms: None,
        };
        assert!(
            BroadcastReceiver::new(ctx.clone(), policy).is_err(),
            "{window}"
        );
    }
    for window in [64, 128, 1024, SeqWindow::MAX_SIZE] {
        let policy = ReplayPolicy::Sequence {
            window,
            max_skew_ms: None,
        };
        assert!(
            BroadcastReceiver::new(ctx.clone(), policy).is_ok(),
            "{window}"
        );
    }
}

#[test]
fn broadcast_large_window_accepts_old_in_window() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A128Gcm);
    let policy = ReplayPolicy::Sequence {
        window: 256,
        max_skew_ms: None,
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
    let seal = |n| {
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(n),
            NOW,
            "t",
            b"x",
        )
        .unwrap()
    };
    rx.open(&seal(300), "t", NOW).unwrap();
    // 100 behind is inside a 256 window (it would be too old for 64).
    rx.open(&seal(200), "t", NOW).unwrap();
    assert!(matches!(
        rx.open(&seal(44), "t", NOW),
        Err(Error::Replay(ReplayKind::TooOld))
    ));
}

#[test]
fn broadcast_window_persists_across_restart() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A128Gcm);
    let seal = |n| {
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(n),
            NOW,
            "t",
            b"x",
        )
        .unwrap()
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    rx.open(&seal(10), "t", NOW).unwrap();
    let saved: Vec<_> = rx
        .windows()
        .map(|(s, w)| (s.clone(), w.to_bytes()))
        .collect();

    let mut rx2 = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    for (s, w) in saved {
        rx2.restore_window(s, SeqWindow::from_bytes(&w).unwrap());
    }
    assert!(matches!(
        rx2.open(&seal(10), "t", NOW),
        Err(Error::Replay(ReplayKind::Duplicate))
    ));
    rx2.open(&seal(11), "t", NOW).unwrap();
}

/// A message opened but not saved is put back with `roll_back`: it opens
/// again (the device retries it once its disk recovers), while what was
/// committed before stays committed — under both replay policies.
#[test]
fn broadcast_roll_back_makes_an_unsaved_message_acceptable_again() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A128Gcm);
    let seal = |n| {
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(n),
            NOW,
            "t",
            b"x",
        )
        .unwrap()
    };
    let timestamp = ReplayPolicy::Timestamp {
        skew_ms: 30_000,
        max_entries: 1000,
    };
    for policy in [ReplayPolicy::default(), timestamp] {
        let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
        rx.open(&seal(1), "t", NOW).unwrap();
        // The first message of a sender (no window yet) and a later one.
        for n in [2, 3] {
            let undo = rx.undo_point(&seal(n));
            rx.open(&seal(n), "t", NOW).unwrap();
            rx.roll_back(undo);
            rx.open(&seal(n), "t", NOW).unwrap();
            assert!(matches!(
                rx.open(&seal(n), "t", NOW),
                Err(Error::Replay(ReplayKind::Duplicate))
            ));
        }
        assert!(matches!(
            rx.open(&seal(1), "t", NOW),
            Err(Error::Replay(ReplayKind::Duplicate))
        ));
        // A sender never seen before: its window is removed again.
        let b = seal_broadcast(
            &ctx,
            f.agent_b.id(),
            f.agent_b.signing_key(),
            seq(0),
            NOW,
            "t",
            b"y",
        )
        .unwrap();
        let undo = rx.undo_point(&b);
        rx.open(&b, "t", NOW).unwrap();
        rx.roll_back(undo);
        rx.open(&b, "t", NOW).unwrap();
    }
}

#[test]
fn broadcast_timestamp_policy_round_trip() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A256Gcm);
    let policy = ReplayPolicy::Timestamp {
        skew_ms: 30_000,
        max_entries: 1000,
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
    for (i, dt) in [0i64, -20_000, 20_000, 5].into_iter().enumerate() {
        let ts = UnixMillis::new(NOW.get().checked_add_signed(dt).unwrap());
        let b = seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(i as u64),
            ts,
            "t",
            b"tick",
        )
        .unwrap();
        let got = rx.open(&b, "t", NOW).unwrap();
        assert_eq!(got.timestamp, ts);
    }
    // No sequence windows are kept in timestamp mode.
    assert_eq!(rx.windows().count(), 0);
}

#[test]
fn broadcast_sequence_policy_with_skew_accepts_fresh() {
    let f = Fixture::new();
    let ctx = f.context(b"g", 1, AeadAlg::A128Gcm);
    let policy = ReplayPolicy::Sequence {
        window: 64,
        max_skew_ms: Some(1_000),
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
    let ts = UnixMillis::new(NOW.get() - 1_000);
    let b = seal_broadcast(
        &ctx,
        f.agent_a.id(),
        f.agent_a.signing_key(),
        seq(1),
        ts,
        "t",
        b"x",
    )
    .unwrap();
    assert!(rx.open(&b, "t", NOW).is_ok());
}

#[test]
fn broadcast_rekey_by_ratchet_and_install() {
    let f = Fixture::new();
    let m1 = f.material(b"g", 1, AeadAlg::A128Gcm);
    let m2 = m1.ratchet(f.signers(), None).unwrap();
    assert_eq!(m2.epoch(), Epoch::new(2));
    assert_ne!(m1.master_secret(), m2.master_secret());
    let c1 = GroupContext::new(&m1).unwrap();
    let c2 = GroupContext::new(&m2).unwrap();
    let mut rx = BroadcastReceiver::new(c1.clone(), ReplayPolicy::default()).unwrap();
    let seal = |ctx: &GroupContext, n| {
        seal_broadcast(
            ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(n),
            NOW,
            "t",
            b"x",
        )
        .unwrap()
    };
    rx.open(&seal(&c1, 5), "t", NOW).unwrap();
    rx.install(c2.clone()).unwrap();
    assert_eq!(rx.context().epoch(), Epoch::new(2));
    assert_eq!(rx.windows().count(), 0);
    // Sequence numbers start over in the new epoch.
    rx.open(&seal(&c2, 0), "t", NOW).unwrap();
    rx.open(&seal(&c2, 5), "t", NOW).unwrap();
}

#[test]
fn broadcast_key_expiry() {
    let f = Fixture::new();
    let m = sealcast_core::groupkey::GroupKeyMaterial::new(
        gid(b"g"),
        Epoch::new(1),
        AeadAlg::A128Gcm,
        &[9u8; 32],
        &[],
        f.signers(),
        Some(NOW),
    )
    .unwrap();
    let ctx = GroupContext::new(&m).unwrap();
    let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
    let b = seal_broadcast(
        &ctx,
        f.agent_a.id(),
        f.agent_a.signing_key(),
        seq(1),
        NOW,
        "t",
        b"x",
    )
    .unwrap();
    let later = UnixMillis::new(NOW.get() + 1);
    assert!(matches!(rx.open(&b, "t", later), Err(Error::KeyExpired)));
    rx.open(&b, "t", NOW).unwrap();
}

#[test]
fn hand_built_broadcast_matches_library() {
    // The fixtures used by the attack tests reproduce the library's bytes,
    // so a rejection there is about the forged content, not the builder.
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let m = f.material(b"grp", 3, alg);
        let ctx = GroupContext::new(&m).unwrap();
        let o = Outer {
            sender: &[0x02],
            seq: 77,
            timestamp: NOW.get(),
            target: "a/b",
        };
        let inner = sign_broadcast_inner(&m, f.agent_b.signing_key(), &[0x02], &o, b"hello");
        let by_hand = encrypt_broadcast(&m, &o, &inner);
        let by_lib = seal_broadcast(
            &ctx,
            f.agent_b.id(),
            f.agent_b.signing_key(),
            seq(77),
            NOW,
            "a/b",
            b"hello",
        )
        .unwrap();
        assert_eq!(by_hand, by_lib);
        assert_eq!(decrypt_broadcast(&m, &by_lib, "a/b"), inner);
    }
}

/// If an empty sender id is a valid `SenderId` (RFC 8613 allows it), a
/// broadcast from such a sender must open (or sealing must refuse it).
#[test]
fn broadcast_empty_sender_id_round_trip() {
    // Refusing empty sender ids in `SenderId` itself is a fix as good as
    // supporting them.
    let Ok(empty) = SenderId::new([]) else {
        return;
    };
    let f = Fixture::new();
    let mut signer = authorized(&f.agent_a, &[1]);
    signer.sender_id = empty.clone();
    let m = material(b"g", 1, AeadAlg::A128Gcm, 9, vec![signer]);
    let ctx = GroupContext::new(&m).unwrap();
    assert_eq!(ctx.sender_id_of(f.agent_a.id()), Some(&empty));
    let Ok(bytes) = seal_broadcast(
        &ctx,
        f.agent_a.id(),
        f.agent_a.signing_key(),
        seq(1),
        NOW,
        "t",
        b"x",
    ) else {
        return;
    };
    let h = peek_broadcast(&bytes);
    assert!(h.is_ok(), "peek of an empty-sender-id broadcast: {h:?}");
    let mut rx = BroadcastReceiver::new(ctx, ReplayPolicy::default()).unwrap();
    let got = rx.open(&bytes, "t", NOW);
    assert!(got.is_ok(), "open of an empty-sender-id broadcast: {got:?}");
}

/// `encrypt_to` with an empty recipient kid must either refuse, or produce
/// an object `decrypt_from` accepts.
#[test]
fn single_encrypt_empty_kid_round_trip() {
    let recipient = cred("device-x", 4);
    let mut rng = TestRng::new(3);
    let Ok(ct) = encrypt_to(
        AeadAlg::A128Gcm,
        &[],
        recipient.public().agreement_key(),
        b"m",
        b"",
        &mut rng,
    ) else {
        return;
    };
    let pt = decrypt_from(&[], recipient.agreement_secret(), &ct, b"");
    assert!(pt.is_ok(), "decrypt of an empty-kid COSE_Encrypt: {pt:?}");
}

fn signer_cred(seed: u8) -> EntityCredential {
    cred(&format!("signer-{seed}"), seed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn broadcast_round_trip_prop(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        sender in prop::collection::vec(any::<u8>(), 0..=6),
        other_sender in prop::collection::vec(any::<u8>(), 0..=6),
        group in prop::collection::vec(any::<u8>(), 1..=32),
        epoch in any::<u32>(),
        n in 0..=SeqNum::MAX,
        ts in any::<u64>(),
        target in "\\PC{0,40}",
        alg in alg_strategy(),
        key_seed in any::<u8>(),
    ) {
        // Empty sender ids are valid (RFC 8613 allows them; SenderId::MIN_LEN
        // is 0), so they must round-trip like any other.
        prop_assume!(SenderId::new(&sender).is_ok() && SenderId::new(&other_sender).is_ok());
        let signer = signer_cred(key_seed);
        let other = signer_cred(key_seed.wrapping_add(1));
        let mut signers = vec![authorized(&signer, &sender)];
        if other_sender != sender {
            signers.push(authorized(&other, &other_sender));
        }
        let m = material(&group, epoch, alg, key_seed, signers);
        let ctx = GroupContext::new(&m).unwrap();
        let bytes = seal_broadcast(
            &ctx, signer.id(), signer.signing_key(), seq(n), UnixMillis::new(ts), &target, &payload,
        ).unwrap();

        let h = peek_broadcast(&bytes).unwrap();
        prop_assert_eq!(&h.sender_id, &sid(&sender));
        prop_assert_eq!(h.group.as_bytes(), group.as_slice());
        prop_assert_eq!(h.epoch, Epoch::new(epoch));
        prop_assert_eq!(h.seq, seq(n));
        prop_assert_eq!(h.timestamp, UnixMillis::new(ts));

        // The receiver derives its own context from the (re-encoded) material.
        let m2 = GroupKeyMaterial::from_cbor(&m.to_cbor().unwrap()).unwrap();
        let mut rx = BroadcastReceiver::new(GroupContext::new(&m2).unwrap(), ReplayPolicy::default()).unwrap();
        let got = rx.open(&bytes, &target, UnixMillis::new(ts)).unwrap();
        prop_assert_eq!(&got.payload, &payload);
        prop_assert_eq!(&got.signer, signer.id());
        prop_assert_eq!(&got.sender_id, &sid(&sender));
        prop_assert_eq!(got.seq, seq(n));
        prop_assert_eq!(got.timestamp, UnixMillis::new(ts));
        prop_assert_eq!(got.epoch, Epoch::new(epoch));
        prop_assert!(matches!(
            rx.open(&bytes, &target, UnixMillis::new(ts)),
            Err(Error::Replay(ReplayKind::Duplicate))
        ));

        // Timestamp mode opens the same object too, and detects its replay.
        let policy = ReplayPolicy::Timestamp { skew_ms: 1000, max_entries: 16 };
        let mut rx_ts = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
        prop_assert_eq!(rx_ts.open(&bytes, &target, UnixMillis::new(ts)).unwrap().payload, payload);
        prop_assert!(matches!(
            rx_ts.open(&bytes, &target, UnixMillis::new(ts)),
            Err(Error::Replay(ReplayKind::Duplicate))
        ));
    }
}

// ---------------------------------------------------------------------------
// Member reports
// ---------------------------------------------------------------------------

struct ReportSetup {
    meter: EntityCredential,
    headend: EntityCredential,
    at_meter: PairwiseKey,
    at_headend: PairwiseKey,
}

fn report_setup(alg: AeadAlg, meter: EntityCredential, headend: EntityCredential) -> ReportSetup {
    let at_meter = PairwiseKey::derive(
        alg,
        meter.agreement_secret(),
        headend.public().agreement_key(),
        meter.id(),
        headend.id(),
    )
    .unwrap();
    let at_headend = PairwiseKey::derive(
        alg,
        headend.agreement_secret(),
        meter.public().agreement_key(),
        meter.id(),
        headend.id(),
    )
    .unwrap();
    ReportSetup {
        meter,
        headend,
        at_meter,
        at_headend,
    }
}

#[test]
fn report_round_trip_both_algs() {
    for alg in BOTH_ALGS {
        let s = report_setup(alg, cred("meter-17", 7), cred("headend", 6));
        let bytes = seal_report(
            s.meter.id(),
            s.meter.signing_key(),
            s.headend.id(),
            &s.at_meter,
            seq(12),
            NOW,
            b"kWh=1234.5",
        )
        .unwrap();
        let h = peek_report(&bytes, s.headend.id()).unwrap();
        assert_eq!(h.reporter, *s.meter.id());
        assert_eq!(h.seq, seq(12));
        assert_eq!(h.timestamp, NOW);

        let vk = s.meter.signing_key().verifying_key();
        let lookup = |id: &EntityId| (id == s.meter.id()).then_some(&vk);
        let verified = verify_report(&bytes, s.headend.id(), lookup).unwrap();
        assert_eq!(verified.header(), &h);
        let reading = open_report(&verified, s.headend.id(), &s.at_headend).unwrap();
        assert_eq!(reading.as_slice(), b"kWh=1234.5");

        let (h2, reading2) = open_report_unverified(&bytes, s.headend.id(), &s.at_headend).unwrap();
        assert_eq!(h2, h);
        assert_eq!(reading2.as_slice(), b"kWh=1234.5");

        // Unknown reporter.
        let none = |_: &EntityId| -> Option<&VerifyingKey> { None };
        assert!(matches!(
            verify_report(&bytes, s.headend.id(), none),
            Err(Error::UnknownSender)
        ));
    }
}

#[test]
fn report_pairwise_key_is_directional() {
    // The meter's key towards headend H1 does not open for headend H2, even
    // if H2 learned the meter's ciphertext.
    let alg = AeadAlg::A128Gcm;
    let s = report_setup(alg, cred("meter-1", 11), cred("headend-1", 12));
    let h2 = cred("headend-2", 13);
    let bytes = seal_report(
        s.meter.id(),
        s.meter.signing_key(),
        s.headend.id(),
        &s.at_meter,
        seq(1),
        NOW,
        b"r",
    )
    .unwrap();
    let k2 = PairwiseKey::derive(
        alg,
        h2.agreement_secret(),
        s.meter.public().agreement_key(),
        s.meter.id(),
        h2.id(),
    )
    .unwrap();
    assert!(matches!(
        open_report_unverified(&bytes, h2.id(), &k2),
        Err(Error::DecryptFailed)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn report_round_trip_prop(
        reading in prop::collection::vec(any::<u8>(), 0..2048),
        n in 0..=SeqNum::MAX,
        ts in any::<u64>(),
        alg in alg_strategy(),
        meter_name in "[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}",
        seed in any::<u8>(),
    ) {
        let s = report_setup(alg, cred(&meter_name, seed), cred("headend", seed.wrapping_add(1)));
        let bytes = seal_report(
            s.meter.id(), s.meter.signing_key(), s.headend.id(), &s.at_meter,
            seq(n), UnixMillis::new(ts), &reading,
        ).unwrap();
        let vk = s.meter.signing_key().verifying_key();
        let verified = verify_report(&bytes, s.headend.id(), |_| Some(&vk)).unwrap();
        prop_assert_eq!(&verified.header().reporter, s.meter.id());
        prop_assert_eq!(verified.header().seq, seq(n));
        prop_assert_eq!(verified.header().timestamp, UnixMillis::new(ts));
        let got = open_report(&verified, s.headend.id(), &s.at_headend).unwrap();
        prop_assert_eq!(got.as_slice(), reading.as_slice());
        let (_, got2) = open_report_unverified(&bytes, s.headend.id(), &s.at_headend).unwrap();
        prop_assert_eq!(got2.as_slice(), reading.as_slice());
    }
}

/// 8 meters, 64 reports, the reports at `forged` replaced by forgeries of
/// various kinds; returns the reports and the meters' keys.
fn report_batch(
    alg: AeadAlg,
    forged: &BTreeSet<usize>,
    kinds: &[u8],
) -> (
    Vec<Vec<u8>>,
    Vec<(EntityId, VerifyingKey)>,
    EntityCredential,
) {
    let headend = cred("headend", 200);
    let meters: Vec<EntityCredential> = (0..8u8)
        .map(|i| cred(&format!("meter-{i}"), 100 + i))
        .collect();
    let keys: Vec<PairwiseKey> = meters
        .iter()
        .map(|m| {
            PairwiseKey::derive(
                alg,
                m.agreement_secret(),
                headend.public().agreement_key(),
                m.id(),
                headend.id(),
            )
            .unwrap()
        })
        .collect();
    let forger = SigningKey::from_bytes(&[0xee; 32]);
    let mut out = Vec::with_capacity(64);
    for i in 0..64usize {
        let m = &meters[i % 8];
        let k = &keys[i % 8];
        let reading = format!("reading {i}");
        let n = seq(i as u64 / 8);
        let genuine = || {
            seal_report(
                m.id(),
                m.signing_key(),
                headend.id(),
                k,
                n,
                NOW,
                reading.as_bytes(),
            )
            .unwrap()
        };
        let bytes = if forged.contains(&i) {
            match kinds[i] % 3 {
                // Valid structure, signed by the wrong key.
                0 => seal_report(m.id(), &forger, headend.id(), k, n, NOW, reading.as_bytes())
                    .unwrap(),
                // Genuine signature, one payload byte changed.
                1 => {
                    let mut b = genuine();
                    let len = b.len();
                    b[len - 70] ^= 0x01;
                    b
                }
                // Genuine report, one signature bit changed.
                _ => {
                    let mut b = genuine();
                    let len = b.len();
                    b[len - 1 - usize::from(kinds[i] % 64)] ^= 0x10;
                    b
                }
            }
        } else {
            genuine()
        };
        out.push(bytes);
    }
    let ids = meters
        .iter()
        .map(|m| (m.id().clone(), m.signing_key().verifying_key()))
        .collect();
    (out, ids, headend)
}

fn check_batch(forged: &BTreeSet<usize>, kinds: &[u8], alg: AeadAlg) {
    let (reports, ids, headend) = report_batch(alg, forged, kinds);
    let refs: Vec<&[u8]> = reports.iter().map(Vec::as_slice).collect();
    let lookup = |id: &EntityId| ids.iter().find(|(e, _)| e == id).map(|(_, k)| k);
    let results = verify_reports_batch(&refs, headend.id(), lookup);
    assert_eq!(results.len(), 64);
    let failed: BTreeSet<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(&failed, forged);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(v.header().reporter, ids[i % 8].0);
                assert_eq!(v.header().seq, seq(i as u64 / 8));
                // Each batch verdict agrees with the single verifier.
                assert_eq!(
                    verify_report(&reports[i], headend.id(), lookup).unwrap(),
                    *v
                );
            }
            Err(e) => assert!(matches!(e, Error::BadSignature), "{i}: {e:?}"),
        }
    }
}

#[test]
fn report_batch_all_genuine_and_all_forged() {
    check_batch(&BTreeSet::new(), &[0; 64], AeadAlg::A128Gcm);
    let all: BTreeSet<usize> = (0..64).collect();
    let kinds: Vec<u8> = (0..64u8).collect();
    check_batch(&all, &kinds, AeadAlg::A256Gcm);
}

#[test]
fn report_batch_edge_cases() {
    let headend = eid("headend");
    let none = |_: &EntityId| -> Option<&VerifyingKey> { None };
    assert!(verify_reports_batch(&[], &headend, none).is_empty());
    // Garbage and unknown reporters fail only themselves.
    let s = report_setup(AeadAlg::A128Gcm, cred("meter-1", 1), cred("headend", 2));
    let good = seal_report(
        s.meter.id(),
        s.meter.signing_key(),
        s.headend.id(),
        &s.at_meter,
        seq(1),
        NOW,
        b"ok",
    )
    .unwrap();
    let stranger = cred("stranger", 3);
    let unknown = seal_report(
        stranger.id(),
        stranger.signing_key(),
        s.headend.id(),
        &s.at_meter,
        seq(1),
        NOW,
        b"?",
    )
    .unwrap();
    let vk = s.meter.signing_key().verifying_key();
    let lookup = |id: &EntityId| (id == s.meter.id()).then_some(&vk);
    let res = verify_reports_batch(
        &[&good, &[0xd2, 0x84], &unknown, &good],
        s.headend.id(),
        lookup,
    );
    assert!(res[0].is_ok());
    assert!(matches!(res[1], Err(Error::Malformed(_))));
    assert!(matches!(res[2], Err(Error::UnknownSender)));
    assert!(res[3].is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn report_batch_reports_exactly_the_forgeries(
        forged in prop::collection::btree_set(0usize..64, 0..=64),
        kinds in prop::collection::vec(any::<u8>(), 64),
        alg in alg_strategy(),
    ) {
        check_batch(&forged, &kinds, alg);
    }
}

// ---------------------------------------------------------------------------
// Key delivery
// ---------------------------------------------------------------------------

#[test]
fn key_delivery_round_trip_both_algs() {
    let f = Fixture::new();
    let mut rng = TestRng::new(1);
    for alg in BOTH_ALGS {
        let m = f.material(b"lights-3", 4, alg);
        let bytes = seal_key_delivery(
            f.manager.id(),
            f.manager.signing_key(),
            f.device.id(),
            f.device.public().agreement_key(),
            &m,
            &mut rng,
        )
        .unwrap();
        let h = peek_key_delivery(&bytes).unwrap();
        assert_eq!(h.manager, *f.manager.id());
        assert_eq!(h.group, gid(b"lights-3"));
        assert_eq!(h.epoch, Epoch::new(4));
        assert_eq!(h.recipient, *f.device.id());

        let got = open_key_delivery(
            f.device.id(),
            f.device.agreement_secret(),
            f.manager.id(),
            &f.manager.signing_key().verifying_key(),
            &bytes,
        )
        .unwrap();
        assert_eq!(got, m);
        assert_eq!(got.signers(), f.signers().as_slice());

        // The delivered material opens what the group sends.
        let sender_ctx = GroupContext::new(&m).unwrap();
        let b = seal_broadcast(
            &sender_ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(1),
            NOW,
            "t",
            b"on",
        )
        .unwrap();
        let mut rx =
            BroadcastReceiver::new(GroupContext::new(&got).unwrap(), ReplayPolicy::default())
                .unwrap();
        assert_eq!(rx.open(&b, "t", NOW).unwrap().payload, b"on");
    }
}

#[test]
fn key_delivery_is_randomized() {
    let f = Fixture::new();
    let m = f.material(b"g", 1, AeadAlg::A128Gcm);
    let mut rng = TestRng::new(9);
    let mut seal = || {
        seal_key_delivery(
            f.manager.id(),
            f.manager.signing_key(),
            f.device.id(),
            f.device.public().agreement_key(),
            &m,
            &mut rng,
        )
        .unwrap()
    };
    let (a, b) = (seal(), seal());
    assert_ne!(a, b);
    // Same seed, same bytes.
    let mut r1 = TestRng::new(5);
    let mut r2 = TestRng::new(5);
    let d1 = seal_key_delivery(
        f.manager.id(),
        f.manager.signing_key(),
        f.device.id(),
        f.device.public().agreement_key(),
        &m,
        &mut r1,
    )
    .unwrap();
    let d2 = seal_key_delivery(
        f.manager.id(),
        f.manager.signing_key(),
        f.device.id(),
        f.device.public().agreement_key(),
        &m,
        &mut r2,
    )
    .unwrap();
    assert_eq!(d1, d2);
}

#[test]
fn group_key_material_cbor_round_trip_and_lookups() {
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let m = GroupKeyMaterial::new(
            gid(b"meters-north"),
            Epoch::new(12),
            alg,
            &[7u8; 48],
            &[1, 2, 3],
            f.signers(),
            Some(UnixMillis::new(99)),
        )
        .unwrap();
        let back = GroupKeyMaterial::from_cbor(&m.to_cbor().unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.not_after(), Some(UnixMillis::new(99)));
        let ctx = GroupContext::new(&back).unwrap();
        assert_eq!(ctx.sender_id_of(f.agent_b.id()), Some(&sid(&[2])));
        assert_eq!(ctx.entity_of(&sid(&[1])), Some(f.agent_a.id()));
        assert_eq!(ctx.sender_id_of(f.outsider.id()), None);
        assert_eq!(ctx.not_after(), Some(UnixMillis::new(99)));
        // Debug never shows the secret.
        assert!(!format!("{m:?}").contains("7, 7, 7"));
    }
    // Duplicate sender ids or entities are refused.
    let mut dup = f.signers();
    dup[1].sender_id = sid(&[1]);
    assert!(
        GroupKeyMaterial::new(
            gid(b"g"),
            Epoch::new(1),
            AeadAlg::A128Gcm,
            &[0; 32],
            &[],
            dup,
            None
        )
        .is_err()
    );
    assert!(
        GroupKeyMaterial::new(
            gid(b"g"),
            Epoch::new(1),
            AeadAlg::A128Gcm,
            &[0; 15],
            &[],
            vec![],
            None
        )
        .is_err()
    );
}

// ---------------------------------------------------------------------------
// Single message: encrypt to one recipient, integrity check values
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn single_encrypt_round_trip_prop(
        plaintext in prop::collection::vec(any::<u8>(), 0..2048),
        aad in prop::collection::vec(any::<u8>(), 0..64),
        kid in prop::collection::vec(any::<u8>(), 0..32),
        alg in alg_strategy(),
        seed in any::<u64>(),
    ) {
        let recipient = cred("device-x", 4);
        let mut rng = TestRng::new(seed);
        let ct = match encrypt_to(alg, &kid, recipient.public().agreement_key(), &plaintext, &aad, &mut rng) {
            Ok(ct) => ct,
            // Refusing an empty kid up front is acceptable; producing an
            // object that cannot be decrypted is not.
            Err(e) => {
                prop_assert!(kid.is_empty(), "{e:?}");
                return Ok(());
            }
        };
        let pt = decrypt_from(&kid, recipient.agreement_secret(), &ct, &aad).unwrap();
        prop_assert_eq!(pt.as_slice(), plaintext.as_slice());
        let mut other_aad = aad.clone();
        other_aad.push(0);
        prop_assert!(matches!(
            decrypt_from(&kid, recipient.agreement_secret(), &ct, &other_aad),
            Err(Error::DecryptFailed)
        ));
        let mut other_kid = kid.clone();
        other_kid.push(b'!');
        prop_assert!(matches!(
            decrypt_from(&other_kid, recipient.agreement_secret(), &ct, &aad),
            Err(Error::ContextMismatch(_))
        ));
        let wrong = cred("device-y", 5);
        prop_assert!(matches!(
            decrypt_from(&kid, wrong.agreement_secret(), &ct, &aad),
            Err(Error::DecryptFailed)
        ));
    }

    #[test]
    fn mac0_round_trip_prop(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        aad in prop::collection::vec(any::<u8>(), 0..64),
        key in prop::collection::vec(any::<u8>(), 32..=64),
        kid in prop::collection::vec(any::<u8>(), 1..=32),
    ) {
        let k = MacKey::new(KeyId::new(&kid).unwrap(), &key).unwrap();
        let tagged = mac0_create(&k, &payload, &aad).unwrap();
        prop_assert_eq!(mac0_verify(&k, &tagged, &aad).unwrap(), payload);
        let mut other_aad = aad.clone();
        other_aad.push(1);
        prop_assert!(matches!(mac0_verify(&k, &tagged, &other_aad), Err(Error::BadSignature)));
        let mut other_key = key.clone();
        other_key[0] ^= 1;
        let k2 = MacKey::new(KeyId::new(&kid).unwrap(), &other_key).unwrap();
        prop_assert!(matches!(mac0_verify(&k2, &tagged, &aad), Err(Error::BadSignature)));
        let mut other_kid = kid.clone();
        other_kid[0] ^= 1;
        let k3 = MacKey::new(KeyId::new(&other_kid).unwrap(), &key).unwrap();
        prop_assert!(matches!(mac0_verify(&k3, &tagged, &aad), Err(Error::UnknownSender)));
    }
}

#[test]
fn mac_key_length_limits_and_debug() {
    let kid = KeyId::new(b"k1").unwrap();
    assert!(matches!(
        MacKey::new(kid.clone(), &[0; 31]),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        MacKey::new(kid.clone(), &[0; 65]),
        Err(Error::InvalidKey(_))
    ));
    let k = MacKey::new(kid.clone(), &[0x5a; 32]).unwrap();
    assert_eq!(k.kid(), &kid);
    let dbg = format!("{k:?}");
    assert!(!dbg.to_lowercase().contains("5a5a"), "{dbg}");
}

/// A `BroadcastSender` (context derived once) seals exactly what
/// `seal_broadcast` seals, and every member opens it; it refuses a signer
/// the group does not list and a key that is not the listed one.
#[test]
fn a_broadcast_sender_seals_what_seal_broadcast_seals() {
    use sealcast_core::broadcast::BroadcastSender;
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let material = f.material(b"doors", 3, alg);
        let ctx = GroupContext::new(&material).unwrap();
        let sender =
            BroadcastSender::new(&material, f.agent_a.id(), f.agent_a.signing_key()).unwrap();
        assert_eq!(sender.epoch(), Epoch::new(3));
        assert_eq!(sender.group(), ctx.group());
        let mut rx = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
        for n in 0..3 {
            let bytes = sender.seal(seq(n), NOW, "g/doors/cmd", b"unlock").unwrap();
            let same = seal_broadcast(
                &ctx,
                f.agent_a.id(),
                f.agent_a.signing_key(),
                seq(n),
                NOW,
                "g/doors/cmd",
                b"unlock",
            )
            .unwrap();
            assert_eq!(bytes, same);
            let opened = rx.open(&bytes, "g/doors/cmd", NOW).unwrap();
            assert_eq!(&opened.payload[..], b"unlock");
        }
        assert!(matches!(
            BroadcastSender::new(&material, f.device.id(), f.device.signing_key()),
            Err(Error::SignerNotAuthorized)
        ));
        assert!(matches!(
            BroadcastSender::new(&material, f.agent_a.id(), f.agent_b.signing_key()),
            Err(Error::InvalidKey(_))
        ));
        // Its Debug names the group, epoch and signer, never key bytes.
        let shown = format!("{sender:?}");
        assert!(
            shown.contains("agent-a") && !shown.contains("key:"),
            "{shown}"
        );
    }
}

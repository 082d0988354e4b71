#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Attacks on the core envelopes, each refused with the right error.
//!
//! Forgeries the library would never produce are built by hand with the
//! helpers in `common` (a member of a group can derive every sender key of
//! that group from the master secret, so it can produce valid outer
//! COSE_Encrypt0 objects around any inner bytes it likes).

mod common;

use common::*;
use ed25519_dalek::{Signer, VerifyingKey};
use sealcast_core::broadcast::{
    BroadcastReceiver, MAX_BROADCAST_LEN, ReplayPolicy, peek_broadcast, seal_broadcast,
};
use sealcast_core::cose;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::delivery::{
    MAX_DELIVERY_LEN, delivery_context, open_key_delivery, peek_key_delivery, seal_key_delivery,
};
use sealcast_core::groupkey::{GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, KeyId, UnixMillis};
use sealcast_core::report::{
    MAX_REPORT_LEN, PairwiseKey, open_report, open_report_unverified, report_context, seal_report,
    verify_report, verify_reports_batch,
};
use sealcast_core::single::{MAX_SINGLE_LEN, MacKey, encrypt_to, mac0_create, mac0_verify};
use sealcast_core::testrng::TestRng;
use sealcast_core::{Error, ReplayKind};

const TARGET: &str = "grp/lights/cmd";

fn receiver(ctx: &GroupContext) -> BroadcastReceiver {
    BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap()
}

fn seal_by(ctx: &GroupContext, who: &EntityCredential, n: u64, payload: &[u8]) -> Vec<u8> {
    seal_broadcast(
        ctx,
        who.id(),
        who.signing_key(),
        seq(n),
        NOW,
        TARGET,
        payload,
    )
    .unwrap()
}

/// Replaces the unprotected `kid` of a COSE_Sign1 (which its signature does
/// not cover) and re-encodes it.
fn rewrite_sign1_kid(sign1_bytes: &[u8], kid: &[u8]) -> Vec<u8> {
    let s = cose::parse_sign1(sign1_bytes, usize::MAX).unwrap();
    sign1_raw(
        s.protected.original_data.as_deref().unwrap(),
        &[(4, Hv::Bytes(kid))],
        s.payload.as_deref().unwrap(),
        &s.signature,
    )
}

// ---------------------------------------------------------------------------
// Context binding
// ---------------------------------------------------------------------------

/// A member of groups A and B takes a command signed for A, decrypts it and
/// re-encrypts the very same signed inner object, validly, for B. The AEAD
/// passes (the forger holds B's key) but the signature covers A's context.
#[test]
fn cross_group_reencryption_is_bad_signature() {
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let m_a = f.material(b"group-A", 3, alg);
        let m_b = f.material(b"group-B", 3, alg);
        let ctx_a = GroupContext::new(&m_a).unwrap();
        let ctx_b = GroupContext::new(&m_b).unwrap();
        let genuine = seal_by(&ctx_a, &f.agent_a, 10, b"unlock all doors");
        let inner = decrypt_broadcast(&m_a, &genuine, TARGET);

        // Same sender id, sequence number, timestamp and target in B.
        let o = Outer {
            sender: &[0x01],
            seq: 10,
            timestamp: NOW.get(),
            target: TARGET,
        };
        let forged = encrypt_broadcast(&m_b, &o, &inner);
        let mut rx_b = receiver(&ctx_b);
        assert!(matches!(
            rx_b.open(&forged, TARGET, NOW),
            Err(Error::BadSignature)
        ));
        assert!(rx_b.window(&sid(&[0x01])).is_none(), "nothing committed");

        // And with a fresh outer sequence number in B as well.
        let o2 = Outer { seq: 11, ..o };
        let forged2 = encrypt_broadcast(&m_b, &o2, &inner);
        assert!(matches!(
            rx_b.open(&forged2, TARGET, NOW),
            Err(Error::BadSignature)
        ));

        // A genuine command for B with the same numbers still opens.
        let genuine_b = seal_by(&ctx_b, &f.agent_a, 10, b"unlock all doors");
        assert_eq!(
            rx_b.open(&genuine_b, TARGET, NOW).unwrap().payload,
            b"unlock all doors"
        );
    }
}

/// As above, but the signer has a different sender id in group B: the forger
/// also rewrites the inner (unprotected, unsigned) kid to match.
#[test]
fn cross_group_reencryption_with_rewritten_kid_is_bad_signature() {
    let f = Fixture::new();
    let alg = AeadAlg::A128Gcm;
    let m_a = f.material(b"group-A", 1, alg);
    let m_b = material(
        b"group-B",
        1,
        alg,
        0x42,
        vec![
            authorized(&f.agent_a, &[0x07, 0x07]),
            authorized(&f.agent_b, &[0x02]),
        ],
    );
    let ctx_a = GroupContext::new(&m_a).unwrap();
    let genuine = seal_by(&ctx_a, &f.agent_a, 1, b"open valve");
    let inner = rewrite_sign1_kid(&decrypt_broadcast(&m_a, &genuine, TARGET), &[0x07, 0x07]);
    let o = Outer {
        sender: &[0x07, 0x07],
        seq: 1,
        timestamp: NOW.get(),
        target: TARGET,
    };
    let forged = encrypt_broadcast(&m_b, &o, &inner);
    let mut rx_b = receiver(&GroupContext::new(&m_b).unwrap());
    assert!(matches!(
        rx_b.open(&forged, TARGET, NOW),
        Err(Error::BadSignature)
    ));
}

/// A member replays a signed inner object under a fresh outer sequence
/// number (new Partial IV, new nonce, valid AEAD): the signature covers the
/// original sequence number.
#[test]
fn inner_replayed_under_fresh_sequence_number_is_bad_signature() {
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let m = f.material(b"lights", 1, alg);
        let ctx = GroupContext::new(&m).unwrap();
        let genuine = seal_by(&ctx, &f.agent_a, 10, b"toggle");
        let inner = decrypt_broadcast(&m, &genuine, TARGET);

        let mut rx = receiver(&ctx);
        rx.open(&genuine, TARGET, NOW).unwrap();
        let before = rx.window(&sid(&[1])).cloned();
        for fresh in [11u64, 12, 500, 9] {
            let o = Outer {
                sender: &[0x01],
                seq: fresh,
                timestamp: NOW.get(),
                target: TARGET,
            };
            let forged = encrypt_broadcast(&m, &o, &inner);
            assert!(matches!(
                rx.open(&forged, TARGET, NOW),
                Err(Error::BadSignature)
            ));
            assert_eq!(rx.window(&sid(&[1])).cloned(), before);
        }
        // Same sequence number, fresh outer timestamp: also bound.
        let o = Outer {
            sender: &[0x01],
            seq: 13,
            timestamp: NOW.get() + 1,
            target: TARGET,
        };
        let inner13 = sign_broadcast_inner(
            &m,
            f.agent_a.signing_key(),
            &[0x01],
            &Outer {
                timestamp: NOW.get(),
                ..o.clone()
            },
            b"toggle",
        );
        assert!(matches!(
            rx.open(&encrypt_broadcast(&m, &o, &inner13), TARGET, NOW),
            Err(Error::BadSignature)
        ));
        // The genuine seq 11 still opens: the window was never touched.
        rx.open(&seal_by(&ctx, &f.agent_a, 11, b"toggle"), TARGET, NOW)
            .unwrap();
    }
}

/// Inner signer ≠ outer sender: agent B's genuine signature (over the
/// context of the outer sender A, even) inside an Encrypt0 under A's key.
#[test]
fn inner_signer_differs_from_outer_sender_is_signer_mismatch() {
    let f = Fixture::new();
    let m = f.material(b"lights", 1, AeadAlg::A256Gcm);
    let ctx = GroupContext::new(&m).unwrap();
    let o = Outer {
        sender: &[0x01],
        seq: 5,
        timestamp: NOW.get(),
        target: TARGET,
    };
    let mut rx = receiver(&ctx);

    // Signed by B with B's kid.
    let inner = sign_broadcast_inner(&m, f.agent_b.signing_key(), &[0x02], &o, b"x");
    assert!(matches!(
        rx.open(&encrypt_broadcast(&m, &o, &inner), TARGET, NOW),
        Err(Error::SignerMismatch)
    ));
    // Signed by A itself but carrying B's kid.
    let inner = sign_broadcast_inner(&m, f.agent_a.signing_key(), &[0x02], &o, b"x");
    assert!(matches!(
        rx.open(&encrypt_broadcast(&m, &o, &inner), TARGET, NOW),
        Err(Error::SignerMismatch)
    ));
    // Signed by B with A's kid: the kid matches, the signature does not.
    let inner = sign_broadcast_inner(&m, f.agent_b.signing_key(), &[0x01], &o, b"x");
    assert!(matches!(
        rx.open(&encrypt_broadcast(&m, &o, &inner), TARGET, NOW),
        Err(Error::BadSignature)
    ));
    assert!(rx.window(&sid(&[1])).is_none());
    // The control: signed by A with A's kid opens.
    let inner = sign_broadcast_inner(&m, f.agent_a.signing_key(), &[0x01], &o, b"x");
    assert_eq!(
        rx.open(&encrypt_broadcast(&m, &o, &inner), TARGET, NOW)
            .unwrap()
            .payload,
        b"x"
    );
}

/// A sender the receiver's (manager-signed) signer list does not name.
#[test]
fn signer_not_in_authorized_list_is_refused() {
    let f = Fixture::new();
    let alg = AeadAlg::A128Gcm;
    // The sender believes the outsider is authorized (e.g. an agent handed it
    // a doctored list); the receiver's list comes from the manager.
    let mut doctored = f.signers();
    doctored.push(authorized(&f.outsider, &[0x09]));
    let m_sender = material(b"lights", 1, alg, 0x11, doctored);
    let m_rx = material(b"lights", 1, alg, 0x11, f.signers());
    let ctx_sender = GroupContext::new(&m_sender).unwrap();
    let mut rx = receiver(&GroupContext::new(&m_rx).unwrap());

    let b = seal_by(&ctx_sender, &f.outsider, 1, b"evil");
    assert!(matches!(
        rx.open(&b, TARGET, NOW),
        Err(Error::SignerNotAuthorized)
    ));
    // Hand-built with a sender id unknown to the group.
    let o = Outer {
        sender: &[0x33, 0x44],
        seq: 1,
        timestamp: NOW.get(),
        target: TARGET,
    };
    let inner = sign_broadcast_inner(&m_rx, f.outsider.signing_key(), &[0x33, 0x44], &o, b"e");
    assert!(matches!(
        rx.open(&encrypt_broadcast(&m_rx, &o, &inner), TARGET, NOW),
        Err(Error::SignerNotAuthorized)
    ));
    assert_eq!(rx.windows().count(), 0);
    // The genuine signers still work.
    rx.open(&seal_by(&ctx_sender, &f.agent_a, 1, b"ok"), TARGET, NOW)
        .unwrap();
}

/// Someone without the master secret (same group id, epoch and signer list,
/// wrong secret) cannot open: the AEAD stops it before any signature work.
#[test]
fn non_member_cannot_open() {
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        let m = f.material(b"lights", 1, alg);
        let wrong = material(b"lights", 1, alg, 0x99, f.signers());
        assert_ne!(m.master_secret(), wrong.master_secret());
        let b = seal_by(&GroupContext::new(&m).unwrap(), &f.agent_a, 1, b"x");
        let mut rx = receiver(&GroupContext::new(&wrong).unwrap());
        assert!(matches!(
            rx.open(&b, TARGET, NOW),
            Err(Error::DecryptFailed)
        ));
        assert_eq!(rx.windows().count(), 0);
        // Nor can a non-member inject.
        let forged = seal_by(&GroupContext::new(&wrong).unwrap(), &f.agent_a, 2, b"y");
        let mut rx_m = receiver(&GroupContext::new(&m).unwrap());
        assert!(matches!(
            rx_m.open(&forged, TARGET, NOW),
            Err(Error::DecryptFailed)
        ));
    }
}

/// The target (topic / URI) is part of the context. The context is in the
/// AEAD's AAD as well as under the signature, and the AEAD is checked first,
/// so a broadcast opened on another target fails at the AEAD.
#[test]
fn wrong_target_is_refused() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A128Gcm);
    let b = seal_by(&ctx, &f.agent_a, 1, b"x");
    let mut rx = receiver(&ctx);
    for other in ["grp/lights/cmd2", "", "grp/doors/cmd"] {
        assert!(matches!(rx.open(&b, other, NOW), Err(Error::DecryptFailed)));
    }
    // A member that re-encrypts the signed inner object validly for the
    // other target (so the AEAD passes) is stopped by the signature.
    let m = f.material(b"lights", 1, AeadAlg::A128Gcm);
    let inner = decrypt_broadcast(&m, &b, TARGET);
    let o = Outer {
        sender: &[0x01],
        seq: 1,
        timestamp: NOW.get(),
        target: "grp/doors/cmd",
    };
    assert!(matches!(
        rx.open(&encrypt_broadcast(&m, &o, &inner), "grp/doors/cmd", NOW),
        Err(Error::BadSignature)
    ));
    rx.open(&b, TARGET, NOW).unwrap();
}

#[test]
fn stale_and_newer_epochs() {
    let f = Fixture::new();
    let m1 = f.material(b"lights", 1, AeadAlg::A128Gcm);
    let m2 = m1.ratchet(f.signers(), None).unwrap();
    let m3 = m2.ratchet(f.signers(), None).unwrap();
    let (c1, c2, c3) = (
        GroupContext::new(&m1).unwrap(),
        GroupContext::new(&m2).unwrap(),
        GroupContext::new(&m3).unwrap(),
    );
    let old = seal_by(&c1, &f.agent_a, 1, b"old");
    let newer = seal_by(&c3, &f.agent_a, 1, b"newer");

    let mut rx = receiver(&c1);
    rx.install(c2.clone()).unwrap();
    assert!(matches!(rx.open(&old, TARGET, NOW), Err(Error::StaleEpoch)));
    assert!(matches!(
        rx.open(&newer, TARGET, NOW),
        Err(Error::FutureEpoch)
    ));
    // Installing an older or equal epoch, or another group, is refused.
    assert!(matches!(rx.install(c1.clone()), Err(Error::StaleEpoch)));
    assert!(matches!(rx.install(c2.clone()), Err(Error::StaleEpoch)));
    let other_group = f.context(b"doors", 9, AeadAlg::A128Gcm);
    assert!(matches!(
        rx.install(other_group.clone()),
        Err(Error::ContextMismatch(_))
    ));
    // A broadcast of another group.
    let b = seal_by(&other_group, &f.agent_a, 1, b"x");
    assert!(matches!(
        rx.open(&b, TARGET, NOW),
        Err(Error::ContextMismatch(_))
    ));
    rx.open(&seal_by(&c2, &f.agent_a, 1, b"now"), TARGET, NOW)
        .unwrap();
    rx.install(c3).unwrap();
    rx.open(&newer, TARGET, NOW).unwrap();
}

// ---------------------------------------------------------------------------
// Replay and freshness
// ---------------------------------------------------------------------------

#[test]
fn replay_inside_window_is_duplicate() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A128Gcm);
    let mut rx = receiver(&ctx);
    let b5 = seal_by(&ctx, &f.agent_a, 5, b"x");
    let b3 = seal_by(&ctx, &f.agent_a, 3, b"y");
    rx.open(&b5, TARGET, NOW).unwrap();
    rx.open(&b3, TARGET, NOW).unwrap();
    for b in [&b5, &b3, &b5] {
        assert!(matches!(
            rx.open(b, TARGET, NOW),
            Err(Error::Replay(ReplayKind::Duplicate))
        ));
    }
    // The same sequence number from the other sender is independent.
    rx.open(&seal_by(&ctx, &f.agent_b, 5, b"z"), TARGET, NOW)
        .unwrap();
}

#[test]
fn replay_outside_window_is_too_old() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A256Gcm);
    let mut rx = receiver(&ctx);
    let first = seal_by(&ctx, &f.agent_a, 1, b"first");
    rx.open(&first, TARGET, NOW).unwrap();
    // 2..=101, leaving out 90.
    for n in (2..=101).filter(|n| *n != 90) {
        rx.open(&seal_by(&ctx, &f.agent_a, n, b"more"), TARGET, NOW)
            .unwrap();
    }
    assert!(matches!(
        rx.open(&first, TARGET, NOW),
        Err(Error::Replay(ReplayKind::TooOld))
    ));
    // Never seen, but just as old: also refused.
    assert!(matches!(
        rx.open(&seal_by(&ctx, &f.agent_a, 37, b"late"), TARGET, NOW),
        Err(Error::Replay(ReplayKind::TooOld))
    ));
    // Unseen and inside the window (101 − 64 < 90): accepted once.
    let late_ok = seal_by(&ctx, &f.agent_a, 90, b"late");
    rx.open(&late_ok, TARGET, NOW).unwrap();
    assert!(matches!(
        rx.open(&late_ok, TARGET, NOW),
        Err(Error::Replay(ReplayKind::Duplicate))
    ));
}

#[test]
fn sequence_policy_with_skew_refuses_stale_timestamps() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A128Gcm);
    let policy = ReplayPolicy::Sequence {
        window: 64,
        max_skew_ms: Some(5_000),
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
    let at = |n, ts: u64| {
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(n),
            UnixMillis::new(ts),
            TARGET,
            b"x",
        )
        .unwrap()
    };
    rx.open(&at(1, NOW.get()), TARGET, NOW).unwrap();
    let before = rx.window(&sid(&[1])).cloned();
    for ts in [NOW.get() - 5_001, NOW.get() + 5_001, 0, u64::MAX] {
        assert!(matches!(
            rx.open(&at(2, ts), TARGET, NOW),
            Err(Error::StaleTimestamp)
        ));
        assert_eq!(rx.window(&sid(&[1])).cloned(), before, "not committed");
    }
    // Sequence number 2 was never committed: a fresh message with it opens.
    rx.open(&at(2, NOW.get() + 5_000), TARGET, NOW).unwrap();
}

#[test]
fn timestamp_policy_refuses_stale_and_duplicates() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A256Gcm);
    let policy = ReplayPolicy::Timestamp {
        skew_ms: 10_000,
        max_entries: 100,
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
    let at = |n, ts: u64| {
        seal_broadcast(
            &ctx,
            f.agent_a.id(),
            f.agent_a.signing_key(),
            seq(n),
            UnixMillis::new(ts),
            TARGET,
            b"x",
        )
        .unwrap()
    };
    for ts in [NOW.get() - 10_001, NOW.get() + 10_001, 0] {
        assert!(matches!(
            rx.open(&at(1, ts), TARGET, NOW),
            Err(Error::StaleTimestamp)
        ));
    }
    let b = at(1, NOW.get() - 3_000);
    rx.open(&b, TARGET, NOW).unwrap();
    assert!(matches!(
        rx.open(&b, TARGET, NOW),
        Err(Error::Replay(ReplayKind::Duplicate))
    ));
    // Still a duplicate a little later, while it is remembered.
    let later = UnixMillis::new(NOW.get() + 5_000);
    assert!(matches!(
        rx.open(&b, TARGET, later),
        Err(Error::Replay(ReplayKind::Duplicate))
    ));
    // Once it aged out of the skew it is stale.
    let much_later = UnixMillis::new(NOW.get() + 60_000);
    assert!(matches!(
        rx.open(&b, TARGET, much_later),
        Err(Error::StaleTimestamp)
    ));
    // A failed open is not remembered: a message that failed its signature
    // check does not block the genuine one.
    let m = f.material(b"lights", 1, AeadAlg::A256Gcm);
    let o = Outer {
        sender: &[0x01],
        seq: 2,
        timestamp: NOW.get(),
        target: TARGET,
    };
    let bad_inner = sign_broadcast_inner(&m, f.agent_b.signing_key(), &[0x01], &o, b"x");
    assert!(matches!(
        rx.open(&encrypt_broadcast(&m, &o, &bad_inner), TARGET, NOW),
        Err(Error::BadSignature)
    ));
    rx.open(&at(2, NOW.get()), TARGET, NOW).unwrap();
}

// ---------------------------------------------------------------------------
// Bit flips
// ---------------------------------------------------------------------------

/// Calls `f` on every single-bit variant of `bytes` (all positions, the
/// given bits).
fn for_each_flip(bytes: &[u8], bits: &[u8], mut f: impl FnMut(usize, u8, &[u8])) {
    let mut m = bytes.to_vec();
    for i in 0..bytes.len() {
        for &bit in bits {
            m[i] ^= 1 << bit;
            f(i, bit, &m);
            m[i] ^= 1 << bit;
        }
    }
}

const ALL_BITS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const SOME_BITS: [u8; 3] = [0, 4, 7];

#[test]
fn bit_flips_in_broadcast_are_refused_and_leave_the_window_alone() {
    let f = Fixture::new();
    for alg in BOTH_ALGS {
        for sender in [&f.agent_a, &f.agent_b] {
            let ctx = f.context(b"lights", 2, alg);
            let mut rx = receiver(&ctx);
            for n in 1..=4 {
                rx.open(&seal_by(&ctx, sender, n, b"warm-up"), TARGET, NOW)
                    .unwrap();
            }
            let sender_id = ctx.sender_id_of(sender.id()).unwrap().clone();
            let before = rx.window(&sender_id).cloned();
            let genuine = seal_by(&ctx, sender, 7, b"the real command");
            for_each_flip(&genuine, &ALL_BITS, |i, bit, m| {
                let r = rx.open(m, TARGET, NOW);
                assert!(r.is_err(), "byte {i} bit {bit} opened: {r:?}");
                assert_eq!(rx.window(&sender_id).cloned(), before, "byte {i} bit {bit}");
                assert_eq!(rx.windows().count(), 1, "byte {i} bit {bit}");
            });
            let got = rx.open(&genuine, TARGET, NOW).unwrap();
            assert_eq!(got.payload, b"the real command");
        }
    }
}

#[test]
fn bit_flips_in_broadcast_timestamp_mode_are_refused() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 2, AeadAlg::A128Gcm);
    let policy = ReplayPolicy::Timestamp {
        skew_ms: u64::MAX,
        max_entries: 10,
    };
    let mut rx = BroadcastReceiver::new(ctx.clone(), policy).unwrap();
    let genuine = seal_by(&ctx, &f.agent_a, 7, b"the real command");
    for_each_flip(&genuine, &ALL_BITS, |i, bit, m| {
        let r = rx.open(m, TARGET, NOW);
        assert!(r.is_err(), "byte {i} bit {bit} opened: {r:?}");
    });
    rx.open(&genuine, TARGET, NOW).unwrap();
}

struct ReportFixture {
    meter: EntityCredential,
    headend: EntityCredential,
    at_meter: PairwiseKey,
    at_headend: PairwiseKey,
    meter_vk: VerifyingKey,
}

fn report_fixture(alg: AeadAlg) -> ReportFixture {
    let f = Fixture::new();
    let (meter, headend) = (f.meter, f.headend);
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
    let meter_vk = meter.signing_key().verifying_key();
    ReportFixture {
        meter,
        headend,
        at_meter,
        at_headend,
        meter_vk,
    }
}

impl ReportFixture {
    fn seal(&self, n: u64, reading: &[u8]) -> Vec<u8> {
        seal_report(
            self.meter.id(),
            self.meter.signing_key(),
            self.headend.id(),
            &self.at_meter,
            seq(n),
            NOW,
            reading,
        )
        .unwrap()
    }
    fn lookup<'s>(&'s self) -> impl Fn(&EntityId) -> Option<&'s VerifyingKey> + 's {
        move |id| (id == self.meter.id()).then_some(&self.meter_vk)
    }
    /// Verify, then decrypt: the headend's full path.
    fn open(&self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let v = verify_report(bytes, self.headend.id(), self.lookup())?;
        Ok(open_report(&v, self.headend.id(), &self.at_headend)?.to_vec())
    }
}

#[test]
fn bit_flips_in_report_are_refused() {
    let r = report_fixture(AeadAlg::A128Gcm);
    let genuine = r.seal(3, b"kWh=12.5");
    let sig_start = genuine.len() - 64;
    for_each_flip(&genuine, &SOME_BITS, |i, bit, m| {
        let res = r.open(m);
        assert!(res.is_err(), "byte {i} bit {bit}: {res:?}");
        // The signature check alone catches it.
        assert!(
            verify_report(m, r.headend.id(), r.lookup()).is_err(),
            "byte {i} bit {bit}"
        );
        // Without the signature check only the signature bytes may change
        // unnoticed (the AEAD and the bound context cover everything else).
        if i < sig_start {
            let res = open_report_unverified(m, r.headend.id(), &r.at_headend);
            assert!(res.is_err(), "unverified: byte {i} bit {bit}: {res:?}");
        }
    });
    assert_eq!(r.open(&genuine).unwrap(), b"kWh=12.5");
}

#[test]
fn bit_flips_in_key_delivery_are_refused() {
    let f = Fixture::new();
    let m = f.material(b"lights", 5, AeadAlg::A128Gcm);
    let mut rng = TestRng::new(77);
    let genuine = seal_key_delivery(
        f.manager.id(),
        f.manager.signing_key(),
        f.device.id(),
        f.device.public().agreement_key(),
        &m,
        &mut rng,
    )
    .unwrap();
    let mvk = f.manager.signing_key().verifying_key();
    let open = |b: &[u8]| {
        open_key_delivery(
            f.device.id(),
            f.device.agreement_secret(),
            f.manager.id(),
            &mvk,
            b,
        )
    };
    for_each_flip(&genuine, &SOME_BITS, |i, bit, b| {
        let res = open(b);
        assert!(res.is_err(), "byte {i} bit {bit}: {res:?}");
    });
    assert_eq!(open(&genuine).unwrap(), m);
}

#[test]
fn bit_flips_in_mac0_are_refused() {
    let key = MacKey::new(KeyId::new(b"icv-key-1").unwrap(), &[0x33; 32]).unwrap();
    let aad = b"oneM2M ICV context";
    let genuine = mac0_create(&key, b"temperature=21.5", aad).unwrap();
    let mut accepted = Vec::new();
    for_each_flip(&genuine, &ALL_BITS, |i, bit, b| {
        if mac0_verify(&key, b, aad).is_ok() {
            accepted.push((i, bit, b[i]));
        }
    });
    assert!(
        accepted.is_empty(),
        "mac0 {:02x?}: flipped variants verified (byte, bit, new value): {accepted:?}",
        genuine
    );
    assert_eq!(
        mac0_verify(&key, &genuine, aad).unwrap(),
        b"temperature=21.5"
    );
}

// ---------------------------------------------------------------------------
// Malformed input: truncation, size, nesting, trailing garbage, tags
// ---------------------------------------------------------------------------

/// All four kinds of object, with an opener each that returns only the error.
struct Objects {
    broadcast: Vec<u8>,
    report: Vec<u8>,
    delivery: Vec<u8>,
    mac0: Vec<u8>,
}

type Opener<'a> = Box<dyn Fn(&[u8]) -> Option<Error> + 'a>;

fn objects() -> Objects {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A128Gcm);
    let r = report_fixture(AeadAlg::A128Gcm);
    let mut rng = TestRng::new(1);
    Objects {
        broadcast: seal_by(&ctx, &f.agent_a, 1, b"cmd"),
        report: r.seal(1, b"reading"),
        delivery: seal_key_delivery(
            f.manager.id(),
            f.manager.signing_key(),
            f.device.id(),
            f.device.public().agreement_key(),
            &f.material(b"lights", 1, AeadAlg::A128Gcm),
            &mut rng,
        )
        .unwrap(),
        mac0: mac0_create(&mac_key(), b"payload", b"").unwrap(),
    }
}

fn mac_key() -> MacKey {
    MacKey::new(KeyId::new(b"k").unwrap(), &[1; 32]).unwrap()
}

/// Openers for (name, genuine object, max length, opener).
fn with_openers(run: impl Fn(&str, &[u8], usize, &Opener<'_>)) {
    let f = Fixture::new();
    let o = objects();
    let ctx = f.context(b"lights", 1, AeadAlg::A128Gcm);
    let r = report_fixture(AeadAlg::A128Gcm);
    let mvk = f.manager.signing_key().verifying_key();
    let key = mac_key();

    let rx = std::cell::RefCell::new(receiver(&ctx));
    let broadcast: Opener<'_> = Box::new(|b| rx.borrow_mut().open(b, TARGET, NOW).err());
    let peek: Opener<'_> = Box::new(|b| peek_broadcast(b).err());
    let report: Opener<'_> = Box::new(|b| r.open(b).err());
    let report_unverified: Opener<'_> =
        Box::new(|b| open_report_unverified(b, r.headend.id(), &r.at_headend).err());
    let delivery: Opener<'_> = Box::new(|b| {
        open_key_delivery(
            f.device.id(),
            f.device.agreement_secret(),
            f.manager.id(),
            &mvk,
            b,
        )
        .err()
    });
    let peek_delivery: Opener<'_> = Box::new(|b| peek_key_delivery(b).err());
    let mac0: Opener<'_> = Box::new(|b| mac0_verify(&key, b, b"").err());

    run("broadcast", &o.broadcast, MAX_BROADCAST_LEN, &broadcast);
    run("peek_broadcast", &o.broadcast, MAX_BROADCAST_LEN, &peek);
    run("report", &o.report, MAX_REPORT_LEN, &report);
    run(
        "report_unverified",
        &o.report,
        MAX_REPORT_LEN,
        &report_unverified,
    );
    run("delivery", &o.delivery, MAX_DELIVERY_LEN, &delivery);
    run(
        "peek_delivery",
        &o.delivery,
        MAX_DELIVERY_LEN,
        &peek_delivery,
    );
    run("mac0", &o.mac0, MAX_SINGLE_LEN, &mac0);
}

#[test]
fn genuine_objects_open() {
    with_openers(|name, genuine, _, open| {
        assert_eq!(open(genuine), None, "{name}");
    });
}

#[test]
fn every_truncation_is_malformed() {
    with_openers(|name, genuine, _, open| {
        for len in 0..genuine.len() {
            let e = open(&genuine[..len]);
            assert!(
                matches!(e, Some(Error::Malformed(_))),
                "{name}: prefix {len}/{}: {e:?}",
                genuine.len()
            );
        }
    });
}

#[test]
fn trailing_garbage_is_malformed() {
    with_openers(|name, genuine, _, open| {
        for tail in [
            &[0x00][..],
            &[0xff][..],
            &[0xf6, 0xf6][..],
            &[0x40][..],
            genuine,
        ] {
            let mut b = genuine.to_vec();
            b.extend_from_slice(tail);
            let e = open(&b);
            assert!(matches!(e, Some(Error::Malformed(_))), "{name}: {e:?}");
        }
    });
}

#[test]
fn oversized_input_is_too_large() {
    with_openers(|name, genuine, limit, open| {
        // A valid-looking object padded past the limit, and plain zeros.
        let mut padded = genuine.to_vec();
        padded.resize(limit + 1, 0);
        for b in [padded, vec![0u8; limit + 1]] {
            let e = open(&b);
            assert!(matches!(e, Some(Error::TooLarge { .. })), "{name}: {e:?}");
        }
        // Exactly at the limit is parsed (and refused as malformed).
        let e = open(&vec![0u8; limit]);
        assert!(matches!(e, Some(Error::Malformed(_))), "{name}: {e:?}");
    });
}

#[test]
fn a_sealed_broadcast_larger_than_the_limit_is_refused() {
    let f = Fixture::new();
    let ctx = f.context(b"lights", 1, AeadAlg::A128Gcm);
    let b = seal_by(&ctx, &f.agent_a, 1, &vec![7u8; MAX_BROADCAST_LEN]);
    assert!(b.len() > MAX_BROADCAST_LEN);
    assert!(matches!(
        receiver(&ctx).open(&b, TARGET, NOW),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn wrong_tags_are_malformed() {
    with_openers(|name, genuine, _, open| {
        // Every other one-byte tag 0..=23, and tag 16/17/18 in a
        // non-shortest (two-byte) head.
        for tag in 0u8..24 {
            if 0xc0 | tag == genuine[0] {
                continue;
            }
            let mut b = genuine.to_vec();
            b[0] = 0xc0 | tag;
            let e = open(&b);
            assert!(
                matches!(e, Some(Error::Malformed(_))),
                "{name} tag {tag}: {e:?}"
            );
        }
        // The right tag in a longer head than needed (`d8 10` for 16) is
        // what coset decodes too: accepted, like every other non-preferred
        // head in the object, so it opens (or is a replay). A longer head
        // of another tag is still refused.
        for head in [
            vec![0xd8, genuine[0] & 0x1f],
            vec![0xd9, 0x00, genuine[0] & 0x1f],
            vec![0xda, 0x00, 0x00, 0x00, genuine[0] & 0x1f],
        ] {
            let mut b = head.clone();
            b.extend_from_slice(&genuine[1..]);
            let e = open(&b);
            assert!(
                e.is_none() || matches!(e, Some(Error::Replay(_))),
                "{name} long tag {head:02x?}: {e:?}"
            );
        }
        for head in [vec![0xd8, (genuine[0] & 0x1f) + 1], vec![0xd8], vec![0xdc]] {
            let mut b = head.clone();
            b.extend_from_slice(&genuine[1..]);
            let e = open(&b);
            assert!(
                matches!(e, Some(Error::Malformed(_))),
                "{name} long head {head:02x?}: {e:?}"
            );
        }
        // Doubly tagged.
        let mut b = vec![genuine[0]];
        b.extend_from_slice(genuine);
        let e = open(&b);
        assert!(
            matches!(e, Some(Error::Malformed(_))),
            "{name} double tag: {e:?}"
        );
        // Untagged is accepted by design, so it opens (or, for the broadcast
        // receiver that already accepted it, is a replay).
        let e = open(&genuine[1..]);
        assert!(
            e.is_none() || matches!(e, Some(Error::Replay(_))),
            "{name} untagged: {e:?}"
        );
    });
    // Each envelope refuses the others' objects.
    let o = objects();
    with_openers(|name, _, _, open| {
        for (other, bytes) in [
            ("broadcast", &o.broadcast),
            ("report", &o.report),
            ("delivery", &o.delivery),
            ("mac0", &o.mac0),
        ] {
            if name.contains(other) {
                continue;
            }
            let e = open(bytes);
            assert!(e.is_some(), "{name} accepted a {other}");
        }
    });
}

#[test]
fn deep_nesting_is_malformed_without_overflow() {
    with_openers(|name, genuine, limit, open| {
        // Past the size limit the size check answers first.
        let ok = |e: &Option<Error>, len: usize| match e {
            Some(Error::Malformed(_)) => true,
            Some(Error::TooLarge { .. }) => len > limit,
            _ => false,
        };
        for depth in [300, 10_000, 100_000] {
            let nested = nested_arrays(depth);
            let e = open(&nested);
            assert!(ok(&e, nested.len()), "{name} {depth}: {e:?}");
            // Tagged like the real thing.
            let mut b = vec![genuine[0]];
            b.extend_from_slice(&nested);
            let e = open(&b);
            assert!(ok(&e, b.len()), "{name} {depth}: {e:?}");
            // Indefinite-length arrays and nested maps.
            let mut b = vec![genuine[0]];
            b.extend(std::iter::repeat_n(0x9f, depth));
            let e = open(&b);
            assert!(ok(&e, b.len()), "{name} {depth}: {e:?}");
            let mut b = vec![genuine[0]];
            for _ in 0..depth {
                b.extend_from_slice(&[0xa1, 0x01]);
            }
            b.push(0x00);
            let e = open(&b);
            assert!(ok(&e, b.len()), "{name} {depth}: {e:?}");
        }
    });
}

#[test]
fn absurd_declared_lengths_are_malformed() {
    with_openers(|name, genuine, _, open| {
        let t = genuine[0];
        let cases: Vec<Vec<u8>> = vec![
            // Arrays, maps, byte and text strings claiming 2^32 and 2^63
            // elements / bytes, in place of the whole object and of a field.
            vec![t, 0x9b, 0, 0, 0, 1, 0, 0, 0, 0],
            vec![t, 0x9b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![t, 0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![
                t, 0x84, 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            vec![t, 0x84, 0x40, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0],
            vec![t, 0x83, 0x40, 0xa0, 0x7b, 0, 0, 0, 1, 0, 0, 0, 0],
        ];
        for b in cases {
            let e = open(&b);
            assert!(
                matches!(e, Some(Error::Malformed(_))),
                "{name} {b:02x?}: {e:?}"
            );
        }
    });
}

/// Deep nesting inside header values and inside the encrypted or signed
/// content, of otherwise valid objects.
#[test]
fn deep_nesting_inside_headers_and_content_is_malformed() {
    let f = Fixture::new();
    let m = f.material(b"lights", 1, AeadAlg::A128Gcm);
    let ctx = GroupContext::new(&m).unwrap();
    let o = Outer {
        sender: &[0x01],
        seq: 1,
        timestamp: NOW.get(),
        target: TARGET,
    };
    let inner = sign_broadcast_inner(&m, f.agent_a.signing_key(), &[0x01], &o, b"x");
    let deep = nested_arrays(10_000);
    let mut rx = receiver(&ctx);

    // In an unprotected header value of the outer object.
    let b = encrypt_broadcast_with(&m, &o, &inner, &[(-70_003, Hv::Raw(&deep))]);
    assert!(matches!(rx.open(&b, TARGET, NOW), Err(Error::Malformed(_))));
    assert!(matches!(peek_broadcast(&b), Err(Error::Malformed(_))));
    // In the protected header.
    let good = encrypt_broadcast(&m, &o, &inner);
    let parsed = cose::parse_encrypt0(&good, usize::MAX).unwrap();
    let mut protected = vec![0xa2, 0x01, 0x01, 0x39, 0x01, 0x00];
    protected.extend_from_slice(&deep);
    let b = encrypt0_raw(
        &protected,
        &[
            (4, Hv::Bytes(&[0x01])),
            (6, Hv::Bytes(&[0x01])),
            (10, Hv::Bytes(b"lights")),
            (-70_001, Hv::Int(1)),
            (-70_002, Hv::Int(NOW.get() as i64)),
        ],
        parsed.ciphertext.as_deref().unwrap(),
    );
    assert!(matches!(rx.open(&b, TARGET, NOW), Err(Error::Malformed(_))));
    // As the (validly encrypted) inner object.
    let b = encrypt_broadcast(&m, &o, &deep);
    assert!(matches!(rx.open(&b, TARGET, NOW), Err(Error::Malformed(_))));
    // In an inner header value.
    let mut inner_deep = vec![TAG_SIGN1, 0x84];
    bstr(&mut inner_deep, &protected_alg(ALG_EDDSA));
    map(
        &mut inner_deep,
        &[(4, Hv::Bytes(&[0x01])), (-1000, Hv::Raw(&deep))],
    );
    bstr(&mut inner_deep, b"x");
    bstr(&mut inner_deep, &[0u8; 64]);
    let b = encrypt_broadcast(&m, &o, &inner_deep);
    assert!(matches!(rx.open(&b, TARGET, NOW), Err(Error::Malformed(_))));
    // The wrong COSE structure inside (an Encrypt0 where a Sign1 belongs).
    let b = encrypt_broadcast(&m, &o, &good);
    assert!(matches!(rx.open(&b, TARGET, NOW), Err(Error::Malformed(_))));
    // Nothing was committed; the genuine object opens.
    assert_eq!(rx.windows().count(), 0);
    rx.open(&good, TARGET, NOW).unwrap();

    // A meter-signed report whose payload is deeply nested: the signature
    // verifies, decryption refuses the structure.
    let r = report_fixture(AeadAlg::A128Gcm);
    let context = report_context(r.meter.id(), r.headend.id(), seq(1), NOW);
    let protected = protected_alg(ALG_EDDSA);
    let sig = r
        .meter
        .signing_key()
        .sign(&cose::sig1_structure(&protected, &context, &deep));
    let b = sign1_raw(
        &protected,
        &[
            (4, Hv::Bytes(r.meter.id().as_bytes())),
            (6, Hv::Bytes(&[0x01])),
            (-70_002, Hv::Int(NOW.get() as i64)),
        ],
        &deep,
        &sig.to_bytes(),
    );
    let v = verify_report(&b, r.headend.id(), r.lookup()).unwrap();
    assert!(matches!(
        open_report(&v, r.headend.id(), &r.at_headend),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        open_report_unverified(&b, r.headend.id(), &r.at_headend),
        Err(Error::Malformed(_))
    ));

    // A manager-signed delivery whose payload is deeply nested.
    let context = delivery_context(f.device.id(), &gid(b"lights"), m.epoch());
    let sig = f
        .manager
        .signing_key()
        .sign(&cose::sig1_structure(&protected, &context, &deep));
    let b = sign1_raw(
        &protected,
        &[
            (4, Hv::Bytes(f.manager.id().as_bytes())),
            (10, Hv::Bytes(b"lights")),
            (-70_001, Hv::Int(1)),
        ],
        &deep,
        &sig.to_bytes(),
    );
    let mvk = f.manager.signing_key().verifying_key();
    assert!(matches!(
        open_key_delivery(
            f.device.id(),
            f.device.agreement_secret(),
            f.manager.id(),
            &mvk,
            &b
        ),
        Err(Error::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------
// Key delivery
// ---------------------------------------------------------------------------

struct DeliveryFixture {
    f: Fixture,
    material: GroupKeyMaterial,
    bytes: Vec<u8>,
    manager_vk: VerifyingKey,
}

fn delivery_fixture() -> DeliveryFixture {
    let f = Fixture::new();
    let material = f.material(b"lights", 4, AeadAlg::A256Gcm);
    let mut rng = TestRng::new(11);
    let bytes = seal_key_delivery(
        f.manager.id(),
        f.manager.signing_key(),
        f.device.id(),
        f.device.public().agreement_key(),
        &material,
        &mut rng,
    )
    .unwrap();
    let manager_vk = f.manager.signing_key().verifying_key();
    DeliveryFixture {
        f,
        material,
        bytes,
        manager_vk,
    }
}

/// A manager-signed delivery built by hand: `context_group` / `context_epoch`
/// in the signed context and headers, `material` inside.
fn hand_delivery(
    d: &DeliveryFixture,
    recipient: &EntityCredential,
    context_group: &[u8],
    context_epoch: u32,
    material: &GroupKeyMaterial,
) -> Vec<u8> {
    let context = delivery_context(
        recipient.id(),
        &gid(context_group),
        sealcast_core::ids::Epoch::new(context_epoch),
    );
    let mut rng = TestRng::new(5);
    let inner = encrypt_to(
        material.alg(),
        recipient.id().as_bytes(),
        recipient.public().agreement_key(),
        &material.to_cbor().unwrap(),
        &context,
        &mut rng,
    )
    .unwrap();
    let protected = protected_alg(ALG_EDDSA);
    let sig =
        d.f.manager
            .signing_key()
            .sign(&cose::sig1_structure(&protected, &context, &inner));
    sign1_raw(
        &protected,
        &[
            (4, Hv::Bytes(d.f.manager.id().as_bytes())),
            (10, Hv::Bytes(context_group)),
            (-70_001, Hv::Int(i64::from(context_epoch))),
        ],
        &inner,
        &sig.to_bytes(),
    )
}

#[test]
fn agent_cannot_open_a_key_delivery() {
    let d = delivery_fixture();
    let agent = &d.f.agent_a;
    // Pretending to be the device, with the agent's own X25519 key.
    let e = open_key_delivery(
        d.f.device.id(),
        agent.agreement_secret(),
        d.f.manager.id(),
        &d.manager_vk,
        &d.bytes,
    );
    assert!(matches!(e, Err(Error::DecryptFailed)), "{e:?}");
    // As itself.
    let e = open_key_delivery(
        agent.id(),
        agent.agreement_secret(),
        d.f.manager.id(),
        &d.manager_vk,
        &d.bytes,
    );
    assert!(matches!(e, Err(Error::ContextMismatch(_))), "{e:?}");
    // The agent can still route it.
    assert_eq!(
        peek_key_delivery(&d.bytes).unwrap().recipient,
        *d.f.device.id()
    );
}

#[test]
fn key_delivery_not_signed_by_the_manager_is_refused() {
    let d = delivery_fixture();
    let impostor = &d.f.outsider;
    let open = |b: &[u8]| {
        open_key_delivery(
            d.f.device.id(),
            d.f.device.agreement_secret(),
            d.f.manager.id(),
            &d.manager_vk,
            b,
        )
    };
    let mut rng = TestRng::new(3);
    // Claims to be the manager, signs with its own key.
    let forged = seal_key_delivery(
        d.f.manager.id(),
        impostor.signing_key(),
        d.f.device.id(),
        d.f.device.public().agreement_key(),
        &d.material,
        &mut rng,
    )
    .unwrap();
    assert!(matches!(open(&forged), Err(Error::BadSignature)));
    // Signs as itself.
    let forged = seal_key_delivery(
        impostor.id(),
        impostor.signing_key(),
        d.f.device.id(),
        d.f.device.public().agreement_key(),
        &d.material,
        &mut rng,
    )
    .unwrap();
    assert!(matches!(open(&forged), Err(Error::UnknownSender)));
    // An agent swaps the manager's signature for a stale one of its own
    // choosing: re-signing by an agent is the first case; a signature of the
    // manager over another delivery is also refused.
    let other = seal_key_delivery(
        d.f.manager.id(),
        d.f.manager.signing_key(),
        d.f.device.id(),
        d.f.device.public().agreement_key(),
        &f_material_epoch(&d, 9),
        &mut rng,
    )
    .unwrap();
    let mut spliced = d.bytes.clone();
    let n = spliced.len();
    spliced[n - 64..].copy_from_slice(&other[other.len() - 64..]);
    assert!(matches!(open(&spliced), Err(Error::BadSignature)));
    assert_eq!(open(&d.bytes).unwrap(), d.material);
}

fn f_material_epoch(d: &DeliveryFixture, epoch: u32) -> GroupKeyMaterial {
    d.f.material(b"lights", epoch, AeadAlg::A256Gcm)
}

#[test]
fn key_delivery_for_another_device_is_context_mismatch() {
    let d = delivery_fixture();
    let y = &d.f.device_y;
    let e = open_key_delivery(
        y.id(),
        y.agreement_secret(),
        d.f.manager.id(),
        &d.manager_vk,
        &d.bytes,
    );
    assert!(matches!(e, Err(Error::ContextMismatch(_))), "{e:?}");

    // An agent relabels the recipient kid (inside the signed payload) to Y:
    // the manager's signature no longer matches.
    let s = cose::parse_sign1(&d.bytes, usize::MAX).unwrap();
    let payload = s.payload.clone().unwrap();
    let x = d.f.device.id().as_bytes();
    let pos = payload
        .windows(x.len())
        .position(|w| w == x)
        .expect("recipient kid in payload");
    let yb = y.id().as_bytes();
    assert_eq!(x.len(), yb.len());
    let mut relabelled = payload.clone();
    relabelled[pos..pos + yb.len()].copy_from_slice(yb);
    let b = sign1_raw(
        s.protected.original_data.as_deref().unwrap(),
        &[
            (4, Hv::Bytes(d.f.manager.id().as_bytes())),
            (10, Hv::Bytes(b"lights")),
            (-70_001, Hv::Int(4)),
        ],
        &relabelled,
        &s.signature,
    );
    let e = open_key_delivery(
        y.id(),
        y.agreement_secret(),
        d.f.manager.id(),
        &d.manager_vk,
        &b,
    );
    assert!(matches!(e, Err(Error::BadSignature)), "{e:?}");
}

#[test]
fn key_delivery_with_mismatching_material_is_context_mismatch() {
    let d = delivery_fixture();
    let open = |b: &[u8]| {
        open_key_delivery(
            d.f.device.id(),
            d.f.device.agreement_secret(),
            d.f.manager.id(),
            &d.manager_vk,
            b,
        )
    };
    // Control: the hand-built delivery with consistent material opens.
    let ok = hand_delivery(&d, &d.f.device, b"lights", 4, &d.material);
    assert_eq!(open(&ok).unwrap(), d.material);
    // Signed for group "lights" but carrying the material of "doors".
    let doors = d.f.material(b"doors", 4, AeadAlg::A256Gcm);
    let b = hand_delivery(&d, &d.f.device, b"lights", 4, &doors);
    assert!(matches!(open(&b), Err(Error::ContextMismatch(_))));
    // Signed for epoch 5, carrying epoch 4.
    let b = hand_delivery(&d, &d.f.device, b"lights", 5, &d.material);
    assert!(matches!(open(&b), Err(Error::ContextMismatch(_))));
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// A forgery the DAP receives: the right structure and reporter id, signed
/// by another key.
#[test]
fn report_forged_signature_is_bad_signature() {
    for alg in BOTH_ALGS {
        let r = report_fixture(alg);
        let forger = stray_signing_key(1);
        let forged = seal_report(
            r.meter.id(),
            &forger,
            r.headend.id(),
            &r.at_meter,
            seq(9),
            NOW,
            b"kWh=0",
        )
        .unwrap();
        assert!(matches!(
            verify_report(&forged, r.headend.id(), r.lookup()),
            Err(Error::BadSignature)
        ));
        let genuine = r.seal(10, b"kWh=5");
        let res = verify_reports_batch(&[&genuine, &forged, &genuine], r.headend.id(), r.lookup());
        assert!(res[0].is_ok() && res[2].is_ok());
        assert!(matches!(res[1], Err(Error::BadSignature)));

        // Another enrolled meter (own valid key) signing under this meter's id.
        let other = cred("meter-99", 99);
        let forged = seal_report(
            r.meter.id(),
            other.signing_key(),
            r.headend.id(),
            &r.at_meter,
            seq(9),
            NOW,
            b"kWh=0",
        )
        .unwrap();
        assert!(matches!(
            verify_report(&forged, r.headend.id(), r.lookup()),
            Err(Error::BadSignature)
        ));
    }
}

/// The Ed25519 group order ℓ, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A malleated signature (S + ℓ, which the cofactored or lax equation would
/// accept) is refused by the single and the batch verifier alike.
#[test]
fn report_malleated_signature_is_bad_signature() {
    let r = report_fixture(AeadAlg::A128Gcm);
    let genuine = r.seal(4, b"kWh=4");
    let mut malleated = genuine.clone();
    let n = malleated.len();
    let s_bytes = &mut malleated[n - 32..];
    let mut carry = 0u16;
    for (b, l) in s_bytes.iter_mut().zip(ELL) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    assert_ne!(malleated, genuine);
    assert!(matches!(
        verify_report(&malleated, r.headend.id(), r.lookup()),
        Err(Error::BadSignature)
    ));
    let res = verify_reports_batch(&[&genuine, &malleated], r.headend.id(), r.lookup());
    assert!(res[0].is_ok());
    assert!(matches!(res[1], Err(Error::BadSignature)));
}

#[test]
fn report_for_another_headend_is_bad_signature() {
    let r = report_fixture(AeadAlg::A128Gcm);
    let genuine = r.seal(1, b"kWh=1");
    let other_headend = eid("headend-2");
    assert!(matches!(
        verify_report(&genuine, &other_headend, r.lookup()),
        Err(Error::BadSignature)
    ));
    let res = verify_reports_batch(&[&genuine], &other_headend, r.lookup());
    assert!(matches!(res[0], Err(Error::BadSignature)));
    // Without the signature check the AEAD (bound to the headend) refuses.
    assert!(matches!(
        open_report_unverified(&genuine, &other_headend, &r.at_headend),
        Err(Error::DecryptFailed)
    ));
}

#[test]
fn report_header_tampering_is_bad_signature() {
    let r = report_fixture(AeadAlg::A128Gcm);
    let genuine = r.seal(1, b"kWh=1");
    let s = cose::parse_sign1(&genuine, usize::MAX).unwrap();
    let protected = s.protected.original_data.clone().unwrap();
    let payload = s.payload.clone().unwrap();
    let rebuild = |piv: &[u8], ts: i64| {
        sign1_raw(
            &protected,
            &[
                (4, Hv::Bytes(r.meter.id().as_bytes())),
                (6, Hv::Bytes(piv)),
                (-70_002, Hv::Int(ts)),
            ],
            &payload,
            &s.signature,
        )
    };
    // The rebuilt genuine report verifies: the builder is faithful.
    verify_report(&rebuild(&[1], NOW.get() as i64), r.headend.id(), r.lookup()).unwrap();
    // A fresh sequence number or timestamp to slip a replay past the DAP.
    for b in [
        rebuild(&[2], NOW.get() as i64),
        rebuild(&[1], NOW.get() as i64 + 1),
    ] {
        assert!(matches!(
            verify_report(&b, r.headend.id(), r.lookup()),
            Err(Error::BadSignature)
        ));
    }
    // Without the signature, the bound context stops it at the AEAD (or the
    // sequence number cross-check).
    let e = open_report_unverified(
        &rebuild(&[2], NOW.get() as i64),
        r.headend.id(),
        &r.at_headend,
    );
    assert!(matches!(e, Err(Error::ContextMismatch(_))), "{e:?}");
    let e = open_report_unverified(
        &rebuild(&[1], NOW.get() as i64 + 1),
        r.headend.id(),
        &r.at_headend,
    );
    assert!(matches!(e, Err(Error::DecryptFailed)), "{e:?}");
}

#[test]
fn report_from_another_meter_key_does_not_decrypt() {
    // A meter that encrypts under its own pairwise key but claims another
    // meter's id (and signs with its own key) fails both checks.
    let r = report_fixture(AeadAlg::A128Gcm);
    let other = cred("meter-99", 99);
    let other_key = PairwiseKey::derive(
        AeadAlg::A128Gcm,
        other.agreement_secret(),
        r.headend.public().agreement_key(),
        other.id(),
        r.headend.id(),
    )
    .unwrap();
    let b = seal_report(
        r.meter.id(),
        other.signing_key(),
        r.headend.id(),
        &other_key,
        seq(1),
        NOW,
        b"x",
    )
    .unwrap();
    assert!(matches!(
        verify_report(&b, r.headend.id(), r.lookup()),
        Err(Error::BadSignature)
    ));
    assert!(matches!(
        open_report_unverified(&b, r.headend.id(), &r.at_headend),
        Err(Error::DecryptFailed)
    ));
}

// ---------------------------------------------------------------------------
// Integrity check values
// ---------------------------------------------------------------------------

#[test]
fn mac0_tampering_is_refused() {
    let key = mac_key();
    let genuine = mac0_create(&key, b"p", b"aad").unwrap();
    let s = cose::parse_mac0(&genuine, usize::MAX).unwrap();
    let build = |protected: &[u8], kid: &[u8], payload: &[u8]| {
        let mut out = vec![TAG_MAC0, 0x84];
        bstr(&mut out, protected);
        map(&mut out, &[(4, Hv::Bytes(kid))]);
        bstr(&mut out, payload);
        bstr(&mut out, &s.tag);
        out
    };
    let protected = s.protected.original_data.clone().unwrap();
    assert_eq!(build(&protected, b"k", b"p"), genuine);
    assert!(matches!(
        mac0_verify(&key, &build(&protected, b"k", b"q"), b"aad"),
        Err(Error::BadSignature)
    ));
    assert!(matches!(
        mac0_verify(&key, &build(&protected, b"other", b"p"), b"aad"),
        Err(Error::UnknownSender)
    ));
    assert!(matches!(
        mac0_verify(&key, &build(&protected_alg(4), b"k", b"p"), b"aad"),
        Err(Error::UnsupportedAlgorithm(4))
    ));
    assert!(matches!(
        mac0_verify(&key, &genuine, b"other aad"),
        Err(Error::BadSignature)
    ));
}

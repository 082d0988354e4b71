#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `BroadcastReceiver::open_burst`: many broadcasts opened together, the
//! signatures checked in one batch. It must accept exactly what opening them
//! one by one accepts — every genuine broadcast once, no forgery, no replay
//! (also not a copy repeated inside the same burst), no garbage — and leave
//! the replay state as one-by-one opening would.

mod common;

use common::*;
use sealcast_core::broadcast::{BroadcastReceiver, OpenedBroadcast, ReplayPolicy, seal_broadcast};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{GroupContext, GroupKeyMaterial};
use sealcast_core::testrng::TestRng;
use sealcast_core::{Error, ReplayKind, Result};

/// What a message in a mixed burst must fail with (None: it must open).
type Expect = Option<fn(&Error) -> bool>;

const TARGET: &str = "grp/sirens/cmd";

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

fn burst(rx: &mut BroadcastReceiver, msgs: &[Vec<u8>]) -> Vec<Result<OpenedBroadcast>> {
    let items: Vec<(&[u8], &str)> = msgs.iter().map(|m| (m.as_slice(), TARGET)).collect();
    rx.open_burst(&items, NOW)
}

fn one_by_one(rx: &mut BroadcastReceiver, msgs: &[Vec<u8>]) -> Vec<Result<OpenedBroadcast>> {
    msgs.iter().map(|m| rx.open(m, TARGET, NOW)).collect()
}

/// Both receivers accept the same items with the same contents and end in
/// the same replay state.
#[track_caller]
fn assert_same_verdicts(
    a: &[Result<OpenedBroadcast>],
    b: &[Result<OpenedBroadcast>],
    rx_a: &BroadcastReceiver,
    rx_b: &BroadcastReceiver,
) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        match (x, y) {
            (Ok(x), Ok(y)) => assert_eq!(x, y, "item {i}"),
            (Err(_), Err(_)) => {}
            _ => panic!("item {i}: burst {x:?} vs one by one {y:?}"),
        }
    }
    let mut wa: Vec<_> = rx_a
        .windows()
        .map(|(s, w)| (s.clone(), w.clone()))
        .collect();
    let mut wb: Vec<_> = rx_b
        .windows()
        .map(|(s, w)| (s.clone(), w.clone()))
        .collect();
    wa.sort_by(|x, y| x.0.cmp(&y.0));
    wb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(wa, wb);
}

struct Setup {
    f: Fixture,
    m: GroupKeyMaterial,
    ctx: GroupContext,
}

fn setup(alg: AeadAlg) -> Setup {
    let f = Fixture::new();
    let m = f.material(b"sirens", 3, alg);
    let ctx = GroupContext::new(&m).unwrap();
    Setup { f, m, ctx }
}

#[test]
fn empty_burst_is_empty() {
    let s = setup(AeadAlg::A128Gcm);
    assert!(receiver(&s.ctx).open_burst(&[], NOW).is_empty());
}

#[test]
fn genuine_burst_opens_like_one_by_one() {
    for alg in BOTH_ALGS {
        let s = setup(alg);
        let msgs: Vec<Vec<u8>> = (0..64u64)
            .map(|n| {
                let who = if n % 3 == 0 {
                    &s.f.agent_b
                } else {
                    &s.f.agent_a
                };
                seal_by(&s.ctx, who, 100 + n, format!("siren {n}").as_bytes())
            })
            .collect();
        let (mut a, mut b) = (receiver(&s.ctx), receiver(&s.ctx));
        let ra = burst(&mut a, &msgs);
        let rb = one_by_one(&mut b, &msgs);
        assert!(ra.iter().all(Result::is_ok));
        assert_same_verdicts(&ra, &rb, &a, &b);
        assert_eq!(ra[5].as_ref().unwrap().payload, b"siren 5");
        // Opening the same burst again: every item is now a replay.
        let again = burst(&mut a, &msgs);
        assert!(
            again
                .iter()
                .all(|r| matches!(r, Err(Error::Replay(ReplayKind::Duplicate))))
        );
    }
}

/// Forgeries of every kind that reach the signature check (they pass the
/// AEAD because the forger is a member), mixed among genuine broadcasts.
#[test]
fn mixed_forgeries_are_rejected_exactly() {
    for alg in BOTH_ALGS {
        let s = setup(alg);
        let (f, m, ctx) = (&s.f, &s.m, &s.ctx);
        let outer = |n: u64| Outer {
            sender: &[0x01],
            seq: n,
            timestamp: NOW.get(),
            target: TARGET,
        };
        let genuine_7 = seal_by(ctx, &f.agent_a, 7, b"open");
        let mut msgs = Vec::new();
        let mut expect: Vec<Expect> = Vec::new();
        for n in 0..64u64 {
            let (msg, check): (Vec<u8>, Expect) = match n % 8 {
                // The inner object of seq 7 replayed under a fresh number.
                1 => (
                    encrypt_broadcast(m, &outer(n), &decrypt_broadcast(m, &genuine_7, TARGET)),
                    Some(|e| matches!(e, Error::BadSignature)),
                ),
                // Signed by a key that is not agent-a's, under its kid.
                3 => (
                    encrypt_broadcast(
                        m,
                        &outer(n),
                        &sign_broadcast_inner(m, &stray_signing_key(9), &[0x01], &outer(n), b"x"),
                    ),
                    Some(|e| matches!(e, Error::BadSignature)),
                ),
                // A genuine signature with one payload bit flipped.
                5 => {
                    let mut inner =
                        sign_broadcast_inner(m, f.agent_a.signing_key(), &[0x01], &outer(n), b"y");
                    let last_payload_byte = inner.len() - 64 - 3;
                    inner[last_payload_byte] ^= 1;
                    (
                        encrypt_broadcast(m, &outer(n), &inner),
                        Some(|e| matches!(e, Error::BadSignature)),
                    )
                }
                // agent-b's signature inside agent-a's outer layer.
                6 => (
                    encrypt_broadcast(
                        m,
                        &outer(n),
                        &sign_broadcast_inner(m, f.agent_b.signing_key(), &[0x02], &outer(n), b"z"),
                    ),
                    Some(|e| matches!(e, Error::SignerMismatch)),
                ),
                _ => (seal_by(ctx, &f.agent_a, n, b"genuine"), None),
            };
            msgs.push(msg);
            expect.push(check);
        }
        let (mut a, mut b) = (receiver(ctx), receiver(ctx));
        let ra = burst(&mut a, &msgs);
        let rb = one_by_one(&mut b, &msgs);
        for (i, (r, want)) in ra.iter().zip(&expect).enumerate() {
            match (r, want) {
                (Ok(_), None) => {}
                (Err(e), Some(check)) => assert!(check(e), "item {i}: {e:?}"),
                _ => panic!("item {i}: {r:?}"),
            }
        }
        assert_same_verdicts(&ra, &rb, &a, &b);
    }
}

/// A signature whose `s` is not reduced (s + ℓ) verifies in a lax
/// cofactorless check; strict verification and the batch precheck refuse it.
#[test]
fn non_canonical_signature_in_a_burst_is_rejected() {
    let s = setup(AeadAlg::A128Gcm);
    let (f, m, ctx) = (&s.f, &s.m, &s.ctx);
    let o = Outer {
        sender: &[0x01],
        seq: 3,
        timestamp: NOW.get(),
        target: TARGET,
    };
    let mut inner = sign_broadcast_inner(m, f.agent_a.signing_key(), &[0x01], &o, b"s+l");
    // ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
    const ELL: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let s_at = inner.len() - 32;
    let mut carry = 0u16;
    for (i, l) in ELL.iter().enumerate() {
        let v = u16::from(inner[s_at + i]) + u16::from(*l) + carry;
        inner[s_at + i] = v as u8;
        carry = v >> 8;
    }
    let forged = encrypt_broadcast(m, &o, &inner);
    let msgs = vec![
        seal_by(ctx, &f.agent_a, 1, b"a"),
        forged,
        seal_by(ctx, &f.agent_a, 2, b"b"),
    ];
    let r = burst(&mut receiver(ctx), &msgs);
    assert!(r[0].is_ok() && r[2].is_ok());
    assert!(matches!(r[1], Err(Error::BadSignature)));
}

#[test]
fn replays_inside_the_burst_open_once() {
    let s = setup(AeadAlg::A256Gcm);
    let (f, ctx) = (&s.f, &s.ctx);
    let mut rx = receiver(ctx);
    let earlier = seal_by(ctx, &f.agent_a, 50, b"earlier");
    rx.open(&earlier, TARGET, NOW).unwrap();

    let m60 = seal_by(ctx, &f.agent_a, 60, b"sixty");
    let m61 = seal_by(ctx, &f.agent_a, 61, b"sixty-one");
    let b60 = seal_by(ctx, &f.agent_b, 60, b"b sixty");
    let far = seal_by(ctx, &f.agent_a, 500, b"far ahead");
    // Checked before `far` slides the window, committed after it.
    let old = seal_by(ctx, &f.agent_a, 70, b"too old by then");
    let msgs = vec![
        m60.clone(),
        m61.clone(),
        m60.clone(), // the same broadcast again
        b60.clone(), // same number, other sender: fine
        earlier,     // committed before the burst
        m61,         // third copy pattern: later duplicate
        far,
        old,
        m60,
    ];
    let mut twin = receiver(ctx);
    twin.open(&seal_by(ctx, &f.agent_a, 50, b"earlier"), TARGET, NOW)
        .unwrap();
    let r = burst(&mut rx, &msgs);
    let dup = |r: &Result<OpenedBroadcast>| matches!(r, Err(Error::Replay(ReplayKind::Duplicate)));
    assert_eq!(r[0].as_ref().unwrap().payload, b"sixty");
    assert_eq!(r[1].as_ref().unwrap().payload, b"sixty-one");
    assert!(dup(&r[2]), "{:?}", r[2]);
    assert_eq!(r[3].as_ref().unwrap().payload, b"b sixty");
    assert!(dup(&r[4]), "{:?}", r[4]);
    assert!(dup(&r[5]), "{:?}", r[5]);
    assert!(r[6].is_ok());
    assert!(
        matches!(r[7], Err(Error::Replay(ReplayKind::TooOld))),
        "{:?}",
        r[7]
    );
    assert!(dup(&r[8]) || matches!(r[8], Err(Error::Replay(ReplayKind::TooOld))));
    let rb = one_by_one(&mut twin, &msgs);
    assert_same_verdicts(&r, &rb, &rx, &twin);
}

#[test]
fn timestamp_policy_duplicates_inside_the_burst_open_once() {
    let s = setup(AeadAlg::A128Gcm);
    let policy = ReplayPolicy::Timestamp {
        skew_ms: 30_000,
        max_entries: 1024,
    };
    let mut rx = BroadcastReceiver::new(s.ctx.clone(), policy).unwrap();
    let a = seal_by(&s.ctx, &s.f.agent_a, 1, b"one");
    let b = seal_by(&s.ctx, &s.f.agent_a, 2, b"two");
    let r = burst(&mut rx, &[a.clone(), b, a]);
    assert!(r[0].is_ok() && r[1].is_ok());
    assert!(matches!(r[2], Err(Error::Replay(ReplayKind::Duplicate))));
}

#[test]
fn garbage_in_a_burst_fails_alone_and_changes_nothing() {
    let s = setup(AeadAlg::A128Gcm);
    let (f, ctx) = (&s.f, &s.ctx);
    let genuine = seal_by(ctx, &f.agent_a, 9, b"real");
    let mut flipped = seal_by(ctx, &f.agent_a, 10, b"flipped");
    let at = flipped.len() - 5;
    flipped[at] ^= 0x40;
    let mut rng = TestRng::new(3);
    let mut noise = vec![0u8; 200];
    rand_core::Rng::fill_bytes(&mut rng, &mut noise);
    let garbage = vec![
        Vec::new(),
        vec![0xd0],
        noise,
        genuine[..genuine.len() - 1].to_vec(),
        [genuine.as_slice(), &[0x00]].concat(),
        flipped,
        seal_by(&setup(AeadAlg::A256Gcm).ctx, &f.agent_a, 11, b"other alg"),
    ];
    // Only garbage: nothing opens, no window appears.
    let mut rx = receiver(ctx);
    let r = burst(&mut rx, &garbage);
    assert!(r.iter().all(Result::is_err));
    assert!(matches!(r[5], Err(Error::DecryptFailed)));
    assert_eq!(rx.windows().count(), 0);
    // Garbage around a genuine broadcast: the genuine one opens.
    let mut mixed = garbage.clone();
    mixed.insert(3, genuine);
    let mut twin = receiver(ctx);
    let r = burst(&mut rx, &mixed);
    let rb = one_by_one(&mut twin, &mixed);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(r[3].as_ref().unwrap().payload, b"real");
    assert_same_verdicts(&r, &rb, &rx, &twin);
}

/// Random mixtures of genuine, forged, replayed and garbage items: the burst
/// always agrees with opening one by one.
#[test]
fn random_mixtures_agree_with_one_by_one() {
    let s = setup(AeadAlg::A128Gcm);
    let (f, m, ctx) = (&s.f, &s.m, &s.ctx);
    let mut rng = TestRng::new(0x5eed);
    let mut next = |bound: u64| rand_core::Rng::next_u64(&mut rng) % bound;
    for round in 0..12u64 {
        let len = 1 + next(96) as usize;
        let mut msgs: Vec<Vec<u8>> = Vec::with_capacity(len);
        for _ in 0..len {
            let n = next(200);
            let o = Outer {
                sender: &[0x01],
                seq: n,
                timestamp: NOW.get(),
                target: TARGET,
            };
            let msg = match next(10) {
                0 => encrypt_broadcast(
                    m,
                    &o,
                    &sign_broadcast_inner(m, &stray_signing_key(round as u8), &[0x01], &o, b"f"),
                ),
                1 if !msgs.is_empty() => msgs[next(msgs.len() as u64) as usize].clone(),
                2 => vec![0xd0, 0x83, 0x40, 0xa0, 0x40],
                3 => seal_by(ctx, &f.agent_b, n, b"b"),
                _ => seal_by(ctx, &f.agent_a, n, b"a"),
            };
            msgs.push(msg);
        }
        let (mut a, mut b) = (receiver(ctx), receiver(ctx));
        let ra = burst(&mut a, &msgs);
        let rb = one_by_one(&mut b, &msgs);
        assert_same_verdicts(&ra, &rb, &a, &b);
    }
}

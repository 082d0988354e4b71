#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const DUP: Error = Error::Replay(ReplayKind::Duplicate);
const OLD: Error = Error::Replay(ReplayKind::TooOld);

fn seq(n: u64) -> SeqNum {
    SeqNum::new(n).unwrap()
}

fn accept(w: &mut SeqWindow, n: u64) -> Result<()> {
    let token = w.check(seq(n))?;
    w.commit(token)
}

// --- SeqWindow -------------------------------------------------------

#[test]
fn sizes_are_validated() {
    assert_eq!(SeqWindow::new().size(), 64);
    assert_eq!(SeqWindow::default(), SeqWindow::new());
    for ok in [64, 128, 192, 4096] {
        assert_eq!(SeqWindow::with_size(ok).unwrap().size(), ok);
    }
    for bad in [0, 1, 32, 63, 65, 100, 4095] {
        assert!(matches!(
            SeqWindow::with_size(bad),
            Err(Error::InvalidKey(_))
        ));
    }
    for big in [4097, 4160, 8192, usize::MAX] {
        assert!(matches!(
            SeqWindow::with_size(big),
            Err(Error::TooLarge { limit: 4096, .. })
        ));
    }
}

#[test]
fn first_message_is_accepted_at_any_seq() {
    for first in [0, 1, 63, 64, 1 << 20, SeqNum::MAX] {
        let mut w = SeqWindow::new();
        assert_eq!(w.highest(), None);
        accept(&mut w, first).unwrap();
        assert_eq!(w.highest(), Some(seq(first)));
        assert_eq!(accept(&mut w, first), Err(DUP));
    }
}

#[test]
fn seq_zero_then_window_edges() {
    let mut w = SeqWindow::new();
    accept(&mut w, 0).unwrap();
    accept(&mut w, 100).unwrap();
    // 100 − 63 = 37 is the oldest remembered number, 36 is one below.
    assert_eq!(w.check(seq(36)).unwrap_err(), OLD);
    assert_eq!(w.check(seq(0)).unwrap_err(), OLD);
    accept(&mut w, 37).unwrap();
    assert_eq!(accept(&mut w, 37), Err(DUP));
    accept(&mut w, 99).unwrap();
    assert_eq!(w.highest(), Some(seq(100)));
}

#[test]
fn exact_edges_for_every_size() {
    for size in [64usize, 128, 4096] {
        let s = size as u64;
        let mut w = SeqWindow::with_size(size).unwrap();
        let top = 10_000;
        accept(&mut w, top).unwrap();
        // distance size − 1: still inside; distance size: too old.
        assert!(w.check(seq(top - (s - 1))).is_ok(), "size {size}");
        assert_eq!(w.check(seq(top - s)).unwrap_err(), OLD, "size {size}");
        accept(&mut w, top - (s - 1)).unwrap();
        assert_eq!(accept(&mut w, top - (s - 1)), Err(DUP));
    }
}

#[test]
fn early_numbers_below_size_stay_within_window() {
    let mut w = SeqWindow::new();
    accept(&mut w, 5).unwrap();
    for n in [0, 1, 4] {
        accept(&mut w, n).unwrap();
    }
    assert_eq!(accept(&mut w, 0), Err(DUP));
    accept(&mut w, 63).unwrap();
    assert_eq!(accept(&mut w, 0), Err(DUP));
    accept(&mut w, 64).unwrap();
    assert_eq!(w.check(seq(0)).unwrap_err(), OLD);
    assert_eq!(accept(&mut w, 1), Err(DUP));
}

#[test]
fn duplicates_survive_slides_and_old_bits_are_cleared() {
    let mut w = SeqWindow::new();
    for n in 0..64 {
        accept(&mut w, n).unwrap();
    }
    // Slide by one: 0 drops out, 1..=63 remain duplicates, the ring slot
    // of 0 now belongs to 64 and must read as fresh.
    accept(&mut w, 64).unwrap();
    assert_eq!(w.check(seq(0)).unwrap_err(), OLD);
    for n in 1..=64 {
        assert_eq!(w.check(seq(n)).unwrap_err(), DUP, "{n}");
    }
    // Slide by 40 (crossing a word edge in a bigger window behaves too).
    accept(&mut w, 104).unwrap();
    for n in 41..=64 {
        assert_eq!(w.check(seq(n)).unwrap_err(), DUP, "{n}");
    }
    for n in 65..104 {
        assert!(w.check(seq(n)).is_ok(), "{n}");
    }
    let mut big = SeqWindow::with_size(256).unwrap();
    for n in (0..256).step_by(3) {
        accept(&mut big, n).unwrap();
    }
    accept(&mut big, 300).unwrap();
    for n in 45..300 {
        let expect_dup = n < 256 && n % 3 == 0;
        assert_eq!(big.check(seq(n)).is_err(), expect_dup, "{n}");
    }
}

#[test]
fn huge_jump_clears_everything() {
    let mut w = SeqWindow::with_size(128).unwrap();
    for n in 0..128 {
        accept(&mut w, n).unwrap();
    }
    accept(&mut w, SeqNum::MAX).unwrap();
    assert_eq!(w.highest(), Some(seq(SeqNum::MAX)));
    assert_eq!(w.check(seq(0)).unwrap_err(), OLD);
    assert_eq!(w.check(seq(SeqNum::MAX - 128)).unwrap_err(), OLD);
    for n in SeqNum::MAX - 127..SeqNum::MAX {
        assert!(w.check(seq(n)).is_ok(), "{n}");
    }
    assert_eq!(w.check(seq(SeqNum::MAX)).unwrap_err(), DUP);
    // A jump of exactly the window size also clears everything.
    let mut w = SeqWindow::new();
    accept(&mut w, 0).unwrap();
    accept(&mut w, 64).unwrap();
    assert!(w.check(seq(1)).is_ok());
    assert_eq!(w.check(seq(0)).unwrap_err(), OLD);
}

#[test]
fn stale_tokens_are_refused_on_commit() {
    let mut w = SeqWindow::new();
    // Two tokens for the same number: only the first commit wins.
    let a = w.check(seq(7)).unwrap();
    let b = w.check(seq(7)).unwrap();
    assert_eq!(a.seq(), seq(7));
    w.commit(a).unwrap();
    assert_eq!(w.commit(b), Err(DUP));
    // A token overtaken by a slide becomes too old.
    let late = w.check(seq(8)).unwrap();
    accept(&mut w, 200).unwrap();
    let before = w.clone();
    assert_eq!(w.commit(late), Err(OLD));
    assert_eq!(w, before, "a refused commit leaves the window unchanged");
}

#[test]
fn bytes_round_trip() {
    let mut w = SeqWindow::with_size(192).unwrap();
    assert_eq!(SeqWindow::from_bytes(&w.to_bytes()).unwrap(), w);
    for n in [3, 0, 150, 151, 170, 1000, 990, 900] {
        accept(&mut w, n).unwrap();
        let bytes = w.to_bytes();
        assert_eq!(bytes.len(), 8 + 192 / 8);
        let back = SeqWindow::from_bytes(&bytes).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.to_bytes(), bytes);
    }
    let mut max = SeqWindow::with_size(4096).unwrap();
    accept(&mut max, SeqNum::MAX).unwrap();
    let bytes = max.to_bytes();
    assert_eq!(bytes.len(), SeqWindow::MAX_ENCODED_LEN);
    assert_eq!(SeqWindow::from_bytes(&bytes).unwrap(), max);
}

#[test]
fn restored_window_still_refuses_duplicates() {
    let mut w = SeqWindow::new();
    for n in [10, 12, 40] {
        accept(&mut w, n).unwrap();
    }
    let mut back = SeqWindow::from_bytes(&w.to_bytes()).unwrap();
    for n in [10, 12, 40] {
        assert_eq!(accept(&mut back, n), Err(DUP));
    }
    accept(&mut back, 11).unwrap();
}

#[test]
fn from_bytes_refuses_hostile_input() {
    let mut w = SeqWindow::new();
    accept(&mut w, 100).unwrap();
    accept(&mut w, 90).unwrap();
    let good = w.to_bytes();
    let malformed = |b: &[u8]| matches!(SeqWindow::from_bytes(b), Err(Error::Malformed(_)));

    // Every truncation and an extension.
    for len in 0..good.len() {
        assert!(malformed(&good[..len]), "truncated to {len}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(malformed(&long));
    // Version, size and state bytes.
    for version in [0u8, 2, 255] {
        let mut b = good.clone();
        b[0] = version;
        assert!(malformed(&b));
    }
    for words in [0u8, 65, 255] {
        let mut b = good.clone();
        b[1] = words;
        assert!(malformed(&b));
    }
    let mut b = good.clone();
    b[1] = 2; // claims 128 bits but carries 64
    assert!(malformed(&b));
    for state in [2u8, 255] {
        let mut b = good.clone();
        b[2] = state;
        assert!(malformed(&b));
    }
    // Empty state with leftovers.
    let mut b = SeqWindow::new().to_bytes();
    b[7] = 1;
    assert!(malformed(&b));
    let mut b = SeqWindow::new().to_bytes();
    b[8] = 1;
    assert!(malformed(&b));
    // Highest not marked.
    let mut b = good.clone();
    b[8] &= !1;
    assert!(malformed(&b));
    // Bits for numbers below zero: highest 3, bit 4 means seq −1.
    let mut low = SeqWindow::new();
    accept(&mut low, 3).unwrap();
    let mut b = low.to_bytes();
    assert!(SeqWindow::from_bytes(&b).is_ok());
    b[8] |= 1 << 4;
    assert!(malformed(&b));
    let mut b = low.to_bytes();
    b[15] |= 0x80;
    assert!(malformed(&b));

    // Deterministic byte soup: must never panic; whatever parses
    // re-encodes to itself.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 40) as usize;
        let mut b: Vec<u8> = (0..len)
            .map(|i| (x.rotate_left(i as u32 * 5) & 0xff) as u8)
            .collect();
        if round % 2 == 0 && b.len() >= 3 {
            b[0] = 1;
            b[1] = 1;
            b[2] = (x >> 60) as u8 & 1;
            b.resize(16, (x >> 8) as u8);
        }
        if let Ok(parsed) = SeqWindow::from_bytes(&b) {
            assert_eq!(parsed.to_bytes(), b);
        }
    }
}

// --- TimestampWindow ------------------------------------------------

fn ms(n: u64) -> UnixMillis {
    UnixMillis::new(n)
}

fn d(n: u8) -> [u8; 32] {
    [n; 32]
}

fn ts_accept(w: &mut TimestampWindow, ts: u64, digest: u8, now: u64) -> Result<()> {
    let token = w.check(ms(ts), d(digest), ms(now))?;
    w.commit(token)
}

#[test]
fn skew_bounds_are_inclusive() {
    let w = TimestampWindow::new(1_000, 8);
    let now = 50_000;
    assert!(w.check(ms(now - 1_000), d(1), ms(now)).is_ok());
    assert!(w.check(ms(now + 1_000), d(1), ms(now)).is_ok());
    assert_eq!(
        w.check(ms(now - 1_001), d(1), ms(now)).unwrap_err(),
        Error::StaleTimestamp
    );
    assert_eq!(
        w.check(ms(now + 1_001), d(1), ms(now)).unwrap_err(),
        Error::StaleTimestamp
    );
    // Near zero and near u64::MAX nothing overflows.
    assert!(w.check(ms(0), d(1), ms(0)).is_ok());
    assert!(w.check(ms(u64::MAX), d(1), ms(u64::MAX - 1_000)).is_ok());
    assert!(w.check(ms(u64::MAX), d(1), ms(0)).is_err());
}

#[test]
fn duplicates_are_refused_and_stale_tokens_too() {
    let mut w = TimestampWindow::new(1_000, 8);
    ts_accept(&mut w, 10_000, 1, 10_000).unwrap();
    assert_eq!(ts_accept(&mut w, 10_000, 1, 10_100), Err(DUP));
    // Same digest with another timestamp: still a duplicate.
    assert_eq!(ts_accept(&mut w, 10_050, 1, 10_100), Err(DUP));
    let a = w.check(ms(10_200), d(2), ms(10_200)).unwrap();
    let b = w.check(ms(10_200), d(2), ms(10_200)).unwrap();
    assert_eq!(a.digest(), &d(2));
    assert_eq!(a.timestamp(), ms(10_200));
    assert_eq!(a.now(), ms(10_200));
    w.commit(a).unwrap();
    assert_eq!(w.commit(b), Err(DUP));
    assert_eq!(w.len(), 2);
}

#[test]
fn entries_age_out_and_the_floor_follows() {
    let mut w = TimestampWindow::new(1_000, 8);
    ts_accept(&mut w, 10_000, 1, 10_000).unwrap();
    ts_accept(&mut w, 10_500, 2, 10_500).unwrap();
    // At now = 11_200, 10_000 is older than now − skew and ages out.
    ts_accept(&mut w, 11_200, 3, 11_200).unwrap();
    assert_eq!(w.len(), 2);
    assert_eq!(w.floor(), Some(ms(10_000)));
    // A clock stepping back does not reopen the aged-out entry.
    assert_eq!(ts_accept(&mut w, 10_000, 1, 10_000), Err(OLD));
    assert_eq!(ts_accept(&mut w, 10_500, 2, 10_000), Err(DUP));
}

#[test]
fn full_window_raises_a_floor_and_fails_closed() {
    let mut w = TimestampWindow::new(10_000, 3);
    let now = 100_000;
    ts_accept(&mut w, now - 5, 1, now).unwrap();
    ts_accept(&mut w, now - 3, 2, now).unwrap();
    ts_accept(&mut w, now - 1, 3, now).unwrap();
    assert_eq!(w.floor(), None);
    // Full, nothing aged: the oldest (now − 5) is evicted, floor = now − 5.
    ts_accept(&mut w, now, 4, now).unwrap();
    assert_eq!(w.len(), 3);
    assert_eq!(w.floor(), Some(ms(now - 5)));
    // The evicted digest can not come back …
    assert_eq!(ts_accept(&mut w, now - 5, 1, now), Err(OLD));
    // … nor anything else at or below the floor, fresh digest or not.
    assert_eq!(ts_accept(&mut w, now - 6, 9, now), Err(OLD));
    // Above the floor, fresh digests still pass and duplicates fail.
    assert_eq!(ts_accept(&mut w, now - 3, 2, now), Err(DUP));
    // A new message older than everything remembered is itself the one
    // dropped: accepted, floor rises to it, nothing remembered is lost.
    ts_accept(&mut w, now - 4, 5, now).unwrap();
    assert_eq!(w.floor(), Some(ms(now - 4)));
    assert_eq!(w.len(), 3);
    assert_eq!(ts_accept(&mut w, now - 4, 5, now), Err(OLD));
    for (ts, digest) in [(now - 3, 2), (now - 1, 3), (now, 4)] {
        assert_eq!(ts_accept(&mut w, ts, digest, now), Err(DUP));
    }
}

#[test]
fn zero_capacity_means_strictly_increasing() {
    let mut w = TimestampWindow::new(1_000, 0);
    assert!(w.is_empty());
    ts_accept(&mut w, 5_000, 1, 5_000).unwrap();
    assert_eq!(ts_accept(&mut w, 5_000, 2, 5_000), Err(OLD));
    ts_accept(&mut w, 5_001, 2, 5_000).unwrap();
    assert!(w.is_empty());
    assert_eq!(w.max_entries(), 0);
    assert_eq!(w.skew_ms(), 1_000);
}

#[test]
fn memory_stays_bounded_under_load() {
    let mut w = TimestampWindow::new(500, 16);
    for i in 0..10_000u64 {
        let digest = {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&i.to_le_bytes());
            b
        };
        let now = 1_000_000 + i / 3;
        let token = w.check(ms(now), digest, ms(now)).unwrap();
        w.commit(token).unwrap();
        assert!(w.len() <= 16);
        assert_eq!(
            w.check(ms(now), digest, ms(now)).unwrap_err(),
            if w.floor().is_some_and(|f| f.get() >= now) {
                OLD
            } else {
                DUP
            }
        );
    }
}

// --- SeqAllocator ---------------------------------------------------

#[test]
fn allocator_needs_a_reservation_first() {
    let mut a = SeqAllocator::new(10).unwrap();
    assert_eq!(a.peek_next(), Some(seq(0)));
    assert_eq!(a.reserved_limit(), 0);
    assert_eq!(a.block(), 10);
    assert_eq!(a.next(), Err(Error::ReservationRequired));
    assert_eq!(a.reservation_request(), Some(10));
    a.confirm_reservation(10).unwrap();
    assert_eq!(a.reservation_request(), None);
    for n in 0..6 {
        assert_eq!(a.next().unwrap(), seq(n));
    }
    // 4 left < block / 2 = 5: ask early.
    assert_eq!(a.reservation_request(), Some(20));
    for n in 6..10 {
        assert_eq!(a.next().unwrap(), seq(n));
    }
    assert_eq!(a.next(), Err(Error::ReservationRequired));
    a.confirm_reservation(20).unwrap();
    assert_eq!(a.next().unwrap(), seq(10));
}

#[test]
fn allocator_rejects_bad_parameters() {
    assert!(matches!(SeqAllocator::new(0), Err(Error::InvalidKey(_))));
    assert!(SeqAllocator::new(1 << 40).is_ok());
    assert!(matches!(
        SeqAllocator::new((1 << 40) + 1),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        SeqAllocator::resume((1 << 40) + 1, 8),
        Err(Error::Malformed(_))
    ));
    let mut a = SeqAllocator::new(8).unwrap();
    a.confirm_reservation(8).unwrap();
    let before = a.clone();
    for bad in [0, 7, 8, (1 << 40) + 1, u64::MAX] {
        assert!(matches!(
            a.confirm_reservation(bad),
            Err(Error::InvalidKey(_))
        ));
        assert_eq!(a, before);
    }
    a.confirm_reservation(1 << 40).unwrap();
}

#[test]
fn allocator_exhausts_at_forty_bits() {
    let mut a = SeqAllocator::resume(SeqNum::MAX - 2, 4).unwrap();
    assert_eq!(a.reservation_request(), Some(1 << 40));
    a.confirm_reservation(1 << 40).unwrap();
    assert_eq!(a.reservation_request(), None);
    assert_eq!(a.next().unwrap(), seq(SeqNum::MAX - 2));
    assert_eq!(a.next().unwrap(), seq(SeqNum::MAX - 1));
    assert_eq!(a.next().unwrap(), seq(SeqNum::MAX));
    assert_eq!(a.next(), Err(Error::SequenceExhausted));
    assert_eq!(a.peek_next(), None);
    assert_eq!(a.next(), Err(Error::SequenceExhausted));
    let mut done = SeqAllocator::resume(1 << 40, 4).unwrap();
    assert_eq!(done.reservation_request(), None);
    assert_eq!(done.next(), Err(Error::SequenceExhausted));
}

#[test]
fn crash_and_resume_never_reuse_a_number() {
    let mut stored: u64 = 0; // what the "disk" holds
    let mut used = std::collections::BTreeSet::new();
    let mut a = SeqAllocator::resume(stored, 7).unwrap();
    for step in 0u64..2_000 {
        if let Some(limit) = a.reservation_request() {
            stored = limit; // durable write first …
            if step % 11 == 3 {
                // … crash between the write and the confirm.
                a = SeqAllocator::resume(stored, 7).unwrap();
                continue;
            }
            a.confirm_reservation(limit).unwrap();
        }
        match a.next() {
            Ok(n) => assert!(used.insert(n.get()), "reused {n}"),
            Err(Error::ReservationRequired) => {}
            Err(e) => panic!("{e}"),
        }
        if step % 17 == 0 {
            a = SeqAllocator::resume(stored, 7).unwrap(); // crash
        }
    }
    assert!(used.len() > 1_000);
}

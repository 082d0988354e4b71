#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Model-based tests of the replay types.
//!
//! `SeqWindow` is compared against the obvious (memory-hungry) model: the
//! set of every accepted number plus the window rule "accept iff not seen
//! and seq > highest − size". `SeqAllocator` is driven through random
//! crash/resume schedules against a simulated disk.

use std::collections::HashSet;

use proptest::prelude::*;
use sealcast_core::ids::SeqNum;
use sealcast_core::replay::{SeqAllocator, SeqCheck, SeqWindow};
use sealcast_core::{Error, ReplayKind};

/// The reference: every accepted number, and the highest one.
struct Model {
    size: u64,
    accepted: HashSet<u64>,
    highest: Option<u64>,
}

impl Model {
    fn check(&self, seq: u64) -> Result<(), Error> {
        match self.highest {
            None => Ok(()),
            Some(h) if seq > h => Ok(()),
            Some(h) if h - seq >= self.size => Err(Error::Replay(ReplayKind::TooOld)),
            Some(_) if self.accepted.contains(&seq) => Err(Error::Replay(ReplayKind::Duplicate)),
            Some(_) => Ok(()),
        }
    }

    fn commit(&mut self, seq: u64) -> Result<(), Error> {
        self.check(seq)?;
        self.accepted.insert(seq);
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        Ok(())
    }
}

/// Where a sequence number comes from, resolved against the current highest
/// so that most operations land in or near the window.
#[derive(Debug, Clone)]
enum Target {
    /// `highest + delta`, clamped into 0 ..= 2^40 − 1.
    Near(i64),
    /// Any number at all.
    Absolute(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// Check a number and keep the token for later.
    Check(Target),
    /// Commit the pending token at this index (modulo the pending count).
    Commit(usize),
    /// Check and commit at once.
    Accept(Target),
    /// Save and restore the window (a receiver restart).
    Restart,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        8 => (-300i64..=300).prop_map(Target::Near),
        1 => (0..=SeqNum::MAX).prop_map(Target::Absolute),
        1 => prop_oneof![Just(0u64), Just(SeqNum::MAX), 0u64..70].prop_map(Target::Absolute),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => target().prop_map(Op::Check),
        4 => any::<usize>().prop_map(Op::Commit),
        6 => target().prop_map(Op::Accept),
        1 => Just(Op::Restart),
    ]
}

fn resolve(t: &Target, highest: Option<SeqNum>) -> SeqNum {
    let n = match *t {
        Target::Near(delta) => {
            let base = highest.map_or(0, SeqNum::get) as i128;
            (base + i128::from(delta)).clamp(0, i128::from(SeqNum::MAX)) as u64
        }
        Target::Absolute(n) => n,
    };
    SeqNum::new(n).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn seq_window_matches_model(
        size in prop_oneof![Just(64usize), Just(128), Just(256)],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut window = SeqWindow::with_size(size).unwrap();
        let mut model = Model { size: size as u64, accepted: HashSet::new(), highest: None };
        let mut pending: Vec<SeqCheck> = Vec::new();

        for op in &ops {
            match op {
                Op::Check(t) => {
                    let seq = resolve(t, window.highest());
                    let got = window.check(seq);
                    let expected = model.check(seq.get()).err();
                    prop_assert_eq!(got.as_ref().err(), expected.as_ref());
                    if let Ok(token) = got {
                        prop_assert_eq!(token.seq(), seq);
                        if pending.len() < 8 {
                            pending.push(token);
                        }
                    }
                }
                Op::Commit(i) => {
                    if !pending.is_empty() {
                        let token = pending.remove(i % pending.len());
                        let seq = token.seq().get();
                        // The token may have gone stale: commit re-validates.
                        prop_assert_eq!(window.commit(token), model.commit(seq));
                    }
                }
                Op::Accept(t) => {
                    let seq = resolve(t, window.highest());
                    let got = window.check(seq).and_then(|token| window.commit(token));
                    prop_assert_eq!(got, model.commit(seq.get()));
                }
                Op::Restart => {
                    let bytes = window.to_bytes();
                    let back = SeqWindow::from_bytes(&bytes).unwrap();
                    prop_assert_eq!(&back, &window);
                    window = back;
                }
            }
            prop_assert_eq!(window.highest().map(SeqNum::get), model.highest);
            prop_assert_eq!(window.size(), size);
        }

        // Final sweep: the whole window and a little beyond agree.
        if let Some(h) = model.highest {
            let lo = h.saturating_sub(size as u64 + 5);
            let hi = (h + 5).min(SeqNum::MAX);
            for n in lo..=hi {
                let seq = SeqNum::new(n).unwrap();
                prop_assert_eq!(window.check(seq).err(), model.check(n).err(), "seq {}", n);
            }
        }
    }

    #[test]
    fn seq_window_from_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(window) = SeqWindow::from_bytes(&bytes) {
            prop_assert_eq!(window.to_bytes(), bytes);
        }
    }

    #[test]
    fn seq_window_from_bytes_plausible_headers(
        words in 1u8..=4,
        state in 0u8..=2,
        highest in prop_oneof![0u64..300, (0..=SeqNum::MAX)],
        bitmap in prop::collection::vec(any::<u64>(), 4),
    ) {
        let mut bytes = vec![1, words, state];
        bytes.extend_from_slice(&highest.to_be_bytes()[3..]);
        for w in &bitmap[..usize::from(words)] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        if let Ok(window) = SeqWindow::from_bytes(&bytes) {
            prop_assert_eq!(window.to_bytes(), bytes);
            if let Some(h) = window.highest() {
                prop_assert_eq!(h.get(), highest);
                prop_assert!(window.check(h).is_err());
            }
        }
    }

    #[test]
    fn allocator_never_reuses_across_crashes(
        block in 1u64..64,
        start in prop_oneof![Just(0u64), 0u64..1_000, (SeqNum::MAX - 200)..=(1u64 << 40)],
        ops in prop::collection::vec(0u8..6, 1..400),
    ) {
        // `disk` is the durably stored limit; the allocator only ever
        // learns of a limit after it is on disk.
        let mut disk = start;
        let mut alloc = SeqAllocator::resume(disk, block).unwrap();
        let mut used: HashSet<u64> = HashSet::new();

        for op in ops {
            match op {
                // Hand out a number.
                0..=2 => match alloc.next() {
                    Ok(n) => {
                        prop_assert!(n.get() < disk, "{} not below stored {}", n, disk);
                        prop_assert!(used.insert(n.get()), "{} handed out twice", n);
                    }
                    Err(Error::ReservationRequired) => {
                        prop_assert!(alloc.reservation_request().is_some());
                    }
                    Err(Error::SequenceExhausted) => {
                        prop_assert_eq!(alloc.peek_next(), None);
                    }
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                },
                // Persist the requested limit, then confirm it.
                3 => {
                    if let Some(limit) = alloc.reservation_request() {
                        prop_assert!(limit > alloc.reserved_limit());
                        prop_assert!(limit <= 1 << 40);
                        disk = limit;
                        alloc.confirm_reservation(limit).unwrap();
                    }
                }
                // Persist, then crash before confirming.
                4 => {
                    if let Some(limit) = alloc.reservation_request() {
                        disk = limit;
                    }
                    alloc = SeqAllocator::resume(disk, block).unwrap();
                }
                // Plain crash.
                _ => alloc = SeqAllocator::resume(disk, block).unwrap(),
            }
            prop_assert!(alloc.reserved_limit() <= disk);
        }
    }
}

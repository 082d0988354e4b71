//! Replay protection and sequence-number allocation.
//!
//! Three small pure types, one per side of the problem:
//!
//! - [`SeqWindow`]: the receiver's sliding-bitmap anti-replay window for one
//!   (group, epoch, sender), in the manner of RFC 8613 §7.4, RFC 6479 and
//!   boringtun's counter validator.
//! - [`TimestampWindow`]: freshness by timestamp (± skew) with bounded memory
//!   of the digests already accepted.
//! - [`SeqAllocator`]: the sender's counter, which never hands out a number
//!   it has not first asked the caller to persist a reservation for, so a
//!   crash can never lead to reuse.
//!
//! Both windows split the work into a cheap `check(&self, …)` before
//! decryption, which returns a proof token only `check` can create, and a
//! `commit(&mut self, token)` after everything verified. `commit` runs the
//! same test again, so a token that went stale in between (another message
//! with the same number was committed first) is refused: check-and-commit is
//! atomic under the `&mut` borrow.
//!
//! ```
//! use sealcast_core::ids::SeqNum;
//! use sealcast_core::replay::SeqWindow;
//!
//! let mut window = SeqWindow::new();
//! let token = window.check(SeqNum::new(7)?)?;
//! // … decrypt and verify the message …
//! window.commit(token)?;
//! assert!(window.check(SeqNum::new(7)?).is_err());
//! # Ok::<(), sealcast_core::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, ReplayKind, Result};
use crate::ids::{SeqNum, UnixMillis};

// ---------------------------------------------------------------------------
// Sequence-number window
// ---------------------------------------------------------------------------

/// Bits per bitmap word.
const WORD_BITS: usize = 64;

/// One past the largest sequence number: the exclusive end of the 40-bit space.
const SEQ_SPACE_END: u64 = SeqNum::MAX + 1;

/// A sliding-bitmap anti-replay window for one (group, epoch, sender).
///
/// Accepts a sequence number iff it was not accepted before and it lies
/// above `highest − size` (so exactly the `size` numbers
/// `highest − size + 1 ..= highest` are remembered individually; anything
/// lower is [`ReplayKind::TooOld`]). The very first number is accepted
/// whatever it is, including 0.
///
/// The bitmap is a ring indexed by `seq mod size` (RFC 6479): sliding forward
/// clears only the positions the new numbers take over, word by word, so a
/// commit costs O(min(jump, size) / 64) and a check O(1). Memory is
/// `size / 8` bytes.
///
/// # Restarts
///
/// A receiver that restarts must not accept again what it accepted before.
/// Persist [`SeqWindow::to_bytes`] after each commit and before acknowledging
/// the message, and restore with [`SeqWindow::from_bytes`]; without a saved
/// window, refuse the sender until a fresh epoch (or an Echo-style challenge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqWindow {
    /// Window size in bits: a multiple of 64 in `MIN_SIZE..=MAX_SIZE`.
    size: usize,
    /// The highest sequence number committed so far.
    highest: Option<u64>,
    /// Ring bitmap, `size / 64` words; bit `seq mod size` marks `seq`.
    bits: Vec<u64>,
}

/// Proof that [`SeqWindow::check`] accepted a sequence number.
///
/// Only `check` creates it; [`SeqWindow::commit`] consumes it.
#[derive(Debug)]
#[must_use = "a checked sequence number is only remembered once committed"]
pub struct SeqCheck {
    seq: SeqNum,
}

impl SeqCheck {
    /// The sequence number that passed the check.
    pub fn seq(&self) -> SeqNum {
        self.seq
    }
}

impl Default for SeqWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqWindow {
    /// The default window size in bits.
    pub const DEFAULT_SIZE: usize = 64;
    /// The smallest window size [`SeqWindow::with_size`] accepts.
    pub const MIN_SIZE: usize = 64;
    /// The largest window size [`SeqWindow::with_size`] accepts.
    pub const MAX_SIZE: usize = 4096;
    /// The length of [`SeqWindow::to_bytes`] for the largest window.
    pub const MAX_ENCODED_LEN: usize = HEADER_LEN + Self::MAX_SIZE / 8;

    /// An empty window of [`SeqWindow::DEFAULT_SIZE`] bits.
    pub fn new() -> Self {
        Self::empty(Self::DEFAULT_SIZE)
    }

    /// An empty window of `size` bits.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if `size` exceeds [`SeqWindow::MAX_SIZE`];
    /// [`Error::InvalidKey`] (a length parameter with the wrong value) if
    /// `size` is below [`SeqWindow::MIN_SIZE`] or not a multiple of 64.
    pub fn with_size(size: usize) -> Result<Self> {
        if size > Self::MAX_SIZE {
            return Err(Error::TooLarge {
                what: "replay window size",
                limit: Self::MAX_SIZE,
            });
        }
        if size < Self::MIN_SIZE || !size.is_multiple_of(WORD_BITS) {
            return Err(Error::InvalidKey(
                "replay window size must be a multiple of 64, at least 64",
            ));
        }
        Ok(Self::empty(size))
    }

    fn empty(size: usize) -> Self {
        Self {
            size,
            highest: None,
            bits: vec![0; size / WORD_BITS],
        }
    }

    /// The window size in bits.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The highest sequence number committed so far, if any.
    pub fn highest(&self) -> Option<SeqNum> {
        self.highest.and_then(|h| SeqNum::new(h).ok())
    }

    /// Cheap test before decryption: would `seq` be accepted now?
    ///
    /// # Errors
    ///
    /// [`Error::Replay`] with [`ReplayKind::Duplicate`] if `seq` was
    /// committed already, [`ReplayKind::TooOld`] if it lies at or below
    /// `highest − size`.
    pub fn check(&self, seq: SeqNum) -> Result<SeqCheck> {
        self.test(seq.get())?;
        Ok(SeqCheck { seq })
    }

    /// Records a checked sequence number after the message fully verified.
    ///
    /// Re-runs the test of [`SeqWindow::check`] first, so a token that went
    /// stale since it was issued (the same number was committed meanwhile,
    /// or the window slid past it) is refused and the window is unchanged.
    ///
    /// # Errors
    ///
    /// As [`SeqWindow::check`].
    pub fn commit(&mut self, token: SeqCheck) -> Result<()> {
        let seq = token.seq.get();
        self.test(seq)?;
        match self.highest {
            Some(h) if seq <= h => {}
            Some(h) => {
                self.slide(h, seq);
                self.highest = Some(seq);
            }
            None => self.highest = Some(seq),
        }
        self.set_bit(seq);
        Ok(())
    }

    /// The window rule, shared by `check` and `commit`.
    fn test(&self, seq: u64) -> Result<()> {
        let Some(h) = self.highest else {
            return Ok(());
        };
        if seq > h {
            return Ok(());
        }
        if h - seq >= self.size_u64() {
            return Err(Error::Replay(ReplayKind::TooOld));
        }
        if self.bit(seq) {
            return Err(Error::Replay(ReplayKind::Duplicate));
        }
        Ok(())
    }

    /// Moves the top of the window from `old` to `new` (> `old`): the ring
    /// positions of `old + 1 ..= new` still hold numbers that now fall out
    /// of the window and are cleared.
    fn slide(&mut self, old: u64, new: u64) {
        let jump = new - old;
        if jump >= self.size_u64() {
            self.bits.fill(0);
            return;
        }
        let mut seq = old + 1;
        while seq <= new {
            let pos = self.position(seq);
            let (word, bit) = (pos / WORD_BITS, pos % WORD_BITS);
            // A run never wraps inside a word: size is a multiple of 64, so
            // the ring's end falls on a word boundary.
            let run = ((WORD_BITS - bit) as u64).min(new - seq + 1);
            let mask = if run == WORD_BITS as u64 {
                u64::MAX
            } else {
                ((1u64 << run) - 1) << bit
            };
            if let Some(w) = self.bits.get_mut(word) {
                *w &= !mask;
            }
            seq += run;
        }
    }

    fn size_u64(&self) -> u64 {
        self.size as u64
    }

    fn position(&self, seq: u64) -> usize {
        // The remainder is below `size` (≤ 4096), so it fits any usize.
        (seq % self.size_u64()) as usize
    }

    fn bit(&self, seq: u64) -> bool {
        let pos = self.position(seq);
        self.bits
            .get(pos / WORD_BITS)
            .is_some_and(|w| w & (1u64 << (pos % WORD_BITS)) != 0)
    }

    fn set_bit(&mut self, seq: u64) {
        let pos = self.position(seq);
        if let Some(w) = self.bits.get_mut(pos / WORD_BITS) {
            *w |= 1u64 << (pos % WORD_BITS);
        }
    }

    /// Encodes the window for persistence.
    ///
    /// Format, version 1 (`8 + size / 8` bytes, at most
    /// [`SeqWindow::MAX_ENCODED_LEN`]):
    ///
    /// | bytes | content |
    /// |-------|---------|
    /// | 0     | version, `1` |
    /// | 1     | `size / 64` (1 ..= 64) |
    /// | 2     | `0` = nothing committed yet, `1` = `highest` is valid |
    /// | 3..8  | `highest`, 40-bit big-endian (zero when empty) |
    /// | 8..   | `size / 64` little-endian `u64` words; bit `i` (word `i / 64`, bit `i % 64`) set iff `highest − i` was accepted |
    ///
    /// The bitmap is relative to `highest`, so the encoding is canonical and
    /// independent of the in-memory ring layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let words = self.bits.len();
        let mut out = Vec::with_capacity(HEADER_LEN + words * 8);
        out.push(FORMAT_V1);
        // words ≤ 64, see MAX_SIZE.
        out.push(u8::try_from(words).unwrap_or(u8::MAX));
        let mut relative = vec![0u64; words];
        match self.highest {
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 5]);
            }
            Some(h) => {
                out.push(1);
                out.extend_from_slice(&h.to_be_bytes()[3..]);
                let span = self.size_u64().min(h + 1);
                for i in 0..span {
                    if self.bit(h - i) {
                        set_relative(&mut relative, i);
                    }
                }
            }
        }
        for w in relative {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Decodes a window saved by [`SeqWindow::to_bytes`].
    ///
    /// Reads at most [`SeqWindow::MAX_ENCODED_LEN`] bytes' worth and never
    /// panics on hostile input.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a wrong length, an unknown version, a size
    /// outside 64 ..= 4096 bits, an unknown state byte, an empty window with
    /// any non-zero byte, a `highest` whose own bit is clear, or bits for
    /// numbers below zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (Some(&version), Some(&words), Some(&state), Some(hi)) = (
            bytes.first(),
            bytes.get(1),
            bytes.get(2),
            bytes.get(3..HEADER_LEN),
        ) else {
            return Err(Error::Malformed("replay window: truncated header"));
        };
        if version != FORMAT_V1 {
            return Err(Error::Malformed("replay window: unknown format version"));
        }
        let words = usize::from(words);
        if words == 0 || words > Self::MAX_SIZE / WORD_BITS {
            return Err(Error::Malformed("replay window: size out of range"));
        }
        if bytes.len() != HEADER_LEN + words * 8 {
            return Err(Error::Malformed("replay window: wrong length"));
        }
        let mut relative = Vec::with_capacity(words);
        for chunk in bytes.get(HEADER_LEN..).unwrap_or_default().chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            relative.push(u64::from_le_bytes(w));
        }
        let mut highest_bytes = [0u8; 8];
        highest_bytes[3..].copy_from_slice(hi);
        let highest = u64::from_be_bytes(highest_bytes);

        let mut window = Self::empty(words * WORD_BITS);
        match state {
            0 => {
                if highest != 0 || relative.iter().any(|&w| w != 0) {
                    return Err(Error::Malformed("replay window: empty window with data"));
                }
            }
            1 => {
                if relative.first().is_none_or(|&w| w & 1 == 0) {
                    return Err(Error::Malformed(
                        "replay window: highest number not marked accepted",
                    ));
                }
                for i in 0..window.size_u64() {
                    if !relative_bit(&relative, i) {
                        continue;
                    }
                    let Some(seq) = highest.checked_sub(i) else {
                        return Err(Error::Malformed(
                            "replay window: bit set below sequence number 0",
                        ));
                    };
                    window.set_bit(seq);
                }
                window.highest = Some(highest);
            }
            _ => return Err(Error::Malformed("replay window: unknown state")),
        }
        Ok(window)
    }
}

/// Version byte of the [`SeqWindow::to_bytes`] format.
const FORMAT_V1: u8 = 1;
/// Version, size, state and 40-bit highest.
const HEADER_LEN: usize = 8;

fn set_relative(words: &mut [u64], i: u64) {
    let (word, bit) = ((i / 64) as usize, i % 64);
    if let Some(w) = words.get_mut(word) {
        *w |= 1u64 << bit;
    }
}

fn relative_bit(words: &[u64], i: u64) -> bool {
    let (word, bit) = ((i / 64) as usize, i % 64);
    words.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
}

// ---------------------------------------------------------------------------
// Timestamp window
// ---------------------------------------------------------------------------

/// Freshness by timestamp, with bounded memory of what was accepted.
///
/// A message passes iff `|ts − now| ≤ skew`, `ts` lies above the *floor*
/// and its digest was not accepted before. Invariant: every digest ever
/// committed is either still remembered or has a timestamp at or below the
/// floor, so a duplicate is never accepted (fail closed).
///
/// Memory is at most `max_entries` remembered digests:
///
/// - entries older than `now − skew` age out on commit, since any message
///   with such a timestamp fails the skew test anyway; the floor rises to
///   the newest aged-out timestamp, which also keeps a `now` that steps
///   backwards from reopening them;
/// - when the window is full and nothing has aged out, the oldest entry is
///   evicted (or the new one, if it is older still) and the floor rises to
///   its timestamp: from then on every `ts ≤ floor` is refused with
///   [`ReplayKind::TooOld`]. `max_entries = 0` thus means "strictly
///   increasing timestamps only".
///
/// `now` is captured by [`TimestampWindow::check`] in the [`TsCheck`] token
/// and used again by [`TimestampWindow::commit`]; commit does not read a
/// second time (the core has no clock).
///
/// Complexity, with `n ≤ max_entries`: `check` O(log n); `commit`
/// O(log n) amortized (every entry is removed at most once, at O(log n)).
/// Two ordered indexes (by time, by digest) of about 40 bytes per entry
/// each; no hashing, so no OS randomness for hash keys.
#[derive(Debug, Clone)]
pub struct TimestampWindow {
    skew_ms: u64,
    max_entries: usize,
    /// Remembered entries ordered by time, for ageing out and eviction.
    by_time: BTreeSet<(u64, [u8; 32])>,
    /// The same entries by digest, for duplicate lookup regardless of `ts`.
    by_digest: BTreeMap<[u8; 32], u64>,
    /// Every `ts ≤ floor` is refused.
    floor: Option<u64>,
}

/// Proof that [`TimestampWindow::check`] accepted a message.
///
/// Carries the timestamp, the digest and the `now` of the check; only
/// `check` creates it and [`TimestampWindow::commit`] consumes it.
#[derive(Debug)]
#[must_use = "a checked timestamp is only remembered once committed"]
pub struct TsCheck {
    ts: UnixMillis,
    digest: [u8; 32],
    now: UnixMillis,
}

impl TsCheck {
    /// The message timestamp that passed the check.
    pub fn timestamp(&self) -> UnixMillis {
        self.ts
    }
    /// The message digest that passed the check.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
    /// The `now` the check was made at; commit uses it too.
    pub fn now(&self) -> UnixMillis {
        self.now
    }
}

impl TimestampWindow {
    /// An empty window accepting timestamps within `±skew_ms` of `now` and
    /// remembering at most `max_entries` digests.
    pub fn new(skew_ms: u64, max_entries: usize) -> Self {
        Self {
            skew_ms,
            max_entries,
            by_time: BTreeSet::new(),
            by_digest: BTreeMap::new(),
            floor: None,
        }
    }

    /// The accepted skew in milliseconds.
    pub fn skew_ms(&self) -> u64 {
        self.skew_ms
    }

    /// The most digests remembered at once.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// How many digests are remembered now.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// Whether no digest is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    /// Every timestamp at or below this is refused as too old.
    pub fn floor(&self) -> Option<UnixMillis> {
        self.floor.map(UnixMillis::new)
    }

    /// Cheap test: would a message with timestamp `ts` and `digest` be
    /// accepted at `now`?
    ///
    /// # Errors
    ///
    /// [`Error::StaleTimestamp`] if `|ts − now| > skew`;
    /// [`Error::Replay`] with [`ReplayKind::TooOld`] if `ts` is at or below
    /// the floor, [`ReplayKind::Duplicate`] if the digest was accepted.
    pub fn check(&self, ts: UnixMillis, digest: [u8; 32], now: UnixMillis) -> Result<TsCheck> {
        self.test(ts.get(), &digest, now.get())?;
        Ok(TsCheck { ts, digest, now })
    }

    /// Records a checked message after it fully verified.
    ///
    /// Re-runs the test of [`TimestampWindow::check`] at the token's `now`,
    /// then ages out, evicts if full, and remembers the digest.
    ///
    /// # Errors
    ///
    /// As [`TimestampWindow::check`]; the window is unchanged on error.
    pub fn commit(&mut self, token: TsCheck) -> Result<()> {
        let (ts, now) = (token.ts.get(), token.now.get());
        self.test(ts, &token.digest, now)?;

        // Age out everything older than now − skew.
        let horizon = now.saturating_sub(self.skew_ms);
        while let Some(&(old, _)) = self.by_time.first() {
            if old >= horizon {
                break;
            }
            self.evict_first();
        }

        if self.by_time.len() < self.max_entries {
            self.insert(ts, token.digest);
            return Ok(());
        }
        // Full: drop the oldest of the remembered entries and the new one.
        // On a tie the floor covers both, so the new entry need not be kept.
        let new_is_oldest = self.by_time.first().is_none_or(|&(first, _)| ts <= first);
        if new_is_oldest {
            self.raise_floor(ts);
        } else {
            self.evict_first();
            self.insert(ts, token.digest);
        }
        Ok(())
    }

    fn test(&self, ts: u64, digest: &[u8; 32], now: u64) -> Result<()> {
        if ts.abs_diff(now) > self.skew_ms {
            return Err(Error::StaleTimestamp);
        }
        if self.floor.is_some_and(|floor| ts <= floor) {
            return Err(Error::Replay(ReplayKind::TooOld));
        }
        if self.by_digest.contains_key(digest) {
            return Err(Error::Replay(ReplayKind::Duplicate));
        }
        Ok(())
    }

    fn insert(&mut self, ts: u64, digest: [u8; 32]) {
        self.by_time.insert((ts, digest));
        self.by_digest.insert(digest, ts);
    }

    /// Forgets the oldest entry and raises the floor over it.
    fn evict_first(&mut self) {
        if let Some((ts, digest)) = self.by_time.pop_first() {
            self.by_digest.remove(&digest);
            self.raise_floor(ts);
        }
    }

    /// Raises the floor to `ts` and drops the entries it now covers.
    fn raise_floor(&mut self, ts: u64) {
        let floor = self.floor.map_or(ts, |f| f.max(ts));
        self.floor = Some(floor);
        while let Some(&(old, digest)) = self.by_time.first() {
            if old > floor {
                break;
            }
            self.by_time.pop_first();
            self.by_digest.remove(&digest);
        }
    }
}

// ---------------------------------------------------------------------------
// Sender-side allocation
// ---------------------------------------------------------------------------

/// The sender's sequence counter, safe across crashes.
///
/// Numbers are handed out only below a *reservation limit* that the caller
/// has durably stored. The protocol:
///
/// 1. when [`SeqAllocator::reservation_request`] returns `Some(limit)`,
///    persist `limit` (write and fsync),
/// 2. then call [`SeqAllocator::confirm_reservation`]`(limit)`,
/// 3. after a restart, [`SeqAllocator::resume`] from the stored limit.
///
/// Every number handed out lies below a limit that was stored before it was
/// handed out, and a resumed allocator starts at the stored limit, so no
/// number is ever used twice — at worst the unused rest of a block is
/// skipped. Requests come early (when fewer than `block / 2` reserved
/// numbers remain), so a caller can persist ahead of running dry;
/// [`SeqAllocator::next`] refuses with [`Error::ReservationRequired`] if it
/// does run dry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqAllocator {
    /// The next number to hand out; `SEQ_SPACE_END` once exhausted.
    next: u64,
    /// Exclusive limit of the confirmed reservation; `next ≤ limit ≤ 2^40`.
    limit: u64,
    /// How far each reservation reaches ahead.
    block: u64,
}

impl SeqAllocator {
    /// A fresh allocator: next number 0, nothing reserved yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if `block` is 0 or above 2^40.
    pub fn new(block: u64) -> Result<Self> {
        Self::resume(0, block)
    }

    /// Continues after a restart at `persisted_limit`, the last limit stored
    /// durably; nothing is reserved yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if `block` is 0 or above 2^40;
    /// [`Error::Malformed`] if `persisted_limit` is above 2^40.
    pub fn resume(persisted_limit: u64, block: u64) -> Result<Self> {
        if block == 0 || block > SEQ_SPACE_END {
            return Err(Error::InvalidKey(
                "reservation block must be between 1 and 2^40",
            ));
        }
        if persisted_limit > SEQ_SPACE_END {
            return Err(Error::Malformed("persisted sequence limit above 2^40"));
        }
        Ok(Self {
            next: persisted_limit,
            limit: persisted_limit,
            block,
        })
    }

    /// Hands out the next sequence number.
    ///
    /// # Errors
    ///
    /// [`Error::SequenceExhausted`] once 2^40 − 1 was handed out;
    /// [`Error::ReservationRequired`] if the confirmed reservation is used
    /// up (persist [`SeqAllocator::reservation_request`] and confirm it).
    // Not an `Iterator`: running dry is an error the caller must act on
    // (persist a reservation), not the end of a sequence.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<SeqNum> {
        if self.next > SeqNum::MAX {
            return Err(Error::SequenceExhausted);
        }
        if self.next >= self.limit {
            return Err(Error::ReservationRequired);
        }
        let seq = SeqNum::new(self.next)?;
        self.next += 1;
        Ok(seq)
    }

    /// The new limit the caller should persist and then confirm, if it is
    /// time to: when fewer than `block / 2` reserved numbers remain (or
    /// none). `None` while enough remain, or when the reservation already
    /// reaches the end of the 40-bit space.
    pub fn reservation_request(&self) -> Option<u64> {
        if self.limit >= SEQ_SPACE_END {
            return None;
        }
        let remaining = self.limit - self.next;
        if remaining == 0 || remaining < self.block / 2 {
            Some(self.limit.saturating_add(self.block).min(SEQ_SPACE_END))
        } else {
            None
        }
    }

    /// Records that `limit` is durably stored; numbers below it may now be
    /// handed out. Call only after the write is durable.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if `limit` does not exceed the current limit
    /// or is above 2^40; the allocator is unchanged.
    pub fn confirm_reservation(&mut self, limit: u64) -> Result<()> {
        if limit <= self.limit || limit > SEQ_SPACE_END {
            return Err(Error::InvalidKey(
                "reservation limit must exceed the current one and be at most 2^40",
            ));
        }
        self.limit = limit;
        Ok(())
    }

    /// The number [`SeqAllocator::next`] would hand out, reservation
    /// permitting; `None` once the 40-bit space is used up.
    pub fn peek_next(&self) -> Option<SeqNum> {
        SeqNum::new(self.next).ok()
    }

    /// The exclusive limit of the confirmed reservation (at most 2^40).
    pub fn reserved_limit(&self) -> u64 {
        self.limit
    }

    /// How far each reservation reaches ahead.
    pub fn block(&self) -> u64 {
        self.block
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
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
}

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
mod tests;

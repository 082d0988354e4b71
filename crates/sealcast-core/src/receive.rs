//! Acknowledge after commit: the receive rule every sealcast receiver
//! applies, whatever the transport (DESIGN §6).
//!
//! A transport delivers at least once (MQTT QoS 1, a CoAP confirmable
//! request retransmitted). sealcast turns that into *executed once* with the
//! receiver's replay window: a message is opened — which commits the window
//! and makes it durable — and only then acknowledged. A crash between commit
//! and acknowledgement makes the transport deliver it again; the copy fails
//! as a replay and is acknowledged and dropped. A crash before the commit
//! leaves nothing committed; the copy opens normally.
//!
//! This module is the rule itself, as a pure function: [`Verdict::of`] turns
//! the outcome of `open` into what to do with the message, and
//! [`Verdict::answer`] into the one of three answers a transport gives. The
//! adapters (MQTT's manual PUBACK, CoAP's held response, a future
//! transport's) only carry the answer out.

use crate::error::{Error, ReplayKind};

/// Why opening a message did not accept it.
#[derive(Debug)]
pub enum OpenError {
    /// The bytes were refused: a replay, or a reason that is final for
    /// these bytes, or — [`is_transient`] — one a newer group key cures.
    Refused(Error),
    /// The message opened, but what it committed could not be made durable
    /// (a full or read-only disk); the caller put its replay state back.
    NotSaved(String),
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        Self::Refused(e)
    }
}

/// What the receive rule makes of one `open`.
#[derive(Debug)]
pub enum Verdict<T> {
    /// Opened and committed: acknowledge, then act on `T`.
    Executed(T),
    /// A replay — normally a redelivery, possibly an attacker's copy:
    /// acknowledge and drop.
    Duplicate(ReplayKind),
    /// Can never be opened (garbage, another group, a forgery, an expired
    /// key, an older epoch): refuse and drop, so the transport does not
    /// deliver it for ever. The reason is local; never send it to the peer.
    Rejected(Error),
    /// Names a newer epoch than the receiver holds: hold it unacknowledged,
    /// pull the current key, then open it again (or drop it, and the
    /// transport delivers it again later).
    Deferred(Error),
    /// Opened but not saved: hold it unacknowledged and open it again once
    /// the fault clears (or drop it unacknowledged).
    NotSaved(String),
}

/// The answer a transport gives the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Processed: MQTT PUBACK, CoAP 2.04.
    Accept,
    /// Will never be processed: MQTT PUBACK (so the broker forgets it),
    /// CoAP 4.00 without a diagnostic.
    Refuse,
    /// Not yet: no answer now; the receiver keeps the message (or drops it
    /// and the transport delivers it again).
    Hold,
}

impl<T> Verdict<T> {
    /// Applies the rule to what `open` returned.
    pub fn of(opened: Result<T, OpenError>) -> Self {
        match opened {
            Ok(value) => Verdict::Executed(value),
            Err(OpenError::NotSaved(why)) => Verdict::NotSaved(why),
            Err(OpenError::Refused(Error::Replay(kind))) => Verdict::Duplicate(kind),
            Err(OpenError::Refused(e)) if is_transient(&e) => Verdict::Deferred(e),
            Err(OpenError::Refused(e)) => Verdict::Rejected(e),
        }
    }

    /// The answer this verdict gives the sender.
    pub fn answer(&self) -> Answer {
        match self {
            Verdict::Executed(_) | Verdict::Duplicate(_) => Answer::Accept,
            Verdict::Rejected(_) => Answer::Refuse,
            Verdict::Deferred(_) | Verdict::NotSaved(_) => Answer::Hold,
        }
    }
}

/// True for the open failures that a newer group key cures: the message
/// names an epoch newer than the receiver installed
/// (`BroadcastReceiver::open` refuses those with [`Error::FutureEpoch`]).
/// Every other failure is final for the bytes at hand.
pub fn is_transient(e: &Error) -> bool {
    matches!(e, Error::FutureEpoch)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_in_one_table() {
        let cases: Vec<(Result<u8, OpenError>, Answer)> = vec![
            (Ok(1), Answer::Accept),
            (
                Err(Error::Replay(ReplayKind::Duplicate).into()),
                Answer::Accept,
            ),
            (
                Err(Error::Replay(ReplayKind::TooOld).into()),
                Answer::Accept,
            ),
            (Err(Error::FutureEpoch.into()), Answer::Hold),
            (Err(OpenError::NotSaved("disk full".into())), Answer::Hold),
            (Err(Error::DecryptFailed.into()), Answer::Refuse),
            (Err(Error::StaleEpoch.into()), Answer::Refuse),
            (Err(Error::BadSignature.into()), Answer::Refuse),
        ];
        for (opened, answer) in cases {
            let label = format!("{opened:?}");
            assert_eq!(Verdict::of(opened).answer(), answer, "{label}");
        }
        assert!(matches!(
            Verdict::<()>::of(Err(Error::FutureEpoch.into())),
            Verdict::Deferred(Error::FutureEpoch)
        ));
    }
}

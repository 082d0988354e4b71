//! Acknowledge after commit, on MQTT: the rule itself is
//! `sealcast_core::receive` (open, commit, then acknowledge; a replay is
//! acknowledged and dropped; a newer epoch or an unsaved result is held);
//! this module carries its answers out with the manual PUBACK.
//!
//! MQTT QoS 1 delivers at least once. A crash between commit and
//! acknowledgement makes the broker redeliver; the copy fails with `Replay`
//! and is acknowledged and dropped. A crash before the commit leaves
//! nothing committed; the redelivered copy opens normally.

use sealcast_core::ReplayKind;
use sealcast_core::receive::Verdict;
use tracing::{debug, info, warn};

use crate::client::{Acked, Incoming};

/// What [`deliver_once`] did with one message.
#[non_exhaustive]
#[derive(Debug)]
pub enum Delivery<T> {
    /// Opened (the replay window committed) and acknowledged.
    Executed {
        /// What `open` returned.
        value: T,
        /// The acknowledgement.
        ack: Acked,
    },
    /// A replay — normally a QoS 1 redelivery, possibly an attacker's
    /// copy: acknowledged and dropped.
    Duplicate {
        /// Seen before, or older than the window remembers.
        kind: ReplayKind,
        /// The acknowledgement.
        ack: Acked,
    },
    /// Can never be opened (garbage, another group, a forgery, an expired
    /// key, an older epoch): acknowledged and dropped, so the broker does not
    /// redeliver it for ever. The reason was logged locally.
    Rejected {
        /// The local reason. Never send it to the peer; see
        /// `sealcast_core::Error::peer_view`.
        reason: sealcast_core::Error,
        /// The acknowledgement.
        ack: Acked,
    },
    /// Cannot be opened *yet*: it names a newer epoch than the receiver has
    /// installed. Not acknowledged; the message comes back to the caller,
    /// who pulls the current group key and calls [`deliver_once`] again (or
    /// drops it, and the broker redelivers it on the next session).
    Deferred {
        /// The message, with its unused acknowledgement token.
        incoming: Incoming,
        /// Why it could not be opened now.
        reason: sealcast_core::Error,
    },
    /// Opened, but what it committed could not be made durable (a full or
    /// read-only disk); `open` put its state back. Not acknowledged: the
    /// caller retries it once the fault clears, or drops it and the broker
    /// redelivers it on the next session.
    NotSaved {
        /// The message, with its unused acknowledgement token.
        incoming: Incoming,
        /// What could not be saved, for the caller's log.
        reason: String,
    },
}

pub use sealcast_core::receive::{OpenError, is_transient};

/// Opens one received message with `open` and acknowledges it in the right
/// order.
///
/// `open(topic, payload)` typically calls
/// `BroadcastReceiver::open(payload, topic, now)`, which commits the replay
/// window on success, and then executes the command (or queues it durably):
/// whatever must not be lost to a crash belongs inside `open`, because the
/// acknowledgement follows it.
///
/// - `Ok(value)` → acknowledged, [`Delivery::Executed`];
/// - `Err(Replay(_))` → acknowledged and dropped, [`Delivery::Duplicate`];
/// - an error that a newer group key would cure → *not* acknowledged,
///   [`Delivery::Deferred`] (see [`is_transient`]);
/// - any other error → acknowledged and dropped, [`Delivery::Rejected`],
///   with the local reason logged (topic, size and reason; never payload
///   bytes, and this crate holds no keys);
/// - [`OpenError::NotSaved`] → *not* acknowledged, [`Delivery::NotSaved`];
///   nothing is logged here (the caller knows what failed).
///
/// An acknowledgement that cannot be sent (the client shut down) is logged,
/// not returned as an error: the value was committed and must reach the
/// caller, and a redelivered copy would be a duplicate.
pub async fn deliver_once<T, E, F>(incoming: Incoming, open: F) -> Delivery<T>
where
    F: FnOnce(&str, &[u8]) -> Result<T, E>,
    E: Into<OpenError>,
{
    let verdict = Verdict::of(open(&incoming.topic, &incoming.payload).map_err(Into::into));
    match verdict {
        Verdict::Executed(value) => {
            let ack = acknowledge(incoming).await;
            Delivery::Executed { value, ack }
        }
        Verdict::Duplicate(kind) => {
            debug!(
                topic = %incoming.topic,
                redelivered = incoming.redelivered,
                ?kind,
                "duplicate message acknowledged and dropped"
            );
            let ack = acknowledge(incoming).await;
            Delivery::Duplicate { kind, ack }
        }
        Verdict::Deferred(reason) => {
            info!(
                topic = %incoming.topic,
                %reason,
                "message for a newer epoch held back unacknowledged; pull the current key"
            );
            Delivery::Deferred { incoming, reason }
        }
        Verdict::NotSaved(reason) => Delivery::NotSaved { incoming, reason },
        Verdict::Rejected(reason) => {
            warn!(
                topic = %incoming.topic,
                len = incoming.payload.len(),
                %reason,
                "message can never be opened; acknowledged and dropped"
            );
            let ack = acknowledge(incoming).await;
            Delivery::Rejected { reason, ack }
        }
    }
}

async fn acknowledge(incoming: Incoming) -> Acked {
    let topic = incoming.topic;
    match incoming.ack.ack().await {
        Ok(a) => a,
        Err(e) => {
            warn!(%topic, error = %e, "could not acknowledge; a redelivery will be dropped as a duplicate");
            Acked::ClientClosed
        }
    }
}

//! The one error type of `sealcast-core`.
//!
//! Every variant carries the *local* reason for a failure so that logs and
//! operators can see what went wrong. What a remote peer may learn is far
//! less: [`Error::peer_view`] collapses everything that could help an attacker
//! (which check failed, whether a key id exists) into one opaque
//! [`PeerError`]. Variants never carry key bytes.

use core::fmt;

/// Everything that can go wrong in the sealcast core.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An identifier had the wrong length or characters.
    InvalidId {
        /// Which kind of identifier (`"group id"`, `"sender id"` …).
        kind: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Bytes were not the CBOR / COSE structure expected here.
    Malformed(&'static str),
    /// A target name (MQTT topic, CoAP Uri-Path) or topic filter did not
    /// follow the sealcast target scheme or the transport's naming rules.
    InvalidTarget(&'static str),
    /// An input exceeded a size or count limit.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit that applies.
        limit: usize,
    },
    /// An algorithm identifier that sealcast does not accept in this place.
    UnsupportedAlgorithm(i64),
    /// A key, nonce or length parameter had the wrong size or value.
    InvalidKey(&'static str),
    /// An X25519 exchange produced the all-zero secret (low-order public key).
    NonContributoryKeyAgreement,
    /// The AEAD tag did not verify (wrong key, not a member, or tampered).
    DecryptFailed,
    /// A signature or MAC did not verify.
    BadSignature,
    /// The key id names no credential or sender this receiver knows.
    UnknownSender,
    /// The signer is known but not authorized to sign for this group.
    SignerNotAuthorized,
    /// The signer of the inner object is not the sender of the outer one.
    SignerMismatch,
    /// The transport's originator (a oneM2M AE the CSE accepted) is not the
    /// entity that signed the object: AE impersonation (TS-0003 §7.2).
    OriginatorMismatch,
    /// The object was made for another group, epoch, recipient or target.
    ContextMismatch(&'static str),
    /// The sequence number was seen already, or is older than the window.
    Replay(ReplayKind),
    /// The timestamp lies outside the accepted skew.
    StaleTimestamp,
    /// The sender's sequence numbers are used up (2^40 − 1 reached).
    SequenceExhausted,
    /// A sequence number was requested beyond the persisted reservation;
    /// persist [`crate::replay::SeqAllocator::reservation_request`] first.
    ReservationRequired,
    /// The key material has expired or is not valid yet.
    KeyExpired,
    /// A group key was older than what the receiver already installed.
    StaleEpoch,
    /// The object names a newer epoch than the receiver installed: it
    /// missed a rekey and should pull the current key, then try again.
    FutureEpoch,
}

/// Why a message was judged a replay.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    /// The exact sequence number (or digest) was accepted before.
    Duplicate,
    /// The sequence number is older than the window can remember.
    TooOld,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidId { kind, reason } => write!(f, "invalid {kind}: {reason}"),
            Error::Malformed(what) => write!(f, "malformed input: {what}"),
            Error::InvalidTarget(why) => write!(f, "invalid topic: {why}"),
            Error::TooLarge { what, limit } => write!(f, "{what} too large (limit {limit})"),
            Error::UnsupportedAlgorithm(alg) => write!(f, "unsupported algorithm {alg}"),
            Error::InvalidKey(what) => write!(f, "invalid key material: {what}"),
            Error::NonContributoryKeyAgreement => {
                write!(
                    f,
                    "key agreement produced the all-zero secret (low-order public key)"
                )
            }
            Error::DecryptFailed => {
                write!(f, "decryption failed (not a member, wrong key or tampered)")
            }
            Error::BadSignature => write!(f, "signature or MAC did not verify"),
            Error::UnknownSender => write!(f, "unknown sender or key id"),
            Error::SignerNotAuthorized => write!(f, "signer is not authorized for this group"),
            Error::SignerMismatch => write!(f, "inner signer differs from outer sender"),
            Error::OriginatorMismatch => {
                write!(
                    f,
                    "the transport's originator is not the signer (impersonation)"
                )
            }
            Error::ContextMismatch(what) => write!(f, "object was made for another {what}"),
            Error::Replay(ReplayKind::Duplicate) => write!(f, "replay: already accepted"),
            Error::Replay(ReplayKind::TooOld) => write!(f, "replay: older than the replay window"),
            Error::StaleTimestamp => write!(f, "timestamp outside the accepted skew"),
            Error::SequenceExhausted => {
                write!(f, "sequence numbers exhausted; a new epoch is needed")
            }
            Error::ReservationRequired => {
                write!(f, "sequence reservation must be persisted before use")
            }
            Error::KeyExpired => write!(f, "key material expired or not yet valid"),
            Error::StaleEpoch => write!(f, "epoch older than the one installed"),
            Error::FutureEpoch => {
                write!(
                    f,
                    "epoch newer than the one installed; pull the current key"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// What a remote peer is told when one of its messages is refused.
///
/// Deliberately carries no detail: the local log keeps the [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerError;

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("message rejected")
    }
}

impl std::error::Error for PeerError {}

impl Error {
    /// The opaque form of this error that may be shown to a remote peer.
    pub fn peer_view(&self) -> PeerError {
        PeerError
    }
}

/// Result alias used throughout the core.
pub type Result<T, E = Error> = core::result::Result<T, E>;

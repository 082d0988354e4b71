//! The one error type of `sealcast-bearer`.
//!
//! Like [`sealcast_core::Error`], every variant carries the *local* reason
//! for a refusal (for logs and operators) and never carries key bytes. Key
//! ids are not secret: they travel in clear in every frame header. What a
//! remote peer may learn goes through [`Error::peer_view`], the same opaque
//! [`sealcast_core::PeerError`] the rest of sealcast uses.

use core::fmt;

use sealcast_core::{PeerError, ReplayKind};

use crate::ids::{MskId, MtkId};

/// Everything that can go wrong on the bearer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A failure inside `sealcast-core` (ids, key agreement, HKDF).
    Core(sealcast_core::Error),
    /// Bytes were not a bearer frame or MSK delivery of this version.
    Malformed(&'static str),
    /// An input exceeded a size limit.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit that applies.
        limit: usize,
    },
    /// A topic was empty, too long, not UTF-8 or contained U+0000.
    InvalidTopic(&'static str),
    /// A configuration value is out of range.
    InvalidConfig(&'static str),
    /// The frame names an MSK this receiver was never given (not entitled,
    /// revoked, or its delivery has not arrived yet).
    UnknownMsk(MskId),
    /// The frame or delivery names an MSK this receiver already retired.
    StaleMsk(MskId),
    /// The MSK's lifetime is over (beyond the clock skew allowed).
    MskExpired(MskId),
    /// The data frame names an MTK whose key frame has not arrived (yet).
    UnknownMtk(MtkId),
    /// The frame names an MTK this receiver already retired.
    StaleMtk(MtkId),
    /// The MTK's lifetime is over (beyond the clock skew allowed).
    MtkExpired(MtkId),
    /// The frame counter was accepted before under this MTK, or is older
    /// than the replay window.
    Replay(ReplayKind),
    /// The AEAD tag did not verify: wrong key, wrong service or device, or
    /// tampered bytes.
    DecryptFailed,
    /// A MUK was derived for another bearer service than this sender's.
    WrongService,
    /// The device is entitled already.
    AlreadyEntitled,
    /// The device is not entitled (nothing to revoke).
    NotEntitled,
    /// An identifier space is used up: start a new sender with fresh ids.
    IdsExhausted(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::Malformed(what) => write!(f, "malformed bearer input: {what}"),
            Error::TooLarge { what, limit } => write!(f, "{what} too large (limit {limit})"),
            Error::InvalidTopic(why) => write!(f, "invalid topic: {why}"),
            Error::InvalidConfig(why) => write!(f, "invalid bearer configuration: {why}"),
            Error::UnknownMsk(id) => write!(
                f,
                "unknown MSK {id}: not entitled, revoked, or the MSK delivery has not arrived"
            ),
            Error::StaleMsk(id) => write!(f, "MSK {id} was already retired: drop the input"),
            Error::MskExpired(id) => write!(f, "MSK {id} has expired"),
            Error::UnknownMtk(id) => write!(
                f,
                "unknown MTK {id}: its key frame has not arrived; the next repetition recovers"
            ),
            Error::StaleMtk(id) => write!(f, "MTK {id} was already retired: drop the frame"),
            Error::MtkExpired(id) => write!(f, "MTK {id} has expired"),
            Error::Replay(ReplayKind::Duplicate) => write!(f, "replay: frame already accepted"),
            Error::Replay(ReplayKind::TooOld) => {
                write!(f, "replay: frame older than the replay window")
            }
            Error::Replay(_) => write!(f, "replay"),
            Error::DecryptFailed => write!(
                f,
                "decryption failed (wrong key, service or device, or tampered)"
            ),
            Error::WrongService => write!(f, "MUK belongs to another bearer service"),
            Error::AlreadyEntitled => write!(f, "device is already entitled"),
            Error::NotEntitled => write!(f, "device is not entitled"),
            Error::IdsExhausted(what) => write!(f, "{what} ids exhausted"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Core(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sealcast_core::Error> for Error {
    fn from(e: sealcast_core::Error) -> Self {
        match e {
            sealcast_core::Error::DecryptFailed => Error::DecryptFailed,
            sealcast_core::Error::Replay(kind) => Error::Replay(kind),
            other => Error::Core(other),
        }
    }
}

impl Error {
    /// The opaque form of this error that may be shown to a remote peer.
    pub fn peer_view(&self) -> PeerError {
        PeerError
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

//! The one error type of `sealcast-group`.
//!
//! Like [`sealcast_core::Error`], every variant carries the *local* reason
//! for logs and operators and never carries key bytes. What a remote peer may
//! learn goes through [`Error::peer_view`], the same opaque
//! [`sealcast_core::PeerError`] the core uses.

use core::fmt;

use sealcast_core::PeerError;
use sealcast_core::ids::Epoch;

/// Everything that can go wrong in the group logic.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A failure inside `sealcast-core` (crypto, ids, envelopes).
    Core(sealcast_core::Error),
    /// The manager was asked about a member (leaf, entity) it does not hold.
    UnknownMember,
    /// This member's keys do not open the rekey or notice: it was evicted,
    /// or it missed an earlier rekey or join notice.
    NotAMember,
    /// The entity is a member of the group already.
    AlreadyMember,
    /// The key tree reached its largest supported size.
    TreeFull {
        /// The most members a tree can hold.
        limit: usize,
    },
    /// Bytes were not the structure expected here.
    Malformed(&'static str),
    /// An input exceeded a size or count limit.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit that applies.
        limit: usize,
    },
    /// An event carried an epoch that is not newer than the current one.
    StaleEpoch {
        /// The epoch already reached.
        current: Epoch,
        /// The epoch offered.
        offered: Epoch,
    },
    /// The member's view of the tree (its depth) differs from the manager's.
    OutOfSync(&'static str),
    /// The group id names no group this manager or member knows.
    UnknownGroup,
    /// The message was signed by a manager that does not own this group.
    WrongManager,
    /// A well-formed, authentic message this node must not act on (for
    /// another node, stale, replayed); the reason says which.
    Refused(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::UnknownMember => write!(
                f,
                "no such member in this group: check the member id or leaf (it may have been evicted already)"
            ),
            Error::NotAMember => write!(
                f,
                "this member's keys do not open the rekey: it was evicted, or it missed an earlier rekey \
                 or join notice and must ask the manager for its current path keys"
            ),
            Error::AlreadyMember => write!(
                f,
                "already a member of this group: nothing to add (evict it first to re-key its seat)"
            ),
            Error::TreeFull { limit } => write!(
                f,
                "key tree is full ({limit} members): evict members or split the fleet into several groups"
            ),
            Error::Malformed(what) => write!(f, "malformed input: {what}"),
            Error::TooLarge { what, limit } => {
                write!(f, "{what} too large (limit {limit}): refuse the input")
            }
            Error::StaleEpoch { current, offered } => write!(
                f,
                "epoch {offered} is not newer than the current epoch {current}: drop the message \
                 (replay or reordering), or move the group to a larger epoch"
            ),
            Error::OutOfSync(what) => write!(
                f,
                "member state does not match the manager's tree ({what}): ask the manager for the current path keys"
            ),
            Error::UnknownGroup => write!(f, "unknown group: check the group id"),
            Error::WrongManager => write!(
                f,
                "signed by a manager that does not own this group: drop the message"
            ),
            Error::Refused(why) => write!(f, "refused: {why}"),
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
        Error::Core(e)
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

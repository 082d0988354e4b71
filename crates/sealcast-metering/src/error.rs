//! The one error type of `sealcast-metering`.

use core::fmt;

use sealcast_core::ids::EntityId;

/// Everything the metering state machines refuse.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The core refused something (ids, keys, envelopes, sizes).
    Core(sealcast_core::Error),
    /// A peer's message was refused (the local reason; never sent back).
    Refused(&'static str),
    /// A DAP's batch arrived before the headend accepted an announcement
    /// from that DAP (hold it, or ask the DAP to announce).
    NotAnnounced(EntityId),
    /// A state file's bytes are not a state this version wrote.
    State(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::Refused(why) => write!(f, "message refused: {why}"),
            Error::NotAnnounced(dap) => write!(f, "no announcement from DAP {dap} yet"),
            Error::State(why) => write!(f, "state file: {why}"),
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

/// Result alias of the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

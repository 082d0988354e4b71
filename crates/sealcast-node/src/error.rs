//! The one error type of `sealcast-node`.

use core::fmt;

/// Everything that can go wrong while running a node.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The core refused something (ids, keys, envelopes).
    Core(sealcast_core::Error),
    /// The group logic refused something.
    Group(sealcast_group::Error),
    /// The store failed.
    Store(sealcast_store::Error),
    /// The MQTT transport failed.
    Mqtt(sealcast_mqtt::Error),
    /// A runtime task ended or did not answer in time.
    Runtime(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::Group(e) => write!(f, "{e}"),
            Error::Store(e) => write!(f, "{e}"),
            Error::Mqtt(e) => write!(f, "MQTT: {e}"),
            Error::Runtime(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<sealcast_core::Error> for Error {
    fn from(e: sealcast_core::Error) -> Self {
        Error::Core(e)
    }
}
impl From<sealcast_group::Error> for Error {
    fn from(e: sealcast_group::Error) -> Self {
        Error::Group(e)
    }
}
impl From<sealcast_store::Error> for Error {
    fn from(e: sealcast_store::Error) -> Self {
        Error::Store(e)
    }
}
impl From<sealcast_mqtt::Error> for Error {
    fn from(e: sealcast_mqtt::Error) -> Self {
        Error::Mqtt(e)
    }
}

/// Result alias of the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

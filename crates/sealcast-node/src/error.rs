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
    /// A smart-metering state machine refused something.
    Metering(sealcast_metering::Error),
    /// The store failed.
    Store(sealcast_store::Error),
    /// A transport adapter failed. Each adapter (`link/mqtt.rs`,
    /// `link/coap.rs`) converts its own errors into this variant, so the
    /// runtimes and this enum name no transport and a new adapter adds none.
    Transport {
        /// Which transport (`"MQTT"`, `"CoAP"`).
        transport: &'static str,
        /// The adapter's error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A runtime task ended or did not answer in time.
    Runtime(String),
    /// The manager's control socket could not be set up (what to do is in
    /// the text).
    Control(String),
    /// The manager's transmission order stops what was asked (what was
    /// stopped and how to resume is in the text).
    Stopped(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::Group(e) => write!(f, "{e}"),
            Error::Metering(e) => write!(f, "{e}"),
            Error::Store(e) => write!(f, "{e}"),
            Error::Transport { transport, source } => write!(f, "{transport}: {source}"),
            Error::Runtime(why) => write!(f, "{why}"),
            Error::Control(why) => write!(f, "control socket: {why}"),
            Error::Stopped(why) => write!(f, "{why}"),
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
impl From<sealcast_metering::Error> for Error {
    fn from(e: sealcast_metering::Error) -> Self {
        Error::Metering(e)
    }
}
impl From<sealcast_store::Error> for Error {
    fn from(e: sealcast_store::Error) -> Self {
        Error::Store(e)
    }
}

/// Result alias of the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

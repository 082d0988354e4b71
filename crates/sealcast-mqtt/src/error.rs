//! The one error type of `sealcast-mqtt`.
//!
//! Variants carry the local reason for logs and operators. None carries key
//! bytes: this crate never holds any. Failures of opening a message belong to
//! `sealcast_core::Error` and reach the application through
//! [`crate::Delivery`], not through this type.

use core::fmt;

/// Everything that can go wrong in the MQTT adapter.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// A topic did not follow the sealcast topic scheme, or a topic or filter
    /// broke the MQTT rules (wildcards in a topic name, empty, too long …).
    InvalidTopic(&'static str),
    /// A configuration value was refused before anything was sent (bad URL,
    /// client id, keep-alive, sizes …).
    InvalidConfig(&'static str),
    /// The client has shut down (after [`crate::MqttClient::disconnect`],
    /// after giving up reconnecting, or because every handle was dropped).
    Closed,
    /// A bounded wait ran out.
    Timeout(&'static str),
    /// TLS could not be set up (a CA, certificate or key file).
    Tls(String),
    /// A bounded wait ran out while no connection to the broker could be
    /// made: the last connection error says why (refused, unresolvable…).
    Unreachable {
        /// What was waited for.
        waiting_for: &'static str,
        /// The last connection error.
        last_error: String,
    },
    /// The broker refused a subscription (SUBACK failure code).
    SubscriptionRefused(String),
    /// The embedded broker could not be started.
    Broker(String),
    /// An operating-system I/O error (sockets, threads).
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidTopic(why) => write!(f, "invalid topic: {why}"),
            Error::InvalidConfig(why) => write!(f, "invalid MQTT configuration: {why}"),
            Error::Closed => write!(f, "the MQTT client has shut down"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Error::Tls(why) => write!(f, "TLS to the MQTT broker: {why}"),
            Error::Unreachable {
                waiting_for,
                last_error,
            } => write!(
                f,
                "cannot reach the MQTT broker ({last_error}) while waiting for {waiting_for}; check the broker URL and that the broker runs"
            ),
            Error::SubscriptionRefused(filter) => {
                write!(f, "the broker refused the subscription to {filter}")
            }
            Error::Broker(why) => write!(f, "embedded broker: {why}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<sealcast_core::Error> for Error {
    /// The core errors this crate meets come from the target scheme
    /// (topic names and filters).
    fn from(e: sealcast_core::Error) -> Self {
        match e {
            sealcast_core::Error::InvalidTarget(why) => Error::InvalidTopic(why),
            _ => Error::InvalidTopic("not a valid sealcast topic"),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

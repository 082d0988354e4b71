//! The one error type of this crate.

use std::fmt;

use crate::message::ResponseCode;

/// Everything that can go wrong in the CoAP adapter.
///
/// The variants carry local detail for logs. None carries payload bytes or
/// key material (the adapter never holds keys). What a remote CoAP peer is
/// told is decided in one place, the server core, and is always a bare
/// response code without a diagnostic payload.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    Io(std::io::Error),
    /// A datagram is not a well-formed CoAP message (RFC 7252 §3), or one
    /// of its options has a malformed value.
    Malformed(&'static str),
    /// A message or body exceeds a configured bound.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The bound in bytes.
        limit: usize,
    },
    /// A configuration value is out of range or inconsistent.
    Config(&'static str),
    /// A confirmable message was sent `MAX_RETRANSMIT + 1` times without an
    /// acknowledgement (RFC 7252 §4.2), or a separate response did not come.
    Timeout,
    /// The peer rejected a message with a Reset (RFC 7252 §4.2).
    Reset,
    /// The peer answered with a response the exchange cannot use: a
    /// block-wise transfer out of order, an unrecognised critical option, or
    /// a block-wise error code.
    Protocol(&'static str),
    /// The peer answered with an error response code (4.xx or 5.xx) where a
    /// block-wise transfer needed success to go on.
    Status(ResponseCode),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::Malformed(what) => write!(f, "malformed CoAP message: {what}"),
            Self::TooLarge { what, limit } => write!(f, "{what} exceeds {limit} bytes"),
            Self::Config(what) => write!(f, "invalid configuration: {what}"),
            Self::Timeout => f.write_str("no acknowledgement or response in time"),
            Self::Reset => f.write_str("the peer reset the exchange"),
            Self::Protocol(what) => write!(f, "CoAP protocol error: {what}"),
            Self::Status(code) => write!(f, "the peer answered {code}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

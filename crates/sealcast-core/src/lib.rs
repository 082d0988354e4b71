//! # sealcast-core
//!
//! The sans-IO heart of sealcast: typed identifiers, credentials, RFC 8613
//! style key derivation, the COSE envelopes (broadcast, report, key delivery,
//! single message, integrity check value) and replay windows.
//!
//! Nothing in this crate opens a socket, reads a clock or asks the operating
//! system for randomness: time comes in as [`ids::UnixMillis`] and randomness
//! through a [`rand_core::CryptoRng`] the caller passes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod broadcast;
pub mod cbor;
pub mod cose;
pub mod credential;
pub mod crypto;
pub mod delivery;
pub mod error;
#[doc(hidden)]
#[cfg(any(test, feature = "test-support"))]
pub mod fuzzing;
pub mod groupkey;
pub mod ids;
pub mod kdf;
pub mod receive;
pub mod replay;
pub mod report;
pub mod single;
pub mod statement;
pub mod target;
#[doc(hidden)]
#[cfg(any(test, feature = "test-support"))]
pub mod testrng;

pub use error::{Error, PeerError, ReplayKind, Result};

//! # sealcast-group
//!
//! The sans-IO group logic of sealcast: membership, epochs and rekeying. The
//! [`lkh`] module holds the logical key hierarchy (RFC 2627) that turns an
//! eviction from a large group into one broadcast of about 2·log2(n)
//! wrapped keys.
//!
//! Nothing here opens a socket, reads a clock or asks the operating system
//! for randomness: randomness comes in as a [`rand_core::CryptoRng`] the
//! caller passes, and every message is returned as bytes for the caller to
//! sign, encrypt and send. [`admin`] holds the typed messages of the
//! manager's administration protocol (JSON lines), shared by its server and
//! the CLI client.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acp;
pub mod admin;
pub mod error;
pub mod lkh;
pub mod manager;
pub mod member;
pub mod messages;
pub mod state_file;
pub mod status;
pub mod token;
pub mod transmission;
pub mod tree_delivery;

pub use error::{Error, Result};

//! Smart metering without I/O: the state machines the meter, the Data
//! Aggregation Point (DAP) and the utility headend run, their wire formats
//! and the encodings of their state files. No sockets, clocks or OS
//! randomness: every time is a parameter, every byte string comes in and
//! goes out as a value. `sealcast-node` runs them as tokio tasks over the
//! transport-neutral link.
//!
//! - [`wire`]: the DAP's signed batches and announcements, the headend's
//!   signed request to announce (bounded decoders, labels);
//! - [`meter`]: [`meter::Meter`] seals readings for the headend (pairwise key
//!   from static-static X25519, then the meter's signature);
//! - [`dap`]: [`dap::DapCore`] verifies reports in batches without reading
//!   them, keeps a window per meter and seals the batches;
//! - [`headend`]: [`headend::HeadendCore`] checks the DAP once per batch and
//!   decrypts each report end to end;
//! - [`downlink`]: the headend's meter group, its configuration commands
//!   relayed by the DAPs, and the meters' confirmations;
//! - [`sa`]: the meter–headend security association: its epoch, refresh
//!   and removal;
//! - [`plausibility`]: rules decrypted readings must meet (range, rise per
//!   hour, monotonic counters, hours of the day).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dap;
pub mod downlink;
pub mod error;
pub mod headend;
pub mod meter;
pub mod plausibility;
pub mod sa;
pub mod wire;

pub use error::{Error, Result};

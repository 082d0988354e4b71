//! # sealcast-node
//!
//! The runtimes that wire sealcast's sans-IO core and group logic to real
//! transports and storage: the group manager (IN), the gateway agent (MN:
//! relay and group controller) and the device (ASN), over MQTT or CoAP
//! ([`link`], the one transport seam). Each runtime
//! is a tokio task that owns its protocol state; the clock and OS randomness
//! are read here, never in the protocol crates.
//!
//! Smart metering: [`meter`] sends readings, [`dap`] is the Data Aggregation
//! Point (batch verification without reading, announcement of its meter
//! group), [`headend`] checks the DAP and decrypts end to end (and, as the
//! meters' manager, orders them to stop or resume reporting:
//! [`meter_orders`]) — tokio shells
//! around the state machines and wire formats of `sealcast-metering`.
//!
//! The end-to-end demos that wire these runtimes together live in
//! `sealcast-demo`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod control;
pub mod dap;
pub mod device;
pub mod downlink;
pub mod error;
pub mod headend;
pub mod link;
pub mod manager;
pub mod meter;
pub mod meter_orders;
pub mod runtime;
pub mod status_store;
pub mod token_store;

pub use error::{Error, Result};

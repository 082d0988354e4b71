//! # sealcast-node
//!
//! The runtimes that wire sealcast's sans-IO core and group logic to real
//! transports and storage: the group manager (IN), the gateway agent (MN:
//! relay and group controller) and the device (ASN), over MQTT or CoAP
//! ([`link`], the one transport seam). Each runtime
//! is a tokio task that owns its protocol state; the clock and OS randomness
//! are read here, never in the protocol crates.
//!
//! [`demo::fire_safety`] runs the whole fire-safety deployment of the design
//! notes in one process over real sockets on loopback: an embedded MQTT
//! broker, a manager with its SQLite store and audit log, a gateway and the
//! devices — then the attacks.
//!
//! Smart metering: [`meter`] sends readings, [`dap`] is the Data Aggregation
//! Point (batch verification without reading, announcement of its meter
//! group), [`headend`] checks the DAP and decrypts end to end — tokio shells
//! around the state machines and wire formats of `sealcast-metering`.
//! [`smart_meter::smart_meter`] runs them all in one process.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cbor;
pub mod control;
pub mod dap;
pub mod demo;
pub mod device;
pub mod error;
pub mod headend;
pub mod link;
pub mod manager;
pub mod meter;
pub mod runtime;
pub mod smart_meter;

pub use error::{Error, Result};

//! The outside world the sans-IO core leaves to the command: the clock and
//! the operating system's random source — the same ones the services use
//! (`sealcast_node::runtime`), so every shell follows one rule for each.

use rand::rngs::StdRng;
use sealcast_core::ids::UnixMillis;

use crate::error::{CliError, Result};

/// The current wall-clock time (an error before 1970).
pub fn now() -> Result<UnixMillis> {
    sealcast_node::runtime::checked_now().map_err(|e| CliError::other(e.to_string()))
}

/// A cryptographic generator seeded from the operating system.
pub fn rng() -> Result<StdRng> {
    sealcast_node::runtime::os_rng().map_err(|e| CliError::other(e.to_string()))
}

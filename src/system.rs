//! The outside world the sans-IO core leaves to the command: the clock and
//! the operating system's random source.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::{StdRng, SysRng};
use sealcast_core::ids::UnixMillis;

use crate::error::{CliError, Result};

/// The current wall-clock time.
pub fn now() -> Result<UnixMillis> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CliError::other("the system clock is set before 1970; correct it"))?;
    let ms = u64::try_from(since.as_millis())
        .map_err(|_| CliError::other("the system clock is implausibly far in the future"))?;
    Ok(UnixMillis::new(ms))
}

/// A cryptographic generator seeded from the operating system. Seeding is
/// the only step that can fail, and it fails here, as an error, rather than
/// as a panic deep inside key generation.
pub fn rng() -> Result<StdRng> {
    StdRng::try_from_rng(&mut SysRng).map_err(|e| {
        CliError::other(format!(
            "the operating system's random source failed ({e}); try again"
        ))
    })
}

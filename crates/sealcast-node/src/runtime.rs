//! What the runtimes share: the clock, OS randomness, and the event stream
//! a supervisor (the demo, a log) watches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use sealcast_core::ids::{EntityId, Epoch, GroupId, UnixMillis};
use tokio::sync::mpsc;

/// The wall clock, read in this one place by every shell (the services, the
/// demos and the one-shot commands of the CLI). Refused, with what to do,
/// when it is set before 1970 or implausibly far in the future: the
/// commands call this, and the services call it once at start-up.
pub fn checked_now() -> crate::Result<UnixMillis> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|_| {
        crate::Error::Runtime("the system clock is set before 1970; correct it".into())
    })?;
    let ms = u64::try_from(since.as_millis()).map_err(|_| {
        crate::Error::Runtime("the system clock is implausibly far in the future".into())
    })?;
    Ok(UnixMillis::new(ms))
}

/// [`checked_now`] for a runtime that checked the clock when it started: a
/// clock set back before 1970 while it runs reads as the epoch (0), so
/// timestamp checks fail closed instead of the runtime stopping.
pub fn now() -> UnixMillis {
    checked_now().unwrap_or(UnixMillis::new(0))
}

/// A cryptographically secure generator seeded from the operating system,
/// the one source of OS randomness of the shells (the CLI's commands use it
/// too). Seeding is the only step that can fail, and it fails here, as an
/// error, rather than as a panic deep inside key generation.
pub fn os_rng() -> crate::Result<StdRng> {
    StdRng::try_from_rng(&mut rand::rngs::SysRng).map_err(|e| {
        crate::Error::Runtime(format!(
            "the operating system's random source failed ({e}); try again"
        ))
    })
}

/// Something a runtime did that a supervisor may want to see.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Key material of an epoch installed (and acknowledged).
    Installed {
        /// The group.
        group: GroupId,
        /// The epoch.
        epoch: Epoch,
    },
    /// The manager re-sent the epoch this entity holds already (the answer
    /// to a pull when nothing changed): its key material is current.
    Current {
        /// The group.
        group: GroupId,
        /// The epoch.
        epoch: Epoch,
    },
    /// A command or alert opened, verified and executed.
    Executed {
        /// The group it was sealed for.
        group: GroupId,
        /// Who signed it.
        signer: EntityId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A message on a group topic this entity is not a member of: it holds
    /// no key to open it.
    NotMember {
        /// The group of the topic.
        group: GroupId,
    },
    /// A message refused; the local reason.
    Rejected {
        /// The group of the topic.
        group: GroupId,
        /// Why (local detail, never sent to a peer).
        reason: String,
    },
    /// A delivery this entity relays or overhears but cannot open.
    CannotOpenDelivery {
        /// The device it was for.
        recipient: EntityId,
    },
    /// A transmission order from the manager applied (and acknowledged).
    OrderApplied {
        /// Its version.
        version: u64,
        /// What is stopped now (`-`: nothing).
        stopped: String,
    },
    /// A transmission order refused (forged, replayed, stale, for another
    /// node).
    OrderRefused {
        /// Why: `forged`, `other-node`, `stale`, `replay`, `conflict` or
        /// `malformed`.
        reason: &'static str,
    },
    /// A rule's command not sent: the manager stopped commands to the group.
    Suppressed {
        /// The group the command was for.
        group: GroupId,
    },
    /// The gateway issued a command after an alert.
    Issued {
        /// The group commanded.
        group: GroupId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Broadcasts of one group that had queued up were opened as one burst
    /// (one batch signature verification); each is also reported on its
    /// own as executed or refused.
    Burst {
        /// The group.
        group: GroupId,
        /// How many messages the burst took.
        size: usize,
    },
}

/// One event with its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// When, by the wall clock.
    pub at: UnixMillis,
    /// When, by this host's monotonic clock: what a supervisor times the
    /// runtimes by (the moment the runtime reported, not the later moment
    /// a busy supervisor got round to reading it).
    pub instant: std::time::Instant,
    /// Which entity.
    pub who: EntityId,
    /// What.
    pub kind: EventKind,
}

/// Takes the exclusive lock of a service's state file (held while the
/// service runs: one process owns it) and hands its content, if any, to
/// `restore`. No file: no lock, nothing restored (the demos).
pub fn lock_and_restore(
    file: Option<&sealcast_store::DeviceStateFile>,
    restore: impl FnOnce(&[u8]) -> crate::Result<()>,
) -> crate::Result<Option<sealcast_store::StateLock>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let lock = file.lock(crate::device::STATE_LOCK_WAIT)?;
    if let Some(bytes) = file.read()? {
        restore(&bytes)?;
    }
    Ok(Some(lock))
}

/// Lets one warning of a kind through per interval and counts the rest,
/// so that a flood of refused input costs a log line every few seconds,
/// not one per message.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// At most one warning per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this warning should be logged, `n` being how many
    /// were held back since the last one logged; `None` to stay quiet.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The interval of the rate-limited warnings about refused input.
pub const REFUSED_WARN_EVERY: Duration = Duration::from_secs(5);

/// Where runtimes report events.
pub type EventSink = mpsc::UnboundedSender<Event>;

/// Reports an event (a closed sink is not an error: nobody is watching).
pub fn report(sink: &EventSink, who: &EntityId, kind: EventKind) {
    let _ = sink.send(Event {
        at: now(),
        instant: std::time::Instant::now(),
        who: who.clone(),
        kind,
    });
}

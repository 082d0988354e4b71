//! Fault injection for tests: a hook that silently drops datagrams, so
//! retransmission and deduplication can be shown to work on a loopback
//! link that never loses anything by itself. Installing one
//! (`with_fault_injection`) and [`DropFirst`] exist only with the
//! `test-support` feature; production builds carry the empty hook alone.

use std::fmt;
use std::sync::Arc;
#[cfg(any(test, feature = "test-support"))]
use std::sync::atomic::{AtomicU64, Ordering};

/// Which way a datagram travels, seen from the endpoint holding the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// About to be sent.
    Outgoing,
    /// Just received.
    Incoming,
}

/// Decides whether a datagram is dropped. Installed with
/// `with_fault_injection` on a client, server or multicast endpoint.
pub trait DatagramFilter: Send + Sync + fmt::Debug {
    /// True to drop `datagram` silently.
    fn drop_datagram(&self, direction: Direction, datagram: &[u8]) -> bool;
}

/// Drops the first `n` datagrams travelling in one direction, then lets
/// everything through. Test support (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug)]
pub struct DropFirst {
    direction: Direction,
    remaining: AtomicU64,
    dropped: AtomicU64,
}

#[cfg(any(test, feature = "test-support"))]
impl DropFirst {
    /// A filter dropping the first `n` datagrams in `direction`.
    pub fn new(direction: Direction, n: u64) -> Arc<Self> {
        Arc::new(Self {
            direction,
            remaining: AtomicU64::new(n),
            dropped: AtomicU64::new(0),
        })
    }

    /// How many datagrams it dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

#[cfg(any(test, feature = "test-support"))]
impl DatagramFilter for DropFirst {
    fn drop_datagram(&self, direction: Direction, _datagram: &[u8]) -> bool {
        if direction != self.direction {
            return false;
        }
        let took = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .is_ok();
        if took {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        took
    }
}

/// An optional shared filter.
pub(crate) type Fault = Option<Arc<dyn DatagramFilter>>;

pub(crate) fn dropped(fault: &Fault, direction: Direction, datagram: &[u8]) -> bool {
    fault
        .as_ref()
        .is_some_and(|f| f.drop_datagram(direction, datagram))
}

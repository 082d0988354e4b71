//! State that must survive between invocations: the sender's sequence
//! numbers (`seal --seq-state`) and the receiver's replay windows
//! (`open --replay-state`). Both files belong to one group and are written
//! atomically (mode 0600) before the command produces its output.

use std::path::Path;

use sealcast_core::ids::{Epoch, GroupId, SenderId, SeqNum};
use sealcast_core::replay::{SeqAllocator, SeqWindow};
use sealcast_group::state_file::{ReplayState, SeqState};
use sealcast_store::lock::SHORT_WAIT;
use sealcast_store::{DeviceStateFile, StateLock};

use crate::error::{CliError, Result};
use crate::text::{hex, show_id};

// ---------------------------------------------------------------------------
// Sender side

/// How far ahead a sequence reservation reaches.
pub const SEQ_BLOCK: u64 = 100;
/// Takes the exclusive lock of a `--seq-state` or `--replay-state` file
/// (`<file>.lock`), waiting for another `seal`/`open` of the same file to
/// finish. Held from before the file is read until after it was replaced,
/// so concurrent commands never hand out one sequence number twice nor
/// accept one message twice.
pub fn lock(path: &Path) -> Result<StateLock> {
    DeviceStateFile::new(path)
        .lock(SHORT_WAIT)
        .map_err(|e| CliError::other(e.to_string()))
}

/// The file's content, or `None` when it does not exist (the state file
/// module of the services: one reader, one atomic 0600 writer).
fn read(path: &Path) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    DeviceStateFile::new(path)
        .read()
        .map_err(|e| CliError::other(e.to_string()))
}

/// Replaces the file's content atomically (fsynced, mode 0600).
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    DeviceStateFile::new(path)
        .write(bytes)
        .map_err(|e| CliError::other(e.to_string()))
}

/// Hands out the next sequence number of `sender` in (`group`, `epoch`),
/// persisting the state file (fsynced) before the number is returned, so a
/// number is never used twice, even across crashes.
///
/// Numbers follow each other without gaps from one invocation to the next;
/// the reservation, renewed every [`SEQ_BLOCK`] / 2 numbers, is the bound
/// that [`SeqAllocator`] enforces. A file of an older epoch starts over at
/// 0 (new epoch, new keys, new nonces).
pub fn allocate_seq(
    path: &Path,
    group: &GroupId,
    epoch: Epoch,
    sender: &SenderId,
) -> Result<SeqNum> {
    // Read, reserve and write under one lock: two sealers of one file never
    // see the same `next`.
    let _lock = lock(path)?;
    let bad = |why: sealcast_group::Error| {
        CliError::other(format!(
            "{} is not a usable sequence state file ({why}); restore it or pass a new file",
            path.display()
        ))
    };
    let stored = match read(path)? {
        Some(bytes) => Some(SeqState::decode(&bytes).map_err(bad)?),
        None => None,
    };
    let (next, reserved) = match stored {
        None => (0, 0),
        Some(s) => {
            if s.group != *group || s.sender != *sender {
                return Err(CliError::other(format!(
                    "{} belongs to group {} sender id {}, not group {} sender id {}; use one --seq-state file per group and signer",
                    path.display(),
                    show_id(s.group.as_bytes()),
                    hex(s.sender.as_bytes()),
                    show_id(group.as_bytes()),
                    hex(sender.as_bytes()),
                )));
            }
            if s.epoch > epoch {
                return Err(CliError::other(format!(
                    "{} is for epoch {}, newer than the group key's epoch {epoch}; use the current group key material",
                    path.display(),
                    s.epoch
                )));
            }
            if s.epoch < epoch {
                (0, 0)
            } else {
                (s.next, s.reserved)
            }
        }
    };
    let core_err = |e| {
        CliError::core_hint(
            format!("cannot allocate a sequence number from {}", path.display()),
            e,
            "create a new epoch with 'sealcast group create'",
        )
    };
    let mut alloc = SeqAllocator::resume(next, SEQ_BLOCK).map_err(core_err)?;
    if reserved > next {
        alloc.confirm_reservation(reserved).map_err(core_err)?;
    }
    let seq = alloc
        .peek_next()
        .ok_or(sealcast_core::Error::SequenceExhausted)
        .map_err(core_err)?;
    let new_limit = alloc.reservation_request();
    let state = SeqState {
        group: group.clone(),
        epoch,
        sender: sender.clone(),
        next: seq.get() + 1,
        reserved: new_limit.unwrap_or(reserved),
    };
    write(path, state.encode().as_bytes())?;
    if let Some(limit) = new_limit {
        alloc.confirm_reservation(limit).map_err(core_err)?;
    }
    let handed = alloc.next().map_err(core_err)?;
    if handed != seq {
        return Err(CliError::other(
            "internal error: sequence allocation disagreed with its state file",
        ));
    }
    Ok(seq)
}

// ---------------------------------------------------------------------------
// Receiver side

/// Loads the windows saved in a `--replay-state` file for (`group`,
/// `epoch`). A missing file, or one of an older epoch, gives no windows.
pub fn load_replay(
    path: &Path,
    group: &GroupId,
    epoch: Epoch,
) -> Result<Vec<(SenderId, SeqWindow)>> {
    let Some(bytes) = read(path)? else {
        return Ok(Vec::new());
    };
    let ReplayState {
        group: g,
        epoch: e,
        windows,
    } = ReplayState::decode(&bytes).map_err(|why| {
        CliError::other(format!(
            "{} is not a usable replay state file ({why}); restore it or pass a new file",
            path.display()
        ))
    })?;
    if g != *group {
        return Err(CliError::other(format!(
            "{} belongs to group {}, not {}; use one --replay-state file per group",
            path.display(),
            show_id(g.as_bytes()),
            show_id(group.as_bytes())
        )));
    }
    if e > epoch {
        return Err(CliError::other(format!(
            "{} is for epoch {e}, newer than the group key's epoch {epoch}; use the current group key material",
            path.display()
        )));
    }
    Ok(if e < epoch { Vec::new() } else { windows })
}

/// Saves `windows` for (`group`, `epoch`), atomically and fsynced.
pub fn save_replay<'a>(
    path: &Path,
    group: &GroupId,
    epoch: Epoch,
    windows: impl Iterator<Item = (&'a SenderId, &'a SeqWindow)>,
) -> Result<()> {
    let bytes = ReplayState::encode(group, epoch, windows)
        .map_err(|e| CliError::other(format!("cannot encode the replay state: {e}")))?;
    write(path, &bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ids() -> (GroupId, SenderId) {
        (GroupId::new(b"g").unwrap(), SenderId::new([1]).unwrap())
    }

    #[test]
    fn seq_numbers_never_repeat_and_have_no_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.seq");
        let (g, s) = ids();
        let got: Vec<u64> = (0..120)
            .map(|_| allocate_seq(&p, &g, Epoch::new(1), &s).unwrap().get())
            .collect();
        assert_eq!(got, (0..120).collect::<Vec<_>>());
        // A new epoch starts over; an older one is refused.
        assert_eq!(allocate_seq(&p, &g, Epoch::new(2), &s).unwrap().get(), 0);
        assert!(allocate_seq(&p, &g, Epoch::new(1), &s).is_err());
        // Another group or sender is refused.
        let other = GroupId::new(b"h").unwrap();
        assert!(allocate_seq(&p, &other, Epoch::new(2), &s).is_err());
        assert!(allocate_seq(&p, &g, Epoch::new(2), &SenderId::new([2]).unwrap()).is_err());
    }

    #[test]
    fn replay_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.replay");
        let (g, s) = ids();
        assert!(load_replay(&p, &g, Epoch::new(1)).unwrap().is_empty());
        let mut w = SeqWindow::new();
        let t = w.check(SeqNum::new(9).unwrap()).unwrap();
        w.commit(t).unwrap();
        save_replay(&p, &g, Epoch::new(1), [(&s, &w)].into_iter()).unwrap();
        let back = load_replay(&p, &g, Epoch::new(1)).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back[0].1.check(SeqNum::new(9).unwrap()).is_err());
        assert!(load_replay(&p, &g, Epoch::new(2)).unwrap().is_empty());
        assert!(load_replay(&p, &g, Epoch::new(0)).is_err());
        assert!(load_replay(&p, &GroupId::new(b"x").unwrap(), Epoch::new(1)).is_err());
        std::fs::write(&p, b"\x80").unwrap();
        assert!(load_replay(&p, &g, Epoch::new(1)).is_err());
    }
}

//! State that must survive between invocations: the sender's sequence
//! numbers (`seal --seq-state`) and the receiver's replay windows
//! (`open --replay-state`). Both files belong to one group and are written
//! atomically (mode 0600) before the command produces its output.

use std::path::Path;

use ciborium::Value;
use sealcast_core::groupkey::MAX_SIGNERS;
use sealcast_core::ids::{Epoch, GroupId, SenderId, SeqNum};
use sealcast_core::replay::{SeqAllocator, SeqWindow};

use sealcast_store::StateLock;
use sealcast_store::lock::SHORT_WAIT;

use crate::error::{CliError, Result};
use crate::files::{self, Overwrite, PRIVATE_MODE};
use crate::text::{hex, parse_hex, show_id};

// ---------------------------------------------------------------------------
// Sender side

/// How far ahead a sequence reservation reaches.
pub const SEQ_BLOCK: u64 = 100;
/// Largest sequence state file accepted.
const MAX_SEQ_STATE_LEN: usize = 4096;
const SEQ_HEADER: &str = "# sealcast sequence state v1: one sealer per file, do not edit";

/// The content of a `--seq-state` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeqState {
    group: GroupId,
    epoch: Epoch,
    sender: SenderId,
    /// The next number to use.
    next: u64,
    /// The exclusive limit of the stored reservation.
    reserved: u64,
}

impl SeqState {
    fn render(&self) -> String {
        format!(
            "{SEQ_HEADER}\ngroup={}\nepoch={}\nsender={}\nnext={}\nreserved={}\n",
            hex(self.group.as_bytes()),
            self.epoch,
            hex(self.sender.as_bytes()),
            self.next,
            self.reserved
        )
    }

    fn parse(bytes: &[u8]) -> core::result::Result<Self, String> {
        let text = core::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
        let mut lines = text.lines();
        if lines.next() != Some(SEQ_HEADER) {
            return Err("missing the sealcast header line".into());
        }
        let mut fields: [Option<&str>; 5] = [None; 5];
        const KEYS: [&str; 5] = ["group", "epoch", "sender", "next", "reserved"];
        for line in lines.filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line without '=': {line:?}"))?;
            let i = KEYS
                .iter()
                .position(|key| *key == k)
                .ok_or_else(|| format!("unknown field {k:?}"))?;
            if fields[i].replace(v).is_some() {
                return Err(format!("field {k} appears twice"));
            }
        }
        let get = |i: usize| fields[i].ok_or_else(|| format!("field {} missing", KEYS[i]));
        let num = |i: usize| -> core::result::Result<u64, String> {
            get(i)?
                .parse::<u64>()
                .map_err(|_| format!("field {} is not a number", KEYS[i]))
        };
        let group = GroupId::new(parse_hex(get(0)?)?).map_err(|e| e.to_string())?;
        let epoch =
            Epoch::new(u32::try_from(num(1)?).map_err(|_| "epoch out of range".to_owned())?);
        let sender = SenderId::new(parse_hex(get(2)?)?).map_err(|e| e.to_string())?;
        let (next, reserved) = (num(3)?, num(4)?);
        if next > reserved {
            return Err("next lies beyond the reservation".into());
        }
        Ok(Self {
            group,
            epoch,
            sender,
            next,
            reserved,
        })
    }
}

/// Takes the exclusive lock of a `--seq-state` or `--replay-state` file
/// (`<file>.lock`), waiting for another `seal`/`open` of the same file to
/// finish. Held from before the file is read until after it was replaced,
/// so concurrent commands never hand out one sequence number twice nor
/// accept one message twice.
pub fn lock(path: &Path) -> Result<StateLock> {
    StateLock::acquire(&StateLock::path_for_file(path), path, SHORT_WAIT)
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
    let bad = |why: String| {
        CliError::other(format!(
            "{} is not a usable sequence state file ({why}); restore it or pass a new file",
            path.display()
        ))
    };
    let stored = match std::fs::symlink_metadata(path) {
        Ok(_) => {
            let bytes = files::read_limited(Some(path), MAX_SEQ_STATE_LEN, "sequence state")?;
            Some(SeqState::parse(&bytes).map_err(bad)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CliError::io("read", path, e)),
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
    files::write_atomic(
        path,
        state.render().as_bytes(),
        PRIVATE_MODE,
        Overwrite::Replace,
    )?;
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

const REPLAY_LABEL: &str = "sealcast replay state v1";
/// Largest replay state file accepted: every authorized signer's largest
/// window, with room for the framing.
const MAX_REPLAY_STATE_LEN: usize = 256 + MAX_SIGNERS * (SeqWindow::MAX_ENCODED_LEN + 16);

/// Loads the windows saved in a `--replay-state` file for (`group`,
/// `epoch`). A missing file, or one of an older epoch, gives no windows.
pub fn load_replay(
    path: &Path,
    group: &GroupId,
    epoch: Epoch,
) -> Result<Vec<(SenderId, SeqWindow)>> {
    let bytes = match std::fs::symlink_metadata(path) {
        Ok(_) => files::read_limited(Some(path), MAX_REPLAY_STATE_LEN, "replay state")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CliError::io("read", path, e)),
    };
    let (g, e, windows) = parse_replay(&bytes).map_err(|why| {
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

type ParsedReplay = (GroupId, Epoch, Vec<(SenderId, SeqWindow)>);

fn parse_replay(bytes: &[u8]) -> core::result::Result<ParsedReplay, String> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 8)
        .map_err(|_| "not CBOR".to_owned())?;
    if !reader.is_empty() {
        return Err("trailing bytes".into());
    }
    let Value::Array(items) = value else {
        return Err("not an array".into());
    };
    let [
        Value::Text(label),
        Value::Bytes(g),
        Value::Integer(e),
        Value::Array(list),
    ] = items.as_slice()
    else {
        return Err("wrong layout".into());
    };
    if label != REPLAY_LABEL {
        return Err("unknown format label".into());
    }
    let group = GroupId::new(g).map_err(|e| e.to_string())?;
    let epoch = Epoch::new(u32::try_from(*e).map_err(|_| "epoch out of range".to_owned())?);
    if list.len() > MAX_SIGNERS {
        return Err("too many senders".into());
    }
    let mut windows: Vec<(SenderId, SeqWindow)> = Vec::with_capacity(list.len());
    for item in list {
        let Value::Array(pair) = item else {
            return Err("sender entry is not an array".into());
        };
        let [Value::Bytes(sid), Value::Bytes(w)] = pair.as_slice() else {
            return Err("sender entry has the wrong layout".into());
        };
        let sid = SenderId::new(sid).map_err(|e| e.to_string())?;
        if windows.iter().any(|(s, _)| *s == sid) {
            return Err("a sender appears twice".into());
        }
        let window = SeqWindow::from_bytes(w).map_err(|e| e.to_string())?;
        windows.push((sid, window));
    }
    Ok((group, epoch, windows))
}

/// Saves `windows` for (`group`, `epoch`), atomically and fsynced.
pub fn save_replay<'a>(
    path: &Path,
    group: &GroupId,
    epoch: Epoch,
    windows: impl Iterator<Item = (&'a SenderId, &'a SeqWindow)>,
) -> Result<()> {
    let mut list: Vec<(&SenderId, &SeqWindow)> = windows.collect();
    list.sort_by(|a, b| a.0.cmp(b.0));
    let value = Value::Array(vec![
        Value::Text(REPLAY_LABEL.into()),
        Value::Bytes(group.as_bytes().to_vec()),
        Value::from(epoch.get()),
        Value::Array(
            list.into_iter()
                .map(|(s, w)| {
                    Value::Array(vec![
                        Value::Bytes(s.as_bytes().to_vec()),
                        Value::Bytes(w.to_bytes()),
                    ])
                })
                .collect(),
        ),
    ]);
    let mut bytes = Vec::new();
    ciborium::into_writer(&value, &mut bytes)
        .map_err(|_| CliError::other("cannot encode the replay state"))?;
    files::write_atomic(path, &bytes, PRIVATE_MODE, Overwrite::Replace)
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
    fn seq_state_parsing_is_strict() {
        let (g, s) = ids();
        let st = SeqState {
            group: g,
            epoch: Epoch::new(3),
            sender: s,
            next: 5,
            reserved: 100,
        };
        assert_eq!(SeqState::parse(st.render().as_bytes()).unwrap(), st);
        let text = st.render();
        assert!(SeqState::parse(text.replace("next=5", "next=101").as_bytes()).is_err());
        assert!(SeqState::parse(format!("{text}next=1\n").as_bytes()).is_err());
        assert!(SeqState::parse(text.replace("epoch=3\n", "").as_bytes()).is_err());
        assert!(SeqState::parse(b"\xff").is_err());
        assert!(SeqState::parse(b"").is_err());
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

//! Exclusive advisory locks between processes.
//!
//! A state file (sequence reservations, replay windows) is replaced
//! atomically by rename, so the lock cannot live on the state file itself:
//! a second process would lock the old inode while the first renames a new
//! one into place. The lock is taken on a companion file that is never
//! replaced nor deleted (`<state file>.lock`, or `<dir>/<name>.lock` for a
//! directory), with `flock(2)` through [`std::fs::File::try_lock`]. The
//! kernel drops it when its holder exits, however it exits (SIGKILL
//! included), so a crash never leaves a stale lock. The holder writes its
//! pid into the file so that the one refused can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a one-shot command waits for a lock held by another short
/// command (a `seal` or `open` next to it) before it gives up.
pub const SHORT_WAIT: Duration = Duration::from_secs(10);

/// How often a waiting process tries the lock again.
const RETRY: Duration = Duration::from_millis(5);

/// An exclusive lock held until it is dropped (or the process exits).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    /// The lock file that guards `state` (a file or a directory):
    /// `<state>.lock` beside a file, `<state>/<name>` inside a directory.
    pub fn path_for_file(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock at `lock_path` (created 0600 if missing), trying again
    /// until `wait` has passed. `guarded` names what the lock protects, for
    /// the error a refused caller sees: [`Error::Locked`] with the holder's
    /// pid when it is known.
    pub fn acquire(lock_path: &Path, guarded: &Path, wait: Duration) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path)
            .map_err(|e| Error::io("open lock file", lock_path, e))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Locked {
                            path: guarded.to_path_buf(),
                            holder: wait_for_holder_pid(&file),
                        });
                    }
                    std::thread::sleep(RETRY);
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io("lock", lock_path, e));
                }
            }
        }
        let mut lock = StateLock {
            file,
            path: lock_path.to_path_buf(),
        };
        lock.write_pid()?;
        Ok(lock)
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_pid(&mut self) -> Result<()> {
        let pid = format!("{}\n", std::process::id());
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io("write lock file", &self.path, e))
    }
}

/// The holder writes its pid right after it took the lock: give it a moment
/// so the refusal can name it.
fn wait_for_holder_pid(file: &File) -> Option<u32> {
    for _ in 0..50 {
        if let Some(pid) = holder_pid(file) {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    None
}

/// The pid a lock file's holder wrote (None while it is being written, or
/// when the file holds something else).
fn holder_pid(file: &File) -> Option<u32> {
    let mut text = String::new();
    let mut reader = file;
    reader.rewind().ok()?;
    reader.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.cbor");
        let lock_path = StateLock::path_for_file(&state);
        let first = StateLock::acquire(&lock_path, &state, Duration::ZERO).unwrap();
        // flock is per open file description: a second open in this process
        // conflicts just as another process would.
        let err = StateLock::acquire(&lock_path, &state, Duration::from_millis(30)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("state.cbor"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        let again = StateLock::acquire(&lock_path, &state, Duration::ZERO).unwrap();
        assert_eq!(again.path(), lock_path);
    }
}

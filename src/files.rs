//! File input and output.
//!
//! Reads are bounded: a file larger than its limit is refused before it is
//! parsed. Writes are atomic: the bytes go to a temporary file in the same
//! directory (created with its final mode), are fsynced, and the temporary
//! file is then renamed (or hard-linked, when an existing file must not be
//! replaced) into place, after which the directory is fsynced. A reader thus
//! sees either the old file or the complete new one, and a private file is
//! never readable by others, not even for a moment.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{CliError, Result};

/// The file name that stands for standard input or output.
pub const STDIO: &str = "-";

/// Mode of files that hold secrets or private state.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of files meant to be handed out.
pub const PUBLIC_MODE: u32 = 0o644;

/// Whether an existing file may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail if the file exists (the `--force` flag switches to `Replace`).
    Refuse,
    /// Replace it atomically.
    Replace,
}

impl Overwrite {
    /// `Replace` when `force` is set.
    pub fn from_force(force: bool) -> Self {
        if force {
            Overwrite::Replace
        } else {
            Overwrite::Refuse
        }
    }
}

/// True when `path` means standard input / output.
pub fn is_stdio(path: Option<&Path>) -> bool {
    path.is_none_or(|p| p.as_os_str() == STDIO)
}

/// Reads a whole file (or standard input for `-`), refusing more than
/// `limit` bytes. `what` names the content in errors.
pub fn read_limited(path: Option<&Path>, limit: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_into(path, limit, what, &mut buf)?;
    Ok(buf)
}

/// Like [`read_limited`] for files that hold secrets: the buffer is sized
/// up front (so no reallocation leaves an unwiped copy) and wiped on drop.
pub fn read_secret(path: &Path, limit: usize, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(limit.saturating_add(1)));
    read_into(Some(path), limit, what, &mut buf)?;
    Ok(buf)
}

fn read_into(path: Option<&Path>, limit: usize, what: &str, buf: &mut Vec<u8>) -> Result<()> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let shown: PathBuf;
    let result = match path {
        Some(p) if p.as_os_str() != STDIO => {
            shown = p.to_path_buf();
            let file = File::open(p).map_err(|e| CliError::io("read", p, e))?;
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(CliError::other(format!(
                    "{} is a directory; pass the {what} file",
                    p.display()
                )));
            }
            file.take(cap).read_to_end(buf)
        }
        _ => {
            shown = PathBuf::from("standard input");
            io::stdin().lock().take(cap).read_to_end(buf)
        }
    };
    result.map_err(|e| CliError::io("read", &shown, e))?;
    if buf.len() > limit {
        return Err(CliError::other(format!(
            "{} is larger than {limit} bytes, the limit for a {what}; is it the right file?",
            shown.display()
        )));
    }
    Ok(())
}

/// Fails early, before anything is written, if `path` exists and may not be
/// replaced.
pub fn check_absent(path: &Path, overwrite: Overwrite) -> Result<()> {
    if overwrite == Overwrite::Refuse && fs::symlink_metadata(path).is_ok() {
        return Err(CliError::other(format!(
            "{} already exists; pass --force to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with file mode `mode` — the store's
/// one atomic write (temporary file, fsync, rename or hard link, fsync of
/// the directory). With [`Overwrite::Refuse`] an existing `path`, or one
/// created meanwhile by someone else, is never replaced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, overwrite: Overwrite) -> Result<()> {
    let failed =
        |e: sealcast_store::Error| CliError::other(format!("cannot write {}: {e}", path.display()));
    match overwrite {
        Overwrite::Replace => sealcast_store::write_atomic(path, bytes, mode).map_err(failed),
        Overwrite::Refuse => {
            check_absent(path, overwrite)?;
            if sealcast_store::statefile::write_new(path, bytes, mode).map_err(failed)? {
                Ok(())
            } else {
                // Created since the check: not clobbered.
                check_absent(path, overwrite)
            }
        }
    }
}

/// Where a command's main output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Binary COSE: refused on a terminal.
    Binary,
    /// Bytes a person may want to see (an opened payload).
    Payload,
}

/// Writes a command's output to `path` (atomically, mode `mode`, replacing
/// an existing file) or to standard output for `-` / no path.
pub fn write_output(path: Option<&Path>, bytes: &[u8], kind: OutputKind, mode: u32) -> Result<()> {
    match path {
        Some(p) if !is_stdio(Some(p)) => write_atomic(p, bytes, mode, Overwrite::Replace),
        _ => {
            let mut out = io::stdout().lock();
            if kind == OutputKind::Binary && out.is_terminal() {
                return Err(CliError::usage(
                    "refusing to write binary COSE to a terminal; pass --out FILE or redirect standard output",
                ));
            }
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(|e| CliError::io("write", Path::new("standard output"), e))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_and_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.key");
        write_atomic(&p, b"one", PRIVATE_MODE, Overwrite::Refuse).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_atomic(&p, b"two", PRIVATE_MODE, Overwrite::Refuse).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two", PRIVATE_MODE, Overwrite::Replace).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, vec![0u8; 11]).unwrap();
        assert!(read_limited(Some(&p), 10, "thing").is_err());
        assert_eq!(read_limited(Some(&p), 11, "thing").unwrap().len(), 11);
        assert!(read_secret(&p, 10, "key").is_err());
        assert!(read_limited(Some(dir.path()), 10, "thing").is_err());
    }
}

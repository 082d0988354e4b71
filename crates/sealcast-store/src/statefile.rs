//! Atomic, private files for device state.
//!
//! [`write_atomic`] never leaves a half-written file under the final name: it
//! writes a temporary file in the same directory (created with the requested
//! mode, 0600 for state), fsyncs it, renames it over the target and fsyncs
//! the directory so the rename itself survives a power cut. After a crash the
//! target holds either the old or the new content; at worst a temporary file
//! `.NAME.tmp.*` is left beside it, which readers ignore and
//! [`DeviceStateFile::remove_stale_temps`] deletes.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Largest state file [`DeviceStateFile::read`] accepts (16 MiB): the file
/// is input like any other and may have been replaced by something hostile.
pub const MAX_STATE_FILE_LEN: u64 = 16 << 20;

const TEMP_MARK: &str = ".tmp.";

/// Writes `bytes` to `path` atomically with permission bits `mode`.
///
/// Steps: create `.NAME.tmp.<random>` in the same directory (exclusive,
/// `mode`), write, fsync, rename over `path`, fsync the directory. On any
/// error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (dir, tmp) = write_temp(path, bytes, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename temporary file over", path, e));
    }
    sync_dir(&dir)
}

/// Writes `bytes` to a NEW file `path` with permission bits `mode`: the
/// content is written and fsynced under a temporary name, then hard-linked
/// to `path`, which fails if `path` exists — so of two processes creating
/// the same file at once exactly one wins, and nobody ever sees it
/// half-written. Returns `false` (and changes nothing) if `path` existed.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    let (dir, tmp) = write_temp(path, bytes, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(Error::io("link new file", path, e)),
    }
    sync_dir(&dir)?;
    Ok(true)
}

/// Writes `bytes` to `.NAME.tmp.<random>` beside `path` (exclusive, exactly
/// `mode`) and fsyncs it. Returns the directory and the temporary file,
/// which the caller renames or links into place; on an error it is removed.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<(PathBuf, PathBuf)> {
    let (dir, name) = split(path)?;
    let mut suffix = [0u8; 8];
    crate::kek::os_random(&mut suffix)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(TEMP_MARK);
    tmp_name.push(hex(&suffix));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create temporary file", &tmp, e))?;
        // The umask may have taken bits away; set exactly what was asked.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions of", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io("write temporary file", &tmp, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync temporary file", &tmp, e))
    })();
    match result {
        Ok(()) => Ok((dir, tmp)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("{} does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| Error::io("fsync directory", dir, e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One device state file (credentials, installed epochs, replay windows,
/// sequence reservations — the content is the caller's). Written atomically
/// with mode 0600; read back whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStateFile {
    path: PathBuf,
}

impl DeviceStateFile {
    /// Permission bits of every state file written.
    pub const MODE: u32 = 0o600;

    /// A state file at `path` (nothing is touched yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the exclusive lock that every process reading-modifying-writing
    /// this file must hold (`<file>.lock`, see [`crate::lock`]): a running
    /// service holds it for its lifetime, a one-shot command for its run.
    /// Waits up to `wait` for another holder, then refuses with
    /// [`Error::Locked`] naming this file.
    pub fn lock(&self, wait: std::time::Duration) -> Result<crate::lock::StateLock> {
        crate::lock::StateLock::acquire(
            &crate::lock::StateLock::path_for_file(&self.path),
            &self.path,
            wait,
        )
    }

    /// Replaces the content atomically (see [`write_atomic`]).
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path, bytes, Self::MODE)
    }

    /// The content, or `None` when the file does not exist. Refuses files
    /// larger than [`MAX_STATE_FILE_LEN`]. The buffer is zeroized on drop,
    /// since state often holds secrets.
    pub fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open state file", &self.path, e)),
        };
        let mut buf = Zeroizing::new(Vec::new());
        file.take(MAX_STATE_FILE_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("read state file", &self.path, e))?;
        if buf.len() as u64 > MAX_STATE_FILE_LEN {
            return Err(Error::InvalidArgument(format!(
                "state file {} is larger than {MAX_STATE_FILE_LEN} bytes; it is not a sealcast state file",
                self.path.display()
            )));
        }
        Ok(Some(buf))
    }

    /// Removes the file (no error if it is absent).
    pub fn remove(&self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("remove state file", &self.path, e)),
        }
        let (dir, _) = split(&self.path)?;
        sync_dir(&dir)
    }

    /// Deletes temporary files a crashed [`write`](Self::write) left beside
    /// this file; returns how many. Call it once at start-up, while no other
    /// writer of this file runs.
    pub fn remove_stale_temps(&self) -> Result<usize> {
        let (dir, name) = split(&self.path)?;
        let mut prefix = OsString::from(".");
        prefix.push(&name);
        prefix.push(TEMP_MARK);
        let prefix = prefix.to_string_lossy().into_owned();
        let mut removed = 0;
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("list directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list directory", &dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io("remove temporary file", &p, e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&dir)?;
        }
        Ok(removed)
    }
}

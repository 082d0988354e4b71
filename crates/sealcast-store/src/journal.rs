//! A state file with an append-only journal beside it.
//!
//! A service whose state is large but changes a little at a time (a DAP's
//! replay window per meter: 10 000 meters, 64 of them moved per batch)
//! should not rewrite the whole file after every change. A
//! [`JournaledStateFile`] keeps the whole state in the snapshot file
//! (written atomically, as [`DeviceStateFile::write`] writes it) and each
//! change since as one record appended to `<file>.journal` and fsynced
//! ([`JournaledStateFile::append`]); when the journal has grown past twice
//! the snapshot (or [`MIN_COMPACT_LEN`]), the caller writes the whole state
//! again ([`JournaledStateFile::replace`]), which starts a new journal.
//!
//! **Format.** The journal starts with the 8 bytes `SCJRNL01` and the first
//! 16 bytes of the SHA-256 of the snapshot it follows; each record is its
//! length (u32, little-endian), the first 8 bytes of its SHA-256, then the
//! record. The records' content is the caller's.
//!
//! **Crashes.** A record counts once its fsync returned; the caller
//! acknowledges nothing before. [`JournaledStateFile::load`] returns the
//! snapshot and the records that follow it:
//! * a record cut short or with a wrong digest *at the end* is a write a
//!   crash interrupted (never acknowledged): dropped, and the file cut back
//!   before the next append;
//! * a damaged record with more after it is not a crash: refused
//!   ([`Error::InvalidArgument`]), since dropping it could forget changes
//!   that were acknowledged;
//! * a journal whose header names another snapshot is one a crash left
//!   behind between writing a new snapshot and starting its journal (the
//!   snapshot holds all of it): ignored, and replaced at the next write.
//!
//! Files are 0600; both are read and written under the snapshot's lock
//! ([`DeviceStateFile::lock`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::statefile::{DeviceStateFile, MAX_STATE_FILE_LEN, write_atomic};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"SCJRNL01";
const HEADER_LEN: usize = 8 + 16;
const RECORD_HEAD_LEN: usize = 4 + 8;

/// A journal shorter than this is never compacted, whatever the snapshot's
/// size.
pub const MIN_COMPACT_LEN: u64 = 64 * 1024;

/// Largest record [`JournaledStateFile::append`] takes.
pub const MAX_RECORD_LEN: usize = 16 * 1024 * 1024;

/// What [`JournaledStateFile::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The snapshot (None: there is none yet).
    pub snapshot: Option<Zeroizing<Vec<u8>>>,
    /// The records written after it, oldest first.
    pub records: Vec<Zeroizing<Vec<u8>>>,
    /// A record a crash cut short was dropped from the end.
    pub dropped_torn_record: bool,
    /// A journal of an older snapshot was found and ignored.
    pub ignored_stale_journal: bool,
}

/// A snapshot file and its append-only journal (see the module docs).
#[derive(Debug)]
pub struct JournaledStateFile {
    snapshot: DeviceStateFile,
    journal_path: PathBuf,
    /// The journal, open for appending, when it follows the snapshot on
    /// disk (after [`JournaledStateFile::load`] or
    /// [`JournaledStateFile::replace`]).
    journal: Option<File>,
    journal_len: u64,
    snapshot_len: u64,
}

impl JournaledStateFile {
    /// The snapshot at `snapshot`'s path and its journal beside it
    /// (`<file>.journal`); nothing is touched yet.
    pub fn new(snapshot: DeviceStateFile) -> Self {
        let mut name = snapshot.path().as_os_str().to_os_string();
        name.push(".journal");
        Self {
            snapshot,
            journal_path: PathBuf::from(name),
            journal: None,
            journal_len: 0,
            snapshot_len: 0,
        }
    }

    /// The snapshot file.
    pub fn snapshot(&self) -> &DeviceStateFile {
        &self.snapshot
    }

    /// The journal's path.
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// Reads the snapshot and the journal records that follow it, cuts a
    /// torn last record off the file, and opens the journal for appending
    /// (see the module docs for what is dropped, ignored or refused).
    pub fn load(&mut self) -> Result<Loaded> {
        self.journal = None;
        let Some(snapshot) = self.snapshot.read()? else {
            return Ok(Loaded::default());
        };
        self.snapshot_len = snapshot.len() as u64;
        let digest = snapshot_digest(&snapshot);
        let mut loaded = Loaded {
            snapshot: Some(snapshot),
            ..Loaded::default()
        };
        let bytes = match File::open(&self.journal_path) {
            Ok(f) => {
                let mut buf = Zeroizing::new(Vec::new());
                let cap = 3 * MAX_STATE_FILE_LEN + MAX_RECORD_LEN as u64;
                f.take(cap + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| Error::io("read state journal", &self.journal_path, e))?;
                if buf.len() as u64 > cap {
                    return Err(Error::InvalidArgument(format!(
                        "state journal {} is larger than {cap} bytes; it is not a sealcast journal",
                        self.journal_path.display()
                    )));
                }
                buf
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loaded),
            Err(e) => return Err(Error::io("open state journal", &self.journal_path, e)),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC || bytes[8..HEADER_LEN] != digest[..] {
            // Left by a crash between a new snapshot and its journal (or
            // torn while it was being created): the snapshot holds it all.
            loaded.ignored_stale_journal = true;
            return Ok(loaded);
        }
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            match read_record(&bytes[at..]) {
                Some(record) => {
                    at += RECORD_HEAD_LEN + record.len();
                    loaded.records.push(Zeroizing::new(record.to_vec()));
                }
                None if is_torn_tail(&bytes[at..]) => {
                    loaded.dropped_torn_record = true;
                    break;
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "state journal {} is damaged at byte {at} with records after it \
                         (not a crash's torn write); restore the state directory from a \
                         backup, or remove both {} and the journal to start afresh",
                        self.journal_path.display(),
                        self.snapshot.path().display()
                    )));
                }
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&self.journal_path)
            .map_err(|e| Error::io("open state journal", &self.journal_path, e))?;
        if at < bytes.len() {
            file.set_len(at as u64)
                .map_err(|e| Error::io("cut torn record off", &self.journal_path, e))?;
            file.sync_all()
                .map_err(|e| Error::io("fsync state journal", &self.journal_path, e))?;
        }
        drop(file);
        self.open_for_append(at as u64)?;
        Ok(loaded)
    }

    /// Whether the next write should be a whole snapshot
    /// ([`JournaledStateFile::replace`]): there is no journal following the
    /// snapshot yet, or it has grown past twice the snapshot (and
    /// [`MIN_COMPACT_LEN`]).
    pub fn wants_snapshot(&self) -> bool {
        self.journal.is_none()
            || self.journal_len > MIN_COMPACT_LEN.max(self.snapshot_len.saturating_mul(2))
    }

    /// Appends one record and fsyncs it. Refused when no journal follows
    /// the snapshot ([`JournaledStateFile::wants_snapshot`]). On an error
    /// the journal is closed: a record may be half written, so the next
    /// write must be a snapshot (which also discards it).
    pub fn append(&mut self, record: &[u8]) -> Result<()> {
        if record.len() > MAX_RECORD_LEN {
            return Err(Error::InvalidArgument(format!(
                "state journal record of {} bytes is larger than {MAX_RECORD_LEN}",
                record.len()
            )));
        }
        let Some(file) = self.journal.as_mut() else {
            return Err(Error::InvalidArgument(
                "no journal follows the state file yet: write the whole state first".into(),
            ));
        };
        let mut buf = Vec::with_capacity(RECORD_HEAD_LEN + record.len());
        buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        buf.extend_from_slice(&Sha256::digest(record)[..8]);
        buf.extend_from_slice(record);
        let written = file
            .write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("append to state journal", &self.journal_path, e));
        if let Err(e) = written {
            self.journal = None;
            return Err(e);
        }
        self.journal_len += buf.len() as u64;
        Ok(())
    }

    /// Writes the whole state as the new snapshot (atomically), then a new,
    /// empty journal following it. A crash between the two leaves the old
    /// journal, which no longer matches the snapshot and is ignored.
    pub fn replace(&mut self, snapshot: &[u8]) -> Result<()> {
        self.journal = None;
        self.snapshot.write(snapshot)?;
        self.snapshot_len = snapshot.len() as u64;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&snapshot_digest(snapshot));
        write_atomic(&self.journal_path, &header, DeviceStateFile::MODE)?;
        self.open_for_append(HEADER_LEN as u64)
    }

    fn open_for_append(&mut self, len: u64) -> Result<()> {
        let file = OpenOptions::new()
            .append(true)
            .open(&self.journal_path)
            .map_err(|e| Error::io("open state journal", &self.journal_path, e))?;
        self.journal = Some(file);
        self.journal_len = len;
        Ok(())
    }
}

fn snapshot_digest(snapshot: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&Sha256::digest(snapshot)[..16]);
    out
}

/// The record at the start of `rest`, if it is whole and its digest holds.
fn read_record(rest: &[u8]) -> Option<&[u8]> {
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let digest = rest.get(4..RECORD_HEAD_LEN)?;
    let record = rest.get(RECORD_HEAD_LEN..RECORD_HEAD_LEN.checked_add(len)?)?;
    (Sha256::digest(record)[..8] == *digest).then_some(record)
}

/// Whether a record that did not read (see [`read_record`]) is the last
/// thing in the file: cut short, or its claimed length reaching the end.
fn is_torn_tail(rest: &[u8]) -> bool {
    let Some(len_bytes) = rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
        return true;
    };
    let len = u32::from_le_bytes(len_bytes) as usize;
    RECORD_HEAD_LEN.saturating_add(len) >= rest.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn journaled(dir: &Path) -> JournaledStateFile {
        JournaledStateFile::new(DeviceStateFile::new(dir.join("dap.cbor")))
    }

    fn records(l: &Loaded) -> Vec<Vec<u8>> {
        l.records.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn snapshot_then_records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journaled(dir.path());
        let l = j.load().unwrap();
        assert!(l.snapshot.is_none() && l.records.is_empty());
        assert!(j.wants_snapshot());
        assert!(j.append(b"too early").is_err());
        j.replace(b"whole state").unwrap();
        assert!(!j.wants_snapshot());
        j.append(b"one").unwrap();
        j.append(b"two").unwrap();
        for p in [
            j.snapshot().path().to_path_buf(),
            j.journal_path().to_path_buf(),
        ] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let mut again = journaled(dir.path());
        let l = again.load().unwrap();
        assert_eq!(
            l.snapshot.as_deref().map(Vec::as_slice),
            Some(&b"whole state"[..])
        );
        assert_eq!(records(&l), vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(!l.dropped_torn_record && !l.ignored_stale_journal);
        // Appends go on after what was loaded.
        again.append(b"three").unwrap();
        let l = journaled(dir.path()).load().unwrap();
        assert_eq!(records(&l).len(), 3);
        // A new snapshot starts an empty journal.
        again.replace(b"newer whole state").unwrap();
        let l = journaled(dir.path()).load().unwrap();
        assert_eq!(
            l.snapshot.as_deref().map(Vec::as_slice),
            Some(&b"newer whole state"[..])
        );
        assert!(l.records.is_empty());
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_cut_off_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journaled(dir.path());
        j.replace(b"state").unwrap();
        j.append(b"kept").unwrap();
        j.append(b"torn by a crash").unwrap();
        let path = j.journal_path().to_path_buf();
        let full = std::fs::read(&path).unwrap();
        for cut in [1, 5, 13, 20] {
            std::fs::write(&path, &full[..full.len() - cut]).unwrap();
            let mut again = journaled(dir.path());
            let l = again.load().unwrap();
            assert_eq!(records(&l), vec![b"kept".to_vec()], "cut {cut}");
            assert!(l.dropped_torn_record);
            again.append(b"after").unwrap();
            let l = journaled(dir.path()).load().unwrap();
            assert_eq!(records(&l), vec![b"kept".to_vec(), b"after".to_vec()]);
            assert!(!l.dropped_torn_record);
        }
        // Zeros where the last record's bytes should be (the size reached
        // the disk, the data did not).
        let mut zeroed = full.clone();
        let n = zeroed.len();
        zeroed[n - 4..].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        let l = journaled(dir.path()).load().unwrap();
        assert_eq!(records(&l), vec![b"kept".to_vec()]);
        assert!(l.dropped_torn_record);
    }

    #[test]
    fn damage_with_records_after_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journaled(dir.path());
        j.replace(b"state").unwrap();
        j.append(b"first record").unwrap();
        j.append(b"second record").unwrap();
        let path = j.journal_path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + RECORD_HEAD_LEN + 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = journaled(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        // Left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_journal_of_an_older_snapshot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journaled(dir.path());
        j.replace(b"old state").unwrap();
        j.append(b"old change").unwrap();
        let old_journal = std::fs::read(j.journal_path()).unwrap();
        j.replace(b"new state holding the old change").unwrap();
        // A crash after the new snapshot, before its journal.
        std::fs::write(j.journal_path(), &old_journal).unwrap();
        let mut again = journaled(dir.path());
        let l = again.load().unwrap();
        assert!(l.ignored_stale_journal);
        assert!(l.records.is_empty());
        assert!(again.wants_snapshot());
        assert!(again.append(b"x").is_err());
    }

    #[test]
    fn it_asks_for_a_snapshot_once_the_journal_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journaled(dir.path());
        j.replace(&[7u8; 40_000]).unwrap();
        let record = [1u8; 1000];
        let mut appended = 0;
        while !j.wants_snapshot() {
            j.append(&record).unwrap();
            appended += 1;
        }
        // Past 2 × 40 000 bytes, not before.
        assert_eq!(appended, 80_000 / (record.len() + RECORD_HEAD_LEN) + 1);
    }
}

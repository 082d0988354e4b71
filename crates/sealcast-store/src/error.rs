//! The one error type of `sealcast-store`.
//!
//! Every message says what went wrong and what to do about it. No variant
//! ever carries key bytes, sealed or unsealed key material, or the KEK.

use core::fmt;
use std::path::{Path, PathBuf};

use sealcast_core::ids::{EntityId, Epoch, GroupId};

/// Result alias of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in the store, the state files and the audit log.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// A file-system operation failed.
    Io {
        /// What was being done (`"read KEK file"`, `"rename temp file"` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The database reported an error.
    Database {
        /// `"sqlite"` or `"postgres"`.
        backend: &'static str,
        /// What was being done.
        action: &'static str,
        /// The driver's message (ids at most, never key material).
        message: String,
    },
    /// Another manager changed the group first: the compare-and-set of the
    /// epoch found something other than what the caller expected.
    Conflict {
        /// The group.
        group: GroupId,
        /// The epoch the caller expected the group to be at.
        expected: Epoch,
        /// The epoch the store holds now.
        actual: Epoch,
    },
    /// Another manager changed this node's transmission order first.
    TransmissionConflict {
        /// The node.
        entity: EntityId,
        /// The version the caller expected (None: no order).
        expected: Option<u64>,
    },
    /// Another manager changed the authorization status list first.
    StatusConflict {
        /// The version the caller expected.
        expected: u64,
    },
    /// Key material for this (group, epoch) is already stored; an epoch never
    /// gets a second key.
    MaterialExists {
        /// The group.
        group: GroupId,
        /// The epoch that already has material.
        epoch: Epoch,
    },
    /// A row the operation needs does not exist.
    NotFound {
        /// What kind of row (`"group"`, `"entity"`, `"member"`).
        what: &'static str,
        /// Its id, printed.
        id: String,
    },
    /// A row with this key exists already.
    AlreadyExists {
        /// What kind of row.
        what: &'static str,
        /// Its id, printed.
        id: String,
    },
    /// A row is still referenced by another (an entity that is a member of a
    /// group, or the agent of other entities).
    InUse {
        /// What kind of row.
        what: &'static str,
        /// Its id, printed.
        id: String,
    },
    /// The caller passed a value the store refuses.
    InvalidArgument(String),
    /// The KEK file can be read by users other than its owner.
    KekFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK file or variable does not hold a 32-byte key.
    KekFormat {
        /// Where it came from (file path or variable name).
        origin: String,
        /// What is wrong with it (never its content).
        reason: &'static str,
    },
    /// The KEK environment variable is not set.
    KekMissing {
        /// The variable's name.
        var: String,
    },
    /// The store was created under a different KEK.
    WrongKek,
    /// A sealed blob did not decrypt: wrong KEK, or the row was altered or
    /// moved to another (group, epoch).
    Unseal {
        /// `"key material"` or `"tree state"`.
        what: &'static str,
        /// The group of the row.
        group: GroupId,
        /// The epoch of the row.
        epoch: Epoch,
    },
    /// A stored value cannot be interpreted (the database was edited by hand
    /// or is damaged).
    Corrupt(String),
    /// The database's schema is newer than this build understands.
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// An error of the sealcast core (parsing key material or credentials).
    Core(sealcast_core::Error),
    /// A failure in the group logic while restoring or saving its state.
    Group(sealcast_group::Error),
    /// An audit log does not verify.
    AuditBroken {
        /// Where (file path or `"database table audit_log"`).
        origin: String,
        /// The number of the first bad record: its 1-based line in a file,
        /// the sequence number it should have had in a table.
        record: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An audit log verifies on its own but does not reach the anchor
    /// (sequence number and hash) the operator recorded earlier.
    AuditAnchorMismatch {
        /// Where.
        origin: String,
        /// What was found.
        reason: String,
    },
    /// Another process holds the exclusive lock on a state file or state
    /// directory (a running service, or a command next to it).
    Locked {
        /// The state file or directory the lock guards.
        path: PathBuf,
        /// The holder's process id, when it could be read.
        holder: Option<u32>,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io {
                action,
                path,
                source,
            } => write!(
                f,
                "cannot {action} {}: {source}; check that the path exists and that this user may use it",
                path.display()
            ),
            Error::Database {
                backend,
                action,
                message,
            } => write!(
                f,
                "{backend} error while trying to {action}: {message}; check that the database is reachable and was created by sealcast"
            ),
            Error::Conflict {
                group,
                expected,
                actual,
            } => write!(
                f,
                "group {group} is at epoch {actual}, not {expected}: another manager advanced it first; reload the group and decide again"
            ),
            Error::TransmissionConflict { entity, expected } => write!(
                f,
                "the transmission order of {entity} is no longer version {}: another manager changed it first; show it again and decide again",
                expected.map_or_else(|| "none".to_owned(), |v| v.to_string())
            ),
            Error::StatusConflict { expected } => write!(
                f,
                "the authorization status list is no longer version {expected}: another manager changed it first; show it again and decide again"
            ),
            Error::MaterialExists { group, epoch } => write!(
                f,
                "group {group} already has key material for epoch {epoch}; an epoch never gets a second key, so advance to a later epoch"
            ),
            Error::NotFound { what, id } => {
                write!(f, "no {what} {id} in the store; create it first")
            }
            Error::AlreadyExists { what, id } => write!(
                f,
                "{what} {id} already exists in the store; update or remove it instead"
            ),
            Error::InUse { what, id } => write!(
                f,
                "{what} {id} is still referenced (a group member, or the agent of other entities); remove those references first"
            ),
            Error::InvalidArgument(why) => write!(f, "refused: {why}"),
            Error::Locked { path, holder } => {
                let who = holder.map_or_else(
                    || "another sealcast process".to_owned(),
                    |pid| format!("another sealcast process (pid {pid})"),
                );
                write!(
                    f,
                    "{} is in use by {who}; stop that process (or wait for it to finish) and try again",
                    path.display()
                )
            }
            Error::KekFilePermissions { path, mode } => write!(
                f,
                "KEK file {} has mode {mode:04o}, so other users may read it; run `chmod 600 {}` (mode 0600 or 0400 is required)",
                path.display(),
                path.display()
            ),
            Error::KekFormat { origin, reason } => write!(
                f,
                "the KEK from {origin} is unusable: {reason}; it must be 32 bytes, given as 64 hex digits (or 32 raw bytes in a file)"
            ),
            Error::KekMissing { var } => write!(
                f,
                "environment variable {var} is not set; set it to the 64-hex-digit KEK, or use a KEK file"
            ),
            Error::WrongKek => write!(
                f,
                "this KEK does not open the store: the store was created under another KEK; supply the KEK it was created with"
            ),
            Error::Unseal { what, group, epoch } => write!(
                f,
                "stored {what} of group {group} epoch {epoch} does not decrypt under this KEK: the row was altered, moved or written under another KEK; restore the database from a backup"
            ),
            Error::Corrupt(why) => write!(
                f,
                "the store holds a value it cannot interpret ({why}); the database was edited or damaged: restore it from a backup"
            ),
            Error::SchemaTooNew { found, supported } => write!(
                f,
                "the store's schema version is {found} but this build knows only up to {supported}; upgrade sealcast"
            ),
            Error::Core(e) => write!(f, "{e}"),
            Error::Group(e) => write!(f, "{e}"),
            Error::AuditBroken {
                origin,
                record,
                reason,
            } => write!(
                f,
                "audit log {origin} is broken at record {record}: {reason}; treat every record from {record} on as untrusted and compare with a copy or backup"
            ),
            Error::AuditAnchorMismatch { origin, reason } => write!(
                f,
                "audit log {origin} does not match the recorded anchor: {reason}; records were removed from the end or the log was rewritten"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Core(e) => Some(e),
            Error::Group(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sealcast_core::Error> for Error {
    fn from(e: sealcast_core::Error) -> Self {
        Error::Core(e)
    }
}

impl From<sealcast_group::Error> for Error {
    fn from(e: sealcast_group::Error) -> Self {
        Error::Group(e)
    }
}

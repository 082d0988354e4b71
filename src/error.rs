//! The command's one error type.
//!
//! Every error renders as one line that says what went wrong and what to do
//! about it. Messages name files and identifiers, never key bytes: the core's
//! errors carry no secrets, and this module adds only paths and hints.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can make a `sealcast` command fail.
#[derive(Debug)]
pub enum CliError {
    /// The command line was wrong (exit code 2).
    Usage(String),
    /// A file could not be read or written.
    Io {
        /// What was being done ("read", "write" …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The core refused something; `what` says what the command was doing.
    Core {
        /// What the command was doing ("cannot open message" …).
        what: String,
        /// The core's reason.
        source: sealcast_core::Error,
        /// What the user can do about it.
        hint: Option<String>,
    },
    /// Anything else, already phrased for the user.
    Other(String),
}

impl CliError {
    /// A usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    /// An error phrased for the user.
    pub fn other(msg: impl Into<String>) -> Self {
        CliError::Other(msg.into())
    }

    /// A file error.
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        CliError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A core error while doing `what`.
    pub fn core(what: impl Into<String>, source: sealcast_core::Error) -> Self {
        CliError::Core {
            what: what.into(),
            source,
            hint: None,
        }
    }

    /// A core error while doing `what`, with advice.
    pub fn core_hint(
        what: impl Into<String>,
        source: sealcast_core::Error,
        hint: impl Into<String>,
    ) -> Self {
        CliError::Core {
            what: what.into(),
            source,
            hint: Some(hint.into()),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CliError::Usage(msg) | CliError::Other(msg) => msg.clone(),
            CliError::Io {
                action,
                path,
                source,
            } => {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound => "; check the path",
                    io::ErrorKind::PermissionDenied => "; check the file's permissions",
                    io::ErrorKind::AlreadyExists => "; pass --force to replace it",
                    _ => "",
                };
                format!("cannot {action} {}: {source}{hint}", path.display())
            }
            CliError::Core { what, source, hint } => match hint {
                Some(h) => format!("{what}: {source}; {h}"),
                None => format!("{what}: {source}"),
            },
        };
        // One line, whatever a path or an OS message contains.
        f.write_str(&one_line(&text))
    }
}

impl std::error::Error for CliError {}

/// Replaces control characters (newlines included) by spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Result alias of the command.
pub type Result<T, E = CliError> = core::result::Result<T, E>;

//! `sealcast audit verify`: checks a hash-chained audit log — the
//! manager's, or a field node's, DAP's or headend's with the segments its
//! rotation left beside it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sealcast_store::audit::AuditAnchor;

use crate::cmd::say;
use crate::error::{CliError, Result};

/// Audit log commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log file: every record's hash and its link to the one
    /// before, across the rotated segments beside it (FILE.N … FILE.1, then
    /// FILE) as one chain. Exits 0 and prints the head (`SEQ:HASH`) if the
    /// log is intact; names the first bad record otherwise. Keep the printed
    /// head somewhere else and pass it as --anchor next time: that also
    /// detects records cut off the end and a rewritten chain.
    ///
    /// Example: sealcast audit verify /var/lib/sealcast/audit.jsonl --anchor 1042:9f3c…
    Verify(VerifyArgs),
}

/// Arguments of `sealcast audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit log (JSON lines, as the manager and the other services
    /// write it).
    pub file: PathBuf,
    /// A head printed by an earlier verification (`SEQ:HASH`) that the log
    /// must still contain.
    #[arg(long, value_name = "SEQ:HASH")]
    pub anchor: Option<String>,
}

fn parse_anchor(text: &str) -> Result<AuditAnchor> {
    let bad = || {
        CliError::usage(format!(
            "--anchor '{text}' is not SEQ:HASH (as printed by 'sealcast audit verify')"
        ))
    };
    let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    let hash = hash.trim();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(AuditAnchor { seq, hash: out })
}

/// Runs `sealcast audit verify`.
pub fn verify(args: &VerifyArgs) -> Result<()> {
    if !args.file.exists() {
        return Err(CliError::other(format!(
            "no audit log at {}: check the path (a service writes <state_dir>/audit.jsonl unless its config names another)",
            args.file.display()
        )));
    }
    let anchor = args.anchor.as_deref().map(parse_anchor).transpose()?;
    let (summary, segments) =
        sealcast_store::verify_audit_segments(&args.file, anchor).map_err(|e| {
            CliError::other(format!(
                "audit log {} is NOT intact: {e}",
                args.file.display()
            ))
        })?;
    say(&format!(
        "audit log {} is intact: {} records",
        args.file.display(),
        summary.records
    ));
    if segments > 1 {
        say(&format!(
            "  in {segments} segments (rotated ones oldest first: {}.{} … {}.1)",
            args.file.display(),
            segments - 1,
            args.file.display()
        ));
    }
    if summary.rotated_away > 0 {
        say(&format!(
            "  records 1 to {} were rotated away (older segments deleted); the oldest kept segment starts with its rotation record",
            summary.rotated_away
        ));
    }
    if let (Some(first), Some(last)) = (summary.first_time, summary.last_time) {
        say(&format!(
            "  from {} ms to {} ms (Unix time)",
            first.get(),
            last.get()
        ));
    }
    match summary.head {
        Some(head) => say(&format!(
            "  head {head}  (keep it; pass it as --anchor next time)"
        )),
        None => say("  the log is empty"),
    }
    Ok(())
}

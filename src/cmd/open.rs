//! `sealcast open`: verify and decrypt a broadcast.

use std::path::PathBuf;

use clap::Args;
use sealcast_core::Error as CoreError;
use sealcast_core::broadcast::{BroadcastReceiver, MAX_BROADCAST_LEN, ReplayPolicy};
use sealcast_core::groupkey::GroupContext;
use sealcast_core::replay::SeqWindow;

use super::{load_group_key, load_public_key, note};
use crate::error::{CliError, Result};
use crate::files::{self, OutputKind, PRIVATE_MODE};
use crate::state;
use crate::system;
use crate::text::{fingerprint, hex, rfc3339, show_id};

const EXAMPLES: &str = "\
Examples:
  sealcast open --group-key fire-doors.gk --target doors/unlock --replay-state door-17.replay --in cmd.cose
  sealcast open --group-key fire-doors.gk --target doors/unlock --signer-pub door-gw.pub \\
      --skew 30 --replay-state door-17.replay --in cmd.cose --out payload.bin";

/// Verify and decrypt a broadcast.
///
/// Trusts exactly the signers listed in the group key material. The payload
/// goes to standard output (or --out); who signed it, the sequence number
/// and the timestamp go to standard error. With --replay-state the
/// per-sender replay windows are loaded and, after everything verified,
/// saved (atomically) before the payload is released, so the same message
/// never opens twice. Without it, nothing is remembered between runs.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct OpenArgs {
    /// Group key material (from `sealcast group create`).
    #[arg(long, value_name = "FILE")]
    group_key: PathBuf,
    /// Topic or URI the message arrived on; must equal the sealer's
    /// --target.
    #[arg(long, value_name = "TOPIC_OR_URI")]
    target: String,
    /// Replay state file of this receiver for this group (created if
    /// missing).
    #[arg(long, value_name = "FILE")]
    replay_state: Option<PathBuf>,
    /// Also refuse messages whose timestamp is more than SECONDS away from
    /// this machine's clock.
    #[arg(long, value_name = "SECONDS")]
    skew: Option<u64>,
    /// Additionally require that the message was signed by this entity (its
    /// <ID>.pub file): same entity id and same Ed25519 key as the group's
    /// signer entry.
    #[arg(long, value_name = "FILE")]
    signer_pub: Option<PathBuf>,
    /// The COSE object, or - for standard input.
    #[arg(long = "in", value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Output file for the payload (mode 0600), or - for standard output.
    #[arg(long, value_name = "FILE", default_value = "-")]
    out: PathBuf,
}

pub fn run(args: &OpenArgs) -> Result<()> {
    let material = load_group_key(&args.group_key)?;
    let expected_signer = args
        .signer_pub
        .as_deref()
        .map(load_public_key)
        .transpose()?;
    let ctx = GroupContext::new(&material)
        .map_err(|e| CliError::core("cannot derive the group keys", e))?;
    let policy = ReplayPolicy::Sequence {
        window: SeqWindow::DEFAULT_SIZE,
        max_skew_ms: args.skew.map(|s| s.saturating_mul(1000)),
    };
    let mut receiver = BroadcastReceiver::new(ctx, policy)
        .map_err(|e| CliError::core("cannot set up the receiver", e))?;
    // Load → check → commit under one lock: two `open`s of one message with
    // the same replay state accept it once between them.
    let _lock = args.replay_state.as_deref().map(state::lock).transpose()?;
    if let Some(path) = &args.replay_state {
        for (sender, window) in state::load_replay(path, material.group(), material.epoch())? {
            receiver.restore_window(sender, window);
        }
    }
    let bytes = files::read_limited(Some(&args.input), MAX_BROADCAST_LEN, "sealcast message")?;
    let now = system::now()?;
    let opened = receiver
        .open(&bytes, &args.target, now)
        .map_err(|e| open_error(e, args))?;

    if let Some(expected) = &expected_signer {
        let entry = material
            .signers()
            .iter()
            .find(|s| s.sender_id == opened.sender_id);
        let key_matches = entry.is_some_and(|s| s.verifying_key == *expected.verifying_key());
        if opened.signer != *expected.id() || !key_matches {
            return Err(CliError::other(format!(
                "the message was signed by '{}', not by '{}' with the key in {} ({}); refusing it",
                opened.signer,
                expected.id(),
                args.signer_pub
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                fingerprint(expected.verifying_key().as_bytes())
            )));
        }
    }
    // Commit the replay state before anything is released.
    if let Some(path) = &args.replay_state {
        state::save_replay(path, material.group(), material.epoch(), receiver.windows())?;
    }
    note(&format!(
        "verified: signer {} sender id {} group {} epoch {} seq {} timestamp {} ({} ms)",
        opened.signer,
        hex(opened.sender_id.as_bytes()),
        show_id(opened.group.as_bytes()),
        opened.epoch,
        opened.seq,
        rfc3339(opened.timestamp.get()),
        opened.timestamp.get()
    ));
    files::write_output(
        Some(&args.out),
        &opened.payload,
        OutputKind::Payload,
        PRIVATE_MODE,
    )
}

/// Names the check that failed and what to do about it.
fn open_error(e: CoreError, args: &OpenArgs) -> CliError {
    let state = args
        .replay_state
        .as_deref()
        .map_or_else(String::new, |p| format!(" (recorded in {})", p.display()));
    let hint = match &e {
        CoreError::DecryptFailed => {
            "check --target (it must equal the sealer's) and --group-key; otherwise the message was altered or is not for this group".to_owned()
        }
        CoreError::Replay(_) => format!("this message, or a newer one from the same sender, was opened before{state}"),
        CoreError::ContextMismatch("group") => {
            "the message is for another group; use that group's key material".to_owned()
        }
        CoreError::ContextMismatch(_) | CoreError::StaleEpoch | CoreError::FutureEpoch => {
            "the message and --group-key are of different epochs; use the key material of the message's epoch".to_owned()
        }
        CoreError::SignerNotAuthorized => {
            "its sender id is not among the signers of --group-key".to_owned()
        }
        CoreError::BadSignature | CoreError::SignerMismatch => {
            "the message was forged or altered; do not act on it".to_owned()
        }
        CoreError::StaleTimestamp => {
            "its timestamp lies outside --skew of this machine's clock; check both clocks".to_owned()
        }
        CoreError::KeyExpired => {
            "the group key material has expired; get the current epoch's key material".to_owned()
        }
        CoreError::UnsupportedAlgorithm(_) => {
            "the message uses another algorithm than --group-key".to_owned()
        }
        _ => "check that --in is a message made by 'sealcast seal'".to_owned(),
    };
    CliError::core_hint("cannot open the message", e, hint)
}

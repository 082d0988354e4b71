//! `sealcast seal`: a signed-then-encrypted broadcast for one group.

use std::path::PathBuf;

use clap::Args;
use sealcast_core::broadcast::{MAX_BROADCAST_LEN, seal_broadcast};
use sealcast_core::groupkey::GroupContext;
use sealcast_core::ids::SeqNum;

use super::{load_group_key, load_private_key, note};
use crate::error::{CliError, Result};
use crate::files::{self, OutputKind, PUBLIC_MODE};
use crate::state;
use crate::system;
use crate::text::{hex, rfc3339, show_id};

const EXAMPLES: &str = "\
Examples:
  echo 'unlock all' | sealcast seal --group-key fire-doors.gk --key door-gw.key \\
      --target doors/unlock --seq-state door-gw.seq > cmd.cose
  sealcast seal --group-key fire-doors.gk --key door-gw.key --target doors/unlock \\
      --seq 42 --in payload.bin --out cmd.cose";

/// Seal a payload as a broadcast to a group.
///
/// The payload is signed with the signer's Ed25519 key (COSE_Sign1) and the
/// result encrypted under the signer's group sender key (COSE_Encrypt0).
/// Both layers bind the group, epoch, sequence number, timestamp and
/// --target, so the message opens only for that target in that group.
/// The signer must be listed in the group key material. A sequence number
/// must never be used twice in one group epoch: pass --seq-state FILE
/// (recommended; the file is updated and fsynced before the message is
/// produced, so repeated runs never reuse a number) or manage numbers
/// yourself with --seq N. A note on standard error tells the number used.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SealArgs {
    /// Group key material (from `sealcast group create`).
    #[arg(long, value_name = "FILE")]
    group_key: PathBuf,
    /// The signer's private key file (<ID>.key from `sealcast keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Topic or URI the message is for; receivers must name the same one.
    #[arg(long, value_name = "TOPIC_OR_URI")]
    target: String,
    /// Use this sequence number (0 to 2^40-1); you must never repeat one in
    /// a group epoch.
    #[arg(long, value_name = "N", conflicts_with = "seq_state")]
    seq: Option<u64>,
    /// Take the next sequence number from this state file (created if
    /// missing; one file per group and signer, one sealer at a time).
    #[arg(long, value_name = "FILE")]
    seq_state: Option<PathBuf>,
    /// Payload file, or - for standard input.
    #[arg(long = "in", value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Output file for the COSE object, or - for standard output.
    #[arg(long, value_name = "FILE", default_value = "-")]
    out: PathBuf,
}

pub fn run(args: &SealArgs) -> Result<()> {
    if args.seq.is_none() && args.seq_state.is_none() {
        return Err(no_seq());
    }
    let material = load_group_key(&args.group_key)?;
    let cred = load_private_key(&args.key)?;
    let ctx = GroupContext::new(&material)
        .map_err(|e| CliError::core("cannot derive the group keys", e))?;
    let Some(sender) = ctx.sender_id_of(cred.id()).cloned() else {
        let names: Vec<&str> = material
            .signers()
            .iter()
            .map(|s| s.entity.as_str())
            .collect();
        return Err(CliError::other(format!(
            "'{}' is not an authorized signer of group {} epoch {} (signers: {}); create the group with --signer {}=...",
            cred.id(),
            show_id(material.group().as_bytes()),
            material.epoch(),
            names.join(", "),
            cred.id()
        )));
    };
    let now = system::now()?;
    if let Some(end) = material.not_after().filter(|end| now > *end) {
        return Err(CliError::other(format!(
            "the group key material {} expired at {}; create the next epoch",
            args.group_key.display(),
            rfc3339(end.get())
        )));
    }
    let payload = files::read_limited(Some(&args.input), MAX_BROADCAST_LEN, "payload")?;

    let seq = match (&args.seq_state, args.seq) {
        (Some(path), _) => state::allocate_seq(path, material.group(), material.epoch(), &sender)?,
        (None, Some(n)) => SeqNum::new(n).map_err(|_| {
            CliError::usage(format!(
                "--seq {n} is above the largest sequence number, {}; start a new epoch instead",
                SeqNum::MAX
            ))
        })?,
        (None, None) => return Err(no_seq()),
    };
    let sealed = seal_broadcast(
        &ctx,
        cred.id(),
        cred.signing_key(),
        seq,
        now,
        &args.target,
        &payload,
    )
    .map_err(|e| {
        CliError::core_hint(
            "cannot seal",
            e,
            "check that --key belongs to a signer listed in --group-key",
        )
    })?;
    if sealed.len() > MAX_BROADCAST_LEN {
        return Err(CliError::other(format!(
            "the sealed message would be {} bytes, more than receivers accept ({MAX_BROADCAST_LEN}); shorten the payload",
            sealed.len()
        )));
    }
    files::write_output(Some(&args.out), &sealed, OutputKind::Binary, PUBLIC_MODE)?;
    note(&format!(
        "sealed: signer {} sender id {} group {} epoch {} seq {} timestamp {} target {:?}",
        cred.id(),
        hex(sender.as_bytes()),
        show_id(material.group().as_bytes()),
        material.epoch(),
        seq,
        rfc3339(now.get()),
        args.target
    ));
    Ok(())
}

fn no_seq() -> CliError {
    CliError::usage(
        "no sequence number: pass --seq-state FILE (keeps count across runs) or --seq N",
    )
}

//! `sealcast inspect`: any sealcast or COSE object as CBOR diagnostic
//! notation, secrets redacted.

use std::path::PathBuf;

use clap::Args;

use crate::error::{CliError, Result};
use crate::files;
use crate::text::parse_hex_text;

/// Largest input accepted (the largest trust store a sealcast file may hold).
const MAX_INSPECT_LEN: usize = 16 * 1024 * 1024;

const EXAMPLES: &str = "\
Examples:
  sealcast inspect --in cmd.cose
  sealcast inspect --in door-gw.key
  sealcast inspect --in fire-doors.gk
  echo 'd08343a10101a104...' | sealcast inspect --hex";

/// Print a sealcast or COSE object as CBOR diagnostic notation.
///
/// Recognises COSE_Sign1, COSE_Encrypt0, COSE_Encrypt, COSE_Mac0 (and
/// COSE_Sign / COSE_Mac), COSE_Key and COSE_KeySet, and sealcast group key
/// material, and names header labels (alg, kid, Partial IV, kid context,
/// ephemeral key, epoch, timestamp …), key parameters (kty, crv, x, d …)
/// and algorithms in / comments /. For a broadcast or a key delivery it
/// also prints the routing header. Secret key bytes are never printed: a
/// private key's d, a symmetric k and the group master secret and salt show
/// as <redacted, N bytes>. Nothing is decrypted or verified.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct InspectArgs {
    /// Input file, or - for standard input.
    #[arg(long = "in", value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// The input is hex text (whitespace ignored) rather than binary.
    #[arg(long)]
    hex: bool,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let limit = if args.hex {
        MAX_INSPECT_LEN * 2 + 4096
    } else {
        MAX_INSPECT_LEN
    };
    let raw = zeroize::Zeroizing::new(files::read_limited(
        Some(&args.input),
        limit,
        "COSE object",
    )?);
    let bytes = if args.hex {
        zeroize::Zeroizing::new(
            parse_hex_text(&raw)
                .map_err(|e| CliError::other(format!("--hex: the input is not hex ({e})")))?,
        )
    } else {
        raw
    };
    let text = sealcast_inspect::render(&bytes).map_err(|e| CliError::other(e.to_string()))?;
    files::write_output(
        None,
        text.as_bytes(),
        files::OutputKind::Payload,
        files::PUBLIC_MODE,
    )
}

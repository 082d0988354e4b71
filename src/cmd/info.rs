//! `sealcast info`: what this binary is and what it runs on this machine —
//! the version, the build profile and the Ed25519 backend the CPU selected.

use clap::Args;
use sealcast_core::crypto::ed25519_backend;

use crate::error::Result;

/// Show the version, the build and the Ed25519 backend this CPU runs.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sealcast info\n  sealcast info --json")]
pub struct InfoArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `sealcast info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let backend = ed25519_backend().name();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let version = env!("CARGO_PKG_VERSION");
    if args.json {
        let v = serde_json::json!({
            "version": version,
            "profile": profile,
            "ed25519_backend": backend,
        });
        crate::cmd::say(&v.to_string());
    } else {
        crate::cmd::say(&format!(
            "sealcast {version} ({profile} build)\ned25519 backend: {backend} (chosen for this CPU when the program started)"
        ));
    }
    Ok(())
}

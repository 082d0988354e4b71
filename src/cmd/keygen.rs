//! `sealcast keygen`: an entity's Ed25519 signing key and X25519
//! key-agreement key.

use std::path::{Path, PathBuf};

use clap::Args;
use sealcast_core::credential::{EntityCredential, MAX_PEM_LEN};
use sealcast_core::ids::EntityId;
use zeroize::Zeroizing;

use super::say;
use crate::error::{CliError, Result};
use crate::files::{self, Overwrite, PRIVATE_MODE, PUBLIC_MODE};
use crate::system;
use crate::text::fingerprint;

const EXAMPLES: &str = "\
Examples:
  sealcast keygen --id door-gw
  sealcast keygen --id door-17 --out-dir keys --pem
  openssl genpkey -algorithm ed25519 -out gw.pem
  sealcast keygen --import-pem gw.pem --id door-gw --force";

/// Generate an entity's keys (or import an Ed25519 key from PEM).
///
/// Writes <ID>.key, the private COSE_KeySet (Ed25519 signing key and X25519
/// key-agreement key, mode 0600), and <ID>.pub, the public COSE_KeySet to
/// hand to the group manager and peers. Prints the paths and the public
/// keys' fingerprints (sha256: and the first 16 bytes of SHA-256 over the
/// raw public key); never a secret. Existing files are kept unless --force.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct KeygenArgs {
    /// Entity id: 1 to 64 characters from A-Z a-z 0-9 . _ : - (also the
    /// file name stem and the COSE kid).
    #[arg(long, value_name = "ENTITY_ID")]
    id: String,
    /// Directory for the key files (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
    /// Also write <ID>.ed25519.pem, the Ed25519 key as PKCS#8 PEM (mode 0600)
    /// for OpenSSL and other tools.
    #[arg(long)]
    pem: bool,
    /// Use this unencrypted Ed25519 PKCS#8 PEM private key (e.g. from
    /// `openssl genpkey -algorithm ed25519`) instead of generating one; a
    /// fresh X25519 key is generated beside it.
    #[arg(long, value_name = "FILE")]
    import_pem: Option<PathBuf>,
}

pub fn run(args: &KeygenArgs) -> Result<()> {
    let id = EntityId::new(&args.id).map_err(|e| {
        CliError::usage(format!("--id {:?}: {e}", crate::error::one_line(&args.id)))
    })?;
    let overwrite = Overwrite::from_force(args.force);
    let key_path = args.out_dir.join(format!("{id}.key"));
    let pub_path = args.out_dir.join(format!("{id}.pub"));
    let pem_path = args.out_dir.join(format!("{id}.ed25519.pem"));
    // Refuse before anything is written, so a refusal leaves no half set.
    files::check_absent(&key_path, overwrite)?;
    files::check_absent(&pub_path, overwrite)?;
    if args.pem {
        files::check_absent(&pem_path, overwrite)?;
    }

    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| CliError::io("create directory", &args.out_dir, e))?;
    let mut rng = system::rng()?;
    let cred = match &args.import_pem {
        None => EntityCredential::generate(id.clone(), &mut rng),
        Some(path) => import(id.clone(), path, &mut rng)?,
    };

    let private = cred
        .to_cose_key_set()
        .map_err(|e| CliError::core("cannot encode the private key", e))?;
    let public = cred
        .public()
        .to_cose_key_set()
        .map_err(|e| CliError::core("cannot encode the public key", e))?;
    files::write_atomic(&key_path, &private, PRIVATE_MODE, overwrite)?;
    files::write_atomic(&pub_path, &public, PUBLIC_MODE, overwrite)?;
    say(&format!("entity {id}"));
    say(&format!(
        "  wrote {} (private COSE_KeySet, mode 0600)",
        key_path.display()
    ));
    say(&format!(
        "  wrote {} (public COSE_KeySet)",
        pub_path.display()
    ));
    if args.pem {
        let pem = cred
            .ed25519_to_pkcs8_pem()
            .map_err(|e| CliError::core("cannot encode the Ed25519 key as PEM", e))?;
        files::write_atomic(&pem_path, pem.as_bytes(), PRIVATE_MODE, overwrite)?;
        say(&format!(
            "  wrote {} (Ed25519 PKCS#8 PEM, mode 0600)",
            pem_path.display()
        ));
    }
    let public = cred.public();
    say(&format!(
        "  ed25519 {}",
        fingerprint(public.verifying_key().as_bytes())
    ));
    say(&format!(
        "  x25519  {}",
        fingerprint(public.agreement_key().as_bytes())
    ));
    Ok(())
}

fn import(id: EntityId, path: &Path, rng: &mut rand::rngs::StdRng) -> Result<EntityCredential> {
    let bytes = files::read_secret(path, MAX_PEM_LEN, "PEM key")?;
    let pem = core::str::from_utf8(&bytes).map_err(|_| {
        CliError::other(format!(
            "{} is not PEM text; pass an Ed25519 private key in PKCS#8 PEM form",
            path.display()
        ))
    })?;
    let mut x25519 = Zeroizing::new([0u8; 32]);
    rand::Rng::fill_bytes(rng, x25519.as_mut());
    EntityCredential::from_ed25519_pkcs8_pem(id, pem, &x25519).map_err(|e| {
        CliError::core_hint(
            format!("cannot import {}", path.display()),
            e,
            "create one with 'openssl genpkey -algorithm ed25519 -out FILE'",
        )
    })
}

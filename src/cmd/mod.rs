//! One module per subcommand. Each exposes its clap arguments and a `run`
//! function; shared loading helpers live here.

pub mod audit;
pub mod bench;
pub mod demo;
pub mod group;
pub mod group_admin;
pub mod info;
pub mod inspect;
pub mod keygen;
pub mod manual;
pub mod node;
pub mod open;
pub mod seal;
pub mod serve;
pub mod templates;

use std::path::Path;

use sealcast_core::credential::{EntityCredential, MAX_CREDENTIAL_FILE_LEN, PublicCredential};
use sealcast_core::groupkey::{GroupKeyMaterial, MAX_MATERIAL_LEN};

use crate::error::{CliError, Result};
use crate::files;

/// Loads an entity's private key file (`<id>.key`).
pub fn load_private_key(path: &Path) -> Result<EntityCredential> {
    let bytes = files::read_secret(path, MAX_CREDENTIAL_FILE_LEN, "private key")?;
    EntityCredential::from_cose_key_set(&bytes).map_err(|e| {
        CliError::core_hint(
            format!("cannot use {} as a private key", path.display()),
            e,
            "pass the <id>.key file that 'sealcast keygen' wrote",
        )
    })
}

/// Loads an entity's public key file (`<id>.pub`).
pub fn load_public_key(path: &Path) -> Result<PublicCredential> {
    let bytes = files::read_limited(Some(path), MAX_CREDENTIAL_FILE_LEN, "public key")?;
    PublicCredential::from_cose_key_set(&bytes).map_err(|e| {
        CliError::core_hint(
            format!("cannot use {} as a public key", path.display()),
            e,
            "pass the <id>.pub file that 'sealcast keygen' wrote",
        )
    })
}

/// Loads group key material written by `sealcast group create`.
pub fn load_group_key(path: &Path) -> Result<GroupKeyMaterial> {
    let bytes = files::read_secret(path, MAX_MATERIAL_LEN, "group key")?;
    GroupKeyMaterial::from_cbor(&bytes).map_err(|e| {
        CliError::core_hint(
            format!("cannot use {} as group key material", path.display()),
            e,
            "pass the file that 'sealcast group create --out' wrote",
        )
    })
}

/// Prints a line of the command's report to standard output. A closed pipe
/// is not an error: the files are written, the report is a courtesy.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Prints a line to standard error (used where standard output carries data).
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

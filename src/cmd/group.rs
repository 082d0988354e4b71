//! `sealcast group create`: key material for one group epoch (`--out`), or
//! a group on a running manager (`--config`); `sealcast group enrol | add |
//! evict | rekey | show | list`: administration of a running manager through
//! its control socket (`control`).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, UnixMillis};

use super::{load_public_key, say};
use crate::error::{CliError, Result};
use crate::files::{self, Overwrite, PRIVATE_MODE};
use crate::system;
use crate::text::{fingerprint, hex, parse_duration_ms, parse_hex, rfc3339, show_id};

/// Manage groups: key material files, or the groups of a running manager.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    Create(GroupCreateArgs),
    Enrol(super::group_admin::EnrolArgs),
    Add(super::group_admin::AddArgs),
    Evict(super::group_admin::EvictArgs),
    Rekey(super::group_admin::RekeyArgs),
    Show(super::group_admin::ShowArgs),
    List(super::group_admin::ListArgs),
}

const CREATE_EXAMPLES: &str = "\
Examples:
  sealcast group create --config manager.toml --group fire-doors --scheme tree
  sealcast group create --group fire-doors --epoch 1 --signer door-gw=door-gw.pub:01 --out fire-doors.gk
  sealcast group create --group-hex 0a0b --epoch 7 --alg A256GCM \\
      --signer gw-a=keys/gw-a.pub:01 --signer gw-b=keys/gw-b.pub:02 --valid-for 30d --out g.gk";

/// Create a group on a running manager (--config), or the key material of
/// one group epoch as a file (--out).
///
/// With --config the manager creates the group at epoch 0 without members
/// (add them with 'sealcast group add'); it keeps and delivers the keys.
///
/// With --out: draws a fresh 32-byte master secret and 8-byte salt and
/// writes them, the group id, epoch, AEAD algorithm, expiry and the list of
/// authorized signers to --out (CBOR, mode 0600). Receivers trust exactly
/// the signers listed here. Sender keys and nonces are derived as in RFC
/// 8613 §3.2 with the group id as ID Context.
#[derive(Debug, Args)]
#[command(after_help = CREATE_EXAMPLES)]
#[command(group(ArgGroup::new("group_id").required(true).args(["group", "group_hex"])))]
#[command(group(ArgGroup::new("where").required(true).args(["config", "out"])))]
pub struct GroupCreateArgs {
    /// The running manager's config (manager.toml): create the group there.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["group_hex", "epoch", "signers", "valid_for", "force"])]
    config: Option<PathBuf>,
    /// With --config: how the group is rekeyed when a member leaves — tree
    /// (one broadcast of about 2·log2(n) wrapped keys) or p2p (one delivery
    /// per member).
    #[arg(long, value_enum, requires = "config", default_value = "tree")]
    scheme: SchemeArg,
    /// Group id as text: its UTF-8 bytes are the id (1 to 32 bytes), e.g.
    /// `fire-doors`.
    #[arg(long, value_name = "TEXT")]
    group: Option<String>,
    /// Group id as hex bytes (1 to 32 bytes), e.g. `0a0b`.
    #[arg(long, value_name = "HEX")]
    group_hex: Option<String>,
    /// Key epoch (0 to 4294967295); every rekey moves to a larger one.
    #[arg(long, value_name = "N", required_unless_present = "config")]
    epoch: Option<u32>,
    /// AEAD algorithm for the group's traffic.
    #[arg(long, value_enum, ignore_case = true, default_value = "A128GCM")]
    alg: AlgArg,
    /// An authorized signer: its entity id, its public key file and its
    /// sender id in the group (1 to 6 bytes as hex, unique in the group).
    /// Repeat for several signers.
    #[arg(long = "signer", value_name = "ID=PUBFILE:SENDER_HEX", value_parser = parse_signer, required_unless_present = "config")]
    signers: Vec<SignerSpec>,
    /// Validity from now, e.g. 30d, 12h, 90m, 3600s, 2w; receivers refuse
    /// the key material after it. Without it the material does not expire.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    valid_for: Option<u64>,
    /// Output file for the group key material.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    force: bool,
}

/// The AEAD algorithms a group can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgArg {
    /// AES-GCM, 128-bit key (COSE alg 1).
    #[value(name = "A128GCM")]
    A128Gcm,
    /// AES-GCM, 256-bit key (COSE alg 3).
    #[value(name = "A256GCM")]
    A256Gcm,
}

/// Rekey schemes of a manager's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// Logical key tree: one broadcast per eviction or rekey.
    Tree,
    /// Point to point: one key delivery per member.
    P2p,
}

impl SchemeArg {
    /// The scheme on the control socket.
    pub fn wire(self) -> sealcast_node::control::SchemeName {
        match self {
            SchemeArg::Tree => sealcast_node::control::SchemeName::Tree,
            SchemeArg::P2p => sealcast_node::control::SchemeName::P2p,
        }
    }
}

impl AlgArg {
    /// The algorithm on the control socket.
    pub fn wire(self) -> sealcast_node::control::AlgName {
        match self {
            AlgArg::A128Gcm => sealcast_node::control::AlgName::A128Gcm,
            AlgArg::A256Gcm => sealcast_node::control::AlgName::A256Gcm,
        }
    }

    fn aead(self) -> AeadAlg {
        match self {
            AlgArg::A128Gcm => AeadAlg::A128Gcm,
            AlgArg::A256Gcm => AeadAlg::A256Gcm,
        }
    }
}

/// One `--signer ID=PUBFILE:SENDER_HEX`.
#[derive(Clone, Debug)]
pub struct SignerSpec {
    entity: EntityId,
    pub_file: PathBuf,
    sender_id: SenderId,
}

fn parse_signer(s: &str) -> core::result::Result<SignerSpec, String> {
    const FORM: &str = "write ID=PUBFILE:SENDER_HEX, e.g. door-gw=door-gw.pub:01";
    let (id, rest) = s.split_once('=').ok_or_else(|| format!("no '='; {FORM}"))?;
    let (file, sender) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("no ':' before the sender id; {FORM}"))?;
    if file.is_empty() {
        return Err(format!("no public key file; {FORM}"));
    }
    let entity = EntityId::new(id).map_err(|e| format!("{e}; {FORM}"))?;
    let sid = parse_hex(sender).map_err(|e| format!("sender id: {e}; {FORM}"))?;
    let sender_id =
        SenderId::new(&sid).map_err(|e| format!("{e} (1 to 6 bytes, 2 to 12 hex digits)"))?;
    Ok(SignerSpec {
        entity,
        pub_file: PathBuf::from(file),
        sender_id,
    })
}

/// Parses the group id options: `--group` text or `--group-hex` bytes.
fn group_id(args: &GroupCreateArgs) -> Result<GroupId> {
    let bytes = match (&args.group, &args.group_hex) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(h)) => {
            parse_hex(h).map_err(|e| CliError::usage(format!("--group-hex: {e}")))?
        }
        _ => {
            return Err(CliError::usage(
                "pass either --group TEXT or --group-hex HEX",
            ));
        }
    };
    GroupId::new(&bytes).map_err(|e| {
        CliError::usage(format!(
            "group id: {e}; it must be 1 to 32 bytes ({} given)",
            bytes.len()
        ))
    })
}

pub fn create(args: &GroupCreateArgs) -> Result<()> {
    if let Some(config) = &args.config {
        let group = args.group.as_deref().ok_or_else(|| {
            CliError::usage("--config needs --group TEXT (the manager names groups by text)")
        })?;
        return super::group_admin::create(config, group, args.scheme, args.alg);
    }
    let (Some(out), Some(epoch)) = (&args.out, args.epoch) else {
        return Err(CliError::usage(
            "pass --out FILE and --epoch N (or --config manager.toml)",
        ));
    };
    let group = group_id(args)?;
    let overwrite = Overwrite::from_force(args.force);
    files::check_absent(out, overwrite)?;
    let mut signers = Vec::with_capacity(args.signers.len());
    for spec in &args.signers {
        let public = load_public_key(&spec.pub_file)?;
        if public.id() != &spec.entity {
            return Err(CliError::usage(format!(
                "--signer {}: {} holds the key of '{}', not '{}'; pass the right file or id",
                spec.entity,
                spec.pub_file.display(),
                public.id(),
                spec.entity
            )));
        }
        signers.push(AuthorizedSigner {
            sender_id: spec.sender_id.clone(),
            entity: spec.entity.clone(),
            verifying_key: *public.verifying_key(),
        });
    }
    let not_after = match args.valid_for {
        Some(ms) => {
            let now = system::now()?;
            Some(UnixMillis::new(now.get().checked_add(ms).ok_or_else(
                || CliError::usage("--valid-for reaches beyond the year 500 million"),
            )?))
        }
        None => None,
    };
    let mut rng = system::rng()?;
    let material = GroupKeyMaterial::generate(
        group,
        Epoch::new(epoch),
        args.alg.aead(),
        signers,
        not_after,
        &mut rng,
    )
    .map_err(|e| {
        CliError::core_hint(
            "cannot create the group key material",
            e,
            "every --signer needs its own entity id and its own sender id",
        )
    })?;
    let bytes = material
        .to_cbor()
        .map_err(|e| CliError::core("cannot encode the group key material", e))?;
    files::write_atomic(out, &bytes, PRIVATE_MODE, overwrite)?;
    print_summary(&material, out);
    Ok(())
}

fn print_summary(material: &GroupKeyMaterial, path: &std::path::Path) {
    say(&format!(
        "wrote {} (group key material, mode 0600)",
        path.display()
    ));
    say(&format!(
        "  group   {}",
        show_id(material.group().as_bytes())
    ));
    say(&format!("  epoch   {}", material.epoch()));
    say(&format!(
        "  alg     {}",
        match material.alg() {
            AeadAlg::A256Gcm => "A256GCM",
            _ => "A128GCM",
        }
    ));
    say(&format!(
        "  expires {}",
        material
            .not_after()
            .map_or_else(|| "never".to_owned(), |t| rfc3339(t.get()))
    ));
    for s in material.signers() {
        say(&format!(
            "  signer  {} sender id {} ed25519 {}",
            s.entity,
            if s.sender_id.as_bytes().is_empty() {
                "''".to_owned()
            } else {
                hex(s.sender_id.as_bytes())
            },
            fingerprint(s.verifying_key.as_bytes())
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn signer_specs() {
        let s = parse_signer("door-gw=keys/a:b.pub:0a01").unwrap();
        assert_eq!(s.entity.as_str(), "door-gw");
        assert_eq!(s.pub_file, PathBuf::from("keys/a:b.pub"));
        assert_eq!(s.sender_id.as_bytes(), &[0x0a, 0x01]);
        assert!(parse_signer("gw=gw.pub:").is_err());
        assert!(parse_signer("gw").is_err());
        assert!(parse_signer("gw=gw.pub").is_err());
        assert!(parse_signer("gw=:01").is_err());
        assert!(parse_signer("g/w=gw.pub:01").is_err());
        assert!(parse_signer("gw=gw.pub:01020304050607").is_err());
        assert!(parse_signer("gw=gw.pub:xy").is_err());
    }
}

//! `sealcast node deactivate|activate|show`: remote transmission control of
//! a field node through a running manager's control socket. The manager
//! saves and audits the order, signs it and sends it end to end to the node
//! (through its agent); the node applies it, keeps it across restarts and
//! acknowledges it. `sealcast node suspend|revoke|reinstate|statuses`
//! change and show the authorization status list.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use sealcast_node::control::{
    KeyRotated, NodeStatus, Removed, Request, StatusAction, StatusChanged, StatusListing, TxAction,
};

use super::group_admin::{Control, ManagerArgs};
use super::say;
use crate::error::{CliError, Result};

/// Remote transmission control of field nodes (devices, gateways).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    Deactivate(ChangeArgs),
    Activate(ChangeArgs),
    Show(ShowArgs),
    Remove(RemoveArgs),
    Suspend(StatusArgs),
    Revoke(StatusArgs),
    Reinstate(StatusArgs),
    Statuses(StatusesArgs),
    RotateKey(RotateKeyArgs),
}

/// Replace an enrolled device's or agent's public key (credential rotation
/// authorised by the operator). It keeps its kind, agent and every group
/// membership; from then on the manager accepts only the new key's
/// signatures and seals key deliveries to the new key only. Then give the
/// node its new private key and restart it. For a key that may be
/// compromised, use `sealcast node revoke` (it also rekeys every group).
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast keygen --id door-2 --out-dir next
  sealcast node rotate-key --config manager.toml --public-key next/door-2.pub
  # then install next/door-2.key as the door's key and restart it")]
pub struct RotateKeyArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The new public key file (`sealcast keygen` wrote it; it names the
    /// entity).
    #[arg(long, value_name = "FILE")]
    public_key: std::path::PathBuf,
}

/// `sealcast node rotate-key`.
pub fn rotate_key(args: &RotateKeyArgs) -> Result<()> {
    // Parsed here too, so a wrong file is named by its path.
    super::load_public_key(&args.public_key)?;
    let bytes = crate::files::read_limited(
        Some(&args.public_key),
        sealcast_core::credential::MAX_CREDENTIAL_FILE_LEN,
        "public key",
    )?;
    let public_key = sealcast_node::control::hex(&bytes);
    let mut control = Control::connect(&args.manager)?;
    let answer: KeyRotated = control.call(&Request::RotateKey { public_key })?;
    say(&format!(
        "rotated the key of {}: still a member of {}",
        answer.node,
        if answer.groups.is_empty() {
            "no group".to_owned()
        } else {
            answer.groups.join(", ")
        }
    ));
    Ok(())
}

/// Authorization status: suspend (every node refuses what it signs; it
/// keeps its memberships and keys, so it can be reinstated), revoke
/// (suspended for good, evicted from every group — each rekeyed — and its
/// enrolment deleted; its id comes back only under a new key) or
/// reinstate (lift a suspension). The manager saves the change, then signs
/// the new status list and sends it to every node, which keeps it across
/// restarts.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sealcast node suspend   --config manager.toml --id sensor-7 --reason \"tampered case\"
  sealcast node reinstate --config manager.toml --id sensor-7
  sealcast node revoke    --config manager.toml --id sensor-7 --reason \"key stolen\"")]
pub struct StatusArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The entity id.
    #[arg(long, value_name = "ID")]
    id: String,
    /// Why (kept in the store and the audit log; at most 500 bytes).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Print the answer as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Show the authorization status list: who is suspended or revoked, since
/// when and why.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast node statuses --config manager.toml")]
pub struct StatusesArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// Print the answer as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `sealcast node suspend|revoke|reinstate`.
pub fn set_status(args: &StatusArgs, action: StatusAction) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let answer: StatusChanged = control.call(&Request::Status {
        node: args.id.clone(),
        action,
        reason: args.reason.clone(),
    })?;
    if args.json {
        return print_json(&answer);
    }
    let status = answer.status.as_deref().unwrap_or("in good standing");
    say(&format!(
        "{} is {status} (status list version {}{})",
        answer.node,
        answer.version,
        if answer.changed {
            ", sent to every node"
        } else {
            ", unchanged"
        }
    ));
    for g in &answer.groups {
        say(&format!("evicted from {} (now epoch {})", g.group, g.epoch));
    }
    Ok(())
}

/// `sealcast node statuses`.
pub fn statuses(args: &StatusesArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let answer: StatusListing = control.call(&Request::Statuses {})?;
    if args.json {
        return print_json(&answer);
    }
    say(&format!(
        "status list version {}: {} listed",
        answer.version,
        answer.listed.len()
    ));
    for l in &answer.listed {
        say(&format!(
            "{:<24} {:<9} since {} ms: {}",
            l.node, l.status, l.since_ms, l.reason
        ));
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let line = serde_json::to_string(value)
        .map_err(|e| CliError::other(format!("cannot print the answer: {e}")))?;
    say(&line);
    Ok(())
}

/// Remove an enrolled entity entirely: it is evicted from every group
/// (each group moves to a fresh key it cannot compute), and its enrolment
/// and transmission order are deleted. Its id can then be enrolled again
/// with a new key (`sealcast group enrol`). An agent that still relays for
/// enrolled devices is refused.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast node remove --config manager.toml --id door-2")]
pub struct RemoveArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The entity id.
    #[arg(long, value_name = "ID")]
    id: String,
}

/// `sealcast node remove`.
pub fn remove(args: &RemoveArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let answer: Removed = control.call(&Request::Remove {
        node: args.id.clone(),
    })?;
    let groups: Vec<String> = answer
        .groups
        .iter()
        .map(|g| format!("{} (now epoch {})", g.group, g.epoch))
        .collect();
    say(&format!(
        "removed {}: evicted from {}; enrolment deleted",
        answer.node,
        if groups.is_empty() {
            "no group".to_owned()
        } else {
            groups.join(", ")
        }
    ));
    Ok(())
}

/// Tell a node to stop (deactivate) or resume (activate) sending: all of
/// it, or the named kinds. It keeps receiving, installing keys and
/// acknowledging either way.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sealcast node deactivate --config manager.toml --id sensor-1                 # everything
  sealcast node deactivate --config manager.toml --id gateway --kind command:fire-doors
  sealcast node activate   --config manager.toml --id gateway --wait 10       # all, and wait for the ack")]
pub struct ChangeArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The node's entity id.
    #[arg(long, value_name = "ID")]
    id: String,
    /// What to stop or resume: all, alert, command, or <kind>:<group>
    /// (e.g. command:fire-doors). Repeat for several. None: everything.
    #[arg(long, value_name = "KIND")]
    kind: Vec<String>,
    /// Wait up to this many seconds for the node's acknowledgement (0:
    /// return once the manager sent the order).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    wait: u64,
    /// Print the answer as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Show a node's transmission state: what it must not send, and whether it
/// acknowledged the order.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  sealcast node show --config manager.toml --id sensor-1")]
pub struct ShowArgs {
    #[command(flatten)]
    manager: ManagerArgs,
    /// The node's entity id.
    #[arg(long, value_name = "ID")]
    id: String,
    /// Print the answer as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `sealcast node deactivate` / `activate`.
pub fn change(args: &ChangeArgs, action: TxAction) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let mut status: NodeStatus = control.call(&Request::Transmission {
        node: args.id.clone(),
        action,
        scopes: args.kind.clone(),
    })?;
    if args.wait > 0 && !status.acked {
        let deadline = Instant::now() + Duration::from_secs(args.wait);
        while !status.acked {
            if Instant::now() >= deadline {
                print(&status, args.json)?;
                return Err(CliError::other(format!(
                    "{} did not acknowledge order version {} within {} s; the manager keeps re-sending it (check that the node runs and reaches the broker; `sealcast node show --id {}`)",
                    status.node,
                    status.version.unwrap_or(0),
                    args.wait,
                    status.node
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
            let changed = status.changed;
            status = control.call(&Request::Node {
                node: args.id.clone(),
            })?;
            status.changed = changed;
        }
    }
    print(&status, args.json)
}

/// `sealcast node show`.
pub fn show(args: &ShowArgs) -> Result<()> {
    let mut control = Control::connect(&args.manager)?;
    let status: NodeStatus = control.call(&Request::Node {
        node: args.id.clone(),
    })?;
    print(&status, args.json)
}

fn print(status: &NodeStatus, json: bool) -> Result<()> {
    if json {
        return print_json(status);
    }
    say(&format!(
        "node     {} ({})",
        status.node,
        status.kind.as_str()
    ));
    if let Some(t) = &status.token {
        say(&format!(
            "token    {}: {}, issued {} s, valid until {} s (Unix time); renewed at half its lifetime",
            t.id, t.grants, t.issued_at, t.expires
        ));
    }
    let Some(version) = status.version else {
        say("order    none: it sends everything");
        return Ok(());
    };
    say(&format!(
        "order    version {version}{}",
        if status.changed { " (new)" } else { "" }
    ));
    say(&format!(
        "stopped  {}",
        if status.stopped.is_empty() {
            "nothing: it sends everything".to_owned()
        } else {
            status.stopped.join(", ")
        }
    ));
    say(&format!(
        "acked    {}",
        if status.acked {
            "yes".to_owned()
        } else {
            format!(
                "not yet (last acknowledged: {}); the manager re-sends the order until it is",
                status
                    .acked_version
                    .map_or_else(|| "none".to_owned(), |v| format!("version {v}"))
            )
        }
    ));
    Ok(())
}

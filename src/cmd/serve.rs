//! `sealcast manager serve`, `sealcast agent serve`, `sealcast device run`
//! and `sealcast device send`: the sealcast-node runtimes as long-running
//! services, each configured by a TOML file.
//!
//! Relative paths in a config file are relative to the file's directory.
//! Logs go to standard error (tracing; `RUST_LOG` filters, default `info`)
//! and never contain key bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_core::target::{GroupChannel, TopicScheme};
use sealcast_group::manager::{EntityKind, Manager, RekeyScheme, Role};
use sealcast_node::device::{
    self, CommandHandler, LogHandler, NodeConfig, ReplayPolicies, Rule, VerifiedCommand,
};
// The names in config files are the control protocol's: one vocabulary.
use sealcast_node::control::{KindName, RoleName, SchemeName};
use sealcast_node::link::LinkConfig;
use sealcast_store::{AuditLog, DeviceStateFile, Kek, ManagerStore, PgStore, SqliteStore};
use serde::Deserialize;
use tracing::{info, warn};

use crate::cmd::{load_private_key, load_public_key, say};
use crate::error::{CliError, Result};

mod manager;
pub mod metering;
pub mod metrics;
pub mod node;
pub(crate) mod transport;

pub use manager::{control_socket_path, manager};
use node::node_config;
pub use node::{agent, device_run, device_send};

pub(crate) use transport::{
    BearerReload, CoapSection, OneM2mSection, TransportName, bearer_devices, bearer_role,
    broker_security, broker_url, link_config,
};

/// The group manager service.
#[derive(Debug, Subcommand)]
pub enum ManagerCommand {
    /// Run the group manager: enrolment, key delivery, acks, pulls and
    /// re-sends over MQTT or CoAP, with its store and audit log. Seeds the
    /// store from the config's enrolments and groups on the first start;
    /// afterwards the store is the authority (new enrolments and groups are
    /// added, recorded evictions and rekeys are never undone). Stops on
    /// Ctrl-C or SIGTERM.
    ///
    /// Every setting of manager.toml: `sealcast manager config-template`.
    ///
    /// Example: sealcast manager serve --config manager.toml
    Serve(ServeArgs),
    /// Print a commented manager.toml with every setting, its default and
    /// what it is for.
    ///
    /// Example: sealcast manager config-template > manager.toml
    ConfigTemplate,
}

/// The gateway agent service.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run a gateway agent: relays key material to its devices and, by its
    /// rules, answers verified alerts of one group with signed commands to
    /// other groups.
    ///
    /// Every setting of agent.toml: `sealcast agent config-template`
    /// (`--dap` for a Data Aggregation Point).
    ///
    /// Example: sealcast agent serve --config agent.toml
    Serve(ServeArgs),
    /// Print a commented agent.toml (gateway, or with --dap a Data
    /// Aggregation Point) with every setting and its default.
    ///
    /// Example: sealcast agent config-template > agent.toml
    ConfigTemplate(AgentTemplateArgs),
    /// Show the access-control token this gateway holds (from its state
    /// directory, verified with the manager's key): what it grants and
    /// until when.
    ///
    /// Example: sealcast agent token --config agent.toml --json
    Token(node::TokenArgs),
}

/// Arguments of `sealcast agent config-template`.
#[derive(Debug, Args)]
pub struct AgentTemplateArgs {
    /// The template of a smart-metering Data Aggregation Point.
    #[arg(long)]
    pub dap: bool,
}

/// Arguments of `sealcast device config-template`.
#[derive(Debug, Args)]
pub struct DeviceTemplateArgs {
    /// The template of a meter (`sealcast device report`).
    #[arg(long)]
    pub meter: bool,
}

/// The device service and one-shot device tools.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Run a device: installs its keys, follows rekeys, opens the commands
    /// of its groups and executes them (logs them; --exec-log also appends
    /// them to a file). Its key state, replay windows and sequence
    /// reservations persist in its state directory.
    ///
    /// Every setting of door-1.toml: `sealcast device config-template`.
    ///
    /// Example: sealcast device run --config door-1.toml --exec-log door-1.exec
    Run(RunArgs),
    /// Print a commented device config (or with --meter a meter's) with
    /// every setting and its default.
    ///
    /// Example: sealcast device config-template > door-1.toml
    ConfigTemplate(DeviceTemplateArgs),
    /// Seal and publish one alert as this device, with the keys and the
    /// sequence reservation of its state directory. It first asks the
    /// manager for the group's current key material (and installs a newer
    /// epoch); without the manager's answer within --wait seconds it sends
    /// nothing and exits 1. It locks the device's state file, so it refuses
    /// (exit 1, naming the file and the holder's pid) while 'device run' of
    /// the same device runs: stop that first.
    ///
    /// Example: sealcast device send --config sensor-1.toml --group fire-sensors --alert smoke
    Send(SendArgs),
    /// Seal and publish a meter reading for the headend through the
    /// meter's DAP (encrypted for the headend, signed by the meter), with
    /// the sequence reservation of its state directory.
    ///
    /// Example: sealcast device report --config meter-1.toml --reading "1042 kWh"
    Report(metering::ReportArgs),
    /// Run a meter's downlink listener: installs the meter group key its
    /// DAP relays from the headend, applies each newer configuration the
    /// headend broadcasts (saved first), and confirms each through the DAP
    /// in an ordinary report. Forged, replayed and older commands change
    /// nothing. Stops on Ctrl-C or SIGTERM.
    ///
    /// Example: sealcast device listen --config meter-1.toml
    Listen(ServeArgs),
    /// Show the configuration this meter applied (from its state
    /// directory).
    ///
    /// Example: sealcast device meter-config --config meter-1.toml --json
    MeterConfig(metering::MeterConfigArgs),
    /// Show this meter's security association with its headend: its epoch
    /// (0: the static key from enrolment), or that the headend removed it.
    ///
    /// Example: sealcast device sa --config meter-1.toml --json
    Sa(metering::MeterConfigArgs),
    /// Show the transmission order this meter holds from its headend:
    /// whether it may send readings.
    ///
    /// Example: sealcast device transmission --config meter-1.toml --json
    Transmission(metering::MeterConfigArgs),
    /// Show the access-control token this device holds (from its state
    /// directory, verified with the manager's key): what it grants and
    /// until when.
    ///
    /// Example: sealcast device token --config sensor-1.toml
    Token(node::TokenArgs),
}

/// The smart-metering headend service.
#[derive(Debug, Subcommand)]
pub enum HeadendCommand {
    /// Run the headend: accepts its DAPs' announcements and signed report
    /// batches, decrypts every reading end to end (replay windows per DAP
    /// and per meter persist in its state directory), logs the readings
    /// (--readings also appends them to a file).
    ///
    /// Every setting of headend.toml: `sealcast headend config-template`.
    ///
    /// Example: sealcast headend serve --config headend.toml --readings readings.log
    Serve(metering::HeadendServeArgs),
    /// Re-configure every meter at once (the downlink): hands the new
    /// configuration (NAME=VALUE settings, replacing the previous ones
    /// whole) to the running headend, which issues it as the next version,
    /// broadcasts it signed-then-encrypted under the meter group's key
    /// through its DAPs (they relay it unread) and sends it again until
    /// every meter confirmed. Needs a `[downlink]` section in headend.toml.
    ///
    /// Example: sealcast headend configure-meters --config headend.toml --set report_interval_s=900
    ConfigureMeters(metering::ConfigureMetersArgs),
    /// Show the meter group's key epoch, the configuration in force and
    /// what each meter confirmed.
    ///
    /// Example: sealcast headend meter-config --config headend.toml --json
    MeterConfig(metering::MeterConfigArgs),
    /// The meters' security associations (the pairwise keys their reports
    /// are encrypted under): show, refresh, remove, establish. Changes go
    /// to the running headend and to each meter through its DAP; they need
    /// a `[downlink]` section and the meters' listeners.
    ///
    /// Example: sealcast headend sa refresh --config headend.toml --meter meter-1
    #[command(subcommand)]
    Sa(metering::SaCommand),
    /// Stop meters from reporting (remote transmission control): a signed
    /// order per meter, saved, sent through its DAP (which cannot forge
    /// it) until the meter acknowledges; the meter keeps listening, so it
    /// follows rekeys and can be re-activated, and the headend drops any
    /// reading of it meanwhile. Needs `[downlink]` and the meters' listeners.
    ///
    /// Example: sealcast headend deactivate --config headend.toml --meter meter-1
    Deactivate(metering::MeterTxArgs),
    /// Let deactivated meters report again (a newer order).
    ///
    /// Example: sealcast headend activate --config headend.toml --meter meter-1
    Activate(metering::MeterTxArgs),
    /// Show each meter's transmission order and whether it acknowledged it.
    ///
    /// Example: sealcast headend transmission --config headend.toml --json
    Transmission(metering::MeterConfigArgs),
    /// Print a commented headend.toml with every setting and its default.
    ///
    /// Example: sealcast headend config-template > headend.toml
    ConfigTemplate,
}

/// `--config` of the services.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Arguments of `sealcast device run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The device's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Also append one line per executed command to this file
    /// (`group=<text> signer=<id> payload=<text>`).
    #[arg(long, value_name = "FILE")]
    pub exec_log: Option<PathBuf>,
}

/// Arguments of `sealcast device send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The device's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The group (its id as text), which the device must be a sender of.
    #[arg(long, value_name = "GROUP")]
    pub group: String,
    /// The alert's text.
    #[arg(long, value_name = "TEXT")]
    pub alert: String,
    /// How long to wait for the manager to confirm the current key
    /// material before giving up without sending.
    #[arg(long, value_name = "SECONDS", default_value_t = device::DEFAULT_CONFIRM_WAIT.as_secs())]
    pub wait: u64,
}

/// `manager.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagerFile {
    /// MQTT broker URL (with `transport = "mqtt"`, the default).
    #[serde(default)]
    broker: String,
    /// `"mqtt"` (default), `"coap"` or `"onem2m"`.
    transport: Option<TransportName>,
    /// The CoAP endpoint, group and address book (with `transport = "coap"`).
    coap: Option<CoapSection>,
    /// The CSEs (with `transport = "onem2m"`).
    onem2m: Option<OneM2mSection>,
    topic_prefix: Option<String>,
    /// PEM file of the CA the broker's certificate chains to (with an
    /// `mqtts://` broker).
    tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (keep it 0600).
    tls_key: Option<PathBuf>,
    /// MQTT username.
    username: Option<String>,
    /// File whose first line is the MQTT password (else
    /// `SEALCAST_BROKER_PASSWORD`).
    password_file: Option<PathBuf>,
    key: PathBuf,
    state_dir: PathBuf,
    /// SQLite database (default `<state_dir>/manager.db`).
    sqlite: Option<PathBuf>,
    /// PostgreSQL URL: use it instead of SQLite.
    postgres: Option<String>,
    /// The PostgreSQL schema the store's tables live in (created if
    /// missing; default: the first of the connection's search_path).
    postgres_schema: Option<String>,
    /// The key-encryption key file (created, 0600, if missing).
    kek: PathBuf,
    /// Audit log (default `<state_dir>/audit.jsonl`).
    audit_log: Option<PathBuf>,
    /// The control socket of `sealcast group …` (default
    /// `<state_dir>/manager.sock`).
    control_socket: Option<PathBuf>,
    /// Where to serve `/metrics` and `/health` (none by default).
    metrics_listen: Option<std::net::SocketAddr>,
    /// MQTT client id (default: `<topic_prefix>:<manager id>`): set it when
    /// two managers of one PostgreSQL store share a broker.
    mqtt_client_id: Option<String>,
    /// Ceiling of the per-member re-send backoff, in seconds (default 600).
    #[serde(default = "default_resend_max_interval_s")]
    resend_max_interval_s: u64,
    /// Most re-sends per re-send round (default 1000).
    #[serde(default = "default_resend_max_per_round")]
    resend_max_per_round: usize,
    #[serde(default)]
    enrol: Vec<EnrolEntry>,
    #[serde(default)]
    group: Vec<GroupEntry>,
    /// The misbehaviour policy over agents' reports (none: reports are
    /// audited, nothing is done).
    #[serde(default)]
    misbehaviour: Vec<MisbehaviourEntry>,
    /// Who may administer this manager through its control socket
    /// (`[[admin_acp]]`: originators are operating-system users, by name or
    /// `uid:N`; operations those of `sealcast group|node …`). None: only
    /// the socket's owner, for everything.
    #[serde(default)]
    admin_acp: Vec<AcpEntry>,
    /// The control socket's mode: `"600"` (default), `"660"` or `"666"`
    /// (the last two need `[[admin_acp]]`).
    control_socket_mode: Option<String>,
    /// The control socket's group (a name or a number; default the
    /// manager's).
    control_socket_group: Option<String>,
    /// Access-control tokens the manager issues and renews
    /// (`[[access_token]]`; none: no tokens).
    #[serde(default)]
    access_token: Vec<TokenEntry>,
}

/// One `[[access_token]]` of `manager.toml`: what one entity's token grants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenEntry {
    /// The holder (an enrolled device or gateway).
    entity: String,
    /// Groups the grant covers (`"*"`: every group).
    groups: Vec<String>,
    /// Operations: a command's first word (`unlock`), `alert`, or `"*"`.
    operations: Vec<String>,
    /// Each token's lifetime in seconds (default 3600; renewed at half).
    lifetime_s: Option<u64>,
}

impl TokenEntry {
    pub(super) fn grant(&self, i: usize) -> Result<sealcast_node::manager::TokenGrant> {
        use sealcast_group::token::{Grant, MAX_GRANTS, valid_operation};
        let bad =
            |what: String| CliError::usage(format!("[[access_token]] number {}: {what}", i + 1));
        if self.groups.is_empty() || self.groups.len() > MAX_GRANTS {
            return Err(bad(format!(
                "groups: 1 to {MAX_GRANTS} (\"*\" for every group)"
            )));
        }
        let operations: Vec<String> = self
            .operations
            .iter()
            .map(|o| o.to_ascii_lowercase())
            .collect();
        if operations.is_empty() || !operations.iter().all(|o| valid_operation(o)) {
            return Err(bad(
                "operations: 1 to 32, each \"*\" or a command's first word (letters, digits, - and _)".into(),
            ));
        }
        let scope = self
            .groups
            .iter()
            .map(|g| {
                Ok(Grant {
                    group: if g == "*" { None } else { Some(group_id(g)?) },
                    operations: operations.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lifetime = std::time::Duration::from_secs(self.lifetime_s.unwrap_or(3600));
        if lifetime < sealcast_node::manager::MIN_TOKEN_LIFETIME {
            return Err(bad(format!(
                "lifetime_s: at least {} s",
                sealcast_node::manager::MIN_TOKEN_LIFETIME.as_secs()
            )));
        }
        Ok(sealcast_node::manager::TokenGrant {
            entity: entity(&self.entity).map_err(|e| bad(e.to_string()))?,
            scope,
            lifetime,
        })
    }
}

/// One `[[misbehaviour]]` rule of `manager.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MisbehaviourEntry {
    /// `flood`, `policy`, `listed-signer`, `forgery` or `replay`.
    evidence: String,
    /// Events about one entity within the window that trigger the action.
    threshold: u64,
    /// The window, in seconds.
    window_s: u64,
    /// `suspend` or `revoke`.
    action: String,
}

impl MisbehaviourEntry {
    pub(super) fn rule(&self) -> Result<sealcast_group::status::PolicyRule> {
        use sealcast_group::status::{Evidence, PolicyRule, Status};
        let evidence = Evidence::parse(&self.evidence).ok_or_else(|| {
            CliError::usage(format!(
                "[[misbehaviour]] evidence {:?}: use flood, policy, listed-signer, implausible, forgery or replay",
                self.evidence
            ))
        })?;
        let action = Status::parse(&self.action).ok_or_else(|| {
            CliError::usage(format!(
                "[[misbehaviour]] action {:?}: use suspend or revoke",
                self.action
            ))
        })?;
        if !evidence.attributable() && action == Status::Revoked {
            return Err(CliError::usage(format!(
                "[[misbehaviour]] evidence {evidence} with action revoke: {evidence} names a claimed sender that any group member can forge, so it cannot revoke anyone; use flood, policy, listed-signer or implausible, or action suspend"
            )));
        }
        if self.threshold == 0 || self.window_s == 0 {
            return Err(CliError::usage(
                "[[misbehaviour]] threshold and window_s must be at least 1",
            ));
        }
        Ok(PolicyRule {
            evidence,
            threshold: self.threshold,
            window_ms: self.window_s.saturating_mul(1000),
            action,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolEntry {
    id: String,
    kind: KindName,
    public_key: PathBuf,
    agent: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    id: String,
    scheme: SchemeName,
    #[serde(default)]
    members: Vec<MemberEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    id: String,
    role: RoleName,
}

/// `agent.toml` and `device.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    /// MQTT broker URL (with `transport = "mqtt"`, the default).
    #[serde(default)]
    broker: String,
    /// `"mqtt"` (default), `"coap"` or `"onem2m"`.
    transport: Option<TransportName>,
    /// The CoAP endpoint, group and address book (with `transport = "coap"`).
    coap: Option<CoapSection>,
    /// The CSEs (with `transport = "onem2m"`).
    onem2m: Option<OneM2mSection>,
    topic_prefix: Option<String>,
    /// PEM file of the CA the broker's certificate chains to (with an
    /// `mqtts://` broker).
    tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (keep it 0600).
    tls_key: Option<PathBuf>,
    /// MQTT username.
    username: Option<String>,
    /// File whose first line is the MQTT password (else
    /// `SEALCAST_BROKER_PASSWORD`).
    password_file: Option<PathBuf>,
    key: PathBuf,
    manager_public_key: PathBuf,
    state_dir: PathBuf,
    /// Devices whose deliveries an agent relays.
    #[serde(default)]
    relays_for: Vec<String>,
    /// Groups this node only sends to (a sensor in the sensors' group): it
    /// keeps their keys but does not receive their commands and alerts.
    #[serde(default)]
    send_only: Vec<String>,
    #[serde(default)]
    rule: Vec<RuleEntry>,
    /// Warn once when no key material arrived this many seconds after
    /// start (0: never).
    #[serde(default = "default_no_key_warning_s")]
    no_key_material_warning_s: u64,
    /// Largest accepted |timestamp − now| of a command or alert, in seconds,
    /// on top of the sequence window (0: no age bound).
    #[serde(default = "default_command_max_age_s")]
    command_max_age_s: u64,
    /// Per-group freshness rules.
    #[serde(default)]
    group_policy: Vec<GroupPolicyEntry>,
    /// Where to serve `/metrics` and `/health` (none by default).
    metrics_listen: Option<std::net::SocketAddr>,
    /// Who may order what (`[[acp]]`; none: everything a group's signers
    /// send is executed).
    #[serde(default)]
    acp: Vec<AcpEntry>,
    /// Whether a signer's access-control token (issued by the manager) can
    /// permit a command or alert the `[[acp]]` rules do not (default
    /// false). With it and no rules, only what a valid token grants runs.
    #[serde(default)]
    accept_access_tokens: bool,
    /// The audit log (default `<state_dir>/audit.jsonl`).
    audit_log: Option<PathBuf>,
    /// Rotate the audit log at this many KiB (default 16384).
    audit_max_kib: Option<u64>,
    /// Rotated audit segments kept (default 8).
    audit_keep: Option<usize>,
    /// A DAP's `[dap]` section (read by `metering`).
    #[serde(default, rename = "dap")]
    _dap: Option<toml::Value>,
    /// The rate cap per signer and misbehaviour reports (`[misbehaviour]`).
    misbehaviour: Option<NodeMisbehaviour>,
}

/// `[misbehaviour]` of a node's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeMisbehaviour {
    /// Verified messages one signer may send per minute; more are refused
    /// and reported as `flood` (0 or absent: no cap).
    #[serde(default)]
    max_messages_per_sender_per_minute: u32,
    /// Evidence is sent to the manager at most this often (agents; default
    /// 2000 ms).
    report_interval_ms: Option<u64>,
    /// Whether an agent reports (default true; devices never do).
    report: Option<bool>,
}

/// One `[[acp]]` rule of a node's config (`sealcast_group::acp`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcpEntry {
    /// `"permit"` (default) or `"deny"`.
    effect: Option<String>,
    /// Signer ids; `"*"` everyone, `"prefix*"` ids starting with it.
    originators: Vec<String>,
    /// Operations: a command's first word (`unlock`), `alert`, or `"*"`.
    operations: Vec<String>,
    /// Groups (default: any).
    #[serde(default)]
    groups: Vec<String>,
    /// `"HH-HH"`, UTC, end exclusive (`"22-06"` wraps).
    hours: Option<String>,
}

/// Parses `"HH-HH"` (UTC hours, the end exclusive, 0..=24).
pub(crate) fn parse_hours(text: &str) -> std::result::Result<(u8, u8), String> {
    let hour = |t: &str| {
        t.trim()
            .parse::<u8>()
            .ok()
            .filter(|h| *h <= 24)
            .ok_or_else(|| format!("hours {text:?}: each hour is 0 to 24"))
    };
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("hours {text:?}: write \"HH-HH\" (UTC), e.g. \"06-22\""))?;
    Ok((hour(a)?, hour(b)?))
}

/// The access-control policy of a node config's `[[acp]]` rules.
fn access_policy(entries: &[AcpEntry]) -> Result<sealcast_group::acp::AccessPolicy> {
    access_policy_of(entries, "[[acp]]")
}

/// The operations of the manager's administration (`[[admin_acp]]`).
pub(crate) const ADMIN_OPERATIONS: &[&str] = &[
    "enrol",
    "create",
    "add",
    "evict",
    "rekey",
    "show",
    "list",
    "deactivate",
    "activate",
    "node",
    "remove",
    "suspend",
    "revoke",
    "reinstate",
    "statuses",
    "rotate-key",
];

/// The manager's administration policy of its `[[admin_acp]]` rules.
fn admin_policy(entries: &[AcpEntry]) -> Result<sealcast_group::acp::AccessPolicy> {
    for (i, e) in entries.iter().enumerate() {
        if let Some(op) = e
            .operations
            .iter()
            .find(|o| *o != "*" && !ADMIN_OPERATIONS.contains(&o.to_ascii_lowercase().as_str()))
        {
            return Err(CliError::usage(format!(
                "[[admin_acp]] number {}: operation {op:?}: use \"*\" or {}",
                i + 1,
                ADMIN_OPERATIONS.join(", ")
            )));
        }
    }
    access_policy_of(entries, "[[admin_acp]]")
}

fn access_policy_of(
    entries: &[AcpEntry],
    section: &str,
) -> Result<sealcast_group::acp::AccessPolicy> {
    use sealcast_group::acp::{AccessPolicy, AccessRule, Effect};
    let rules = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let bad = |what: String| CliError::usage(format!("{section} number {}: {what}", i + 1));
            let effect = match e.effect.as_deref() {
                None | Some("permit") => Effect::Permit,
                Some("deny") => Effect::Deny,
                Some(other) => {
                    return Err(bad(format!("effect {other:?}: use \"permit\" or \"deny\"")));
                }
            };
            Ok(AccessRule {
                effect,
                originators: e.originators.clone(),
                operations: e
                    .operations
                    .iter()
                    .map(|o| o.to_ascii_lowercase())
                    .collect(),
                groups: e
                    .groups
                    .iter()
                    .map(|g| group_id(g))
                    .collect::<Result<_>>()?,
                hours: e
                    .hours
                    .as_deref()
                    .map(parse_hours)
                    .transpose()
                    .map_err(bad)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    AccessPolicy::new(rules).map_err(|e| CliError::usage(format!("{section}: {e}")))
}

/// The audit log settings of a service: `audit_log` (relative to the
/// config's directory; default `<state_dir>/<default_name>`),
/// `audit_max_kib` (default 16384) and `audit_keep` (default 8).
fn audit_config(
    base: &Path,
    state_dir: &Path,
    default_name: &str,
    log: Option<&Path>,
    max_kib: Option<u64>,
    keep: Option<usize>,
) -> Result<sealcast_node::audit::AuditConfig> {
    let path = log.map_or_else(|| state_dir.join(default_name), |p| resolve(base, p));
    let mut config = sealcast_node::audit::AuditConfig::new(path);
    if let Some(kib) = max_kib {
        if !(4..=1 << 30).contains(&kib) {
            return Err(CliError::usage("audit_max_kib must be 4..=1073741824"));
        }
        config.rotation.max_bytes = kib << 10;
    }
    if let Some(keep) = keep {
        if keep == 0 || keep > sealcast_store::audit::MAX_SEGMENTS {
            return Err(CliError::usage(format!(
                "audit_keep must be 1..={}",
                sealcast_store::audit::MAX_SEGMENTS
            )));
        }
        config.rotation.keep = keep;
    }
    Ok(config)
}

fn default_no_key_warning_s() -> u64 {
    60
}

fn default_resend_max_interval_s() -> u64 {
    600
}

fn default_resend_max_per_round() -> usize {
    1000
}

fn default_command_max_age_s() -> u64 {
    300
}

/// `[[group_policy]]` of a node config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupPolicyEntry {
    group: String,
    /// `sequence` (default) or `timestamp`.
    #[serde(default)]
    replay: ReplayName,
    /// Sequence: the age bound in seconds (0: none). Timestamp: the skew.
    max_age_s: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReplayName {
    #[default]
    Sequence,
    Timestamp,
}

/// The freshness rules a node config asks for.
fn replay_policies(config: &NodeFile) -> Result<ReplayPolicies> {
    use sealcast_core::broadcast::ReplayPolicy;
    use sealcast_core::replay::SeqWindow;
    let sequence = |age_s: u64| ReplayPolicy::Sequence {
        window: SeqWindow::DEFAULT_SIZE,
        max_skew_ms: (age_s > 0).then(|| age_s.saturating_mul(1000)),
    };
    let mut policies = ReplayPolicies {
        default: sequence(config.command_max_age_s),
        groups: BTreeMap::new(),
    };
    for p in &config.group_policy {
        let group = group_id(&p.group)?;
        let policy = match p.replay {
            ReplayName::Sequence => sequence(p.max_age_s.unwrap_or(config.command_max_age_s)),
            ReplayName::Timestamp => {
                let skew_s = p.max_age_s.unwrap_or(30);
                if skew_s == 0 {
                    return Err(CliError::usage(format!(
                        "group_policy {}: a timestamp policy needs max_age_s > 0 (its skew)",
                        p.group
                    )));
                }
                ReplayPolicy::Timestamp {
                    skew_ms: skew_s.saturating_mul(1000),
                    max_entries: 100_000,
                }
            }
        };
        if policies.groups.insert(group, policy).is_some() {
            return Err(CliError::usage(format!(
                "group_policy {} appears twice",
                p.group
            )));
        }
    }
    Ok(policies)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    on_alert_from: String,
    then_command: String,
    payload: String,
}

fn read_config<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, PathBuf)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::io("read config file", path, e))?;
    let config = toml::from_str(&text).map_err(|e| {
        // A missing field has no line of its own: toml points at the start
        // of the table that lacks it (line 1 for a top-level setting), which
        // reads as if line 1 were wrong. Say what is missing instead.
        let message = e.message();
        if message.starts_with("missing field") {
            let table = match e.span() {
                Some(span) if span.start > 0 => text
                    .get(span.start..)
                    .and_then(|rest| rest.lines().next())
                    .map_or_else(|| "a table".to_owned(), |l| format!("table {}", l.trim())),
                _ => "the top level".to_owned(),
            };
            return CliError::usage(format!(
                "{}: {message} (in {table}); add it — `--help` of the command lists the settings",
                path.display()
            ));
        }
        CliError::usage(format!(
            "{}: {}",
            path.display(),
            crate::error::one_line(&e.to_string())
        ))
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((config, base))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn entity(text: &str) -> Result<EntityId> {
    EntityId::new(text).map_err(|e| CliError::usage(format!("entity id {text:?}: {e}")))
}

fn group_id(text: &str) -> Result<GroupId> {
    GroupId::new(text.as_bytes()).map_err(|e| CliError::usage(format!("group id {text:?}: {e}")))
}

fn topics(prefix: Option<&str>) -> Result<TopicScheme> {
    match prefix {
        None => Ok(TopicScheme::new()),
        Some(p) => TopicScheme::with_prefix(p)
            .map_err(|e| CliError::usage(format!("topic_prefix {p:?}: {e}"))),
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::other(format!("{what}: {e}"))
}

/// The log level `-v`/`-q` ask for (`info` without them); `RUST_LOG`, when
/// set, wins.
pub static LOG_LEVEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

pub(crate) fn init_logs() {
    let level = LOG_LEVEL.get().copied().unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Every service and service command starts here: the clock is checked
/// first (one rule with the CLI's commands: a clock before 1970 is refused
/// at start-up, see `sealcast_node::runtime::checked_now`), then the async
/// runtime starts.
fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::system::now()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("cannot start the async runtime", e))
}

/// Creates a state directory (and missing parents) owner-only: it holds key
/// state, and the manager's control socket refuses a directory others may
/// write to. An existing directory keeps its mode.
fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError::io("create directory", dir, e))
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM: every service stops the same way
/// on both — finish the message in hand, persist, remove its socket and
/// release its locks, log one line, exit 0.
pub(crate) async fn wait_for_stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| failed("cannot listen for SIGTERM", e))?;
    let name = tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.map_err(|e| failed("cannot listen for Ctrl-C", e))?;
            "Ctrl-C"
        }
        _ = term.recv() => "SIGTERM",
    };
    info!("{name}: stopping after the message in hand");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod template_tests {
    use super::*;
    use crate::cmd::templates;

    /// Every template parses as the config its service reads (unknown keys
    /// are refused there, so a stale template would fail here).
    #[test]
    fn every_template_is_a_valid_config() {
        let _: ManagerFile = toml::from_str(templates::MANAGER).unwrap();
        let node: NodeFile = toml::from_str(templates::NODE).unwrap();
        assert!(replay_policies(&node).is_ok());
        let _: metering::HeadendFile = toml::from_str(templates::HEADEND).unwrap();
        let _: metering::AgentFile = toml::from_str(templates::DAP).unwrap();
        let _: metering::MeterFile = toml::from_str(templates::METER).unwrap();
    }
}

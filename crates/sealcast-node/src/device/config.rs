//! What a node is given: its config, its rules, what it does with a
//! verified command, and its replay policies.

use super::*;

/// What a device does with a verified command. The default logs it.
pub trait CommandHandler: Send + Sync {
    /// Called once per verified command, after the replay window committed.
    fn execute(&self, command: &VerifiedCommand<'_>);
}

/// One verified command, as a [`CommandHandler`] receives it.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct VerifiedCommand<'a> {
    /// The device executing it.
    pub device: &'a EntityId,
    /// The group it was broadcast to.
    pub group: &'a GroupId,
    /// Who signed it.
    pub signer: &'a EntityId,
    /// The signer's sequence number (unique per group, epoch and signer).
    pub seq: u64,
    /// The decrypted command: log it at DEBUG at most.
    pub payload: &'a [u8],
}

impl core::fmt::Debug for VerifiedCommand<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VerifiedCommand")
            .field("device", self.device)
            .field("group", &self.group.name())
            .field("signer", self.signer)
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Logs every command.
#[derive(Debug, Default)]
pub struct LogHandler;

impl CommandHandler for LogHandler {
    fn execute(&self, c: &VerifiedCommand<'_>) {
        // The decrypted command is what the encryption protects: its bytes
        // only at DEBUG.
        info!(device = %c.device, group = %c.group.name(), signer = %c.signer, seq = c.seq, len = c.payload.len(), "executing command");
        debug!(device = %c.device, group = %c.group.name(), command = %String::from_utf8_lossy(c.payload), "command content");
    }
}

/// A gateway rule: an alert verified from `on_alert_from` makes the gateway
/// broadcast `command` to `then_command`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The group whose alerts trigger the rule.
    pub on_alert_from: GroupId,
    /// The group to command.
    pub then_command: GroupId,
    /// The command payload.
    pub command: Vec<u8>,
}

/// Configuration of one field node.
pub struct NodeConfig {
    /// Its credential.
    pub credential: EntityCredential,
    /// The manager it trusts.
    pub manager: PublicCredential,
    /// The transport: an MQTT broker, or CoAP endpoints and a group.
    pub link: LinkConfig,
    /// Topic scheme.
    pub topics: TopicScheme,
    /// Gateway rules (empty for a plain device).
    pub rules: Vec<Rule>,
    /// Devices whose deliveries this node relays (a gateway): it subscribes
    /// to them (MQTT) or forwards them (CoAP), and proves it cannot open
    /// them.
    pub relays_for: Vec<EntityId>,
    /// Groups this node only sends to (a fire sensor in the sensors'
    /// group): it keeps their keys current (join notices, tree rekeys) but
    /// does not receive their commands and alerts — on MQTT it does not
    /// subscribe to them, elsewhere it acknowledges them unopened. Empty:
    /// it receives every group it holds a key of.
    pub send_only: std::collections::BTreeSet<GroupId>,
    /// The command handler.
    pub handler: Arc<dyn CommandHandler>,
    /// Where to report events.
    pub events: EventSink,
    /// Where to persist key state, replay windows and sequence reservations
    /// (None: in memory only, as in the demos). Restored at start.
    pub state_file: Option<DeviceStateFile>,
    /// Warn once when the node still holds no key material this long after
    /// it started (None: never): the usual causes are a wrong broker,
    /// topic prefix or manager key, or a missing enrolment.
    pub no_key_warning: Option<std::time::Duration>,
    /// How the node decides that a command or alert is fresh, per group.
    pub replay: ReplayPolicies,
    /// Its audit log (None: none, as in the demos).
    pub audit: Option<crate::audit::AuditConfig>,
    /// Who may order what (`sealcast_group::acp`): applied to every command
    /// before it is executed and every alert before a rule fires on it.
    /// Empty: everything a group's signers send is executed, as before.
    pub access: sealcast_group::acp::AccessPolicy,
    /// Whether a command (or alert) the policy does not permit is executed
    /// on the strength of the signer's access-control token
    /// (`sealcast_group::token`, validated offline with the manager's key).
    /// With it and no rules, only what a valid token grants is executed.
    pub accept_access_tokens: bool,
    /// The rate cap per signer and, on an agent, misbehaviour reports to
    /// the manager.
    pub misbehaviour: super::MisbehaviourWatch,
    /// At most this many queued commands or alerts of one group are opened
    /// as one burst ([`super::BURST_MAX`] by default; 1 opens every message
    /// alone). Bursts form only from what already waits in the queue.
    pub max_burst: usize,
}

/// The freshness rule of each group a node receives from.
///
/// - `Sequence { max_skew_ms: Some(age) }` (the services' default, `age` =
///   5 minutes): the per-sender sequence window, persisted, *and* a bound on
///   |timestamp − now|, so a command recorded while a device was off cannot
///   be executed when it is replayed later (clocks must agree within the
///   bound).
/// - `Sequence { max_skew_ms: None }`: the sequence window alone (no clock
///   needed; a missed command stays acceptable until the window passes it).
/// - `Timestamp { skew_ms, .. }`: ±skew and digests of accepted messages,
///   in memory only; restart-safe because after a start the node refuses
///   every message stamped before start + skew (anything it may have
///   accepted before the restart is stamped earlier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayPolicies {
    /// The policy of groups not listed.
    pub default: ReplayPolicy,
    /// Per-group policies.
    pub groups: BTreeMap<GroupId, ReplayPolicy>,
}

impl Default for ReplayPolicies {
    /// The sequence window alone, for every group (the demos).
    fn default() -> Self {
        Self {
            default: ReplayPolicy::default(),
            groups: BTreeMap::new(),
        }
    }
}

impl ReplayPolicies {
    /// The policy of `group`.
    pub fn for_group(&self, group: &GroupId) -> ReplayPolicy {
        self.groups.get(group).copied().unwrap_or(self.default)
    }
}

impl core::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("id", self.credential.id())
            .field("transport", &self.link.transport())
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

//! The group administration (control) protocol's messages, shared by the
//! manager's control server (`sealcast_node::control`) and the `sealcast
//! group …` client: one JSON object per line each way. No I/O here: the
//! types, their limits, and [`parse_request`] for the server's side.
//!
//! A request is a [`Request`] (`"op"` names the variant). A response is
//! `{"ok": true, …}` with the fields of the operation's answer type —
//! [`Enrolled`], [`Created`], [`Added`], [`Evicted`], [`Rekeyed`],
//! [`GroupShow`], [`Groups`] — flattened beside `ok`, or `{"ok": false,
//! "error": "…"}` with what to do. Both sides use these types, so a field
//! renamed on one side cannot go unnoticed on the other.

use crate::manager::{EntityKind, RekeyScheme, Role};
use sealcast_core::crypto::AeadAlg;
use serde::{Deserialize, Serialize};

/// Most members in one `show` answer: a page stays far below the 1 MiB
/// line limit (about 100 bytes a member).
pub const MAX_SHOW_PAGE: usize = 2_000;

/// The socket's file name inside the manager's state directory.
pub const SOCKET_NAME: &str = "manager.sock";
/// Longest request or response line (without its newline).
pub const MAX_LINE: usize = 1 << 20;
/// Most entities in one enrol request (the CLI sends batches of 500).
pub const MAX_ENROL_BATCH: usize = 10_000;
/// Connections served at once; more wait for a free slot.
pub const MAX_CONNECTIONS: usize = 16;

/// One request.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Enrol entities (all or none).
    Enrol {
        /// The entities.
        entities: Vec<EnrolEntity>,
    },
    /// Create a group at epoch 0, without members.
    Create {
        /// Group id (text).
        group: String,
        /// `tree` (default) or `p2p`.
        #[serde(default)]
        scheme: Option<SchemeName>,
        /// `A128GCM` (default) or `A256GCM`.
        #[serde(default)]
        alg: Option<AlgName>,
    },
    /// Add enrolled entities to a group (one join event).
    Add {
        /// Group id.
        group: String,
        /// The newcomers.
        members: Vec<MemberSpec>,
    },
    /// Evict a member (rekey).
    Evict {
        /// Group id.
        group: String,
        /// The member's entity id.
        member: String,
    },
    /// A fresh key without a membership change.
    Rekey {
        /// Group id.
        group: String,
    },
    /// One group: epoch, scheme, counts by acknowledged epoch, and the
    /// members at positions `offset..offset+limit` (id order; `limit` at
    /// most [`MAX_SHOW_PAGE`], default 0: no member list). `next_offset` in
    /// the answer asks for the next page.
    Show {
        /// Group id.
        group: String,
        /// First member position of the page.
        #[serde(default)]
        offset: usize,
        /// Members in the page.
        #[serde(default)]
        limit: usize,
    },
    /// Every group's summary. (A struct variant, so that unknown fields
    /// are refused here too.)
    List {},
    /// Remote transmission control: tell a node to stop (`deactivate`) or
    /// resume (`activate`) sending the named scopes (`all`, `alert`,
    /// `command`, `<kind>:<group>`). Deactivating with no scope
    /// stops everything; activating with no scope resumes everything.
    Transmission {
        /// The node's entity id.
        node: String,
        /// What to do.
        action: TxAction,
        /// The scopes (see above).
        #[serde(default)]
        scopes: Vec<String>,
    },
    /// One node's transmission state: its order and whether it
    /// acknowledged it.
    Node {
        /// The node's entity id.
        node: String,
    },
    /// Remove an enrolled entity entirely: evicted from every group (each
    /// rekeyed), its enrolment and transmission order deleted; its id may
    /// then be enrolled again with a new key.
    Remove {
        /// The entity id.
        node: String,
    },
    /// Authorization status: suspend, revoke or reinstate an entity. The
    /// manager saves the change, signs the new status list and sends it to
    /// every node; a revocation also evicts the entity from every group
    /// (each rekeyed) and deletes its enrolment.
    Status {
        /// The entity id.
        node: String,
        /// What to do.
        action: StatusAction,
        /// Why (kept in the store and the audit log).
        #[serde(default)]
        reason: Option<String>,
    },
    /// The authorization status list.
    Statuses {},
    /// Replace an enrolled entity's public key (credential rotation
    /// authorised by the operator), keeping its kind, agent and
    /// memberships.
    RotateKey {
        /// The entity's new public COSE_KeySet (its `.pub` file), hex; it
        /// names the entity.
        public_key: String,
    },
}

/// The answer to [`Request::RotateKey`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct KeyRotated {
    /// The entity.
    pub node: String,
    /// The groups it stays a member of.
    pub groups: Vec<String>,
}

/// What a [`Request::Status`] does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusAction {
    /// Refuse its messages until reinstated; it keeps its memberships.
    Suspend,
    /// Evict it from every group and delete its enrolment; final for its key.
    Revoke,
    /// Lift a suspension.
    Reinstate,
}

/// The answer to [`Request::Status`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatusChanged {
    /// The entity.
    pub node: String,
    /// `suspended`, `revoked`, or None (in good standing).
    pub status: Option<String>,
    /// The status list's version now.
    pub version: u64,
    /// Whether the request changed the list.
    pub changed: bool,
    /// The groups a revocation evicted it from, each with its new epoch.
    pub groups: Vec<Rekeyed>,
}

/// One entity of a [`StatusListing`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ListedEntity {
    /// The entity.
    pub node: String,
    /// `suspended` or `revoked`.
    pub status: String,
    /// Why.
    pub reason: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
}

/// The answer to [`Request::Statuses`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatusListing {
    /// The list's version (0: never changed).
    pub version: u64,
    /// The listed entities.
    pub listed: Vec<ListedEntity>,
}

/// The answer to [`Request::Remove`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Removed {
    /// The entity removed.
    pub node: String,
    /// The groups it was evicted from, each with its new epoch.
    pub groups: Vec<Rekeyed>,
}

/// What a [`Request::Transmission`] does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TxAction {
    /// Stop sending the scopes.
    Deactivate,
    /// Resume sending the scopes.
    Activate,
}

/// The answer to [`Request::Transmission`] and [`Request::Node`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node.
    pub node: String,
    /// Its kind (`device`, `agent`).
    pub kind: KindName,
    /// The version of its current order (None: never ordered).
    pub version: Option<u64>,
    /// The scopes it must not send (empty: it sends everything).
    pub stopped: Vec<String>,
    /// The newest version it acknowledged.
    pub acked_version: Option<u64>,
    /// Whether it acknowledged the current order.
    pub acked: bool,
    /// Whether this request changed the order (false: it was already so).
    #[serde(default)]
    pub changed: bool,
    /// The access-control token the manager last issued it (none: no
    /// `[[access_token]]` grant, or not issued yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenInfo>,
}

/// An access-control token as `node show` reports it (no secret in it).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id (hex).
    pub id: String,
    /// What it grants, in words.
    pub grants: String,
    /// Issued at (seconds since the epoch).
    pub issued_at: u64,
    /// Valid until (seconds since the epoch, exclusive).
    pub expires: u64,
}

/// One entity of an enrol request.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrolEntity {
    /// The entity's public COSE_KeySet (the `.pub` file), hex.
    pub public_key: String,
    /// `device`, `agent` or `headend`.
    pub kind: KindName,
    /// The agent that relays to it, if any.
    #[serde(default)]
    pub agent: Option<String>,
}

/// One member of an add request.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// The entity id.
    pub id: String,
    /// `sender` or `receiver`.
    pub role: RoleName,
}

/// Entity kinds on the wire.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum KindName {
    Device,
    Agent,
    Headend,
}

/// Roles on the wire.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum RoleName {
    Sender,
    Receiver,
}

/// Rekey schemes on the wire.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum SchemeName {
    Tree,
    P2p,
}

/// AEAD algorithms on the wire.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum AlgName {
    #[serde(rename = "A128GCM")]
    A128Gcm,
    #[serde(rename = "A256GCM")]
    A256Gcm,
}

/// The answer to [`Request::Enrol`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Enrolled {
    /// Entities newly enrolled.
    pub enrolled: u64,
    /// Entities that were enrolled already with the same key.
    pub unchanged: u64,
}

/// The answer to [`Request::Create`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Created {
    /// The group.
    pub group: String,
    /// Its epoch (0).
    pub epoch: u32,
    /// Its rekey scheme.
    pub scheme: SchemeName,
    /// Its AEAD algorithm.
    pub alg: AlgName,
}

/// The answer to [`Request::Add`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Added {
    /// The group.
    pub group: String,
    /// Members added.
    pub added: usize,
    /// The group's epoch now.
    pub epoch: u32,
}

/// The answer to [`Request::Evict`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Evicted {
    /// The group.
    pub group: String,
    /// The member evicted.
    pub evicted: String,
    /// The group's epoch now (a fresh key).
    pub epoch: u32,
}

/// The answer to [`Request::Rekey`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rekeyed {
    /// The group.
    pub group: String,
    /// The group's epoch now.
    pub epoch: u32,
}

/// One group's summary (in [`Groups`] and [`GroupShow`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupSummaryWire {
    /// The group id as text.
    pub group: String,
    /// Its current epoch.
    pub epoch: u32,
    /// Its rekey scheme.
    pub scheme: SchemeName,
    /// Number of members.
    pub members: usize,
    /// Members that acknowledged the current epoch.
    pub current: usize,
}

/// How many members acknowledged one epoch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct HeldCount {
    /// The epoch (`None`: no epoch acknowledged yet).
    pub epoch: Option<u32>,
    /// Members holding it.
    pub members: usize,
}

/// One member in a [`GroupShow`] page.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct MemberWire {
    /// The entity id.
    pub id: String,
    /// Sender or receiver.
    pub role: RoleName,
    /// Its sender id in the group (hex), if a sender.
    pub sender_id: Option<String>,
    /// Its leaf in the key tree (tree groups).
    pub leaf: Option<u32>,
    /// The epoch it acknowledged last.
    pub held: Option<u32>,
    /// Whether that is the current epoch.
    pub current: bool,
}

/// The answer to [`Request::Show`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupShow {
    /// Epoch, scheme and counts.
    #[serde(flatten)]
    pub summary: GroupSummaryWire,
    /// The AEAD algorithm.
    pub alg: AlgName,
    /// Members by acknowledged epoch.
    pub held_counts: Vec<HeldCount>,
    /// The requested page of members.
    pub member_list: Vec<MemberWire>,
    /// The offset of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// The answer to [`Request::List`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Groups {
    /// Every group's summary.
    pub groups: Vec<GroupSummaryWire>,
}

/// A refused request: what to do, in words.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// The reason and the remedy.
    pub error: String,
}

// The one mapping between the names on the wire (and in config files) and
// the group crate's types.

impl From<KindName> for EntityKind {
    fn from(k: KindName) -> Self {
        match k {
            KindName::Device => EntityKind::Device,
            KindName::Agent => EntityKind::Agent,
            KindName::Headend => EntityKind::Headend,
        }
    }
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Sender => Role::Sender,
            RoleName::Receiver => Role::Receiver,
        }
    }
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Sender => RoleName::Sender,
            Role::Receiver => RoleName::Receiver,
        }
    }
}

impl From<SchemeName> for RekeyScheme {
    fn from(s: SchemeName) -> Self {
        match s {
            SchemeName::Tree => RekeyScheme::Tree,
            SchemeName::P2p => RekeyScheme::PointToPoint,
        }
    }
}

impl From<RekeyScheme> for SchemeName {
    fn from(s: RekeyScheme) -> Self {
        match s {
            RekeyScheme::Tree => SchemeName::Tree,
            RekeyScheme::PointToPoint => SchemeName::P2p,
        }
    }
}

impl From<AlgName> for AeadAlg {
    fn from(a: AlgName) -> Self {
        match a {
            AlgName::A128Gcm => AeadAlg::A128Gcm,
            AlgName::A256Gcm => AeadAlg::A256Gcm,
        }
    }
}

impl KindName {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Device => "device",
            KindName::Agent => "agent",
            KindName::Headend => "headend",
        }
    }
}

impl RoleName {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Sender => "sender",
            RoleName::Receiver => "receiver",
        }
    }

    /// `sender` or `receiver`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sender" => Some(RoleName::Sender),
            "receiver" => Some(RoleName::Receiver),
            _ => None,
        }
    }
}

impl SchemeName {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemeName::Tree => "tree",
            SchemeName::P2p => "p2p",
        }
    }
}

impl AlgName {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlgName::A128Gcm => "A128GCM",
            AlgName::A256Gcm => "A256GCM",
        }
    }
}

/// Decodes one request line (without its newline), as the manager's control
/// server does. Any bytes give a request or an error, never a panic; the
/// line's length is the caller's to bound ([`MAX_LINE`]).
pub fn parse_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_wire_are_what_serde_writes() {
        for k in [KindName::Device, KindName::Agent, KindName::Headend] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for r in [RoleName::Sender, RoleName::Receiver] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(RoleName::parse(r.as_str()), Some(r));
        }
        for s in [SchemeName::Tree, SchemeName::P2p] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for a in [AlgName::A128Gcm, AlgName::A256Gcm] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }

    #[test]
    fn a_show_answer_reads_back_with_ok_beside_it() {
        let show = GroupShow {
            summary: GroupSummaryWire {
                group: "fire-doors".into(),
                epoch: 3,
                scheme: SchemeName::Tree,
                members: 1,
                current: 1,
            },
            alg: AlgName::A128Gcm,
            held_counts: vec![HeldCount {
                epoch: Some(3),
                members: 1,
            }],
            member_list: vec![MemberWire {
                id: "door-1".into(),
                role: RoleName::Receiver,
                sender_id: None,
                leaf: Some(0),
                held: Some(3),
                current: true,
            }],
            next_offset: None,
        };
        let mut line = serde_json::to_value(&show).unwrap();
        line.as_object_mut()
            .unwrap()
            .insert("ok".into(), serde_json::Value::Bool(true));
        assert_eq!(line["group"], "fire-doors");
        assert_eq!(line["member_list"][0]["role"], "receiver");
        let back: GroupShow = serde_json::from_value(line).unwrap();
        assert_eq!(back, show);
        // Requests are written as the server reads them.
        let r = Request::Show {
            group: "fire-doors".into(),
            offset: 0,
            limit: 10,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(text.contains("\"op\":\"show\""));
    }
}

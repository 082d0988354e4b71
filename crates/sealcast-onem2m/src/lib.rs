//! sealcast in oneM2M, without I/O: how an entity becomes an AE, where its
//! containers are, the resources sealcast creates on a CSE, and the request
//! and notification primitives in JSON or CBOR (TS-0004 §8, TS-0008/0009
//! bindings' content). The HTTP shell that sends these lives in
//! `sealcast_node::link::onem2m`.
//!
//! The mapping (docs/ARCHITECTURE.md, "oneM2M"):
//!
//! - an entity `x` is the AE with AE-ID `Cx` ([`ae_id`]); a manager's
//!   groups are hosted by the AE `Sx` on the field (MN) CSE
//!   ([`group_host_ae_id`]) — `C` and `S` keep the two namespaces apart;
//! - every entity that receives owns two containers under its AE:
//!   [`GROUP_CONTAINER`] (broadcasts of its groups, written by a `<group>`'s
//!   fan-out) and [`INBOX_CONTAINER`] (what is sent to it alone), each with
//!   a subscription whose notifications reach it;
//! - a sealcast group is a `<group>` named [`group_resource_name`] under
//!   the group-host AE, whose members are the `grp` containers of the
//!   group's members; a broadcast is one `<contentInstance>` created through
//!   its `fopt`;
//! - every message is a `<contentInstance>`: `con` the COSE object in
//!   base64, `cnf` `application/cose` with its cose-type ([`content_info`]),
//!   `lbl` the sealcast target the object is bound to, `cr` (the creator)
//!   requested so the receiver learns the originator the CSE accepted.

#![forbid(unsafe_code)]

pub mod ids;
pub mod primitive;
pub mod resource;

pub use ids::{Addressing, CseBase, ae_id, entity_of_originator, group_host_ae_id};
pub use primitive::{ContentInstance, Notification, Serialization};

/// Why a oneM2M step failed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// An entity id that cannot be an AE-ID or resource name.
    UnfitId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A CSE's answer or a notification that is not what oneM2M says.
    Malformed(&'static str),
    /// JSON or CBOR that does not decode.
    Serialization(String),
    /// More bytes than a primitive may have.
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The CSE answered with a response status code that is not a success.
    Refused {
        /// The response status code (`rsc`).
        rsc: u16,
        /// The CSE's debug text (`m2m:dbg`), if it gave one.
        detail: String,
    },
}

impl Error {
    /// What a response status code means, and what to do about it.
    pub fn advice(rsc: u16) -> &'static str {
        match rsc {
            4000 => "bad request: the CSE did not accept the primitive",
            4004 => {
                "not found: the resource does not exist (not created yet, or the CSE lost it in a restart)"
            }
            4103 => {
                "access denied by the CSE's access-control policy: check that sealcast's ACPs name this originator"
            }
            4105 => "conflict: a resource with this name exists already",
            4117 => "this originator has registered an AE already",
            4107 => {
                "originator refused: AE-IDs must start with C or S and be allowed in [cse.registration] allowedAEOriginators"
            }
            4108 => "not registered: the originator has no AE on this CSE",
            5000 => "internal error of the CSE",
            5103 => {
                "target not reachable: the CSE could not forward the request (is the other CSE registered?)"
            }
            5105 => {
                "the CSE could not check a member or a retargeted resource (no RETRIEVE right on it)"
            }
            _ => "see oneM2M TS-0004 §6.6.3 for the response status code",
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::UnfitId { id, reason } => {
                write!(f, "entity id {id:?} cannot be a oneM2M AE-ID: {reason}")
            }
            Error::Malformed(what) => write!(f, "malformed oneM2M primitive: {what}"),
            Error::Serialization(e) => write!(f, "oneM2M serialization: {e}"),
            Error::TooLarge { max } => write!(f, "oneM2M primitive larger than {max} bytes"),
            Error::Refused { rsc, detail } => {
                write!(f, "the CSE answered {rsc} ({})", Error::advice(*rsc))?;
                if !detail.is_empty() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

/// This crate's result.
pub type Result<T> = core::result::Result<T, Error>;

/// The container under each receiving AE that a `<group>`'s fan-out writes
/// into: every broadcast of the entity's groups.
pub const GROUP_CONTAINER: &str = "grp";

/// The container under each receiving AE for what is sent to it alone
/// (key deliveries, acks and pulls, reports).
pub const INBOX_CONTAINER: &str = "inbox";

/// The ACP under each AE that guards its inbox (anyone may create: the
/// objects are end-to-end protected) and, under the group host, the
/// `<group>`s.
pub const ACP_NAME: &str = "sealcast-acp";

/// The ACP under each receiving AE that guards its group container: only
/// the senders of the entity's groups and the manager may create in it; the
/// manager keeps the list ([`resource::acp_rules`]).
pub const GROUP_ACP_NAME: &str = "sealcast-grp-acp";

/// The subscription under each container.
pub const SUBSCRIPTION_NAME: &str = "sealcast-sub";

/// The `api` of sealcast's AEs (an `N`on-registered App-ID).
pub const APP_ID: &str = "Nsealcast";

/// The `<group>` of a sealcast group: `g-` and the group id in hex.
pub fn group_resource_name(group: &sealcast_core::ids::GroupId) -> String {
    let mut s = String::from("g-");
    for b in group.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The `cnf` (contentInfo, TS-0004 §6.3.4.2.x: `<media type>:<encoding>`,
/// encoding 1 = base64 string) of a COSE object, with its cose-type (RFC
/// 9052 §2) read from its CBOR tag; an untagged object is plain
/// `application/cose`.
pub fn content_info(cose: &[u8]) -> String {
    let tag = match cose {
        [0xd0, ..] => Some(16u64),
        [0xd1, ..] => Some(17),
        [0xd2, ..] => Some(18),
        [0xd8, t, ..] => Some(u64::from(*t)),
        _ => None,
    };
    let kind = match tag {
        Some(16) => Some("cose-encrypt0"),
        Some(17) => Some("cose-mac0"),
        Some(18) => Some("cose-sign1"),
        Some(96) => Some("cose-encrypt"),
        Some(97) => Some("cose-mac"),
        Some(98) => Some("cose-sign"),
        _ => None,
    };
    match kind {
        Some(k) => format!("application/cose; cose-type=\"{k}\":1"),
        None => "application/cose:1".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

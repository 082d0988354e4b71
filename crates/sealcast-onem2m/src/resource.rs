//! The resources sealcast creates, as primitive content (`pc`). Resource
//! types (TS-0004 §6.3.4.2.1) go in the request's `ty`: [`Type`].

use base64::Engine;
use serde_json::{Value, json};

use crate::{APP_ID, content_info};

/// The resource types sealcast creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// `<accessControlPolicy>` (1).
    AccessControlPolicy = 1,
    /// `<AE>` (2).
    Ae = 2,
    /// `<container>` (3).
    Container = 3,
    /// `<contentInstance>` (4).
    ContentInstance = 4,
    /// `<group>` (9).
    Group = 9,
    /// `<subscription>` (23).
    Subscription = 23,
}

/// Access-control operations (TS-0004 §6.3.4.2.2, `acop` bits).
pub mod op {
    /// CREATE.
    pub const CREATE: u32 = 1;
    /// RETRIEVE.
    pub const RETRIEVE: u32 = 2;
    /// UPDATE.
    pub const UPDATE: u32 = 4;
    /// DELETE.
    pub const DELETE: u32 = 8;
    /// NOTIFY.
    pub const NOTIFY: u32 = 16;
    /// DISCOVERY.
    pub const DISCOVER: u32 = 32;
    /// All of them.
    pub const ALL: u32 = 63;
}

/// An `<AE>` named `ae_id` (its resource name is its AE-ID), reachable for
/// notifications at `poa` if given.
pub fn ae(ae_id: &str, poa: Option<&str>) -> Value {
    let mut ae = json!({
        "rn": ae_id,
        "api": APP_ID,
        "rr": poa.is_some(),
        "srv": ["3", "4"],
    });
    if let Some(poa) = poa {
        ae["poa"] = json!([poa]);
    }
    json!({ "m2m:ae": ae })
}

/// An `<accessControlPolicy>`: each rule grants `ops` to its originators;
/// only `owner` may change the policy itself.
pub fn acp(name: &str, rules: &[(Vec<String>, u32)], owner: &str) -> Value {
    acp_managed(name, rules, &[owner.to_owned()])
}

/// An `<accessControlPolicy>` whose privileges `managers` may change (the
/// owner among them).
pub fn acp_managed(name: &str, rules: &[(Vec<String>, u32)], managers: &[String]) -> Value {
    json!({ "m2m:acp": {
        "rn": name,
        "pv": { "acr": acp_rules(rules) },
        "pvs": { "acr": [ { "acor": managers, "acop": op::ALL } ] },
    }})
}

/// Access-control rules (`acr`): each grants `ops` to its originators.
pub fn acp_rules(rules: &[(Vec<String>, u32)]) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|(who, ops)| json!({ "acor": who, "acop": ops }))
            .collect(),
    )
}

/// The update that replaces an ACP's privileges.
pub fn acp_privileges(rules: &[(Vec<String>, u32)]) -> Value {
    json!({ "m2m:acp": { "pv": { "acr": acp_rules(rules) } } })
}

/// A `<container>` guarded by `acpi`, keeping at most `max_instances`.
pub fn container(name: &str, acpi: &[String], max_instances: u32) -> Value {
    json!({ "m2m:cnt": { "rn": name, "acpi": acpi, "mni": max_instances } })
}

/// A `<subscription>` that notifies `notify` (an AE-ID: the CSE uses its
/// point of access) of each child created (`net` 3), with the whole
/// resource (`nct` 1).
pub fn subscription(name: &str, notify: &str) -> Value {
    json!({ "m2m:sub": {
        "rn": name,
        "nu": [notify],
        "enc": { "net": [3] },
        "nct": 1,
    }})
}

/// A `<group>` of containers (`mt` 3) with members `mid`.
pub fn group(name: &str, mid: &[String], acpi: &[String], max_members: usize) -> Value {
    json!({ "m2m:grp": {
        "rn": name,
        "mt": Type::Container as u32,
        "mnm": max_members,
        "mid": mid,
        "acpi": acpi,
    }})
}

/// The update that sets a `<group>`'s members.
pub fn group_members(mid: &[String]) -> Value {
    json!({ "m2m:grp": { "mid": mid } })
}

/// A `<contentInstance>` carrying a COSE object bound to `target`: `con`
/// base64, `cnf` with its cose-type, `lbl` the target, and `cr` requested
/// (null) so the CSE records the originator it accepted.
pub fn content_instance(cose: &[u8], target: &str) -> Value {
    json!({ "m2m:cin": {
        "con": base64::engine::general_purpose::STANDARD.encode(cose),
        "cnf": content_info(cose),
        "lbl": [target],
        "cr": Value::Null,
    }})
}

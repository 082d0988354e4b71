//! The manager's control socket: group administration of a running manager
//! (`sealcast group …`).
//!
//! A Unix stream socket, by default `<state_dir>/manager.sock`. The protocol
//! is one JSON object per line each way: a request, then its response, in
//! order, as many as the client wants on one connection (the CLI pipelines
//! thousands of enrolments that way).
//!
//! ```text
//! {"op":"enrol","entities":[{"public_key":"<hex of the .pub COSE_KeySet>","kind":"device","agent":"gw-1"}]}
//! {"op":"create","group":"fire-doors","scheme":"tree","alg":"A128GCM"}
//! {"op":"add","group":"fire-doors","members":[{"id":"door-1","role":"receiver"}]}
//! {"op":"evict","group":"fire-doors","member":"door-1"}
//! {"op":"rekey","group":"fire-doors"}
//! {"op":"show","group":"fire-doors"}
//! {"op":"list"}
//! ```
//!
//! Every response has `"ok": true` and the operation's result, or
//! `"ok": false` and an `"error"` that says what to do. The messages are
//! the types of [`protocol`], which the CLI client uses too. Group ids are text
//! (their UTF-8 bytes are the id). Lines are at most [`MAX_LINE`] bytes; a
//! longer one is answered with an error and the connection is closed.
//!
//! **Who may connect.** By default only the manager's own user. The socket
//! is created with its mode (0600 by default) before anyone can reach it: it
//! is bound inside a fresh directory of mode 0700 next to its final path,
//! its group and mode set, and then renamed into place. The directory that
//! holds it must not be writable by group or others (else someone could
//! replace the socket); the manager refuses to start otherwise. Each
//! connection's peer user id (`SO_PEERCRED`) must also equal the socket
//! owner's — defence in depth. With an administration policy
//! ([`AdminAccess`], `[[admin_acp]]`; [`BoundSocket::serve_with`]) the
//! socket may be shared (0660, 0666) and any peer may connect, but each of
//! its requests — the owner's too — is decided by the policy over the
//! peer's user name and `uid:N`, the operation ([`admin_operation`]) and
//! the group it names; a refused request changes nothing.
//!
//! **Stale sockets.** A socket file left by a manager that died is removed
//! at start, but only after a connection attempt to it was refused; when
//! something answers, this manager refuses to start. Anything at the path
//! that is not a socket is never removed.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealcast_core::credential::{MAX_CREDENTIAL_FILE_LEN, PublicCredential};
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_group::manager::{EntityKind, GroupSummary, RekeyScheme, Role};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::manager::{Enrolment, ManagerHandle};
use crate::{Error, Result};

/// The protocol's messages (they live in `sealcast_group::admin`, shared
/// with the CLI client and fuzzed there).
pub use sealcast_group::admin as protocol;

pub use protocol::{
    Added, AlgName, Created, EnrolEntity, Enrolled, Evicted, GroupShow, GroupSummaryWire, Groups,
    HeldCount, KeyRotated, KindName, ListedEntity, MAX_CONNECTIONS, MAX_ENROL_BATCH, MAX_LINE,
    MAX_SHOW_PAGE, MemberSpec, MemberWire, NodeStatus, Rekeyed, Removed, Request, RoleName,
    SOCKET_NAME, SchemeName, StatusAction, StatusChanged, StatusListing, TxAction,
};
/// How long an idle connection stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The group id as it is shown: its text, or `0x…` when it is not UTF-8.
pub fn show_group(group: &GroupId) -> String {
    match std::str::from_utf8(group.as_bytes()) {
        Ok(t) => t.to_owned(),
        Err(_) => format!("0x{}", hex(group.as_bytes())),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(text: &str) -> core::result::Result<Vec<u8>, String> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", c as char)),
    };
    t.chunks_exact(2)
        .map(|p| Ok((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

/// A request the server could not carry out, phrased for the user.
struct Refusal(String);

impl<E: core::fmt::Display> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal(e.to_string())
    }
}

fn group_id(text: &str) -> core::result::Result<GroupId, Refusal> {
    GroupId::new(text.as_bytes())
        .map_err(|e| Refusal(format!("group id {text:?}: {e} (1 to 32 bytes of text)")))
}

fn entity_id(text: &str) -> core::result::Result<EntityId, Refusal> {
    EntityId::new(text).map_err(|e| Refusal(format!("entity id {text:?}: {e}")))
}

fn alg_name(a: AeadAlg) -> AlgName {
    match a {
        AeadAlg::A256Gcm => AlgName::A256Gcm,
        _ => AlgName::A128Gcm,
    }
}

fn summary_wire(s: &GroupSummary) -> GroupSummaryWire {
    GroupSummaryWire {
        group: show_group(&s.group),
        epoch: s.epoch.get(),
        scheme: s.scheme.into(),
        members: s.members,
        current: s.current,
    }
}

/// An answer as the JSON object the response line carries.
fn answer<T: Serialize>(t: &T) -> core::result::Result<Value, Refusal> {
    serde_json::to_value(t).map_err(|e| Refusal(format!("cannot encode the answer: {e}")))
}

/// Adds the group id to an unknown-group or unknown-member error.
fn about_group(group: &str, e: Error) -> Refusal {
    match e {
        Error::Group(sealcast_group::Error::UnknownGroup) => Refusal(format!(
            "no group {group:?} on this manager: create it with `sealcast group create`, \
             or see `sealcast group list`"
        )),
        Error::Group(sealcast_group::Error::AlreadyMember) => Refusal(format!(
            "group {group:?}: already a member (or the group exists already): nothing changed"
        )),
        Error::Group(sealcast_group::Error::UnknownMember) => Refusal(format!(
            "group {group:?}: not enrolled, or not a member: enrol it first with \
             `sealcast group enrol`, or see `sealcast group show --group {group}`"
        )),
        other => Refusal(format!("group {group:?}: {other}")),
    }
}

/// Carries out one request against the running manager.
async fn execute(handle: &ManagerHandle, request: Request) -> core::result::Result<Value, Refusal> {
    match request {
        Request::Enrol { entities } => {
            if entities.len() > MAX_ENROL_BATCH {
                return Err(Refusal(format!(
                    "{} entities in one request: send at most {MAX_ENROL_BATCH} per request",
                    entities.len()
                )));
            }
            let mut batch: Vec<Enrolment> = Vec::with_capacity(entities.len());
            for (i, e) in entities.into_iter().enumerate() {
                if e.public_key.len() > 2 * MAX_CREDENTIAL_FILE_LEN {
                    return Err(Refusal(format!("entity {i}: public key too long")));
                }
                let bytes = unhex(&e.public_key)
                    .map_err(|why| Refusal(format!("entity {i}: public key: {why}")))?;
                let credential = PublicCredential::from_cose_key_set(&bytes).map_err(|why| {
                    Refusal(format!(
                        "entity {i}: not a public COSE_KeySet ({why}): send the .pub file \
                         `sealcast keygen` wrote"
                    ))
                })?;
                let kind: EntityKind = e.kind.into();
                let agent = e.agent.as_deref().map(entity_id).transpose()?;
                batch.push((credential, kind, agent));
            }
            let report = handle.enrol_many(batch).await?;
            answer(&Enrolled {
                enrolled: report.enrolled as u64,
                unchanged: report.unchanged as u64,
            })
        }
        Request::Create { group, scheme, alg } => {
            let id = group_id(&group)?;
            let scheme: RekeyScheme = scheme.unwrap_or(SchemeName::Tree).into();
            let alg: AeadAlg = alg.unwrap_or(AlgName::A128Gcm).into();
            handle
                .create_group(id.clone(), alg, scheme)
                .await
                .map_err(|e| match e {
                    Error::Group(sealcast_group::Error::AlreadyMember) => Refusal(format!(
                        "group {group:?} exists already: see `sealcast group show --group {group}`"
                    )),
                    other => about_group(&group, other),
                })?;
            answer(&Created {
                group,
                epoch: 0,
                scheme: scheme.into(),
                alg: alg_name(alg),
            })
        }
        Request::Add { group, members } => {
            let id = group_id(&group)?;
            if members.is_empty() {
                return Err(Refusal("no members to add".into()));
            }
            let members = members
                .iter()
                .map(|m| Ok((entity_id(&m.id)?, Role::from(m.role))))
                .collect::<core::result::Result<Vec<_>, Refusal>>()?;
            let added = members.len();
            handle
                .add_members(id.clone(), members)
                .await
                .map_err(|e| about_group(&group, e))?;
            let epoch = current_epoch(handle, &id).await?;
            answer(&Added {
                group,
                added,
                epoch,
            })
        }
        Request::Evict { group, member } => {
            let id = group_id(&group)?;
            let who = entity_id(&member)?;
            handle.evict(id.clone(), who).await.map_err(|e| match e {
                Error::Group(sealcast_group::Error::UnknownMember) => Refusal(format!(
                    "{member} is not a member of group {group:?}: nothing to evict; \
                         see `sealcast group show --group {group}`"
                )),
                other => about_group(&group, other),
            })?;
            let epoch = current_epoch(handle, &id).await?;
            answer(&Evicted {
                group,
                evicted: member,
                epoch,
            })
        }
        Request::Rekey { group } => {
            let id = group_id(&group)?;
            let epoch = handle.rekey(id).await.map_err(|e| about_group(&group, e))?;
            answer(&Rekeyed {
                group,
                epoch: epoch.get(),
            })
        }
        Request::Show {
            group,
            offset,
            limit,
        } => {
            let id = group_id(&group)?;
            if limit > MAX_SHOW_PAGE {
                return Err(Refusal(format!(
                    "limit {limit}: at most {MAX_SHOW_PAGE} members per page"
                )));
            }
            let detail = handle
                .detail_page(id, offset..offset.saturating_add(limit))
                .await?
                .ok_or_else(|| {
                    about_group(&group, Error::Group(sealcast_group::Error::UnknownGroup))
                })?;
            let epoch = detail.summary.epoch;
            let member_list: Vec<MemberWire> = detail
                .members
                .iter()
                .map(|(id, m)| MemberWire {
                    id: id.as_str().to_owned(),
                    role: m.role.into(),
                    sender_id: m.sender_id.as_ref().map(|s| hex(s.as_bytes())),
                    leaf: m.leaf.map(|l| l.get()),
                    held: m.held.map(|e| e.get()),
                    current: m.held == Some(epoch),
                })
                .collect();
            let held_counts: Vec<HeldCount> = detail
                .held
                .iter()
                .map(|(e, n)| HeldCount {
                    epoch: e.map(|e| e.get()),
                    members: *n,
                })
                .collect();
            let end = offset.saturating_add(member_list.len());
            let next_offset = (limit > 0 && end < detail.summary.members).then_some(end);
            answer(&GroupShow {
                summary: summary_wire(&detail.summary),
                alg: alg_name(detail.alg),
                held_counts,
                member_list,
                next_offset,
            })
        }
        Request::List {} => {
            let groups = handle.groups().await?.iter().map(summary_wire).collect();
            answer(&Groups { groups })
        }
        Request::Transmission {
            node,
            action,
            scopes,
        } => {
            let id = entity_id(&node)?;
            let scopes = scopes
                .iter()
                .map(|t| {
                    use sealcast_group::transmission::{Scope, TxKind};
                    match Scope::parse(t) {
                        Ok(Scope::Kind(TxKind::Report) | Scope::KindInGroup(TxKind::Report, _)) => {
                            Err(Refusal(format!(
                                "scope {t:?}: reports are a meter's, and a meter's headend orders it (sealcast headend deactivate); use all, alert, command or <kind>:<group>"
                            )))
                        }
                        Ok(s) => Ok(s),
                        Err(_) => Err(Refusal(format!(
                            "scope {t:?}: use all, alert, command or <kind>:<group> (e.g. command:fire-doors)"
                        ))),
                    }
                })
                .collect::<core::result::Result<Vec<_>, _>>()?;
            let state = handle
                .transmission(id, action == TxAction::Deactivate, scopes)
                .await
                .map_err(|e| about_node(&node, e))?;
            answer(&node_status(&state))
        }
        Request::Remove { node } => {
            let id = entity_id(&node)?;
            let groups = handle
                .remove(id)
                .await
                .map_err(|e| about_node(&node, e))?
                .into_iter()
                .map(|(g, epoch)| Rekeyed {
                    group: show_group(&g),
                    epoch: epoch.get(),
                })
                .collect();
            answer(&Removed { node, groups })
        }
        Request::Node { node } => {
            let id = entity_id(&node)?;
            let state = handle
                .node_status(id.clone())
                .await
                .map_err(|e| about_node(&node, e))?;
            let mut status = node_status(&state);
            status.token = handle
                .token_of(id)
                .await
                .map_err(|e| about_node(&node, e))?
                .map(|t| protocol::TokenInfo {
                    id: crate::control::hex(&t.id),
                    grants: t.describe(),
                    issued_at: t.issued_at,
                    expires: t.expires,
                });
            answer(&status)
        }
        Request::Status {
            node,
            action,
            reason,
        } => {
            use sealcast_group::status::Status;
            let id = entity_id(&node)?;
            let target = match action {
                StatusAction::Suspend => Some(Status::Suspended),
                StatusAction::Revoke => Some(Status::Revoked),
                StatusAction::Reinstate => None,
            };
            let reason = reason.unwrap_or_else(|| "by an operator".to_owned());
            if reason.len() > 500 {
                return Err(Refusal("the reason is longer than 500 bytes".to_owned()));
            }
            let o = handle
                .set_status(id, target, reason)
                .await
                .map_err(|e| about_node(&node, e))?;
            answer(&StatusChanged {
                node,
                status: o.status.map(|s| s.as_str().to_owned()),
                version: o.version,
                changed: o.changed,
                groups: o
                    .evicted
                    .into_iter()
                    .map(|(g, epoch)| Rekeyed {
                        group: show_group(&g),
                        epoch: epoch.get(),
                    })
                    .collect(),
            })
        }
        Request::RotateKey { public_key } => {
            if public_key.len() > 2 * MAX_CREDENTIAL_FILE_LEN {
                return Err(Refusal("public key too long".to_owned()));
            }
            let bytes = unhex(&public_key).map_err(|why| Refusal(format!("public key: {why}")))?;
            let credential = PublicCredential::from_cose_key_set(&bytes).map_err(|why| {
                Refusal(format!(
                    "not a public COSE_KeySet ({why}): send the .pub file `sealcast keygen` wrote"
                ))
            })?;
            let node = credential.id().to_string();
            let r = handle
                .rotate_key(credential)
                .await
                .map_err(|e| about_node(&node, e))?;
            answer(&KeyRotated {
                node,
                groups: r.groups.iter().map(show_group).collect(),
            })
        }
        Request::Statuses {} => {
            let snapshot = handle.status_list().await?;
            answer(&StatusListing {
                version: snapshot.version,
                listed: snapshot
                    .listed
                    .into_iter()
                    .map(|r| ListedEntity {
                        node: r.entity.to_string(),
                        status: r.status.as_str().to_owned(),
                        reason: r.reason,
                        since_ms: r.updated_at.get(),
                    })
                    .collect(),
            })
        }
    }
}

/// Adds the node id to an unknown-entity error.
fn about_node(node: &str, e: Error) -> Refusal {
    match e {
        Error::Group(sealcast_group::Error::UnknownMember) => Refusal(format!(
            "{node} is not enrolled on this manager: enrol it first with `sealcast group enrol`"
        )),
        other => Refusal(format!("node {node}: {other}")),
    }
}

fn node_status(state: &crate::manager::NodeState) -> NodeStatus {
    let record = state.record.as_ref();
    NodeStatus {
        node: state.node.as_str().to_owned(),
        kind: match state.kind {
            EntityKind::Device => KindName::Device,
            EntityKind::Agent => KindName::Agent,
            EntityKind::Headend => KindName::Headend,
        },
        version: record.map(|r| r.version),
        stopped: record
            .map(|r| crate::manager::scope_names(&r.stopped))
            .unwrap_or_default(),
        acked_version: record.and_then(|r| r.acked),
        acked: record.is_none_or(sealcast_store::TransmissionRecord::is_acked),
        changed: state.changed,
        token: None,
    }
}

async fn current_epoch(
    handle: &ManagerHandle,
    group: &GroupId,
) -> core::result::Result<u32, Refusal> {
    Ok(handle
        .summary(group.clone())
        .await?
        .map_or(0, |s| s.epoch.get()))
}

/// One response line for a request line (decided first by the
/// administration policy, when there is one, for the user `who`).
async fn respond(
    handle: &ManagerHandle,
    line: &[u8],
    who: Option<&(&AdminAccess, Vec<String>)>,
) -> Value {
    let request: Request = match protocol::parse_request(line) {
        Ok(r) => r,
        Err(e) => {
            return json!({
                "ok": false,
                "error": format!("bad request: {e}; send one JSON object per line, e.g. {{\"op\":\"list\"}}"),
            });
        }
    };
    let what = describe(&request);
    if let Some((access, names)) = who
        && let Err(why) = access.decide(names, &request, crate::runtime::now())
    {
        warn!(user = %names.join("/"), request = %what, reason = %why, "control: refused by the administration policy");
        let detail = format!("{} may not {what}: {why}", names.join(" / "));
        if let Err(e) = handle.audit_admin_refusal(detail).await {
            debug!(error = %e, "administration refusal not audited");
        }
        return json!({ "ok": false, "error": why });
    }
    match execute(handle, request).await {
        Ok(Value::Object(mut map)) => {
            info!(request = %what, "control: done");
            map.insert("ok".into(), Value::Bool(true));
            Value::Object(map)
        }
        Ok(other) => {
            info!(request = %what, "control: done");
            json!({ "ok": true, "result": other })
        }
        Err(Refusal(why)) => {
            info!(request = %what, reason = %why, "control: refused");
            json!({ "ok": false, "error": why })
        }
    }
}

/// One line for the manager's log: the operation and what it names (ids,
/// counts; never key bytes).
fn describe(request: &Request) -> String {
    match request {
        Request::Enrol { entities } => match entities.as_slice() {
            [one] => format!("enrol 1 entity ({:?})", one.kind),
            many => format!("enrol {} entities", many.len()),
        },
        Request::Create { group, scheme, .. } => {
            format!(
                "create group {group} ({:?})",
                scheme.unwrap_or(SchemeName::Tree)
            )
        }
        Request::Add { group, members } => match members.as_slice() {
            [one] => format!("add {} to group {group}", one.id),
            many => format!("add {} members to group {group}", many.len()),
        },
        Request::Evict { group, member } => format!("evict {member} from group {group}"),
        Request::Rekey { group } => format!("rekey group {group}"),
        Request::Show { group, .. } => format!("show group {group}"),
        Request::List {} => "list groups".to_owned(),
        Request::Transmission {
            node,
            action,
            scopes,
        } => format!(
            "{} {node} ({})",
            match action {
                TxAction::Deactivate => "deactivate",
                TxAction::Activate => "activate",
            },
            if scopes.is_empty() {
                "all".to_owned()
            } else {
                scopes.join(",")
            }
        ),
        Request::Node { node } => format!("show node {node}"),
        Request::Remove { node } => format!("remove {node}"),
        Request::Status { node, action, .. } => {
            format!("{} {node}", format!("{action:?}").to_lowercase())
        }
        Request::Statuses {} => "show the status list".to_owned(),
        Request::RotateKey { .. } => "rotate a key".to_owned(),
    }
}

/// The manager's administration policy (`[[admin_acp]]`): who — an
/// operating-system user, by name and by `uid:N` — may do which operation
/// of the control protocol, to which group, when (`sealcast_group::acp`,
/// permit-overrides, deny by default).
#[derive(Debug, Clone)]
pub struct AdminAccess {
    policy: sealcast_group::acp::AccessPolicy,
    users: std::collections::BTreeMap<u32, String>,
}

impl AdminAccess {
    /// A policy, with the user names of `passwd` (the text of
    /// `/etc/passwd`; users it does not name are known as `uid:N` only).
    pub fn new(policy: sealcast_group::acp::AccessPolicy, passwd: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let uid = f.nth(1)?.parse().ok()?;
                (!name.is_empty() && !name.starts_with('#')).then(|| (uid, name.to_owned()))
            })
            .collect();
        Self { policy, users }
    }

    /// The names a user is known by: its name (when known) and `uid:N`.
    pub fn names_of(&self, uid: u32) -> Vec<String> {
        let mut names: Vec<String> = self.users.get(&uid).cloned().into_iter().collect();
        names.push(format!("uid:{uid}"));
        names
    }

    /// Whether `names` may make `request` at `at`; the refusal says what
    /// to do.
    pub fn decide(
        &self,
        names: &[String],
        request: &Request,
        at: sealcast_core::ids::UnixMillis,
    ) -> core::result::Result<(), String> {
        let (operation, group) = admin_operation(request);
        // A malformed group id names no group here: rules that name groups
        // do not apply to it (the operation would refuse it anyway).
        let group_id = group.and_then(|g| GroupId::new(g.as_bytes()).ok());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let decision = self
            .policy
            .evaluate_admin(&sealcast_group::acp::AdminRequest {
                originators: &refs,
                operation,
                group: group_id.as_ref(),
                at,
            });
        if decision.permitted() {
            return Ok(());
        }
        Err(format!(
            "the manager's administration policy does not permit {} to {operation}{} ({decision:?}); \
             ask its operator to add a rule to [[admin_acp]] in manager.toml",
            names.join(" / "),
            group.map(|g| format!(" in group {g}")).unwrap_or_default()
        ))
    }
}

/// The administration operation a request is, and the group it names.
pub fn admin_operation(request: &Request) -> (&'static str, Option<&str>) {
    match request {
        Request::Enrol { .. } => ("enrol", None),
        Request::Create { group, .. } => ("create", Some(group)),
        Request::Add { group, .. } => ("add", Some(group)),
        Request::Evict { group, .. } => ("evict", Some(group)),
        Request::Rekey { group } => ("rekey", Some(group)),
        Request::Show { group, .. } => ("show", Some(group)),
        Request::List {} => ("list", None),
        Request::Transmission { action, .. } => match action {
            TxAction::Deactivate => ("deactivate", None),
            TxAction::Activate => ("activate", None),
        },
        Request::Node { .. } => ("node", None),
        Request::Remove { .. } => ("remove", None),
        Request::Status { action, .. } => match action {
            StatusAction::Suspend => ("suspend", None),
            StatusAction::Revoke => ("revoke", None),
            StatusAction::Reinstate => ("reinstate", None),
        },
        Request::Statuses {} => ("statuses", None),
        Request::RotateKey { .. } => ("rotate-key", None),
    }
}

/// What reading one line found.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A line (without its newline) is in the buffer.
    Line,
    /// The peer closed the connection.
    Eof,
    /// The line exceeded [`MAX_LINE`].
    TooLong,
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` without ever
/// holding more than that (plus one read buffer) in memory.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + take > MAX_LINE {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take + usize::from(done));
        if done {
            return Ok(LineRead::Line);
        }
    }
}

async fn write_json(w: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn serve_connection(
    handle: ManagerHandle,
    stream: UnixStream,
    owner: u32,
    access: Option<std::sync::Arc<AdminAccess>>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut peer = None;
    match stream.peer_cred() {
        Ok(cred) if access.is_some() => peer = Some(cred.uid()),
        Ok(cred) if cred.uid() == owner => {}
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                "control connection from another user refused"
            );
            return Ok(());
        }
        Err(e) => {
            warn!(error = %e, "control connection without peer credentials refused");
            return Ok(());
        }
    }
    let who = match (&access, peer) {
        (Some(a), Some(uid)) => Some((a.as_ref(), a.names_of(uid))),
        _ => None,
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut line = Vec::new();
    loop {
        let got = tokio::select! {
            got = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut read, &mut line)) => got,
            _ = stop.changed() => return Ok(()),
        };
        match got {
            Err(_) => {
                debug!("idle control connection closed");
                return Ok(());
            }
            Ok(r) => match r? {
                LineRead::Eof => return Ok(()),
                LineRead::TooLong => {
                    let refusal = json!({
                        "ok": false,
                        "error": format!("request longer than {MAX_LINE} bytes: split it (the connection is closed)"),
                    });
                    write_json(&mut write, &refusal).await?;
                    return Ok(());
                }
                LineRead::Line => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let response = respond(&handle, &line, who.as_ref()).await;
                    write_json(&mut write, &response).await?;
                }
            },
        }
    }
}

/// The running control socket; [`ControlServer::shutdown`] stops it and
/// removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, lets each connection finish the request in hand (at
    /// most 5 seconds), and removes the socket file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

fn refuse(what: String) -> Error {
    Error::Control(what)
}

/// Refuses a directory that group or others may write to (unless it is
/// sticky and ours, like /tmp — then only we can replace our files in it).
fn check_parent(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        refuse(format!(
            "cannot use directory {} for the control socket: {e}",
            dir.display()
        ))
    })?;
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(refuse(format!(
            "directory {} is writable by group or others (mode {:o}): someone else could \
             replace the control socket; run `chmod go-w {}` (or 700) and start again",
            dir.display(),
            mode & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// Removes a socket left by a manager that is gone; refuses when someone
/// answers on it or when the path holds something else.
fn clear_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(format!("cannot inspect {}: {e}", path.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(refuse(format!(
            "{} exists and is not a socket: move it away or set another control_socket",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(refuse(format!(
            "another manager answers on {}: stop it first (or give this one another state_dir / control_socket)",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing the stale control socket of a manager that is gone");
            std::fs::remove_file(path)
                .map_err(|e| refuse(format!("cannot remove stale {}: {e}", path.display())))
        }
        Err(e) => Err(refuse(format!(
            "cannot tell whether a manager answers on {} ({e}): remove it if none runs",
            path.display()
        ))),
    }
}

/// Binds the socket at `path` with mode 0600 (owner only).
#[cfg(test)]
fn bind_private(path: &Path) -> Result<(std::os::unix::net::UnixListener, u32)> {
    bind_with(path, 0o600, None)
}

/// Binds the socket at `path` with mode `mode` (0600 unless an
/// administration policy shares it) and group `gid` from its first moment
/// (see the module docs) and returns it with the owner's uid.
fn bind_with(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<(std::os::unix::net::UnixListener, u32)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| refuse(format!("{} names no file", path.display())))?;
    check_parent(&dir)?;
    clear_stale(path)?;
    let private = dir.join(format!(".control-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| refuse(format!("cannot create {}: {e}", private.display())))?;
    let staged = private.join(name);
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged).map_err(|e| {
            refuse(format!(
                "cannot bind the control socket {} ({e}); socket paths longer than about 100 bytes \
                 fail: set a shorter control_socket",
                staged.display()
            ))
        })?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&staged, None, Some(gid)).map_err(|e| {
                refuse(format!(
                    "cannot give {} to group {gid} ({e}): the manager's user must belong to that group",
                    staged.display()
                ))
            })?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| refuse(format!("cannot chmod {}: {e}", staged.display())))?;
        let owner = std::fs::symlink_metadata(&staged)
            .map_err(|e| refuse(format!("cannot inspect {}: {e}", staged.display())))?
            .uid();
        std::fs::rename(&staged, path)
            .map_err(|e| refuse(format!("cannot move the socket to {}: {e}", path.display())))?;
        Ok((listener, owner))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// A control socket bound (owner-only, see the module docs) but not served
/// yet: bind it before connecting the manager to its broker, so a second
/// manager on the same state directory stops before it disturbs anything.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    owner: u32,
}

impl BoundSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `handle` on the socket until [`ControlServer::shutdown`]
    /// to its owner only.
    pub fn serve(self, handle: ManagerHandle) -> Result<ControlServer> {
        self.serve_with(handle, None)
    }

    /// Serves `handle` on the socket. With `access`, every user who can
    /// reach the socket may connect and each request is decided by the
    /// administration policy (the owner's too); without it, only the
    /// socket's owner may connect.
    pub fn serve_with(
        self,
        handle: ManagerHandle,
        access: Option<AdminAccess>,
    ) -> Result<ControlServer> {
        let access = access.map(std::sync::Arc::new);
        let shared = access.is_some();
        self.listener
            .set_nonblocking(true)
            .map_err(|e| refuse(format!("control socket: {e}")))?;
        let listener = UnixListener::from_std(self.listener)
            .map_err(|e| refuse(format!("control socket: {e}")))?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(handle, listener, self.owner, access, stopped));
        if shared {
            info!(path = %self.path.display(), "control socket listening (each request decided by the administration policy, [[admin_acp]])");
        } else {
            info!(path = %self.path.display(), "control socket listening (owner only)");
        }
        Ok(ControlServer {
            path: self.path,
            stop,
            task,
        })
    }

    /// Closes the socket and removes its file (the manager did not start).
    pub fn discard(self) {
        drop(self.listener);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path`: refuses a directory others may write
/// to, removes a stale socket nobody answers on, refuses when a manager
/// answers.
pub fn bind(path: &Path) -> Result<BoundSocket> {
    bind_shared(path, 0o600, None)
}

/// [`bind`] with another mode — 0600, 0660 or 0666, the latter two only
/// to be served with an administration policy ([`BoundSocket::serve_with`])
/// — and optionally another group.
pub fn bind_shared(path: &Path, mode: u32, gid: Option<u32>) -> Result<BoundSocket> {
    if ![0o600, 0o660, 0o666].contains(&mode) {
        return Err(refuse(format!(
            "control socket mode {mode:o}: use 600 (owner only), 660 (and its group) or 666 (every local user)"
        )));
    }
    let (listener, owner) = bind_with(path, mode, gid)?;
    Ok(BoundSocket {
        path: path.to_path_buf(),
        listener,
        owner,
    })
}

/// Binds the control socket at `path` and serves `handle` on it.
pub fn start(handle: ManagerHandle, path: &Path) -> Result<ControlServer> {
    bind(path)?.serve(handle)
}

async fn accept_loop(
    handle: ManagerHandle,
    listener: UnixListener,
    owner: u32,
    access: Option<std::sync::Arc<AdminAccess>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (handle, stop, access) = (handle.clone(), stop.clone(), access.clone());
        connections.spawn(async move {
            if let Err(e) = serve_connection(handle, stream, owner, access, stop).await {
                debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

#[cfg(test)]
mod tests;

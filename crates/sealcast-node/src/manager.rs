//! The manager runtime (IN): the sans-IO [`Manager`] on MQTT or CoAP (a
//! [`Link`]), persisted in a
//! [`ManagerStore`] and recording its actions in a hash-chained audit log.
//!
//! Every administrative operation is applied to the manager, saved
//! (`persist::save_group`, a compare-and-set on the epoch) and audited
//! **before** its messages are published. Acks and pulls arrive on
//! `sealcast/v1/d/+/ack|pull` (MQTT topics, or CoAP requests to the
//! manager's endpoint with that Uri-Path), each acknowledged after it was
//! processed; the current material is re-sent to members that have not
//! acknowledged it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use sealcast_core::credential::PublicCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, Epoch, GroupId};
use sealcast_core::target::{DeviceChannel, GroupChannel, Topic, TopicScheme};
use sealcast_group::manager::GroupCheckpoint;
use sealcast_group::manager::{
    Destination, EntityKind, GroupSummary, Manager, MemberRecord, MessageKind, Outgoing,
    RekeyScheme, Role,
};
use sealcast_store::persist::{save_enrolment, save_group, save_new_entities};
use sealcast_store::{AuditEntry, AuditKind, AuditLog, ManagerStore};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::link::{Inbox, Incoming, Interest, Link, LinkConfig};
use crate::runtime::{now, os_rng};
use crate::{Error, Result};

mod handle;
mod rotate;
mod status;
mod tokens;
mod transmission;

pub use handle::ManagerHandle;
pub use rotate::Rotated;
pub use status::{STATUS_MAX_AGE_MS, StatusOutcome};
pub use tokens::{MIN_TOKEN_LIFETIME, TOKEN_CLOCK_SLACK_S, TokenGrant};
pub use transmission::{NodeState, ORDER_CHECK_INTERVAL, ORDER_RETRY_FIRST, scope_names};

/// How often unacknowledged material is re-sent.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(500);

/// Administrative operations.
enum Admin {
    Enrol {
        credential: Box<PublicCredential>,
        kind: EntityKind,
        agent: Option<EntityId>,
        reply: oneshot::Sender<Result<()>>,
    },
    CreateGroup {
        group: GroupId,
        alg: AeadAlg,
        scheme: RekeyScheme,
        reply: oneshot::Sender<Result<()>>,
    },
    AddMembers {
        group: GroupId,
        members: Vec<(EntityId, Role)>,
        reply: oneshot::Sender<Result<()>>,
    },
    Evict {
        group: GroupId,
        member: EntityId,
        reply: oneshot::Sender<Result<()>>,
    },
    Summary {
        group: GroupId,
        reply: oneshot::Sender<Option<GroupSummary>>,
    },
    EnrolMany {
        entities: Vec<Enrolment>,
        reply: oneshot::Sender<Result<EnrolReport>>,
    },
    Rekey {
        group: GroupId,
        reply: oneshot::Sender<Result<Epoch>>,
    },
    Groups {
        reply: oneshot::Sender<Vec<GroupSummary>>,
    },
    Detail {
        group: GroupId,
        page: core::ops::Range<usize>,
        reply: oneshot::Sender<Option<GroupDetail>>,
    },
    Transmission {
        node: EntityId,
        deactivate: bool,
        scopes: Vec<sealcast_group::transmission::Scope>,
        reply: oneshot::Sender<Result<NodeState>>,
    },
    NodeStatus {
        node: EntityId,
        reply: oneshot::Sender<Result<NodeState>>,
    },
    Remove {
        entity: EntityId,
        reply: oneshot::Sender<Result<Vec<(GroupId, Epoch)>>>,
    },
    SetStatus {
        node: EntityId,
        target: Option<sealcast_group::status::Status>,
        reason: String,
        reply: oneshot::Sender<Result<StatusOutcome>>,
    },
    StatusList {
        reply: oneshot::Sender<Result<sealcast_store::StatusSnapshot>>,
    },
    RotateKey {
        credential: Box<PublicCredential>,
        reply: oneshot::Sender<Result<Rotated>>,
    },
    SetPolicy {
        rules: Vec<sealcast_group::status::PolicyRule>,
        reply: oneshot::Sender<Result<()>>,
    },
    SetTokenGrants {
        grants: Vec<TokenGrant>,
        reply: oneshot::Sender<Result<()>>,
    },
    TokenOf {
        entity: EntityId,
        reply: oneshot::Sender<Option<sealcast_group::token::AccessToken>>,
    },
    RefusedByPolicy {
        detail: String,
        reply: oneshot::Sender<()>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// Runs a blocking store call from inside the async runtime. The
/// PostgreSQL client drives a runtime of its own, which must not start on a
/// thread of this one (it panicked: "Cannot start a runtime from within a
/// runtime"); `block_in_place` hands this worker's other tasks to another
/// thread and leaves the runtime context for the call. On a current-thread
/// runtime (the demos, on SQLite) the call runs as it is.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Pulls of one device answered at once before the rate limit applies.
pub const PULL_BURST: u32 = 10;
/// After a burst, one pull of a device is answered per this interval.
pub const PULL_ANSWER_INTERVAL: Duration = Duration::from_secs(1);

struct Runtime {
    manager: Manager,
    store: Box<dyn ManagerStore>,
    audit: AuditLog,
    saved: BTreeMap<GroupId, Epoch>,
    link: Link,
    topics: TopicScheme,
    rng: StdRng,
    /// When each device's last pull was answered (see `pull_allowed`).
    last_pull: BTreeMap<EntityId, (u32, std::time::Instant)>,
    resends: std::sync::Arc<std::sync::atomic::AtomicU64>,
    order_resends: transmission::OrderResends,
    /// The longest wait between two re-sends of an unacknowledged order.
    order_retry_max: Duration,
    status: status::StatusState,
    tokens: tokens::TokenState,
}

/// Starts the manager runtime. `manager` may come fresh or from
/// `persist::load_manager` (then pass the loaded epochs as `saved`).
pub async fn spawn(
    manager: Manager,
    store: Box<dyn ManagerStore>,
    audit: AuditLog,
    saved: BTreeMap<GroupId, Epoch>,
    broker_url: &str,
    topics: TopicScheme,
) -> Result<ManagerHandle> {
    spawn_on(
        manager,
        store,
        audit,
        saved,
        &LinkConfig::mqtt(broker_url),
        topics,
    )
    .await
}

/// Starts the manager runtime on the transport `link` names: MQTT (it
/// subscribes to every device's ack and pull topics) or CoAP (acks and
/// pulls are requests to its endpoint; it joins no multicast group, it only
/// sends to them).
pub async fn spawn_on(
    manager: Manager,
    store: Box<dyn ManagerStore>,
    audit: AuditLog,
    saved: BTreeMap<GroupId, Epoch>,
    link: &LinkConfig,
    topics: TopicScheme,
) -> Result<ManagerHandle> {
    let interest = Interest {
        filters: vec![
            topics.all_devices_filter(DeviceChannel::Ack),
            topics.all_devices_filter(DeviceChannel::Pull),
        ],
        multicast: false,
        ..Interest::default()
    };
    let (link, inbox) = match Link::connect(manager.id(), link, topics.clone(), interest).await {
        Ok(x) => x,
        Err(e) => {
            blocking(move || drop(store));
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(16);
    let resends = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rt = Runtime {
        manager,
        store,
        audit,
        saved,
        link,
        topics,
        rng: os_rng()?,
        last_pull: BTreeMap::new(),
        resends: resends.clone(),
        order_resends: transmission::OrderResends::default(),
        order_retry_max: Duration::from_millis(Manager::DEFAULT_MAX_RETRY_MS),
        status: status::StatusState::default(),
        tokens: tokens::TokenState::default(),
    };
    tokio::spawn(rt.run(inbox, rx));
    Ok(ManagerHandle { admin: tx, resends })
}

impl Runtime {
    async fn run(mut self, mut inbox: Inbox, mut admin: mpsc::Receiver<Admin>) {
        let mut resend = tokio::time::interval(RESEND_INTERVAL);
        let stopped = loop {
            tokio::select! {
                msg = inbox.next_message() => match msg {
                    Some(m) => self.on_message(m).await,
                    None => break None,
                },
                op = admin.recv() => match op {
                    Some(Admin::Stop { reply }) => break Some(reply),
                    Some(op) => self.on_admin(op).await,
                    None => break None,
                },
                _ = resend.tick() => {
                    // Re-send nothing from a state another manager left behind.
                    self.refresh_all();
                    self.sync_all_members().await;
                    match self.manager.poll_resend(now(), &mut self.rng) {
                        Ok(out) => {
                            self.resends.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            self.publish_audited(out, true).await
                        }
                        Err(e) => warn!(error = %e, "re-send failed"),
                    }
                    self.resend_orders().await;
                    self.check_status().await;
                    self.renew_tokens().await;
                }
            }
        };
        self.link.close(Duration::from_secs(2)).await;
        // Closing a PostgreSQL connection blocks too.
        let Runtime { store, .. } = self;
        blocking(move || drop(store));
        debug!("manager stopped");
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    fn audit(
        &mut self,
        kind: AuditKind,
        group: Option<&GroupId>,
        entity: Option<&EntityId>,
        detail: String,
    ) {
        let mut entry = AuditEntry::new(now(), kind, detail);
        if let Some(g) = group {
            entry = entry.with_group(g.clone());
        }
        if let Some(e) = entity {
            entry = entry.with_entity(e.clone());
        }
        if let Err(e) = self.audit.append(&entry) {
            warn!(error = %e, "audit log append failed");
        }
    }

    fn save(&mut self, group: &GroupId) -> Result<()> {
        let previous = self.saved.get(group).copied();
        let (store, manager) = (self.store.as_mut(), &self.manager);
        blocking(|| save_group(store, manager, group, previous, now()))?;
        if let Some(m) = self.manager.material(group) {
            self.saved.insert(group.clone(), m.epoch());
        }
        Ok(())
    }

    /// Persists what an operation changed in `group` since `checkpoint`.
    /// If that fails, the group is put back exactly as it was (check →
    /// persist → apply: a refused operation leaves memory as it found it,
    /// so nothing the store never recorded is ever re-sent), and after a
    /// conflict — another manager advanced the group first — the group is
    /// reloaded from the store before anything else is sent.
    fn commit(&mut self, group: &GroupId, checkpoint: GroupCheckpoint) -> Result<()> {
        let Err(e) = self.save(group) else {
            return Ok(());
        };
        self.manager.roll_back(checkpoint);
        self.reload_after_conflict(group, &e);
        Err(e)
    }

    /// After `error` from a save of `group`: if it was a conflict (another
    /// manager advanced the group first), reloads the group from the store.
    fn reload_after_conflict(&mut self, group: &GroupId, error: &Error) {
        if matches!(error, Error::Store(sealcast_store::Error::Conflict { .. })) {
            self.reload(group, "another manager advanced the group");
        }
    }

    /// Reloads `group` if the store holds another epoch of it than this
    /// manager last saved or loaded — another manager of the same store
    /// changed it (every change of members moves the epoch) — so that
    /// answers, re-sends and the next operation start from the store's
    /// state, never from a stale one.
    fn refresh(&mut self, group: &GroupId) {
        let store = self.store.as_mut();
        let stored = match blocking(|| store.group(group)) {
            Ok(g) => g.map(|g| g.epoch),
            Err(e) => {
                warn!(group = %group.name(), error = %e, "cannot read the group from the store; answering from memory");
                return;
            }
        };
        if stored != self.saved.get(group).copied() {
            self.reload(group, "the store holds another epoch");
        }
    }

    /// Tells the transport the members of `group` (oneM2M keeps them in the
    /// group's `<group>` resource; MQTT and CoAP need nothing). Called
    /// before every publish to the group — every change of members
    /// publishes one — and on each re-send tick, so members that start
    /// later are added once they are there.
    async fn sync_members(&mut self, group: &GroupId) {
        if self.link.transport() != crate::link::Transport::OneM2m {
            return;
        }
        let Some(members) = self.manager.members(group) else {
            return;
        };
        let senders: BTreeSet<EntityId> = members
            .iter()
            .filter(|(_, r)| r.role == sealcast_group::manager::Role::Sender)
            .map(|(id, _)| id.clone())
            .collect();
        let members: BTreeSet<EntityId> = members.keys().cloned().collect();
        if let Err(e) = self.link.set_group_members(group, &members, &senders).await {
            warn!(group = %group.name(), error = %e, "cannot set the group's members on the transport; retrying on the next tick");
        }
    }

    async fn sync_all_members(&mut self) {
        if self.link.transport() != crate::link::Transport::OneM2m {
            return;
        }
        let groups: Vec<GroupId> = self.manager.groups().cloned().collect();
        for g in groups {
            self.sync_members(&g).await;
        }
    }

    /// [`Self::refresh`] for every group this manager or the store knows.
    fn refresh_all(&mut self) {
        let store = self.store.as_mut();
        let stored = match blocking(|| store.list_groups()) {
            Ok(groups) => groups,
            Err(e) => {
                debug!(error = %e, "cannot list the groups in the store");
                return;
            }
        };
        let mut stale: Vec<GroupId> = stored
            .iter()
            .filter(|g| self.saved.get(&g.id) != Some(&g.epoch))
            .map(|g| g.id.clone())
            .collect();
        stale.extend(
            self.saved
                .keys()
                .filter(|id| !stored.iter().any(|g| &g.id == *id))
                .cloned(),
        );
        for group in stale {
            self.reload(&group, "the store holds another epoch");
        }
    }

    fn reload(&mut self, group: &GroupId, why: &str) {
        let (store, manager) = (self.store.as_mut(), &mut self.manager);
        match blocking(|| sealcast_store::persist::reload_group(store, manager, group)) {
            Ok(Some(epoch)) => {
                info!(group = %group.name(), %epoch, "{why}: reloaded it from the store");
                self.saved.insert(group.clone(), epoch);
            }
            Ok(None) => {
                info!(group = %group.name(), "{why}: the group is gone from the store");
                self.saved.remove(group);
            }
            Err(reload) => {
                warn!(group = %group.name(), error = %reload, "the group could not be reloaded from the store; it stays as it was");
            }
        }
    }

    async fn on_admin(&mut self, op: Admin) {
        // Another manager of this store may have moved the group meanwhile.
        match &op {
            Admin::AddMembers { group, .. }
            | Admin::Evict { group, .. }
            | Admin::Rekey { group, .. }
            | Admin::Summary { group, .. }
            | Admin::Detail { group, .. } => self.refresh(&group.clone()),
            Admin::Groups { .. } => self.refresh_all(),
            _ => {}
        }
        match op {
            Admin::Enrol {
                credential,
                kind,
                agent,
                reply,
            } => {
                let id = credential.id().clone();
                let r = self.revoked_among(&[&credential]).and_then(|lift| {
                    self.manager
                        .enrol(*credential, kind, agent)
                        .map_err(Error::from)
                        .and_then(|()| {
                            let (store, manager) = (self.store.as_mut(), &self.manager);
                            blocking(|| save_enrolment(store, manager)).map_err(Error::from)
                        })
                        .map(|()| lift)
                });
                let r = r.map(|lift| {
                    self.audit(AuditKind::Enrol, None, Some(&id), format!("{kind:?}"));
                    self.lift_revoked(&lift);
                });
                let _ = reply.send(r);
            }
            Admin::CreateGroup {
                group,
                alg,
                scheme,
                reply,
            } => {
                let checkpoint = self.manager.checkpoint(&group);
                let r = match self.manager.create_group(
                    group.clone(),
                    alg,
                    scheme,
                    None,
                    now(),
                    &mut self.rng,
                ) {
                    Ok(()) => self.commit(&group, checkpoint),
                    Err(e) => Err(e.into()),
                };
                if r.is_ok() {
                    self.audit(
                        AuditKind::Other("create-group".into()),
                        Some(&group),
                        None,
                        format!("{scheme:?}"),
                    );
                }
                let _ = reply.send(r);
            }
            Admin::AddMembers {
                group,
                members,
                reply,
            } => {
                let checkpoint = self.manager.checkpoint(&group);
                let r = match self
                    .manager
                    .add_members(&group, &members, now(), &mut self.rng)
                {
                    Ok(out) => match self.commit(&group, checkpoint) {
                        Ok(()) => {
                            let epoch = self
                                .manager
                                .material(&group)
                                .map(|m| m.epoch().get())
                                .unwrap_or(0);
                            for (m, role) in &members {
                                self.audit(
                                    AuditKind::Join,
                                    Some(&group),
                                    Some(m),
                                    format!("{role:?}, epoch {epoch}"),
                                );
                            }
                            self.publish(out).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            Admin::Evict {
                group,
                member,
                reply,
            } => {
                let r = self.evict_one(&group, &member).await;
                let _ = reply.send(r);
            }
            Admin::Remove { entity, reply } => {
                let r = self.remove_entity(&entity).await;
                let _ = reply.send(r);
            }
            Admin::SetStatus {
                node,
                target,
                reason,
                reply,
            } => {
                let r = self.set_status(&node, target, &reason).await;
                let _ = reply.send(r);
            }
            Admin::StatusList { reply } => {
                let _ = reply.send(self.status_snapshot());
            }
            Admin::RotateKey { credential, reply } => {
                let r = self.rotate_key(*credential).await;
                let _ = reply.send(r);
            }
            Admin::SetTokenGrants { grants, reply } => {
                let r = self.tokens.set(grants);
                if r.is_ok() {
                    self.renew_tokens().await;
                }
                let _ = reply.send(r);
            }
            Admin::RefusedByPolicy { detail, reply } => {
                self.audit(AuditKind::Other("admin-refused".into()), None, None, detail);
                let _ = reply.send(());
            }
            Admin::TokenOf { entity, reply } => {
                let _ = reply.send(self.tokens.issued(&entity).cloned());
            }
            Admin::SetPolicy { rules, reply } => {
                let r = sealcast_group::status::MisbehaviourPolicy::new(rules)
                    .map(|p| self.status.policy = p)
                    .map_err(Error::from);
                let _ = reply.send(r);
            }
            Admin::Summary { group, reply } => {
                let _ = reply.send(self.manager.summary(&group));
            }
            Admin::EnrolMany { entities, reply } => {
                let _ = reply.send(self.enrol_many(entities));
            }
            Admin::Rekey { group, reply } => {
                let r = self.rekey(&group).await;
                let _ = reply.send(r);
            }
            Admin::Groups { reply } => {
                let groups = self.manager.groups().cloned().collect::<Vec<_>>();
                let _ = reply.send(
                    groups
                        .iter()
                        .filter_map(|g| self.manager.summary(g))
                        .collect(),
                );
            }
            Admin::Detail { group, page, reply } => {
                let _ = reply.send(self.detail(&group, page));
            }
            Admin::Transmission {
                node,
                deactivate,
                scopes,
                reply,
            } => {
                let r = self.transmission(&node, deactivate, &scopes).await;
                let _ = reply.send(r);
            }
            Admin::NodeStatus { node, reply } => {
                let _ = reply.send(self.node_state(&node));
            }
            Admin::Stop { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Evicts `member` from `group`: applied, saved and audited before the
    /// rekey is published.
    async fn evict_one(&mut self, group: &GroupId, member: &EntityId) -> Result<()> {
        let checkpoint = self.manager.checkpoint(group);
        let out = self.manager.evict(group, member, now(), &mut self.rng)?;
        self.commit(group, checkpoint)?;
        let epoch = self
            .manager
            .material(group)
            .map(|m| m.epoch().get())
            .unwrap_or(0);
        self.audit(
            AuditKind::Evict,
            Some(group),
            Some(member),
            format!("rekey to epoch {epoch}"),
        );
        self.audit(
            AuditKind::Rekey,
            Some(group),
            None,
            format!("epoch {epoch}, {} messages", out.len()),
        );
        self.publish(out).await;
        Ok(())
    }

    /// Removes an enrolled entity entirely: evicted (and each group
    /// rekeyed) from every group it belongs to, then its enrolment and any
    /// transmission order deleted from the store, then from the manager.
    /// An agent that still relays for enrolled devices is refused before
    /// anything changes. Each eviction is saved on its own; if one fails,
    /// the ones before stand and the request can be repeated.
    async fn remove_entity(&mut self, entity: &EntityId) -> Result<Vec<(GroupId, Epoch)>> {
        self.check_removable(entity)?;
        let groups = self.groups_of(entity);
        let mut evicted = Vec::new();
        for g in groups {
            self.refresh(&g);
            self.evict_one(&g, entity).await?;
            let epoch = self
                .manager
                .material(&g)
                .map_or(Epoch::new(0), |m| m.epoch());
            evicted.push((g, epoch));
        }
        let store = self.store.as_mut();
        blocking(|| store.remove_entity(entity))?;
        self.manager.unenrol(entity)?;
        self.order_resends.forget(entity);
        self.audit(
            AuditKind::Other("remove-entity".into()),
            None,
            Some(entity),
            format!("evicted from {} group(s), enrolment deleted", evicted.len()),
        );
        info!(%entity, groups = evicted.len(), "entity removed");
        Ok(evicted)
    }

    /// The groups `entity` is a member of.
    fn groups_of(&self, entity: &EntityId) -> Vec<GroupId> {
        self.manager
            .groups()
            .filter(|g| {
                self.manager
                    .members(g)
                    .is_some_and(|m| m.contains_key(entity))
            })
            .cloned()
            .collect()
    }

    /// Refuses to remove an entity that is not enrolled, or an agent that
    /// still relays for enrolled devices (before anything changes).
    fn check_removable(&self, entity: &EntityId) -> Result<()> {
        if self.manager.kind_of(entity).is_none() {
            return Err(Error::Group(sealcast_group::Error::UnknownMember));
        }
        let relayed: Vec<String> = self
            .manager
            .enrolled()
            .filter(|(_, _, agent)| *agent == Some(entity))
            .map(|(c, _, _)| c.id().to_string())
            .collect();
        if !relayed.is_empty() {
            return Err(Error::Runtime(format!(
                "{entity} relays for {} enrolled device(s) ({}): remove them, or enrol them behind another agent, first",
                relayed.len(),
                relayed.join(", ")
            )));
        }
        Ok(())
    }

    async fn on_message(&mut self, incoming: Incoming) {
        match self.topics.parse(&incoming.target) {
            Ok(Topic::Device {
                channel: DeviceChannel::Ack,
                ..
            }) if sealcast_group::transmission::OrderAck::looks_like(&incoming.payload) => {
                self.on_order_ack(&incoming.payload).await;
            }
            Ok(Topic::Device {
                channel: DeviceChannel::Ack,
                ..
            }) if sealcast_group::status::MisbehaviourReport::claimed_reporter(
                &incoming.payload,
            )
            .is_some() =>
            {
                self.on_misbehaviour(&incoming.payload).await;
            }
            Ok(Topic::Device {
                channel: DeviceChannel::Ack,
                ..
            }) => match self.manager.handle_ack(&incoming.payload) {
                Ok((group, member, epoch)) => {
                    if let Err(e) = self.save(&group) {
                        self.reload_after_conflict(&group, &e);
                    }
                    // A member that acks is up: on oneM2M, add it to the
                    // group's fan-out now if it was left out, and give it
                    // the token it may have missed.
                    self.sync_members(&group).await;
                    self.send_token_on_first_ack(&member).await;
                    self.audit(
                        AuditKind::Ack,
                        Some(&group),
                        Some(&member),
                        format!("epoch {}", epoch.get()),
                    );
                }
                Err(e) => debug!(error = %e, "ack refused"),
            },
            Ok(Topic::Device {
                channel: DeviceChannel::Pull,
                device,
            }) => {
                if !self.pull_allowed(&device) {
                    debug!(%device, "pull dropped: this device's pull budget is used up");
                } else {
                    match self
                        .manager
                        .handle_pull(&incoming.payload, now(), &mut self.rng)
                    {
                        Ok(out) => {
                            // The current status list first: a node that
                            // was away catches up.
                            self.send_status_to(&device).await;
                            self.send_token_to(&device).await;
                            // A device with an order it has not acknowledged
                            // gets the order now and the answer only once it
                            // acknowledged it: a one-shot send then never
                            // seals before it applied the order, whatever
                            // order the transport delivers the two in.
                            if self.order_before_pull(&device).await {
                                self.order_resends.defer_answer(device.clone(), out);
                            } else {
                                self.publish(vec![out]).await
                            }
                        }
                        Err(e) => debug!(%device, error = %e, "pull refused"),
                    }
                }
            }
            _ => {}
        }
        // Acknowledged only now, after the ack or pull was processed.
        incoming.ack.ack().await;
    }

    /// A token bucket per device: a burst of [`PULL_BURST`] pulls is
    /// verified and answered, then one per [`PULL_ANSWER_INTERVAL`]; the
    /// rest are dropped before any signature work (the re-send loop still
    /// delivers what a member lacks). Keyed by the topic's device, so a
    /// flood costs a map lookup per message.
    fn pull_allowed(&mut self, device: &EntityId) -> bool {
        let now = std::time::Instant::now();
        if self.last_pull.len() > 200_000 {
            self.last_pull
                .retain(|_, (_, t)| now.duration_since(*t) < PULL_ANSWER_INTERVAL * PULL_BURST);
        }
        let (tokens, last) = self
            .last_pull
            .entry(device.clone())
            .or_insert((PULL_BURST, now));
        let refill =
            now.duration_since(*last).as_millis() / PULL_ANSWER_INTERVAL.as_millis().max(1);
        let refill = u32::try_from(refill).unwrap_or(u32::MAX);
        if refill > 0 {
            *tokens = tokens.saturating_add(refill).min(PULL_BURST);
            *last = now;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }

    async fn publish(&mut self, out: Vec<Outgoing>) {
        self.publish_audited(out, false).await;
    }

    /// Publishes `out`. The deliveries are audited before they leave, all
    /// in one append (one fsync), not one sync per delivery: a join of
    /// thousands costs one disk flush. A re-send round (`rollup`) repeats
    /// deliveries already audited, so it is audited as ONE record that
    /// counts them: the audit log then grows with what the manager decided,
    /// not with how long members stay offline.
    async fn publish_audited(&mut self, out: Vec<Outgoing>, rollup: bool) {
        let at = now();
        let deliveries = out
            .iter()
            .filter(|o| matches!(o.to, Destination::Member { .. }))
            .count();
        let entries: Vec<AuditEntry> = if rollup {
            if deliveries == 0 {
                Vec::new()
            } else {
                vec![AuditEntry::new(
                    at,
                    AuditKind::Delivery,
                    format!("re-send round: {deliveries} deliveries re-sent"),
                )]
            }
        } else {
            out.iter()
                .filter_map(|o| match &o.to {
                    Destination::Member { member, .. } => Some(
                        AuditEntry::new(at, AuditKind::Delivery, format!("{:?}", o.kind))
                            .with_entity(member.clone()),
                    ),
                    Destination::Group(_) => None,
                })
                .collect()
        };
        if !entries.is_empty()
            && let Err(e) = self.audit.append_all(&entries)
        {
            warn!(error = %e, "audit log append failed");
        }
        for o in out {
            let sent = match (&o.to, o.kind) {
                (Destination::Member { member, via }, _) => {
                    // End to end through the member's agent, if it has one
                    // (CoAP sends it there; on MQTT both subscribe).
                    let target = self.topics.device(member, DeviceChannel::Delivery);
                    let next_hop = via.as_ref().unwrap_or(member);
                    self.link.send_to(next_hop, target, o.bytes).await
                }
                (Destination::Group(g), MessageKind::TreeRekey) => {
                    self.sync_members(g).await;
                    self.link
                        .publish_group(g, GroupChannel::Rekey, o.bytes)
                        .await
                }
                (Destination::Group(g), _) => {
                    self.sync_members(g).await;
                    self.link
                        .publish_group(g, GroupChannel::Notice, o.bytes)
                        .await
                }
            };
            if let Err(e) = sent {
                warn!(error = %e, "publish failed; the re-send timer will retry deliveries");
            }
        }
    }
}

/// One entity to enrol: its public credential, kind and relaying agent.
pub type Enrolment = (PublicCredential, EntityKind, Option<EntityId>);

/// What [`ManagerHandle::enrol_many`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolReport {
    /// Entities newly enrolled.
    pub enrolled: usize,
    /// Entities enrolled already with the same credential, kind and agent.
    pub unchanged: usize,
}

/// A group as [`ManagerHandle::detail`] shows it.
#[derive(Clone, Debug)]
pub struct GroupDetail {
    /// Epoch, scheme and counts.
    pub summary: GroupSummary,
    /// The group's AEAD algorithm.
    pub alg: AeadAlg,
    /// The requested members (all, or one page) with role, sender id, leaf
    /// and acknowledged epoch.
    pub members: Vec<(EntityId, MemberRecord)>,
    /// How many members acknowledged each epoch (`None`: none yet).
    pub held: BTreeMap<Option<Epoch>, usize>,
}

impl Runtime {
    fn enrol_many(&mut self, mut entities: Vec<Enrolment>) -> Result<EnrolReport> {
        // Agents first (devices name them), then check everything before
        // changing anything: the batch is all or none.
        entities.sort_by_key(|(_, kind, _)| *kind != EntityKind::Agent);
        let mut seen = BTreeSet::new();
        let mut report = EnrolReport::default();
        let mut fresh = Vec::with_capacity(entities.len());
        for (credential, kind, agent) in entities {
            let id = credential.id().clone();
            if !seen.insert(id.clone()) {
                return Err(Error::Runtime(format!(
                    "{id} appears twice in one enrolment: enrol it once"
                )));
            }
            if let Some(existing) = self.manager.credential_of(&id) {
                let same = *existing == credential
                    && self.manager.kind_of(&id) == Some(kind)
                    && self.manager.agent_of(&id) == agent.as_ref();
                if same {
                    report.unchanged += 1;
                    continue;
                }
                return Err(Error::Runtime(format!(
                    "{id} is enrolled already with another public key, kind or agent: \
                     nothing was enrolled (re-keying an enrolled entity is not supported; \
                     use a new id)"
                )));
            }
            if let Some(a) = &agent {
                let enrolled_agent = self.manager.kind_of(a) == Some(EntityKind::Agent);
                let batch_agent = fresh
                    .iter()
                    .any(|(c, k, _): &Enrolment| c.id() == a && *k == EntityKind::Agent);
                if !enrolled_agent && !batch_agent {
                    return Err(Error::Runtime(format!(
                        "the agent {a} of {id} is not enrolled as an agent: enrol it first \
                         (kind agent), then {id}"
                    )));
                }
            }
            fresh.push((credential, kind, agent));
        }
        if fresh.is_empty() {
            return Ok(report);
        }
        let lift = self.revoked_among(&fresh.iter().map(|(c, _, _)| c).collect::<Vec<_>>())?;
        // Saved first: a failed save leaves the manager unchanged too.
        let store = self.store.as_mut();
        blocking(|| save_new_entities(store, &fresh))?;
        let at = now();
        let mut entries = Vec::with_capacity(fresh.len());
        for (credential, kind, agent) in fresh {
            let id = credential.id().clone();
            self.manager.enrol(credential, kind, agent)?;
            entries
                .push(AuditEntry::new(at, AuditKind::Enrol, format!("{kind:?}")).with_entity(id));
            report.enrolled += 1;
        }
        if let Err(e) = self.audit.append_all(&entries) {
            warn!(error = %e, "audit log append failed");
        }
        self.lift_revoked(&lift);
        Ok(report)
    }

    async fn rekey(&mut self, group: &GroupId) -> Result<Epoch> {
        let checkpoint = self.manager.checkpoint(group);
        let out = self.manager.rekey(group, now(), &mut self.rng)?;
        self.commit(group, checkpoint)?;
        let epoch = self
            .manager
            .material(group)
            .map(|m| m.epoch())
            .ok_or(Error::Group(sealcast_group::Error::UnknownGroup))?;
        self.audit(
            AuditKind::Rekey,
            Some(group),
            None,
            format!(
                "epoch {}, {} messages, no membership change",
                epoch.get(),
                out.len()
            ),
        );
        self.publish(out).await;
        Ok(epoch)
    }

    fn detail(&self, group: &GroupId, page: core::ops::Range<usize>) -> Option<GroupDetail> {
        let members = self.manager.members(group)?;
        let mut held = BTreeMap::new();
        for m in members.values() {
            *held.entry(m.held).or_insert(0usize) += 1;
        }
        Some(GroupDetail {
            summary: self.manager.summary(group)?,
            alg: self.manager.material(group)?.alg(),
            members: members
                .iter()
                .skip(page.start)
                .take(page.end.saturating_sub(page.start))
                .map(|(id, m)| (id.clone(), m.clone()))
                .collect(),
            held,
        })
    }
}

//! The manager runtime (IN): the sans-IO [`Manager`] on MQTT, persisted in a
//! [`ManagerStore`] and recording its actions in a hash-chained audit log.
//!
//! Every administrative operation is applied to the manager, saved
//! (`persist::save_group`, a compare-and-set on the epoch) and audited
//! **before** its messages are published. Acks and pulls arrive on
//! `sealcast/v1/d/+/ack|pull`; the current material is re-sent to members
//! that have not acknowledged it.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use sealcast_core::credential::PublicCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, Epoch, GroupId};
use sealcast_group::manager::{
    Destination, EntityKind, GroupSummary, Manager, MessageKind, Outgoing, RekeyScheme, Role,
};
use sealcast_mqtt::{
    Bytes, DeviceChannel, GroupChannel, Incoming, MqttClient, MqttConfig, Subscription, Topic,
    TopicScheme,
};
use sealcast_store::persist::{save_enrolment, save_group};
use sealcast_store::{AuditEntry, AuditKind, AuditLog, ManagerStore};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::runtime::{now, os_rng};
use crate::{Error, Result};

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
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// A handle to a running manager.
#[derive(Clone)]
pub struct ManagerHandle {
    admin: mpsc::Sender<Admin>,
}

impl core::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ManagerHandle")
    }
}

macro_rules! ask {
    ($self:ident, $variant:ident { $($field:ident: $value:expr),* }) => {{
        let (reply, rx) = oneshot::channel();
        $self.admin
            .send(Admin::$variant { $($field: $value,)* reply })
            .await
            .map_err(|_| Error::Runtime("the manager stopped".into()))?;
        rx.await.map_err(|_| Error::Runtime("the manager stopped".into()))?
    }};
}

impl ManagerHandle {
    /// Enrols an entity.
    pub async fn enrol(
        &self,
        credential: PublicCredential,
        kind: EntityKind,
        agent: Option<EntityId>,
    ) -> Result<()> {
        ask!(
            self,
            Enrol {
                credential: Box::new(credential),
                kind: kind,
                agent: agent
            }
        )
    }
    /// Creates a group.
    pub async fn create_group(
        &self,
        group: GroupId,
        alg: AeadAlg,
        scheme: RekeyScheme,
    ) -> Result<()> {
        ask!(
            self,
            CreateGroup {
                group: group,
                alg: alg,
                scheme: scheme
            }
        )
    }
    /// Adds members (one join event).
    pub async fn add_members(&self, group: GroupId, members: Vec<(EntityId, Role)>) -> Result<()> {
        ask!(
            self,
            AddMembers {
                group: group,
                members: members
            }
        )
    }
    /// Evicts a member (rekey).
    pub async fn evict(&self, group: GroupId, member: EntityId) -> Result<()> {
        ask!(
            self,
            Evict {
                group: group,
                member: member
            }
        )
    }
    /// A group's summary (epoch, members, how many hold the current epoch).
    pub async fn summary(&self, group: GroupId) -> Result<Option<GroupSummary>> {
        let (reply, rx) = oneshot::channel();
        self.admin
            .send(Admin::Summary { group, reply })
            .await
            .map_err(|_| Error::Runtime("the manager stopped".into()))?;
        rx.await
            .map_err(|_| Error::Runtime("the manager stopped".into()))
    }

    /// Stops the manager once it finished the message or operation in hand
    /// (every operation is saved and audited before it is published) and
    /// disconnects it.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.admin.send(Admin::Stop { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until every member of `group` acknowledged its current epoch.
    pub async fn wait_converged(&self, group: &GroupId, timeout: Duration) -> Result<GroupSummary> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.summary(group.clone()).await? {
                if s.current == s.members {
                    return Ok(s);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Runtime(format!(
                        "group {group}: only {} of {} members hold epoch {} after {timeout:?}",
                        s.current, s.members, s.epoch
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Runtime {
    manager: Manager,
    store: Box<dyn ManagerStore>,
    audit: AuditLog,
    saved: BTreeMap<GroupId, Epoch>,
    client: MqttClient,
    topics: TopicScheme,
    rng: StdRng,
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
    let mqtt = MqttConfig::from_url(broker_url, manager.id().as_str())?
        .with_subscription(topics.all_devices_filter(DeviceChannel::Ack))
        .with_subscription(topics.all_devices_filter(DeviceChannel::Pull));
    let (client, inbox) = MqttClient::connect(mqtt)?;
    client.wait_subscribed(Duration::from_secs(10)).await?;
    let (tx, rx) = mpsc::channel(16);
    let rt = Runtime {
        manager,
        store,
        audit,
        saved,
        client,
        topics,
        rng: os_rng()?,
    };
    tokio::spawn(rt.run(inbox, rx));
    Ok(ManagerHandle { admin: tx })
}

impl Runtime {
    async fn run(mut self, mut inbox: Subscription, mut admin: mpsc::Receiver<Admin>) {
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
                    match self.manager.poll_resend(now(), &mut self.rng) {
                        Ok(out) => self.publish(out).await,
                        Err(e) => warn!(error = %e, "re-send failed"),
                    }
                }
            }
        };
        let _ = self.client.disconnect(Duration::from_secs(2)).await;
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
        save_group(self.store.as_mut(), &self.manager, group, previous, now())?;
        if let Some(m) = self.manager.material(group) {
            self.saved.insert(group.clone(), m.epoch());
        }
        Ok(())
    }

    async fn on_admin(&mut self, op: Admin) {
        match op {
            Admin::Enrol {
                credential,
                kind,
                agent,
                reply,
            } => {
                let id = credential.id().clone();
                let r = self
                    .manager
                    .enrol(*credential, kind, agent)
                    .map_err(Error::from)
                    .and_then(|()| {
                        save_enrolment(self.store.as_mut(), &self.manager).map_err(Error::from)
                    });
                if r.is_ok() {
                    self.audit(AuditKind::Enrol, None, Some(&id), format!("{kind:?}"));
                }
                let _ = reply.send(r);
            }
            Admin::CreateGroup {
                group,
                alg,
                scheme,
                reply,
            } => {
                let r = self
                    .manager
                    .create_group(group.clone(), alg, scheme, None, now(), &mut self.rng)
                    .map_err(Error::from)
                    .and_then(|()| self.save(&group));
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
                let r = match self
                    .manager
                    .add_members(&group, &members, now(), &mut self.rng)
                {
                    Ok(out) => match self.save(&group) {
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
                let r = match self.manager.evict(&group, &member, now(), &mut self.rng) {
                    Ok(out) => match self.save(&group) {
                        Ok(()) => {
                            let epoch = self
                                .manager
                                .material(&group)
                                .map(|m| m.epoch().get())
                                .unwrap_or(0);
                            self.audit(
                                AuditKind::Evict,
                                Some(&group),
                                Some(&member),
                                format!("rekey to epoch {epoch}"),
                            );
                            self.audit(
                                AuditKind::Rekey,
                                Some(&group),
                                None,
                                format!("epoch {epoch}, {} messages", out.len()),
                            );
                            self.publish(out).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            Admin::Summary { group, reply } => {
                let _ = reply.send(self.manager.summary(&group));
            }
            Admin::Stop { reply } => {
                let _ = reply.send(());
            }
        }
    }

    async fn on_message(&mut self, incoming: Incoming) {
        match self.topics.parse(&incoming.topic) {
            Ok(Topic::Device {
                channel: DeviceChannel::Ack,
                ..
            }) => match self.manager.handle_ack(&incoming.payload) {
                Ok((group, member, epoch)) => {
                    let _ = self.save(&group);
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
                match self
                    .manager
                    .handle_pull(&incoming.payload, now(), &mut self.rng)
                {
                    Ok(out) => self.publish(vec![out]).await,
                    Err(e) => debug!(%device, error = %e, "pull refused"),
                }
            }
            _ => {}
        }
        let _ = incoming.ack.ack().await;
    }

    async fn publish(&mut self, out: Vec<Outgoing>) {
        for o in out {
            let topic = match (&o.to, o.kind) {
                (Destination::Member { member, .. }, _) => {
                    self.audit(
                        AuditKind::Delivery,
                        None,
                        Some(member),
                        format!("{:?}", o.kind),
                    );
                    self.topics.device(member, DeviceChannel::Delivery)
                }
                (Destination::Group(g), MessageKind::TreeRekey) => {
                    self.topics.group(g, GroupChannel::Rekey)
                }
                (Destination::Group(g), _) => self.topics.group(g, GroupChannel::Notice),
            };
            if let Err(e) = self.client.publish(topic, Bytes::from(o.bytes)).await {
                warn!(error = %e, "publish failed; the re-send timer will retry deliveries");
            }
        }
    }
}

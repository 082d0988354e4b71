//! The oneM2M adapter behind [`Link`](super::Link): every entity is an AE
//! on a CSE, every message a `<contentInstance>` created over the CSE's
//! HTTP binding (`http.rs`) or MQTT binding (`mqtt_binding.rs`), every
//! receipt a notification of a `<subscription>` (`listener.rs`). The
//! mapping itself (names, resources, primitives) is `sealcast_onem2m`'s;
//! this module does the I/O. The only module of the runtimes that knows
//! oneM2M.
//!
//! | | oneM2M |
//! |---|---|
//! | group channels | CREATE `<contentInstance>` through `<group>/fopt` of the group's `<group>` (hosted by the manager's `S` AE on the field CSE), fanned out into each member's `grp` container |
//! | per-entity channels | CREATE `<contentInstance>` in the receiver's `inbox` container; a key delivery in the device's own (the CSEs relay it, the agent forwards nothing) |
//! | receipt | a notification of the container's `<subscription>` to the AE's point of access (an HTTP listener of this link) |
//! | acknowledgement | the notification's answer (2000), sent after processing |
//!
//! The originator the CSE accepted (`cr`, requested on every instance) is
//! handed to the runtime as [`Incoming::origin`](super::Incoming::origin).
//! Where the target names the sender (a device's ack and pull) or the
//! sender is fixed (key deliveries come from the manager), the adapter
//! checks it here; broadcasts are checked by the runtime against the
//! verified signer (TS-0003 §7.2, AE impersonation).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as HttpBody;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_core::target::{DeviceChannel, Topic, TopicScheme};
use sealcast_onem2m::primitive::{self, MAX_PRIMITIVE};
use sealcast_onem2m::resource::{self, Type, op};
use sealcast_onem2m::{
    ACP_NAME, Addressing, CseBase, GROUP_ACP_NAME, GROUP_CONTAINER, INBOX_CONTAINER, Notification,
    SUBSCRIPTION_NAME, Serialization,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Incoming, Progress};
use crate::{Error, Result};

mod http;
mod listener;
mod mqtt_binding;
mod tools;

use http::{Client, discover};
use listener::{Listener, serve};
pub use tools::{publish_group_as, read_latest, send_as};

impl From<sealcast_onem2m::Error> for Error {
    fn from(e: sealcast_onem2m::Error) -> Self {
        Error::Transport {
            transport: "oneM2M",
            source: Box::new(e),
        }
    }
}

/// Where a deployment's CSEs are and how to talk to them.
#[derive(Clone, Debug)]
pub struct OneM2mLinkConfig {
    /// The infrastructure (IN) CSE's `<CSEBase>` URL
    /// (`http://127.0.0.1:8080/cse-in`): the manager's registrar.
    pub infrastructure: String,
    /// The field (MN) CSE's `<CSEBase>` URL: the registrar of every other
    /// entity and the host of the groups. None: one CSE for all.
    pub field: Option<String>,
    /// The manager: its AE lives on the infrastructure CSE and its `S` AE
    /// hosts the groups; members' containers let it read them (a
    /// `<group>` checks its members) and deliveries must come from it.
    pub manager: EntityId,
    /// JSON or CBOR.
    pub serialization: Serialization,
    /// SP-relative or absolute resource ids.
    pub addressing: Addressing,
    /// Where this link listens for notifications (its AE's point of
    /// access); port 0 takes a free one.
    pub listen: SocketAddr,
    /// Requests in flight at once per link.
    pub concurrency: usize,
}

impl OneM2mLinkConfig {
    /// A deployment on `infrastructure` (and `field`), managed by
    /// `manager`, with JSON, SP-relative ids and notifications on
    /// 127.0.0.1.
    pub fn new(infrastructure: &str, field: Option<&str>, manager: EntityId) -> Self {
        Self {
            infrastructure: infrastructure.to_owned(),
            field: field.map(str::to_owned),
            manager,
            serialization: Serialization::Json,
            addressing: Addressing::SpRelative,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            concurrency: 8,
        }
    }
}

/// The CSEs of a deployment as this link sees them.
struct Cses {
    infrastructure: CseBase,
    field: CseBase,
    manager: EntityId,
    addressing: Addressing,
}

/// An AE-ID as a CSE may see it as an originator: `Cx`, `/<cse-id>/Cx`
/// and `//<sp-id>/<cse-id>/Cx` (an ACP lists all three).
fn originator_forms(cse: &CseBase, ae: &str) -> Vec<String> {
    vec![
        ae.to_owned(),
        format!("/{}/{ae}", cse.cse_id),
        format!("//{}/{}/{ae}", cse.sp_id, cse.cse_id),
    ]
}

/// The privileges of an entity's group container: the owner everything;
/// the manager and its group host read and create (notices, rekeys; a
/// `<group>` checks its members); `senders` create (the fan-out of their
/// commands and alerts).
fn group_container_rules(
    owner: &str,
    managers: &[String],
    senders: &[String],
) -> Vec<(Vec<String>, u32)> {
    let mut rules = vec![
        (vec![owner.to_owned()], op::ALL),
        (managers.to_vec(), op::RETRIEVE | op::CREATE),
    ];
    if !senders.is_empty() {
        rules.push((senders.to_vec(), op::CREATE));
    }
    rules
}

impl Cses {
    /// The manager's AE and its group host, in every originator form.
    fn managers(&self) -> Result<Vec<String>> {
        let ae = sealcast_onem2m::ae_id(&self.manager)?;
        let host = sealcast_onem2m::group_host_ae_id(&self.manager)?;
        let mut ids = originator_forms(&self.infrastructure, &ae);
        ids.extend(originator_forms(&self.field, &host));
        Ok(ids)
    }

    /// Reads both CSEs' `<CSEBase>`.
    async fn discover(config: &OneM2mLinkConfig) -> Result<Self> {
        let infrastructure = discover(&config.infrastructure, config.serialization).await?;
        let field = match &config.field {
            Some(url) => discover(url, config.serialization).await?,
            None => infrastructure.clone(),
        };
        Ok(Self {
            infrastructure,
            field,
            manager: config.manager.clone(),
            addressing: config.addressing,
        })
    }

    /// The CSE entity `id` registers with.
    fn registrar(&self, id: &EntityId) -> &CseBase {
        if *id == self.manager {
            &self.infrastructure
        } else {
            &self.field
        }
    }

    fn ae_path(&self, id: &EntityId, rest: &str) -> Result<String> {
        let ae = sealcast_onem2m::ae_id(id)?;
        let rest = if rest.is_empty() {
            ae
        } else {
            format!("{ae}/{rest}")
        };
        Ok(self.registrar(id).path(self.addressing, &rest))
    }

    fn group_path(&self, group: &GroupId, rest: &str) -> Result<String> {
        let host = sealcast_onem2m::group_host_ae_id(&self.manager)?;
        let mut p = format!("{host}/{}", sealcast_onem2m::group_resource_name(group));
        if !rest.is_empty() {
            p.push('/');
            p.push_str(rest);
        }
        Ok(self.field.path(self.addressing, &p))
    }
}

/// The oneM2M link of one entity.
pub(super) struct OneM2mLink {
    id: EntityId,
    topics: TopicScheme,
    cses: Arc<Cses>,
    client: Arc<Client>,
    /// The manager's second client, as its group-host AE.
    host: Option<Arc<Client>>,
    progress: Arc<Progress>,
    permits: Arc<Semaphore>,
    server: Mutex<Option<JoinHandle<()>>>,
    /// Per group: the members last written to its `<group>`, and those
    /// left out because their container did not exist yet.
    groups: Arc<tokio::sync::Mutex<GroupsState>>,
    /// Looks after the registration (see [`watch`]).
    watchdog: Mutex<Option<JoinHandle<()>>>,
    /// Entities a notification came from since the groups were last
    /// checked: a member left out of a `<group>` that is heard from (its
    /// ack) is looked for again at once.
    heard: Arc<Mutex<BTreeSet<EntityId>>>,
}

/// The most entities [`OneM2mLink::heard`] remembers between checks.
const HEARD_MAX: usize = 100_000;

#[derive(Default)]
struct GroupSync {
    created: bool,
    written: BTreeSet<EntityId>,
    missing: BTreeSet<EntityId>,
    senders: BTreeSet<EntityId>,
    last_probe: Option<tokio::time::Instant>,
}

/// What the manager's link wrote to the CSEs: each group's `<group>`, and
/// who may create in each member's group container.
#[derive(Default)]
struct GroupsState {
    groups: BTreeMap<GroupId, GroupSync>,
    creators: BTreeMap<EntityId, MemberCreators>,
}

/// The senders of each of a member's groups, and the union last written to
/// its group container's ACP.
#[derive(Default)]
struct MemberCreators {
    by_group: BTreeMap<GroupId, BTreeSet<EntityId>>,
    written: Option<BTreeSet<EntityId>>,
}

/// How often a manager looks again for members whose containers were
/// missing.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Messages the notification listener hands over before it answers the
/// CSE with 5000 (the runtime is not keeping up).
const INBOX_CAPACITY: usize = 1024;
/// Tries of one contentInstance create the CSE answers 5000 (internal
/// error).
const CREATE_ATTEMPTS: u64 = 3;

impl OneM2mLink {
    /// Registers `id`'s AE (and, for the manager, its group host), creates
    /// its containers and subscriptions if it receives, and starts the
    /// notification listener.
    pub(super) async fn start(
        id: &EntityId,
        config: &OneM2mLinkConfig,
        topics: &TopicScheme,
        receive: bool,
    ) -> Result<(Self, mpsc::Receiver<Incoming>)> {
        let cses = Arc::new(Cses::discover(config).await?);
        let ae = sealcast_onem2m::ae_id(id)?;
        let client = Arc::new(Client::new(ae.clone(), config.serialization));
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        // On the MQTT binding notifications come through the broker (the
        // AE's point of access); on HTTP to a listener of our own.
        let mqtt_broker = cses
            .registrar(id)
            .url
            .starts_with("mqtt://")
            .then(|| mqtt_binding::split_base(&cses.registrar(id).url).map(|(b, _)| b.to_owned()))
            .transpose()?;
        let (server, poa) = if !receive {
            (None, None)
        } else if let Some(broker) = &mqtt_broker {
            (None, Some(broker.clone()))
        } else {
            let listener = TcpListener::bind(config.listen).await.map_err(|e| {
                Error::Runtime(format!("notification listener on {}: {e}", config.listen))
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::Runtime(format!("notification listener: {e}")))?;
            (Some(listener), Some(format!("http://{addr}")))
        };
        let registrar = cses.registrar(id).clone();
        let host = (*id == cses.manager)
            .then(|| {
                sealcast_onem2m::group_host_ae_id(id)
                    .map(|h| Arc::new(Client::new(h, config.serialization)))
            })
            .transpose()?;
        let registration = Arc::new(Registration {
            ae: ae.clone(),
            cses: Arc::clone(&cses),
            registrar: registrar.clone(),
            client: Arc::clone(&client),
            host: host.clone(),
            poa: poa.clone(),
        });
        let containers = Arc::new(Mutex::new(BTreeMap::new()));
        let heard = Arc::new(Mutex::new(BTreeSet::new()));
        let ctx = receive.then(|| {
            Arc::new(Listener {
                heard: (*id == cses.manager).then(|| Arc::clone(&heard)),
                id: id.clone(),
                manager: cses.manager.clone(),
                topics: topics.clone(),
                containers: Arc::clone(&containers),
                tx,
            })
        });
        // Ready before the first notification can come.
        *client
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ctx.clone();
        let server = match (server, &ctx) {
            (Some(listener), Some(ctx)) => Some(tokio::spawn(serve(listener, Arc::clone(ctx)))),
            _ => None,
        };
        let fresh = registration.setup().await?;
        *containers.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        let groups = Arc::new(tokio::sync::Mutex::new(GroupsState::default()));
        let watchdog = (receive || host.is_some()).then(|| {
            tokio::spawn(watch(
                Arc::clone(&registration),
                containers,
                Arc::clone(&groups),
            ))
        });
        info!(entity = %id, ae = %ae, cse = %registrar.cse_id, poa = poa.as_deref().unwrap_or("none"), "registered with the CSE");
        Ok((
            Self {
                id: id.clone(),
                topics: topics.clone(),
                cses,
                client,
                host,
                progress: Arc::new(Progress::default()),
                permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
                server: Mutex::new(server),
                watchdog: Mutex::new(watchdog),
                groups,
                heard,
            },
            rx,
        ))
    }

    /// Creates a `<contentInstance>` at `path` from a task of its own;
    /// [`OneM2mLink::flush`] waits for it.
    fn create_instance(&self, path: String, target: String, bytes: Vec<u8>, fan_out: bool) {
        let client = Arc::clone(&self.client);
        let base = self.cses.registrar(&self.id).url.clone();
        let progress = Arc::clone(&self.progress);
        let permits = Arc::clone(&self.permits);
        progress.started();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let cin = resource::content_instance(&bytes, &target);
            // A CSE that answers 5000 (internal error) created nothing (ACME
            // deletes the instance when its container's check fails under
            // concurrent creates): created again, twice at most. Every
            // sealcast message is replay-protected, so a copy would be
            // refused anyway.
            let mut attempt = 0u64;
            let answer = loop {
                attempt += 1;
                match client
                    .request(
                        Method::POST,
                        &base,
                        &path,
                        Some(Type::ContentInstance),
                        Some(&cin),
                    )
                    .await
                {
                    Ok((5000, _)) if attempt < CREATE_ATTEMPTS => {
                        debug!(%target, attempt, "the CSE answered 5000 (internal error); creating again");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    Ok((rsc, value)) => {
                        break primitive::check_response(rsc, value).map_err(|e| {
                            Error::Runtime(format!("oneM2M POST {path} as {}: {e}", client.origin))
                        });
                    }
                    Err(e) => break Err(e),
                }
            };
            let result = answer.and_then(|answer| {
                    if !fan_out {
                        return Ok(());
                    }
                    let codes = primitive::aggregated_status(&answer)?;
                    let failed = codes.iter().filter(|c| !(2000..3000).contains(*c)).count();
                    if failed > 0 {
                        warn!(%target, failed, members = codes.len(), "the CSE's fan-out failed for some members");
                    }
                    Ok(())
                });
            if let Err(e) = &result {
                warn!(%target, error = %e, "not created");
            }
            progress.finished(result.err().map(|e| e.to_string()));
        });
    }

    pub(super) fn publish_group(
        &self,
        group: &GroupId,
        target: String,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let path = self.cses.group_path(group, "fopt")?;
        self.create_instance(path, target, bytes, true);
        Ok(())
    }

    /// Sends to `to`'s inbox — or, for a device target (a key delivery the
    /// manager addresses to the device's agent), to the device's own: the
    /// CSEs are the relay on oneM2M, so the agent has nothing to forward.
    pub(super) fn send(&self, to: &EntityId, target: String, bytes: Vec<u8>) -> Result<()> {
        let to = match self.topics.parse(&target) {
            Ok(Topic::Device {
                device,
                channel: DeviceChannel::Delivery,
            }) => device,
            _ => to.clone(),
        };
        let path = self.cses.ae_path(&to, INBOX_CONTAINER)?;
        self.create_instance(path, target, bytes, false);
        Ok(())
    }

    pub(super) async fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.progress.settle(deadline, "oneM2M").await
    }

    pub(super) fn stop(&self) {
        for task in [&self.server, &self.watchdog] {
            if let Some(task) = task.lock().unwrap_or_else(PoisonError::into_inner).take() {
                task.abort();
            }
        }
    }

    /// Makes the `<group>` of `group` hold the `grp` containers of
    /// `members` (the manager's link; no-op elsewhere). Members whose
    /// container does not exist yet (not started) are left out and looked
    /// for again at most every [`PROBE_EVERY`].
    pub(super) async fn set_group_members(
        &self,
        group: &GroupId,
        members: &BTreeSet<EntityId>,
        senders: &BTreeSet<EntityId>,
    ) -> Result<()> {
        let Some(host) = &self.host else {
            return Ok(());
        };
        let mut state = self.groups.lock().await;
        let GroupsState { groups, creators } = &mut *state;
        let sync = groups.entry(group.clone()).or_default();
        let now = tokio::time::Instant::now();
        let heard_missing = {
            let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
            sync.missing.iter().any(|m| heard.contains(m))
        };
        let probe_due = !sync.missing.is_empty()
            && (heard_missing
                || sync
                    .last_probe
                    .is_none_or(|t| now.duration_since(t) >= PROBE_EVERY));
        if sync.created
            && sync.written.union(&sync.missing).eq(members.iter())
            && sync.senders == *senders
            && !probe_due
        {
            return Ok(());
        }
        let field = &self.cses.field;
        let addressing = self.cses.addressing;
        // Which members have a container by now.
        let mut present = BTreeSet::new();
        let mut missing = BTreeSet::new();
        for m in members {
            if sync.written.contains(m) {
                present.insert(m.clone());
                continue;
            }
            let path = self.cses.ae_path(m, GROUP_CONTAINER)?;
            match host
                .request(Method::GET, &field.url, &path, None, None)
                .await
            {
                Ok((rsc, _)) if (2000..3000).contains(&rsc) => {
                    present.insert(m.clone());
                }
                Ok((rsc, _)) => {
                    debug!(group = %group.name(), member = %m, rsc, "member's container not there yet");
                    missing.insert(m.clone());
                }
                Err(e) => return Err(e),
            }
        }
        // Who may create in each member's group container: the senders of
        // all its groups. Written before the members join the fan-out.
        let removed: BTreeSet<EntityId> = sync.written.difference(&present).cloned().collect();
        for m in &present {
            creators
                .entry(m.clone())
                .or_default()
                .by_group
                .insert(group.clone(), senders.clone());
        }
        for m in &removed {
            if let Some(c) = creators.get_mut(m) {
                c.by_group.remove(group);
            }
        }
        for m in present.iter().chain(&removed) {
            let Some(c) = creators.get_mut(m) else {
                continue;
            };
            let union: BTreeSet<EntityId> = c.by_group.values().flatten().cloned().collect();
            if c.written.as_ref() == Some(&union) {
                continue;
            }
            match self.write_creators(host, m, &union).await {
                Ok(()) => c.written = Some(union),
                Err(e) if removed.contains(m) => {
                    debug!(member = %m, error = %e, "a former member's container ACP not updated")
                }
                Err(e) => return Err(e),
            }
        }
        let mid: Vec<String> = present
            .iter()
            .map(|m| {
                sealcast_onem2m::ae_id(m)
                    .map(|ae| field.id(Addressing::SpRelative, &format!("{ae}/{GROUP_CONTAINER}")))
            })
            .collect::<sealcast_onem2m::Result<_>>()?;
        let host_ae = sealcast_onem2m::group_host_ae_id(&self.cses.manager)?;
        // Created before (by this run, or before a restart: 4105): set its
        // members.
        let mut update = sync.created;
        if !sync.created {
            let acpi = vec![field.id(Addressing::SpRelative, &format!("{host_ae}/{ACP_NAME}"))];
            let name = sealcast_onem2m::group_resource_name(group);
            let content = resource::group(&name, &mid, &acpi, 100_000);
            let parent = field.path(addressing, &host_ae);
            let (rsc, value) = host
                .request(
                    Method::POST,
                    &field.url,
                    &parent,
                    Some(Type::Group),
                    Some(&content),
                )
                .await?;
            update = rsc == 4105;
            if !update {
                primitive::check_response(rsc, value).map_err(|e| {
                    Error::Runtime(format!("creating the <group> of {}: {e}", group.name()))
                })?;
            }
        }
        if update {
            host.expect(
                Method::PUT,
                &field.url,
                &self.cses.group_path(group, "")?,
                None,
                Some(&resource::group_members(&mid)),
            )
            .await?;
        }
        sync.created = true;
        if missing.is_empty() {
            debug!(group = %group.name(), members = present.len(), "group's <group> written");
        } else {
            info!(group = %group.name(), members = present.len(), waiting = missing.len(), "group's <group> written; members not started yet are added once their containers exist");
        }
        {
            let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
            for m in &present {
                heard.remove(m);
            }
        }
        sync.written = present;
        sync.missing = missing;
        sync.senders = senders.clone();
        sync.last_probe = Some(now);
        Ok(())
    }

    /// Lets only `senders` (and the manager) create in `member`'s group
    /// container.
    async fn write_creators(
        &self,
        host: &Client,
        member: &EntityId,
        senders: &BTreeSet<EntityId>,
    ) -> Result<()> {
        let cses = &self.cses;
        let owner = sealcast_onem2m::ae_id(member)?;
        let mut ids = Vec::new();
        for s in senders {
            ids.extend(originator_forms(
                cses.registrar(s),
                &sealcast_onem2m::ae_id(s)?,
            ));
        }
        let rules = group_container_rules(&owner, &cses.managers()?, &ids);
        host.expect(
            Method::PUT,
            &cses.field.url,
            &cses.ae_path(member, GROUP_ACP_NAME)?,
            None,
            Some(&resource::acp_privileges(&rules)),
        )
        .await?;
        Ok(())
    }
}

impl Drop for OneM2mLink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What an entity registered on the CSEs, so that it can do it again.
struct Registration {
    ae: String,
    cses: Arc<Cses>,
    registrar: CseBase,
    client: Arc<Client>,
    /// The manager's group host.
    host: Option<Arc<Client>>,
    /// The notification listener (None: a link that only sends).
    poa: Option<String>,
}

impl Registration {
    /// Registers the AE (and the group host), and for a receiving AE its
    /// ACP, containers and subscriptions, keeping what exists. Returns the
    /// containers' resource ids.
    async fn setup(&self) -> Result<BTreeMap<String, &'static str>> {
        let (cses, registrar, client, ae) = (&self.cses, &self.registrar, &self.client, &self.ae);
        register(client, registrar, cses.addressing, ae, self.poa.as_deref()).await?;
        let mut containers = BTreeMap::new();
        if self.poa.is_some() {
            let owner = ae.clone();
            let managers = cses.managers()?;
            // The inbox: anyone may create (the objects are end to end
            // protected); the manager and its group host may read it.
            let inbox_rules = vec![
                (vec!["all".to_owned()], op::CREATE),
                (vec![owner.clone()], op::ALL),
                (managers.clone(), op::RETRIEVE),
            ];
            // The group container: until the manager lists the senders of
            // this entity's groups, only the manager may create in it.
            let group_rules = group_container_rules(&owner, &managers, &[]);
            let mut acp_managers = managers.clone();
            acp_managers.push(owner.clone());
            let base = &registrar.url;
            let own = registrar.path(cses.addressing, ae);
            client
                .ensure(
                    base,
                    &own,
                    ACP_NAME,
                    Type::AccessControlPolicy,
                    &resource::acp(ACP_NAME, &inbox_rules, &owner),
                )
                .await?;
            client
                .ensure(
                    base,
                    &own,
                    GROUP_ACP_NAME,
                    Type::AccessControlPolicy,
                    &resource::acp_managed(GROUP_ACP_NAME, &group_rules, &acp_managers),
                )
                .await?;
            for (name, acp) in [
                (INBOX_CONTAINER, ACP_NAME),
                (GROUP_CONTAINER, GROUP_ACP_NAME),
            ] {
                let acpi = vec![registrar.id(Addressing::SpRelative, &format!("{ae}/{acp}"))];
                let container = client
                    .ensure(
                        base,
                        &own,
                        name,
                        Type::Container,
                        &resource::container(name, &acpi, 64),
                    )
                    .await?;
                containers.insert(primitive::resource_id(&container)?, name);
                client
                    .ensure(
                        base,
                        &format!("{own}/{name}"),
                        SUBSCRIPTION_NAME,
                        Type::Subscription,
                        &resource::subscription(SUBSCRIPTION_NAME, ae),
                    )
                    .await?;
            }
        }
        if let Some(host) = &self.host {
            let host_ae = &host.origin;
            register(host, &cses.field, cses.addressing, host_ae, None).await?;
            let manager_ids = cses.managers()?;
            host.ensure(
                &cses.field.url,
                &cses.field.path(cses.addressing, host_ae),
                ACP_NAME,
                Type::AccessControlPolicy,
                &resource::acp(
                    ACP_NAME,
                    &[(vec!["all".to_owned()], op::CREATE), (manager_ids, op::ALL)],
                    host_ae,
                ),
            )
            .await?;
        }
        Ok(containers)
    }

    /// Whether the CSEs still hold the AE (and the group host): false when
    /// one answers 4004 for it — it restarted and lost its resources.
    async fn present(&self) -> Result<bool> {
        let (cses, registrar) = (&self.cses, &self.registrar);
        let own = registrar.path(cses.addressing, &self.ae);
        let (rsc, _) = self
            .client
            .request(Method::GET, &registrar.url, &own, None, None)
            .await?;
        if rsc == 4004 {
            return Ok(false);
        }
        if let Some(host) = &self.host {
            let path = cses.field.path(cses.addressing, &host.origin);
            let (rsc, _) = host
                .request(Method::GET, &cses.field.url, &path, None, None)
                .await?;
            if rsc == 4004 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// How often a link checks that its CSEs still hold its registration.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Looks after a registration: a CSE that restarted without its resources
/// (ACME's in-memory database) answers 4004 for the AE; the link then
/// registers again, re-creates its containers and subscriptions (and the
/// manager its group host, whose `<group>`s the next membership sync
/// re-creates), and logs it. Messages sent to it meanwhile are lost, as
/// on a broker that lost its sessions; replay windows and keys are the
/// runtimes' and survive, so nothing is accepted twice.
async fn watch(
    registration: Arc<Registration>,
    containers: Arc<Mutex<BTreeMap<String, &'static str>>>,
    groups: Arc<tokio::sync::Mutex<GroupsState>>,
) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut lost = false;
    loop {
        tick.tick().await;
        match registration.present().await {
            Ok(true) if !lost => continue,
            Ok(_) => {}
            Err(e) => {
                debug!(ae = %registration.ae, error = %e, "cannot reach the CSE to check the registration");
                continue;
            }
        }
        if !lost {
            warn!(ae = %registration.ae, cse = %registration.registrar.cse_id, "the CSE no longer holds this AE (a restart that lost its resources?): registering again");
        }
        match registration.setup().await {
            Ok(fresh) => {
                *containers.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
                *groups.lock().await = GroupsState::default();
                info!(ae = %registration.ae, "registered again with the CSE: containers and subscriptions re-created");
                lost = false;
            }
            Err(e) => {
                warn!(ae = %registration.ae, error = %e, "registering again failed; retrying");
                lost = true;
            }
        }
    }
}

/// Registers the AE `ae` on `cse`. An AE registered before (a restart;
/// the CSE kept it) is kept, with its containers, subscriptions and its
/// place in the groups' member lists; a receiving one gets its new point
/// of access.
async fn register(
    client: &Client,
    cse: &CseBase,
    addressing: Addressing,
    ae: &str,
    poa: Option<&str>,
) -> Result<()> {
    let base = cse.path(addressing, "");
    let content = resource::ae(ae, poa);
    let (rsc, value) = client
        .request(
            Method::POST,
            &cse.url,
            &base,
            Some(Type::Ae),
            Some(&content),
        )
        .await?;
    match (rsc, poa) {
        (2001, _) => Ok(()),
        // 4105: the resource exists; 4117: this originator is registered.
        (4105 | 4117, None) => Ok(()),
        (4105 | 4117, Some(poa)) => {
            debug!(%ae, "AE registered before; its point of access updated");
            client
                .expect(
                    Method::PUT,
                    &cse.url,
                    &cse.path(addressing, ae),
                    None,
                    Some(&serde_json::json!({ "m2m:ae": { "poa": [poa] } })),
                )
                .await
                .map(|_| ())
        }
        _ => primitive::check_response(rsc, value)
            .map(|_| ())
            .map_err(|e| {
                Error::Runtime(format!("registering the AE {ae} with {}: {e}", cse.cse_id))
            }),
    }
}

/// The answer to one notification, sent after processing.
pub(super) struct OneM2mAck(oneshot::Sender<()>);

impl OneM2mAck {
    pub(super) fn send(self) {
        let _ = self.0.send(());
    }
}

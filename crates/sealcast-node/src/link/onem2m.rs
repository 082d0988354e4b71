//! The oneM2M adapter behind [`Link`](super::Link): every entity is an AE
//! on a CSE, every message a `<contentInstance>` created over the CSE's
//! HTTP binding, every receipt a notification of a `<subscription>`. The
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
    ACP_NAME, Addressing, CseBase, GROUP_CONTAINER, INBOX_CONTAINER, Notification,
    SUBSCRIPTION_NAME, Serialization,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Incoming, Progress};
use crate::{Error, Result};

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

/// The HTTP binding's client: one CSE connection pool per link.
struct Client {
    origin: String,
    serialization: Serialization,
    request_id: AtomicU64,
    idle: Mutex<BTreeMap<String, Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>>,
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    fn new(origin: String, serialization: Serialization) -> Self {
        Self {
            origin,
            serialization,
            request_id: AtomicU64::new(1),
            idle: Mutex::new(BTreeMap::new()),
        }
    }

    async fn connection(
        &self,
        base: &str,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        loop {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(base)
                .and_then(Vec::pop);
            match pooled {
                Some(mut c) => {
                    if !c.is_closed() && c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                None => break,
            }
        }
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| Error::Runtime(format!("CSE URL {base} is not http://host:port")))?;
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| Error::Runtime(format!("cannot reach the CSE at {base}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Runtime(format!("HTTP to the CSE at {base}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request primitive and returns the CSE's response status
    /// code and content.
    async fn request(
        &self,
        method: Method,
        base: &str,
        path: &str,
        create: Option<Type>,
        content: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let ri = self.request_id.fetch_add(1, Ordering::Relaxed);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", base.trim_start_matches("http://"))
            .header("X-M2M-Origin", &self.origin)
            .header("X-M2M-RI", format!("{}-{ri}", self.origin))
            .header("X-M2M-RVI", "4")
            .header("Accept", self.serialization.media_type());
        let body = match content {
            Some(c) => {
                let ct = match create {
                    Some(ty) => self.serialization.create_content_type(ty),
                    None => self.serialization.media_type().to_owned(),
                };
                req = req.header("Content-Type", ct);
                Bytes::from(self.serialization.encode(c))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Runtime(format!("building a oneM2M request: {e}")))?;
        let exchange = async {
            let mut conn = self.connection(base).await?;
            let resp = conn
                .send_request(req)
                .await
                .map_err(|e| Error::Runtime(format!("HTTP to the CSE at {base}: {e}")))?;
            let rsc = resp
                .headers()
                .get("X-M2M-RSC")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok());
            let ser = resp
                .headers()
                .get("Content-Type")
                .and_then(|v| v.to_str().ok())
                .and_then(Serialization::of_content_type)
                .unwrap_or(self.serialization);
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_PRIMITIVE)
                .collect()
                .await
                .map_err(|e| Error::Runtime(format!("reading the CSE's answer: {e}")))?
                .to_bytes();
            if !conn.is_closed() {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(base.to_owned())
                    .or_default()
                    .push(conn);
            }
            let rsc = rsc.ok_or_else(|| {
                Error::Runtime(format!(
                    "{base}{path} answered HTTP {status} without X-M2M-RSC: is it a oneM2M CSE?"
                ))
            })?;
            Ok::<_, Error>((rsc, ser.decode(&bytes).unwrap_or(serde_json::Value::Null)))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                Error::Runtime(format!(
                    "the CSE at {base} did not answer within {REQUEST_TIMEOUT:?}"
                ))
            })?
    }

    /// A request whose answer must be a success.
    async fn expect(
        &self,
        method: Method,
        base: &str,
        path: &str,
        create: Option<Type>,
        content: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let what = format!("{method} {path} as {}", self.origin);
        let (rsc, value) = self.request(method, base, path, create, content).await?;
        primitive::check_response(rsc, value)
            .map_err(|e| Error::Runtime(format!("oneM2M {what}: {e}")))
    }
}

impl Client {
    /// Creates the child `name` of `parent` unless it exists (4105), and
    /// returns its representation either way.
    async fn ensure(
        &self,
        base: &str,
        parent: &str,
        name: &str,
        ty: Type,
        content: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (rsc, value) = self
            .request(Method::POST, base, parent, Some(ty), Some(content))
            .await?;
        if rsc == 4105 {
            return self
                .expect(Method::GET, base, &format!("{parent}/{name}"), None, None)
                .await;
        }
        primitive::check_response(rsc, value).map_err(|e| {
            Error::Runtime(format!(
                "oneM2M: creating {parent}/{name} as {}: {e}",
                self.origin
            ))
        })
    }
}

/// Reads a CSE's `<CSEBase>` at `url` (`http://host:port/<name>`).
async fn discover(url: &str, serialization: Serialization) -> Result<CseBase> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::Runtime(format!(
            "CSE URL {url} must be http://host:port/<CSEBase name>"
        ))
    })?;
    let (authority, path) = rest
        .split_once('/')
        .filter(|(_, p)| !p.is_empty())
        .ok_or_else(|| {
            Error::Runtime(format!(
                "CSE URL {url} must name the CSEBase: http://host:port/<name>"
            ))
        })?;
    let base = format!("http://{authority}");
    // Any originator may retrieve the CSEBase on ACME; CAdmin is the one
    // every CSE knows.
    let client = Client::new("CAdmin".into(), serialization);
    let cb = client
        .expect(Method::GET, &base, &format!("/{path}"), None, None)
        .await?;
    Ok(CseBase::from_cse_base(&base, &cb)?)
}

/// The CSEs of a deployment as this link sees them.
struct Cses {
    infrastructure: CseBase,
    field: CseBase,
    manager: EntityId,
    addressing: Addressing,
}

impl Cses {
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
    groups: Arc<tokio::sync::Mutex<BTreeMap<GroupId, GroupSync>>>,
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
    last_probe: Option<tokio::time::Instant>,
}

/// How often a manager looks again for members whose containers were
/// missing.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Messages the notification listener hands over before it answers the
/// CSE with 5000 (the runtime is not keeping up).
const INBOX_CAPACITY: usize = 1024;

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
        let (server, poa) = if receive {
            let listener = TcpListener::bind(config.listen).await.map_err(|e| {
                Error::Runtime(format!("notification listener on {}: {e}", config.listen))
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::Runtime(format!("notification listener: {e}")))?;
            (Some(listener), Some(format!("http://{addr}")))
        } else {
            (None, None)
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
        let containers = Arc::new(Mutex::new(registration.setup().await?));
        let heard = Arc::new(Mutex::new(BTreeSet::new()));
        let server = server.map(|listener| {
            let ctx = Arc::new(Listener {
                heard: (*id == cses.manager).then(|| Arc::clone(&heard)),
                id: id.clone(),
                manager: cses.manager.clone(),
                topics: topics.clone(),
                containers: Arc::clone(&containers),
                tx,
            });
            tokio::spawn(serve(listener, ctx))
        });
        let groups = Arc::new(tokio::sync::Mutex::new(BTreeMap::new()));
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
            let result = client
                .expect(Method::POST, &base, &path, Some(Type::ContentInstance), Some(&cin))
                .await
                .and_then(|answer| {
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
    ) -> Result<()> {
        let Some(host) = &self.host else {
            return Ok(());
        };
        let mut groups = self.groups.lock().await;
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
        if sync.created && sync.written.union(&sync.missing).eq(members.iter()) && !probe_due {
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
        let mid: Vec<String> = present
            .iter()
            .map(|m| {
                sealcast_onem2m::ae_id(m)
                    .map(|ae| field.id(addressing, &format!("{ae}/{GROUP_CONTAINER}")))
            })
            .collect::<sealcast_onem2m::Result<_>>()?;
        let host_ae = sealcast_onem2m::group_host_ae_id(&self.cses.manager)?;
        // Created before (by this run, or before a restart: 4105): set its
        // members.
        let mut update = sync.created;
        if !sync.created {
            let acpi = vec![field.id(addressing, &format!("{host_ae}/{ACP_NAME}"))];
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
        sync.last_probe = Some(now);
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
            let manager_ae = sealcast_onem2m::ae_id(&cses.manager)?;
            let host_ae = sealcast_onem2m::group_host_ae_id(&cses.manager)?;
            let rules = vec![
                (vec!["all".to_owned()], op::CREATE),
                (vec![owner.clone()], op::ALL),
                (
                    vec![
                        cses.field.id(cses.addressing, &host_ae),
                        host_ae.clone(),
                        manager_ae,
                    ],
                    op::RETRIEVE,
                ),
            ];
            let base = &registrar.url;
            let own = registrar.path(cses.addressing, ae);
            client
                .ensure(
                    base,
                    &own,
                    ACP_NAME,
                    Type::AccessControlPolicy,
                    &resource::acp(ACP_NAME, &rules, &owner),
                )
                .await?;
            let acpi = vec![registrar.id(cses.addressing, &format!("{ae}/{ACP_NAME}"))];
            for name in [INBOX_CONTAINER, GROUP_CONTAINER] {
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
            let manager_ids = vec![
                cses.infrastructure.id(cses.addressing, ae),
                ae.clone(),
                host_ae.clone(),
            ];
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
    groups: Arc<tokio::sync::Mutex<BTreeMap<GroupId, GroupSync>>>,
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
                groups.lock().await.clear();
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

/// What the notification listener knows.
struct Listener {
    /// The manager's: who was heard from (see [`OneM2mLink::heard`]).
    heard: Option<Arc<Mutex<BTreeSet<EntityId>>>>,
    id: EntityId,
    manager: EntityId,
    topics: TopicScheme,
    /// Resource id → name of this AE's containers.
    containers: Arc<Mutex<BTreeMap<String, &'static str>>>,
    tx: mpsc::Sender<Incoming>,
}

async fn serve(listener: TcpListener, ctx: Arc<Listener>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                debug!(entity = %ctx.id, error = %e, "notification listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, std::convert::Infallible>(notified(&ctx, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(rsc: u16, ri: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    if rsc >= 4000 {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    let headers = resp.headers_mut();
    if let Ok(v) = rsc.to_string().parse() {
        headers.insert("X-M2M-RSC", v);
    }
    if let Ok(v) = ri.parse() {
        headers.insert("X-M2M-RI", v);
    }
    resp
}

/// Handles one notification: checks it, hands it to the runtime, and
/// answers once the runtime acknowledged it.
async fn notified(ctx: &Listener, req: Request<HttpBody>) -> Response<Full<Bytes>> {
    let ri = req
        .headers()
        .get("X-M2M-RI")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ser = req
        .headers()
        .get("Content-Type")
        .and_then(|v| v.to_str().ok())
        .and_then(Serialization::of_content_type)
        .unwrap_or_default();
    let Ok(body) = Limited::new(req.into_body(), MAX_PRIMITIVE).collect().await else {
        return answer(4000, &ri);
    };
    let parsed = ser
        .decode(&body.to_bytes())
        .and_then(|v| primitive::parse_notification(&v));
    let (subscription, instance) = match parsed {
        Ok(Notification::Verification { .. }) => return answer(2000, &ri),
        Ok(Notification::Deleted { subscription }) => {
            warn!(entity = %ctx.id, %subscription, "the CSE deleted a subscription of ours; it is created again within seconds if the AE is gone too, else restart this node");
            return answer(2000, &ri);
        }
        Ok(Notification::Created {
            subscription,
            instance,
        }) => (subscription, instance),
        Ok(_) => return answer(2000, &ri),
        Err(e) => {
            debug!(entity = %ctx.id, error = %e, "notification refused");
            return answer(4000, &ri);
        }
    };
    match check(ctx, &instance) {
        Ok(origin) => {
            if let Some(heard) = &ctx.heard {
                let mut heard = heard.lock().unwrap_or_else(PoisonError::into_inner);
                if heard.len() >= HEARD_MAX {
                    heard.clear();
                }
                heard.insert(origin.clone());
            }
            let (done, answered) = oneshot::channel();
            let incoming = Incoming {
                target: instance.target,
                payload: Bytes::from(instance.content),
                origin: Some(origin),
                ack: super::Ack(super::AckInner::OneM2m(OneM2mAck(done))),
            };
            if ctx.tx.try_send(incoming).is_err() {
                warn!(entity = %ctx.id, "inbox full; notification answered 5000");
                return answer(5000, &ri);
            }
            // The answer waits for the runtime (or 30 s): the CSE sees the
            // message processed, as an MQTT broker sees the PUBACK.
            let _ = tokio::time::timeout(Duration::from_secs(30), answered).await;
            answer(2000, &ri)
        }
        Err(why) => {
            // Rate-limited: a flood of bad instances must not become a
            // flood of log lines.
            static REFUSED: Mutex<crate::runtime::WarnLimiter> = Mutex::new(
                crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
            );
            let allowed = REFUSED.lock().ok().and_then(|mut l| l.allow());
            let creator = instance.creator.as_deref().unwrap_or("none");
            match allowed {
                Some(held_back) => {
                    warn!(entity = %ctx.id, target = %instance.target, creator, %subscription, why, held_back, "notification refused although the CSE accepted it")
                }
                None => {
                    debug!(entity = %ctx.id, target = %instance.target, creator, why, "notification refused")
                }
            }
            answer(2000, &ri)
        }
    }
}

/// The checks the adapter can make before the runtime opens anything: the
/// instance is in one of our containers, its target is a sealcast target
/// of that container's kind, and its creator is an entity — the one the
/// target names, where it names the sender.
fn check(
    ctx: &Listener,
    instance: &sealcast_onem2m::ContentInstance,
) -> core::result::Result<EntityId, &'static str> {
    let container = *ctx
        .containers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(instance.parent.rsplit('/').next().unwrap_or_default())
        .ok_or("not in a container of this AE")?;
    let origin = instance
        .creator
        .as_deref()
        .and_then(sealcast_onem2m::entity_of_originator)
        .ok_or("no sealcast originator (cr) recorded by the CSE")?;
    let topic = ctx
        .topics
        .parse(&instance.target)
        .map_err(|_| "label is not a sealcast target")?;
    match (&topic, container) {
        (Topic::Group { .. }, GROUP_CONTAINER) => Ok(origin),
        (Topic::Group { .. }, _) => Err("a group target outside the group container"),
        (_, GROUP_CONTAINER) => Err("a per-entity target in the group container"),
        (
            Topic::Device {
                device,
                channel: DeviceChannel::Ack | DeviceChannel::Pull,
            },
            _,
        ) if *device != origin => {
            Err("originator is not the device the target names (AE impersonation)")
        }
        (
            Topic::Device {
                channel: DeviceChannel::Delivery,
                ..
            },
            _,
        ) if origin != ctx.manager => {
            Err("a key delivery not created by the manager (AE impersonation)")
        }
        _ => Ok(origin),
    }
}

/// The answer to one notification, sent after processing.
pub(super) struct OneM2mAck(oneshot::Sender<()>);

impl OneM2mAck {
    pub(super) fn send(self) {
        let _ = self.0.send(());
    }
}

/// What an administrator of the CSEs (any originator the CSE's policy lets
/// read, such as ACME's `CAdmin`) finds as the latest `<contentInstance>`
/// in `entity`'s `container`: its target label and its content — the COSE
/// object, which it cannot open. The fire-safety demo's attacker captures
/// commands this way.
pub async fn read_latest(
    config: &OneM2mLinkConfig,
    originator: &str,
    entity: &EntityId,
    container: &str,
) -> Result<(String, Vec<u8>)> {
    let cses = Cses::discover(config).await?;
    let client = Client::new(originator.to_owned(), config.serialization);
    let path = cses.ae_path(entity, &format!("{container}/la"))?;
    let cin = client
        .expect(Method::GET, &cses.registrar(entity).url, &path, None, None)
        .await?;
    let sgn = serde_json::json!({"m2m:sgn": {"nev": {"rep": cin}}});
    match primitive::parse_notification(&sgn)? {
        Notification::Created { instance, .. } => Ok((instance.target, instance.content)),
        _ => Err(Error::Runtime("not a content instance".into())),
    }
}

/// Creates a `<contentInstance>` through `group`'s fan-out with
/// `originator` in `X-M2M-Origin` — what any client can claim to a CSE
/// that does not authenticate its originators (ACME trusts the header).
/// The demo's attacker uses it to pose as the gateway; sealcast must refuse
/// what arrives however the CSE accepted it.
pub async fn publish_group_as(
    config: &OneM2mLinkConfig,
    originator: &str,
    group: &GroupId,
    target: &str,
    bytes: &[u8],
) -> Result<()> {
    let cses = Cses::discover(config).await?;
    let path = cses.group_path(group, "fopt")?;
    create_as(&cses.field, config, originator, &path, target, bytes).await
}

/// Creates a `<contentInstance>` in `to`'s inbox with `originator` in
/// `X-M2M-Origin` (see [`publish_group_as`]): an attacker's report or
/// command posted under another entity's name.
pub async fn send_as(
    config: &OneM2mLinkConfig,
    originator: &str,
    to: &EntityId,
    target: &str,
    bytes: &[u8],
) -> Result<()> {
    let cses = Cses::discover(config).await?;
    let path = cses.ae_path(to, INBOX_CONTAINER)?;
    create_as(cses.registrar(to), config, originator, &path, target, bytes).await
}

async fn create_as(
    cse: &CseBase,
    config: &OneM2mLinkConfig,
    originator: &str,
    path: &str,
    target: &str,
    bytes: &[u8],
) -> Result<()> {
    let client = Client::new(originator.to_owned(), config.serialization);
    let cin = resource::content_instance(bytes, target);
    client
        .expect(
            Method::POST,
            &cse.url,
            path,
            Some(Type::ContentInstance),
            Some(&cin),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::target::{AgentChannel, GroupChannel};
    use sealcast_onem2m::ContentInstance;

    fn listener() -> Listener {
        let (tx, _rx) = mpsc::channel(1);
        let containers = BTreeMap::from([
            ("cntInbox".to_owned(), INBOX_CONTAINER),
            ("cntGrp".to_owned(), GROUP_CONTAINER),
        ]);
        Listener {
            heard: None,
            id: EntityId::new("manager").unwrap(),
            manager: EntityId::new("manager").unwrap(),
            topics: TopicScheme::new(),
            containers: Arc::new(Mutex::new(containers)),
            tx,
        }
    }

    fn instance(parent: &str, target: String, creator: Option<&str>) -> ContentInstance {
        ContentInstance {
            content: vec![0xd0],
            target,
            creator: creator.map(str::to_owned),
            parent: parent.to_owned(),
        }
    }

    /// The adapter's checks before anything is opened: the container, the
    /// label, and the originator where the target names the sender.
    #[test]
    fn notifications_are_checked_against_container_target_and_originator() {
        let ctx = listener();
        let t = TopicScheme::new();
        let door = EntityId::new("door-1").unwrap();
        let group = GroupId::new(b"doors").unwrap();
        let ack = t.device(&door, DeviceChannel::Ack);
        let delivery = t.device(&door, DeviceChannel::Delivery);
        let cmd = t.group(&group, GroupChannel::Command);
        let report = t.agent(&door, AgentChannel::Report);
        let ok = |i: ContentInstance| check(&ctx, &i);
        // Accepted: the originator as every form of AE-ID.
        for cr in [
            "Cdoor-1",
            "/id-mn/Cdoor-1",
            "//sealcast.example/id-mn/Cdoor-1",
        ] {
            assert_eq!(
                ok(instance("cntInbox", ack.clone(), Some(cr))),
                Ok(door.clone())
            );
        }
        assert!(ok(instance("cntGrp", cmd.clone(), Some("Cgateway"))).is_ok());
        assert!(ok(instance("cntInbox", report.clone(), Some("Cmeter-1"))).is_ok());
        assert!(
            ok(instance(
                "/id-in/cse-in/Cmanager/cntInbox",
                ack.clone(),
                Some("Cdoor-1")
            ))
            .is_ok()
        );
        // Refused, each for its reason.
        for (i, why) in [
            (
                instance("cntOther", ack.clone(), Some("Cdoor-1")),
                "not in a container",
            ),
            (
                instance("cntInbox", ack.clone(), None),
                "no sealcast originator",
            ),
            (
                instance("cntInbox", ack.clone(), Some("CAdmin/x")),
                "no sealcast originator",
            ),
            (
                instance("cntInbox", ack.clone(), Some("Smanager")),
                "no sealcast originator",
            ),
            (
                instance("cntInbox", "not/a/target".into(), Some("Cdoor-1")),
                "label",
            ),
            (
                instance("cntInbox", cmd.clone(), Some("Cgateway")),
                "group target outside",
            ),
            (
                instance("cntGrp", ack.clone(), Some("Cdoor-1")),
                "per-entity target in the group",
            ),
            (
                instance("cntInbox", ack.clone(), Some("Cdoor-2")),
                "impersonation",
            ),
            (
                instance("cntInbox", delivery.clone(), Some("Cgateway")),
                "impersonation",
            ),
        ] {
            let got = ok(i.clone());
            assert!(got.is_err_and(|e| e.contains(why)), "{i:?}: wanted {why}");
        }
        // A key delivery from the manager passes.
        assert!(ok(instance("cntInbox", delivery, Some("/id-in/Cmanager"))).is_ok());
    }
}

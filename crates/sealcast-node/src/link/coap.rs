//! The CoAP adapter behind [`Link`](super::Link): unicast CON per entity
//! (answered only after the runtime processed the request), multicast NON
//! per group on a pinned interface. The only module of the runtimes that
//! knows CoAP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sealcast_coap::{
    ALL_COAP_NODES_V4, ClientConfig, CoapClient, ContentFormat, DeferHandler, MAX_DATAGRAM, Method,
    MulticastConfig, MulticastInterface, MulticastReceiver, MulticastSender, Request, Response,
    ResponseCode, ServerCore, ServerSettings, Ticket, TransmissionParams,
};
use sealcast_core::ids::EntityId;
use sealcast_core::target::{DeviceChannel, Topic as Target, TopicScheme};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::bearer::{BEARER_PATH, BearerRole, Member, Service};
use super::{AddressBook, Incoming, Progress};
use crate::{Error, Result};

impl From<sealcast_coap::Error> for Error {
    fn from(e: sealcast_coap::Error) -> Self {
        Error::Transport {
            transport: "CoAP",
            source: Box::new(e),
        }
    }
}

/// A socket error of the CoAP link.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::from(sealcast_coap::Error::Io(e))
    }
}

/// Unicast messages queued per destination before new ones are dropped
/// (the manager's re-sends recover key traffic).
const OUTBOX_DEPTH: usize = 1024;
/// Messages queued between the sockets and the runtime; a request that
/// finds the queue full is answered 5.03 (the sender retries later).
const INBOX_DEPTH: usize = 1024;
/// How often a blocked CoAP server thread looks at its stop flag.
const SERVER_POLL: Duration = Duration::from_millis(200);

/// A CoAP link's settings.
#[derive(Clone, Debug)]
pub struct CoapLinkConfig {
    /// The unicast endpoint to listen on (port 0: any free port; the bound
    /// endpoint is recorded in the book). Unicast clients bind its address.
    pub listen: SocketAddr,
    /// The group address and port of the group channels.
    pub group: SocketAddr,
    /// The interface multicast leaves by and is joined on (never left to
    /// the kernel's default route).
    pub interface: MulticastInterface,
    /// Where the other entities listen.
    pub book: AddressBook,
    /// Confirmable-message timing (RFC 7252 §4.8).
    pub params: TransmissionParams,
    /// The largest multicast datagram sent or accepted.
    pub max_multicast: usize,
    /// Confirmable exchanges in flight at once to one peer (RFC 7252
    /// §4.7 NSTART; default 1). A meter raises it: its DAP answers each
    /// report only once the report's batch was forwarded, so one at a
    /// time would send one report per batch.
    pub nstart: usize,
    /// The MBMS-like bearer under the group channels, if the deployment
    /// runs one (see [`super::bearer`]); None: clear multicast.
    pub bearer: Option<Box<BearerRole>>,
}

impl CoapLinkConfig {
    /// Everything on loopback: listen on `127.0.0.1:0`, group
    /// `224.0.1.187:group_port` pinned to the interface `127.0.0.1`, CON
    /// timing for loopback (ACK_TIMEOUT 500 ms, 4 retransmissions), and
    /// multicast datagrams up to 16 KiB (loopback's MTU is 64 KiB; a tree
    /// rekey of a thousand members is about 1.1 KiB).
    pub fn loopback(group_port: u16, book: AddressBook) -> Result<Self> {
        let params =
            TransmissionParams::new(Duration::from_millis(500), 1.5, 4, Duration::from_secs(2))?;
        Ok(Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            group: SocketAddr::new(IpAddr::V4(ALL_COAP_NODES_V4), group_port),
            interface: MulticastInterface::LOOPBACK_V4,
            book,
            params,
            max_multicast: 16 * 1024,
            nstart: 1,
            bearer: None,
        })
    }

    /// The same settings listening on `listen`.
    #[must_use]
    pub fn listening_on(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// The same settings with `nstart` exchanges in flight per peer (at
    /// least 1).
    #[must_use]
    pub fn with_nstart(mut self, nstart: usize) -> Self {
        self.nstart = nstart.max(1);
        self
    }

    pub(super) fn multicast(&self) -> Result<MulticastConfig> {
        Ok(MulticastConfig::new(self.group.ip(), self.interface)?
            .with_port(self.group.port())
            .with_hops(1)?
            .with_loopback(true)
            .with_max_message(self.max_multicast.min(MAX_DATAGRAM))?
            .with_params(self.params))
    }
}

pub(super) fn content_format(bytes: &[u8]) -> ContentFormat {
    ContentFormat::of_tagged_cose(bytes).unwrap_or(ContentFormat::OCTET_STREAM)
}

/// The answer to one unicast request, sent once (dropped unused: 5.03, so
/// that the sender retries later).
pub(super) struct CoapAnswer {
    ticket: Option<Ticket>,
    server: Arc<Shared>,
}

impl CoapAnswer {
    pub(super) fn send(mut self, code: ResponseCode) {
        if let Some(ticket) = self.ticket.take() {
            self.server.answer(ticket, code);
        }
    }
}

impl Drop for CoapAnswer {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.server
                .answer(ticket, ResponseCode::SERVICE_UNAVAILABLE);
        }
    }
}

/// What the server thread and the answers share: the core (deduplication
/// cache, requests kept for later) and the socket answers leave by.
struct Shared {
    core: Mutex<ServerCore>,
    socket: UdpSocket,
}

impl Shared {
    fn answer(&self, ticket: Ticket, code: ResponseCode) {
        let peer = ticket.peer();
        let reply = self
            .core
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .complete(ticket, Response::new(code), std::time::Instant::now());
        // A lost answer is recovered: the client retransmits and the
        // deduplication cache answers.
        let _ = self.socket.send_to(&reply, peer);
    }
}

/// The bearer side of a CoAP link.
#[derive(Clone)]
pub(super) enum BearerState {
    /// This link is the bearer service.
    Service(Arc<Service>),
    /// It hears the bearer and sends group messages through the service.
    Member(Arc<Member>),
    /// It sends group messages through the service.
    Sender(EntityId),
}

/// Confirmable unicast, queued per destination.
pub(super) struct Outbox {
    id: EntityId,
    book: AddressBook,
    queues: Mutex<BTreeMap<SocketAddr, mpsc::Sender<Request>>>,
    client_config: ClientConfig,
    nstart: usize,
    progress: Arc<Progress>,
}

impl Outbox {
    /// Queues a confirmable POST of `bytes` on `target` to `to`.
    pub(super) fn send(&self, to: &EntityId, target: String, bytes: Vec<u8>) -> Result<()> {
        let peer = self
            .book
            .get(to)
            .ok_or_else(|| Error::Runtime(format!("no CoAP endpoint known for {to}")))?;
        let request = Request::post(&target, content_format(&bytes), bytes)?;
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(peer).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(OUTBOX_DEPTH);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..self.nstart {
                tokio::spawn(send_worker(
                    self.id.clone(),
                    peer,
                    self.client_config.clone(),
                    Arc::clone(&rx),
                    Arc::clone(&self.progress),
                ));
            }
            tx
        });
        self.progress.started();
        queue.try_send(request).map_err(|_| {
            self.progress.finished(None);
            Error::Runtime(format!(
                "CoAP queue to {to} is full or closed; the message was dropped"
            ))
        })
    }
}

/// The CoAP side of a link.
pub(super) struct CoapLink {
    endpoint: Option<SocketAddr>,
    multicast: Arc<MulticastSender>,
    outbox: Arc<Outbox>,
    bearer: Option<BearerState>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl CoapLink {
    /// Binds the senders; with `receive`, also the unicast endpoint
    /// (recorded in the book) and, with `join`, the multicast group; starts
    /// the bearer if the config names one.
    pub(super) async fn start(
        id: &EntityId,
        config: &CoapLinkConfig,
        topics: &TopicScheme,
        receive: bool,
        join: bool,
    ) -> Result<(CoapLink, mpsc::Receiver<Incoming>)> {
        let (tx, rx) = mpsc::channel(INBOX_DEPTH);
        let multicast_config = config.multicast()?;
        let multicast = Arc::new(MulticastSender::bind(multicast_config.clone()).await?);
        let bind = SocketAddr::new(config.listen.ip(), 0);
        let outbox = Arc::new(Outbox {
            id: id.clone(),
            book: config.book.clone(),
            queues: Mutex::new(BTreeMap::new()),
            client_config: ClientConfig::new(bind)
                .with_params(config.params)
                .with_max_body(64 * 1024),
            nstart: config.nstart.max(1),
            progress: Arc::new(Progress::default()),
        });
        let mut tasks = Vec::new();
        let bearer = match config.bearer.as_deref() {
            None => None,
            Some(BearerRole::Member { service, muk }) => {
                Some(BearerState::Member(Arc::new(Member::new(
                    service.clone(),
                    muk,
                    topics.device(id, DeviceChannel::Bearer),
                )?)))
            }
            Some(BearerRole::Sender { service }) => Some(BearerState::Sender(service.clone())),
            Some(BearerRole::Service(setup)) => {
                let (service, deliveries, frames) = Service::start(id, setup)?;
                tasks.push(tokio::spawn(send_frames(frames, Arc::clone(&multicast))));
                send_deliveries(&outbox, topics, deliveries);
                let control = setup
                    .control
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                tasks.push(tokio::spawn(run_service(
                    Arc::clone(&service),
                    Arc::clone(&outbox),
                    topics.clone(),
                    setup.redeliver,
                    control,
                )));
                info!(service = %id, devices = setup.devices.len(), "bearer service running: group traffic leaves as bearer frames");
                Some(BearerState::Service(service))
            }
        };
        if receive && join {
            let group = MulticastReceiver::join(multicast_config).await?;
            let member = match &bearer {
                Some(BearerState::Member(m)) => Hear::Bearer(Arc::clone(m)),
                Some(_) => Hear::Nothing,
                None => Hear::Clear,
            };
            tasks.push(tokio::spawn(hear_group(group, tx.clone(), member)));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let endpoint = if receive {
            let relay = match &bearer {
                Some(BearerState::Service(s)) => Some(Arc::clone(s)),
                _ => None,
            };
            let member = match &bearer {
                Some(BearerState::Member(m)) => Some(Arc::clone(m)),
                _ => None,
            };
            Some(serve_unicast(
                id,
                config,
                ToRuntime {
                    inbox: tx,
                    shared: None,
                    topics: topics.clone(),
                    relay,
                    member,
                },
                Arc::clone(&stop),
            )?)
        } else {
            None
        };
        Ok((
            CoapLink {
                endpoint,
                multicast,
                outbox,
                bearer,
                stop,
                tasks,
            },
            rx,
        ))
    }

    pub(super) fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sends a group message: to the multicast group in the clear, as
    /// bearer frames (the service), or to the bearer service by unicast
    /// (its members and senders).
    pub(super) async fn publish_group(&self, target: String, bytes: Vec<u8>) -> Result<()> {
        match &self.bearer {
            None => {
                self.multicast
                    .send(&target, content_format(&bytes), &bytes)
                    .await?;
                Ok(())
            }
            Some(BearerState::Service(s)) => s.protect(&target, &bytes),
            Some(BearerState::Member(m)) => self.outbox.send(&m.service, target, bytes),
            Some(BearerState::Sender(service)) => self.outbox.send(service, target, bytes),
        }
    }

    /// Queues a confirmable POST of `bytes` on `target` to `to`.
    pub(super) fn send(&self, to: &EntityId, target: String, bytes: Vec<u8>) -> Result<()> {
        self.outbox.send(to, target, bytes)
    }

    /// Waits until every queued request was answered (within `timeout`);
    /// fails if any was refused or unanswered since the last flush.
    pub(super) async fn flush(&self, timeout: Duration) -> Result<()> {
        self.outbox
            .progress
            .settle(tokio::time::Instant::now() + timeout, "CoAP")
            .await
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Sends MSK deliveries, each to its device's `bearer` target.
fn send_deliveries(
    outbox: &Outbox,
    topics: &TopicScheme,
    deliveries: Vec<sealcast_bearer::MskDelivery>,
) {
    for d in deliveries {
        let target = topics.device(&d.device, DeviceChannel::Bearer);
        if let Err(e) = outbox.send(&d.device, target, d.bytes) {
            warn!(device = %d.device, error = %e, "MSK delivery not sent; it is sent again at the next round");
        }
    }
}

/// Multicasts the bearer frames in the order they were protected.
async fn send_frames(
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    multicast: Arc<MulticastSender>,
) {
    while let Some(f) = frames.recv().await {
        if let Err(e) = multicast
            .send(BEARER_PATH, ContentFormat::OCTET_STREAM, &f)
            .await
        {
            warn!(error = %e, "bearer frame not sent");
        }
    }
}

/// The bearer service's rounds: the MSK again for every entitled device
/// every `redeliver`, and changes of the entitled devices.
async fn run_service(
    service: Arc<Service>,
    outbox: Arc<Outbox>,
    topics: TopicScheme,
    redeliver: Duration,
    mut control: Option<mpsc::Receiver<super::bearer::ControlMsg>>,
) {
    let mut tick = tokio::time::interval(redeliver.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        let msg = async {
            match control.as_mut() {
                Some(c) => c.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => match service.redeliver_all() {
                Ok(d) => send_deliveries(&outbox, &topics, d),
                Err(e) => warn!(service = %service.id(), error = %e, "MSK re-delivery failed"),
            },
            m = msg => match m {
                Some(m) => {
                    let (devices, reply) = m.into_parts();
                    let result = service.set_devices(devices).map(|(change, d)| {
                        send_deliveries(&outbox, &topics, d);
                        change
                    });
                    // Answered once the deliveries were (a newcomer can read
                    // the bearer when this returns); a device that did not
                    // answer gets the MSK again at the next round.
                    if result.is_ok()
                        && let Err(e) = outbox
                            .progress
                            .settle(tokio::time::Instant::now() + Duration::from_secs(10), "MSK delivery")
                            .await
                    {
                        warn!(service = %service.id(), error = %e, "MSK deliveries unanswered; sent again every round");
                    }
                    match &result {
                        Ok(c) => info!(service = %service.id(), entitled = ?c.entitled, revoked = ?c.revoked, "bearer devices changed"),
                        Err(e) => warn!(service = %service.id(), error = %e, "bearer devices not changed"),
                    }
                    let _ = reply.send(result);
                }
                None => control = None,
            },
        }
    }
}

impl Drop for CoapLink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a link takes from the multicast group.
enum Hear {
    /// Every NON POST, as it is (no bearer).
    Clear,
    /// Bearer frames only, opened by this member.
    Bearer(Arc<Member>),
    /// Nothing (the bearer service hears its own frames).
    Nothing,
}

/// Hands the group's NON POSTs to the runtime (nothing to answer).
async fn hear_group(mut group: MulticastReceiver, inbox: mpsc::Sender<Incoming>, hear: Hear) {
    loop {
        let request = match group.recv().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "multicast receiver failed; the group is left");
                break;
            }
        };
        if request.request().method() != Method::Post {
            continue;
        }
        let path = request.path();
        let payload = request.into_request().into_payload();
        let (target, payload) = match &hear {
            Hear::Clear => (path, payload),
            Hear::Nothing => continue,
            Hear::Bearer(_) if path != BEARER_PATH => {
                debug!(%path, "clear multicast dropped: this deployment's group traffic runs on the bearer");
                continue;
            }
            Hear::Bearer(member) => match member.open(&payload) {
                Ok(Some(opened)) => opened,
                // A key frame: installed, nothing to hand on.
                Ok(None) => continue,
                Err(e) => {
                    debug!(error = %e, "bearer frame dropped");
                    continue;
                }
            },
        };
        let message = Incoming {
            origin: None,
            target,
            payload: Bytes::from(payload),
            ack: super::Ack(super::AckInner::None),
        };
        if inbox.send(message).await.is_err() {
            break;
        }
    }
}

/// Binds the unicast endpoint, records it in the book and serves it from
/// a thread of its own; returns the bound endpoint.
fn serve_unicast(
    id: &EntityId,
    config: &CoapLinkConfig,
    mut handler: ToRuntime,
    stop: Arc<AtomicBool>,
) -> Result<SocketAddr> {
    let socket = UdpSocket::bind(config.listen)?;
    socket.set_read_timeout(Some(SERVER_POLL))?;
    let endpoint = socket.local_addr()?;
    let settings = ServerSettings {
        params: config.params,
        max_body: 64 * 1024,
        ..ServerSettings::default()
    };
    let shared = Arc::new(Shared {
        core: Mutex::new(ServerCore::new(
            settings,
            sealcast_coap::MessageId::new(first_mid()?),
        )),
        socket: socket.try_clone()?,
    });
    handler.shared = Some(Arc::clone(&shared));
    let server = UnicastServer {
        socket,
        handler,
        shared,
        stop,
    };
    std::thread::Builder::new()
        .name(format!("coap-{id}"))
        .stack_size(256 * 1024)
        .spawn(move || server.run())
        .map_err(|e| Error::Runtime(format!("cannot start the CoAP server thread: {e}")))?;
    config.book.insert(id.clone(), endpoint);
    debug!(%id, %endpoint, group = %config.group, "CoAP link up");
    Ok(endpoint)
}

/// Sends the queued requests to one peer, one confirmable exchange at a
/// time per worker (RFC 7252 §4.7: `nstart` workers share a peer's queue).
/// Ends when the link is dropped.
async fn send_worker(
    from: EntityId,
    peer: SocketAddr,
    config: ClientConfig,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>,
    progress: Arc<Progress>,
) {
    let client = match CoapClient::bind(config).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(%from, %peer, error = %e, "cannot bind a CoAP client; messages to this peer are dropped");
            None
        }
    };
    loop {
        let next = queue.lock().await.recv().await;
        let Some(request) = next else { break };
        let Some(client) = &client else {
            progress.finished(Some("no CoAP client socket".into()));
            continue;
        };
        let outcome = match client.request(peer, &request).await {
            Ok(response) if response.code().is_success() => None,
            Ok(response) => {
                debug!(%from, %peer, target = %request.path(), code = %response.code(), "peer refused");
                Some(format!("{peer} answered {}", response.code()))
            }
            Err(e) => {
                warn!(%from, %peer, target = %request.path(), error = %e, "CoAP request failed; re-sends and pulls recover key traffic");
                Some(e.to_string())
            }
        };
        progress.finished(outcome);
    }
}

/// The unicast endpoint: a [`ServerCore`] (deduplication, block-wise) on a
/// blocking socket in its own thread. Requests are answered later, when the
/// runtime acknowledges them ([`CoapAnswer`]), so the thread never waits on
/// the runtime and many requests can be open at once (a DAP's batch).
struct UnicastServer {
    socket: UdpSocket,
    shared: Arc<Shared>,
    handler: ToRuntime,
    stop: Arc<AtomicBool>,
}

impl UnicastServer {
    fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        while !self.stop.load(Ordering::SeqCst) {
            let (n, peer) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                // Timeouts (to look at the stop flag) and ICMP errors about
                // earlier replies.
                Err(_) => continue,
            };
            let datagram = buf.get(..n).unwrap_or_default();
            let reply = self
                .shared
                .core
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .handle_datagram_deferred(datagram, peer, std::time::Instant::now(), &self.handler);
            if let Some(reply) = reply {
                // A failed send is a lost datagram: the client retransmits
                // and the deduplication cache answers.
                let _ = self.socket.send_to(&reply, peer);
            }
        }
    }
}

/// Hands each complete, deduplicated request to the runtime, to be
/// answered with what the runtime acknowledges. Never blocks (it runs under
/// the core's lock): a full inbox answers 5.03 at once.
///
/// With the bearer on, two requests never reach the runtime as such: a
/// member's MSK delivery is installed here; a group message sent to the
/// bearer service is put on the bearer, answered 2.04 and handed to the
/// service's own runtime as if heard on the group.
struct ToRuntime {
    inbox: mpsc::Sender<Incoming>,
    shared: Option<Arc<Shared>>,
    topics: TopicScheme,
    /// This link is the bearer service.
    relay: Option<Arc<Service>>,
    /// This link is a bearer member.
    member: Option<Arc<Member>>,
}

impl ToRuntime {
    /// A bearer request handled here, if it is one.
    fn bearer(&self, request: &Request) -> Option<Response> {
        let path = request.path();
        if let Some(member) = &self.member
            && path == member.delivery_target
        {
            return Some(match member.install(request.payload()) {
                Ok(msk) => {
                    debug!(msk = msk.get(), "bearer MSK installed");
                    Response::new(ResponseCode::CHANGED)
                }
                Err(e) => {
                    warn!(error = %e, "MSK delivery refused");
                    Response::new(ResponseCode::BAD_REQUEST)
                }
            });
        }
        let service = self.relay.as_ref()?;
        if !matches!(self.topics.parse(&path), Ok(Target::Group { .. })) {
            return None;
        }
        if let Err(e) = service.protect(&path, request.payload()) {
            warn!(target = %path, error = %e, "group message not put on the bearer");
            return Some(Response::new(ResponseCode::SERVICE_UNAVAILABLE));
        }
        // The service's runtime hears it as every member does: nothing to
        // answer (a full inbox drops it, as a lost datagram would).
        let _ = self.inbox.try_send(Incoming {
            origin: None,
            target: path,
            payload: Bytes::copy_from_slice(request.payload()),
            ack: super::Ack(super::AckInner::None),
        });
        Some(Response::new(ResponseCode::CHANGED))
    }
}

impl DeferHandler for ToRuntime {
    fn handle(&self, request: &Request, _peer: SocketAddr, ticket: Ticket) -> Option<Response> {
        if request.method() != Method::Post {
            return Some(Response::new(ResponseCode::METHOD_NOT_ALLOWED));
        }
        if let Some(answer) = self.bearer(request) {
            return Some(answer);
        }
        let Some(shared) = &self.shared else {
            return Some(Response::new(ResponseCode::SERVICE_UNAVAILABLE));
        };
        let answer = CoapAnswer {
            ticket: Some(ticket),
            server: Arc::clone(shared),
        };
        let message = Incoming {
            origin: None,
            target: request.path(),
            payload: Bytes::copy_from_slice(request.payload()),
            ack: super::Ack(super::AckInner::Coap(answer)),
        };
        match self.inbox.try_send(message) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                // Not kept: answered here, not through the core's lock
                // again.
                if let super::AckInner::Coap(mut a) = m.ack.0 {
                    a.ticket = None;
                }
                Some(Response::new(ResponseCode::SERVICE_UNAVAILABLE))
            }
        }
    }
}

/// Sends one group message (NON POST to the group of `config` on
/// `target`) from a fresh, pinned sender socket: for one-shot senders.
pub async fn multicast_once(config: &CoapLinkConfig, target: &str, bytes: &[u8]) -> Result<()> {
    let sender = MulticastSender::bind(config.multicast()?).await?;
    sender.send(target, content_format(bytes), bytes).await?;
    Ok(())
}

/// A random first message id for a server's own messages (RFC 7252 §4.4).
fn first_mid() -> Result<u16> {
    use rand_core::Rng;
    Ok(crate::runtime::os_rng()?.next_u32() as u16)
}

/// A free UDP port on 127.0.0.1 for a loopback multicast group (the
/// kernel's pick; tests and the demo use one per run so parallel runs do
/// not hear each other).
pub fn free_loopback_port() -> Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(s.local_addr()?.port())
}

//! The transport under the runtimes: MQTT or CoAP, chosen by a
//! [`LinkConfig`], the same three operations either way.
//!
//! - **publish** to a group channel ([`Link::publish_group`]) or send to one
//!   entity ([`Link::send_to`], [`Link::relay`]);
//! - an **inbox** ([`Inbox`]) of [`Incoming`] messages, each with the
//!   *target* it arrived on — the string a broadcast binds into both COSE
//!   layers;
//! - an **acknowledgement** ([`Ack`]) the runtime sends only after the
//!   message was processed — for broadcasts, after the replay window
//!   committed ([`deliver_once`]).
//!
//! The target is the same string on both transports: the [`TopicScheme`]
//! topic (`sealcast/v1/g/<group-hex>/cmd`, `sealcast/v1/d/<entity>/ack`, …).
//! Over MQTT it is the topic; over CoAP it is the Uri-Path (segments joined
//! with `/`), so a sealed object opens, or fails to, identically on both.
//!
//! | | MQTT | CoAP |
//! |---|---|---|
//! | group channels (cmd, alert, notice, rekey) | QoS 1 publish to the group topic | NON POST to the group address (224.0.1.187 and a port), interface pinned |
//! | key delivery | QoS 1 publish to `d/<device>/delivery` (the agent subscribes too) | CON POST to the agent's endpoint (`via`), which forwards it by CON to the device |
//! | ack, pull | QoS 1 publish to `d/<device>/ack\|pull` | CON POST to the manager's endpoint |
//! | acknowledgement | PUBACK after processing (manual ack) | the CON response (2.04; 4.00 for a rejected broadcast), sent after processing |
//!
//! CoAP endpoints come from an [`AddressBook`]: in the demo every link
//! registers the endpoint it bound; a service fills it from its config.
//! Unicast sends are queued per destination and sent by a worker task
//! (confirmable, retransmitted, one exchange at a time per destination), so
//! a runtime never waits on a peer that is itself waiting on it. Lost
//! multicast is tolerated by design: a member that misses a join notice or
//! a tree rekey does not acknowledge the new epoch, and the manager re-sends
//! the current material to it by unicast until it does; a member that hears
//! a command of a newer epoch pulls.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sealcast_coap::{
    ALL_COAP_NODES_V4, ClientConfig, CoapClient, ContentFormat, Handler, MAX_DATAGRAM, Method,
    MulticastConfig, MulticastReceiver, MulticastSender, Request, Response, ResponseCode,
    ServerCore, ServerSettings, TransmissionParams,
};
use sealcast_core::ReplayKind;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_core::receive::{OpenError, Verdict};
use sealcast_core::target::{GroupChannel, TopicFilter, TopicScheme};
use sealcast_mqtt::{AckToken, Bytes, MqttClient, MqttConfig, Subscription};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{Error, Result};

pub use sealcast_coap::MulticastInterface;

/// Which transport a deployment runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// MQTT through a broker (the default).
    #[default]
    Mqtt,
    /// CoAP: unicast CON per entity, multicast NON per group.
    Coap,
}

impl core::fmt::Display for Transport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Transport::Mqtt => "MQTT",
            Transport::Coap => "CoAP",
        })
    }
}

/// How one runtime reaches the others.
#[derive(Clone, Debug)]
pub enum LinkConfig {
    /// An MQTT broker URL (`mqtt://127.0.0.1:1883`).
    Mqtt {
        /// The broker.
        broker_url: String,
        /// Ask the broker to keep the session — subscriptions and the QoS 1
        /// messages routed while the client is away — across disconnects
        /// and restarts (`clean_session = false`, a stable client id). The
        /// long-running services set it; one-shot commands and the demo do
        /// not, so they leave no session behind on the broker.
        persistent_session: bool,
    },
    /// CoAP endpoints and a multicast group.
    Coap(CoapLinkConfig),
}

impl LinkConfig {
    /// MQTT through `broker_url`.
    pub fn mqtt(broker_url: impl Into<String>) -> Self {
        Self::Mqtt {
            broker_url: broker_url.into(),
            persistent_session: false,
        }
    }

    /// The same link with a persistent MQTT session or a clean one (see
    /// [`LinkConfig::Mqtt`]; CoAP: unchanged).
    pub fn with_persistent_session(mut self, persistent: bool) -> Self {
        if let Self::Mqtt {
            persistent_session, ..
        } = &mut self
        {
            *persistent_session = persistent;
        }
        self
    }

    /// The same link with an explicit MQTT client id (CoAP: unchanged).
    /// One-shot commands use it so that they never take over, or hand back,
    /// the client id of the entity's long-running service.
    pub fn with_mqtt_client_id(&self, client_id: &str) -> Self {
        match self {
            Self::Mqtt {
                broker_url,
                persistent_session,
            } => {
                let sep = if broker_url.contains('?') { '&' } else { '?' };
                Self::Mqtt {
                    broker_url: format!(
                        "{broker_url}{sep}client_id={}",
                        sealcast_mqtt::percent_encode(client_id)
                    ),
                    persistent_session: *persistent_session,
                }
            }
            other => other.clone(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Mqtt { .. } => Transport::Mqtt,
            Self::Coap(_) => Transport::Coap,
        }
    }
}

/// Where entities listen for unicast CoAP. Shared (cheap to clone): in the
/// demo every link registers the endpoint it bound; a service fills it from
/// its config.
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    endpoints: Arc<Mutex<BTreeMap<EntityId, SocketAddr>>>,
}

impl AddressBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) where `entity` listens.
    pub fn insert(&self, entity: EntityId, endpoint: SocketAddr) {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entity, endpoint);
    }

    /// Where `entity` listens, if known.
    pub fn get(&self, entity: &EntityId) -> Option<SocketAddr> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(entity)
            .copied()
    }

    /// How many endpoints are known.
    pub fn len(&self) -> usize {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no endpoint is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a CoAP server waits for its runtime to process one request
/// before it answers 5.03 (the sender's re-send or pull recovers).
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);
/// Unicast messages queued per destination before new ones are dropped
/// (the manager's re-sends recover key traffic).
const OUTBOX_DEPTH: usize = 1024;
/// Messages queued between the sockets and the runtime.
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
        })
    }

    /// The same settings listening on `listen`.
    #[must_use]
    pub fn listening_on(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    fn multicast(&self) -> Result<MulticastConfig> {
        Ok(MulticastConfig::new(self.group.ip(), self.interface)?
            .with_port(self.group.port())
            .with_hops(1)?
            .with_loopback(true)
            .with_max_message(self.max_multicast.min(MAX_DATAGRAM))?
            .with_params(self.params))
    }
}

/// What a link listens to.
#[derive(Clone, Debug, Default)]
pub struct Interest {
    /// MQTT topic filters to subscribe to. CoAP needs none: unicast
    /// requests reach the entity's endpoint by address.
    pub filters: Vec<TopicFilter>,
    /// CoAP: join the multicast group (field nodes and taps do; the manager
    /// does not).
    pub multicast: bool,
}

/// One received message.
pub struct Incoming {
    /// The target it arrived on: the MQTT topic or the CoAP Uri-Path.
    pub target: String,
    /// The COSE bytes as they arrived.
    pub payload: Bytes,
    /// Acknowledges it; send only after processing.
    pub ack: Ack,
}

impl Incoming {
    /// Whether the sender side keeps this message until it is acknowledged,
    /// so the receiver may hold it and retry (MQTT: the broker redelivers
    /// it on the next session). False on CoAP, whose server waits for the
    /// answer: there, drop it (5.03) rather than hold it.
    pub fn can_wait(&self) -> bool {
        matches!(self.ack.0, AckInner::Mqtt { .. })
    }
}

impl core::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Incoming")
            .field("target", &self.target)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// The acknowledgement of one message, sent at most once.
///
/// MQTT: the PUBACK of a QoS 1 message. CoAP unicast: the response to the
/// confirmable request, which the server holds until this is used (dropped
/// unused, the request is answered 5.03 and the sender retries later).
/// CoAP multicast: nothing to send.
pub struct Ack(AckInner);

enum AckInner {
    Mqtt { token: AckToken, redelivered: bool },
    Coap(std::sync::mpsc::SyncSender<ResponseCode>),
    None,
}

impl core::fmt::Debug for Ack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self.0 {
            AckInner::Mqtt { .. } => "Ack(MQTT)",
            AckInner::Coap(_) => "Ack(CoAP)",
            AckInner::None => "Ack(none)",
        })
    }
}

impl Ack {
    /// The transport marked this message as a redelivery (MQTT DUP).
    fn redelivered(&self) -> bool {
        matches!(
            self.0,
            AckInner::Mqtt {
                redelivered: true,
                ..
            }
        )
    }

    /// Acknowledges: the message was processed (MQTT PUBACK, CoAP 2.04).
    pub async fn ack(self) {
        self.answer(ResponseCode::CHANGED).await;
    }

    /// Refuses (MQTT: acknowledged all the same, so the broker does not
    /// redeliver; CoAP: 4.00 without a diagnostic payload).
    pub async fn reject(self) {
        self.answer(ResponseCode::BAD_REQUEST).await;
    }

    async fn answer(self, code: ResponseCode) {
        match self.0 {
            AckInner::Mqtt { token, .. } => {
                if let Err(e) = token.ack().await {
                    debug!(error = %e, "could not acknowledge; a redelivery will be dropped as a duplicate");
                }
            }
            AckInner::Coap(reply) => {
                // The server thread waits on the other end; if it gave up,
                // the sender retries and the replay window drops the copy.
                let _ = reply.try_send(code);
            }
            AckInner::None => {}
        }
    }
}

/// What [`deliver_once`] did with one message.
#[non_exhaustive]
#[derive(Debug)]
pub enum Delivery<T> {
    /// Opened (the replay window committed), then acknowledged.
    Executed {
        /// What `open` returned.
        value: T,
    },
    /// A replay (a redelivery or an attacker's copy): acknowledged, dropped.
    Duplicate {
        /// Seen before, or older than the window remembers.
        kind: ReplayKind,
    },
    /// Can never be opened: refused (acknowledged on MQTT, 4.00 on CoAP)
    /// and dropped. The reason is local detail.
    Rejected {
        /// The local reason; never sent to the peer.
        reason: sealcast_core::Error,
    },
    /// Names a newer epoch than installed: not acknowledged yet; the caller
    /// pulls and acknowledges (or drops) the message.
    Deferred {
        /// The message with its unused acknowledgement.
        incoming: Incoming,
        /// Why it could not be opened now.
        reason: sealcast_core::Error,
    },
    /// Opened, but its result could not be made durable and `open` put the
    /// replay state back: not acknowledged. The caller retries it once the
    /// fault clears, if [`Incoming::can_wait`]; dropping it lets the broker
    /// redeliver it on the next session (MQTT) or answers 5.03 (CoAP).
    NotSaved {
        /// The message with its unused acknowledgement.
        incoming: Incoming,
        /// What could not be saved.
        reason: String,
    },
}

/// Opens one message with `open(target, payload)` and answers it only
/// afterwards, by the rule of `sealcast_core::receive` — on MQTT with the
/// manual PUBACK, on CoAP by releasing the held response (2.04, or 4.00 for
/// a message that can never be opened).
pub async fn deliver_once<T, E, F>(incoming: Incoming, open: F) -> Delivery<T>
where
    F: FnOnce(&str, &[u8]) -> Result<T, E>,
    E: Into<OpenError>,
{
    let verdict = Verdict::of(open(&incoming.target, &incoming.payload).map_err(Into::into));
    match verdict {
        Verdict::Executed(value) => {
            incoming.ack.ack().await;
            Delivery::Executed { value }
        }
        Verdict::Duplicate(kind) => {
            debug!(target = %incoming.target, redelivered = incoming.ack.redelivered(), ?kind, "duplicate message acknowledged and dropped");
            incoming.ack.ack().await;
            Delivery::Duplicate { kind }
        }
        Verdict::Deferred(reason) => {
            info!(target = %incoming.target, %reason, "message for a newer epoch held back; pull the current key");
            Delivery::Deferred { incoming, reason }
        }
        Verdict::NotSaved(reason) => Delivery::NotSaved { incoming, reason },
        Verdict::Rejected(reason) => {
            // Rate-limited: a flood of garbage must not become a flood of
            // log lines.
            static REFUSED: std::sync::Mutex<crate::runtime::WarnLimiter> = std::sync::Mutex::new(
                crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
            );
            let allowed = REFUSED.lock().ok().and_then(|mut l| l.allow());
            let (target, len) = (&incoming.target, incoming.payload.len());
            match allowed {
                Some(held_back) => {
                    warn!(%target, len, %reason, held_back, "message can never be opened; refused and dropped")
                }
                None => debug!(%target, len, %reason, "message refused and dropped"),
            }
            incoming.ack.reject().await;
            Delivery::Rejected { reason }
        }
    }
}

impl Incoming {
    fn from_mqtt(m: sealcast_mqtt::Incoming) -> Self {
        Self {
            target: m.topic,
            payload: m.payload,
            ack: Ack(AckInner::Mqtt {
                token: m.ack,
                redelivered: m.redelivered,
            }),
        }
    }
}

/// The receiving half of a [`Link`].
pub struct Inbox(InboxInner);

enum InboxInner {
    Mqtt(Subscription),
    Coap(mpsc::Receiver<Incoming>),
}

impl core::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Inbox")
    }
}

impl Inbox {
    /// The next message, or `None` once the link is closed.
    pub async fn next_message(&mut self) -> Option<Incoming> {
        match &mut self.0 {
            InboxInner::Mqtt(sub) => sub.next_message().await.map(Incoming::from_mqtt),
            InboxInner::Coap(rx) => rx.recv().await,
        }
    }
}

/// The sending half: one entity's connection to the deployment.
pub struct Link {
    id: EntityId,
    topics: TopicScheme,
    inner: LinkInner,
}

enum LinkInner {
    Mqtt(MqttPublisher),
    Coap(Box<CoapLink>),
}

/// Publishes over MQTT from a task of its own, a bounded number at a time.
///
/// The runtime that owns the link hands messages over without waiting, so
/// it keeps reading and acknowledging its inbox while a burst (a manager's
/// thousand key deliveries) goes out; the task keeps fewer than
/// [`MQTT_PACE`] publishes unacknowledged, so rumqttc's inflight window
/// never fills and our acknowledgements of received messages never queue
/// behind publishes the broker will not acknowledge until it has them.
/// Without this, the embedded broker stalled key distribution at about 150
/// devices.
struct MqttPublisher {
    client: MqttClient,
    queue: Mutex<Option<mpsc::UnboundedSender<(String, Bytes)>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Unacknowledged publishes a link allows itself: half the client's window.
const MQTT_PACE: u64 = sealcast_mqtt::DEFAULT_INFLIGHT as u64 / 2;

/// How long the publisher waits for the broker's acknowledgements before
/// it publishes anyway (and logs it).
const MQTT_PACE_WAIT: Duration = Duration::from_secs(2);

impl MqttPublisher {
    fn start(client: MqttClient) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
        let c = client.clone();
        let task = tokio::spawn(async move {
            while let Some((topic, bytes)) = rx.recv().await {
                if let Err(e) = c.wait_outstanding_below(MQTT_PACE, MQTT_PACE_WAIT).await {
                    debug!(error = %e, "publishing without the broker's acknowledgements");
                }
                if let Err(e) = c.publish(topic, bytes).await {
                    warn!(error = %e, "publish failed");
                }
            }
        });
        Self {
            client,
            queue: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues a publish; it fails only once the link is closed.
    fn publish(&self, topic: String, bytes: Bytes) -> Result<()> {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match queue.as_ref() {
            Some(tx) if tx.send((topic, bytes)).is_ok() => Ok(()),
            _ => Err(Error::Runtime("the MQTT link is closed".into())),
        }
    }

    /// Sends what is queued (within `timeout`), then disconnects.
    async fn close(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = self.client.flush(left).await;
        let _ = self
            .client
            .disconnect(Duration::from_secs(2).min(timeout))
            .await;
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects `id` as `config` says and returns once it can receive (MQTT:
    /// subscribed; CoAP: endpoint bound and recorded in the book, group
    /// joined if `interest.multicast`).
    pub async fn connect(
        id: &EntityId,
        config: &LinkConfig,
        topics: TopicScheme,
        interest: Interest,
    ) -> Result<(Link, Inbox)> {
        match config {
            LinkConfig::Mqtt {
                broker_url,
                persistent_session,
            } => {
                let mut mqtt = MqttConfig::from_url(broker_url, topics.client_id(id.as_str()))?
                    .with_persistent_session(*persistent_session);
                for f in interest.filters {
                    mqtt = mqtt.with_subscription(f);
                }
                let (client, sub) = MqttClient::connect(mqtt)?;
                client.wait_subscribed(Duration::from_secs(10)).await?;
                Ok((
                    Link {
                        id: id.clone(),
                        topics,
                        inner: LinkInner::Mqtt(MqttPublisher::start(client)),
                    },
                    Inbox(InboxInner::Mqtt(sub)),
                ))
            }
            LinkConfig::Coap(c) => {
                let (coap, rx) = CoapLink::start(id, c, interest.multicast).await?;
                Ok((
                    Link {
                        id: id.clone(),
                        topics,
                        inner: LinkInner::Coap(Box::new(coap)),
                    },
                    Inbox(InboxInner::Coap(rx)),
                ))
            }
        }
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self.inner {
            LinkInner::Mqtt(_) => Transport::Mqtt,
            LinkInner::Coap(_) => Transport::Coap,
        }
    }

    /// The topic scheme targets are built with.
    pub fn topics(&self) -> &TopicScheme {
        &self.topics
    }

    /// The CoAP endpoint this link listens on (None on MQTT).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match &self.inner {
            LinkInner::Mqtt(_) => None,
            LinkInner::Coap(c) => Some(c.endpoint),
        }
    }

    /// Publishes `bytes` on a group channel: MQTT QoS 1 to the group topic,
    /// CoAP NON POST to the group address. `bytes` must have been sealed for
    /// the target `self.topics().group(group, channel)`.
    pub async fn publish_group(
        &self,
        group: &GroupId,
        channel: GroupChannel,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let target = self.topics.group(group, channel);
        match &self.inner {
            LinkInner::Mqtt(m) => m.publish(target, Bytes::from(bytes)),
            LinkInner::Coap(c) => {
                c.multicast
                    .send(&target, content_format(&bytes), &bytes)
                    .await?;
                Ok(())
            }
        }
    }

    /// Sends `bytes` on the per-entity `target` to `to`: MQTT publishes on
    /// the target (whoever subscribed gets it, `to` is not used); CoAP
    /// queues a confirmable POST to `to`'s endpoint. Returns once queued.
    pub async fn send_to(&self, to: &EntityId, target: String, bytes: Vec<u8>) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(m) => m.publish(target, Bytes::from(bytes)),
            LinkInner::Coap(c) => c.send(to, target, bytes),
        }
    }

    /// An agent passes on a message it received for `to` (a key delivery
    /// it cannot open). MQTT: nothing to do, the broker delivered it to `to`
    /// as well. CoAP: forwarded by a confirmable POST to `to`'s endpoint.
    pub async fn relay(&self, to: &EntityId, target: String, bytes: Bytes) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(_) => Ok(()),
            LinkInner::Coap(c) => c.send(to, target, bytes.to_vec()),
        }
    }

    /// Closes the link (MQTT: a clean DISCONNECT within `timeout`; CoAP:
    /// the endpoint stops serving and the group is left).
    pub async fn close(&self, timeout: Duration) {
        match &self.inner {
            LinkInner::Mqtt(m) => m.close(timeout).await,
            LinkInner::Coap(c) => c.stop(),
        }
    }
}

fn content_format(bytes: &[u8]) -> ContentFormat {
    ContentFormat::of_tagged_cose(bytes).unwrap_or(ContentFormat::OCTET_STREAM)
}

/// The CoAP side of a link.
struct CoapLink {
    id: EntityId,
    endpoint: SocketAddr,
    book: AddressBook,
    multicast: MulticastSender,
    outbox: Mutex<BTreeMap<SocketAddr, mpsc::Sender<Request>>>,
    client_config: ClientConfig,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
}

impl CoapLink {
    async fn start(
        id: &EntityId,
        config: &CoapLinkConfig,
        join: bool,
    ) -> Result<(CoapLink, mpsc::Receiver<Incoming>)> {
        let (tx, rx) = mpsc::channel(INBOX_DEPTH);
        let multicast_config = config.multicast()?;
        let multicast = MulticastSender::bind(multicast_config.clone()).await?;
        let receiver = if join {
            let mut group = MulticastReceiver::join(multicast_config).await?;
            let inbox = tx.clone();
            Some(tokio::spawn(async move {
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
                    let target = request.path();
                    let message = Incoming {
                        target,
                        payload: Bytes::from(request.into_request().into_payload()),
                        ack: Ack(AckInner::None),
                    };
                    if inbox.send(message).await.is_err() {
                        break;
                    }
                }
            }))
        } else {
            None
        };
        let socket = std::net::UdpSocket::bind(config.listen)?;
        socket.set_read_timeout(Some(SERVER_POLL))?;
        let endpoint = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let settings = ServerSettings {
            params: config.params,
            max_body: 64 * 1024,
            ..ServerSettings::default()
        };
        let server = UnicastServer {
            socket,
            core: ServerCore::new(settings, sealcast_coap::MessageId::new(first_mid()?)),
            handler: ToRuntime { inbox: tx },
            stop: Arc::clone(&stop),
        };
        std::thread::Builder::new()
            .name(format!("coap-{id}"))
            .stack_size(256 * 1024)
            .spawn(move || server.run())
            .map_err(|e| Error::Runtime(format!("cannot start the CoAP server thread: {e}")))?;
        config.book.insert(id.clone(), endpoint);
        debug!(%id, %endpoint, group = %config.group, "CoAP link up");
        let bind = SocketAddr::new(config.listen.ip(), 0);
        Ok((
            CoapLink {
                id: id.clone(),
                endpoint,
                book: config.book.clone(),
                multicast,
                outbox: Mutex::new(BTreeMap::new()),
                client_config: ClientConfig::new(bind)
                    .with_params(config.params)
                    .with_max_body(64 * 1024),
                stop,
                receiver,
            },
            rx,
        ))
    }

    /// Queues a confirmable POST of `bytes` on `target` to `to`.
    fn send(&self, to: &EntityId, target: String, bytes: Vec<u8>) -> Result<()> {
        let peer = self
            .book
            .get(to)
            .ok_or_else(|| Error::Runtime(format!("no CoAP endpoint known for {to}")))?;
        let request = Request::post(&target, content_format(&bytes), bytes)?;
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = outbox.entry(peer).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(OUTBOX_DEPTH);
            tokio::spawn(send_worker(
                self.id.clone(),
                peer,
                self.client_config.clone(),
                rx,
            ));
            tx
        });
        queue.try_send(request).map_err(|_| {
            Error::Runtime(format!(
                "CoAP queue to {to} is full or closed; the message was dropped"
            ))
        })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = &self.receiver {
            r.abort();
        }
    }
}

impl Drop for CoapLink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends the queued requests to one peer, one confirmable exchange at a
/// time (RFC 7252 §4.7, NSTART 1). Ends when the link is dropped.
async fn send_worker(
    from: EntityId,
    peer: SocketAddr,
    config: ClientConfig,
    mut queue: mpsc::Receiver<Request>,
) {
    let client = match CoapClient::bind(config).await {
        Ok(c) => c,
        Err(e) => {
            warn!(%from, %peer, error = %e, "cannot bind a CoAP client; messages to this peer are dropped");
            return;
        }
    };
    while let Some(request) = queue.recv().await {
        match client.request(peer, &request).await {
            Ok(response) if response.code().is_success() => {}
            Ok(response) => {
                debug!(%from, %peer, target = %request.path(), code = %response.code(), "peer refused");
            }
            Err(e) => {
                warn!(%from, %peer, target = %request.path(), error = %e, "CoAP request failed; re-sends and pulls recover key traffic");
            }
        }
    }
}

/// The unicast endpoint: a [`ServerCore`] (deduplication, block-wise) on a
/// blocking socket in its own thread, because its handler waits until the
/// runtime processed the request — the response is the acknowledgement.
struct UnicastServer {
    socket: std::net::UdpSocket,
    core: ServerCore,
    handler: ToRuntime,
    stop: Arc<AtomicBool>,
}

impl UnicastServer {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        while !self.stop.load(Ordering::SeqCst) {
            let (n, peer) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                // Timeouts (to look at the stop flag) and ICMP errors about
                // earlier replies.
                Err(_) => continue,
            };
            let datagram = buf.get(..n).unwrap_or_default();
            if let Some(reply) =
                self.core
                    .handle_datagram(datagram, peer, std::time::Instant::now(), &self.handler)
            {
                // A failed send is a lost datagram: the client retransmits
                // and the deduplication cache answers.
                let _ = self.socket.send_to(&reply, peer);
            }
        }
    }
}

/// Hands each complete, deduplicated request to the runtime and answers
/// with what the runtime acknowledges.
struct ToRuntime {
    inbox: mpsc::Sender<Incoming>,
}

impl Handler for ToRuntime {
    fn handle(&self, request: &Request, _peer: SocketAddr) -> Response {
        if request.method() != Method::Post {
            return Response::new(ResponseCode::METHOD_NOT_ALLOWED);
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let mut message = Incoming {
            target: request.path(),
            payload: Bytes::copy_from_slice(request.payload()),
            ack: Ack(AckInner::Coap(reply)),
        };
        let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
        // Bounded wait for room in the inbox (never a blocking call that
        // could outlive the runtime).
        loop {
            match self.inbox.try_send(message) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return Response::new(ResponseCode::SERVICE_UNAVAILABLE);
                    }
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Response::new(ResponseCode::SERVICE_UNAVAILABLE);
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match answer.recv_timeout(left) {
            Ok(code) => Response::new(code),
            Err(_) => Response::new(ResponseCode::SERVICE_UNAVAILABLE),
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
    let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(s.local_addr()?.port())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn entity(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    async fn coap_link(id: &str, config: &CoapLinkConfig, multicast: bool) -> (Link, Inbox) {
        Link::connect(
            &entity(id),
            &LinkConfig::Coap(config.clone()),
            TopicScheme::new(),
            Interest {
                filters: Vec::new(),
                multicast,
            },
        )
        .await
        .unwrap()
    }

    async fn next(inbox: &mut Inbox) -> Incoming {
        tokio::time::timeout(WAIT, inbox.next_message())
            .await
            .expect("a message in time")
            .expect("the link is open")
    }

    async fn raw_client() -> CoapClient {
        let params =
            TransmissionParams::new(Duration::from_millis(200), 1.5, 4, Duration::from_secs(1))
                .unwrap();
        CoapClient::bind(ClientConfig::new("127.0.0.1:0".parse().unwrap()).with_params(params))
            .await
            .unwrap()
    }

    #[test]
    fn loopback_config_is_pinned() {
        let c = CoapLinkConfig::loopback(40_000, AddressBook::new()).unwrap();
        assert_eq!(c.interface, MulticastInterface::LOOPBACK_V4);
        assert!(c.group.ip().is_multicast());
        assert!(c.listen.ip().is_loopback());
        let m = c.multicast().unwrap();
        assert_eq!(m.interface(), MulticastInterface::LOOPBACK_V4);
        assert_eq!(m.port(), 40_000);
    }

    #[tokio::test]
    async fn the_response_is_the_acknowledgement_and_waits_for_it() {
        let config =
            CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
        let (link, mut inbox) = coap_link("door-1", &config, false).await;
        let endpoint = link.endpoint().unwrap();
        assert_eq!(config.book.get(&entity("door-1")), Some(endpoint));

        let client = Arc::new(raw_client().await);
        let target = "sealcast/v1/d/door-1/delivery";
        let request =
            Request::post(target, ContentFormat::COSE_SIGN1, vec![0xd2, 0x84, 1, 2]).unwrap();
        let c = Arc::clone(&client);
        let exchange = tokio::spawn(async move { c.request(endpoint, &request).await });
        let m = next(&mut inbox).await;
        assert_eq!(m.target, target);
        assert_eq!(&m.payload[..], &[0xd2, 0x84, 1, 2]);
        // Not answered (and retransmitted meanwhile) until the runtime acks.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!exchange.is_finished());
        m.ack.ack().await;
        let response = tokio::time::timeout(WAIT, exchange)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.code(), ResponseCode::CHANGED);
        // The retransmissions were answered from the cache, not delivered again.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), inbox.next_message())
                .await
                .is_err()
        );
        assert!(client.stats().await.retransmissions >= 1);
    }

    #[tokio::test]
    async fn deliver_once_answers_after_open_and_refuses_opaquely() {
        let config =
            CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
        let (link, mut inbox) = coap_link("door-2", &config, false).await;
        let endpoint = link.endpoint().unwrap();
        let client = Arc::new(raw_client().await);
        let send = |payload: Vec<u8>| {
            let c = Arc::clone(&client);
            tokio::spawn(async move {
                let r = Request::post(
                    "sealcast/v1/g/01/cmd",
                    ContentFormat::COSE_ENCRYPT0,
                    payload,
                )
                .unwrap();
                c.request(endpoint, &r).await.unwrap()
            })
        };

        // Opened: 2.04, and `open` saw the target and bytes.
        let x = send(vec![0xd0, 1]);
        let d = deliver_once(next(&mut inbox).await, |target, bytes| {
            assert_eq!(target, "sealcast/v1/g/01/cmd");
            Ok::<_, sealcast_core::Error>(bytes.len())
        })
        .await;
        assert!(matches!(d, Delivery::Executed { value: 2 }));
        assert_eq!(x.await.unwrap().code(), ResponseCode::CHANGED);

        // A replay: acknowledged (2.04) and dropped.
        let x = send(vec![0xd0, 2]);
        let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
            Err(sealcast_core::Error::Replay(ReplayKind::Duplicate))
        })
        .await;
        assert!(matches!(d, Delivery::Duplicate { .. }));
        assert_eq!(x.await.unwrap().code(), ResponseCode::CHANGED);

        // Garbage: 4.00 without a diagnostic payload.
        let x = send(vec![0xd0, 3]);
        let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
            Err(sealcast_core::Error::DecryptFailed)
        })
        .await;
        assert!(matches!(d, Delivery::Rejected { .. }));
        let r = x.await.unwrap();
        assert_eq!(r.code(), ResponseCode::BAD_REQUEST);
        assert!(r.payload().is_empty());

        // A newer epoch: held back, answered when the caller decides.
        let x = send(vec![0xd0, 4]);
        let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
            Err(sealcast_core::Error::FutureEpoch)
        })
        .await;
        let Delivery::Deferred { incoming, .. } = d else {
            panic!("deferred expected");
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!x.is_finished());
        incoming.ack.ack().await;
        assert_eq!(x.await.unwrap().code(), ResponseCode::CHANGED);

        // Opened but not saved: not acknowledged; CoAP cannot hold it, and
        // dropping it answers 5.03 so that the sender retries.
        let x = send(vec![0xd0, 5]);
        let d: Delivery<()> = deliver_once(next(&mut inbox).await, |_, _| {
            Err(OpenError::NotSaved("no space left".into()))
        })
        .await;
        let Delivery::NotSaved { incoming, reason } = d else {
            panic!("not saved expected");
        };
        assert_eq!(reason, "no space left");
        assert!(!incoming.can_wait());
        drop(incoming);
        assert_eq!(x.await.unwrap().code(), ResponseCode::SERVICE_UNAVAILABLE);

        // Only POST is served.
        let r = client
            .request(endpoint, &Request::get("sealcast/v1/d/door-2/ack").unwrap())
            .await
            .unwrap();
        assert_eq!(r.code(), ResponseCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn unicast_by_address_book_and_group_channels_by_pinned_multicast() {
        let config =
            CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
        let (manager, mut manager_inbox) = coap_link("manager", &config, false).await;
        let (device, mut device_inbox) = coap_link("sensor-1", &config, true).await;
        let (other, mut other_inbox) = coap_link("sensor-2", &config, true).await;
        assert_eq!(config.book.len(), 3);

        // An ack to the manager: CON to its endpoint, target = Uri-Path.
        let target = device
            .topics()
            .device(&entity("sensor-1"), sealcast_mqtt::DeviceChannel::Ack);
        device
            .send_to(&entity("manager"), target.clone(), vec![0xd2, 9])
            .await
            .unwrap();
        let m = next(&mut manager_inbox).await;
        assert_eq!(m.target, target);
        assert_eq!(&m.payload[..], &[0xd2, 9]);
        m.ack.ack().await;

        // A group command: NON to the group, heard by every joined link
        // (the sender's own included: loopback is on), not by the manager.
        let group = GroupId::new(b"fire-doors").unwrap();
        other
            .publish_group(&group, GroupChannel::Command, vec![0xd0, 7])
            .await
            .unwrap();
        let expected = TopicScheme::new().group(&group, GroupChannel::Command);
        for inbox in [&mut device_inbox, &mut other_inbox] {
            let m = next(inbox).await;
            assert_eq!(m.target, expected);
            assert_eq!(&m.payload[..], &[0xd0, 7]);
            m.ack.ack().await;
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), manager_inbox.next_message())
                .await
                .is_err()
        );

        // Nobody listens at an unknown entity.
        assert!(
            manager
                .send_to(&entity("nobody"), target, vec![1])
                .await
                .is_err()
        );
        // A closed link stops answering.
        device.close(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_relay_forwards_on_coap() {
        let config =
            CoapLinkConfig::loopback(free_loopback_port().unwrap(), AddressBook::new()).unwrap();
        let (gateway, _gw_inbox) = coap_link("gateway", &config, false).await;
        let (_door, mut door_inbox) = coap_link("door-3", &config, false).await;
        let target = "sealcast/v1/d/door-3/delivery".to_owned();
        gateway
            .relay(
                &entity("door-3"),
                target.clone(),
                Bytes::from_static(&[0xd2, 5]),
            )
            .await
            .unwrap();
        let m = next(&mut door_inbox).await;
        assert_eq!(m.target, target);
        m.ack.ack().await;
    }
}

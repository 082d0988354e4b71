//! The transport under the runtimes: one seam, three operations, whatever
//! carries them. MQTT ([`mqtt`]), CoAP ([`coap`]) and oneM2M ([`onem2m`],
//! CSEs over their HTTP or MQTT binding) are adapters behind it, chosen by a
//! [`LinkConfig`]; a runtime never names any of them.
//!
//! - **publish** to a group channel ([`Link::publish_group`]) or send to one
//!   entity ([`Link::send_to`], [`Link::relay`]); [`Link::flush`] waits
//!   until what was sent was taken (MQTT: the broker's PUBACKs; CoAP: the
//!   peers' answers) and says if anything was refused;
//! - an **inbox** ([`Inbox`]) of [`Incoming`] messages, each with the
//!   *target* it arrived on — the string a broadcast binds into both COSE
//!   layers;
//! - an **acknowledgement** ([`Ack`]) the runtime sends only after the
//!   message was processed — for broadcasts, after the replay window
//!   committed ([`deliver_once`], by the rule of `sealcast_core::receive`).
//!
//! The target is the same string on every transport: the [`TopicScheme`]
//! name (`sealcast/v1/g/<group-hex>/cmd`, `sealcast/v1/d/<entity>/ack`, …).
//! Over MQTT it is the topic; over CoAP it is the Uri-Path (segments joined
//! with `/`); over oneM2M the content instance's label, so a sealed object
//! opens, or fails to, identically on all three. oneM2M's mapping (AEs,
//! containers, `<group>` fan-out, notifications) is in [`onem2m`].
//!
//! | | MQTT | CoAP |
//! |---|---|---|
//! | group channels (cmd, alert, notice, rekey) | QoS 1 publish to the group topic | NON POST to the group address (224.0.1.187 and a port), interface pinned |
//! | key delivery | QoS 1 publish to `d/<device>/delivery` (the agent subscribes too) | CON POST to the agent's endpoint (`via`), which forwards it by CON to the device |
//! | ack, pull | QoS 1 publish to `d/<device>/ack\|pull` | CON POST to the manager's endpoint |
//! | meter report, DAP batch and announcement, solicit | QoS 1 publish to `a/<dap>/report\|batch\|announce\|solicit` | CON POST to the DAP's (report, solicit) or headend's (batch, announce) endpoint |
//! | acknowledgement | PUBACK after processing (manual ack) | the CON response (2.04; 4.00 for a rejected broadcast), sent after processing as a late piggybacked ACK |
//!
//! CoAP endpoints come from an [`AddressBook`]: in the demo every link
//! registers the endpoint it bound; a service fills it from its config.
//! Unicast sends are queued per destination and sent by worker tasks
//! (confirmable, retransmitted, [`CoapLinkConfig::nstart`] exchanges at a
//! time per destination), so a runtime never waits on a peer that is
//! itself waiting on it. The endpoint answers a request only when the
//! runtime acknowledges it, without holding its thread meanwhile, so many
//! requests can be open at once (a DAP's batch). Lost multicast is
//! tolerated by design: a member that misses a join notice or a tree rekey
//! does not acknowledge the new epoch, and the manager re-sends the
//! current material to it by unicast until it does; a member that hears a
//! command of a newer epoch pulls.

pub mod bearer;
pub mod coap;
pub mod mqtt;
pub mod onem2m;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use bytes::Bytes;
use sealcast_coap::ResponseCode;
use sealcast_core::ReplayKind;
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_core::receive::{OpenError, Verdict};
use sealcast_core::target::{GroupChannel, TopicFilter, TopicScheme};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::{Error, Result};

pub use coap::{CoapLinkConfig, free_loopback_port, multicast_once};
pub use onem2m::OneM2mLinkConfig;
pub use sealcast_coap::MulticastInterface;

/// Which transport a deployment runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// MQTT through a broker (the default).
    #[default]
    Mqtt,
    /// CoAP: unicast CON per entity, multicast NON per group.
    Coap,
    /// oneM2M: AEs on CSEs, content instances, `<group>` fan-out,
    /// notifications ([`onem2m`]).
    OneM2m,
}

impl core::fmt::Display for Transport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Transport::Mqtt => "MQTT",
            Transport::Coap => "CoAP",
            Transport::OneM2m => "oneM2M",
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
    /// oneM2M CSEs over their HTTP or MQTT binding.
    OneM2m(OneM2mLinkConfig),
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
            } => Self::Mqtt {
                broker_url: mqtt::with_client_id(broker_url, client_id),
                persistent_session: *persistent_session,
            },
            other => other.clone(),
        }
    }

    /// The same link with the entity's place on the CoAP multicast bearer
    /// (see [`bearer`]; MQTT: unchanged).
    #[must_use]
    pub fn with_bearer(&self, role: bearer::BearerRole) -> Self {
        match self {
            Self::Coap(c) => {
                let mut c = c.clone();
                c.bearer = Some(Box::new(role));
                Self::Coap(c)
            }
            other => other.clone(),
        }
    }

    /// The same link with `nstart` CoAP exchanges in flight per peer (see
    /// [`CoapLinkConfig::nstart`]; MQTT: unchanged).
    #[must_use]
    pub fn with_nstart(&self, nstart: usize) -> Self {
        match self {
            Self::Coap(c) => Self::Coap(c.clone().with_nstart(nstart)),
            other => other.clone(),
        }
    }

    /// CoAP: records that `entity` listens at `endpoint` in the address
    /// book this config shares (a demo whose many entities share one
    /// endpoint); nothing on the other transports.
    pub fn register_endpoint(&self, entity: EntityId, endpoint: SocketAddr) {
        if let Self::Coap(c) = self {
            c.book.insert(entity, endpoint);
        }
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Mqtt { .. } => Transport::Mqtt,
            Self::Coap(_) => Transport::Coap,
            Self::OneM2m(_) => Transport::OneM2m,
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

/// The MQTT filters of `group`'s channels: every channel, or with
/// `keys_only` the join notices and tree rekeys alone.
pub fn group_filters(topics: &TopicScheme, group: &GroupId, keys_only: bool) -> Vec<TopicFilter> {
    if keys_only {
        [GroupChannel::Notice, GroupChannel::Rekey]
            .iter()
            .filter_map(|c| TopicFilter::new(&topics.group(group, *c)).ok())
            .collect()
    } else {
        vec![topics.group_filter(group)]
    }
}

/// What a link listens to.
#[derive(Clone, Debug)]
pub struct Interest {
    /// MQTT topic filters to subscribe to (shared ones included). CoAP
    /// needs none: unicast requests reach the entity's endpoint by address.
    pub filters: Vec<TopicFilter>,
    /// CoAP: join the multicast group (field nodes and taps do; the manager
    /// does not).
    pub multicast: bool,
    /// False for a link that only sends (a one-shot meter): MQTT subscribes
    /// to nothing, CoAP binds no endpoint.
    pub receive: bool,
    /// Messages the transport may hold for the runtime before it stops
    /// reading (MQTT; default: the client's).
    pub capacity: Option<usize>,
}

impl Default for Interest {
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            multicast: false,
            receive: true,
            capacity: None,
        }
    }
}

impl Interest {
    /// A link that only sends.
    pub fn send_only() -> Self {
        Self {
            receive: false,
            ..Self::default()
        }
    }
}

/// One received message.
pub struct Incoming {
    /// The target it arrived on: the MQTT topic or the CoAP Uri-Path.
    pub target: String,
    /// The COSE bytes as they arrived.
    pub payload: Bytes,
    /// The entity the transport says sent it, where the transport records
    /// one (oneM2M: the originator the CSE accepted, its `cr`); None on MQTT
    /// and CoAP. A runtime that learns the verified signer refuses a
    /// message whose origin is another entity (TS-0003 §7.2).
    pub origin: Option<EntityId>,
    /// Acknowledges it; send only after processing.
    pub ack: Ack,
}

impl Incoming {
    /// Whether the sender side keeps this message until it is acknowledged,
    /// so the receiver may hold it and retry (MQTT: the broker redelivers
    /// it on the next session). False on CoAP, whose server waits for the
    /// answer: there, drop it (5.03) rather than hold it.
    pub fn can_wait(&self) -> bool {
        matches!(self.ack.0, AckInner::Mqtt(_))
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
    Mqtt(mqtt::MqttAck),
    Coap(coap::CoapAnswer),
    OneM2m(onem2m::OneM2mAck),
    None,
}

impl core::fmt::Debug for Ack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self.0 {
            AckInner::Mqtt(_) => "Ack(MQTT)",
            AckInner::Coap(_) => "Ack(CoAP)",
            AckInner::OneM2m(_) => "Ack(oneM2M)",
            AckInner::None => "Ack(none)",
        })
    }
}

impl Ack {
    /// The transport marked this message as a redelivery (MQTT DUP).
    fn redelivered(&self) -> bool {
        matches!(&self.0, AckInner::Mqtt(a) if a.redelivered())
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
            AckInner::Mqtt(a) => a.send().await,
            // If the peer gave up meanwhile, it retries and the replay
            // window drops the copy.
            AckInner::Coap(a) => a.send(code),
            // The CSE is answered 2000 either way: a refusal is sealcast's
            // business, and a CSE may drop a subscription that fails.
            AckInner::OneM2m(a) => a.send(),
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

/// Messages one caller queues to one peer before it waits for them with
/// [`Link::flush`]: the CoAP queue of a peer holds 1 024, and a send to a
/// full queue fails rather than wait (a runtime never waits on a peer).
pub const SEND_WINDOW: usize = 512;

/// Sends in flight and failures since the last [`Link::flush`].
#[derive(Debug, Default)]
pub(crate) struct Progress {
    outstanding: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    idle: Notify,
}

impl Progress {
    fn started(&self) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
    }

    fn finished(&self, error: Option<String>) {
        if let Some(e) = error {
            self.failed.fetch_add(1, Ordering::SeqCst);
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e);
        }
        if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until nothing is in flight (or `deadline`), then reports the
    /// failures since the last call.
    async fn settle(&self, deadline: tokio::time::Instant, what: &str) -> Result<()> {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let left = self.outstanding.load(Ordering::SeqCst);
            if left == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return Err(Error::Runtime(format!(
                    "{left} {what} message(s) still unsent when the wait ended"
                )));
            }
        }
        let failed = self.failed.swap(0, Ordering::SeqCst);
        if failed > 0 {
            let last = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_default();
            return Err(Error::Runtime(format!(
                "{failed} {what} message(s) were not accepted (last: {last})"
            )));
        }
        Ok(())
    }
}

/// The receiving half of a [`Link`].
pub struct Inbox(InboxInner);

enum InboxInner {
    Mqtt(mqtt::Subscription),
    Channel(mpsc::Receiver<Incoming>),
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
            InboxInner::Mqtt(sub) => mqtt::next_message(sub).await,
            InboxInner::Channel(rx) => rx.recv().await,
        }
    }

    /// The next message if one is already queued, without waiting (`None`
    /// when the queue is empty or the link closed; [`Self::next_message`]
    /// tells the two apart).
    pub fn try_next_message(&mut self) -> Option<Incoming> {
        match &mut self.0 {
            InboxInner::Mqtt(sub) => mqtt::try_next_message(sub),
            InboxInner::Channel(rx) => rx.try_recv().ok(),
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
    Mqtt(mqtt::MqttPublisher),
    Coap(Box<coap::CoapLink>),
    OneM2m(Box<onem2m::OneM2mLink>),
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
        let (inner, inbox) = match config {
            LinkConfig::Mqtt {
                broker_url,
                persistent_session,
            } => {
                let (publisher, sub) =
                    mqtt::connect(id, broker_url, *persistent_session, &topics, interest).await?;
                (LinkInner::Mqtt(publisher), InboxInner::Mqtt(sub))
            }
            LinkConfig::Coap(c) => {
                let (coap, rx) =
                    coap::CoapLink::start(id, c, &topics, interest.receive, interest.multicast)
                        .await?;
                (LinkInner::Coap(Box::new(coap)), InboxInner::Channel(rx))
            }
            LinkConfig::OneM2m(c) => {
                let (link, rx) =
                    onem2m::OneM2mLink::start(id, c, &topics, interest.receive).await?;
                (LinkInner::OneM2m(Box::new(link)), InboxInner::Channel(rx))
            }
        };
        Ok((
            Link {
                id: id.clone(),
                topics,
                inner,
            },
            Inbox(inbox),
        ))
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self.inner {
            LinkInner::Mqtt(_) => Transport::Mqtt,
            LinkInner::Coap(_) => Transport::Coap,
            LinkInner::OneM2m(_) => Transport::OneM2m,
        }
    }

    /// The topic scheme targets are built with.
    pub fn topics(&self) -> &TopicScheme {
        &self.topics
    }

    /// The CoAP endpoint this link listens on (None on MQTT, and for a
    /// link that only sends).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match &self.inner {
            LinkInner::Mqtt(_) | LinkInner::OneM2m(_) => None,
            LinkInner::Coap(c) => c.endpoint(),
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
            LinkInner::Coap(c) => c.publish_group(target, bytes).await,
            LinkInner::OneM2m(o) => o.publish_group(group, target, bytes),
        }
    }

    /// Sends `bytes` on the per-entity `target` to `to`: MQTT publishes on
    /// the target (whoever subscribed gets it, `to` is not used); CoAP
    /// queues a confirmable POST to `to`'s endpoint. Returns once queued;
    /// [`Link::flush`] waits for the outcome.
    pub async fn send_to(&self, to: &EntityId, target: String, bytes: Vec<u8>) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(m) => m.publish(target, Bytes::from(bytes)),
            LinkInner::Coap(c) => c.send(to, target, bytes),
            LinkInner::OneM2m(o) => o.send(to, target, bytes),
        }
    }

    /// An agent passes on a message it received for `to` (a key delivery
    /// it cannot open). MQTT: nothing to do, the broker delivered it to `to`
    /// as well; oneM2M: nothing either, the CSEs put it in `to`'s inbox.
    /// CoAP: forwarded by a confirmable POST to `to`'s endpoint.
    pub async fn relay(&self, to: &EntityId, target: String, bytes: Bytes) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(_) | LinkInner::OneM2m(_) => Ok(()),
            LinkInner::Coap(c) => c.send(to, target, bytes.to_vec()),
        }
    }

    /// Waits until everything sent so far was taken — MQTT: handed to the
    /// broker and acknowledged; CoAP: answered by its peer — within
    /// `timeout`, and fails if anything was refused or lost since the last
    /// flush (the error says how many).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(m) => m.flush(timeout).await,
            LinkInner::Coap(c) => c.flush(timeout).await,
            LinkInner::OneM2m(o) => o.flush(timeout).await,
        }
    }

    /// Closes the link (MQTT: a clean DISCONNECT within `timeout`; CoAP:
    /// the endpoint stops serving and the group is left).
    pub async fn close(&self, timeout: Duration) {
        match &self.inner {
            LinkInner::Mqtt(m) => m.close(timeout).await,
            LinkInner::Coap(c) => c.stop(),
            LinkInner::OneM2m(o) => {
                let _ = o.flush(timeout).await;
                o.stop();
            }
        }
    }

    /// Receives `group`'s channels from now on: all of them (commands,
    /// alerts, join notices, tree rekeys), or with `keys_only` the join
    /// notices and tree rekeys alone (a member that only sends). A field
    /// node calls it for every group it holds key material of, before it
    /// acknowledges the key: it hears only its own groups' traffic, and
    /// nothing sent after the acknowledgement is missed. MQTT: subscribes
    /// to `<root>/g/<group-hex>/+` (or its `notice` and `rekey` topics; kept
    /// on every new session) and waits at most `timeout` for the broker's
    /// SUBACK. CoAP: nothing, the multicast group carries every group;
    /// oneM2M: nothing, the manager's `<group>` resource lists the member.
    pub async fn listen_to_group(
        &self,
        group: &GroupId,
        keys_only: bool,
        timeout: Duration,
    ) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(m) => {
                m.subscribe(&group_filters(&self.topics, group, keys_only), timeout)
                    .await
            }
            LinkInner::Coap(_) | LinkInner::OneM2m(_) => Ok(()),
        }
    }

    /// Stops receiving on MQTT `filters` a persistent session may still
    /// hold from an earlier process (a node's old subscriptions): sent
    /// without waiting; nothing on CoAP and oneM2M.
    pub fn forget_filters(&self, filters: &[TopicFilter]) -> Result<()> {
        match &self.inner {
            LinkInner::Mqtt(m) => m.unsubscribe(filters),
            LinkInner::Coap(_) | LinkInner::OneM2m(_) => Ok(()),
        }
    }

    /// Tells the transport who the members of `group` are now, and which
    /// of them may send to it (the manager, after every change). MQTT and
    /// CoAP need nothing: members subscribe or join by themselves. oneM2M:
    /// the group's `<group>` resource lists the members' containers, the
    /// CSE fans out to them, and each member's container lets only the
    /// senders of its groups (and the manager) create in it.
    pub async fn set_group_members(
        &self,
        group: &GroupId,
        members: &std::collections::BTreeSet<EntityId>,
        senders: &std::collections::BTreeSet<EntityId>,
    ) -> Result<()> {
        match &self.inner {
            LinkInner::OneM2m(o) => o.set_group_members(group, members, senders).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

//! The MQTT client: one connection task per client, QoS 1 publishes,
//! received messages with acknowledgement tokens, reconnection with backoff.
//!
//! ```text
//!  MqttClient ──publish/ack──▶ rumqttc request queue ──▶ ┌──────────────────┐
//!                                                        │ connection task  │◀──▶ broker
//!  Subscription ◀── Incoming { topic, payload, ack } ◀── │ (EventLoop::poll)│
//!                                                        └──────────────────┘
//! ```
//!
//! The task owns rumqttc's `EventLoop`. It reconnects with [`Backoff`] after
//! a lost or refused connection, re-subscribes whenever the broker starts a
//! new session, and re-sends unacknowledged publishes: rumqttc keeps them
//! across reconnects when the broker resumes our session (`session present`),
//! and this task puts them back when the broker answers with a *new* session
//! (a broker restarted without persistence), because rumqttc drops them then.
//!
//! Acknowledgements are manual. A message is acknowledged on the connection
//! that delivered it and nowhere else: a token from an earlier connection is
//! not sent (the broker redelivers that message on the resumed session, and
//! the receiver's replay window turns the copy into an acknowledged
//! duplicate), so an old packet id can never acknowledge an unrelated
//! message that the broker numbered the same way on the new connection.

use core::fmt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, PubAck, Publish, QoS, Request,
    Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, Jitter};
use crate::config::MqttConfig;
use crate::error::{Error, Result};
use crate::topic::{TopicFilter, check_topic_name};

/// What the connection task has seen so far. A snapshot; see
/// [`MqttClient::status`].
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// A connection is up (CONNACK received, not lost since).
    pub connected: bool,
    /// Connections established so far (1 after the first CONNACK; more
    /// after reconnects).
    pub connections: u64,
    /// The broker resumed our session on the latest connection (CONNACK
    /// `session present`).
    pub session_present: bool,
    /// The broker confirmed the configured subscriptions on the current
    /// session (or there are none).
    pub subscribed: bool,
    /// The latest generation of subscriptions added with
    /// [`MqttClient::subscribe`] that the broker confirmed (0: none added).
    pub subscribed_generation: u64,
    /// QoS 1 publishes of ours the broker acknowledged (PUBACK).
    pub publishes_acked: u64,
    /// Publishes re-queued because the broker had lost our session.
    pub republished_after_session_loss: u64,
    /// The last connection error, for logs.
    pub last_error: Option<String>,
    /// A subscription the broker refused (its filter); the client closes.
    pub refused_subscription: Option<String>,
    /// The connection task has ended; nothing more will be sent or received.
    pub closed: bool,
    /// Messages dropped (and acknowledged, so the broker does not hold them)
    /// because the runtime's queue was full: load shed under a flood instead
    /// of a stalled connection.
    pub shed: u64,
}

/// State shared by the handles and the connection task.
#[derive(Debug)]
struct Shared {
    status: watch::Sender<Status>,
    /// Bumped on every connect and every disconnect: acknowledgement
    /// tokens from another value are stale.
    connection: AtomicU64,
    /// QoS 1 publishes handed to the connection task.
    published: AtomicU64,
    /// Set before a deliberate DISCONNECT, so the task does not reconnect.
    closing: AtomicBool,
    /// Acknowledgements to send, in order, by the ack pump task: the
    /// runtime queues them here without ever waiting for the connection.
    acks: mpsc::UnboundedSender<PumpItem>,
    /// Every subscription, with the generation that added it (0: the
    /// configured ones): what a new session subscribes to.
    filters: std::sync::Mutex<Vec<(TopicFilter, u64)>>,
    /// The last generation handed out by [`MqttClient::subscribe`].
    generation: AtomicU64,
    /// SUBSCRIBE requests the ack pump handed to rumqttc, in order, not yet
    /// seen going out: their generation and filters.
    requested: std::sync::Mutex<VecDeque<(u64, Vec<TopicFilter>)>>,
    /// Acknowledgements queued behind one handed to rumqttc (the gate), in
    /// order: the connection task writes them in one go once it sees the
    /// gate go out ([`AckBatch`]).
    ack_batches: std::sync::Mutex<VecDeque<AckBatch>>,
}

/// The most acknowledgements the ack pump takes together.
const MAX_ACK_BATCH: usize = 512;

/// PUBACKs that go out right behind their gate, in one write.
///
/// rumqttc writes and flushes every request on its own: one system call
/// (and, on loopback, the broker side's TCP receive) per PUBACK. A runtime
/// that acknowledges a batch at once (a DAP after persisting 64 windows, a
/// gateway after a burst) queues them together; the ack pump hands the
/// first to rumqttc and leaves the rest here, and the connection task,
/// when rumqttc reports the first written, writes the rest and flushes
/// once. The order on the wire is the order they were queued in (MQTT
/// 3.1.1 §4.6), since the task writes them before it polls rumqttc again.
#[derive(Debug)]
struct AckBatch {
    /// Packet id of the acknowledgement handed to rumqttc.
    gate: u16,
    /// The connection the messages came on.
    connection: u64,
    /// Packet ids of the acknowledgements behind it, in order.
    rest: Vec<u16>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a single push, pop or scan).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the ack pump sends, in order.
#[derive(Debug)]
enum PumpItem {
    /// A PUBACK for this message, received on this connection.
    Ack(Publish, u64),
    /// DISCONNECT, after every acknowledgement queued before it; the
    /// sender learns whether it was handed to the connection.
    Disconnect(tokio::sync::oneshot::Sender<bool>),
    /// SUBSCRIBE to filters added in this generation. Sent through the pump
    /// so the connection task sees them go out in the order they were
    /// recorded.
    Subscribe(u64, Vec<TopicFilter>),
    /// UNSUBSCRIBE from these filters.
    Unsubscribe(Vec<TopicFilter>),
}

/// Aborts the connection task when the last [`MqttClient`] and
/// [`Subscription`] are gone.
#[derive(Debug)]
struct TaskGuard(JoinHandle<()>, JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
        self.1.abort();
    }
}

/// Sends the runtime's acknowledgements, in the order they were queued.
/// An acknowledgement queued on an older connection is not sent: its
/// packet id may belong to another message now, and the broker redelivers.
/// Acknowledgements queued together go out together ([`AckBatch`]).
async fn ack_pump(
    client: AsyncClient,
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<PumpItem>,
) {
    // An item taken while gathering a batch of acknowledgements, next.
    let mut held: Option<PumpItem> = None;
    loop {
        let item = match held.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        match item {
            PumpItem::Ack(publish, connection) => {
                let mut batch = vec![(publish, connection)];
                while batch.len() < MAX_ACK_BATCH {
                    match queue.try_recv() {
                        Ok(PumpItem::Ack(p, c)) => batch.push((p, c)),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let current = shared.connection.load(Ordering::SeqCst);
                let mut batch = batch.into_iter().filter(|(p, c)| {
                    if *c != current {
                        debug!(
                            pkid = p.pkid,
                            "not acknowledging on a newer connection; the broker redelivers"
                        );
                    }
                    *c == current
                });
                let Some((gate, connection)) = batch.next() else {
                    continue;
                };
                let rest: Vec<u16> = batch.map(|(p, _)| p.pkid).collect();
                if !rest.is_empty() {
                    // Before the gate is handed over: the connection task
                    // looks for the batch when it sees the gate go out.
                    lock(&shared.ack_batches).push_back(AckBatch {
                        gate: gate.pkid,
                        connection,
                        rest,
                    });
                }
                if client.ack(&gate).await.is_err() {
                    break;
                }
            }
            PumpItem::Disconnect(done) => {
                let _ = done.send(client.disconnect().await.is_ok());
            }
            PumpItem::Subscribe(generation, filters) => {
                let request = filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.as_str().to_owned(), QoS::AtLeastOnce))
                    .collect::<Vec<_>>();
                lock(&shared.requested).push_back((generation, filters));
                if client.subscribe_many(request).await.is_err() {
                    break;
                }
            }
            PumpItem::Unsubscribe(filters) => {
                for f in filters {
                    if client.unsubscribe(f.as_str()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A handle to one MQTT connection: publishes with QoS 1, waits for
/// connection, subscription and delivery, disconnects. Cheap to clone.
///
/// Created with [`MqttClient::connect`], which also returns the
/// [`Subscription`] that yields received messages.
#[derive(Clone)]
pub struct MqttClient {
    client: AsyncClient,
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

impl fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttClient")
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

/// The receiving half: messages on the configured subscriptions, each with
/// the token that acknowledges it.
pub struct Subscription {
    rx: mpsc::Receiver<Incoming>,
    _task: Arc<TaskGuard>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

/// One received publish: the topic it arrived on (a broadcast's *target*),
/// the COSE bytes, and the token that acknowledges it.
///
/// Open the payload first, acknowledge after the replay window committed:
/// [`crate::deliver_once`] does both in the right order.
pub struct Incoming {
    /// The topic the message was published on.
    pub topic: String,
    /// The payload: the COSE object as it arrived.
    pub payload: Bytes,
    /// The broker marked it as a redelivery (MQTT DUP flag). Informational:
    /// the replay window, not this flag, decides what is a duplicate.
    pub redelivered: bool,
    /// Acknowledges this message to the broker.
    pub ack: AckToken,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// What [`AckToken::ack`] did.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// The PUBACK was queued on the connection that delivered the message.
    Sent,
    /// That connection is gone; nothing was sent. A resumed session
    /// redelivers the message, and the replay window turns the copy into an
    /// acknowledged duplicate.
    Stale,
    /// QoS 0 messages need no acknowledgement.
    NotNeeded,
    /// The client had shut down; nothing was sent ([`AckToken::ack`]
    /// reports this as [`Error::Closed`]; [`crate::deliver_once`] as this
    /// value, after logging it).
    ClientClosed,
}

/// Acknowledges one received message, once: [`AckToken::ack`] consumes it.
///
/// Dropping a token without acknowledging leaves the message unacknowledged:
/// the broker redelivers it on the next session (persistent sessions) and,
/// until then, it occupies one of the broker's in-flight slots for us.
pub struct AckToken {
    shared: Arc<Shared>,
    /// Only `qos` and `pkid` matter for the acknowledgement; the payload is
    /// not kept here.
    publish: Option<Publish>,
    connection: u64,
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckToken")
            .field("pkid", &self.publish.as_ref().map(|p| p.pkid))
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl AckToken {
    fn new(shared: Arc<Shared>, p: &Publish, connection: u64) -> Self {
        let mut header = Publish::new("", p.qos, Vec::new());
        header.pkid = p.pkid;
        header.dup = p.dup;
        Self {
            shared,
            publish: Some(header),
            connection,
        }
    }

    /// Sends the PUBACK. Call it only after the message was opened and its
    /// replay window committed (or it was judged a duplicate or garbage).
    pub async fn ack(mut self) -> Result<Acked> {
        let Some(publish) = self.publish.take() else {
            return Ok(Acked::NotNeeded);
        };
        if publish.qos == QoS::AtMostOnce {
            return Ok(Acked::NotNeeded);
        }
        if self.shared.connection.load(Ordering::SeqCst) != self.connection {
            debug!(
                pkid = publish.pkid,
                "not acknowledging on a newer connection; the broker redelivers"
            );
            return Ok(Acked::Stale);
        }
        // Queued for the ack pump, never awaited here: a runtime waiting for
        // room in the connection's request queue while the connection task
        // waits for room in the runtime's queue was a deadlock.
        self.shared
            .acks
            .send(PumpItem::Ack(publish, self.connection))
            .map_err(|_| Error::Closed)?;
        Ok(Acked::Sent)
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(p) = &self.publish
            && p.qos != QoS::AtMostOnce
        {
            debug!(
                pkid = p.pkid,
                "message dropped without acknowledgement; the broker redelivers it on the next session"
            );
        }
    }
}

impl Subscription {
    /// The next received message, or `None` once the client has shut down
    /// and every queued message was taken.
    pub async fn next_message(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// The next message if one is already queued, without waiting: a
    /// receiver that found one message uses it to take what queued up
    /// behind it as one burst.
    pub fn try_next_message(&mut self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }
}

impl MqttClient {
    /// Starts the connection task for `config` and returns at once; the
    /// task connects, subscribes and keeps reconnecting in the background
    /// (see [`MqttClient::wait_subscribed`]). Must be called inside a tokio
    /// runtime.
    pub fn connect(config: MqttConfig) -> Result<(MqttClient, Subscription)> {
        config.validate()?;
        let host = if config.host.contains(':') && !config.host.starts_with('[') {
            format!("[{}]", config.host)
        } else {
            config.host.clone()
        };
        let mut options = MqttOptions::new(config.client_id.clone(), host, config.port);
        // Checked by `validate`: whole seconds (or zero), inflight ≥ 1,
        // a non-empty client id for persistent sessions, so none of
        // rumqttc's option assertions can fire.
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(!config.persistent_session)
            .set_inflight(config.inflight)
            .set_max_packet_size(config.max_packet, config.max_packet)
            .set_request_channel_capacity(config.request_capacity)
            .set_manual_acks(true);
        if let Some(c) = &config.credentials {
            options.set_credentials(c.username.clone(), c.password.clone());
        }
        if let Some(tls) = &config.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls.client_config()?)),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, config.request_capacity);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
        // No Nagle: a runtime writes a small packet (a PUBACK) right after a
        // large one (a batch) and waits for nothing in between; with Nagle
        // the small one sat in the socket until the broker's delayed ACK,
        // about 40 ms (measured: a DAP's batches were 45 ms apart).
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);

        let (status, _) = watch::channel(Status {
            subscribed: config.subscriptions.is_empty(),
            ..Status::default()
        });
        let (acks, ack_queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            status,
            connection: AtomicU64::new(0),
            published: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            acks,
            filters: std::sync::Mutex::new(
                config
                    .subscriptions
                    .iter()
                    .map(|f| (f.clone(), 0))
                    .collect(),
            ),
            generation: AtomicU64::new(0),
            requested: std::sync::Mutex::new(VecDeque::new()),
            ack_batches: std::sync::Mutex::new(VecDeque::new()),
        });
        let pump = tokio::spawn(ack_pump(client.clone(), shared.clone(), ack_queue));
        let (tx, rx) = mpsc::channel(config.incoming_capacity);
        let task = Connection {
            eventloop,
            shared: shared.clone(),
            tx,
            backoff: config.backoff,
            client_id: config.client_id.clone(),
        };
        let guard = Arc::new(TaskGuard(tokio::spawn(task.run()), pump));
        Ok((
            MqttClient {
                client,
                shared,
                _task: guard.clone(),
            },
            Subscription { rx, _task: guard },
        ))
    }

    /// Publishes `payload` (the COSE bytes) on `topic` with QoS 1. Returns
    /// once the message is queued for the connection task; it is sent as
    /// soon as the connection allows and re-sent after reconnects until the
    /// broker acknowledges it ([`MqttClient::flush`] waits for that).
    pub async fn publish(&self, topic: impl Into<String>, payload: Bytes) -> Result<()> {
        let topic = topic.into();
        check_topic_name(&topic)?;
        if self.shared.status.borrow().closed {
            return Err(Error::Closed);
        }
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| Error::Closed)?;
        self.shared.published.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// A snapshot of the connection's status.
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// Waits until a connection is up.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, "the connection", |s| s.connected)
            .await
    }

    /// Waits until the broker confirmed the configured subscriptions on the
    /// current session. Messages published before that may not reach us.
    pub async fn wait_subscribed(&self, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, "the subscriptions", |s| {
            s.connected && s.subscribed
        })
        .await?;
        Ok(())
    }

    /// Subscribes to `filters` (QoS 1) from now on, on this session and
    /// every new one, and waits at most `timeout` for the broker to confirm
    /// them. Filters already subscribed are not sent again; the call then
    /// waits for their confirmation only.
    ///
    /// A timeout is an error, but the filters stay: they are subscribed
    /// again on the next connection. A filter the broker refuses closes the
    /// client, as a refused configured subscription does.
    pub async fn subscribe(&self, filters: &[TopicFilter], timeout: Duration) -> Result<()> {
        let wait_for = {
            let mut list = lock(&self.shared.filters);
            let mut newest = 0;
            let mut added = Vec::new();
            for f in filters {
                match list.iter().find(|(have, _)| have == f) {
                    Some((_, generation)) => newest = newest.max(*generation),
                    None if !added.contains(f) => added.push(f.clone()),
                    None => {}
                }
            }
            if !added.is_empty() {
                let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                list.extend(added.iter().map(|f| (f.clone(), generation)));
                self.shared
                    .acks
                    .send(PumpItem::Subscribe(generation, added))
                    .map_err(|_| Error::Closed)?;
                newest = generation;
            }
            newest
        };
        self.wait_for(timeout, "the subscriptions", |s| {
            s.connected && s.subscribed && s.subscribed_generation >= wait_for
        })
        .await
    }

    /// Unsubscribes from `filters` (those the client subscribed to are
    /// no longer renewed on new sessions) without waiting for the broker.
    /// Also for filters this client never subscribed to: a persistent
    /// session may hold subscriptions an earlier process made.
    pub fn unsubscribe(&self, filters: &[TopicFilter]) -> Result<()> {
        if filters.is_empty() {
            return Ok(());
        }
        lock(&self.shared.filters).retain(|(f, _)| !filters.contains(f));
        self.shared
            .acks
            .send(PumpItem::Unsubscribe(filters.to_vec()))
            .map_err(|_| Error::Closed)
    }

    /// Waits until the broker acknowledged every publish made through this
    /// client (and its clones) before the call. It counts acknowledgements:
    /// with clones publishing concurrently it may return once as many
    /// acknowledgements as earlier publishes arrived.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let target = self.shared.published.load(Ordering::SeqCst);
        self.wait_for(timeout, "the broker's acknowledgements", |s| {
            s.publishes_acked >= target
        })
        .await
    }

    /// Waits until fewer than `limit` of this client's publishes await the
    /// broker's acknowledgement (or `timeout` passes: an error).
    ///
    /// A runtime that publishes bursts uses it to stay inside the inflight
    /// window: rumqttc takes no request, not even the PUBACK of a message
    /// we received, while the window is full, and a broker that withholds
    /// its PUBACKs until we acknowledged what it sent us (rumqttd does) would
    /// then wait for us forever.
    pub async fn wait_outstanding_below(&self, limit: u64, timeout: Duration) -> Result<()> {
        let published = self.shared.published.load(Ordering::SeqCst);
        self.wait_for(timeout, "the broker's acknowledgements", |s| {
            published.saturating_sub(s.publishes_acked) < limit
        })
        .await
    }

    async fn wait_for(
        &self,
        timeout: Duration,
        what: &'static str,
        done: impl Fn(&Status) -> bool,
    ) -> Result<()> {
        let mut rx = self.shared.status.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| done(s) || s.closed)).await;
        match waited {
            Err(_) => {
                let s = self.shared.status.borrow().clone();
                match s.last_error {
                    Some(last_error) if !s.connected => Err(Error::Unreachable {
                        waiting_for: what,
                        last_error,
                    }),
                    _ => Err(Error::Timeout(what)),
                }
            }
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(s)) if done(&s) => Ok(()),
            Ok(Ok(s)) => match &s.refused_subscription {
                Some(filter) => Err(Error::SubscriptionRefused(filter.clone())),
                None => Err(Error::Closed),
            },
        }
    }

    /// Sends DISCONNECT after everything queued before it (publishes,
    /// acknowledgements) and ends the connection task. A persistent session
    /// stays on the broker. Waits at most `timeout` for the task to finish.
    pub async fn disconnect(&self, timeout: Duration) -> Result<()> {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Through the ack pump, so every acknowledgement queued before it
        // leaves first.
        let (done, handed) = tokio::sync::oneshot::channel();
        if self.shared.acks.send(PumpItem::Disconnect(done)).is_err()
            || !handed.await.unwrap_or(false)
        {
            return Ok(()); // the task is gone already
        }
        self.wait_for(timeout, "the disconnect", |s| s.closed).await
    }
}

/// What a SUBSCRIBE that went out covers.
enum SentSubscribe {
    /// Every filter, on a new session: confirms `subscribed` and the
    /// generation current when it was sent.
    All(u64, Vec<TopicFilter>),
    /// The filters added in one generation.
    Added(u64, Vec<TopicFilter>),
}

/// The connection task.
struct Connection {
    eventloop: EventLoop,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Incoming>,
    backoff: Backoff,
    client_id: String,
}

impl Connection {
    async fn run(mut self) {
        let mut jitter = Jitter::from_entropy();
        let mut failures: u32 = 0;
        // Our unacknowledged publishes as of the last lost connection.
        let mut unacked: Vec<Publish> = Vec::new();
        // Whether some session of ours ever confirmed the subscriptions.
        let mut confirmed_once = false;
        let mut first_connack = true;
        // Our resubscription of every filter, pushed on a CONNACK, goes out
        // first; the generation it confirms.
        let mut resubscribing: Option<(u64, Vec<TopicFilter>)> = None;
        // The connection was lost before that SUBSCRIBE's event was seen.
        let mut lost_resubscribe = false;
        // SUBSCRIBEs sent on this connection, by packet id.
        let mut sent: std::collections::HashMap<u16, SentSubscribe> =
            std::collections::HashMap::new();
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    self.shared.connection.fetch_add(1, Ordering::SeqCst);
                    // Acknowledgements of the last connection's messages.
                    lock(&self.shared.ack_batches).clear();
                    let mut requeued = 0u64;
                    if ack.session_present {
                        // rumqttc re-sends its pending publishes itself.
                        unacked.clear();
                    } else {
                        // A new session: rumqttc has just dropped its pending
                        // publishes. Put ours back, with fresh packet ids.
                        for mut p in unacked.drain(..) {
                            p.pkid = 0;
                            p.dup = false;
                            self.eventloop.pending.push_back(Request::Publish(p));
                            requeued += 1;
                        }
                        if requeued > 0 {
                            warn!(
                                client = %self.client_id,
                                requeued,
                                "the broker started a new session; re-publishing unacknowledged messages"
                            );
                        }
                    }
                    let (all, generation) = {
                        // The generation first: a filter added after it is
                        // also in the list, and covered by its own request.
                        let generation = self.shared.generation.load(Ordering::SeqCst);
                        let all: Vec<TopicFilter> = lock(&self.shared.filters)
                            .iter()
                            .map(|(f, _)| f.clone())
                            .collect();
                        (all, generation)
                    };
                    // Also when a SUBSCRIBE of ours may have been lost with
                    // the last connection.
                    let unconfirmed =
                        self.shared.status.borrow().subscribed_generation < generation;
                    let resubscribe = !all.is_empty()
                        && (first_connack
                            || !ack.session_present
                            || !confirmed_once
                            || unconfirmed);
                    sent.clear();
                    resubscribing = None;
                    // What the last connection left behind must not be
                    // taken for this one's: our SUBSCRIBE of every filter
                    // still waiting in `pending`, and the queued events of
                    // SUBSCRIBEs handled just before it broke. This
                    // connection's SUBSCRIBE of every filter covers them.
                    let before = self.eventloop.pending.len();
                    self.eventloop
                        .pending
                        .retain(|r| !matches!(r, Request::Subscribe(_)));
                    let all_never_sent = self.eventloop.pending.len() < before;
                    let before = self.eventloop.state.events.len();
                    self.eventloop
                        .state
                        .events
                        .retain(|e| !matches!(e, Event::Outgoing(Outgoing::Subscribe(_))));
                    let stale = before - self.eventloop.state.events.len();
                    // One of them was the last connection's SUBSCRIBE of
                    // every filter, if it was sent; the others are recorded
                    // in `requested`, oldest first.
                    let added =
                        stale.saturating_sub(usize::from(lost_resubscribe && !all_never_sent));
                    lost_resubscribe = false;
                    if added > 0 {
                        let mut requested = lock(&self.shared.requested);
                        for _ in 0..added {
                            requested.pop_front();
                        }
                    }
                    if resubscribe {
                        let filters = all
                            .iter()
                            .map(|f| SubscribeFilter::new(f.as_str().to_owned(), QoS::AtLeastOnce));
                        self.eventloop
                            .pending
                            .push_front(Request::Subscribe(Subscribe::new_many(filters)));
                        resubscribing = Some((generation, all));
                    }
                    first_connack = false;
                    info!(
                        client = %self.client_id,
                        session_present = ack.session_present,
                        "connected to the MQTT broker"
                    );
                    self.shared.status.send_modify(|s| {
                        s.connected = true;
                        s.connections += 1;
                        s.session_present = ack.session_present;
                        s.subscribed = !resubscribe;
                        s.republished_after_session_loss += requeued;
                    });
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                    let what = match resubscribing.take() {
                        Some((generation, all)) => Some(SentSubscribe::All(generation, all)),
                        None => lock(&self.shared.requested)
                            .pop_front()
                            .map(|(generation, added)| SentSubscribe::Added(generation, added)),
                    };
                    if let Some(what) = what {
                        sent.insert(pkid, what);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let Some(what) = sent.remove(&suback.pkid) else {
                        debug!(client = %self.client_id, pkid = suback.pkid, "a SUBACK for no SUBSCRIBE of this connection");
                        continue;
                    };
                    let (filters, all, generation) = match &what {
                        SentSubscribe::All(g, f) => (f, true, *g),
                        SentSubscribe::Added(g, f) => (f, false, *g),
                    };
                    let refused = suback
                        .return_codes
                        .iter()
                        .zip(filters)
                        .find(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, f)| f.to_string());
                    match refused {
                        None => {
                            if all {
                                confirmed_once = true;
                            }
                            debug!(client = %self.client_id, generation, "subscriptions confirmed");
                            self.shared.status.send_modify(|s| {
                                s.subscribed |= all;
                                s.subscribed_generation = s.subscribed_generation.max(generation);
                            });
                        }
                        Some(filter) => {
                            error!(client = %self.client_id, %filter, "the broker refused a subscription");
                            self.shared.status.send_modify(|s| {
                                s.refused_subscription = Some(filter.clone());
                            });
                            // Refused for good: the broker's ACL says no. Stop
                            // rather than run without the subscription.
                            break;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let connection = self.shared.connection.load(Ordering::SeqCst);
                    let ack = AckToken::new(self.shared.clone(), &p, connection);
                    let incoming = Incoming {
                        topic: p.topic,
                        payload: p.payload,
                        redelivered: p.dup,
                        ack,
                    };
                    // Never wait for the runtime: this task alone polls the
                    // connection, which is what sends the runtime's
                    // acknowledgements and publishes. A full queue means the
                    // runtime is `incoming_capacity` messages behind (more
                    // than a broker's QoS 1 in-flight window, so only under a
                    // flood): the message is shed — acknowledged through the
                    // ack pump so the broker frees its slot, and dropped.
                    // (Not through the event loop's `pending` queue: rumqttc
                    // takes from it only after a timer tick, and a busy
                    // socket always wins that race.)
                    let handed = match self.tx.try_send(incoming) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Closed(i)) => Err(i),
                        Err(mpsc::error::TrySendError::Full(dropped)) => {
                            let _ = dropped.ack.ack().await;
                            self.shared.status.send_modify(|s| s.shed += 1);
                            let shed = self.shared.status.borrow().shed;
                            if shed.is_power_of_two() {
                                warn!(client = %self.client_id, shed, "the runtime cannot keep up; received messages dropped");
                            }
                            Ok(())
                        }
                    };
                    if handed.is_err() {
                        debug!(client = %self.client_id, "no subscription handle; message left unacknowledged");
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    self.shared.status.send_modify(|s| s.publishes_acked += 1);
                }
                Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                    self.write_acks_behind(pkid).await;
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    info!(client = %self.client_id, "disconnected from the MQTT broker");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    if self.shared.closing.load(Ordering::SeqCst) {
                        break;
                    }
                    self.shared.connection.fetch_add(1, Ordering::SeqCst);
                    lock(&self.shared.ack_batches).clear();
                    // After a lost connection rumqttc has moved its
                    // unacknowledged publishes (and queued requests) into
                    // `pending`; after a failed attempt `pending` is unchanged.
                    unacked = pending_publishes(&self.eventloop.pending);
                    // SUBSCRIBEs without a SUBACK are lost with the
                    // connection; the next CONNACK subscribes everything.
                    sent.clear();
                    lost_resubscribe |= resubscribing.take().is_some();
                    failures = failures.saturating_add(1);
                    let reason = e.to_string();
                    self.shared.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(reason.clone());
                    });
                    if self.backoff.max_attempts.is_some_and(|max| failures > max) {
                        error!(client = %self.client_id, failures, error = %reason, "giving up reconnecting");
                        break;
                    }
                    let delay = self.backoff.delay(failures - 1, jitter.next());
                    warn!(
                        client = %self.client_id,
                        error = %reason,
                        attempt = failures,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        unacked = unacked.len(),
                        "MQTT connection lost or refused; reconnecting"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.shared.status.send_modify(|s| {
            s.connected = false;
            s.closed = true;
        });
    }
}

impl Connection {
    /// rumqttc has written the acknowledgement `gate`: writes the batch
    /// queued behind it, if any, and flushes once. Called before the next
    /// poll, so nothing rumqttc sends can come in between. A write that
    /// fails leaves the rest to the connection's own error, which the next
    /// poll reports (the messages are redelivered on the next session); a
    /// flush that times out leaves the bytes buffered, in order, for
    /// rumqttc's next flush.
    async fn write_acks_behind(&mut self, gate: u16) {
        let current = self.shared.connection.load(Ordering::SeqCst);
        let batch = {
            let mut batches = lock(&self.shared.ack_batches);
            // A batch of an older connection (the pump read the connection
            // just before it changed) is dropped, never left in front of
            // this connection's batches.
            while batches.front().is_some_and(|b| b.connection != current) {
                batches.pop_front();
            }
            match batches.front() {
                Some(b) if b.gate == gate => batches.pop_front(),
                _ => None,
            }
        };
        let Some(batch) = batch else {
            return;
        };
        let Some(network) = self.eventloop.network.as_mut() else {
            return;
        };
        let timeout = Duration::from_secs(self.eventloop.network_options.connection_timeout());
        let written = tokio::time::timeout(timeout, async {
            for pkid in batch.rest {
                network.write(Packet::PubAck(PubAck::new(pkid))).await?;
            }
            network.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(client = %self.client_id, error = %e, "acknowledgements not written; the connection is failing");
            }
            Err(_) => {
                debug!(client = %self.client_id, "acknowledgements not flushed in time; they go with the next write");
            }
        }
    }
}

fn pending_publishes(pending: &VecDeque<Request>) -> Vec<Publish> {
    pending
        .iter()
        .filter_map(|r| match r {
            Request::Publish(p) if p.qos != QoS::AtMostOnce => Some(p.clone()),
            _ => None,
        })
        .collect()
}

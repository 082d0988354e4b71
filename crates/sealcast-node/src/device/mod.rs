//! The field-node runtime: a device (ASN) or a gateway agent (MN) on MQTT
//! or CoAP (a [`Link`]).
//!
//! It installs key deliveries addressed to it, follows join notices and tree
//! rekeys, acknowledges (after installing), pulls when it missed an epoch,
//! and opens the group commands of the groups it belongs to — acknowledging
//! each message (MQTT PUBACK, CoAP response) only after the replay window
//! committed. A gateway relays key deliveries it cannot open (on CoAP it
//! forwards them to the device's endpoint) and adds
//! [`Rule`]s: an alert verified from one group makes it seal and broadcast
//! commands to other groups (the fire-safety group controller).

use std::collections::BTreeMap;
use std::sync::Arc;

use sealcast_core::broadcast::{
    BroadcastReceiver, BroadcastSender, OpenedBroadcast, ReplayPolicy, ReplayUndo,
};
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::groupkey::GroupKeyMaterial;
use sealcast_core::ids::{EntityId, GroupId, SeqNum, UnixMillis};
use sealcast_core::receive::OpenError;
use sealcast_core::replay::SeqAllocator;
use sealcast_core::target::{DeviceChannel, GroupChannel, Topic, TopicFilter, TopicScheme};
use sealcast_group::manager::MessageKind;
use sealcast_group::member::{Member, MemberEvent};
use sealcast_group::transmission::{
    Applied, OrderAck, TransmissionControl, TransmissionOrder, TxKind, describe as describe_stopped,
};
use sealcast_store::{DeviceStateFile, StateLock};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::audit::Record;
use crate::link::{Delivery, Inbox, Incoming, Interest, Link, LinkConfig, deliver_once};
use crate::runtime::{EventKind, EventSink, now, report};
use crate::{Error, Result};

/// Requests to a running node.
#[derive(Debug)]
enum Request {
    /// Seal `payload` for `group` on its `channel` topic and publish it;
    /// answers with the sealed bytes.
    Send {
        group: GroupId,
        channel: GroupChannel,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(Vec<u8>, u64)>>,
    },
    /// The node's current key material of `group`.
    Material {
        group: GroupId,
        reply: oneshot::Sender<Option<GroupKeyMaterial>>,
    },
    /// Ask the manager for the current material of `group` (a signed pull);
    /// answered once the pull is sent. The answer arrives as a delivery and
    /// is reported as [`EventKind::Installed`] or [`EventKind::Current`].
    Pull {
        group: GroupId,
        reply: oneshot::Sender<()>,
    },
    /// Stop after the current message; answered once stopped.
    Stop { reply: oneshot::Sender<()> },
}

struct Node {
    id: EntityId,
    member: Member,
    receivers: BTreeMap<GroupId, BroadcastReceiver>,
    senders: BTreeMap<(GroupId, u32), SeqAllocator>,
    /// The sending side of each group it sends to, for the epoch it holds:
    /// the group context derived once per epoch, not once per message.
    broadcasters: BTreeMap<GroupId, BroadcastSender>,
    manager: EntityId,
    /// The manager's credential: transmission orders are checked with it.
    manager_credential: sealcast_core::credential::PublicCredential,
    /// The newest transmission order applied (what this node must not send).
    transmission: TransmissionControl,
    link: Link,
    topics: TopicScheme,
    rules: Vec<Rule>,
    relays_for: Vec<EntityId>,
    /// Groups it only sends to: their commands and alerts are not received.
    send_only: std::collections::BTreeSet<GroupId>,
    handler: Arc<dyn CommandHandler>,
    events: EventSink,
    pulls: u64,
    state_file: Option<DeviceStateFile>,
    /// The state file's exclusive lock, held while the node runs: no other
    /// process allocates this entity's sequence numbers or commits its
    /// replay windows meanwhile.
    _state_lock: Option<StateLock>,
    no_key_warning: Option<std::time::Duration>,
    refused_deliveries: crate::runtime::WarnLimiter,
    /// When the last pull per group went out (see `pull_coalesced`).
    last_pull: BTreeMap<GroupId, std::time::Instant>,
    pulls_coalesced: u64,
    replay: ReplayPolicies,
    /// When the node started: timestamp-policy groups refuse messages
    /// stamped before this plus their skew (their windows are not on disk).
    started: sealcast_core::ids::UnixMillis,
    /// Messages opened but not saved (a full or read-only disk), held
    /// unacknowledged and opened again from `retry_at`.
    held: std::collections::VecDeque<(GroupId, GroupChannel, Incoming)>,
    retry_at: tokio::time::Instant,
    retry_backoff: std::time::Duration,
    /// Since when the state file cannot be written (None: it can).
    save_fault: Option<std::time::Instant>,
    /// The audit log of what it received and sent (metadata only).
    audit: Option<crate::audit::NodeAudit>,
    /// Who may order what (empty: no policy).
    access: sealcast_group::acp::AccessPolicy,
    /// Whether signers' access tokens can permit what the policy does not.
    accept_access_tokens: bool,
    /// The token this node holds and carries in what it signs.
    token: crate::token_store::TokenStore,
    /// Signers' tokens already verified (each verified once per renewal).
    token_cache: sealcast_group::token::TokenCache,
    refused_tokens: crate::runtime::WarnLimiter,
    refused_by_policy: crate::runtime::WarnLimiter,
    /// The status repository, the rate cap and the misbehaviour evidence.
    watch: watch::Watch,
    refused_listed: crate::runtime::WarnLimiter,
    /// Queued broadcasts of one group opened as one burst: at most this many.
    max_burst: usize,
}

/// Queued broadcasts of one group opened as one burst: at most this many.
pub const BURST_MAX: usize = 64;
/// Once a second message of a group was found queued (the node is under
/// load), a burst waits at most this long for more before it is opened. A
/// message that finds the queue empty is opened at once.
pub const BURST_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// At most this many messages are held while the state file cannot be
/// written; more stay with the broker (unacknowledged) until the next
/// session. Brokers stop sending long before: Mosquitto after 20
/// unacknowledged messages by default.
pub const MAX_HELD: usize = 256;
/// The first retry of held messages comes this long after the fault …
pub const HELD_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// … and the interval doubles up to this.
pub const HELD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a node waits for the broker to confirm its subscription to a
/// group whose key it has just installed, before the acknowledgement.
pub const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a node checks whether its access token needs renewing.
pub const TOKEN_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// At most one pull per this interval asks the manager for a token.
pub const TOKEN_ASK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A transmission order issued further than this from the node's clock is
/// refused (the manager signs every re-send afresh, so only a replayed copy
/// or clocks far apart get here).
pub const ORDER_MAX_AGE_MS: u64 = 10 * 60 * 1000;

/// A group channel's name in audit records.
fn channel_name(channel: GroupChannel) -> &'static str {
    match channel {
        GroupChannel::Alert => "alert",
        GroupChannel::Command => "command",
        GroupChannel::Notice => "join notice",
        GroupChannel::Rekey => "tree rekey",
    }
}

/// The short name of why a transmission order was refused (a metrics
/// label): `forged`, `other-node`, `stale`, `replay`, `conflict` or
/// `malformed`.
fn order_refusal(e: &sealcast_group::Error) -> &'static str {
    use sealcast_group::Error as G;
    match e {
        G::WrongManager | G::Core(sealcast_core::Error::BadSignature) => "forged",
        G::Refused(why) if why.contains("another node") => "other-node",
        G::Refused(why) if why.contains("clock") => "stale",
        G::Refused(why) if why.contains("older") => "replay",
        G::Refused(_) => "conflict",
        _ => "malformed",
    }
}

/// The shortest interval between two pulls of one group that unauthenticated
/// input triggers.
pub const PULL_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a node waits for another process to release its state file
/// (a `device run` that is stopping, a one-shot `device send`) before it
/// refuses to start.
pub const STATE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects a field node and starts it on the current tokio runtime.
/// Returns once its subscriptions are in place.
pub async fn spawn(config: NodeConfig) -> Result<NodeHandle> {
    let id = config.credential.id().clone();
    let manager_id = config.manager.id().clone();
    let manager_credential = config.manager.clone();
    let mut member = Member::new(config.credential, config.manager);
    let mut receivers = BTreeMap::new();
    let mut senders = BTreeMap::new();
    let mut transmission = TransmissionControl::new();
    let state_lock = match &config.state_file {
        Some(file) => {
            let lock = file.lock(STATE_LOCK_WAIT)?;
            restore_state(
                file,
                &config.replay,
                &mut member,
                &mut receivers,
                &mut senders,
                &mut transmission,
            )?;
            Some(lock)
        }
        None => None,
    };
    // Under the state file's lock too: the status list kept beside it.
    let watch = watch::Watch::open(config.misbehaviour, config.state_file.as_ref(), &manager_id)?;
    if let Some(held) = watch.status.held().filter(|l| !l.listed.is_empty()) {
        info!(node = %id, version = held.version, listed = held.listed.len(), "the manager's status list (kept across the restart): messages of listed entities are refused");
    }
    if let Some(order) = transmission.held().filter(|o| !o.stopped.is_empty()) {
        info!(node = %id, version = order.version, stopped = %describe_stopped(&order.stopped), "transmission stopped by the manager's order (kept across the restart)");
    }
    let token =
        crate::token_store::TokenStore::open(config.state_file.as_ref(), &manager_credential, &id)?;
    if let Some(t) = token.held() {
        info!(node = %id, scope = %t.describe(), expires = t.expires, "access token kept across the restart");
    }
    // Opened under the state file's lock: one writer per log.
    let audit = config
        .audit
        .as_ref()
        .map(crate::audit::NodeAudit::open)
        .transpose()?;
    // Its own channels, those of the devices it relays for, and the group
    // channels of every group it holds key material of; a group whose key
    // arrives later is added then (`Node::listen_to`).
    let mut filters = vec![config.topics.device_filter(&id)];
    filters.extend(
        config
            .relays_for
            .iter()
            .map(|d| config.topics.device_filter(d)),
    );
    for g in receivers.keys() {
        filters.extend(crate::link::group_filters(
            &config.topics,
            g,
            config.send_only.contains(g),
        ));
    }
    let interest = Interest {
        filters,
        multicast: true,
        ..Interest::default()
    };
    let (link, inbox) = Link::connect(&id, &config.link, config.topics.clone(), interest).await?;
    // A persistent session keeps what an earlier process subscribed to:
    // the wildcards over every group's channels that nodes used before
    // they subscribed per group, and every channel of a group this node
    // now only sends to.
    let mut stale: Vec<TopicFilter> = [
        GroupChannel::Command,
        GroupChannel::Alert,
        GroupChannel::Notice,
        GroupChannel::Rekey,
    ]
    .map(|c| config.topics.all_groups_filter(c))
    .into();
    stale.extend(
        config
            .send_only
            .iter()
            .map(|g| config.topics.group_filter(g)),
    );
    link.forget_filters(&stale)?;
    let (tx, rx) = mpsc::channel(64);
    let node = Node {
        id: id.clone(),
        member,
        receivers,
        senders,
        broadcasters: BTreeMap::new(),
        manager: manager_id,
        manager_credential,
        transmission,
        link,
        topics: config.topics,
        rules: config.rules,
        relays_for: config.relays_for,
        send_only: config.send_only,
        handler: config.handler,
        events: config.events,
        pulls: 0,
        state_file: config.state_file,
        _state_lock: state_lock,
        no_key_warning: config.no_key_warning,
        refused_deliveries: crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
        last_pull: BTreeMap::new(),
        pulls_coalesced: 0,
        replay: config.replay,
        started: now(),
        held: std::collections::VecDeque::new(),
        retry_at: tokio::time::Instant::now(),
        retry_backoff: HELD_RETRY_FIRST,
        save_fault: None,
        audit,
        access: config.access,
        accept_access_tokens: config.accept_access_tokens,
        token,
        token_cache: sealcast_group::token::TokenCache::new(),
        refused_tokens: crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
        refused_by_policy: crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
        watch,
        refused_listed: crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
        max_burst: config.max_burst.max(1),
    };
    tokio::spawn(node.run(inbox, rx));
    Ok(NodeHandle { id, requests: tx })
}

impl Node {
    async fn run(mut self, mut inbox: Inbox, mut requests: mpsc::Receiver<Request>) {
        let no_key_after = self.no_key_warning.unwrap_or(std::time::Duration::MAX);
        let no_key_timer =
            tokio::time::sleep(no_key_after.min(std::time::Duration::from_secs(86_400 * 365)));
        tokio::pin!(no_key_timer);
        let mut no_key_armed = self.no_key_warning.is_some();
        let mut audit_tick = tokio::time::interval(crate::audit::REFUSED_RECORD_EVERY);
        audit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report_tick = tokio::time::interval(self.watch.report_interval());
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut token_tick = tokio::time::interval(TOKEN_CHECK_EVERY);
        token_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut token_asked: Option<std::time::Instant> = None;
        let stopped = loop {
            tokio::select! {
                _ = token_tick.tick(), if self.token.held().is_some() => {
                    self.obtain_token(&mut token_asked).await;
                }
                _ = report_tick.tick(), if self.watch.reports() => {
                    self.send_report().await;
                }
                _ = audit_tick.tick(), if self.audit.is_some() => {
                    if let Some(a) = &mut self.audit {
                        a.tick();
                    }
                }
                () = &mut no_key_timer, if no_key_armed => {
                    no_key_armed = false;
                    if self.receivers.is_empty() {
                        warn!(
                            node = %self.id,
                            after_s = no_key_after.as_secs(),
                            "no key material received yet; check that the broker (or CoAP endpoints) and topic_prefix are the manager's, that manager_public_key is the manager's public key, and that this entity is enrolled and a member of a group (sealcast group show --group …)"
                        );
                    }
                }
                () = tokio::time::sleep_until(self.retry_at), if !self.held.is_empty() => {
                    self.retry_held().await;
                }
                msg = inbox.next_message() => match msg {
                    Some(m) => self.on_incoming(m, &mut inbox).await,
                    None => break None,
                },
                req = requests.recv() => match req {
                    Some(Request::Stop { reply }) => break Some(reply),
                    Some(r) => self.on_request(r).await,
                    None => break None,
                },
            }
        };
        self.link.close(std::time::Duration::from_secs(2)).await;
        self.release_unused_numbers();
        if let Some(a) = &mut self.audit {
            a.flush_refused();
        }
        debug!(node = %self.id, "node stopped");
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    /// On a clean stop: writes each sender reservation down to the next
    /// unused number, so the next process (a one-shot `device send`)
    /// continues right after the last number used instead of skipping the
    /// rest of the block. Safe because this node still holds the state
    /// file's lock and sends nothing more; after a crash the larger
    /// reservation on disk stays, which is safe too.
    fn release_unused_numbers(&mut self) {
        if self.state_file.is_none() {
            return;
        }
        let mut released = BTreeMap::new();
        for (key, alloc) in &self.senders {
            let next = alloc
                .peek_next()
                .map_or(alloc.reserved_limit(), SeqNum::get);
            match SeqAllocator::resume(next, SEQ_BLOCK) {
                Ok(a) => {
                    released.insert(key.clone(), a);
                }
                Err(_) => return,
            }
        }
        let before = std::mem::replace(&mut self.senders, released);
        if let Err(e) = self.persist() {
            self.senders = before;
            debug!(node = %self.id, error = %e, "unused sequence numbers not released");
        }
    }

    /// Writes the node's state file (if it has one).
    fn persist(&self) -> Result<()> {
        match &self.state_file {
            Some(file) => save_state(
                file,
                &self.member,
                &self.receivers,
                &self.senders,
                self.transmission.held(),
            ),
            None => Ok(()),
        }
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Stop { reply } => {
                let _ = reply.send(());
            }
            Request::Send {
                group,
                channel,
                payload,
                reply,
            } => {
                let r = self.seal_and_publish(&group, channel, &payload).await;
                let _ = reply.send(r);
            }
            Request::Material { group, reply } => {
                let _ = reply.send(self.member.material(&group).cloned());
            }
            Request::Pull { group, reply } => {
                self.pulls += 1;
                match self.member.pull_request(&group, self.pulls) {
                    Ok(pull) => self.send_upstream(DeviceChannel::Pull, pull).await,
                    Err(e) => {
                        warn!(node = %self.id, group = %group.name(), error = %e, "pull not signed")
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    async fn seal_and_publish(
        &mut self,
        group: &GroupId,
        channel: GroupChannel,
        payload: &[u8],
    ) -> Result<(Vec<u8>, u64)> {
        let kind = match channel {
            GroupChannel::Alert => Some(TxKind::Alert),
            GroupChannel::Command => Some(TxKind::Command),
            _ => None,
        };
        if let Some(kind) = kind
            && !self.transmission.allows(kind, Some(group))
        {
            let version = self.transmission.held().map_or(0, |o| o.version);
            return Err(Error::Stopped(format!(
                "sending {}s to group {} is stopped by the manager's transmission order (version {version}); nothing was sent — the operator resumes it with `sealcast node activate`",
                kind.as_str(),
                group.name()
            )));
        }
        let material = self
            .member
            .material(group)
            .ok_or(Error::Group(sealcast_group::Error::UnknownGroup))?;
        // Key material never changes within an epoch (every membership
        // change is a new one), so the context is derived again only when
        // the epoch moves.
        if self
            .broadcasters
            .get(group)
            .is_none_or(|b| b.epoch() != material.epoch())
        {
            let credential = self.member.credential();
            let sender = BroadcastSender::new(material, credential.id(), credential.signing_key())?;
            self.broadcasters.insert(group.clone(), sender);
        }
        let epoch = material.epoch().get();
        // A fresh allocator per epoch: new keys, so numbers start over. With a
        // state file, each new reservation is written before it is used;
        // without one (the demos) it lives in memory only.
        let alloc = self
            .senders
            .entry((group.clone(), epoch))
            .or_insert(SeqAllocator::new(64)?);
        if let Some(limit) = alloc.reservation_request() {
            alloc.confirm_reservation(limit)?;
            // The reservation is on disk before any number of it is used.
            self.persist()?;
        }
        let seq: SeqNum = self
            .senders
            .get_mut(&(group.clone(), epoch))
            .ok_or_else(|| Error::Runtime("sequence allocator vanished".into()))?
            .next()?;
        let topic = self.topics.group(group, channel);
        let at = now();
        let bytes = self
            .broadcasters
            .get(group)
            .ok_or_else(|| Error::Runtime("broadcast sender vanished".into()))?
            .seal_with_token(
                seq,
                at,
                &topic,
                payload,
                self.token.for_group(group, at.get() / 1000),
            )?;
        self.link
            .publish_group(group, channel, bytes.clone())
            .await?;
        if let Some(a) = &mut self.audit {
            a.record(
                Record::Sent,
                Some(group),
                None,
                format!(
                    "{} seq={} ({} bytes)",
                    channel_name(channel),
                    seq.get(),
                    bytes.len()
                ),
            );
        }
        Ok((bytes, seq.get()))
    }

    async fn on_message(&mut self, incoming: Incoming) {
        let parsed = self.topics.parse(&incoming.target);
        match parsed {
            Ok(Topic::Device {
                device,
                channel: DeviceChannel::Delivery,
            }) => {
                self.on_delivery(&device, incoming).await;
            }
            Ok(Topic::Group {
                group,
                channel: GroupChannel::Notice,
            }) => {
                self.on_group_key_message(&group, MessageKind::JoinNotice, incoming)
                    .await;
            }
            Ok(Topic::Group {
                group,
                channel: GroupChannel::Rekey,
            }) => {
                self.on_group_key_message(&group, MessageKind::TreeRekey, incoming)
                    .await;
            }
            // A group it only sends to (CoAP multicast and oneM2M still
            // bring their traffic): not opened.
            Ok(Topic::Group { group, .. }) if self.send_only.contains(&group) => {
                debug!(node = %self.id, group = %group.name(), "command or alert of a group this node only sends to: not opened");
                let _ = incoming.ack.ack().await;
            }
            Ok(Topic::Group { group, channel }) => {
                self.on_broadcast(group, channel, incoming).await
            }
            // Our own acks and pulls echo back through the device filter.
            Ok(_) => {
                let _ = incoming.ack.ack().await;
            }
            Err(e) => {
                warn!(node = %self.id, target = %incoming.target, error = %e, "message on an unknown target dropped");
                let _ = incoming.ack.ack().await;
            }
        }
    }

    async fn on_delivery(&mut self, device: &EntityId, incoming: Incoming) {
        if *device != self.id {
            // A gateway relays deliveries for its devices: prove it can't read them.
            let readable = self
                .member
                .handle_delivery(MessageKind::KeyDelivery, &incoming.payload)
                .is_ok()
                || self
                    .member
                    .handle_delivery(MessageKind::TreeDelivery, &incoming.payload)
                    .is_ok();
            if !readable {
                report(
                    &self.events,
                    &self.id,
                    EventKind::CannotOpenDelivery {
                        recipient: device.clone(),
                    },
                );
            }
            if self.relays_for.contains(device) {
                match self
                    .link
                    .relay(device, incoming.target.clone(), incoming.payload.clone())
                    .await
                {
                    Ok(()) => {
                        if let Some(a) = &mut self.audit {
                            a.record(
                                Record::Relayed,
                                None,
                                Some(device),
                                format!("delivery of {} bytes, unread", incoming.payload.len()),
                            );
                        }
                    }
                    Err(e) => {
                        warn!(node = %self.id, %device, error = %e, "delivery not relayed; the manager re-sends it")
                    }
                }
            }
            let _ = incoming.ack.ack().await;
            return;
        }
        // A transmission order (a signed statement) rather than a key
        // delivery (which carries a group header).
        if sealcast_core::delivery::peek_key_delivery(&incoming.payload).is_err()
            && sealcast_core::statement::UnverifiedStatement::parse(
                &incoming.payload,
                sealcast_group::status::MAX_STATUS_LEN,
            )
            .is_ok()
        {
            if sealcast_group::status::StatusList::looks_like(&incoming.payload) {
                self.on_status_list(&incoming.payload);
            } else if sealcast_group::token::AccessToken::looks_like(&incoming.payload) {
                self.on_access_token(&incoming.payload);
            } else {
                self.on_transmission_order(&incoming.payload).await;
            }
            let _ = incoming.ack.ack().await;
            return;
        }
        let result = match self
            .member
            .handle_delivery(MessageKind::KeyDelivery, &incoming.payload)
        {
            Ok(ev) => Ok(ev),
            Err(_) => self
                .member
                .handle_delivery(MessageKind::TreeDelivery, &incoming.payload),
        };
        if let Err(e) = &result
            && !matches!(e, sealcast_group::Error::OutOfSync(_))
            && let Some(held_back) = self.refused_deliveries.allow()
        {
            warn!(node = %self.id, error = %e, held_back, "key delivery refused (forged, replayed, stale or not for this entity); if it keeps happening, check that manager_public_key is the manager's public key");
        }
        self.after_key_event(result, None).await;
        let _ = incoming.ack.ack().await;
    }

    /// A transmission order from the manager: verified (signer, node,
    /// freshness), refused if older than the one held, persisted before it
    /// takes effect, then acknowledged (the held one is acknowledged again).
    async fn on_transmission_order(&mut self, bytes: &[u8]) {
        let checked = TransmissionOrder::open(
            bytes,
            &self.manager_credential,
            &self.id,
            now(),
            ORDER_MAX_AGE_MS,
        )
        .and_then(|order| Ok((self.transmission.check(&order)?, order.version)));
        let (applied, version) = match checked {
            Ok(x) => x,
            Err(e) => {
                if let Some(held_back) = self.refused_deliveries.allow() {
                    warn!(node = %self.id, error = %e, held_back, "transmission order refused (forged, replayed, stale or for another node)");
                }
                report(
                    &self.events,
                    &self.id,
                    EventKind::OrderRefused {
                        reason: order_refusal(&e),
                    },
                );
                if let Some(a) = &mut self.audit {
                    a.refused(None, format!("transmission order: {}", order_refusal(&e)));
                }
                return;
            }
        };
        if let Applied::Changed(order) = applied {
            let mut next = self.transmission.clone();
            next.commit(order.clone());
            let before = std::mem::replace(&mut self.transmission, next);
            if let Err(e) = self.persist() {
                self.transmission = before;
                warn!(node = %self.id, error = %e, "state file not written: transmission order not applied and not acknowledged (the manager re-sends it)");
                return;
            }
            info!(node = %self.id, version, stopped = %describe_stopped(&order.stopped), "transmission order applied");
            if let Some(a) = &mut self.audit {
                a.record(
                    Record::Order,
                    None,
                    Some(&self.manager),
                    format!(
                        "transmission order version {version} applied: stop {}",
                        describe_stopped(&order.stopped)
                    ),
                );
            }
            report(
                &self.events,
                &self.id,
                EventKind::OrderApplied {
                    version,
                    stopped: describe_stopped(&order.stopped),
                },
            );
        }
        let ack = OrderAck {
            node: self.id.clone(),
            manager: self.manager.clone(),
            version,
        }
        .sign(self.member.credential());
        match ack {
            Ok(ack) => self.send_upstream(DeviceChannel::Ack, ack).await,
            Err(e) => warn!(node = %self.id, error = %e, "transmission ack not signed"),
        }
    }

    /// "Obtain/update access control tokens": a node whose token is past
    /// half its lifetime (the manager renews it then, but the push may have
    /// been lost while the node was away) asks the manager with a pull of
    /// one of its groups — the manager answers every verified pull with the
    /// node's current token — at most once per [`TOKEN_ASK_EVERY`], until
    /// the token has been expired for a whole lifetime.
    async fn obtain_token(&mut self, asked: &mut Option<std::time::Instant>) {
        let Some(t) = self.token.held() else {
            return;
        };
        let now_s = now().get() / 1000;
        let lifetime = t.expires.saturating_sub(t.issued_at);
        let half = t.issued_at + lifetime / 2;
        // Expired for a whole lifetime more: the grant was most likely
        // withdrawn; the manager's renewals (pushed) still reach the node.
        let given_up = now_s > t.expires.saturating_add(lifetime);
        if now_s < half || given_up || asked.is_some_and(|at| at.elapsed() < TOKEN_ASK_EVERY) {
            return;
        }
        let Some(group) = self.receivers.keys().next().cloned() else {
            return;
        };
        let first = asked.is_none();
        *asked = Some(std::time::Instant::now());
        if first {
            info!(node = %self.id, expires = t.expires, expired = now_s >= t.expires, "access token past half its lifetime and not renewed: asking the manager (again every 30 s while it is not)");
        } else {
            debug!(node = %self.id, expires = t.expires, "asking the manager for an access token again");
        }
        self.pulls += 1;
        match self.member.pull_request(&group, self.pulls) {
            Ok(pull) => self.send_upstream(DeviceChannel::Pull, pull).await,
            Err(e) => debug!(node = %self.id, error = %e, "token pull not signed"),
        }
    }

    /// An access token from the manager: verified (signer, holder), refused
    /// if expired or older than the one held, saved before it is used.
    fn on_access_token(&mut self, bytes: &[u8]) {
        let at_s = now().get() / 1000;
        match self
            .token
            .apply(bytes, &self.manager_credential, &self.id, at_s)
        {
            Ok(crate::token_store::TokenApplied::Changed) => {
                if let Some(t) = self.token.held() {
                    let id = crate::control::hex(&t.id);
                    info!(node = %self.id, token = %id, scope = %t.describe(), valid_for_s = t.expires.saturating_sub(at_s), "access token received from the manager");
                    if let Some(a) = &mut self.audit {
                        a.record(
                            Record::Order,
                            None,
                            Some(&self.manager),
                            format!(
                                "access token {id} held: {}, valid until {}",
                                t.describe(),
                                t.expires
                            ),
                        );
                    }
                }
            }
            Ok(crate::token_store::TokenApplied::Same) => {}
            Err(e) => {
                if let Some(held_back) = self.refused_tokens.allow() {
                    warn!(node = %self.id, error = %e, held_back, "access token refused (forged, for another node, older than the one held, expired or not saved)");
                }
                if let Some(a) = &mut self.audit {
                    a.refused(None, e.to_string());
                }
            }
        }
    }

    /// The manager's status list: verified (signer, freshness), refused if
    /// older than the one held, persisted before it takes effect.
    fn on_status_list(&mut self, bytes: &[u8]) {
        let at = now();
        let applied = sealcast_group::status::StatusList::open(
            bytes,
            &self.manager_credential,
            at,
            crate::manager::STATUS_MAX_AGE_MS,
        )
        .map_err(|e| e.to_string())
        .and_then(|list| {
            let (version, listed) = (list.version, list.listed.len());
            self.watch
                .status
                .apply(list)
                .map(|changed| (changed, version, listed))
                .map_err(|e| e.to_string())
        });
        match applied {
            Ok((true, version, listed)) => {
                info!(node = %self.id, version, listed, "status list applied: messages of listed entities are refused");
                if let Some(a) = &mut self.audit {
                    a.record(
                        Record::Order,
                        None,
                        Some(&self.manager),
                        format!("status list version {version} applied: {listed} listed"),
                    );
                }
            }
            Ok((false, _, _)) => {}
            Err(e) => {
                if let Some(held_back) = self.refused_deliveries.allow() {
                    warn!(node = %self.id, error = %e, held_back, "status list refused (forged, older than the one held, stale, or not saved)");
                }
                if let Some(a) = &mut self.audit {
                    a.refused(None, "status list".to_owned());
                }
            }
        }
    }

    /// Sends the evidence gathered since the last report (an agent).
    async fn send_report(&mut self) {
        let Some((bytes, items, dropped)) =
            self.watch
                .due_report(self.member.credential(), &self.manager, now())
        else {
            return;
        };
        let target = self.topics.device(&self.id, DeviceChannel::Ack);
        let n = items.len();
        match self.link.send_to(&self.manager, target, bytes).await {
            Ok(()) => {
                info!(node = %self.id, items = n, dropped, "misbehaviour report sent to the manager");
                if let Some(a) = &mut self.audit {
                    a.record(
                        Record::Sent,
                        None,
                        Some(&self.manager),
                        format!(
                            "misbehaviour report: {}",
                            sealcast_group::status::describe_items(&items)
                        ),
                    );
                }
            }
            Err(e) => {
                warn!(node = %self.id, error = %e, "misbehaviour report not sent; its evidence goes with the next one");
                self.watch.put_back(items);
            }
        }
    }

    /// Audits and reports a genuine message refused before it took effect
    /// (its signer listed or over the rate cap, or an access-control policy
    /// refused its operation).
    fn refused_genuine(
        &mut self,
        group: &GroupId,
        channel: GroupChannel,
        signer: &EntityId,
        seq: u64,
        why: String,
    ) {
        if let Some(a) = &mut self.audit {
            a.refused(
                Some(group),
                format!("{} seq={seq} from {signer}: {why}", channel_name(channel)),
            );
        }
        report(
            &self.events,
            &self.id,
            EventKind::Rejected {
                group: group.clone(),
                reason: why,
            },
        );
    }

    /// Why a verified message of `signer` is refused before it takes
    /// effect: its signer is on the status list, or over the rate cap.
    fn watch_refuses(&mut self, signer: &EntityId, at: UnixMillis) -> Option<String> {
        if let Some(status) = self.watch.status.status_of(signer) {
            self.watch
                .saw(signer, sealcast_group::status::Evidence::ListedSigner, at);
            return Some(format!("{signer} is {status} by the manager"));
        }
        // Its own messages coming back (a gateway in its door group) are
        // not counted.
        if *signer != self.id && self.watch.over_rate(signer) {
            self.watch
                .saw(signer, sealcast_group::status::Evidence::Flood, at);
            return Some(format!("{signer} is over the rate cap"));
        }
        None
    }

    async fn on_group_key_message(
        &mut self,
        group: &GroupId,
        kind: MessageKind,
        incoming: Incoming,
    ) {
        if self.member.material(group).is_none() {
            let _ = incoming.ack.ack().await;
            return;
        }
        let result = match kind {
            MessageKind::JoinNotice => self.member.handle_join_notice(&incoming.payload),
            _ => self.member.handle_tree_rekey(&incoming.payload),
        };
        self.after_key_event(result, Some(group)).await;
        let _ = incoming.ack.ack().await;
    }

    async fn after_key_event(
        &mut self,
        result: sealcast_group::Result<MemberEvent>,
        group: Option<&GroupId>,
    ) {
        match result {
            Ok(MemberEvent::Installed { group, epoch, ack }) => {
                if let Some(Ok(ctx)) = self.member.context(&group) {
                    let installed = match self.receivers.get_mut(&group) {
                        Some(r) => r.install(ctx).is_ok(),
                        None => BroadcastReceiver::new(ctx, self.replay.for_group(&group))
                            .map(|r| {
                                self.receivers.insert(group.clone(), r);
                            })
                            .is_ok(),
                    };
                    if let Err(e) = self.persist() {
                        warn!(node = %self.id, error = %e, "state file not written; not acknowledging");
                        return;
                    }
                    if installed {
                        info!(node = %self.id, group = %group.name(), %epoch, "key material installed");
                        if let Some(a) = &mut self.audit {
                            a.record(
                                Record::Installed,
                                Some(&group),
                                Some(&self.manager),
                                format!("epoch {epoch}"),
                            );
                        }
                        report(
                            &self.events,
                            &self.id,
                            EventKind::Installed {
                                group: group.clone(),
                                epoch,
                            },
                        );
                    }
                    // Installed (and recorded as such) either way; only the
                    // acknowledgement waits for the subscription.
                    if !self.listen_to(&group).await {
                        return;
                    }
                }
                self.publish_ack(ack).await;
            }
            Ok(MemberEvent::AlreadyCurrent { group, epoch, ack }) => {
                if !self.listen_to(&group).await {
                    return;
                }
                report(&self.events, &self.id, EventKind::Current { group, epoch });
                self.publish_ack(ack).await;
            }
            Err(sealcast_group::Error::OutOfSync(_)) => {
                if let Some(g) = group {
                    self.pull_coalesced(g).await;
                }
            }
            // Evicted, or not for us: nothing to install.
            Err(e) => debug!(node = %self.id, error = %e, "key message not installed"),
        }
    }

    /// Makes sure the link receives `group`'s channels before the node
    /// acknowledges its key: false (logged) if the broker did not confirm
    /// the subscription in time. The key is then kept but not acknowledged;
    /// the manager re-sends it, and the link subscribes again on its next
    /// connection.
    async fn listen_to(&mut self, group: &GroupId) -> bool {
        let keys_only = self.send_only.contains(group);
        match self
            .link
            .listen_to_group(group, keys_only, LISTEN_WAIT)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(node = %self.id, group = %group.name(), error = %e, "cannot subscribe to the group's channels yet; the key is kept but not acknowledged (the manager re-sends it)");
                false
            }
        }
    }

    /// A pull for `group`, unless one went out less than
    /// [`PULL_MIN_INTERVAL`] ago. What triggers it — a header naming a newer
    /// epoch, a gap in the rekeys — is not authenticated, so a flood of such
    /// messages must not become a flood of signed pulls to the manager from
    /// every member: however many arrive, one pull per interval per group.
    /// (The manager also re-sends unacknowledged material by itself.)
    async fn pull_coalesced(&mut self, group: &GroupId) {
        let now = std::time::Instant::now();
        if self
            .last_pull
            .get(group)
            .is_some_and(|t| now.duration_since(*t) < PULL_MIN_INTERVAL)
        {
            self.pulls_coalesced += 1;
            debug!(node = %self.id, group = %group.name(), coalesced = self.pulls_coalesced, "pull coalesced with the one just sent");
            return;
        }
        self.last_pull.insert(group.clone(), now);
        self.pulls += 1;
        if let Ok(pull) = self.member.pull_request(group, self.pulls) {
            self.send_upstream(DeviceChannel::Pull, pull).await;
        }
    }

    async fn publish_ack(&mut self, ack: Vec<u8>) {
        self.send_upstream(DeviceChannel::Ack, ack).await;
    }

    /// An ack or a pull to the manager: on this node's own device target
    /// (MQTT topic / CoAP Uri-Path), to the manager's endpoint on CoAP.
    async fn send_upstream(&mut self, channel: DeviceChannel, bytes: Vec<u8>) {
        let target = self.topics.device(&self.id, channel);
        if let Err(e) = self.link.send_to(&self.manager, target, bytes).await {
            warn!(node = %self.id, ?channel, error = %e, "not sent; the manager re-sends until it has the ack");
        }
    }

    /// One message from the inbox and what queued up behind it while the
    /// node was busy: broadcasts of one group waiting in the queue are
    /// opened as one burst (one batch signature verification, see
    /// [`BroadcastReceiver::open_burst`]), with the acceptance and the order
    /// of opening them one by one. A message that finds the queue empty is
    /// opened alone, at once; under load (a second one already queued) the
    /// burst takes what arrives within [`BURST_WAIT`], at most `max_burst`
    /// ([`BURST_MAX`] by default). A command or alert of a group it holds no
    /// key of is acknowledged on the way (it changes nothing); the first
    /// other queued message that does not join the burst (another group's,
    /// a delivery, a notice) is handled right after it, so whatever changes
    /// state keeps the order it arrived in.
    async fn on_incoming(&mut self, first: Incoming, inbox: &mut Inbox) {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let Some((group, channel)) = self.burstable(&m) else {
                self.on_message(m).await;
                continue;
            };
            let mut burst = vec![(channel, m)];
            // Under load (something queued behind the first message), the
            // burst may wait up to BURST_WAIT for more to arrive; an idle
            // queue adds no wait.
            let mut wait_until = None;
            while burst.len() < self.max_burst {
                let m = match inbox.try_next_message() {
                    Some(m) => m,
                    None if burst.len() < 2 => break,
                    None => {
                        let until = *wait_until
                            .get_or_insert_with(|| tokio::time::Instant::now() + BURST_WAIT);
                        match tokio::time::timeout_at(until, inbox.next_message()).await {
                            Ok(Some(m)) => m,
                            // The wait is over, or the link closed (the run
                            // loop sees that on its next read).
                            Ok(None) | Err(_) => break,
                        }
                    }
                };
                match self.burstable(&m) {
                    Some((g, c)) if g == group => burst.push((c, m)),
                    // A command or alert of a group this node holds no key
                    // of changes nothing and is only acknowledged: taken
                    // at once, it does not end the burst (a device hears
                    // every group's traffic interleaved with its own).
                    None if self.not_member(&m) => self.on_message(m).await,
                    _ => {
                        next = Some(m);
                        break;
                    }
                }
            }
            if burst.len() == 1 {
                for (channel, m) in burst {
                    self.on_broadcast(group.clone(), channel, m).await;
                }
            } else {
                self.on_broadcast_burst(group, burst).await;
            }
        }
    }

    /// The group of a command or alert this node can open and may open in a
    /// burst: a group it holds a key of, and no originator for the
    /// transport to vouch for (oneM2M's check of the originator against
    /// the verified signer goes message by message).
    fn burstable(&self, m: &Incoming) -> Option<(GroupId, GroupChannel)> {
        if m.origin.is_some() {
            return None;
        }
        match self.topics.parse(&m.target) {
            Ok(Topic::Group {
                group,
                channel: channel @ (GroupChannel::Command | GroupChannel::Alert),
            }) if self.receivers.contains_key(&group) && !self.send_only.contains(&group) => {
                Some((group, channel))
            }
            _ => None,
        }
    }

    /// A command or alert of a group this node holds no key of, or only
    /// sends to: acknowledged, nothing else.
    fn not_member(&self, m: &Incoming) -> bool {
        matches!(
            self.topics.parse(&m.target),
            Ok(Topic::Group {
                group,
                channel: GroupChannel::Command | GroupChannel::Alert,
            }) if !self.receivers.contains_key(&group) || self.send_only.contains(&group)
        )
    }

    /// A timestamp-policy group keeps its digests in memory only: right
    /// after a start, anything stamped before start + skew may have been
    /// accepted before the restart, so it is refused.
    fn not_before(&self, group: &GroupId) -> Option<u64> {
        match self.replay.for_group(group) {
            ReplayPolicy::Timestamp { skew_ms, .. } => {
                Some(self.started.get().saturating_add(skew_ms))
            }
            _ => None,
        }
    }

    /// Opens queued broadcasts of `group` as one burst: each is parsed,
    /// pre-checked and decrypted alone, their signatures verified in one
    /// batch, the survivors committed in order; the committed windows reach
    /// the state file once, before any of them is acknowledged (if they
    /// cannot, every window of the burst is put back and its messages are
    /// held, as one message's would be). Then each message goes through
    /// [`Self::after_open`] in order, exactly as if opened alone.
    async fn on_broadcast_burst(&mut self, group: GroupId, burst: Vec<(GroupChannel, Incoming)>) {
        let Some(mut receiver) = self.receivers.remove(&group) else {
            for (channel, m) in burst {
                self.on_broadcast(group.clone(), channel, m).await;
            }
            return;
        };
        let at = now();
        let not_before = self.not_before(&group);
        let claimed: Vec<Option<EntityId>> = burst
            .iter()
            .map(|(_, m)| {
                sealcast_core::broadcast::peek_broadcast(&m.payload)
                    .ok()
                    .and_then(|h| receiver.context().entity_of(&h.sender_id).cloned())
            })
            .collect();
        let mut verdicts: Vec<Option<std::result::Result<OpenedBroadcast, OpenError>>> =
            Vec::with_capacity(burst.len());
        let mut items: Vec<(&[u8], &str)> = Vec::with_capacity(burst.len());
        let mut index = Vec::with_capacity(burst.len());
        for (i, (_, m)) in burst.iter().enumerate() {
            let stale = match not_before {
                Some(limit) => match sealcast_core::broadcast::peek_broadcast(&m.payload) {
                    Ok(h) if h.timestamp.get() < limit => {
                        Some(OpenError::Refused(sealcast_core::Error::StaleTimestamp))
                    }
                    Ok(_) => None,
                    Err(e) => Some(e.into()),
                },
                None => None,
            };
            match stale {
                Some(e) => verdicts.push(Some(Err(e))),
                None => {
                    verdicts.push(None);
                    items.push((&m.payload[..], m.target.as_str()));
                    index.push(i);
                }
            }
        }
        let undo: Vec<ReplayUndo> = match &self.state_file {
            Some(_) => items.iter().map(|(b, _)| receiver.undo_point(b)).collect(),
            None => Vec::new(),
        };
        let opened = receiver.open_burst(&items, at);
        let mut not_saved = None;
        if let Some(file) = &self.state_file
            && opened.iter().any(std::result::Result::is_ok)
        {
            let mut all: Vec<(&GroupId, &BroadcastReceiver)> = self.receivers.iter().collect();
            all.push((&group, &receiver));
            if let Err(e) = save_state_parts(
                file,
                &self.member,
                &all,
                &self.senders,
                self.transmission.held(),
            ) {
                for u in undo.into_iter().rev() {
                    receiver.roll_back(u);
                }
                not_saved = Some(e.to_string());
            }
        }
        for (i, r) in index.into_iter().zip(opened) {
            if let Some(v) = verdicts.get_mut(i) {
                *v = Some(match (r, &not_saved) {
                    (Ok(_), Some(e)) => Err(OpenError::NotSaved(e.clone())),
                    (Ok(o), None) => Ok(o),
                    (Err(e), _) => Err(e.into()),
                });
            }
        }
        self.receivers.insert(group.clone(), receiver);
        let size = burst.len();
        debug!(node = %self.id, group = %group.name(), size, "queued broadcasts opened as one burst");
        report(
            &self.events,
            &self.id,
            EventKind::Burst {
                group: group.clone(),
                size,
            },
        );
        for (((channel, m), verdict), claimed) in burst.into_iter().zip(verdicts).zip(claimed) {
            let verdict =
                verdict.unwrap_or(Err(OpenError::Refused(sealcast_core::Error::BadSignature)));
            let delivery = deliver_once(m, |_, _| verdict).await;
            self.after_open(group.clone(), channel, claimed, at, delivery)
                .await;
        }
    }

    async fn on_broadcast(&mut self, group: GroupId, channel: GroupChannel, incoming: Incoming) {
        let Some(mut receiver) = self.receivers.remove(&group) else {
            report(&self.events, &self.id, EventKind::NotMember { group });
            let _ = incoming.ack.ack().await;
            return;
        };
        let at = now();
        let not_before = self.not_before(&group);
        let (member, receivers, senders, file, transmission) = (
            &self.member,
            &self.receivers,
            &self.senders,
            &self.state_file,
            self.transmission.held(),
        );
        let origin = incoming.origin.clone();
        // The sender the message claims (vouched for by the group key only,
        // until its signature verifies): named in forgery and replay evidence.
        let claimed = sealcast_core::broadcast::peek_broadcast(&incoming.payload)
            .ok()
            .and_then(|h| receiver.context().entity_of(&h.sender_id).cloned());
        let delivery = deliver_once(incoming, |target, bytes| {
            if let Some(limit) = not_before
                && sealcast_core::broadcast::peek_broadcast(bytes)?
                    .timestamp
                    .get()
                    < limit
            {
                return Err(OpenError::Refused(sealcast_core::Error::StaleTimestamp));
            }
            // The originator the transport vouches for (a oneM2M AE) must be
            // the entity behind the sender id, checked before any crypto or
            // replay state is touched …
            if let Some(origin) = &origin
                && let Ok(h) = sealcast_core::broadcast::peek_broadcast(bytes)
                && receiver
                    .context()
                    .entity_of(&h.sender_id)
                    .is_some_and(|e| e != origin)
            {
                return Err(OpenError::Refused(sealcast_core::Error::OriginatorMismatch));
            }
            let mut undo = (file.is_some() || origin.is_some()).then(|| receiver.undo_point(bytes));
            let opened = receiver.open(bytes, target, at)?;
            // … and the verified signer; if not, nothing of this open stays.
            if let Some(origin) = &origin
                && *origin != opened.signer
            {
                if let Some(undo) = undo.take() {
                    receiver.roll_back(undo);
                }
                return Err(OpenError::Refused(sealcast_core::Error::OriginatorMismatch));
            }
            // The committed window reaches the disk before the ack; if it
            // cannot, the window is put back and the message is held
            // unacknowledged, to be opened again once the disk recovers.
            if let (Some(file), Some(undo)) = (file, undo) {
                let mut all: Vec<(&GroupId, &BroadcastReceiver)> = receivers.iter().collect();
                all.push((&group, &receiver));
                if let Err(e) = save_state_parts(file, member, &all, senders, transmission) {
                    receiver.roll_back(undo);
                    return Err(OpenError::NotSaved(e.to_string()));
                }
            }
            Ok(opened)
        })
        .await;
        self.receivers.insert(group.clone(), receiver);
        self.after_open(group, channel, claimed, at, delivery).await;
    }

    /// What follows an open, for one message, whether it was opened alone or
    /// in a burst: the status list, the rate cap and the access policy on
    /// the verified signer, evidence, audit, execution, events, the rules;
    /// held when its result could not be saved.
    async fn after_open(
        &mut self,
        group: GroupId,
        channel: GroupChannel,
        claimed: Option<EntityId>,
        at: UnixMillis,
        delivery: Delivery<OpenedBroadcast>,
    ) {
        // The status list and the rate cap, on the verified signer: a
        // refused message stays in the window (it was genuine) and is not
        // executed, now or later.
        let delivery = match delivery {
            Delivery::Executed { value } => match self.watch_refuses(&value.signer, at) {
                None => Delivery::Executed { value },
                Some(why) => {
                    if let Some(held_back) = self.refused_listed.allow() {
                        warn!(node = %self.id, group = %group.name(), signer = %value.signer, seq = value.seq.get(), held_back, "refused: {why}; not executed");
                    }
                    self.refused_genuine(&group, channel, &value.signer, value.seq.get(), why);
                    return;
                }
            },
            other => other,
        };
        // Evidence against the claimed sender (not attributable to it).
        if let Some(claimed) = &claimed {
            match &delivery {
                Delivery::Duplicate { .. } => {
                    self.watch
                        .saw(claimed, sealcast_group::status::Evidence::Replay, at);
                }
                Delivery::Rejected {
                    reason: sealcast_core::Error::BadSignature,
                } => {
                    self.watch
                        .saw(claimed, sealcast_group::status::Evidence::Forgery, at);
                }
                _ => {}
            }
        }
        // The access-control policy, on what was verified: the signer, the
        // operation (a command's first word, or "alert"), the group and the
        // signed time. A refused message stays in the window (it was
        // genuine): it is not executed now, nor later.
        let delivery = match delivery {
            Delivery::Executed { value }
                if !self.access.is_empty() || self.accept_access_tokens =>
            {
                let operation = match channel {
                    GroupChannel::Alert => "alert".to_owned(),
                    _ => sealcast_group::acp::operation_of(&value.payload),
                };
                let decision = self.access.evaluate(&sealcast_group::acp::AccessRequest {
                    originator: &value.signer,
                    operation: &operation,
                    group: &group,
                    at: value.timestamp,
                });
                // What the rules do not permit, the signer's token may: a
                // token is one more permit (permit-overrides), valid at the
                // message's signed time and at this node's clock.
                let by_token = (!decision.permitted() && self.accept_access_tokens).then(|| {
                    self.token_cache.validate(
                        value.token.as_deref(),
                        &self.manager_credential,
                        &value.signer,
                        &operation,
                        &group,
                        &[value.timestamp.get() / 1000, at.get() / 1000],
                    )
                });
                if let Some(Ok(t)) = &by_token {
                    debug!(node = %self.id, group = %group.name(), signer = %value.signer, token = %crate::control::hex(&t.id), "permitted by the signer's access token");
                }
                if decision.permitted() || matches!(by_token, Some(Ok(_))) {
                    Delivery::Executed { value }
                } else {
                    let decision = match &by_token {
                        Some(Err(r)) => format!("{decision:?}; {}", r.as_str()),
                        _ => format!("{decision:?}"),
                    };
                    // The operation is command content: DEBUG only.
                    debug!(node = %self.id, group = %group.name(), signer = %value.signer, operation = %operation, "operation refused by the access-control policy");
                    self.watch
                        .saw(&value.signer, sealcast_group::status::Evidence::Policy, at);
                    if let Some(held_back) = self.refused_by_policy.allow() {
                        warn!(node = %self.id, group = %group.name(), signer = %value.signer, seq = value.seq.get(), %decision, held_back, "refused by the access-control policy: not executed");
                    }
                    self.refused_genuine(
                        &group,
                        channel,
                        &value.signer,
                        value.seq.get(),
                        format!("access-control policy: {decision}"),
                    );
                    return;
                }
            }
            other => other,
        };
        if let Some(a) = &mut self.audit {
            match &delivery {
                Delivery::Executed { value, .. } => a.record(
                    Record::Received,
                    Some(&group),
                    Some(&value.signer),
                    format!(
                        "{} seq={} verified{}",
                        channel_name(channel),
                        value.seq.get(),
                        if channel == GroupChannel::Command {
                            ", executed"
                        } else {
                            ""
                        }
                    ),
                ),
                Delivery::Duplicate { kind, .. } => a.refused(
                    Some(&group),
                    format!("{}: replay ({kind:?})", channel_name(channel)),
                ),
                Delivery::Rejected { reason, .. } | Delivery::Deferred { reason, .. } => {
                    a.refused(Some(&group), format!("{}: {reason}", channel_name(channel)))
                }
                Delivery::NotSaved { .. } => {}
            }
        }
        match delivery {
            Delivery::Executed { value, .. } => {
                if channel == GroupChannel::Command {
                    self.handler.execute(&VerifiedCommand {
                        device: &self.id,
                        group: &group,
                        signer: &value.signer,
                        seq: value.seq.get(),
                        payload: &value.payload,
                    });
                }
                report(
                    &self.events,
                    &self.id,
                    EventKind::Executed {
                        group: group.clone(),
                        signer: value.signer.clone(),
                        payload: value.payload.clone(),
                    },
                );
                if channel == GroupChannel::Alert {
                    info!(node = %self.id, group = %group.name(), signer = %value.signer, seq = value.seq.get(), "alert verified");
                    self.apply_rules(&group).await;
                }
            }
            Delivery::Duplicate { kind, .. } => {
                report(
                    &self.events,
                    &self.id,
                    EventKind::Rejected {
                        group,
                        reason: format!("replay ({kind:?})"),
                    },
                );
            }
            Delivery::Rejected { reason, .. } => {
                report(
                    &self.events,
                    &self.id,
                    EventKind::Rejected {
                        group,
                        reason: reason.to_string(),
                    },
                );
            }
            Delivery::Deferred { incoming, reason } => {
                // A newer epoch than ours: pull, and drop this copy (acknowledged:
                // the sender re-issues what matters once we caught up).
                report(
                    &self.events,
                    &self.id,
                    EventKind::Rejected {
                        group: group.clone(),
                        reason: reason.to_string(),
                    },
                );
                self.pull_coalesced(&group).await;
                incoming.ack.ack().await;
            }
            Delivery::NotSaved { incoming, reason } => {
                self.hold(group, channel, incoming, &reason);
                return;
            }
        }
        if let Some(fault) = self.save_fault.take() {
            info!(
                node = %self.id,
                held = self.held.len(),
                since_s = fault.elapsed().as_secs(),
                "state file written again; processing the messages held meanwhile"
            );
            self.retry_backoff = HELD_RETRY_FIRST;
            self.retry_at = tokio::time::Instant::now();
        }
    }

    /// Keeps a message whose result could not be saved, unacknowledged, to
    /// open again later (see `retry_held`). One WARN per disk fault, not one
    /// per message.
    fn hold(&mut self, group: GroupId, channel: GroupChannel, incoming: Incoming, reason: &str) {
        if self.save_fault.is_none() {
            self.save_fault = Some(std::time::Instant::now());
            self.retry_backoff = HELD_RETRY_FIRST;
            self.retry_at = tokio::time::Instant::now() + HELD_RETRY_FIRST;
            let dir = self
                .state_file
                .as_ref()
                .and_then(|f| f.path().parent())
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            warn!(
                node = %self.id,
                group = %group.name(),
                error = %reason,
                "state file not written, so nothing is executed and nothing acknowledged: messages are held and retried (MQTT: the broker keeps them until then); free space in, or restore write access to, {dir}"
            );
        }
        if !incoming.can_wait() {
            debug!(node = %self.id, group = %group.name(), "message not saved; answered 5.03 for the sender to retry");
            return;
        }
        if self.held.len() >= MAX_HELD {
            // Unacknowledged: the broker redelivers it on the next session.
            debug!(node = %self.id, group = %group.name(), "hold queue full; message left to the broker");
            return;
        }
        self.held.push_back((group, channel, incoming));
    }

    /// Opens the held messages again, oldest first; stops at the first one
    /// that still cannot be saved and waits longer before the next try.
    async fn retry_held(&mut self) {
        let mut queue = std::mem::take(&mut self.held);
        while let Some((group, channel, incoming)) = queue.pop_front() {
            self.on_broadcast(group, channel, incoming).await;
            if !self.held.is_empty() {
                self.held.append(&mut queue);
                self.retry_backoff = (self.retry_backoff * 2).min(HELD_RETRY_MAX);
                self.retry_at = tokio::time::Instant::now() + self.retry_backoff;
                return;
            }
        }
    }

    async fn apply_rules(&mut self, alert_group: &GroupId) {
        let rules: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| r.on_alert_from == *alert_group)
            .cloned()
            .collect();
        for rule in rules {
            match self
                .seal_and_publish(&rule.then_command, GroupChannel::Command, &rule.command)
                .await
            {
                Ok((_, seq)) => {
                    info!(node = %self.id, on_alert_from = %rule.on_alert_from.name(), group = %rule.then_command.name(), seq, "rule fired: command sent");
                    report(
                        &self.events,
                        &self.id,
                        EventKind::Issued {
                            group: rule.then_command.clone(),
                            payload: rule.command.clone(),
                        },
                    );
                }
                Err(Error::Stopped(why)) => {
                    info!(node = %self.id, on_alert_from = %rule.on_alert_from.name(), group = %rule.then_command.name(), "rule not fired: {why}");
                    report(
                        &self.events,
                        &self.id,
                        EventKind::Suppressed {
                            group: rule.then_command.clone(),
                        },
                    );
                }
                Err(e) => {
                    warn!(node = %self.id, group = %rule.then_command.name(), error = %e, "rule could not issue its command")
                }
            }
        }
    }
}

mod config;
mod handle;
mod send;
mod state;
mod watch;

pub use config::{CommandHandler, LogHandler, NodeConfig, ReplayPolicies, Rule, VerifiedCommand};
pub use handle::NodeHandle;
pub use send::{DEFAULT_CONFIRM_WAIT, send_once};
use state::*;
pub use watch::MisbehaviourWatch;

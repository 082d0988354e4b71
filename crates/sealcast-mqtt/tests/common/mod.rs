#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]
//! Fixtures shared by the MQTT tests: a group with one authorized signer,
//! client configurations with a fast bounded backoff, bounded waits, and the
//! two scenarios that run against every broker (embedded rumqttd and
//! Mosquitto).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sealcast_core::broadcast::{BroadcastReceiver, ReplayPolicy, seal_broadcast};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_core::{Error as CoreError, ReplayKind};
use sealcast_mqtt::{
    Acked, Backoff, Bytes, Delivery, GroupChannel, Incoming, MqttClient, MqttConfig, Subscription,
    TopicScheme, deliver_once,
};

/// A fixed "now" (2024-01-01T00:00:00Z); the receivers use the sequence
/// window, not the clock.
pub const NOW: UnixMillis = UnixMillis::new(1_704_067_200_000);
/// Bound on every single wait (connect, subscribe, one message, flush).
pub const STEP: Duration = Duration::from_secs(15);
/// How long "nothing more arrives" is watched.
pub const QUIET: Duration = Duration::from_millis(700);

/// One group, epoch 1, with one authorized signer (`gateway-1`, sender id 01).
pub struct Group {
    pub id: GroupId,
    pub material: GroupKeyMaterial,
    pub ctx: GroupContext,
    pub signer: EntityCredential,
}

impl Group {
    pub fn new(name: &[u8], seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let signer = EntityCredential::generate(EntityId::new("gateway-1").unwrap(), &mut rng);
        let signers = vec![AuthorizedSigner {
            sender_id: SenderId::new([0x01]).unwrap(),
            entity: signer.id().clone(),
            verifying_key: signer.signing_key().verifying_key(),
        }];
        let id = GroupId::new(name).unwrap();
        let material = GroupKeyMaterial::generate(
            id.clone(),
            Epoch::new(1),
            AeadAlg::A128Gcm,
            signers,
            None,
            &mut rng,
        )
        .unwrap();
        let ctx = GroupContext::new(&material).unwrap();
        Self {
            id,
            material,
            ctx,
            signer,
        }
    }

    /// A broadcast of `payload` with sequence number `seq`, bound to `topic`.
    pub fn seal(&self, seq: u64, topic: &str, payload: &[u8]) -> Bytes {
        seal_with(&self.ctx, &self.signer, seq, topic, payload)
    }

    /// A member's receiver with a fresh 64-wide sequence window.
    pub fn receiver(&self) -> BroadcastReceiver {
        BroadcastReceiver::new(self.ctx.clone(), ReplayPolicy::default()).unwrap()
    }

    /// The context of the next epoch (a join ratchet).
    pub fn next_epoch(&self) -> GroupContext {
        let next = self
            .material
            .ratchet(self.material.signers().to_vec(), None)
            .unwrap();
        GroupContext::new(&next).unwrap()
    }
}

pub fn seal_with(
    ctx: &GroupContext,
    signer: &EntityCredential,
    seq: u64,
    topic: &str,
    payload: &[u8],
) -> Bytes {
    Bytes::from(
        seal_broadcast(
            ctx,
            signer.id(),
            signer.signing_key(),
            SeqNum::new(seq).unwrap(),
            NOW,
            topic,
            payload,
        )
        .unwrap(),
    )
}

/// A name unique to this process and call: topic prefixes and client ids,
/// so parallel runs against a shared broker never collide.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fast, bounded reconnects for tests.
pub fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(800),
        max_attempts: Some(200),
    }
}

pub fn config(url: &str, client_id: &str) -> MqttConfig {
    MqttConfig::from_url(url, client_id)
        .unwrap()
        .with_keep_alive(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(2))
        .with_backoff(fast_backoff())
}

/// The next message, or a panic after [`STEP`].
pub async fn next(sub: &mut Subscription) -> Incoming {
    tokio::time::timeout(STEP, sub.next_message())
        .await
        .expect("no message within the step timeout")
        .expect("subscription closed")
}

/// Asserts that nothing arrives within [`QUIET`].
pub async fn assert_quiet(sub: &mut Subscription, who: &str) {
    if let Ok(m) = tokio::time::timeout(QUIET, sub.next_message()).await {
        panic!("{who}: unexpected message {m:?}");
    }
}

/// Connects a client and waits until its subscriptions are confirmed.
pub async fn connect(cfg: MqttConfig) -> (MqttClient, Subscription) {
    let (c, s) = MqttClient::connect(cfg).unwrap();
    c.wait_subscribed(STEP).await.unwrap();
    (c, s)
}

/// Clears a persistent session a test left on a shared broker.
pub async fn forget_session(url: &str, client_id: &str) {
    let (c, _s) = MqttClient::connect(config(url, client_id)).unwrap();
    c.wait_connected(STEP).await.unwrap();
    c.disconnect(STEP).await.unwrap();
}

fn executed<T: std::fmt::Debug>(d: Delivery<T>) -> T {
    match d {
        Delivery::Executed { value, ack } => {
            assert_eq!(ack, Acked::Sent);
            value
        }
        other => panic!("expected Executed, got {other:?}"),
    }
}

fn duplicate<T: std::fmt::Debug>(d: Delivery<T>) -> ReplayKind {
    match d {
        Delivery::Duplicate { kind, ack } => {
            assert_eq!(ack, Acked::Sent);
            kind
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

/// Scenario 1: one broadcast, sealed with sealcast-core, to `receivers`
/// subscribers; every one opens it exactly once.
pub async fn one_broadcast_to_many(url: &str, scheme: &TopicScheme, receivers: usize) {
    let started = Instant::now();
    let run = unique("bc");
    let group = Group::new(b"fire-doors", 7);
    let topic = scheme.group(&group.id, GroupChannel::Command);

    let mut members = Vec::new();
    for i in 0..receivers {
        let cfg =
            config(url, &format!("{run}-rx{i}")).with_subscription(scheme.group_filter(&group.id));
        let (client, sub) = connect(cfg).await;
        members.push((client, sub, group.receiver()));
    }
    let (gateway, _) = MqttClient::connect(config(url, &format!("{run}-tx"))).unwrap();
    gateway.wait_connected(STEP).await.unwrap();
    gateway
        .publish(
            topic.clone(),
            group.seal(1, &topic, b"close all fire doors"),
        )
        .await
        .unwrap();
    gateway.flush(STEP).await.unwrap();

    for (i, (_, sub, receiver)) in members.iter_mut().enumerate() {
        let incoming = next(sub).await;
        assert_eq!(incoming.topic, topic);
        let opened = executed(deliver_once(incoming, |t, b| receiver.open(b, t, NOW)).await);
        assert_eq!(opened.payload, b"close all fire doors", "receiver {i}");
        assert_eq!(opened.signer, *group.signer.id());
    }
    // Nothing more arrives anywhere (one quiet period for all receivers).
    tokio::time::sleep(QUIET).await;
    for (i, (_, sub, _)) in members.iter_mut().enumerate() {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(20), sub.next_message()).await {
            panic!("receiver {i}: unexpected message {m:?}");
        }
    }
    for (client, _, _) in &members {
        client.disconnect(STEP).await.unwrap();
    }
    gateway.disconnect(STEP).await.unwrap();
    eprintln!(
        "one broadcast to {receivers} receivers via {url}: {:?}",
        started.elapsed()
    );
}

/// Scenario 2: duplicates, a forced QoS 1 redelivery, reordering, a large
/// gap, garbage and a message of a newer epoch.
pub async fn duplicates_reordering_and_gaps(url: &str, scheme: &TopicScheme) {
    let started = Instant::now();
    let run = unique("dup");
    let group = Group::new(b"street-lights", 9);
    let topic = scheme.group(&group.id, GroupChannel::Command);
    let filter = scheme.group_filter(&group.id);
    let device_id = format!("{run}-dev");
    let device_cfg = || {
        config(url, &device_id)
            .with_persistent_session(true)
            .with_subscription(filter.clone())
    };
    // The device's replay window lives across its MQTT reconnects (as a
    // persisted window would across a restart).
    let mut receiver = group.receiver();
    let mut executed_payloads: Vec<Vec<u8>> = Vec::new();

    let (gateway, _) = MqttClient::connect(config(url, &format!("{run}-gw"))).unwrap();
    gateway.wait_connected(STEP).await.unwrap();
    let (device, mut sub) = connect(device_cfg()).await;

    // (a) The same publish twice: executed once, acknowledged both times.
    let first = group.seal(1, &topic, b"on");
    gateway.publish(topic.clone(), first.clone()).await.unwrap();
    gateway.publish(topic.clone(), first).await.unwrap();
    let m = next(&mut sub).await;
    let v = executed(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await);
    executed_payloads.push(v.payload);
    let m = next(&mut sub).await;
    assert_eq!(
        duplicate(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await),
        ReplayKind::Duplicate
    );

    // (b) A forced redelivery: the device opens (commits) a message but
    // "crashes" before acknowledging; it reconnects with its persistent
    // session and the broker redelivers.
    gateway
        .publish(topic.clone(), group.seal(2, &topic, b"dim 40%"))
        .await
        .unwrap();
    let m = next(&mut sub).await;
    let opened = receiver.open(&m.payload, &m.topic, NOW).unwrap();
    executed_payloads.push(opened.payload);
    drop(m); // the token goes unused: no PUBACK
    drop(device);
    drop(sub);
    // Let the broker notice the dropped connection before the same client
    // id comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (device, mut sub) = connect(device_cfg()).await;
    let m = next(&mut sub).await;
    assert_eq!(m.topic, topic);
    assert_eq!(
        duplicate(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await),
        ReplayKind::Duplicate
    );
    // The acknowledgement went out before the DISCONNECT: the next session
    // has nothing to redeliver.
    device.disconnect(STEP).await.unwrap();
    drop(sub);
    let (device, mut sub) = connect(device_cfg()).await;
    assert_quiet(&mut sub, "device after acknowledged redelivery").await;

    // (c) Reordering inside the window and a forward gap of 1000.
    for seq in [5u64, 3, 4, 1004, 1000, 900, 1005] {
        let payload = format!("seq {seq}");
        gateway
            .publish(topic.clone(), group.seal(seq, &topic, payload.as_bytes()))
            .await
            .unwrap();
    }
    for seq in [5u64, 3, 4, 1004, 1000] {
        let m = next(&mut sub).await;
        let v = executed(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await);
        assert_eq!(v.seq.get(), seq);
        executed_payloads.push(v.payload);
    }
    // 900 is 104 behind 1004: older than a 64-wide window remembers.
    let m = next(&mut sub).await;
    assert_eq!(
        duplicate(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await),
        ReplayKind::TooOld
    );
    let m = next(&mut sub).await;
    let v = executed(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await);
    assert_eq!(v.seq.get(), 1005);
    executed_payloads.push(v.payload);

    // (d) Garbage is acknowledged and dropped, not redelivered for ever.
    gateway
        .publish(topic.clone(), Bytes::from_static(b"\xd0\x83garbage"))
        .await
        .unwrap();
    let m = next(&mut sub).await;
    match deliver_once(m, |t, b| receiver.open(b, t, NOW)).await {
        Delivery::Rejected { reason, ack } => {
            assert_eq!(ack, Acked::Sent);
            assert!(matches!(reason, CoreError::Malformed(_)), "{reason:?}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    // (e) A command of the next epoch is held back unacknowledged until the
    // device installed that epoch's key, then executed.
    let next_ctx = group.next_epoch();
    gateway
        .publish(
            topic.clone(),
            seal_with(&next_ctx, &group.signer, 1, &topic, b"epoch 2"),
        )
        .await
        .unwrap();
    let m = next(&mut sub).await;
    let held = match deliver_once(m, |t, b| receiver.open(b, t, NOW)).await {
        Delivery::Deferred { incoming, reason } => {
            assert!(sealcast_mqtt::is_transient(&reason));
            incoming
        }
        other => panic!("expected Deferred, got {other:?}"),
    };
    receiver.install(next_ctx).unwrap();
    let v = executed(deliver_once(held, |t, b| receiver.open(b, t, NOW)).await);
    executed_payloads.push(v.payload);

    // Everything was acknowledged: a new session of the device gets nothing.
    device.disconnect(STEP).await.unwrap();
    drop(sub);
    let (device, mut sub) = connect(device_cfg()).await;
    assert_quiet(&mut sub, "device at the end").await;
    device.disconnect(STEP).await.unwrap();
    gateway.disconnect(STEP).await.unwrap();
    forget_session(url, &device_id).await;

    let expected: Vec<&[u8]> = vec![
        b"on",
        b"dim 40%",
        b"seq 5",
        b"seq 3",
        b"seq 4",
        b"seq 1004",
        b"seq 1000",
        b"seq 1005",
        b"epoch 2",
    ];
    assert_eq!(executed_payloads, expected);
    eprintln!(
        "duplicates, redelivery, reordering and gaps via {url}: {:?}",
        started.elapsed()
    );
}

/// A subscription added at run time ([`MqttClient::subscribe`]): messages on
/// it arrive from the SUBACK on, nothing of a group not subscribed arrives,
/// subscribing again to a confirmed filter returns at once without a new
/// request, and the runtime subscription is renewed with the configured one
/// when `restart` makes the broker forget the session.
pub async fn subscriptions_added_at_run_time(
    url: &str,
    scheme: &TopicScheme,
    restart: Option<&mut (dyn FnMut() + Send)>,
) {
    let (doors, pumps) = (Group::new(b"doors", 21), Group::new(b"pumps", 22));
    let (doors_cmd, pumps_cmd) = (
        scheme.group(&doors.id, GroupChannel::Command),
        scheme.group(&pumps.id, GroupChannel::Command),
    );
    let own = scheme.group_filter(&Group::new(b"own", 23).id);
    let id = format!("{}-rx", scheme.root().replace('/', "-"));
    let (rx, mut sub) = connect(config(url, &id).with_subscription(own)).await;
    let (tx, _tx_sub) = MqttClient::connect(config(url, &format!("{id}-tx"))).unwrap();
    tx.wait_connected(STEP).await.unwrap();

    // Unsubscribing from filters never subscribed to (what a node does at
    // start, for a persistent session's leftovers) is harmless.
    rx.unsubscribe(&[
        scheme.all_groups_filter(GroupChannel::Command),
        scheme.group_filter(&pumps.id),
    ])
    .unwrap();
    // Not subscribed yet: the doors' command does not arrive.
    tx.publish(doors_cmd.clone(), doors.seal(1, &doors_cmd, b"early"))
        .await
        .unwrap();
    tx.flush(STEP).await.unwrap();
    assert_quiet(&mut sub, "before subscribing").await;

    rx.subscribe(&[scheme.group_filter(&doors.id)], STEP)
        .await
        .unwrap();
    assert_eq!(rx.status().subscribed_generation, 1);
    // Again: confirmed already, nothing new is requested.
    rx.subscribe(&[scheme.group_filter(&doors.id)], STEP)
        .await
        .unwrap();
    assert_eq!(rx.status().subscribed_generation, 1);
    let mut receiver = doors.receiver();
    for (seq, text) in [(2, "unlock"), (3, "lock")] {
        tx.publish(
            doors_cmd.clone(),
            doors.seal(seq, &doors_cmd, text.as_bytes()),
        )
        .await
        .unwrap();
        let m = next(&mut sub).await;
        assert_eq!(m.topic, doors_cmd);
        let opened = executed(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await);
        assert_eq!(opened.payload, text.as_bytes());
    }
    assert_eq!(rx.status().connections, 1, "{:?}", rx.status());
    // Another group's traffic still does not arrive.
    tx.publish(pumps_cmd.clone(), pumps.seal(1, &pumps_cmd, b"start"))
        .await
        .unwrap();
    tx.flush(STEP).await.unwrap();
    assert_quiet(&mut sub, "the pumps' command").await;

    if let Some(restart) = restart {
        let before = rx.status().connections;
        tokio::task::block_in_place(restart);
        let deadline = tokio::time::Instant::now() + STEP;
        while rx.status().connections == before || !rx.status().subscribed {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new session: {:?}",
                rx.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!rx.status().session_present, "{:?}", rx.status());
        tx.wait_connected(STEP).await.unwrap();
        // The runtime subscription was renewed with the configured one.
        tx.publish(
            doors_cmd.clone(),
            doors.seal(4, &doors_cmd, b"after restart"),
        )
        .await
        .unwrap();
        let m = next(&mut sub).await;
        let opened = executed(deliver_once(m, |t, b| receiver.open(b, t, NOW)).await);
        assert_eq!(opened.payload, b"after restart");
    }
    rx.disconnect(STEP).await.unwrap();
    tx.disconnect(STEP).await.unwrap();
}

//! The MQTT adapter behind [`Link`](super::Link): QoS 1 publishes paced by a
//! task of their own, subscriptions from the [`Interest`], and the manual
//! PUBACK as the acknowledgement. The only module of the runtimes that
//! knows MQTT.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sealcast_core::ids::EntityId;
use sealcast_core::target::TopicScheme;
use sealcast_mqtt::{AckToken, MqttClient, MqttConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Incoming, Interest, Progress};
use crate::{Error, Result};

/// `url` with an explicit client id added as a URL parameter.
pub(super) fn with_client_id(url: &str, client_id: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}client_id={}",
        sealcast_mqtt::percent_encode(client_id)
    )
}

/// A broker URL fit for logs: credentials and secrets' paths left out.
pub fn redact_url(url: &str) -> String {
    sealcast_mqtt::redact_url(url)
}

/// `text` percent-encoded for a broker URL's query parameters.
pub fn percent_encode(text: &str) -> String {
    sealcast_mqtt::percent_encode(text)
}

pub(super) use sealcast_mqtt::Subscription;

impl From<sealcast_mqtt::Error> for Error {
    fn from(e: sealcast_mqtt::Error) -> Self {
        Error::Transport {
            transport: "MQTT",
            source: Box::new(e),
        }
    }
}

/// The embedded MQTT broker (rumqttd on 127.0.0.1) the demos and benches
/// start when no broker is given; stops when dropped.
#[derive(Debug)]
pub struct EmbeddedBroker(sealcast_mqtt::EmbeddedBroker);

impl EmbeddedBroker {
    /// Starts it on a free port.
    pub async fn start() -> Result<Self> {
        let broker = tokio::task::spawn_blocking(sealcast_mqtt::EmbeddedBroker::start)
            .await
            .map_err(|e| Error::Runtime(format!("broker thread: {e}")))??;
        Ok(Self(broker))
    }

    /// Its `mqtt://` URL.
    pub fn url(&self) -> String {
        self.0.url()
    }
}

/// Connects `id` to the broker of `broker_url` with the subscriptions of
/// `interest`, and returns once the broker confirmed them.
pub(super) async fn connect(
    id: &EntityId,
    broker_url: &str,
    persistent_session: bool,
    topics: &TopicScheme,
    interest: Interest,
) -> Result<(MqttPublisher, Subscription)> {
    let mut mqtt = MqttConfig::from_url(broker_url, topics.client_id(id.as_str()))?
        .with_persistent_session(persistent_session);
    for f in interest.filters {
        mqtt = mqtt.with_subscription(f);
    }
    if let Some(capacity) = interest.capacity {
        mqtt = mqtt.with_incoming_capacity(capacity);
    }
    let (client, sub) = MqttClient::connect(mqtt)?;
    if interest.receive {
        client.wait_subscribed(Duration::from_secs(10)).await?;
    } else {
        client.wait_connected(Duration::from_secs(10)).await?;
    }
    Ok((MqttPublisher::start(client), sub))
}

/// The next message of a subscription, as the link hands it on.
pub(super) async fn next_message(sub: &mut Subscription) -> Option<Incoming> {
    sub.next_message().await.map(incoming)
}

/// A message already queued on the subscription, without waiting.
pub(super) fn try_next_message(sub: &mut Subscription) -> Option<Incoming> {
    sub.try_next_message().map(incoming)
}

fn incoming(m: sealcast_mqtt::Incoming) -> Incoming {
    Incoming {
        target: m.topic,
        payload: m.payload,
        origin: None,
        ack: super::Ack(super::AckInner::Mqtt(MqttAck {
            token: m.ack,
            redelivered: m.redelivered,
        })),
    }
}

/// The PUBACK of one QoS 1 message.
pub(super) struct MqttAck {
    token: AckToken,
    redelivered: bool,
}

impl MqttAck {
    /// The broker marked the message as a redelivery (DUP).
    pub(super) fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Sends the PUBACK (refused messages are acknowledged too, so the
    /// broker does not redeliver them).
    pub(super) async fn send(self) {
        if let Err(e) = self.token.ack().await {
            debug!(error = %e, "could not acknowledge; a redelivery will be dropped as a duplicate");
        }
    }
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
pub(super) struct MqttPublisher {
    client: MqttClient,
    queue: Mutex<Option<mpsc::UnboundedSender<(String, Bytes)>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Publishes queued and not yet handed to the client, and failures
    /// since the last flush.
    progress: Arc<Progress>,
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
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        let task = tokio::spawn(async move {
            while let Some((topic, bytes)) = rx.recv().await {
                if let Err(e) = c.wait_outstanding_below(MQTT_PACE, MQTT_PACE_WAIT).await {
                    debug!(error = %e, "publishing without the broker's acknowledgements");
                }
                let result = c.publish(topic, bytes).await;
                if let Err(e) = &result {
                    warn!(error = %e, "publish failed");
                }
                p.finished(result.err().map(|e| e.to_string()));
            }
        });
        Self {
            client,
            queue: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
            progress,
        }
    }

    /// Queues a publish; it fails only once the link is closed.
    pub(super) fn publish(&self, topic: String, bytes: Bytes) -> Result<()> {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        self.progress.started();
        match queue.as_ref() {
            Some(tx) if tx.send((topic, bytes)).is_ok() => Ok(()),
            _ => {
                self.progress.finished(None);
                Err(Error::Runtime("the MQTT link is closed".into()))
            }
        }
    }

    /// Waits until every queued publish was handed to the client and the
    /// broker acknowledged them (within `timeout`).
    pub(super) async fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.progress.settle(deadline, "MQTT").await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.client.flush(left).await?;
        Ok(())
    }

    /// Subscribes to `filters` from now on (and on every new session) and
    /// waits at most `timeout` for the broker's confirmation.
    pub(super) async fn subscribe(
        &self,
        filters: &[sealcast_mqtt::TopicFilter],
        timeout: Duration,
    ) -> Result<()> {
        self.client.subscribe(filters, timeout).await?;
        Ok(())
    }

    /// Unsubscribes from `filters` without waiting.
    pub(super) fn unsubscribe(&self, filters: &[sealcast_mqtt::TopicFilter]) -> Result<()> {
        self.client.unsubscribe(filters)?;
        Ok(())
    }

    /// Sends what is queued (within `timeout`), then disconnects.
    pub(super) async fn close(&self, timeout: Duration) {
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

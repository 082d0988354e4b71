//! # sealcast-mqtt
//!
//! The MQTT transport adapter of sealcast. It carries sealcast's COSE bytes
//! between brokers and clients and never sees an end-to-end key: what it
//! publishes is already sealed, what it receives is handed to the
//! application, which opens it with `sealcast-core`.
//!
//! ## Topic scheme
//!
//! ```text
//! sealcast/v1/g/<group-hex>/cmd       group commands (broadcasts)
//! sealcast/v1/g/<group-hex>/alert     urgent group broadcasts
//! sealcast/v1/g/<group-hex>/rekey     group rekeys
//! sealcast/v1/g/<group-hex>/notice    group notices
//! sealcast/v1/d/<entity>/delivery     key deliveries to one device
//! sealcast/v1/d/<entity>/pull         a device's key pulls
//! sealcast/v1/d/<entity>/ack          a device's delivery acknowledgements
//! sealcast/v1/a/<agent>/report        member reports via one agent
//! sealcast/v1/a/<agent>/batch         report batches of one agent
//! sealcast/v1/a/<agent>/announce      an agent's signed list of the members it serves
//! sealcast/v1/a/<agent>/solicit       a signed request to announce again
//! ```
//!
//! `<group-hex>` is the `GroupId` in lowercase hex; `<entity>` an `EntityId`
//! as it is. A deployment may put a prefix in front (`site-7/sealcast/v1/…`).
//! [`TopicScheme`] builds these from typed ids and parses them back
//! (bounded; hostile topics give an error, never a panic). The full topic is
//! the *target* a broadcast binds: receivers open with the topic they
//! received on, so a command replayed onto another topic fails.
//!
//! ## Delivery: QoS 1, acknowledged after the replay window committed
//!
//! Every publish and subscription is QoS 1. Acknowledgements are manual:
//! [`Subscription::next_message`] yields an [`Incoming`] with an
//! [`AckToken`], and [`deliver_once`] opens the payload (which commits the
//! receiver's replay window) *before* acknowledging. QoS 1 redeliveries then
//! fail with `sealcast_core::Error::Replay` and are acknowledged and
//! dropped; garbage is acknowledged and dropped too (with the local reason
//! logged), so the broker does not redeliver it for ever. The client
//! reconnects with capped, jittered exponential [`Backoff`], re-subscribes
//! on new sessions, and re-sends publishes the broker had not acknowledged.
//!
//! ## Brokers
//!
//! [`EmbeddedBroker`] (feature `embedded-broker`, on by default) starts
//! rumqttd in-process on 127.0.0.1 for the demo and tests. Deployments use
//! any MQTT 3.1.1/5 broker — Mosquitto, EMQX, HiveMQ — and a broker cluster
//! (or bridged brokers) to fan out past one machine; see the README.
//!
//! ## Example
//!
//! ```
//! # #[cfg(feature = "embedded-broker")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use sealcast_core::ids::GroupId;
//! use sealcast_mqtt::{
//!     Delivery, EmbeddedBroker, GroupChannel, MqttClient, MqttConfig, TopicScheme, deliver_once,
//! };
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let broker = EmbeddedBroker::start()?;
//!     let scheme = TopicScheme::new();
//!     let group = GroupId::new(b"doors")?;
//!     let topic = scheme.group(&group, GroupChannel::Command);
//!     assert_eq!(topic, "sealcast/v1/g/646f6f7273/cmd");
//!
//!     let device = MqttConfig::from_url(&broker.url(), "door-17")?
//!         .with_subscription(scheme.group_filter(&group));
//!     let (device, mut inbox) = MqttClient::connect(device)?;
//!     device.wait_subscribed(Duration::from_secs(5)).await?;
//!
//!     let (gateway, _) = MqttClient::connect(MqttConfig::from_url(&broker.url(), "door-gw")?)?;
//!     // In real use: the bytes of sealcast_core::broadcast::seal_broadcast(…, &topic, …).
//!     gateway.publish(topic.clone(), Bytes::from_static(b"sealed bytes")).await?;
//!
//!     let incoming = tokio::time::timeout(Duration::from_secs(5), inbox.next_message())
//!         .await?
//!         .ok_or("closed")?;
//!     // In real use: |target, bytes| receiver.open(bytes, target, now)
//!     let delivery = deliver_once(incoming, |target, bytes| {
//!         assert_eq!(target, topic);
//!         Ok::<_, sealcast_core::Error>(bytes.len())
//!     })
//!     .await;
//!     assert!(matches!(delivery, Delivery::Executed { value: 12, .. }));
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })
//! # }
//! # #[cfg(not(feature = "embedded-broker"))]
//! # fn main() {}
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backoff;
#[cfg(feature = "embedded-broker")]
mod broker;
mod client;
mod config;
mod deliver;
mod error;
pub mod tls;
/// The target scheme, which lives in the core (naming is not an MQTT
/// concern); re-exported here under its old path.
pub use sealcast_core::target as topic;

pub use backoff::Backoff;
#[cfg(feature = "embedded-broker")]
pub use broker::EmbeddedBroker;
pub use bytes::Bytes;
pub use client::{AckToken, Acked, Incoming, MqttClient, Status, Subscription};
pub use config::{Credentials, DEFAULT_INFLIGHT, DEFAULT_MAX_PACKET, MqttConfig};
pub use deliver::{Delivery, OpenError, deliver_once, is_transient};
pub use error::{Error, Result};
pub use tls::{TlsSettings, percent_encode, redact_url};
pub use topic::{
    AgentChannel, DeviceChannel, GroupChannel, Topic, TopicFilter, TopicScheme, check_topic_name,
};

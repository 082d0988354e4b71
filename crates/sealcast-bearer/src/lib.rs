//! # sealcast-bearer
//!
//! MBMS-like bearer security for sealcast's multicast transports, in the
//! shape of 3GPP TS 33.246, as a sans-IO state machine: bytes, `now` and a
//! [`rand_core::CryptoRng`] go in, bytes and events come out. No sockets,
//! clocks or OS randomness in here.
//!
//! It sits in the transport adapters, **beneath** the end-to-end COSE layer:
//! a data frame carries one COSE object, unchanged, plus the topic it was
//! published on, padded to a size bucket and encrypted. A non-subscriber on
//! the bearer sees neither group ids, topics nor exact sizes. It adds
//! defense in depth and access control to the bearer; it never replaces the
//! end-to-end layer (every entitled device holds the same MSK and MTKs, so
//! bearer keys authenticate the *service*, not a sender).
//!
//! ## Keys ([`keys`])
//!
//! ```text
//! MUK  per (service, device): static-static X25519 + HKDF ("sealcast bearer MUK v1")
//!  └─ protects MSK deliveries, point to point          (BearerSender::entitle / revoke / rotate_msk)
//! MSK  per service: random, id + lifetime
//!  └─ protects key frames, in band on the bearer        (sent before counter 0, K, 2K … of each MTK)
//! MTK  short-lived: random, id; rolls over by frame count and by time
//!  └─ protects data frames: AES-256-GCM, nonce = MTK id ‖ 0 ‖ counter
//! ```
//!
//! The wire format is in [`frame`].
//!
//! ## Example
//!
//! ```
//! use sealcast_bearer::{BearerReceiver, BearerSender, Muk, MskId, ReceiverConfig, SenderConfig, Topic};
//! use sealcast_core::credential::EntityCredential;
//! use sealcast_core::ids::{EntityId, UnixMillis};
//! # use sealcast_core::testrng::TestRng;
//! # let mut rng = TestRng::new(1); // tests only: use an OS-seeded CryptoRng
//! let now = UnixMillis::new(1_700_000_000_000);
//! let service = EntityCredential::generate(EntityId::new("bearer-1")?, &mut rng);
//! let device = EntityCredential::generate(EntityId::new("door-17")?, &mut rng);
//!
//! // The service side entitles the device and sends it the MSK point to point.
//! let mut sender = BearerSender::new(
//!     service.id().clone(), MskId::new(1), SenderConfig::default(), now, &mut rng)?;
//! let deliveries = sender.entitle(Muk::for_service(&service, &device.public())?, &mut rng)?;
//!
//! // The device installs it.
//! let mut receiver = BearerReceiver::new(
//!     Muk::for_device(&device, &service.public())?, ReceiverConfig::default())?;
//! for d in &deliveries {
//!     receiver.handle_msk_delivery(&d.bytes, now)?;
//! }
//!
//! // Each COSE object becomes a key frame (when due) and a data frame.
//! let topic = Topic::new("sealcast/g/02/cmd")?;
//! let frames = sender.protect(&topic, b"COSE bytes", now, &mut rng)?;
//! let mut got = Vec::new();
//! for f in &frames {
//!     got.extend(receiver.handle(f, now)?);
//! }
//! assert_eq!(got[0].payload, b"COSE bytes");
//! assert_eq!(got[0].topic, topic);
//! # Ok::<(), sealcast_bearer::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod frame;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod keys;
pub mod receiver;
pub mod sender;
pub mod state;

pub use error::{Error, Result};
pub use frame::{FrameInfo, FrameKind, peek};
pub use ids::{FrameCounter, MskId, MtkId, Topic};
pub use keys::Muk;
pub use receiver::{BearerReceiver, Delivered, ReceiverConfig};
pub use sender::{BearerSender, MskDelivery, SenderConfig};

/// Runs `fuzzing::fuzz_frame`: the entry point of the `bearer_frame` fuzz
/// target. Not an API.
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub fn fuzz_frame(data: &[u8]) {
    fuzzing::fuzz_frame(data);
}

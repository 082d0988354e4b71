//! The CoAP transport adapter of sealcast.
//!
//! It carries sealcast's COSE bytes over CoAP (RFC 7252) and never sees a
//! key of the end-to-end layer: what it moves is opaque, already protected,
//! and labelled with a Content-Format ([`ContentFormat`]). Three things:
//!
//! - **Unicast** ([`CoapClient`], [`CoapServer`]) for key deliveries, pulls
//!   and acks: confirmable requests retransmitted with exponential backoff
//!   ([`TransmissionParams`], RFC 7252 §4.2, configurable so tests run in
//!   milliseconds), deduplication by message id on the server (§4.5, a
//!   cache bounded in size that lives EXCHANGE_LIFETIME), and RFC 7959
//!   block-wise transfer — Block1 for large requests, Block2 for large
//!   responses, 1024-byte blocks by default — when a key delivery or tree
//!   rekey outgrows a datagram.
//! - **Multicast** ([`MulticastSender`], [`MulticastReceiver`]) for group
//!   commands: non-confirmable requests to a group address and port
//!   (224.0.1.187, ff02::fd, ff05::fd; port 5683), receivers joined with
//!   socket2 so several share a host and each hears only its groups. The
//!   outgoing interface is a required setting ([`MulticastInterface`]).
//! - A **sans-IO server core** ([`ServerCore`]): datagram and `now` in,
//!   reply out; the tokio server is a thin loop around it.
//!
//! # Example: a key delivery over unicast
//!
//! ```
//! use sealcast_coap::{
//!     ClientConfig, CoapClient, CoapServer, ContentFormat, Request, Response, ServerConfig,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     // The device's endpoint: acknowledges key deliveries.
//!     let server = CoapServer::bind(
//!         ServerConfig::new("127.0.0.1:0".parse()?),
//!         |req: &Request, _peer| {
//!             assert_eq!(req.path(), "kd/device-x");
//!             Response::changed()
//!         },
//!     )
//!     .await?
//!     .spawn()?;
//!
//!     // The agent forwards a (here: fake, 3 KiB) COSE_Sign1 key delivery.
//!     let client = CoapClient::bind(ClientConfig::new("127.0.0.1:0".parse()?)).await?;
//!     let delivery = [&[0xd2u8, 0x84][..], &[0u8; 3070]].concat();
//!     let request = Request::post("kd/device-x", ContentFormat::COSE_SIGN1, delivery)?;
//!     let response = client.request(server.local_addr(), &request).await?;
//!     assert!(response.code().is_success());
//!     assert_eq!(server.stats().requests, 1); // three Block1 blocks, one request
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Why coap-lite
//!
//! The codec is [`coap_lite`] 0.13 (the crate also under the `coap` client
//! and server crate). Compared on 2025 releases:
//!
//! - **coap-lite 0.13.3**: owned `Packet` with every RFC 7252 option and the
//!   registered Content-Formats (including the COSE ones), plain data in and
//!   out, no I/O and no runtime, no declared MSRV problem for Rust 1.85, and
//!   a parser that received a fix for integer overflow in option deltas and
//!   lengths in 2025 (0.13.2). Its block-wise helper is server-only and
//!   unbounded, so this crate does RFC 7959 itself and builds coap-lite
//!   without default features (no `std`, no LRU cache dependency).
//! - **coap-message / coap-message-implementations** (chrysn, also behind
//!   aiocoap): a trait-based, allocation-free design made for embedded
//!   targets; its current release (0.2) needs Rust 1.88, newer than the
//!   workspace's 1.85, and the older 0.1 line is superseded.
//! - **coap** (covertness/coap-rs): a full client/server with its own
//!   sockets and runtime and DTLS dependencies; this adapter must build its
//!   own sockets with socket2 for multicast, so it would use only the
//!   codec, which is coap-lite anyway.
//!
//! coap-lite is lenient where RFC 7252 calls for a format error, so
//! decoding here adds checks (version 1, token length, Empty messages of
//! exactly four bytes, reserved code classes, a size bound before parsing,
//! and repeated non-repeatable options), and the server answers unknown
//! critical options with 4.02.
//!
//! # Content-Format numbers
//!
//! [`ContentFormat`] names the registered `application/cose` numbers
//! (16 Encrypt0, 17 Mac0, 18 Sign1, 96 Encrypt, 97 Mac, 98 Sign) of the
//! IANA CoAP Content-Formats registry, registered by RFC 8152 §16.10 and
//! referenced to RFC 9052 (its IANA Considerations) since; the numbers
//! equal the COSE CBOR tags, so [`ContentFormat::of_tagged_cose`] labels a
//! tagged object by its first bytes.
//!
//! # Targets of broadcasts
//!
//! A sealcast broadcast binds its target into both COSE layers. Over CoAP
//! the target is the Uri-Path joined with `/` and no leading slash
//! ([`Request::path`], [`GroupRequest::path`]), e.g. `grp/lights-3/cmd`:
//! not the group address or port, which differ between IPv4 and IPv6 and
//! are not authenticated.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod block;
mod client;
mod content_format;
mod error;
mod expiring;
mod fault;
mod message;
mod multicast;
mod params;
mod server;
mod server_core;
mod socket;

pub use block::BlockSize;
pub use client::{ClientConfig, ClientStats, CoapClient};
pub use content_format::ContentFormat;
pub use error::{Error, Result};
#[cfg(any(test, feature = "test-support"))]
pub use fault::DropFirst;
pub use fault::{DatagramFilter, Direction};
pub use message::{
    MAX_DATAGRAM, MessageId, MessageType, Method, Request, Response, ResponseCode, Token,
};
pub use multicast::{
    ALL_COAP_NODES_V4, ALL_COAP_NODES_V6_LINK, ALL_COAP_NODES_V6_SITE, COAP_PORT,
    DEFAULT_MAX_MESSAGE, GroupRequest, MulticastConfig, MulticastReceiver, MulticastSender,
    MulticastStats, parse_group_request,
};
pub use params::{RetransmitSchedule, TransmissionParams};
pub use server::{CoapServer, ServerConfig, ServerHandle};
pub use server_core::{DeferHandler, Handler, ServerCore, ServerSettings, ServerStats, Ticket};
pub use socket::MulticastInterface;

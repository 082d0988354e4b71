//! Group commands over IP multicast: non-confirmable requests sent to a
//! group address and port (RFC 7252 §8), heard by every joined receiver.
//!
//! Multicast has no acknowledgements and no block-wise transfer here, so a
//! group command must fit one datagram (by default 1152 bytes, RFC 7252
//! §4.6). Reliability and authenticity come from above: every sealcast
//! broadcast is signed, encrypted and checked against a replay window, and
//! a member that missed a command or a rekey pulls over unicast.
//!
//! Where datagrams go is always explicit. A [`MulticastConfig`] cannot be
//! built without naming the interface, and the sender sets
//! IP_MULTICAST_IF / IPV6_MULTICAST_IF to it, with a hop limit of 1 by
//! default: with `127.0.0.1` as the interface nothing leaves the machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use rand_core::Rng;

use crate::content_format::ContentFormat;
use crate::error::{Error, Result};
use crate::expiring::ExpiringMap;
use crate::fault::{self, Direction, Fault};
use crate::message::{
    self, CodeKind, MAX_DATAGRAM, MessageId, MessageType, Method, Request, Token, opt,
};
use crate::params::TransmissionParams;
use crate::socket::{self, MulticastInterface};

/// IPv4 "All CoAP Nodes" (RFC 7252 §12.8).
pub const ALL_COAP_NODES_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);
/// IPv6 link-local "All CoAP Nodes" (RFC 7252 §12.8).
pub const ALL_COAP_NODES_V6_LINK: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfd);
/// IPv6 site-local "All CoAP Nodes" (RFC 7252 §12.8).
pub const ALL_COAP_NODES_V6_SITE: Ipv6Addr = Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 0xfd);
/// The default CoAP port (RFC 7252 §6.1).
pub const COAP_PORT: u16 = 5683;

/// The message size RFC 7252 §4.6 recommends when the path MTU is unknown.
pub const DEFAULT_MAX_MESSAGE: usize = 1152;

/// A group, its port and the interface multicast uses.
#[derive(Clone, Debug)]
pub struct MulticastConfig {
    group: IpAddr,
    port: u16,
    interface: MulticastInterface,
    hops: u32,
    loopback: bool,
    max_message: usize,
    params: TransmissionParams,
    dedup_capacity: usize,
    fault: Fault,
}

impl MulticastConfig {
    /// `group` on `interface` (both of one IP version), port 5683, hop
    /// limit 1, loopback on, messages of at most 1152 bytes.
    pub fn new(group: IpAddr, interface: MulticastInterface) -> Result<Self> {
        if !group.is_multicast() {
            return Err(Error::Config("group address is not a multicast address"));
        }
        match (group, interface) {
            (IpAddr::V4(_), MulticastInterface::V4(_))
            | (IpAddr::V6(_), MulticastInterface::V6 { .. }) => {}
            _ => {
                return Err(Error::Config(
                    "group and interface are of different IP versions",
                ));
            }
        }
        Ok(Self {
            group,
            port: COAP_PORT,
            interface,
            hops: 1,
            loopback: true,
            max_message: DEFAULT_MAX_MESSAGE,
            params: TransmissionParams::default(),
            dedup_capacity: 4096,
            fault: None,
        })
    }

    /// The UDP port (tests use a free high port; deployments 5683).
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The multicast TTL / hop limit of sent datagrams (0–255). 1 keeps
    /// them on the link; 0 keeps them on the host for real interfaces but
    /// also stops delivery over `lo`, so loopback setups use 1.
    pub fn with_hops(mut self, hops: u32) -> Result<Self> {
        if hops > 255 {
            return Err(Error::Config("hop limit above 255"));
        }
        self.hops = hops;
        Ok(self)
    }

    /// Whether the sender's own host hears its datagrams.
    #[must_use]
    pub fn with_loopback(mut self, on: bool) -> Self {
        self.loopback = on;
        self
    }

    /// The largest datagram sent or accepted (at most 65 507).
    pub fn with_max_message(mut self, bytes: usize) -> Result<Self> {
        if !(64..=MAX_DATAGRAM).contains(&bytes) {
            return Err(Error::Config("max message must be 64 to 65507 bytes"));
        }
        self.max_message = bytes;
        Ok(self)
    }

    /// Timing used for the receiver's duplicate detection (NON_LIFETIME).
    #[must_use]
    pub fn with_params(mut self, params: TransmissionParams) -> Self {
        self.params = params;
        self
    }

    /// Most (source, message id) pairs a receiver remembers.
    #[must_use]
    pub fn with_dedup_capacity(mut self, entries: usize) -> Self {
        self.dedup_capacity = entries;
        self
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Installs a fault-injection filter (tests).
    #[must_use]
    pub fn with_fault_injection(
        mut self,
        filter: std::sync::Arc<dyn crate::fault::DatagramFilter>,
    ) -> Self {
        self.fault = Some(filter);
        self
    }

    /// The group address.
    pub fn group(&self) -> IpAddr {
        self.group
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The interface.
    pub fn interface(&self) -> MulticastInterface {
        self.interface
    }

    fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.group, self.port)
    }
}

/// Sends group commands: non-confirmable POSTs to the group.
pub struct MulticastSender {
    socket: tokio::net::UdpSocket,
    config: MulticastConfig,
    next_mid: AtomicU16,
    rng: Mutex<Box<dyn rand_core::CryptoRng + Send>>,
}

impl std::fmt::Debug for MulticastSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MulticastSender")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MulticastSender {
    /// A sender socket pinned to the configured interface (inside a tokio
    /// runtime).
    pub async fn bind(config: MulticastConfig) -> Result<Self> {
        let socket =
            socket::multicast_sender(config.group, config.interface, config.hops, config.loopback)?;
        let mut rng: Box<dyn rand_core::CryptoRng + Send> =
            Box::new(rand_core::UnwrapErr(getrandom::SysRng));
        let first = rng.next_u32() as u16;
        Ok(Self {
            socket,
            config,
            next_mid: AtomicU16::new(first),
            rng: Mutex::new(rng),
        })
    }

    /// The local address datagrams leave from.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Sends `payload` as a non-confirmable POST to `path` on the group.
    pub async fn send(
        &self,
        path: &str,
        content_format: ContentFormat,
        payload: &[u8],
    ) -> Result<MessageId> {
        let request = Request::post(path, content_format, payload.to_vec())?;
        self.send_request(&request).await
    }

    /// Sends any request as a non-confirmable message to the group.
    pub async fn send_request(&self, request: &Request) -> Result<MessageId> {
        let mid = MessageId::new(self.next_mid.fetch_add(1, Ordering::Relaxed));
        let mut token = [0u8; 8];
        match self.rng.lock() {
            Ok(mut rng) => rng.fill_bytes(&mut token),
            Err(poisoned) => poisoned.into_inner().fill_bytes(&mut token),
        }
        let packet = request.to_packet(
            MessageType::NonConfirmable,
            mid,
            Token::from_array(token),
            request.payload(),
        );
        let bytes =
            message::encode(&packet, self.config.max_message).map_err(|_| Error::TooLarge {
                what: "group command (one datagram, no block-wise over multicast)",
                limit: self.config.max_message,
            })?;
        if !fault::dropped(&self.config.fault, Direction::Outgoing, &bytes) {
            self.socket
                .send_to(&bytes, self.config.destination())
                .await?;
        }
        Ok(mid)
    }
}

/// A group command as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRequest {
    source: SocketAddr,
    message_id: MessageId,
    request: Request,
}

impl GroupRequest {
    /// Who sent it (unauthenticated: the COSE layer says who really did).
    pub fn source(&self) -> SocketAddr {
        self.source
    }

    /// Its message id.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// The request.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The Uri-Path, joined with `/`: the target a sealcast broadcast binds.
    pub fn path(&self) -> String {
        self.request.path()
    }

    /// The Content-Format, if given.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.request.content_format()
    }

    /// The body (the COSE bytes).
    pub fn payload(&self) -> &[u8] {
        self.request.payload()
    }

    /// The request, taken out.
    pub fn into_request(self) -> Request {
        self.request
    }
}

/// Decodes a datagram received on a group: it must be a well-formed
/// non-confirmable request (RFC 7252 §8.1: multicast requests are never
/// confirmable) without block-wise options or critical options this
/// adapter does not understand. Pure; never panics.
pub fn parse_group_request(datagram: &[u8]) -> Result<(MessageId, Request)> {
    let p = message::decode(datagram)?;
    if MessageType::of(&p) != MessageType::NonConfirmable {
        return Err(Error::Malformed("a group request must be non-confirmable"));
    }
    if message::code_kind(&p) != CodeKind::Request || Method::of_packet(&p).is_none() {
        return Err(Error::Malformed("not a request"));
    }
    if message::unknown_critical_option(
        &p,
        &[
            opt::URI_HOST,
            opt::URI_PORT,
            opt::URI_PATH,
            opt::URI_QUERY,
            opt::ACCEPT,
        ],
    )
    .is_some()
    {
        return Err(Error::Malformed(
            "unrecognised critical option in a group request",
        ));
    }
    let request = Request::from_packet(&p)?;
    Ok((MessageId::new(p.header.message_id), request))
}

/// Counters of a multicast receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MulticastStats {
    /// Group requests delivered.
    pub delivered: u64,
    /// Duplicates (same source and message id) dropped.
    pub duplicates: u64,
    /// Datagrams dropped as malformed or not a group request.
    pub rejected: u64,
}

/// A socket joined to a group, yielding each group request once.
pub struct MulticastReceiver {
    socket: tokio::net::UdpSocket,
    config: MulticastConfig,
    seen: ExpiringMap<(SocketAddr, MessageId), ()>,
    buf: Vec<u8>,
    stats: MulticastStats,
}

impl std::fmt::Debug for MulticastReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MulticastReceiver")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl MulticastReceiver {
    /// Joins the group on the configured interface (inside a tokio
    /// runtime). Several receivers on one host may join the same group and
    /// port; each hears every datagram.
    pub async fn join(config: MulticastConfig) -> Result<Self> {
        let socket = socket::multicast_receiver(config.group, config.port, config.interface)?;
        Ok(Self {
            socket,
            seen: ExpiringMap::new(config.dedup_capacity),
            buf: vec![0u8; MAX_DATAGRAM + 1],
            stats: MulticastStats::default(),
            config,
        })
    }

    /// The bound address (the group and port).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// The counters so far.
    pub fn stats(&self) -> MulticastStats {
        self.stats
    }

    /// The next group request not seen before. Malformed datagrams,
    /// confirmable or block-wise messages and duplicates are dropped and
    /// counted; only socket errors end the wait.
    pub async fn recv(&mut self) -> Result<GroupRequest> {
        loop {
            let (n, source) = self.socket.recv_from(&mut self.buf).await?;
            let datagram = &self.buf[..n];
            if fault::dropped(&self.config.fault, Direction::Incoming, datagram) {
                continue;
            }
            if n > self.config.max_message {
                self.stats.rejected += 1;
                continue;
            }
            let (message_id, request) = match parse_group_request(datagram) {
                Ok(x) => x,
                Err(_) => {
                    self.stats.rejected += 1;
                    continue;
                }
            };
            let now = Instant::now();
            let key = (source, message_id);
            if self.seen.get(&key, now).is_some() {
                self.stats.duplicates += 1;
                continue;
            }
            self.seen
                .insert(key, (), now + self.config.params.non_lifetime(), now);
            self.stats.delivered += 1;
            return Ok(GroupRequest {
                source,
                message_id,
                request,
            });
        }
    }
}

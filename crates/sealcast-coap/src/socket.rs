//! UDP sockets built with socket2, then handed to tokio.
//!
//! socket2 is used because std cannot set the options multicast needs
//! before `bind`: SO_REUSEADDR and SO_REUSEPORT (several receivers of one
//! group on one host), IP_MULTICAST_ALL off (a socket hears only the groups
//! it joined), and the outgoing interface, hop limit and loopback of a
//! multicast sender. All of it is safe code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};

/// A nonblocking unicast UDP socket bound to `addr` (IPv6 sockets are
/// IPv6-only, so which family a socket serves is explicit).
pub(crate) fn unicast(addr: SocketAddr) -> Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    into_tokio(socket)
}

fn into_tokio(socket: Socket) -> Result<tokio::net::UdpSocket> {
    socket.set_nonblocking(true)?;
    let std_socket: std::net::UdpSocket = socket.into();
    Ok(tokio::net::UdpSocket::from_std(std_socket)?)
}

/// The interface multicast goes out of and is joined on. There is no
/// default: left to the kernel, IPv4 multicast follows the default route
/// out of the host, so every endpoint names its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulticastInterface {
    /// An IPv4 interface, by one of its addresses (`127.0.0.1` pins
    /// everything to the loopback interface).
    V4(Ipv4Addr),
    /// An IPv6 interface, by index.
    V6 {
        /// The interface index (see [`MulticastInterface::v6_by_name`]).
        index: u32,
    },
}

impl MulticastInterface {
    /// The loopback interface for IPv4: `127.0.0.1`.
    pub const LOOPBACK_V4: Self = Self::V4(Ipv4Addr::LOCALHOST);

    /// An IPv6 interface by name, its index read from
    /// `/sys/class/net/<name>/ifindex` (Linux).
    pub fn v6_by_name(name: &str) -> Result<Self> {
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(Error::Config("not an interface name"));
        }
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
        let index = text
            .trim()
            .parse::<u32>()
            .map_err(|_| Error::Config("unreadable interface index"))?;
        Ok(Self::V6 { index })
    }
}

/// The socket a multicast sender transmits from: bound to the interface
/// (IPv4: to its address, so the source address is on that interface too),
/// with IP_MULTICAST_IF / IPV6_MULTICAST_IF, the hop limit and loopback set.
pub(crate) fn multicast_sender(
    group: IpAddr,
    interface: MulticastInterface,
    hops: u32,
    loopback: bool,
) -> Result<tokio::net::UdpSocket> {
    match (group, interface) {
        (IpAddr::V4(_), MulticastInterface::V4(ifaddr)) => {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_multicast_if_v4(&ifaddr)?;
            socket.set_multicast_ttl_v4(hops)?;
            socket.set_multicast_loop_v4(loopback)?;
            socket.bind(&SocketAddr::V4(SocketAddrV4::new(ifaddr, 0)).into())?;
            into_tokio(socket)
        }
        (IpAddr::V6(_), MulticastInterface::V6 { index }) => {
            let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_only_v6(true)?;
            socket.set_multicast_if_v6(index)?;
            socket.set_multicast_hops_v6(hops)?;
            socket.set_multicast_loop_v6(loopback)?;
            socket
                .bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)).into())?;
            into_tokio(socket)
        }
        _ => Err(Error::Config(
            "group and interface are of different IP versions",
        )),
    }
}

/// A receiver socket joined to `group` on `interface`, bound to the group
/// address and port (so unicast to the port is not delivered to it), with
/// SO_REUSEADDR and SO_REUSEPORT (several receivers per host each get every
/// datagram) and IP(V6)_MULTICAST_ALL off (only joined groups are heard).
pub(crate) fn multicast_receiver(
    group: IpAddr,
    port: u16,
    interface: MulticastInterface,
) -> Result<tokio::net::UdpSocket> {
    match (group, interface) {
        (IpAddr::V4(g), MulticastInterface::V4(ifaddr)) => {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_multicast_all_v4(false)?;
            socket.bind(&SocketAddr::V4(SocketAddrV4::new(g, port)).into())?;
            socket.join_multicast_v4(&g, &ifaddr)?;
            into_tokio(socket)
        }
        (IpAddr::V6(g), MulticastInterface::V6 { index }) => {
            let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_only_v6(true)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_multicast_all_v6(false)?;
            // A link-local group (ff02::/16) names its link in the scope id.
            let scope = if g.segments()[0] & 0x000f == 0x2 {
                index
            } else {
                0
            };
            socket.bind(&SocketAddr::V6(SocketAddrV6::new(g, port, 0, scope)).into())?;
            socket.join_multicast_v6(&g, index)?;
            into_tokio(socket)
        }
        _ => Err(Error::Config(
            "group and interface are of different IP versions",
        )),
    }
}

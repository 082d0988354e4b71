//! The unicast server: a tokio UDP socket driving a [`ServerCore`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand_core::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::fault::{self, Direction, Fault};
use crate::message::{MAX_DATAGRAM, MessageId};
use crate::server_core::{Handler, ServerCore, ServerSettings, ServerStats};
use crate::socket;

/// Where a server listens and how it behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    bind: SocketAddr,
    settings: ServerSettings,
    fault: Fault,
}

impl ServerConfig {
    /// A server on `bind` (use port 5683, the CoAP default, in deployments;
    /// port 0 picks a free port) with default settings.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            settings: ServerSettings::default(),
            fault: None,
        }
    }

    /// Replaces the settings (timing, block size, bounds).
    #[must_use]
    pub fn with_settings(mut self, settings: ServerSettings) -> Self {
        self.settings = settings;
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

    /// The settings.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }
}

/// A bound server, not yet running. [`CoapServer::spawn`] runs it.
pub struct CoapServer {
    socket: tokio::net::UdpSocket,
    core: ServerCore,
    handler: Arc<dyn Handler>,
    fault: Fault,
}

impl std::fmt::Debug for CoapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapServer")
            .field("local_addr", &self.socket.local_addr().ok())
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl CoapServer {
    /// Binds the socket (inside a tokio runtime).
    pub async fn bind(config: ServerConfig, handler: impl Handler) -> Result<Self> {
        let socket = socket::unicast(config.bind)?;
        let first_mid = MessageId::new(rand_core::UnwrapErr(getrandom::SysRng).next_u32() as u16);
        Ok(Self {
            socket,
            core: ServerCore::new(config.settings, first_mid),
            handler: Arc::new(handler),
            fault: config.fault,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Runs the server on a tokio task until the handle is dropped or
    /// [`ServerHandle::shutdown`] is called.
    pub fn spawn(self) -> Result<ServerHandle> {
        let local_addr = self.local_addr()?;
        let (tx, rx) = watch::channel(ServerStats::default());
        let task = tokio::spawn(self.run(tx));
        Ok(ServerHandle {
            task,
            local_addr,
            stats: rx,
        })
    }

    async fn run(mut self, stats: watch::Sender<ServerStats>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                // ICMP errors for earlier replies can surface here; they
                // concern a datagram already gone, so keep serving (after a
                // pause, so a persistent error cannot spin the task).
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
            };
            let datagram = &buf[..n];
            if fault::dropped(&self.fault, Direction::Incoming, datagram) {
                continue;
            }
            let reply =
                self.core
                    .handle_datagram(datagram, peer, Instant::now(), self.handler.as_ref());
            if let Some(reply) = reply
                && !fault::dropped(&self.fault, Direction::Outgoing, &reply)
            {
                // A failed send is the same as a lost datagram: the
                // client retransmits and the cache answers.
                let _ = self.socket.send_to(&reply, peer).await;
            }
            stats.send_replace(self.core.stats());
        }
    }
}

/// A running server. Dropping it stops the server.
#[derive(Debug)]
pub struct ServerHandle {
    task: JoinHandle<()>,
    local_addr: SocketAddr,
    stats: watch::Receiver<ServerStats>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters after the last datagram processed.
    pub fn stats(&self) -> ServerStats {
        *self.stats.borrow()
    }

    /// Stops the server.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

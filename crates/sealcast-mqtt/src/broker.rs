//! The embedded default broker: rumqttd, started in-process, listening on
//! 127.0.0.1 only.
//!
//! For the demo and the tests on a fresh machine; a deployment uses
//! Mosquitto, EMQX or any MQTT 3.1.1/5 broker (see the crate README).
//!
//! rumqttd's traits, and how this wrapper deals with them:
//!
//! - **It cannot report its bound port.** [`EmbeddedBroker::start`] binds
//!   `127.0.0.1:0`, reads the port the kernel chose, releases it and hands it
//!   to rumqttd. Another process could take the port in between; the
//!   wrapper notices (rumqttd's listener thread ends) and retries with a new
//!   port, a bounded number of times.
//! - **It has no shutdown.** The router and listener threads run until the
//!   process exits; dropping an [`EmbeddedBroker`] does not stop them. Start
//!   one per process (or per test) and let it live; do not start brokers in
//!   a loop.
//! - **Its in-process link (`Broker::link`) needs `ready()` calls** before it
//!   delivers notifications. This wrapper does not use the link: every
//!   client, local or not, speaks MQTT over TCP to the listener, so the same
//!   code path serves the embedded broker and Mosquitto.
//! - It keeps persistent sessions (`clean_session = false`) in memory only:
//!   they survive a client's reconnect, not a restart of the process.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{debug, warn};

use crate::config::DEFAULT_MAX_PACKET;
use crate::error::{Error, Result};

const START_ATTEMPTS: usize = 3;
const READY_WITHIN: Duration = Duration::from_secs(5);
const READY_POLL: Duration = Duration::from_millis(20);

/// An in-process rumqttd broker on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts a broker on a free port of 127.0.0.1 and returns once it
    /// accepts TCP connections (within a few seconds, or an error). Blocks
    /// the calling thread while it waits.
    pub fn start() -> Result<EmbeddedBroker> {
        let mut last = String::from("no attempt made");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            match start_on(port) {
                Ok(broker) => return Ok(broker),
                Err(e) => {
                    warn!(attempt, port, error = %e, "embedded broker did not start; trying another port");
                    last = e.to_string();
                }
            }
        }
        Err(Error::Broker(format!(
            "no listener after {START_ATTEMPTS} attempts: {last}"
        )))
    }

    /// The port it listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:<port>`, for [`crate::MqttConfig::from_url`].
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Binds 127.0.0.1:0, reads the chosen port and releases it.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn config(addr: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: DEFAULT_MAX_PACKET,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "sealcast-embedded-v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

fn start_on(port: u16) -> Result<EmbeddedBroker> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let cfg = config(addr);
    let thread = std::thread::Builder::new()
        .name(format!("sealcast-rumqttd-{port}"))
        .spawn(move || {
            let mut broker = Broker::new(cfg);
            // Returns only when every listener thread has ended (for
            // example, the port was taken): that is how failure shows.
            if let Err(e) = broker.start() {
                warn!(error = %e, "embedded broker stopped");
            }
        })?;
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if thread.is_finished() {
            return Err(Error::Broker(format!("listener on {addr} ended at start")));
        }
        if TcpStream::connect_timeout(&addr, READY_POLL).is_ok() {
            // Someone listens. Make sure it is our listener and not another
            // process that took the port: ours would have ended by now.
            std::thread::sleep(READY_POLL);
            if thread.is_finished() {
                return Err(Error::Broker(format!("port {port} was taken")));
            }
            debug!(%addr, "embedded broker listening");
            return Ok(EmbeddedBroker {
                addr,
                _thread: thread,
            });
        }
        std::thread::sleep(READY_POLL);
    }
    Err(Error::Broker(format!(
        "no listener on {addr} within {READY_WITHIN:?}"
    )))
}

//! Client configuration: where the broker is, who we are, what we
//! subscribe to and how we reconnect.

use core::fmt;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::topic::TopicFilter;

/// Default largest MQTT packet, both directions: a key delivery or a rekey
/// may carry up to 1 MiB of group key material
/// (`sealcast_core::groupkey::MAX_MATERIAL_LEN`), plus headers.
pub const DEFAULT_MAX_PACKET: usize = (1 << 20) + 16 * 1024;

/// Default number of our own QoS 1 publishes in flight (sent, not yet
/// acknowledged by the broker). Half of the default replay window of 64:
/// after a reconnect the client re-sends at most this many old messages, so
/// a re-sent one never lags so far behind newer ones that a receiver's
/// window has already forgotten it.
pub const DEFAULT_INFLIGHT: u16 = 32;

const MAX_CLIENT_ID_LEN: usize = 128;
const MAX_HOST_LEN: usize = 253;

/// Username and password for brokers that require them. `Debug` does not
/// show the password.
#[derive(Clone)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to reach the broker and behave on the connection.
///
/// Build with [`MqttConfig::new`] or [`MqttConfig::from_url`], then adjust
/// with the `with_*` methods; values are checked when the client connects.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) client_id: String,
    pub(crate) persistent_session: bool,
    pub(crate) keep_alive: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) inflight: u16,
    pub(crate) max_packet: usize,
    pub(crate) request_capacity: usize,
    pub(crate) incoming_capacity: usize,
    pub(crate) backoff: Backoff,
    pub(crate) subscriptions: Vec<TopicFilter>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls: Option<crate::tls::TlsSettings>,
    /// The URL said `mqtts://`: connecting without [`MqttConfig::with_tls`]
    /// settings is refused rather than silently falling back to plain TCP.
    pub(crate) tls_required: bool,
}

impl MqttConfig {
    /// A configuration for the broker at `host:port`, as MQTT client
    /// `client_id`, with a clean session and no subscriptions.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            persistent_session: false,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            inflight: DEFAULT_INFLIGHT,
            max_packet: DEFAULT_MAX_PACKET,
            request_capacity: 64,
            incoming_capacity: 256,
            backoff: Backoff::default(),
            subscriptions: Vec::new(),
            credentials: None,
            tls: None,
            tls_required: false,
        }
    }

    /// Parses a broker URL: `mqtt://host[:port]` (or `tcp://`; default port
    /// 1883) or `mqtts://host[:port]` (or `ssl://`; default port 8883; TLS),
    /// IPv6 literals in brackets, optional `user[:password]@` and the query
    /// parameters of [`crate::tls`] (`ca`, `cert`, `key`, `username`,
    /// `password_file`), which are read here. A username without a password
    /// takes it from `password_file` or [`crate::tls::PASSWORD_ENV`].
    pub fn from_url(url: &str, client_id: impl Into<String>) -> Result<Self> {
        let (host, port, security) = parse_url(url)?;
        let client_id = match &security.client_id {
            Some(id) => id.clone(),
            None => client_id.into(),
        };
        let mut config = Self::new(host, port, client_id);
        if let Some(ca) = &security.ca {
            let mut tls = crate::tls::TlsSettings::from_ca_file(ca)?;
            match (&security.cert, &security.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.with_client_auth(
                        crate::tls::read_file(cert, "client certificate")?,
                        crate::tls::read_file(key, "client key")?,
                    );
                }
                (None, None) => {}
                _ => {
                    return Err(Error::InvalidConfig(
                        "a client certificate needs both cert= and key=",
                    ));
                }
            }
            config.tls = Some(tls);
        } else if security.cert.is_some() || security.key.is_some() {
            return Err(Error::InvalidConfig("cert= and key= need ca= and mqtts://"));
        }
        if config.tls.is_some() && !security.tls {
            return Err(Error::InvalidConfig(
                "ca= is for mqtts:// URLs; use mqtts://host:8883?ca=…",
            ));
        }
        config.tls_required = security.tls;
        if let Some(username) = security.username {
            let password = match (security.password, &security.password_file) {
                (Some(p), _) => p,
                (None, Some(file)) => crate::tls::read_password(file)?,
                (None, None) => zeroize::Zeroizing::new(
                    std::env::var(crate::tls::PASSWORD_ENV).unwrap_or_default(),
                ),
            };
            config.credentials = Some(Credentials {
                username,
                password: password.to_string(),
            });
        }
        Ok(config)
    }

    /// TLS to the broker with these settings (implied by an `mqtts://` URL
    /// with `ca=`).
    pub fn with_tls(mut self, tls: crate::tls::TlsSettings) -> Self {
        self.tls = Some(tls);
        self.tls_required = true;
        self
    }

    /// Keep the MQTT session across disconnections (`clean_session =
    /// false`): the broker keeps our subscriptions and queues QoS 1
    /// messages while we are away, and redelivers what we had not
    /// acknowledged. Needs a client id that is stable across restarts and
    /// unique in the fleet.
    pub fn with_persistent_session(mut self, persistent: bool) -> Self {
        self.persistent_session = persistent;
        self
    }

    /// Subscribe to `filter` (QoS 1) on every new session.
    pub fn with_subscription(mut self, filter: TopicFilter) -> Self {
        self.subscriptions.push(filter);
        self
    }

    /// MQTT keep-alive: whole seconds from 1 s to 65 535 s, or zero for none.
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// How long one connection attempt (TCP and CONNACK) may take: whole
    /// seconds, at least 1.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest number of our QoS 1 publishes awaiting the broker's PUBACK
    /// (1 to 65 535; default [`DEFAULT_INFLIGHT`]).
    pub fn with_inflight(mut self, inflight: u16) -> Self {
        self.inflight = inflight;
        self
    }

    /// Largest MQTT packet sent or accepted (default [`DEFAULT_MAX_PACKET`]).
    pub fn with_max_packet(mut self, bytes: usize) -> Self {
        self.max_packet = bytes;
        self
    }

    /// Capacity of the queue between the API and the connection task
    /// (publishes and acknowledgements waiting to be written; default 64).
    pub fn with_request_capacity(mut self, capacity: usize) -> Self {
        self.request_capacity = capacity;
        self
    }

    /// Capacity of the queue of received messages not yet taken by
    /// [`crate::Subscription::next_message`] (default 256). When it is full
    /// the connection task waits, so a subscriber must keep reading.
    pub fn with_incoming_capacity(mut self, capacity: usize) -> Self {
        self.incoming_capacity = capacity;
        self
    }

    /// Reconnect schedule.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Username and password.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The broker's host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The subscriptions made on every new session.
    pub fn subscriptions(&self) -> &[TopicFilter] {
        &self.subscriptions
    }

    /// Checks every value that the MQTT client library would otherwise
    /// assert on (and panic).
    pub(crate) fn validate(&self) -> Result<()> {
        if self.host.is_empty() || self.host.len() > MAX_HOST_LEN {
            return Err(Error::InvalidConfig("host"));
        }
        if self.port == 0 {
            return Err(Error::InvalidConfig("port 0"));
        }
        if self.client_id.is_empty()
            || self.client_id.len() > MAX_CLIENT_ID_LEN
            || !self.client_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::InvalidConfig(
                "client id must be 1 to 128 printable ASCII characters without spaces",
            ));
        }
        if !self.keep_alive.is_zero()
            && (self.keep_alive < Duration::from_secs(1)
                || self.keep_alive.subsec_nanos() != 0
                || self.keep_alive > Duration::from_secs(u64::from(u16::MAX)))
        {
            return Err(Error::InvalidConfig(
                "keep-alive must be whole seconds from 1 to 65535, or zero",
            ));
        }
        if self.connect_timeout < Duration::from_secs(1) {
            return Err(Error::InvalidConfig("connect timeout below one second"));
        }
        if self.inflight == 0 {
            return Err(Error::InvalidConfig("inflight must be at least 1"));
        }
        if self.max_packet < 1024 {
            return Err(Error::InvalidConfig("max packet below 1 KiB"));
        }
        if self.request_capacity == 0 || self.incoming_capacity == 0 {
            return Err(Error::InvalidConfig("queue capacities must be at least 1"));
        }
        if self.backoff.initial > self.backoff.max {
            return Err(Error::InvalidConfig("backoff initial above max"));
        }
        if self.tls_required && self.tls.is_none() {
            return Err(Error::InvalidConfig(
                "mqtts:// needs the broker's CA certificate: add ?ca=PATH to the URL (or tls_ca in the config)",
            ));
        }
        Ok(())
    }
}

fn parse_url(url: &str) -> Result<(String, u16, crate::tls::UrlSecurity)> {
    if url.len() > 2048 {
        return Err(Error::InvalidConfig("URL too long"));
    }
    let mut security = crate::tls::UrlSecurity::default();
    let rest = if let Some(r) = url.strip_prefix("mqtt://") {
        r
    } else if let Some(r) = url.strip_prefix("tcp://") {
        r
    } else if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        security.tls = true;
        r
    } else {
        return Err(Error::InvalidConfig(
            "URL must start with mqtt://, tcp://, mqtts:// or ssl://",
        ));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if let Some(q) = query {
        crate::tls::parse_query(q, &mut security)?;
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(Error::InvalidConfig("empty username in the URL"));
            }
            security.username = Some(crate::tls::percent_decode(user)?);
            security.password = password
                .map(crate::tls::percent_decode)
                .transpose()?
                .map(zeroize::Zeroizing::new);
            host
        }
        None => authority,
    };
    if authority.contains(['/', '#', '@']) {
        return Err(Error::InvalidConfig(
            "URL must be mqtt[s]://[user@]host[:port][?parameters] (no path)",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or(Error::InvalidConfig("unclosed IPv6 literal"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(Error::InvalidConfig("junk after IPv6 literal"))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(Error::InvalidConfig("URL without a host"));
    }
    let port = match port {
        None if security.tls => 8883,
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(Error::InvalidConfig("port must be 1 to 65535"))?,
    };
    Ok((host.to_owned(), port, security))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883),
            ("mqtt://127.0.0.1", "127.0.0.1", 1883),
            ("tcp://broker.example:11883/", "broker.example", 11883),
            ("mqtt://[::1]:1884", "::1", 1884),
            ("mqtt://[::1]", "::1", 1883),
        ];
        for (url, host, port) in ok {
            let (h, p, sec) = parse_url(url).unwrap();
            assert_eq!((h, p), (host.to_owned(), port), "{url}");
            assert!(!sec.tls);
        }
        for bad in [
            "",
            "127.0.0.1:1883",
            "http://x",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://x:0",
            "mqtt://x:65536",
            "mqtt://x:port",
            "mqtt://x/path",
            "mqtt://@x",
            "mqtt://x?password=y",
            "mqtts://x?ca=%zz",
            "mqtt://[::1",
            "mqtt://[::1]x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
        assert!(parse_url(&format!("mqtt://{}", "h".repeat(3000))).is_err());
        let (host, port, sec) = parse_url("mqtts://dev:p%40ss@b.example?ca=ca.pem").unwrap();
        assert_eq!((host.as_str(), port), ("b.example", 8883));
        assert!(sec.tls);
        assert_eq!(sec.username.as_deref(), Some("dev"));
        assert_eq!(sec.password.as_deref().map(String::as_str), Some("p@ss"));
        // mqtts:// without a CA is refused when the client connects.
        let cfg = MqttConfig::from_url("mqtts://127.0.0.1", "c").unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn validation() {
        let base = MqttConfig::new("127.0.0.1", 1883, "c-1");
        assert!(base.validate().is_ok());
        assert!(
            base.clone()
                .with_keep_alive(Duration::ZERO)
                .validate()
                .is_ok()
        );
        for bad in [
            MqttConfig::new("", 1883, "c"),
            MqttConfig::new("h", 0, "c"),
            MqttConfig::new("h", 1, ""),
            MqttConfig::new("h", 1, "with space"),
            MqttConfig::new("h", 1, "x".repeat(129)),
            base.clone().with_keep_alive(Duration::from_millis(500)),
            base.clone().with_keep_alive(Duration::from_millis(1500)),
            base.clone().with_keep_alive(Duration::from_secs(70_000)),
            base.clone().with_connect_timeout(Duration::from_millis(10)),
            base.clone().with_inflight(0),
            base.clone().with_max_packet(10),
            base.clone().with_request_capacity(0),
            base.clone().with_incoming_capacity(0),
            base.clone().with_backoff(Backoff {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(1),
                max_attempts: None,
            }),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_stays_out_of_debug() {
        let c = MqttConfig::new("h", 1, "c").with_credentials(Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        });
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

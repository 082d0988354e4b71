//! The transport part of the services' config files: `broker` with its TLS
//! and credential settings, or `transport = "coap"` with its `[coap]`
//! section (endpoint, group, address book) and `[coap.bearer]` (the
//! MBMS-like bearer), turned into the runtimes' `LinkConfig`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sealcast_node::link::{AddressBook, CoapLinkConfig, LinkConfig};
use sealcast_store::DeviceStateFile;
use serde::Deserialize;

use super::{entity, failed, resolve};
use crate::cmd::{load_private_key, load_public_key};
use crate::error::{CliError, Result};

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportName {
    Mqtt,
    Coap,
    Onem2m,
}

/// `[onem2m]`: the deployment's CSEs (`<CSEBase>` URLs) and how to talk
/// to them. The manager registers on `infrastructure`, every other entity
/// on `field` (or on `infrastructure` when there is one CSE).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OneM2mSection {
    /// The IN-CSE (`http://127.0.0.1:8080/cse-in`).
    pub(crate) infrastructure: String,
    /// The MN-CSE (`http://127.0.0.1:8081/cse-mn`).
    pub(crate) field: Option<String>,
    /// `"json"` (default) or `"cbor"`.
    pub(crate) serialization: Option<String>,
    /// `"sp-relative"` (default) or `"absolute"`.
    pub(crate) addressing: Option<String>,
    /// Where this entity's notification listener binds (default
    /// `127.0.0.1:0`, a free port; the CSE learns it as the AE's point of
    /// access).
    pub(crate) listen: Option<std::net::SocketAddr>,
}

/// `[coap]`: where this entity listens, the group of the group channels,
/// the interface multicast is pinned to, and where the others listen.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CoapSection {
    /// This entity's unicast endpoint (`127.0.0.1:5701`).
    pub(crate) listen: std::net::SocketAddr,
    /// The IPv4 multicast group and port (`224.0.1.187:5683`).
    pub(crate) group: std::net::SocketAddr,
    /// The interface (by IPv4 address) multicast leaves by and is joined
    /// on; default `127.0.0.1`. Never left to the default route.
    pub(crate) multicast_interface: Option<std::net::Ipv4Addr>,
    /// `[[coap.endpoint]] id = "...", address = "..."`: the manager lists
    /// its agents (and devices without one), a node the manager, an agent
    /// also the devices it relays for.
    #[serde(default)]
    endpoint: Vec<EndpointEntry>,
    /// `[coap.bearer]`: the group channels run on the MBMS-like bearer.
    pub(crate) bearer: Option<BearerSection>,
}

/// `[coap.bearer]`: this entity's place on the bearer. The service (the
/// gateway agent) names `devices_dir`; a device names the `service` and its
/// `service_public_key`; the manager names only the `service`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BearerSection {
    /// The bearer service's entity id (devices and the manager).
    pub(crate) service: Option<String>,
    /// The service's public key file (devices: their MUK with it).
    pub(crate) service_public_key: Option<PathBuf>,
    /// The service: every `*.pub` in this directory is an entitled device;
    /// remove one and send SIGHUP to revoke it.
    pub(crate) devices_dir: Option<PathBuf>,
    /// The service: how often every entitled device gets the MSK again
    /// (seconds; default 60).
    pub(crate) redeliver_s: Option<u64>,
}

/// What a bearer service re-reads on SIGHUP.
pub(crate) struct BearerReload {
    pub(crate) control: sealcast_node::link::bearer::BearerControl,
    pub(crate) devices_dir: PathBuf,
}

/// Every `*.pub` of `dir`: the devices a bearer service entitles.
pub(crate) fn bearer_devices(
    dir: &Path,
) -> Result<Vec<sealcast_core::credential::PublicCredential>> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError::io("list directory", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| CliError::io("list directory", dir, e))?
            .path();
        if path.extension().is_some_and(|x| x == "pub") {
            out.push(load_public_key(&path)?);
        }
    }
    out.sort_by(|a, b| a.id().cmp(b.id()));
    Ok(out)
}

/// The bearer role a `[coap.bearer]` section gives the entity whose key
/// file is `key` (relative paths against `base`), and for a service what
/// SIGHUP re-reads.
pub(crate) fn bearer_role(
    section: &BearerSection,
    key: &Path,
    base: &Path,
    state_dir: &Path,
) -> Result<(
    sealcast_node::link::bearer::BearerRole,
    Option<BearerReload>,
)> {
    use sealcast_node::link::bearer::{BearerRole, DEFAULT_REDELIVER, ServiceSetup};
    let own = load_private_key(key)?;
    match (
        &section.devices_dir,
        &section.service,
        &section.service_public_key,
    ) {
        (Some(dir), None, None) => {
            let dir = resolve(base, dir);
            let devices = bearer_devices(&dir)?;
            let redeliver = section
                .redeliver_s
                .map_or(DEFAULT_REDELIVER, std::time::Duration::from_secs);
            let (setup, control) = ServiceSetup::new(
                devices,
                Arc::new(move |d: &sealcast_core::credential::PublicCredential| {
                    sealcast_bearer::Muk::for_service(&own, d)
                }),
                redeliver,
                Some(DeviceStateFile::new(state_dir.join("bearer.cbor"))),
            );
            Ok((
                BearerRole::Service(setup),
                Some(BearerReload {
                    control,
                    devices_dir: dir,
                }),
            ))
        }
        (None, Some(service), Some(public)) => {
            let service_pub = load_public_key(&resolve(base, public))?;
            if service_pub.id().as_str() != service {
                return Err(CliError::usage(format!(
                    "[coap.bearer] service_public_key is {}'s, not the service {service}'s",
                    service_pub.id()
                )));
            }
            Ok((
                BearerRole::Member {
                    service: entity(service)?,
                    muk: Arc::new(move || sealcast_bearer::Muk::for_device(&own, &service_pub)),
                },
                None,
            ))
        }
        (None, Some(service), None) => Ok((
            BearerRole::Sender {
                service: entity(service)?,
            },
            None,
        )),
        _ => Err(CliError::usage(
            "[coap.bearer]: the service sets devices_dir (alone); a device sets service and service_public_key; the manager sets service",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    id: String,
    address: std::net::SocketAddr,
}

/// The broker security settings of a config file.
#[derive(Debug, Default)]
pub(crate) struct BrokerSecurity<'a> {
    pub(crate) ca: Option<&'a Path>,
    pub(crate) cert: Option<&'a Path>,
    pub(crate) key: Option<&'a Path>,
    pub(crate) username: Option<&'a str>,
    pub(crate) password_file: Option<&'a Path>,
    pub(crate) client_id: Option<&'a str>,
}

/// The security fields of any config struct that has them.
macro_rules! broker_security {
    ($c:expr) => {
        $crate::cmd::serve::transport::BrokerSecurity {
            ca: $c.tls_ca.as_deref(),
            cert: $c.tls_cert.as_deref(),
            key: $c.tls_key.as_deref(),
            username: $c.username.as_deref(),
            password_file: $c.password_file.as_deref(),
            client_id: None,
        }
    };
    ($c:expr, client_id) => {
        $crate::cmd::serve::transport::BrokerSecurity {
            client_id: $c.mqtt_client_id.as_deref(),
            ..broker_security!($c)
        }
    };
}
pub(crate) use broker_security;

/// `broker` with the config's TLS and credential settings added as URL
/// parameters (paths resolved against the config's directory), the form
/// MQTT adapter reads. Secrets stay in their
/// files; the URL carries paths.
pub(crate) fn broker_url(
    broker: &str,
    base: &Path,
    security: &BrokerSecurity<'_>,
) -> Result<String> {
    use sealcast_node::link::mqtt::percent_encode as encode;
    let mut params = Vec::new();
    let path_param = |name: &str, p: Option<&Path>| -> Result<Option<String>> {
        p.map(|p| {
            let resolved = resolve(base, p);
            let text = resolved.to_str().ok_or_else(|| {
                CliError::usage(format!(
                    "{name}: the path {} is not UTF-8",
                    resolved.display()
                ))
            })?;
            Ok(format!("{name}={}", encode(text)))
        })
        .transpose()
    };
    params.extend(path_param("ca", security.ca)?);
    params.extend(path_param("cert", security.cert)?);
    params.extend(path_param("key", security.key)?);
    params.extend(path_param("password_file", security.password_file)?);
    if let Some(u) = security.username {
        params.push(format!("username={}", encode(u)));
    }
    if let Some(c) = security.client_id {
        params.push(format!("client_id={}", encode(c)));
    }
    if params.is_empty() || broker.is_empty() {
        return Ok(broker.to_owned());
    }
    if security.ca.is_some() && !(broker.starts_with("mqtts://") || broker.starts_with("ssl://")) {
        return Err(CliError::usage(format!(
            "tls_ca is set but broker {} is not an mqtts:// URL",
            sealcast_node::link::mqtt::redact_url(broker)
        )));
    }
    let sep = if broker.contains('?') { '&' } else { '?' };
    Ok(format!("{broker}{sep}{}", params.join("&")))
}

/// The transport a config file names.
pub(crate) fn link_config(
    transport: Option<TransportName>,
    broker: &str,
    coap: Option<&CoapSection>,
    onem2m: Option<(&OneM2mSection, &sealcast_core::ids::EntityId)>,
) -> Result<LinkConfig> {
    let transport = transport.unwrap_or(TransportName::Mqtt);
    match (transport, onem2m) {
        (TransportName::Onem2m, None) => {
            return Err(CliError::usage(
                "transport = \"onem2m\" needs an [onem2m] section (infrastructure, field)",
            ));
        }
        (TransportName::Onem2m, Some(_)) if !broker.is_empty() || coap.is_some() => {
            return Err(CliError::usage(
                "`broker` and [coap] are not for transport = \"onem2m\"",
            ));
        }
        (TransportName::Onem2m, Some((section, manager))) => {
            return onem2m_link(section, manager);
        }
        (_, Some(_)) => {
            return Err(CliError::usage(
                "an [onem2m] section needs transport = \"onem2m\"",
            ));
        }
        (_, None) => {}
    }
    match (transport, coap) {
        (TransportName::Onem2m, _) => Err(CliError::usage("transport = \"onem2m\"")),
        // The services keep their MQTT sessions across restarts, so
        // nothing routed to them while they (or the broker) restart is lost.
        (TransportName::Mqtt, None) if !broker.is_empty() => {
            Ok(LinkConfig::mqtt(broker).with_persistent_session(true))
        }
        (TransportName::Mqtt, None) => Err(CliError::usage(
            "`broker` is required (or set transport = \"coap\" and a [coap] section)",
        )),
        (TransportName::Mqtt, Some(_)) => Err(CliError::usage(
            "a [coap] section needs transport = \"coap\"",
        )),
        (TransportName::Coap, None) => Err(CliError::usage(
            "transport = \"coap\" needs a [coap] section (listen, group, endpoints)",
        )),
        (TransportName::Coap, Some(_)) if !broker.is_empty() => {
            Err(CliError::usage("`broker` is for transport = \"mqtt\""))
        }
        (TransportName::Coap, Some(c)) => {
            if !c.group.ip().is_multicast() || !c.group.is_ipv4() {
                return Err(CliError::usage(
                    "[coap] group must be an IPv4 multicast address and port",
                ));
            }
            let book = AddressBook::new();
            for e in &c.endpoint {
                book.insert(entity(&e.id)?, e.address);
            }
            let mut link = CoapLinkConfig::loopback(c.group.port(), book)
                .map_err(|e| failed("CoAP settings", e))?
                .listening_on(c.listen);
            link.group = c.group;
            link.interface = sealcast_node::link::MulticastInterface::V4(
                c.multicast_interface
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST),
            );
            Ok(LinkConfig::Coap(link))
        }
    }
}

/// The oneM2M link of an `[onem2m]` section.
fn onem2m_link(
    section: &OneM2mSection,
    manager: &sealcast_core::ids::EntityId,
) -> Result<LinkConfig> {
    for url in std::iter::once(&section.infrastructure).chain(&section.field) {
        if !url.starts_with("http://") && !url.starts_with("mqtt://") {
            return Err(CliError::usage(format!(
                "[onem2m] CSE URL {url} must be http://host:port/<CSEBase name> (HTTP binding) or mqtt://broker:port/<CSE-ID>/<CSEBase name> (MQTT binding)"
            )));
        }
    }
    let mut link = sealcast_node::link::OneM2mLinkConfig::new(
        &section.infrastructure,
        section.field.as_deref(),
        manager.clone(),
    );
    if let Some(s) = &section.serialization {
        link.serialization = sealcast_onem2m::Serialization::parse(s).ok_or_else(|| {
            CliError::usage("[onem2m] serialization must be \"json\" or \"cbor\"")
        })?;
    }
    if let Some(a) = &section.addressing {
        link.addressing = sealcast_onem2m::Addressing::parse(a).ok_or_else(|| {
            CliError::usage("[onem2m] addressing must be \"sp-relative\" or \"absolute\"")
        })?;
    }
    if let Some(listen) = section.listen {
        link.listen = listen;
    }
    Ok(LinkConfig::OneM2m(link))
}

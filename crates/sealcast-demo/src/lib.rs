//! The end-to-end demos of sealcast, over real sockets on loopback:
//! [`fire_safety::fire_safety`] (a manager, a gateway agent, sensors, door
//! controllers and extinguishers, then the attacks) and
//! [`smart_meter::smart_meter`] (meters, a DAP and a headend), on MQTT or
//! CoAP. They wire up the same runtimes the services run
//! (`sealcast-node`) and check every expected action and every refusal;
//! `sealcast demo …` prints their reports and `sealcast bench` times them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod fire_safety;
pub mod fixture;
pub mod load;
pub mod smart_meter;

pub use fire_safety::{Check, DemoReport, Pipeline};
pub use sealcast_node::{Error, Result};

/// The topics a demo uses: the production scheme on its own embedded
/// broker; on an external broker (`external`), a prefix of its own,
/// `sealcast-demo-<pid>-<random>`, so a demo never publishes on, or hears,
/// a real deployment's topics — nor a second demo's.
pub fn demo_topics(external: bool) -> Result<sealcast_core::target::TopicScheme> {
    if !external {
        return Ok(sealcast_core::target::TopicScheme::new());
    }
    use rand_core::Rng;
    let tag = sealcast_node::runtime::os_rng()?.next_u32();
    Ok(sealcast_core::target::TopicScheme::with_prefix(&format!(
        "sealcast-demo-{}-{tag:08x}",
        std::process::id()
    ))?)
}

/// The demos' group manager (on oneM2M: the AE on the IN-CSE that also
/// hosts the groups on the field CSE).
pub const DEMO_MANAGER: &str = "manager";

/// Where a demo on oneM2M finds its CSEs, and how it talks to them.
#[derive(Clone, Debug, Default)]
pub struct OneM2mOptions {
    /// The IN-CSE's `<CSEBase>` URL and optionally the MN-CSE's
    /// (`http://127.0.0.1:8080/cse-in`).
    pub cse: Vec<String>,
    /// JSON or CBOR primitives.
    pub serialization: sealcast_onem2m::Serialization,
}

/// What a demo's links need kept alive while it runs (the embedded MQTT
/// broker, if it started one).
#[derive(Debug)]
pub struct DemoTransport {
    _broker: Option<sealcast_node::link::mqtt::EmbeddedBroker>,
}

/// The link configuration of a demo on `transport`: MQTT through `broker`
/// if given, else through an embedded broker on 127.0.0.1; CoAP on
/// loopback with a group port of its own. `log` hears where.
pub async fn demo_link(
    transport: sealcast_node::link::Transport,
    broker: Option<&str>,
    onem2m: &OneM2mOptions,
    infrastructure_entity: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(DemoTransport, sealcast_node::link::LinkConfig)> {
    use sealcast_node::link::{
        AddressBook, CoapLinkConfig, LinkConfig, OneM2mLinkConfig, Transport,
    };
    let cse = onem2m.cse.as_slice();
    if transport != Transport::OneM2m && !cse.is_empty() {
        return Err(Error::Runtime("a CSE is for the oneM2M transport".into()));
    }
    match transport {
        Transport::Mqtt => {
            let (embedded, url) = match broker {
                Some(url) => (None, url.to_owned()),
                None => {
                    let b = sealcast_node::link::mqtt::EmbeddedBroker::start().await?;
                    let url = b.url();
                    (Some(b), url)
                }
            };
            log(&format!(
                "MQTT broker at {}",
                sealcast_node::link::mqtt::redact_url(&url)
            ));
            Ok((DemoTransport { _broker: embedded }, LinkConfig::mqtt(url)))
        }
        Transport::Coap => {
            if broker.is_some() {
                return Err(Error::Runtime("a broker is for MQTT, not CoAP".into()));
            }
            let coap = CoapLinkConfig::loopback(
                sealcast_node::link::free_loopback_port()?,
                AddressBook::new(),
            )?;
            log(&format!(
                "CoAP: unicast CON endpoints on 127.0.0.1, group channels by multicast to {} pinned to 127.0.0.1",
                coap.group
            ));
            Ok((DemoTransport { _broker: None }, LinkConfig::Coap(coap)))
        }
        Transport::OneM2m => {
            if broker.is_some() {
                return Err(Error::Runtime("a broker is for MQTT, not oneM2M".into()));
            }
            let (infrastructure, field) = match cse {
                [i] => (i, None),
                [i, f] => (i, Some(f.as_str())),
                _ => {
                    return Err(Error::Runtime(
                        "the oneM2M transport needs the IN-CSE's URL and optionally the MN-CSE's (http://host:port/<CSEBase name>)".into(),
                    ));
                }
            };
            let mut config = OneM2mLinkConfig::new(
                infrastructure,
                field,
                sealcast_core::ids::EntityId::new(infrastructure_entity)?,
            );
            config.serialization = onem2m.serialization;
            log(&format!(
                "oneM2M over {} ({}): {infrastructure_entity} an AE on the IN-CSE {infrastructure}, everyone else AEs on {}; groups are <group> resources fanned out by the CSE",
                if infrastructure.starts_with("mqtt://") {
                    "MQTT"
                } else {
                    "HTTP"
                },
                onem2m.serialization.media_type(),
                field.unwrap_or("the same CSE")
            ));
            Ok((DemoTransport { _broker: None }, LinkConfig::OneM2m(config)))
        }
    }
}

/// A node as the demos and benchmarks run it: no rules, no relays, no state
/// file, no audit log, the default replay and access policies, commands
/// logged, bursts at the runtime's default. Callers change what differs
/// with struct update syntax.
pub(crate) fn plain_node(
    credential: sealcast_core::credential::EntityCredential,
    manager: sealcast_core::credential::PublicCredential,
    link: sealcast_node::link::LinkConfig,
    topics: sealcast_core::target::TopicScheme,
    events: sealcast_node::runtime::EventSink,
) -> sealcast_node::device::NodeConfig {
    sealcast_node::device::NodeConfig {
        credential,
        manager,
        link,
        topics,
        rules: Vec::new(),
        relays_for: Vec::new(),
        send_only: Default::default(),
        handler: std::sync::Arc::new(sealcast_node::device::LogHandler),
        events,
        state_file: None,
        no_key_warning: None,
        replay: sealcast_node::device::ReplayPolicies::default(),
        audit: None,
        accept_access_tokens: false,
        access: Default::default(),
        misbehaviour: Default::default(),
        max_burst: sealcast_node::device::BURST_MAX,
    }
}

//! The sealcast target scheme: the names messages travel under — MQTT
//! topics, CoAP Uri-Paths, and whatever a future transport uses — built
//! from typed ids and parsed back. Naming is not a transport's concern:
//! every adapter and runtime uses this one scheme, and a broadcast binds
//! the full name as its *target*.
//!
//! ```text
//! <root>/g/<group-hex>/cmd | alert | rekey | notice     per group
//! <root>/d/<entity>/delivery | pull | ack               per device
//! <root>/a/<agent>/report | batch                       per agent
//! ```
//!
//! `<root>` is `sealcast/v1`, optionally behind a prefix of the operator's
//! choosing (`site-7/sealcast/v1`; tests use a unique prefix per run). The
//! group id is written in lowercase hex, so each group has exactly one topic
//! per channel; entity ids are used as they are (their alphabet, `A-Z a-z
//! 0-9 . _ : -`, holds no MQTT separator or wildcard).
//!
//! The full topic string is what a broadcast binds as its *target*: a
//! receiver passes the topic it received on to
//! [`crate::broadcast::BroadcastReceiver::open`], so a command
//! re-published on another group's or channel's topic fails to open.
//!
//! Parsing is bounded: topics longer than [`MAX_TOPIC_LEN`] are refused
//! before they are split, at most four levels are looked at, and every
//! failure is an [`Error::InvalidTarget`], never a panic.

use core::fmt;

use crate::error::{Error, Result};
use crate::ids::{EntityId, GroupId};

/// Largest topic accepted (as the broadcast target limit of the core).
pub const MAX_TOPIC_LEN: usize = crate::broadcast::MAX_TARGET_LEN;
/// Largest topic filter accepted by [`TopicFilter::new`].
pub const MAX_FILTER_LEN: usize = 1024;
/// Largest prefix accepted by [`TopicScheme::with_prefix`].
pub const MAX_PREFIX_LEN: usize = 128;
/// The version level of the scheme; a future incompatible scheme moves to `v2`.
pub const SCHEME_ROOT: &str = "sealcast/v1";

const MAX_PREFIX_LEVELS: usize = 8;

/// What a group topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupChannel {
    /// `cmd`: signed-then-encrypted group commands (broadcasts).
    Command,
    /// `alert`: urgent broadcasts (fire alarms, load shedding).
    Alert,
    /// `rekey`: group rekey messages (LKH tree updates).
    Rekey,
    /// `notice`: group notices (epoch announcements, key-pull hints).
    Notice,
}

/// What a device topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceChannel {
    /// `delivery`: key deliveries addressed to the device.
    Delivery,
    /// `pull`: the device's requests for its current keys.
    Pull,
    /// `ack`: the device's acknowledgements of deliveries.
    Ack,
    /// `bearer`: MSK deliveries of the multicast bearer service to the
    /// device (CoAP with the bearer on).
    Bearer,
}

/// What an agent topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentChannel {
    /// `report`: single member reports (meter → agent / headend).
    Report,
    /// `batch`: batches of reports an agent verified together.
    Batch,
    /// `announce`: an agent's signed statement of the members it serves
    /// (a DAP to its headend).
    Announce,
    /// `solicit`: a signed request that the agent announce itself again
    /// (a headend after a restart).
    Solicit,
}

impl GroupChannel {
    /// Every group channel.
    pub const ALL: [GroupChannel; 4] = [
        GroupChannel::Command,
        GroupChannel::Alert,
        GroupChannel::Rekey,
        GroupChannel::Notice,
    ];

    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupChannel::Command => "cmd",
            GroupChannel::Alert => "alert",
            GroupChannel::Rekey => "rekey",
            GroupChannel::Notice => "notice",
        }
    }

    fn parse(level: &str) -> Result<Self> {
        GroupChannel::ALL
            .into_iter()
            .find(|c| c.as_str() == level)
            .ok_or(Error::InvalidTarget("unknown group channel"))
    }
}

impl DeviceChannel {
    /// Every device channel.
    pub const ALL: [DeviceChannel; 4] = [
        DeviceChannel::Delivery,
        DeviceChannel::Pull,
        DeviceChannel::Ack,
        DeviceChannel::Bearer,
    ];

    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChannel::Delivery => "delivery",
            DeviceChannel::Pull => "pull",
            DeviceChannel::Ack => "ack",
            DeviceChannel::Bearer => "bearer",
        }
    }

    fn parse(level: &str) -> Result<Self> {
        DeviceChannel::ALL
            .into_iter()
            .find(|c| c.as_str() == level)
            .ok_or(Error::InvalidTarget("unknown device channel"))
    }
}

impl AgentChannel {
    /// Every agent channel.
    pub const ALL: [AgentChannel; 4] = [
        AgentChannel::Report,
        AgentChannel::Batch,
        AgentChannel::Announce,
        AgentChannel::Solicit,
    ];

    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentChannel::Report => "report",
            AgentChannel::Batch => "batch",
            AgentChannel::Announce => "announce",
            AgentChannel::Solicit => "solicit",
        }
    }

    fn parse(level: &str) -> Result<Self> {
        AgentChannel::ALL
            .into_iter()
            .find(|c| c.as_str() == level)
            .ok_or(Error::InvalidTarget("unknown agent channel"))
    }
}

/// A parsed sealcast topic.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `<root>/g/<group-hex>/<channel>`.
    Group {
        /// The group.
        group: GroupId,
        /// The channel.
        channel: GroupChannel,
    },
    /// `<root>/d/<entity>/<channel>`.
    Device {
        /// The device.
        device: EntityId,
        /// The channel.
        channel: DeviceChannel,
    },
    /// `<root>/a/<agent>/<channel>`.
    Agent {
        /// The agent.
        agent: EntityId,
        /// The channel.
        channel: AgentChannel,
    },
}

/// An MQTT topic filter checked against the MQTT rules: not empty, at most
/// [`MAX_FILTER_LEN`] bytes, no NUL, `+` and `#` only as whole levels and `#`
/// only last. A shared subscription (`$share/<name>/<filter>`) is a filter
/// too.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Checks `filter` against the MQTT filter rules.
    pub fn new(filter: &str) -> Result<Self> {
        if filter.is_empty() {
            return Err(Error::InvalidTarget("empty filter"));
        }
        if filter.len() > MAX_FILTER_LEN {
            return Err(Error::InvalidTarget("filter too long"));
        }
        if filter.contains('\0') {
            return Err(Error::InvalidTarget("NUL in filter"));
        }
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if level.contains('#') && (level != "#" || !last) {
                return Err(Error::InvalidTarget(
                    "'#' must be a whole level and the last one",
                ));
            }
            if level.contains('+') && level != "+" {
                return Err(Error::InvalidTarget("'+' must be a whole level"));
            }
        }
        if let Some(rest) = filter.strip_prefix("$share/") {
            let (name, inner) = rest
                .split_once('/')
                .ok_or(Error::InvalidTarget("shared subscription without a filter"))?;
            if name.is_empty() || name.contains(['+', '#']) || inner.is_empty() {
                return Err(Error::InvalidTarget("malformed shared subscription"));
            }
        }
        Ok(Self(filter.to_owned()))
    }

    /// The filter as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This filter as a shared subscription of consumer group `name`
    /// (`$share/<name>/<filter>`, MQTT 5 and Mosquitto ≥ 1.6, EMQX, HiveMQ,
    /// rumqttd): the broker hands each message to one member of the group.
    pub fn shared(&self, name: &str) -> Result<Self> {
        if self.0.starts_with("$share/") {
            return Err(Error::InvalidTarget("filter is already shared"));
        }
        check_level(name, "invalid share name")?;
        Self::new(&format!("$share/{name}/{}", self.0))
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({})", self.0)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a topic *name* (what one publishes to): not empty, at most
/// [`MAX_TOPIC_LEN`] bytes, no wildcards, no NUL. Topics outside the sealcast
/// scheme are allowed here (bridges, test topics); [`TopicScheme::parse`]
/// is the strict check.
pub fn check_topic_name(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::InvalidTarget("empty topic"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Error::InvalidTarget("topic too long"));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(Error::InvalidTarget("wildcard or NUL in a topic name"));
    }
    Ok(())
}

/// One level of a prefix or a share name: the entity-id alphabet.
fn check_level(level: &str, why: &'static str) -> Result<()> {
    if level.is_empty()
        || level.len() > EntityId::MAX_LEN
        || !level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Error::InvalidTarget(why));
    }
    Ok(())
}

/// Builds and parses the topics of one deployment.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicScheme {
    /// `sealcast/v1` or `<prefix>/sealcast/v1`.
    root: String,
}

impl Default for TopicScheme {
    fn default() -> Self {
        Self {
            root: SCHEME_ROOT.to_owned(),
        }
    }
}

impl fmt::Debug for TopicScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicScheme({})", self.root)
    }
}

impl TopicScheme {
    /// The scheme rooted at `sealcast/v1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The scheme rooted at `<prefix>/sealcast/v1`. The prefix has 1 to 8
    /// levels separated by `/`, each 1 to 64 characters of `A-Z a-z 0-9 .
    /// _ : -`, at most [`MAX_PREFIX_LEN`] bytes in all (so it never starts
    /// with `$`, which brokers reserve).
    pub fn with_prefix(prefix: &str) -> Result<Self> {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::InvalidTarget("prefix length"));
        }
        let mut count = 0usize;
        for level in prefix.split('/') {
            count += 1;
            if count > MAX_PREFIX_LEVELS {
                return Err(Error::InvalidTarget("prefix has too many levels"));
            }
            check_level(level, "invalid prefix level")?;
        }
        Ok(Self {
            root: format!("{prefix}/{SCHEME_ROOT}"),
        })
    }

    /// The root all topics of this scheme start with.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The MQTT client id of `entity` in this deployment: the entity id,
    /// preceded by the topic prefix when there is one (`site-a:door-1`), so
    /// the same entity id under two prefixes on one broker are two clients
    /// instead of two connections that keep closing each other (`:` joins
    /// them: rumqttd, the embedded broker, breaks on `/` in client ids). Falls back
    /// to the entity id alone when the two would exceed 128 bytes.
    pub fn client_id(&self, entity: &str) -> String {
        match self.root.strip_suffix(&format!("/{SCHEME_ROOT}")) {
            Some(prefix) if prefix.len() + 1 + entity.len() <= 128 => {
                format!("{prefix}:{entity}")
            }
            _ => entity.to_owned(),
        }
    }

    /// The topic of `channel` of `group`: `<root>/g/<group-hex>/<channel>`.
    pub fn group(&self, group: &GroupId, channel: GroupChannel) -> String {
        format!("{}/g/{group}/{}", self.root, channel.as_str())
    }

    /// The topic of `channel` of `device`: `<root>/d/<entity>/<channel>`.
    pub fn device(&self, device: &EntityId, channel: DeviceChannel) -> String {
        format!("{}/d/{}/{}", self.root, device.as_str(), channel.as_str())
    }

    /// The topic of `channel` of `agent`: `<root>/a/<entity>/<channel>`.
    pub fn agent(&self, agent: &EntityId, channel: AgentChannel) -> String {
        format!("{}/a/{}/{}", self.root, agent.as_str(), channel.as_str())
    }

    /// The topic string of a parsed [`Topic`].
    pub fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::Group { group, channel } => self.group(group, *channel),
            Topic::Device { device, channel } => self.device(device, *channel),
            Topic::Agent { agent, channel } => self.agent(agent, *channel),
        }
    }

    /// Every channel of one group: `<root>/g/<group-hex>/+`.
    pub fn group_filter(&self, group: &GroupId) -> TopicFilter {
        TopicFilter(format!("{}/g/{group}/+", self.root))
    }

    /// One channel of every group: `<root>/g/+/<channel>` (an agent relaying
    /// all commands, a monitor).
    pub fn all_groups_filter(&self, channel: GroupChannel) -> TopicFilter {
        TopicFilter(format!("{}/g/+/{}", self.root, channel.as_str()))
    }

    /// Every channel of one device: `<root>/d/<entity>/+`.
    pub fn device_filter(&self, device: &EntityId) -> TopicFilter {
        TopicFilter(format!("{}/d/{}/+", self.root, device.as_str()))
    }

    /// One channel of every device: `<root>/d/+/<channel>` (the manager
    /// collecting pulls and acks).
    pub fn all_devices_filter(&self, channel: DeviceChannel) -> TopicFilter {
        TopicFilter(format!("{}/d/+/{}", self.root, channel.as_str()))
    }

    /// Every channel of one agent: `<root>/a/<entity>/+`.
    pub fn agent_filter(&self, agent: &EntityId) -> TopicFilter {
        TopicFilter(format!("{}/a/{}/+", self.root, agent.as_str()))
    }

    /// One channel of every agent: `<root>/a/+/<channel>` (a headend
    /// collecting reports; combine with [`TopicFilter::shared`] to spread
    /// them over several headend instances).
    pub fn all_agents_filter(&self, channel: AgentChannel) -> TopicFilter {
        TopicFilter(format!("{}/a/+/{}", self.root, channel.as_str()))
    }

    /// Parses a topic of this scheme. Bounded and total: any input gives a
    /// [`Topic`] or an [`Error::InvalidTarget`].
    pub fn parse(&self, topic: &str) -> Result<Topic> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(Error::InvalidTarget("topic too long"));
        }
        let rest = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(Error::InvalidTarget("not under this scheme's root"))?;
        // kind / id / channel, and nothing after: a fourth piece means extra levels.
        let mut parts = rest.splitn(4, '/');
        let kind = parts.next().unwrap_or_default();
        let id = parts
            .next()
            .ok_or(Error::InvalidTarget("missing id level"))?;
        let channel = parts
            .next()
            .ok_or(Error::InvalidTarget("missing channel level"))?;
        if parts.next().is_some() {
            return Err(Error::InvalidTarget("extra levels after the channel"));
        }
        match kind {
            "g" => Ok(Topic::Group {
                group: parse_group_hex(id)?,
                channel: GroupChannel::parse(channel)?,
            }),
            "d" => Ok(Topic::Device {
                device: parse_entity(id)?,
                channel: DeviceChannel::parse(channel)?,
            }),
            "a" => Ok(Topic::Agent {
                agent: parse_entity(id)?,
                channel: AgentChannel::parse(channel)?,
            }),
            _ => Err(Error::InvalidTarget("unknown topic kind (g, d or a)")),
        }
    }
}

fn parse_entity(level: &str) -> Result<EntityId> {
    EntityId::new(level).map_err(|_| Error::InvalidTarget("invalid entity id"))
}

/// Lowercase hex only: one spelling per group, so one topic per group.
fn parse_group_hex(level: &str) -> Result<GroupId> {
    let digits = level.as_bytes();
    if digits.is_empty() || !digits.len().is_multiple_of(2) || digits.len() > 2 * GroupId::MAX_LEN {
        return Err(Error::InvalidTarget("group id is not 1 to 32 bytes of hex"));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(Error::InvalidTarget("group id is not lowercase hex")),
    };
    let mut bytes = Vec::with_capacity(digits.len() / 2);
    for pair in digits.chunks_exact(2) {
        if let [hi, lo] = pair {
            bytes.push((nibble(*hi)? << 4) | nibble(*lo)?);
        }
    }
    GroupId::new(&bytes).map_err(|_| Error::InvalidTarget("invalid group id"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn gid(b: &[u8]) -> GroupId {
        GroupId::new(b).unwrap()
    }
    fn eid(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    #[test]
    fn build_and_parse_round_trip() {
        for scheme in [
            TopicScheme::new(),
            TopicScheme::with_prefix("site-7/run.1").unwrap(),
        ] {
            for channel in GroupChannel::ALL {
                let g = gid(&[0x00, 0xab, 0xff]);
                let t = scheme.group(&g, channel);
                assert!(t.starts_with(scheme.root()));
                assert!(t.contains("/g/00abff/"), "{t}");
                assert_eq!(
                    scheme.parse(&t).unwrap(),
                    Topic::Group { group: g, channel }
                );
                check_topic_name(&t).unwrap();
            }
            for channel in DeviceChannel::ALL {
                let d = eid("meter-17.a:b_c");
                let t = scheme.device(&d, channel);
                let parsed = scheme.parse(&t).unwrap();
                assert_eq!(parsed, Topic::Device { device: d, channel });
                assert_eq!(scheme.topic(&parsed), t);
            }
            for channel in AgentChannel::ALL {
                let a = eid("dap-3");
                let t = scheme.agent(&a, channel);
                assert_eq!(
                    scheme.parse(&t).unwrap(),
                    Topic::Agent { agent: a, channel }
                );
            }
        }
        assert_eq!(
            TopicScheme::new().group(&gid(b"\x01"), GroupChannel::Command),
            "sealcast/v1/g/01/cmd"
        );
        assert_eq!(
            TopicScheme::new().device(&eid("door-17"), DeviceChannel::Delivery),
            "sealcast/v1/d/door-17/delivery"
        );
        assert_eq!(
            TopicScheme::new().agent(&eid("dap-1"), AgentChannel::Batch),
            "sealcast/v1/a/dap-1/batch"
        );
    }

    #[test]
    fn largest_ids_fit_the_target_limit() {
        let prefix = format!("{}/{}", "p".repeat(63), "q".repeat(64));
        assert_eq!(prefix.len(), MAX_PREFIX_LEN);
        let scheme = TopicScheme::with_prefix(&prefix).unwrap();
        let g = gid(&[0xee; 32]);
        let t = scheme.group(&g, GroupChannel::Notice);
        assert!(t.len() <= MAX_TOPIC_LEN);
        assert_eq!(
            scheme.parse(&t).unwrap(),
            Topic::Group {
                group: g,
                channel: GroupChannel::Notice
            }
        );
        let e = eid(&"e".repeat(EntityId::MAX_LEN));
        let t = scheme.device(&e, DeviceChannel::Delivery);
        assert!(t.len() <= MAX_TOPIC_LEN);
        assert!(scheme.parse(&t).is_ok());
    }

    #[test]
    fn hostile_topics_are_refused() {
        let s = TopicScheme::new();
        let long = format!("sealcast/v1/d/{}/ack", "x".repeat(600));
        let bad = [
            "",
            "/",
            "sealcast/v1",
            "sealcast/v1/",
            "sealcast/v1/g",
            "sealcast/v1/g/",
            "sealcast/v1/g//cmd",
            "sealcast/v1/g/01",
            "sealcast/v1/g/01/",
            "sealcast/v1/g/01/cmd/",
            "sealcast/v1/g/01/cmd/extra",
            "sealcast/v1/g/1/cmd",
            "sealcast/v1/g/0A/cmd",
            "sealcast/v1/g/zz/cmd",
            "sealcast/v1/g/+/cmd",
            "sealcast/v1/g/01/+",
            "sealcast/v1/g/01/CMD",
            "sealcast/v1/g/01/delivery",
            "sealcast/v1/d/01/cmd",
            "sealcast/v1/d/.hidden/ack",
            "sealcast/v1/d/a b/ack",
            "sealcast/v1/d/é/ack",
            "sealcast/v1/a/dap/pull",
            "sealcast/v1/x/dap/report",
            "sealcast/v2/g/01/cmd",
            "sealcast/v1x/g/01/cmd",
            "other/sealcast/v1/g/01/cmd",
            long.as_str(),
        ];
        for t in bad {
            assert!(s.parse(t).is_err(), "{t:?} parsed");
        }
        let too_long_group = format!("sealcast/v1/g/{}/cmd", "00".repeat(33));
        assert!(s.parse(&too_long_group).is_err());
        // Under a prefix, the unprefixed topic is foreign and vice versa.
        let p = TopicScheme::with_prefix("run-1").unwrap();
        assert!(p.parse("sealcast/v1/g/01/cmd").is_err());
        assert!(s.parse("run-1/sealcast/v1/g/01/cmd").is_err());
        assert!(p.parse("run-1/sealcast/v1/g/01/cmd").is_ok());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        // A small deterministic sweep over awkward characters and lengths.
        let alphabet = [
            "/",
            "g",
            "d",
            "a",
            "0",
            "f",
            "+",
            "#",
            "\0",
            "é",
            "cmd",
            "sealcast/v1/",
        ];
        let s = TopicScheme::new();
        let mut state = 0x9e37_79b9_u64;
        for _ in 0..5000 {
            let mut t = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut x = state;
            for _ in 0..(x % 12) {
                t.push_str(alphabet[(x % alphabet.len() as u64) as usize]);
                x /= 7;
            }
            let _ = s.parse(&t);
        }
    }

    #[test]
    fn prefixes_are_checked() {
        for bad in ["", "a//b", "/a", "a/", "$SYS", "a+b", "a#", "sp ace", "é"] {
            assert!(TopicScheme::with_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(TopicScheme::with_prefix("a/".repeat(8).trim_end_matches('/')).is_ok());
        assert!(TopicScheme::with_prefix("a/".repeat(9).trim_end_matches('/')).is_err());
        assert!(TopicScheme::with_prefix(&"p".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }

    #[test]
    fn filters() {
        let s = TopicScheme::new();
        let g = gid(&[0x42]);
        assert_eq!(s.group_filter(&g).as_str(), "sealcast/v1/g/42/+");
        assert_eq!(
            s.all_groups_filter(GroupChannel::Command).as_str(),
            "sealcast/v1/g/+/cmd"
        );
        assert_eq!(
            s.device_filter(&eid("dev-1")).as_str(),
            "sealcast/v1/d/dev-1/+"
        );
        assert_eq!(
            s.all_devices_filter(DeviceChannel::Pull).as_str(),
            "sealcast/v1/d/+/pull"
        );
        assert_eq!(s.agent_filter(&eid("dap")).as_str(), "sealcast/v1/a/dap/+");
        let shared = s
            .all_agents_filter(AgentChannel::Report)
            .shared("headends")
            .unwrap();
        assert_eq!(shared.as_str(), "$share/headends/sealcast/v1/a/+/report");
        assert!(shared.shared("again").is_err());
        assert!(s.group_filter(&g).shared("a/b").is_err());
        // Every filter the scheme builds passes the generic check.
        for f in [s.group_filter(&g), s.agent_filter(&eid("dap")), shared] {
            assert_eq!(TopicFilter::new(f.as_str()).unwrap(), f);
        }
        for ok in ["#", "+", "a/+/b", "a/#", "+/+", "$share/g/a/#"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+/b",
            "a/b+",
            "\0",
            "$share/g",
            "$share//a",
            "$share/g/",
        ] {
            assert!(TopicFilter::new(bad).is_err(), "{bad:?}");
        }
        assert!(TopicFilter::new(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name("a/b").is_ok());
        for bad in ["", "a/+", "a/#", "a\0b"] {
            assert!(check_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_name(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }
}

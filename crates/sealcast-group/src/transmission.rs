//! Remote transmission control: the manager (IN) tells one field node to
//! stop or resume sending — everything, or named kinds (alerts, commands,
//! reports), optionally only for one group — end to end through agents
//! that cannot forge the order.
//!
//! | statement | signer | label | payload |
//! |---|---|---|---|
//! | order | manager | `sealcast transmission order v1` | `[manager, node, version, issued_ms, [scope …≤64]]` |
//! | order ack | node | `sealcast transmission ack v1` | `[node, manager, version]` |
//!
//! `scope = "all" / "alert" / "command" / [kind tstr, group bstr]`
//!
//! An order carries the node's **whole** desired state (the scopes that are
//! stopped; an empty list means "send everything"), not a change, under a
//! version that only grows per node. So a node applies an order only if its
//! version is above the one it holds, re-acknowledges the one it holds, and
//! refuses anything older: a replayed order cannot undo a newer one.
//! `issued_ms` is signed too and is renewed on every re-send of the same
//! version; a node refuses an order issued more than `max_age` away from its
//! clock, so an order captured long ago cannot be replayed to a node that
//! lost its state. A deactivated node keeps receiving, installing keys and
//! acknowledging: only the traffic its scopes name stops.

use std::collections::BTreeSet;

use ciborium::Value;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, GroupId, UnixMillis};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};

use crate::error::{Error, Result};

/// Label of transmission orders.
pub const LABEL_ORDER: &str = "sealcast transmission order v1";
/// Label of a node's acknowledgement of an order.
pub const LABEL_ORDER_ACK: &str = "sealcast transmission ack v1";
/// Largest order or ack accepted.
pub const MAX_ORDER_LEN: usize = 16 * 1024;
/// Most scopes in one order.
pub const MAX_SCOPES: usize = 64;

const BAD: Error = Error::Malformed("transmission order");

/// What a node sends that an order can stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxKind {
    /// Alerts a device broadcasts to a group.
    Alert,
    /// Commands a gateway (or device) broadcasts to a group.
    Command,
    /// Readings a meter reports to its headend (the headend, as the
    /// meters' manager, issues the order).
    Report,
}

impl TxKind {
    /// The kind's name on the wire and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            TxKind::Alert => "alert",
            TxKind::Command => "command",
            TxKind::Report => "report",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alert" => TxKind::Alert,
            "command" => TxKind::Command,
            "report" => TxKind::Report,
            _ => return None,
        })
    }
}

/// One stopped scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Everything the node sends (acks and pulls excepted).
    All,
    /// One kind, to every group.
    Kind(TxKind),
    /// One kind, to one group.
    KindInGroup(TxKind, GroupId),
}

impl Scope {
    /// Parses the command-line form: `all`, `alert`, `command`, or `<kind>:<group>` (`command:fire-doors`).
    pub fn parse(text: &str) -> Result<Self> {
        if text == "all" {
            return Ok(Scope::All);
        }
        let (kind, group) = match text.split_once(':') {
            Some((k, g)) => (k, Some(g)),
            None => (text, None),
        };
        let kind = TxKind::parse(kind).ok_or(Error::Malformed(
            "transmission scope: expected all, alert, command, report or <kind>:<group>",
        ))?;
        match group {
            None => Ok(Scope::Kind(kind)),
            Some(g) => Ok(Scope::KindInGroup(kind, GroupId::new(g.as_bytes())?)),
        }
    }

    /// Whether this scope stops `kind` sent to `group`.
    pub fn covers(&self, kind: TxKind, group: Option<&GroupId>) -> bool {
        match self {
            Scope::All => true,
            Scope::Kind(k) => *k == kind,
            Scope::KindInGroup(k, g) => *k == kind && group == Some(g),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Scope::All => Value::Text("all".into()),
            Scope::Kind(k) => Value::Text(k.as_str().into()),
            Scope::KindInGroup(k, g) => Value::Array(vec![
                Value::Text(k.as_str().into()),
                Value::Bytes(g.as_bytes().to_vec()),
            ]),
        }
    }

    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Text(t) if t == "all" => Ok(Scope::All),
            Value::Text(t) => Ok(Scope::Kind(TxKind::parse(t).ok_or(BAD)?)),
            Value::Array(a) => match a.as_slice() {
                [Value::Text(k), Value::Bytes(g)] => Ok(Scope::KindInGroup(
                    TxKind::parse(k).ok_or(BAD)?,
                    GroupId::new(g)?,
                )),
                _ => Err(BAD),
            },
            _ => Err(BAD),
        }
    }
}

impl core::fmt::Display for Scope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Kind(k) => f.write_str(k.as_str()),
            Scope::KindInGroup(k, g) => write!(f, "{}:{}", k.as_str(), g.name()),
        }
    }
}

/// The scopes a node is told to stop: the whole state an order carries.
pub type Stopped = BTreeSet<Scope>;

/// Whether `stopped` lets a node send `kind` to `group`.
pub fn allows(stopped: &Stopped, kind: TxKind, group: Option<&GroupId>) -> bool {
    !stopped.iter().any(|s| s.covers(kind, group))
}

/// Text form of a scope set (`"-"` when empty), for logs and answers.
pub fn describe(stopped: &Stopped) -> String {
    if stopped.is_empty() {
        return "-".into();
    }
    stopped
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The scope set after stopping (`deactivate = true`) or resuming
/// `scopes`. Stopping with no scope stops everything ([`Scope::All`]);
/// resuming with no scope resumes everything; resuming named scopes removes
/// exactly those (resuming `alert` after stopping `all` changes nothing:
/// `all` still covers alerts, which the answer shows).
pub fn next_stopped(current: &Stopped, deactivate: bool, scopes: &[Scope]) -> Stopped {
    let mut next = current.clone();
    match (deactivate, scopes.is_empty()) {
        (true, true) => {
            next.insert(Scope::All);
        }
        (true, false) => next.extend(scopes.iter().cloned()),
        (false, true) => next.clear(),
        (false, false) => {
            for s in scopes {
                next.remove(s);
            }
        }
    }
    next
}

/// The version of a node's next order: above the previous one and, when
/// the clock allows, the time in milliseconds (so versions also order in
/// time across managers sharing a store).
pub fn next_version(previous: Option<u64>, now: UnixMillis) -> u64 {
    previous.map_or(1, |p| p.saturating_add(1)).max(now.get())
}

/// A scope set as CBOR (`[scope …]`), the form the manager's store keeps.
pub fn encode_stopped(stopped: &Stopped) -> Result<Vec<u8>> {
    let v = Value::Array(stopped.iter().map(Scope::to_value).collect());
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).map_err(|_| BAD)?;
    Ok(out)
}

/// Reads [`encode_stopped`]'s form.
pub fn decode_stopped(bytes: &[u8]) -> Result<Stopped> {
    let scopes = decode(bytes)?;
    if scopes.len() > MAX_SCOPES {
        return Err(Error::TooLarge {
            what: "transmission scopes",
            limit: MAX_SCOPES,
        });
    }
    scopes.iter().map(Scope::from_value).collect()
}

/// A transmission order: which scopes `node` must stop, as of `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransmissionOrder {
    /// The manager that signs it.
    pub manager: EntityId,
    /// The node it is for.
    pub node: EntityId,
    /// Grows with every change of this node's state.
    pub version: u64,
    /// When this copy was signed (renewed on re-sends).
    pub issued: UnixMillis,
    /// What the node must not send (empty: everything allowed).
    pub stopped: Stopped,
}

impl TransmissionOrder {
    /// CBOR payload.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        if self.stopped.len() > MAX_SCOPES {
            return Err(Error::TooLarge {
                what: "transmission scopes",
                limit: MAX_SCOPES,
            });
        }
        let v = Value::Array(vec![
            Value::Text(self.manager.as_str().into()),
            Value::Text(self.node.as_str().into()),
            Value::from(self.version),
            Value::from(self.issued.get()),
            Value::Array(self.stopped.iter().map(Scope::to_value).collect()),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).map_err(|_| BAD)?;
        Ok(out)
    }

    /// Parses the payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        match decode(bytes)?.as_slice() {
            [m, n, v, i, Value::Array(scopes)] => {
                if scopes.len() > MAX_SCOPES {
                    return Err(Error::TooLarge {
                        what: "transmission scopes",
                        limit: MAX_SCOPES,
                    });
                }
                Ok(Self {
                    manager: entity(m)?,
                    node: entity(n)?,
                    version: uint(v)?,
                    issued: UnixMillis::new(uint(i)?),
                    stopped: scopes
                        .iter()
                        .map(Scope::from_value)
                        .collect::<Result<_>>()?,
                })
            }
            _ => Err(BAD),
        }
    }

    /// Signs the order with the manager's credential (which must be the
    /// order's `manager`).
    pub fn sign(&self, manager: &EntityCredential) -> Result<Vec<u8>> {
        if manager.id() != &self.manager {
            return Err(Error::WrongManager);
        }
        Ok(sign_statement(
            manager.id(),
            manager.signing_key(),
            LABEL_ORDER,
            &self.to_cbor()?,
        ))
    }

    /// Whether `bytes` claim to be an order (a cheap routing test on the
    /// unverified payload's shape: five elements, the third and fourth
    /// integers, the fifth an array). Bundles, status lists and other
    /// five-element statements have other shapes there.
    pub fn looks_like(bytes: &[u8]) -> bool {
        let Ok(statement) = UnverifiedStatement::parse(bytes, MAX_ORDER_LEN) else {
            return false;
        };
        matches!(
            decode(statement.payload()).as_deref(),
            Ok([
                Value::Text(_),
                Value::Text(_),
                Value::Integer(_),
                Value::Integer(_),
                Value::Array(_)
            ])
        )
    }

    /// Checks a signed order from `manager` for `me`: the signer is the
    /// manager, the signature verifies, the payload names both, and it was
    /// issued within `max_age_ms` of `now`.
    pub fn open(
        bytes: &[u8],
        manager: &PublicCredential,
        me: &EntityId,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<Self> {
        let statement = UnverifiedStatement::parse(bytes, MAX_ORDER_LEN)?;
        if statement.signer() != manager.id() {
            return Err(Error::WrongManager);
        }
        let order = Self::from_cbor(&statement.verify(manager.verifying_key(), LABEL_ORDER)?)?;
        if order.manager != *manager.id() {
            return Err(Error::WrongManager);
        }
        if order.node != *me {
            return Err(Error::Refused("transmission order for another node"));
        }
        if order.issued.get().abs_diff(now.get()) > max_age_ms {
            return Err(Error::Refused(
                "transmission order issued too far from this node's clock (a replay, or clocks apart)",
            ));
        }
        Ok(order)
    }
}

/// A node's signed acknowledgement that it applied (or holds) `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderAck {
    /// The node.
    pub node: EntityId,
    /// The manager it answers.
    pub manager: EntityId,
    /// The version it holds.
    pub version: u64,
}

impl OrderAck {
    /// Signs the ack with the node's credential.
    pub fn sign(&self, node: &EntityCredential) -> Result<Vec<u8>> {
        let v = Value::Array(vec![
            Value::Text(self.node.as_str().into()),
            Value::Text(self.manager.as_str().into()),
            Value::from(self.version),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).map_err(|_| BAD)?;
        Ok(sign_statement(
            node.id(),
            node.signing_key(),
            LABEL_ORDER_ACK,
            &out,
        ))
    }

    /// Whether a signed statement's payload has the shape of an order ack
    /// (a three-element array starting with text), so that the manager
    /// knows which label to verify it under. Routing only: nothing is
    /// trusted before [`OrderAck::open`] verified it.
    pub fn looks_like(bytes: &[u8]) -> bool {
        let Ok(statement) = UnverifiedStatement::parse(bytes, MAX_ORDER_LEN) else {
            return false;
        };
        matches!(
            decode(statement.payload()).as_deref(),
            Ok([Value::Text(_), Value::Text(_), Value::Integer(_)])
        )
    }

    /// Checks an ack: signed by `node` (its enrolled credential), naming it
    /// and `manager`.
    pub fn open(bytes: &[u8], node: &PublicCredential, manager: &EntityId) -> Result<Self> {
        Self::open_with_key(bytes, node.id(), node.verifying_key(), manager)
    }

    /// [`OrderAck::open`] with the node's id and signature key alone (a
    /// headend knows its DAPs by those).
    pub fn open_with_key(
        bytes: &[u8],
        node: &EntityId,
        key: &ed25519_dalek::VerifyingKey,
        manager: &EntityId,
    ) -> Result<Self> {
        let statement = UnverifiedStatement::parse(bytes, MAX_ORDER_LEN)?;
        if statement.signer() != node {
            return Err(Error::UnknownMember);
        }
        let payload = statement.verify(key, LABEL_ORDER_ACK)?;
        match decode(&payload)?.as_slice() {
            [n, m, v] => {
                let ack = Self {
                    node: entity(n)?,
                    manager: entity(m)?,
                    version: uint(v)?,
                };
                if ack.node != *node || ack.manager != *manager {
                    return Err(Error::Refused(
                        "transmission ack names another node or manager",
                    ));
                }
                Ok(ack)
            }
            _ => Err(BAD),
        }
    }
}

/// What a node did with an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A newer order: the node's state changed to it.
    Changed(TransmissionOrder),
    /// The order it holds, sent again: acknowledged again, nothing changed.
    Repeated,
}

/// A node's side: the newest order it applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransmissionControl {
    held: Option<TransmissionOrder>,
}

impl TransmissionControl {
    /// A node that never received an order (everything allowed).
    pub fn new() -> Self {
        Self::default()
    }

    /// The order held, if any.
    pub fn held(&self) -> Option<&TransmissionOrder> {
        self.held.as_ref()
    }

    /// Whether the node may send `kind` to `group`.
    pub fn allows(&self, kind: TxKind, group: Option<&GroupId>) -> bool {
        self.held
            .as_ref()
            .is_none_or(|o| allows(&o.stopped, kind, group))
    }

    /// Decides about a verified order without changing anything: a newer
    /// version is [`Applied::Changed`] (the caller persists, then calls
    /// [`TransmissionControl::commit`]), the held one [`Applied::Repeated`],
    /// an older one — or the held version with other scopes — is refused.
    pub fn check(&self, order: &TransmissionOrder) -> Result<Applied> {
        match &self.held {
            Some(h) if order.version < h.version => Err(Error::Refused(
                "transmission order older than the one this node holds (a replay)",
            )),
            Some(h) if order.version == h.version => {
                if order.stopped == h.stopped {
                    Ok(Applied::Repeated)
                } else {
                    Err(Error::Refused(
                        "transmission order reuses the held version with other scopes",
                    ))
                }
            }
            _ => Ok(Applied::Changed(order.clone())),
        }
    }

    /// Makes `order` the held one (after it was persisted).
    pub fn commit(&mut self, order: TransmissionOrder) {
        self.held = Some(order);
    }

    /// The held order's signed payload form for a state file
    /// (`null` when none).
    pub fn to_value(&self) -> Result<Value> {
        match &self.held {
            None => Ok(Value::Null),
            Some(o) => Ok(Value::Bytes(o.to_cbor()?)),
        }
    }

    /// Restores from [`TransmissionControl::to_value`].
    pub fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Null => Ok(Self::new()),
            Value::Bytes(b) => Ok(Self {
                held: Some(TransmissionOrder::from_cbor(b)?),
            }),
            _ => Err(BAD),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Vec<Value>> {
    if bytes.len() > MAX_ORDER_LEN {
        return Err(Error::TooLarge {
            what: "transmission order",
            limit: MAX_ORDER_LEN,
        });
    }
    match ciborium::from_reader::<Value, _>(bytes).map_err(|_| BAD)? {
        Value::Array(a) => Ok(a),
        _ => Err(BAD),
    }
}

fn uint(v: &Value) -> Result<u64> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or(BAD)
}

fn entity(v: &Value) -> Result<EntityId> {
    Ok(EntityId::new(v.as_text().ok_or(BAD)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealcast_core::testrng::TestRng;

    fn cred(id: &str, seed: u8) -> EntityCredential {
        EntityCredential::generate(EntityId::new(id).unwrap(), &mut TestRng::new(seed.into()))
    }

    fn order(version: u64, issued: u64, stopped: &[&str]) -> TransmissionOrder {
        TransmissionOrder {
            manager: EntityId::new("manager").unwrap(),
            node: EntityId::new("sensor-1").unwrap(),
            version,
            issued: UnixMillis::new(issued),
            stopped: stopped.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        }
    }

    const NOW: u64 = 1_800_000_000_000;
    const AGE: u64 = 300_000;

    #[test]
    fn changes_compose_into_the_next_whole_state() {
        let p = |t: &str| Scope::parse(t).unwrap();
        let none = Stopped::new();
        let all = next_stopped(&none, true, &[]);
        assert_eq!(all, [Scope::All].into());
        assert_eq!(next_stopped(&all, false, &[]), none);
        assert_eq!(next_stopped(&all, false, &[p("alert")]), all);
        let two = next_stopped(&none, true, &[p("alert"), p("command:fire-doors")]);
        assert_eq!(
            next_stopped(&two, false, &[p("alert")]),
            [p("command:fire-doors")].into()
        );
        assert_eq!(next_version(None, UnixMillis::new(0)), 1);
        assert_eq!(next_version(Some(5), UnixMillis::new(3)), 6);
        assert_eq!(next_version(Some(5), UnixMillis::new(NOW)), NOW);
        assert_eq!(next_version(Some(NOW), UnixMillis::new(NOW)), NOW + 1);
    }

    #[test]
    fn scopes_parse_cover_and_print() {
        let doors = GroupId::new(b"fire-doors").unwrap();
        let other = GroupId::new(b"extinguishers").unwrap();
        let s = Scope::parse("command:fire-doors").unwrap();
        assert!(s.covers(TxKind::Command, Some(&doors)));
        assert!(!s.covers(TxKind::Command, Some(&other)));
        assert!(!s.covers(TxKind::Alert, Some(&doors)));
        assert_eq!(s.to_string(), "command:fire-doors");
        assert!(Scope::parse("all").unwrap().covers(TxKind::Command, None));
        // A meter's readings (the headend orders its meters).
        assert_eq!(Scope::parse("report").unwrap(), Scope::Kind(TxKind::Report));
        assert_eq!(Scope::Kind(TxKind::Report).to_string(), "report");
        assert!(
            Scope::parse("alert")
                .unwrap()
                .covers(TxKind::Alert, Some(&other))
        );
        assert!(Scope::parse("reboot").is_err());
        assert!(Scope::parse("unlock:fire-doors").is_err());
        let stopped: Stopped = [Scope::parse("alert").unwrap()].into();
        assert!(!allows(&stopped, TxKind::Alert, Some(&doors)));
        assert!(allows(&stopped, TxKind::Command, Some(&doors)));
        assert_eq!(describe(&Stopped::new()), "-");
    }

    #[test]
    fn a_signed_order_opens_only_for_its_node_from_its_manager_and_fresh() {
        let manager = cred("manager", 1);
        let mallory = cred("manager", 2); // same id, another key
        let o = order(7, NOW, &["alert", "command:fire-doors"]);
        let bytes = o.sign(&manager).unwrap();
        let me = EntityId::new("sensor-1").unwrap();
        let got =
            TransmissionOrder::open(&bytes, &manager.public(), &me, UnixMillis::new(NOW), AGE)
                .unwrap();
        assert_eq!(got, o);
        // Forged: signed by another key under the manager's name.
        let forged = o.sign(&mallory).unwrap();
        assert!(
            TransmissionOrder::open(&forged, &manager.public(), &me, UnixMillis::new(NOW), AGE)
                .is_err()
        );
        // For another node.
        let other = EntityId::new("sensor-2").unwrap();
        assert_eq!(
            TransmissionOrder::open(&bytes, &manager.public(), &other, UnixMillis::new(NOW), AGE),
            Err(Error::Refused("transmission order for another node"))
        );
        // Stale copy (replayed much later) and one from the future.
        for at in [NOW + AGE + 1, NOW - AGE - 1] {
            assert!(
                TransmissionOrder::open(&bytes, &manager.public(), &me, UnixMillis::new(at), AGE)
                    .is_err()
            );
        }
        // Another statement kind signed by the manager is not an order.
        let ack_shaped = sign_statement(
            manager.id(),
            manager.signing_key(),
            crate::messages::LABEL_ACK,
            &o.to_cbor().unwrap(),
        );
        assert!(
            TransmissionOrder::open(
                &ack_shaped,
                &manager.public(),
                &me,
                UnixMillis::new(NOW),
                AGE
            )
            .is_err()
        );
        // Flipping one byte anywhere breaks it.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(
                TransmissionOrder::open(&b, &manager.public(), &me, UnixMillis::new(NOW), AGE)
                    .is_err()
            );
        }
    }

    #[test]
    fn versions_only_grow_and_the_held_one_is_acknowledged_again() {
        let mut c = TransmissionControl::new();
        let doors = GroupId::new(b"fire-doors").unwrap();
        assert!(c.allows(TxKind::Alert, Some(&doors)));
        let deactivate = order(5, NOW, &["alert"]);
        let Applied::Changed(o) = c.check(&deactivate).unwrap() else {
            panic!("expected a change")
        };
        // Nothing changes before commit.
        assert!(c.allows(TxKind::Alert, Some(&doors)));
        c.commit(o);
        assert!(!c.allows(TxKind::Alert, Some(&doors)));
        assert!(c.allows(TxKind::Command, Some(&doors)));
        assert_eq!(
            c.check(&order(5, NOW + 9, &["alert"])),
            Ok(Applied::Repeated)
        );
        assert!(c.check(&order(5, NOW, &[])).is_err());
        let activate = order(6, NOW, &[]);
        let Applied::Changed(o) = c.check(&activate).unwrap() else {
            panic!("expected a change")
        };
        c.commit(o);
        assert!(c.allows(TxKind::Alert, Some(&doors)));
        // The replayed deactivation is older than what the node holds.
        assert!(c.check(&deactivate).is_err());
        // State round trip.
        let back = TransmissionControl::from_value(&c.to_value().unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            TransmissionControl::from_value(&Value::Null).unwrap(),
            TransmissionControl::new()
        );
    }

    #[test]
    fn acks_are_bound_to_node_and_manager() {
        let node = cred("sensor-1", 3);
        let other = cred("sensor-2", 4);
        let manager = EntityId::new("manager").unwrap();
        let ack = OrderAck {
            node: node.id().clone(),
            manager: manager.clone(),
            version: 9,
        };
        let bytes = ack.sign(&node).unwrap();
        assert!(OrderAck::looks_like(&bytes));
        assert_eq!(
            OrderAck::open(&bytes, &node.public(), &manager).unwrap(),
            ack
        );
        assert!(OrderAck::open(&bytes, &other.public(), &manager).is_err());
        assert!(OrderAck::open(&bytes, &node.public(), &EntityId::new("m2").unwrap()).is_err());
        // A group ack is not routed here.
        let group_ack = crate::messages::Ack {
            group: GroupId::new(b"g").unwrap(),
            epoch: sealcast_core::ids::Epoch::new(1),
        };
        let group_ack = sign_statement(
            node.id(),
            node.signing_key(),
            crate::messages::LABEL_ACK,
            &group_ack.to_cbor().unwrap(),
        );
        assert!(!OrderAck::looks_like(&group_ack));
        assert!(!OrderAck::looks_like(b"\x00garbage"));
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"\x80",
            b"\x85\x00\x00\x00\x00\x00",
            b"\x85\x61a\x61b\x01\x01\x81\x63bad",
        ] {
            assert!(TransmissionOrder::from_cbor(bytes).is_err());
        }
        let many: Stopped = (0..65)
            .map(|i| {
                Scope::KindInGroup(
                    TxKind::Alert,
                    GroupId::new(format!("g{i}").as_bytes()).unwrap(),
                )
            })
            .collect();
        let mut o = order(1, NOW, &[]);
        o.stopped = many;
        assert!(o.to_cbor().is_err());
    }
}

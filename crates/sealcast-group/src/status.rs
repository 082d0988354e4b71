//! Misbehaviour reports and authorization status.
//!
//! Agents (gateways) see what passes through them without reading it and
//! report misbehaviour to the manager; the manager applies a policy and
//! **publishes authorization status**: one signed, versioned list of the
//! suspended and revoked entities, which every node keeps in a local status
//! repository and enforces at once (a message signed by a listed entity is
//! not executed).
//!
//! | statement | signer | label | payload |
//! |---|---|---|---|
//! | misbehaviour report | agent | `sealcast misbehaviour report v1` | `[reporter, manager, seq, issued_ms, [[subject, evidence, count, first_ms, last_ms] …≤256]]` |
//! | status list | manager | `sealcast authorization status v1` | `[manager, version, issued_ms, [[entity, status] …≤65536]]` |
//!
//! `evidence` is one of `forgery`, `replay`, `flood`, `policy`,
//! `listed-signer`, `implausible` ([`Evidence`]); `status` is 1 (suspended) or 2 (revoked).
//!
//! **Attribution.** A broadcast's sender id is vouched for by the group key
//! alone until its signature verifies, so any member can make messages
//! that *claim* another sender: forgeries and replays naming an entity are
//! evidence against whoever sent them, not against the entity named
//! ([`Evidence::attributable`] is false). Flooding with verified messages,
//! operations a policy refuses from a verified signer, and a listed entity
//! still signing are the entity's own doing.
//!
//! A status list carries the **whole** state (not a change) under a version
//! that only grows; a node applies a list only if its version is above the
//! one it holds and it was issued within `max_age` of its clock (the
//! manager signs every copy afresh), so neither an old list nor one
//! captured long ago can lift a suspension.

use std::collections::{BTreeMap, VecDeque};

use ciborium::Value;
use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};

use crate::error::{Error, Result};

/// Label of misbehaviour reports.
pub const LABEL_REPORT: &str = "sealcast misbehaviour report v1";
/// Label of status lists.
pub const LABEL_STATUS: &str = "sealcast authorization status v1";
/// Most evidence items in one report.
pub const MAX_ITEMS: usize = 256;
/// Most entities on one status list.
pub const MAX_LISTED: usize = 65_536;
/// Largest report accepted.
pub const MAX_REPORT_LEN: usize = 64 * 1024;
/// Largest status list accepted.
pub const MAX_STATUS_LEN: usize = 4 * 1024 * 1024;

const BAD_REPORT: Error = Error::Malformed("misbehaviour report");
const BAD_LIST: Error = Error::Malformed("status list");

/// What an agent saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Evidence {
    /// Messages claiming the subject as sender whose signature failed.
    Forgery,
    /// Copies of the subject's messages seen before.
    Replay,
    /// Verified messages of the subject above the agent's rate cap.
    Flood,
    /// Verified operations of the subject that an access-control policy
    /// refused.
    Policy,
    /// Verified messages of a subject the status list names.
    ListedSigner,
    /// Verified readings of the subject that failed the receiver's
    /// plausibility rules (range, rate of change, monotonic counter, hours).
    Implausible,
}

impl Evidence {
    /// Every kind.
    pub const ALL: [Evidence; 6] = [
        Evidence::Forgery,
        Evidence::Replay,
        Evidence::Flood,
        Evidence::Policy,
        Evidence::ListedSigner,
        Evidence::Implausible,
    ];

    /// The name on the wire and in configs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Evidence::Forgery => "forgery",
            Evidence::Replay => "replay",
            Evidence::Flood => "flood",
            Evidence::Policy => "policy",
            Evidence::ListedSigner => "listed-signer",
            Evidence::Implausible => "implausible",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Whether the subject's own key stands behind the evidence (see the
    /// module's "Attribution").
    pub const fn attributable(self) -> bool {
        !matches!(self, Evidence::Forgery | Evidence::Replay)
    }
}

impl core::fmt::Display for Evidence {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a report: `count` events of one kind about one subject
/// between `first` and `last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceItem {
    /// The entity the evidence is about (the claimed or verified sender).
    pub subject: EntityId,
    /// What was seen.
    pub evidence: Evidence,
    /// How many times.
    pub count: u64,
    /// First seen.
    pub first: UnixMillis,
    /// Last seen.
    pub last: UnixMillis,
}

/// Items as text for logs and audit records (`subject evidence xcount, …`;
/// ids and counts only).
pub fn describe_items(items: &[EvidenceItem]) -> String {
    items
        .iter()
        .map(|i| format!("{} {} x{}", i.subject, i.evidence, i.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A signed misbehaviour report from an agent to its manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MisbehaviourReport {
    /// The agent that saw it.
    pub reporter: EntityId,
    /// The manager it reports to.
    pub manager: EntityId,
    /// Grows with every report of this reporter (the manager refuses a
    /// number it has seen).
    pub seq: u64,
    /// When it was signed.
    pub issued: UnixMillis,
    /// What it saw (1..=[`MAX_ITEMS`]).
    pub items: Vec<EvidenceItem>,
}

impl MisbehaviourReport {
    fn to_cbor(&self) -> Result<Vec<u8>> {
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(Error::TooLarge {
                what: "misbehaviour report items",
                limit: MAX_ITEMS,
            });
        }
        let items = self
            .items
            .iter()
            .map(|i| {
                Value::Array(vec![
                    Value::Text(i.subject.as_str().into()),
                    Value::Text(i.evidence.as_str().into()),
                    Value::from(i.count),
                    Value::from(i.first.get()),
                    Value::from(i.last.get()),
                ])
            })
            .collect();
        encode(&Value::Array(vec![
            Value::Text(self.reporter.as_str().into()),
            Value::Text(self.manager.as_str().into()),
            Value::from(self.seq),
            Value::from(self.issued.get()),
            Value::Array(items),
        ]))
    }

    fn from_cbor(bytes: &[u8]) -> Result<Self> {
        let bad = || BAD_REPORT;
        match decode(bytes, MAX_REPORT_LEN, BAD_REPORT)?.as_slice() {
            [r, m, s, i, Value::Array(items)] => {
                if items.is_empty() || items.len() > MAX_ITEMS {
                    return Err(bad());
                }
                let items = items
                    .iter()
                    .map(|v| match v.as_array().map(Vec::as_slice) {
                        Some([s, e, c, f, l]) => {
                            let item = EvidenceItem {
                                subject: entity(s, BAD_REPORT)?,
                                evidence: e.as_text().and_then(Evidence::parse).ok_or_else(bad)?,
                                count: uint(c, BAD_REPORT)?,
                                first: UnixMillis::new(uint(f, BAD_REPORT)?),
                                last: UnixMillis::new(uint(l, BAD_REPORT)?),
                            };
                            if item.count == 0 || item.first > item.last {
                                return Err(bad());
                            }
                            Ok(item)
                        }
                        _ => Err(bad()),
                    })
                    .collect::<Result<_>>()?;
                Ok(Self {
                    reporter: entity(r, BAD_REPORT)?,
                    manager: entity(m, BAD_REPORT)?,
                    seq: uint(s, BAD_REPORT)?,
                    issued: UnixMillis::new(uint(i, BAD_REPORT)?),
                    items,
                })
            }
            _ => Err(bad()),
        }
    }

    /// Signs the report with the reporter's credential.
    pub fn sign(&self, reporter: &EntityCredential) -> Result<Vec<u8>> {
        if reporter.id() != &self.reporter {
            return Err(Error::Refused("a report is signed by its reporter"));
        }
        Ok(sign_statement(
            reporter.id(),
            reporter.signing_key(),
            LABEL_REPORT,
            &self.to_cbor()?,
        ))
    }

    /// The claimed reporter of a signed report, if `bytes` has a report's
    /// shape (routing only: nothing is trusted before
    /// [`MisbehaviourReport::open`]).
    pub fn claimed_reporter(bytes: &[u8]) -> Option<EntityId> {
        let statement = UnverifiedStatement::parse(bytes, MAX_REPORT_LEN).ok()?;
        let values = decode(statement.payload(), MAX_REPORT_LEN, BAD_REPORT).ok()?;
        matches!(
            values.as_slice(),
            [
                Value::Text(_),
                Value::Text(_),
                Value::Integer(_),
                Value::Integer(_),
                Value::Array(_)
            ]
        )
        .then(|| statement.signer().clone())
    }

    /// Checks a report: signed by `reporter` (its enrolled credential),
    /// naming it and `manager`, issued within `max_age_ms` of `now`.
    pub fn open(
        bytes: &[u8],
        reporter: &PublicCredential,
        manager: &EntityId,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<Self> {
        Self::open_with(
            bytes,
            reporter.id(),
            reporter.verifying_key(),
            manager,
            now,
            max_age_ms,
        )
    }

    /// [`MisbehaviourReport::open`] with the reporter's id and Ed25519 key.
    pub fn open_with(
        bytes: &[u8],
        reporter: &EntityId,
        key: &VerifyingKey,
        manager: &EntityId,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<Self> {
        let statement = UnverifiedStatement::parse(bytes, MAX_REPORT_LEN)?;
        if statement.signer() != reporter {
            return Err(Error::UnknownMember);
        }
        let report = Self::from_cbor(&statement.verify(key, LABEL_REPORT)?)?;
        if report.reporter != *reporter || report.manager != *manager {
            return Err(Error::Refused(
                "misbehaviour report names another reporter or manager",
            ));
        }
        if report.issued.get().abs_diff(now.get()) > max_age_ms {
            return Err(Error::Refused(
                "misbehaviour report issued too far from the manager's clock (a replay, or clocks apart)",
            ));
        }
        Ok(report)
    }
}

/// An entity's authorization status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Its messages are refused until it is reinstated; it keeps its
    /// memberships.
    Suspended,
    /// Evicted from every group and its enrolment deleted: final for this
    /// key (the id comes back only enrolled under a new key).
    Revoked,
}

impl Status {
    /// The name in configs, logs and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Suspended => "suspended",
            Status::Revoked => "revoked",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "suspended" | "suspend" => Some(Status::Suspended),
            "revoked" | "revoke" => Some(Status::Revoked),
            _ => None,
        }
    }

    const fn code(self) -> u64 {
        match self {
            Status::Suspended => 1,
            Status::Revoked => 2,
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The listed entities and their status.
pub type Listed = BTreeMap<EntityId, Status>;

/// The manager's signed authorization status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusList {
    /// The manager that signs it.
    pub manager: EntityId,
    /// Grows with every change.
    pub version: u64,
    /// When this copy was signed (renewed on every send).
    pub issued: UnixMillis,
    /// Suspended and revoked entities; everyone else is in good standing.
    pub listed: Listed,
}

impl StatusList {
    /// CBOR payload.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        if self.listed.len() > MAX_LISTED {
            return Err(Error::TooLarge {
                what: "status list",
                limit: MAX_LISTED,
            });
        }
        let listed = self
            .listed
            .iter()
            .map(|(e, s)| Value::Array(vec![Value::Text(e.as_str().into()), Value::from(s.code())]))
            .collect();
        encode(&Value::Array(vec![
            Value::Text(self.manager.as_str().into()),
            Value::from(self.version),
            Value::from(self.issued.get()),
            Value::Array(listed),
        ]))
    }

    /// Parses the payload (also the status repository's file form).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        match decode(bytes, MAX_STATUS_LEN, BAD_LIST)?.as_slice() {
            [m, v, i, Value::Array(listed)] => {
                if listed.len() > MAX_LISTED {
                    return Err(Error::TooLarge {
                        what: "status list",
                        limit: MAX_LISTED,
                    });
                }
                let mut map = Listed::new();
                for l in listed {
                    let (e, s) = match l.as_array().map(Vec::as_slice) {
                        Some([e, s]) => (entity(e, BAD_LIST)?, uint(s, BAD_LIST)?),
                        _ => return Err(BAD_LIST),
                    };
                    let status = match s {
                        1 => Status::Suspended,
                        2 => Status::Revoked,
                        _ => return Err(BAD_LIST),
                    };
                    if map.insert(e, status).is_some() {
                        return Err(BAD_LIST);
                    }
                }
                Ok(Self {
                    manager: entity(m, BAD_LIST)?,
                    version: uint(v, BAD_LIST)?,
                    issued: UnixMillis::new(uint(i, BAD_LIST)?),
                    listed: map,
                })
            }
            _ => Err(BAD_LIST),
        }
    }

    /// Signs the list with the manager's credential.
    pub fn sign(&self, manager: &EntityCredential) -> Result<Vec<u8>> {
        if manager.id() != &self.manager {
            return Err(Error::WrongManager);
        }
        Ok(sign_statement(
            manager.id(),
            manager.signing_key(),
            LABEL_STATUS,
            &self.to_cbor()?,
        ))
    }

    /// Whether a signed statement has a status list's shape (routing only).
    pub fn looks_like(bytes: &[u8]) -> bool {
        let Ok(statement) = UnverifiedStatement::parse(bytes, MAX_STATUS_LEN) else {
            return false;
        };
        matches!(
            decode(statement.payload(), MAX_STATUS_LEN, BAD_LIST).as_deref(),
            Ok([
                Value::Text(_),
                Value::Integer(_),
                Value::Integer(_),
                Value::Array(_)
            ])
        )
    }

    /// Checks a signed list from `manager`, issued within `max_age_ms` of
    /// `now`.
    pub fn open(
        bytes: &[u8],
        manager: &PublicCredential,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<Self> {
        Self::open_with(
            bytes,
            manager.id(),
            manager.verifying_key(),
            now,
            max_age_ms,
        )
    }

    /// [`StatusList::open`] with the issuer's id and Ed25519 key (a headend
    /// issues the list of its meters).
    pub fn open_with(
        bytes: &[u8],
        issuer: &EntityId,
        key: &VerifyingKey,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<Self> {
        let statement = UnverifiedStatement::parse(bytes, MAX_STATUS_LEN)?;
        if statement.signer() != issuer {
            return Err(Error::WrongManager);
        }
        let list = Self::from_cbor(&statement.verify(key, LABEL_STATUS)?)?;
        if list.manager != *issuer {
            return Err(Error::WrongManager);
        }
        if list.issued.get().abs_diff(now.get()) > max_age_ms {
            return Err(Error::Refused(
                "status list issued too far from this node's clock (a replay, or clocks apart)",
            ));
        }
        Ok(list)
    }
}

/// A node's status repository: the newest list it verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusRepository {
    held: Option<StatusList>,
}

impl StatusRepository {
    /// An empty repository (nobody listed).
    pub fn new() -> Self {
        Self::default()
    }

    /// The list held.
    pub fn held(&self) -> Option<&StatusList> {
        self.held.as_ref()
    }

    /// The version held (0: none).
    pub fn version(&self) -> u64 {
        self.held.as_ref().map_or(0, |l| l.version)
    }

    /// The status of `entity` (None: in good standing).
    pub fn status_of(&self, entity: &EntityId) -> Option<Status> {
        self.held.as_ref()?.listed.get(entity).copied()
    }

    /// Whether a verified list is newer than the one held (then the caller
    /// persists it and calls [`StatusRepository::commit`]); the held
    /// version again is `Ok(false)`; an older one, or the held version with
    /// other contents, is refused.
    pub fn check(&self, list: &StatusList) -> Result<bool> {
        match &self.held {
            Some(h) if list.version < h.version => Err(Error::Refused(
                "status list older than the one this node holds (a replay)",
            )),
            Some(h) if list.version == h.version => {
                if list.listed == h.listed {
                    Ok(false)
                } else {
                    Err(Error::Refused(
                        "status list reuses the held version with other contents",
                    ))
                }
            }
            _ => Ok(true),
        }
    }

    /// Makes `list` the held one (after it was persisted).
    pub fn commit(&mut self, list: StatusList) {
        self.held = Some(list);
    }

    /// The file form (the held list's payload; empty when none).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.held
            .as_ref()
            .map_or(Ok(Vec::new()), StatusList::to_cbor)
    }

    /// Reads [`StatusRepository::to_bytes`]'s form; the list must be from
    /// `manager`.
    pub fn from_bytes(bytes: &[u8], manager: &EntityId) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Self::new());
        }
        let list = StatusList::from_cbor(bytes)?;
        if list.manager != *manager {
            return Err(Error::WrongManager);
        }
        Ok(Self { held: Some(list) })
    }
}

/// One rule of the manager's misbehaviour policy: `threshold` events of
/// `evidence` about one subject within `window_ms` lead to `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// The kind of evidence counted.
    pub evidence: Evidence,
    /// Events within the window that trigger the action (≥ 1).
    pub threshold: u64,
    /// The window (≥ 1 ms).
    pub window_ms: u64,
    /// What the manager does.
    pub action: Status,
}

/// Most subjects the ledger follows; past it, the subjects seen longest
/// ago are forgotten.
pub const MAX_SUBJECTS: usize = 100_000;

/// The manager's count of evidence per subject, in a sliding window per
/// rule, and the rules that decide.
#[derive(Clone, Debug, Default)]
pub struct MisbehaviourPolicy {
    rules: Vec<PolicyRule>,
    seen: BTreeMap<(EntityId, Evidence), VecDeque<(u64, u64)>>,
}

impl MisbehaviourPolicy {
    /// A policy of `rules` (none: evidence is recorded, nothing is done).
    pub fn new(rules: Vec<PolicyRule>) -> Result<Self> {
        for r in &rules {
            if r.threshold == 0 || r.window_ms == 0 {
                return Err(Error::Malformed(
                    "misbehaviour rule: threshold and window must be at least 1",
                ));
            }
        }
        Ok(Self {
            rules,
            seen: BTreeMap::new(),
        })
    }

    /// The rules.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    /// Counts `item` (received at `now`) and returns the strongest action
    /// a rule now calls for, with the rule's text for the audit log.
    pub fn record(&mut self, item: &EvidenceItem, now: UnixMillis) -> Option<(Status, String)> {
        let longest = self
            .rules
            .iter()
            .filter(|r| r.evidence == item.evidence)
            .map(|r| r.window_ms)
            .max()?;
        if self.seen.len() >= MAX_SUBJECTS
            && !self
                .seen
                .contains_key(&(item.subject.clone(), item.evidence))
        {
            let oldest = self
                .seen
                .iter()
                .min_by_key(|(_, v)| v.back().map_or(0, |(t, _)| *t))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.seen.remove(&k);
            }
        }
        let now = now.get();
        let events = self
            .seen
            .entry((item.subject.clone(), item.evidence))
            .or_default();
        events.push_back((now, item.count));
        while events
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > longest)
        {
            events.pop_front();
        }
        let events = events.clone();
        self.rules
            .iter()
            .filter(|r| r.evidence == item.evidence)
            .filter_map(|r| {
                let total: u64 = events
                    .iter()
                    .filter(|(t, _)| now.saturating_sub(*t) <= r.window_ms)
                    .map(|(_, c)| *c)
                    .fold(0, u64::saturating_add);
                (total >= r.threshold).then(|| {
                    (
                        r.action,
                        format!(
                            "{total} {} events within {} s (rule: {} ≥ {} → {})",
                            r.evidence,
                            r.window_ms / 1000,
                            r.evidence,
                            r.threshold,
                            r.action
                        ),
                    )
                })
            })
            .max_by_key(|(a, _)| *a)
    }

    /// Forgets what was counted about `subject` (after an action on it).
    pub fn forget(&mut self, subject: &EntityId) {
        self.seen.retain(|(s, _), _| s != subject);
    }
}

/// An agent's evidence gathered between two reports.
#[derive(Clone, Debug, Default)]
pub struct EvidenceBuffer {
    items: BTreeMap<(EntityId, Evidence), EvidenceItem>,
    dropped: u64,
}

impl EvidenceBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one event.
    pub fn add(&mut self, subject: &EntityId, evidence: Evidence, at: UnixMillis) {
        let key = (subject.clone(), evidence);
        if let Some(item) = self.items.get_mut(&key) {
            item.count = item.count.saturating_add(1);
            item.first = item.first.min(at);
            item.last = item.last.max(at);
            return;
        }
        if self.items.len() >= MAX_ITEMS {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.items.insert(
            key,
            EvidenceItem {
                subject: subject.clone(),
                evidence,
                count: 1,
                first: at,
                last: at,
            },
        );
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the items (at most [`MAX_ITEMS`]) and how many events did not
    /// fit since the last take.
    pub fn take(&mut self) -> (Vec<EvidenceItem>, u64) {
        let items = std::mem::take(&mut self.items).into_values().collect();
        (items, std::mem::take(&mut self.dropped))
    }

    /// Puts items back after a report could not be sent (they merge with
    /// what came meanwhile).
    pub fn put_back(&mut self, items: Vec<EvidenceItem>) {
        for i in items {
            let key = (i.subject.clone(), i.evidence);
            let room = self.items.len() < MAX_ITEMS;
            match self.items.get_mut(&key) {
                Some(cur) => {
                    cur.count = cur.count.saturating_add(i.count);
                    cur.first = cur.first.min(i.first);
                    cur.last = cur.last.max(i.last);
                }
                None if room => {
                    self.items.insert(key, i);
                }
                None => self.dropped = self.dropped.saturating_add(i.count),
            }
        }
    }
}

fn encode(v: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|_| Error::Malformed("CBOR encoding"))?;
    Ok(out)
}

fn decode(bytes: &[u8], limit: usize, bad: Error) -> Result<Vec<Value>> {
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            what: "signed statement",
            limit,
        });
    }
    match ciborium::from_reader::<Value, _>(bytes).map_err(|_| bad.clone())? {
        Value::Array(a) => Ok(a),
        _ => Err(bad),
    }
}

fn uint(v: &Value, bad: Error) -> Result<u64> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or(bad)
}

fn entity(v: &Value, bad: Error) -> Result<EntityId> {
    Ok(EntityId::new(v.as_text().ok_or(bad)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealcast_core::testrng::TestRng;

    fn cred(id: &str, seed: u8) -> EntityCredential {
        EntityCredential::generate(EntityId::new(id).unwrap(), &mut TestRng::new(seed.into()))
    }
    fn id(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    const NOW: u64 = 1_800_000_000_000;
    const AGE: u64 = 600_000;

    fn list(version: u64, issued: u64, listed: &[(&str, Status)]) -> StatusList {
        StatusList {
            manager: id("manager"),
            version,
            issued: UnixMillis::new(issued),
            listed: listed.iter().map(|(e, s)| (id(e), *s)).collect(),
        }
    }

    #[test]
    fn status_lists_verify_only_from_the_manager_fresh_and_newer() {
        let manager = cred("manager", 1);
        let other = cred("manager", 2);
        let mgr_pub = manager.public();
        let l = list(
            5,
            NOW,
            &[("sensor-1", Status::Suspended), ("door-2", Status::Revoked)],
        );
        let bytes = l.sign(&manager).unwrap();
        assert!(StatusList::looks_like(&bytes));
        let opened = StatusList::open(&bytes, &mgr_pub, UnixMillis::new(NOW + 1000), AGE).unwrap();
        assert_eq!(opened, l);
        // Forged: the manager's id, another key.
        assert!(
            StatusList::open(
                &l.sign(&other).unwrap(),
                &mgr_pub,
                UnixMillis::new(NOW),
                AGE
            )
            .is_err()
        );
        // Captured long ago.
        let old = list(5, NOW - AGE - 1, &[]).sign(&manager).unwrap();
        assert!(matches!(
            StatusList::open(&old, &mgr_pub, UnixMillis::new(NOW), AGE),
            Err(Error::Refused(_))
        ));
        // Repository: newer applies, same is a repeat, older is refused.
        let mut repo = StatusRepository::new();
        assert!(repo.check(&opened).unwrap());
        repo.commit(opened.clone());
        assert_eq!(repo.status_of(&id("sensor-1")), Some(Status::Suspended));
        assert_eq!(repo.status_of(&id("door-1")), None);
        assert!(!repo.check(&opened).unwrap());
        assert!(repo.check(&list(4, NOW, &[])).is_err());
        assert!(repo.check(&list(5, NOW, &[])).is_err());
        assert!(repo.check(&list(6, NOW, &[])).unwrap());
        let back = StatusRepository::from_bytes(&repo.to_bytes().unwrap(), &id("manager")).unwrap();
        assert_eq!(back, repo);
        assert!(StatusRepository::from_bytes(&repo.to_bytes().unwrap(), &id("other")).is_err());
        assert_eq!(
            StatusRepository::from_bytes(&[], &id("manager")).unwrap(),
            StatusRepository::new()
        );
    }

    #[test]
    fn reports_verify_from_their_reporter_only() {
        let gw = cred("gw", 3);
        let r = MisbehaviourReport {
            reporter: id("gw"),
            manager: id("manager"),
            seq: 7,
            issued: UnixMillis::new(NOW),
            items: vec![EvidenceItem {
                subject: id("sensor-1"),
                evidence: Evidence::Flood,
                count: 12,
                first: UnixMillis::new(NOW - 900),
                last: UnixMillis::new(NOW),
            }],
        };
        let bytes = r.sign(&gw).unwrap();
        assert_eq!(MisbehaviourReport::claimed_reporter(&bytes), Some(id("gw")));
        let opened = MisbehaviourReport::open(
            &bytes,
            &gw.public(),
            &id("manager"),
            UnixMillis::new(NOW),
            AGE,
        )
        .unwrap();
        assert_eq!(opened, r);
        assert!(
            MisbehaviourReport::open(
                &bytes,
                &gw.public(),
                &id("other"),
                UnixMillis::new(NOW),
                AGE
            )
            .is_err()
        );
        assert!(
            MisbehaviourReport::open(
                &bytes,
                &cred("gw", 4).public(),
                &id("manager"),
                UnixMillis::new(NOW),
                AGE
            )
            .is_err()
        );
        assert!(
            MisbehaviourReport::open(
                &bytes,
                &gw.public(),
                &id("manager"),
                UnixMillis::new(NOW + AGE + 1),
                AGE
            )
            .is_err()
        );
        assert!(r.sign(&cred("other", 5)).is_err());
        let empty = MisbehaviourReport { items: vec![], ..r };
        assert!(empty.sign(&gw).is_err());
        // Not a report: an order ack's shape, or garbage.
        assert_eq!(MisbehaviourReport::claimed_reporter(b"\x83\x01"), None);
        assert!(!StatusList::looks_like(&bytes));
    }

    #[test]
    fn the_policy_counts_within_its_window_and_picks_the_strongest_action() {
        let mut p = MisbehaviourPolicy::new(vec![
            PolicyRule {
                evidence: Evidence::Flood,
                threshold: 10,
                window_ms: 60_000,
                action: Status::Suspended,
            },
            PolicyRule {
                evidence: Evidence::Flood,
                threshold: 30,
                window_ms: 600_000,
                action: Status::Revoked,
            },
        ])
        .unwrap();
        let item = |c| EvidenceItem {
            subject: id("sensor-1"),
            evidence: Evidence::Flood,
            count: c,
            first: UnixMillis::new(NOW),
            last: UnixMillis::new(NOW),
        };
        assert_eq!(p.record(&item(9), UnixMillis::new(NOW)), None);
        assert_eq!(
            p.record(&item(1), UnixMillis::new(NOW + 1)).map(|a| a.0),
            Some(Status::Suspended)
        );
        // 2 minutes on: the short window emptied, the long one holds 10 + 5.
        assert_eq!(p.record(&item(5), UnixMillis::new(NOW + 120_000)), None);
        assert_eq!(
            p.record(&item(15), UnixMillis::new(NOW + 121_000))
                .map(|a| a.0),
            Some(Status::Revoked)
        );
        // Evidence no rule counts changes nothing.
        let forgery = EvidenceItem {
            evidence: Evidence::Forgery,
            ..item(1000)
        };
        assert_eq!(p.record(&forgery, UnixMillis::new(NOW)), None);
        p.forget(&id("sensor-1"));
        assert_eq!(p.record(&item(1), UnixMillis::new(NOW + 122_000)), None);
        assert!(
            MisbehaviourPolicy::new(vec![PolicyRule {
                evidence: Evidence::Flood,
                threshold: 0,
                window_ms: 1,
                action: Status::Revoked
            }])
            .is_err()
        );
        assert!(Evidence::Flood.attributable() && !Evidence::Forgery.attributable());
        for e in Evidence::ALL {
            assert_eq!(Evidence::parse(e.as_str()), Some(e));
        }
    }

    #[test]
    fn the_evidence_buffer_aggregates_and_is_bounded() {
        let mut b = EvidenceBuffer::new();
        for n in 0..3 {
            b.add(&id("sensor-1"), Evidence::Forgery, UnixMillis::new(NOW + n));
        }
        for n in 0..(MAX_ITEMS as u64 + 5) {
            b.add(
                &id(&format!("s-{n}")),
                Evidence::Replay,
                UnixMillis::new(NOW),
            );
        }
        let (items, dropped) = b.take();
        assert_eq!(items.len(), MAX_ITEMS);
        assert_eq!(dropped, 6);
        let s1 = items.iter().find(|i| i.subject == id("sensor-1")).unwrap();
        assert_eq!((s1.count, s1.first.get(), s1.last.get()), (3, NOW, NOW + 2));
        assert!(b.is_empty());
        b.put_back(vec![s1.clone()]);
        b.add(&id("sensor-1"), Evidence::Forgery, UnixMillis::new(NOW + 9));
        let (items, _) = b.take();
        assert_eq!(items[0].count, 4);
    }
}

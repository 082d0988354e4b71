//! Authorization status at the manager: operators (and the misbehaviour
//! policy, on agents' signed reports) suspend, revoke and reinstate
//! entities; every change is checked, saved (compare-and-set on the list's
//! version), audited, then the freshly signed list goes to every enrolled
//! node (through its agent). A revocation then evicts the entity from
//! every group (each rekeyed) and deletes its enrolment.

use sealcast_group::status::{Listed, MisbehaviourPolicy, Status};
use sealcast_store::{Listing, StatusSnapshot};

use super::*;

/// A report or status list issued further than this from the receiver's
/// clock is refused.
pub const STATUS_MAX_AGE_MS: u64 = 10 * 60 * 1000;

/// What a status request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusOutcome {
    /// The entity.
    pub node: EntityId,
    /// Its status now (None: in good standing).
    pub status: Option<Status>,
    /// The list's version now.
    pub version: u64,
    /// Whether the request changed the list.
    pub changed: bool,
    /// The groups a revocation evicted it from, with their new epochs.
    pub evicted: Vec<(GroupId, Epoch)>,
}

/// The manager's status bookkeeping.
#[derive(Default)]
pub(super) struct StatusState {
    pub(super) policy: MisbehaviourPolicy,
    /// The version and list last sent to every node.
    published: Option<(u64, Listed)>,
    last_check: Option<std::time::Instant>,
}

impl StatusState {
    /// Whether `entity` is on the list last published (suspended or
    /// revoked).
    pub(super) fn is_listed(&self, entity: &EntityId) -> bool {
        self.published
            .as_ref()
            .is_some_and(|(_, listed)| listed.contains_key(entity))
    }
}

fn listed_of(snapshot: &StatusSnapshot) -> Listed {
    snapshot
        .listed
        .iter()
        .map(|r| (r.entity.clone(), r.status))
        .collect()
}

impl Runtime {
    pub(super) fn status_snapshot(&mut self) -> Result<StatusSnapshot> {
        let store = self.store.as_mut();
        Ok(blocking(|| store.status_list())?)
    }

    /// Suspends (`Some(Suspended)`), revokes (`Some(Revoked)`) or
    /// reinstates (`None`) `node`: check → save → audit → publish, and for
    /// a revocation then evict and remove.
    pub(super) async fn set_status(
        &mut self,
        node: &EntityId,
        target: Option<Status>,
        reason: &str,
    ) -> Result<StatusOutcome> {
        let snapshot = self.status_snapshot()?;
        let current = snapshot
            .listed
            .iter()
            .find(|r| r.entity == *node)
            .map(|r| r.status);
        let enrolled = self.manager.credential_of(node).cloned();
        if enrolled.is_none() && current.is_none() {
            return Err(Error::Group(sealcast_group::Error::UnknownMember));
        }
        if node == self.manager.id() {
            return Err(Error::Runtime("the manager cannot list itself".to_owned()));
        }
        let mut outcome = StatusOutcome {
            node: node.clone(),
            status: current,
            version: snapshot.version,
            changed: false,
            evicted: Vec::new(),
        };
        match (current, target) {
            (Some(Status::Revoked), Some(Status::Suspended)) | (Some(Status::Revoked), None) => {
                return Err(Error::Runtime(format!(
                    "{node} was revoked, which is final for its key: enrol it again under a new key with `sealcast group enrol` (that lifts the listing)"
                )));
            }
            (c, t) if c == t => {
                // Nothing to decide; a revocation interrupted before its
                // evictions is finished now.
                if t == Some(Status::Revoked) && enrolled.is_some() {
                    outcome.evicted = self.remove_entity(node).await?;
                }
                return Ok(outcome);
            }
            _ => {}
        }
        if current.is_none() && snapshot.listed.len() >= sealcast_group::status::MAX_LISTED {
            return Err(Error::Runtime(format!(
                "the status list holds {} entities, its limit: reinstate suspended ones first",
                snapshot.listed.len()
            )));
        }
        if target == Some(Status::Revoked) {
            self.check_removable(node)?;
        }
        let version = sealcast_group::transmission::next_version(Some(snapshot.version), now());
        let key = enrolled
            .as_ref()
            .map(|c| c.verifying_key().to_bytes().to_vec());
        let change = target.map(|status| Listing {
            status,
            reason,
            revoked_key: (status == Status::Revoked)
                .then_some(key.as_deref())
                .flatten(),
        });
        let store = self.store.as_mut();
        blocking(|| store.put_status(node, change, snapshot.version, version))?;
        let word = target.map_or("reinstated", Status::as_str);
        self.audit(
            AuditKind::Other("status".into()),
            None,
            Some(node),
            format!("{word} (list version {version}): {reason}"),
        );
        info!(%node, status = word, version, reason, "authorization status changed");
        let mut listed = listed_of(&snapshot);
        match target {
            Some(s) => listed.insert(node.clone(), s),
            None => listed.remove(node),
        };
        self.publish_status(version, &listed).await;
        outcome.status = target;
        outcome.version = version;
        outcome.changed = true;
        self.status.policy.forget(node);
        if target == Some(Status::Revoked) && enrolled.is_some() {
            outcome.evicted = self.remove_entity(node).await.map_err(|e| {
                Error::Runtime(format!(
                    "{node} is listed as revoked, but removing it failed ({e}); run the revocation again to finish it"
                ))
            })?;
        }
        Ok(outcome)
    }

    /// Signs the list and sends it to every enrolled device and agent,
    /// through its agent when it has one.
    async fn publish_status(&mut self, version: u64, listed: &Listed) {
        let bytes = match self.manager.status_list(version, now(), listed) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "status list not signed");
                return;
            }
        };
        let nodes: Vec<(EntityId, EntityId)> = self
            .manager
            .enrolled()
            .filter(|(_, kind, _)| matches!(kind, EntityKind::Device | EntityKind::Agent))
            .map(|(c, _, agent)| (c.id().clone(), agent.unwrap_or(c.id()).clone()))
            .collect();
        let mut failed = 0usize;
        for (node, hop) in &nodes {
            let target = self.topics.device(node, DeviceChannel::Delivery);
            if self.link.send_to(hop, target, bytes.clone()).await.is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            warn!(
                failed,
                nodes = nodes.len(),
                version,
                "status list not sent to every node; each gets it again with its next pull"
            );
        } else {
            debug!(nodes = nodes.len(), version, "status list sent");
        }
        self.status.published = Some((version, listed.clone()));
    }

    /// Sends the current list (if any entity was ever listed) to `device`,
    /// with the answer to its verified pull.
    pub(super) async fn send_status_to(&mut self, device: &EntityId) {
        let Some((version, listed)) = self.status.published.clone() else {
            return;
        };
        if version == 0 {
            return;
        }
        if let Ok(bytes) = self.manager.status_list(version, now(), &listed) {
            let hop = self
                .manager
                .agent_of(device)
                .cloned()
                .unwrap_or_else(|| device.clone());
            let target = self.topics.device(device, DeviceChannel::Delivery);
            if let Err(e) = self.link.send_to(&hop, target, bytes).await {
                debug!(%device, error = %e, "status list not sent with the pull answer");
            }
        }
    }

    /// Before enrolling `fresh`: an id revoked under the same key is
    /// refused; the ids revoked under another key are returned, to lift
    /// their listing once the new key is enrolled.
    pub(super) fn revoked_among(&mut self, fresh: &[&PublicCredential]) -> Result<Vec<EntityId>> {
        let snapshot = self.status_snapshot()?;
        let mut lift = Vec::new();
        for c in fresh {
            let Some(r) = snapshot
                .listed
                .iter()
                .find(|r| r.entity == *c.id() && r.status == Status::Revoked)
            else {
                continue;
            };
            if r.revoked_key.as_deref() == Some(&c.verifying_key().to_bytes()[..]) {
                return Err(Error::Runtime(format!(
                    "{} was revoked under this very key ({}): nothing was enrolled; generate a new key for it (`sealcast keygen`) and enrol that",
                    c.id(),
                    r.reason
                )));
            }
            lift.push(c.id().clone());
        }
        Ok(lift)
    }

    /// Lifts the revoked listing of ids enrolled again under a new key
    /// (each a new list version; published with the next check).
    pub(super) fn lift_revoked(&mut self, ids: &[EntityId]) {
        for id in ids {
            let r = self.status_snapshot().and_then(|snapshot| {
                let version =
                    sealcast_group::transmission::next_version(Some(snapshot.version), now());
                let store = self.store.as_mut();
                blocking(|| store.put_status(id, None, snapshot.version, version))?;
                Ok(version)
            });
            match r {
                Ok(version) => {
                    self.audit(
                        AuditKind::Other("status".into()),
                        None,
                        Some(id),
                        format!("reinstated under a new key (list version {version})"),
                    );
                    info!(node = %id, version, "revoked id enrolled under a new key: listing lifted");
                }
                Err(e) => {
                    warn!(node = %id, error = %e, "the revoked listing of a re-enrolled id was not lifted; nodes keep refusing it until `sealcast node reinstate`")
                }
            }
        }
    }

    /// Every [`ORDER_CHECK_INTERVAL`]: a list changed by another manager of
    /// the store (or not yet sent since this one started) goes out.
    pub(super) async fn check_status(&mut self) {
        let now_i = std::time::Instant::now();
        if self
            .status
            .last_check
            .is_some_and(|t| now_i.duration_since(t) < ORDER_CHECK_INTERVAL)
        {
            return;
        }
        self.status.last_check = Some(now_i);
        let snapshot = match self.status_snapshot() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the authorization status list");
                return;
            }
        };
        if self.status.published.as_ref().map(|(v, _)| *v) != Some(snapshot.version) {
            let listed = listed_of(&snapshot);
            if snapshot.version > 0 {
                self.publish_status(snapshot.version, &listed).await;
            } else {
                self.status.published = Some((0, listed));
            }
        }
    }

    /// An agent's signed misbehaviour report: verified, taken once (its
    /// number), audited item by item, and weighed by the policy.
    pub(super) async fn on_misbehaviour(&mut self, payload: &[u8]) {
        let at = now();
        let report = match self
            .manager
            .open_misbehaviour_report(payload, at, STATUS_MAX_AGE_MS)
        {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "misbehaviour report refused");
                return;
            }
        };
        let store = self.store.as_mut();
        match blocking(|| store.take_report_seq(&report.reporter, report.seq)) {
            Ok(true) => {}
            Ok(false) => {
                debug!(reporter = %report.reporter, seq = report.seq, "misbehaviour report seen before (a replay or a re-sent copy): not counted again");
                return;
            }
            Err(e) => {
                warn!(reporter = %report.reporter, error = %e, "misbehaviour report not recorded; the agent reports again");
                return;
            }
        }
        for item in &report.items {
            let detail = format!(
                "{} x{} reported by {} ({}{})",
                item.evidence,
                item.count,
                report.reporter,
                if item.evidence.attributable() {
                    "verified"
                } else {
                    "claimed sender, not attributable"
                },
                if item.first == item.last {
                    String::new()
                } else {
                    format!(", over {} ms", item.last.get() - item.first.get())
                }
            );
            self.audit(
                AuditKind::Other("misbehaviour".into()),
                None,
                Some(&item.subject),
                detail,
            );
            info!(subject = %item.subject, evidence = %item.evidence, count = item.count, reporter = %report.reporter, "misbehaviour reported");
            let Some((action, why)) = self.status.policy.record(item, at) else {
                continue;
            };
            if item.subject == report.reporter || item.subject == *self.manager.id() {
                continue;
            }
            let current = self
                .status
                .published
                .as_ref()
                .and_then(|(_, l)| l.get(&item.subject).copied());
            if current.is_some_and(|c| c >= action) {
                continue;
            }
            let reason = format!(
                "misbehaviour policy: {why}; reported by {}",
                report.reporter
            );
            match self.set_status(&item.subject, Some(action), &reason).await {
                Ok(o) => {
                    warn!(subject = %item.subject, status = %action, version = o.version, groups = o.evicted.len(), "misbehaviour policy acted: {why}")
                }
                Err(e) => {
                    warn!(subject = %item.subject, error = %e, "misbehaviour policy could not act")
                }
            }
        }
    }
}

//! The handle callers hold to a running manager: every administration
//! operation is a message to its task, answered on a oneshot channel.

use super::*;

/// A handle to a running manager.
#[derive(Clone)]
pub struct ManagerHandle {
    pub(super) admin: mpsc::Sender<Admin>,
    pub(super) resends: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl core::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ManagerHandle")
    }
}

macro_rules! ask {
    ($self:ident, $variant:ident { $($field:ident: $value:expr),* }) => {{
        let (reply, rx) = oneshot::channel();
        $self.admin
            .send(Admin::$variant { $($field: $value,)* reply })
            .await
            .map_err(|_| Error::Runtime("the manager stopped".into()))?;
        rx.await.map_err(|_| Error::Runtime("the manager stopped".into()))?
    }};
}

impl ManagerHandle {
    /// Enrols an entity.
    pub async fn enrol(
        &self,
        credential: PublicCredential,
        kind: EntityKind,
        agent: Option<EntityId>,
    ) -> Result<()> {
        ask!(
            self,
            Enrol {
                credential: Box::new(credential),
                kind: kind,
                agent: agent
            }
        )
    }
    /// Creates a group.
    pub async fn create_group(
        &self,
        group: GroupId,
        alg: AeadAlg,
        scheme: RekeyScheme,
    ) -> Result<()> {
        ask!(
            self,
            CreateGroup {
                group: group,
                alg: alg,
                scheme: scheme
            }
        )
    }
    /// Adds members (one join event).
    pub async fn add_members(&self, group: GroupId, members: Vec<(EntityId, Role)>) -> Result<()> {
        ask!(
            self,
            AddMembers {
                group: group,
                members: members
            }
        )
    }
    /// Evicts a member (rekey).
    pub async fn evict(&self, group: GroupId, member: EntityId) -> Result<()> {
        ask!(
            self,
            Evict {
                group: group,
                member: member
            }
        )
    }
    /// A group's summary (epoch, members, how many hold the current epoch).
    pub async fn summary(&self, group: GroupId) -> Result<Option<GroupSummary>> {
        let (reply, rx) = oneshot::channel();
        self.admin
            .send(Admin::Summary { group, reply })
            .await
            .map_err(|_| Error::Runtime("the manager stopped".into()))?;
        rx.await
            .map_err(|_| Error::Runtime("the manager stopped".into()))
    }

    /// Enrols many entities in one operation (one store transaction, one
    /// audit write): all or none. An entity enrolled already with the same
    /// credential, kind and agent counts as unchanged; with another one the
    /// batch is refused.
    pub async fn enrol_many(&self, entities: Vec<Enrolment>) -> Result<EnrolReport> {
        ask!(self, EnrolMany { entities: entities })
    }
    /// Moves a group to a fresh key without a membership change
    /// (`Manager::rekey`); saved and audited before it is published. Returns
    /// the new epoch.
    pub async fn rekey(&self, group: GroupId) -> Result<Epoch> {
        ask!(self, Rekey { group: group })
    }
    /// Every group's summary, by group id.
    pub async fn groups(&self) -> Result<Vec<GroupSummary>> {
        let (reply, rx) = oneshot::channel();
        self.admin
            .send(Admin::Groups { reply })
            .await
            .map_err(|_| Error::Runtime("the manager stopped".into()))?;
        rx.await
            .map_err(|_| Error::Runtime("the manager stopped".into()))
    }
    /// One group's summary, algorithm and members.
    pub async fn detail(&self, group: GroupId) -> Result<Option<GroupDetail>> {
        self.detail_page(group, 0..usize::MAX).await
    }

    /// One group's summary, algorithm, the members at positions `page` (in
    /// id order) and how many members hold each epoch: a page of a large
    /// group without copying all its members.
    pub async fn detail_page(
        &self,
        group: GroupId,
        page: core::ops::Range<usize>,
    ) -> Result<Option<GroupDetail>> {
        let (reply, rx) = oneshot::channel();
        self.admin
            .send(Admin::Detail { group, page, reply })
            .await
            .map_err(|_| Error::Runtime("the manager stopped".into()))?;
        rx.await
            .map_err(|_| Error::Runtime("the manager stopped".into()))
    }

    /// Remote transmission control: stops (`deactivate`) or resumes the
    /// `scopes` of `node`; saved and audited before the signed order is
    /// sent. Answers the node's state (unchanged when it already was so).
    pub async fn transmission(
        &self,
        node: EntityId,
        deactivate: bool,
        scopes: Vec<sealcast_group::transmission::Scope>,
    ) -> Result<NodeState> {
        ask!(
            self,
            Transmission {
                node: node,
                deactivate: deactivate,
                scopes: scopes
            }
        )
    }

    /// Removes an enrolled entity entirely: evicted from every group (each
    /// rekeyed), its enrolment and transmission order deleted. Returns the
    /// groups it left with their new epochs.
    pub async fn remove(&self, entity: EntityId) -> Result<Vec<(GroupId, Epoch)>> {
        ask!(self, Remove { entity: entity })
    }

    /// Suspends (`Some(Suspended)`), revokes (`Some(Revoked)`) or
    /// reinstates (`None`) an entity: saved and audited before the signed
    /// status list goes to every node; a revocation then evicts it from
    /// every group (each rekeyed) and deletes its enrolment.
    pub async fn set_status(
        &self,
        node: EntityId,
        target: Option<sealcast_group::status::Status>,
        reason: String,
    ) -> Result<StatusOutcome> {
        ask!(
            self,
            SetStatus {
                node: node,
                target: target,
                reason: reason
            }
        )
    }

    /// Replaces an enrolled entity's public key (operator-authorised
    /// rotation), keeping its kind, agent and memberships; saved and
    /// audited before it takes effect.
    pub async fn rotate_key(&self, credential: PublicCredential) -> Result<Rotated> {
        ask!(
            self,
            RotateKey {
                credential: Box::new(credential)
            }
        )
    }

    /// The authorization status list as stored.
    pub async fn status_list(&self) -> Result<sealcast_store::StatusSnapshot> {
        ask!(self, StatusList {})
    }

    /// Replaces the misbehaviour policy (rules over agents' reports).
    pub async fn set_misbehaviour_policy(
        &self,
        rules: Vec<sealcast_group::status::PolicyRule>,
    ) -> Result<()> {
        ask!(self, SetPolicy { rules: rules })
    }

    /// Replaces the access-token grants: each entity gets a token at once
    /// and a renewed one at half its lifetime.
    pub async fn set_token_grants(&self, grants: Vec<super::TokenGrant>) -> Result<()> {
        ask!(self, SetTokenGrants { grants: grants })
    }

    /// Records in the audit log that the administration policy refused a
    /// control request (`detail`: who, what, the decision).
    pub async fn audit_admin_refusal(&self, detail: String) -> Result<()> {
        ask!(self, RefusedByPolicy { detail: detail });
        Ok(())
    }

    /// The newest access token issued to `entity` (None: no grant, or not
    /// issued yet).
    pub async fn token_of(
        &self,
        entity: EntityId,
    ) -> Result<Option<sealcast_group::token::AccessToken>> {
        Ok(ask!(self, TokenOf { entity: entity }))
    }

    /// A node's transmission state (its order, acknowledged or not).
    pub async fn node_status(&self, node: EntityId) -> Result<NodeState> {
        ask!(self, NodeStatus { node: node })
    }

    /// Key deliveries re-sent so far to members that had not acknowledged.
    pub fn resends(&self) -> u64 {
        self.resends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the manager once it finished the message or operation in hand
    /// (every operation is saved and audited before it is published) and
    /// disconnects it.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.admin.send(Admin::Stop { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until every member of `group` acknowledged its current epoch.
    pub async fn wait_converged(&self, group: &GroupId, timeout: Duration) -> Result<GroupSummary> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.summary(group.clone()).await? {
                if s.current == s.members {
                    return Ok(s);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Runtime(format!(
                        "group {group}: only {} of {} members hold epoch {} after {timeout:?}",
                        s.current, s.members, s.epoch
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

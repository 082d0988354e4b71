//! Access-control tokens at the manager (`sealcast_group::token`): for each
//! configured grant, the manager signs a short-lived token for the entity
//! and sends it end to end on the entity's delivery target (through its
//! agent, which cannot forge or alter it); it renews every token when half
//! its lifetime has passed — "obtain/update access control tokens" — and
//! sends the current one with the answer to each verified pull, so a node
//! that was away holds a valid token again as soon as it is back.

use rand_core::Rng as _;
use sealcast_group::token::{AccessToken, Grant};

use super::*;

/// A token may be used this long before its `iat` (receivers' clocks may
/// run a little behind the manager's).
pub const TOKEN_CLOCK_SLACK_S: u64 = 60;
/// Shortest lifetime a grant may ask for.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(2);

/// What the manager grants one entity, by token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    /// The holder.
    pub entity: EntityId,
    /// Its rights.
    pub scope: Vec<Grant>,
    /// How long each token is valid (renewed at half of it).
    pub lifetime: Duration,
}

/// The grants and the newest token issued under each.
#[derive(Default)]
pub(super) struct TokenState {
    grants: Vec<TokenGrant>,
    issued: BTreeMap<EntityId, (AccessToken, Vec<u8>)>,
    /// Grants already warned about (entity not enrolled), to warn once.
    warned: BTreeSet<EntityId>,
    /// Entities whose token went again on their first acknowledgement in
    /// this run ([`Runtime::send_token_on_first_ack`]).
    sent_on_ack: BTreeSet<EntityId>,
}

impl TokenState {
    pub(super) fn set(&mut self, grants: Vec<TokenGrant>) -> Result<()> {
        for g in &grants {
            if g.lifetime < MIN_TOKEN_LIFETIME {
                return Err(Error::Runtime(format!(
                    "access token for {}: a lifetime of at least {} s",
                    g.entity,
                    MIN_TOKEN_LIFETIME.as_secs()
                )));
            }
        }
        self.issued
            .retain(|e, _| grants.iter().any(|g| g.entity == *e));
        self.grants = grants;
        Ok(())
    }

    /// The newest token issued to `entity`.
    pub(super) fn issued(&self, entity: &EntityId) -> Option<&AccessToken> {
        self.issued.get(entity).map(|(t, _)| t)
    }
}

impl Runtime {
    /// Issues and sends every token that is missing or past half its
    /// lifetime.
    pub(super) async fn renew_tokens(&mut self) {
        let now_s = now().get() / 1000;
        let due: Vec<TokenGrant> = self
            .tokens
            .grants
            .iter()
            .filter(|g| {
                self.tokens.issued.get(&g.entity).is_none_or(|(t, _)| {
                    now_s.saturating_sub(t.issued_at) >= g.lifetime.as_secs().div_ceil(2)
                        || now_s < t.issued_at
                })
            })
            .cloned()
            .collect();
        for grant in due {
            if !matches!(
                self.manager.kind_of(&grant.entity),
                Some(EntityKind::Device | EntityKind::Agent)
            ) {
                if self.tokens.warned.insert(grant.entity.clone()) {
                    warn!(entity = %grant.entity, "access token not issued: the entity is not an enrolled device or gateway; enrol it (`sealcast group enrol`) and it gets its token");
                }
                continue;
            }
            if self.status.is_listed(&grant.entity) {
                if self.tokens.warned.insert(grant.entity.clone()) {
                    warn!(entity = %grant.entity, "access token not renewed: the entity is on the status list (suspended or revoked); the one it holds runs out, and `sealcast node reinstate` lets it get a new one");
                }
                continue;
            }
            self.tokens.warned.remove(&grant.entity);
            let token = AccessToken {
                issuer: self.manager.id().clone(),
                subject: grant.entity.clone(),
                issued_at: now_s,
                not_before: now_s.saturating_sub(TOKEN_CLOCK_SLACK_S),
                expires: now_s.saturating_add(grant.lifetime.as_secs()),
                id: {
                    let mut id = [0u8; 8];
                    self.rng.fill_bytes(&mut id);
                    id
                },
                scope: grant.scope.clone(),
            };
            let bytes = match self.manager.sign_access_token(&token) {
                Ok(b) => b,
                Err(e) => {
                    warn!(entity = %grant.entity, error = %e, "access token not signed");
                    continue;
                }
            };
            let renewed = self.tokens.issued.contains_key(&grant.entity);
            self.audit(
                AuditKind::Other("access-token".into()),
                None,
                Some(&grant.entity),
                format!(
                    "access token {} {}: {}, valid until {}",
                    crate::control::hex(&token.id),
                    if renewed { "renewed" } else { "issued" },
                    token.describe(),
                    token.expires
                ),
            );
            debug!(entity = %grant.entity, scope = %token.describe(), expires = token.expires, "access token issued");
            self.tokens
                .issued
                .insert(grant.entity.clone(), (token, bytes));
            self.send_token_to(&grant.entity).await;
        }
    }

    /// A member that acknowledges is reachable: its token goes to it once
    /// more, the first time it acknowledges in this run. A token pushed
    /// before the entity could be reached is otherwise lost until the next
    /// renewal (on oneM2M a notification to an AE that has not registered
    /// yet is refused; MQTT queues it on a persistent session).
    pub(super) async fn send_token_on_first_ack(&mut self, entity: &EntityId) {
        if self.tokens.issued.contains_key(entity) && self.tokens.sent_on_ack.insert(entity.clone())
        {
            self.send_token_to(entity).await;
        }
    }

    /// Sends `entity` its current token (if it has a grant), through its
    /// agent when it has one.
    pub(super) async fn send_token_to(&mut self, entity: &EntityId) {
        let Some((_, bytes)) = self.tokens.issued.get(entity) else {
            return;
        };
        let bytes = bytes.clone();
        let hop = self
            .manager
            .agent_of(entity)
            .cloned()
            .unwrap_or_else(|| entity.clone());
        let target = self.topics.device(entity, DeviceChannel::Delivery);
        if let Err(e) = self.link.send_to(&hop, target, bytes).await {
            debug!(%entity, error = %e, "access token not sent; it goes again with the next renewal or pull answer");
        }
    }
}

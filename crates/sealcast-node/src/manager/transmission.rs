//! Remote transmission control at the manager: an operator's order is
//! checked, saved (compare-and-set on the node's version), audited, signed
//! and sent end to end to the node (through its agent); the manager
//! re-sends it, freshly signed, with backoff until the node acknowledges.

use sealcast_group::transmission::{Scope, Stopped, next_stopped, next_version};
use sealcast_store::TransmissionRecord;

use super::*;

/// The first re-send of an unacknowledged order comes this long after it
/// was sent; each further one waits twice as long, up to the manager's
/// `resend_max_interval`.
pub const ORDER_RETRY_FIRST: Duration = Duration::from_secs(5);
/// How often the manager looks for unacknowledged orders in its store.
pub const ORDER_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Most orders re-sent in one check.
const ORDER_RESENDS_PER_CHECK: usize = 1000;

/// A node's transmission state as the manager reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The node.
    pub node: EntityId,
    /// What it is.
    pub kind: EntityKind,
    /// Its current order, if it ever got one.
    pub record: Option<TransmissionRecord>,
    /// Whether the request that produced this changed the order.
    pub changed: bool,
}

/// When each unacknowledged order is due again, and the pull answers held
/// until their node acknowledges its order.
#[derive(Default)]
pub(super) struct OrderResends {
    due: BTreeMap<EntityId, (std::time::Instant, Duration)>,
    pub(super) last_check: Option<std::time::Instant>,
    deferred: BTreeMap<EntityId, Outgoing>,
}

/// Most pull answers held for unacknowledged orders (one per node; the
/// node pulls again if its answer was dropped).
const MAX_DEFERRED: usize = 100_000;

impl OrderResends {
    /// Stops re-sending to a removed entity.
    pub(super) fn forget(&mut self, entity: &EntityId) {
        self.due.remove(entity);
        self.deferred.remove(entity);
    }

    /// Holds `answer` (to a pull of `node`) until `node` acknowledges its
    /// order; a newer pull's answer replaces an older one.
    pub(super) fn defer_answer(&mut self, node: EntityId, answer: Outgoing) {
        if self.deferred.len() >= MAX_DEFERRED && !self.deferred.contains_key(&node) {
            return;
        }
        self.deferred.insert(node, answer);
    }
}

impl Runtime {
    fn node_kind(&self, node: &EntityId) -> Result<EntityKind> {
        match self.manager.kind_of(node) {
            Some(k @ (EntityKind::Device | EntityKind::Agent)) => Ok(k),
            Some(EntityKind::Headend) => Err(Error::Runtime(format!(
                "{node} is a headend: transmission control is for field nodes (devices, gateways, DAPs)"
            ))),
            None => Err(Error::Group(sealcast_group::Error::UnknownMember)),
        }
    }

    pub(super) fn node_state(&mut self, node: &EntityId) -> Result<NodeState> {
        let kind = self.node_kind(node)?;
        let store = self.store.as_mut();
        let record = blocking(|| store.transmission(node))?;
        Ok(NodeState {
            node: node.clone(),
            kind,
            record,
            changed: false,
        })
    }

    /// Applies an operator's order: check → save → audit → send.
    pub(super) async fn transmission(
        &mut self,
        node: &EntityId,
        deactivate: bool,
        scopes: &[Scope],
    ) -> Result<NodeState> {
        let mut state = self.node_state(node)?;
        let current = state.record.as_ref();
        let stopped = next_stopped(
            &current.map(|r| r.stopped.clone()).unwrap_or_default(),
            deactivate,
            scopes,
        );
        let unchanged = match current {
            Some(r) => r.stopped == stopped,
            None => stopped.is_empty(),
        };
        if unchanged {
            // Nothing to decide; an order the node has not acknowledged yet
            // goes out again now.
            if let Some(r) = current.filter(|r| !r.is_acked()).cloned() {
                self.send_order(&r).await;
            }
            return Ok(state);
        }
        let at = now();
        let record = TransmissionRecord {
            entity: node.clone(),
            version: next_version(current.map(|r| r.version), at),
            stopped,
            acked: current.and_then(|r| r.acked),
            updated_at: at,
        };
        let expected = current.map(|r| r.version);
        let store = self.store.as_mut();
        blocking(|| store.put_transmission(&record, expected))?;
        self.audit(
            AuditKind::Other("transmission".into()),
            None,
            Some(node),
            format!(
                "order version {}: stop {}",
                record.version,
                sealcast_group::transmission::describe(&record.stopped)
            ),
        );
        info!(
            %node,
            version = record.version,
            stopped = %sealcast_group::transmission::describe(&record.stopped),
            "transmission order issued"
        );
        self.send_order(&record).await;
        state.record = Some(record);
        state.changed = true;
        Ok(state)
    }

    /// Signs `record` afresh (a new `issued` time) and sends it to the node,
    /// through its agent when it has one; schedules the next re-send.
    async fn send_order(&mut self, record: &TransmissionRecord) {
        let bytes = match self.manager.transmission_order(
            &record.entity,
            record.version,
            now(),
            &record.stopped,
        ) {
            Ok(b) => b,
            Err(e) => {
                warn!(node = %record.entity, error = %e, "transmission order not signed");
                return;
            }
        };
        let target = self.topics.device(&record.entity, DeviceChannel::Delivery);
        let next_hop = self
            .manager
            .agent_of(&record.entity)
            .cloned()
            .unwrap_or_else(|| record.entity.clone());
        if let Err(e) = self.link.send_to(&next_hop, target, bytes).await {
            warn!(node = %record.entity, error = %e, "transmission order not sent; it is re-sent until the node acknowledges");
        }
        let entry = self
            .order_resends
            .due
            .entry(record.entity.clone())
            .or_insert((std::time::Instant::now(), ORDER_RETRY_FIRST / 2));
        let interval = (entry.1 * 2).min(self.order_retry_max.max(ORDER_RETRY_FIRST));
        *entry = (std::time::Instant::now() + interval, interval);
    }

    /// Before answering a verified pull of `device`: its order, if it has
    /// not acknowledged it (then true: hold the answer until it does).
    pub(super) async fn order_before_pull(&mut self, device: &EntityId) -> bool {
        let store = self.store.as_mut();
        match blocking(|| store.transmission(device)) {
            Ok(Some(record)) if !record.is_acked() => {
                self.send_order(&record).await;
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(%device, error = %e, "cannot read the transmission order");
                false
            }
        }
    }

    /// A node's signed acknowledgement of an order.
    pub(super) async fn on_order_ack(&mut self, payload: &[u8]) {
        let ack = match self.manager.handle_order_ack(payload) {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "transmission ack refused");
                return;
            }
        };
        let store = self.store.as_mut();
        match blocking(|| store.ack_transmission(&ack.node, ack.version)) {
            Ok(true) => {
                self.order_resends.due.remove(&ack.node);
                info!(node = %ack.node, version = ack.version, "transmission order acknowledged");
                if let Some(answer) = self.order_resends.deferred.remove(&ack.node) {
                    self.publish(vec![answer]).await;
                }
                self.audit(
                    AuditKind::Other("transmission-ack".into()),
                    None,
                    Some(&ack.node),
                    format!("order version {}", ack.version),
                );
            }
            Ok(false) => {
                debug!(node = %ack.node, version = ack.version, "ack of a superseded transmission order")
            }
            Err(e) => {
                warn!(node = %ack.node, error = %e, "transmission ack not saved; the order is re-sent and acknowledged again")
            }
        }
    }

    /// Re-sends the orders that are due: every [`ORDER_CHECK_INTERVAL`]
    /// the store is asked for unacknowledged orders (another manager of a
    /// shared store may have issued them), and each goes out again when its
    /// backoff ran out.
    pub(super) async fn resend_orders(&mut self) {
        let now_i = std::time::Instant::now();
        if self
            .order_resends
            .last_check
            .is_some_and(|t| now_i.duration_since(t) < ORDER_CHECK_INTERVAL)
        {
            return;
        }
        self.order_resends.last_check = Some(now_i);
        let store = self.store.as_mut();
        let pending = match blocking(|| store.pending_transmissions()) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read pending transmission orders");
                return;
            }
        };
        let pending_ids: BTreeSet<&EntityId> = pending.iter().map(|r| &r.entity).collect();
        self.order_resends
            .due
            .retain(|id, _| pending_ids.contains(id));
        let mut sent = 0;
        for record in &pending {
            if sent >= ORDER_RESENDS_PER_CHECK {
                break;
            }
            let due = self
                .order_resends
                .due
                .get(&record.entity)
                .is_none_or(|(at, _)| *at <= now_i);
            if due && self.manager.kind_of(&record.entity).is_some() {
                self.send_order(record).await;
                sent += 1;
            }
        }
        if sent > 0 {
            debug!(orders = sent, "unacknowledged transmission orders re-sent");
        }
    }
}

/// The scopes as text, for answers.
pub fn scope_names(stopped: &Stopped) -> Vec<String> {
    stopped.iter().map(ToString::to_string).collect()
}

//! What a node watches for: signers on the manager's status list (their
//! messages are refused), senders over a rate cap, and — on an agent —
//! the misbehaviour evidence it reports to the manager in signed reports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sealcast_core::credential::EntityCredential;
use sealcast_group::status::{Evidence, EvidenceBuffer, EvidenceItem, MisbehaviourReport};
use sealcast_store::DeviceStateFile;

use crate::status_store::StatusStore;

use super::*;

/// How a node watches for misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MisbehaviourWatch {
    /// Send signed misbehaviour reports to the manager (agents; the
    /// manager takes reports from agents only).
    pub report: bool,
    /// Evidence is gathered and sent at most this often.
    pub report_interval: Duration,
    /// Verified messages one signer may send per minute; more are refused
    /// (not executed, no rule fires) and reported as `flood` (None: no cap).
    pub max_per_sender_per_minute: Option<u32>,
}

impl Default for MisbehaviourWatch {
    /// No reports, no cap (the demos, plain devices).
    fn default() -> Self {
        Self {
            report: false,
            report_interval: Duration::from_secs(2),
            max_per_sender_per_minute: None,
        }
    }
}

/// Senders followed by the rate cap at most; past it the counts restart.
const MAX_RATE_ENTRIES: usize = 100_000;

pub(super) struct Watch {
    config: MisbehaviourWatch,
    evidence: EvidenceBuffer,
    rates: HashMap<EntityId, (Instant, u32)>,
    last_seq: u64,
    next_report: Instant,
    /// The manager's status list, kept in `status.cbor` beside the state.
    pub(super) status: StatusStore,
}

impl Watch {
    /// Restores the status repository from `status.cbor` next to the
    /// state file (a file that does not verify as the manager's stops the
    /// start: it was not written by this node).
    pub(super) fn open(
        config: MisbehaviourWatch,
        state_file: Option<&DeviceStateFile>,
        manager: &EntityId,
    ) -> Result<Self> {
        let status = StatusStore::open(state_file, crate::status_store::STATUS_FILE, manager)?;
        Ok(Self {
            config,
            evidence: EvidenceBuffer::new(),
            rates: HashMap::new(),
            last_seq: 0,
            next_report: Instant::now(),
            status,
        })
    }

    pub(super) fn reports(&self) -> bool {
        self.config.report
    }

    pub(super) fn report_interval(&self) -> Duration {
        self.config.report_interval
    }

    /// Records evidence for the next report (agents only).
    pub(super) fn saw(&mut self, subject: &EntityId, evidence: Evidence, at: UnixMillis) {
        if self.config.report {
            self.evidence.add(subject, evidence, at);
        }
    }

    /// Counts one verified message of `signer`; true when it is over the
    /// cap for the current minute.
    pub(super) fn over_rate(&mut self, signer: &EntityId) -> bool {
        let Some(cap) = self.config.max_per_sender_per_minute else {
            return false;
        };
        let now = Instant::now();
        if self.rates.len() >= MAX_RATE_ENTRIES && !self.rates.contains_key(signer) {
            self.rates.clear();
        }
        let (start, count) = self.rates.entry(signer.clone()).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count > cap
    }

    /// The next report when one is due and evidence is waiting: signed,
    /// with the items it carries (to put back if sending fails).
    pub(super) fn due_report(
        &mut self,
        me: &EntityCredential,
        manager: &EntityId,
        at: UnixMillis,
    ) -> Option<(Vec<u8>, Vec<EvidenceItem>, u64)> {
        let now = Instant::now();
        if !self.config.report || self.evidence.is_empty() || now < self.next_report {
            return None;
        }
        self.next_report = now + self.config.report_interval;
        let (items, dropped) = self.evidence.take();
        // Numbers only grow, also across restarts (they follow the clock).
        let seq = self.last_seq.saturating_add(1).max(at.get());
        self.last_seq = seq;
        let report = MisbehaviourReport {
            reporter: me.id().clone(),
            manager: manager.clone(),
            seq,
            issued: at,
            items,
        };
        match report.sign(me) {
            Ok(bytes) => Some((bytes, report.items, dropped)),
            Err(e) => {
                warn!(node = %me.id(), error = %e, "misbehaviour report not signed");
                None
            }
        }
    }

    /// Items of a report that could not be sent, for the next one.
    pub(super) fn put_back(&mut self, items: Vec<EvidenceItem>) {
        self.evidence.put_back(items);
    }
}

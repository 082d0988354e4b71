//! The audit log of a field node, DAP or headend: every protected message it
//! takes in or sends out — metadata only (who, which group, which kind,
//! sequence number, outcome), never a payload, a reading or a key — in the
//! same hash-chained JSON-lines format as the manager's log
//! (`sealcast_store::audit`), rotated by size with the chain continuing
//! across segments (`sealcast audit verify <file>` checks them together).
//!
//! One writer per log: a runtime opens it after it took its state file's
//! lock. A record that cannot be written (a full disk) is logged
//! (rate-limited) and counted, records are skipped for
//! [`RETRY_AFTER_FAILURE`], then the log is reopened; the protocol goes on —
//! an alarm must still open a door.

use std::path::PathBuf;

use sealcast_core::ids::{EntityId, GroupId};
use sealcast_store::{AuditEntry, AuditKind, AuditLog, Rotation};
use tracing::{info, warn};

use crate::Result;
use crate::runtime::{WarnLimiter, now};

/// Where a runtime keeps its audit log, and when it rotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// The current file (`<state_dir>/audit.jsonl` in the services).
    pub path: PathBuf,
    /// Size and number of rotated segments.
    pub rotation: Rotation,
}

impl AuditConfig {
    /// The services' defaults for `path`: rotate at 16 MiB, keep 8 segments.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            rotation: Rotation {
                max_bytes: 16 << 20,
                keep: 8,
            },
        }
    }
}

/// What a record is about (the log's `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A protected message opened and accepted.
    Received,
    /// A protected message refused (forged, replayed, stale, not ours …).
    Refused,
    /// A protected message sealed and sent.
    Sent,
    /// A message for another entity passed on unread.
    Relayed,
    /// Key material installed.
    Installed,
    /// A transmission order applied or refused.
    Order,
    /// Accepted, but flagged (a sequence gap, an implausible value).
    Flagged,
}

impl Record {
    fn kind(self) -> AuditKind {
        AuditKind::Other(
            match self {
                Record::Received => "received",
                Record::Refused => "refused",
                Record::Sent => "sent",
                Record::Relayed => "relayed",
                Record::Installed => "installed",
                Record::Order => "order",
                Record::Flagged => "flagged",
            }
            .into(),
        )
    }
}

/// One record to write: see [`NodeAudit::record`].
pub fn entry(
    record: Record,
    group: Option<&GroupId>,
    entity: Option<&EntityId>,
    detail: String,
) -> AuditEntry {
    let mut e = AuditEntry::new(now(), record.kind(), detail);
    if let Some(g) = group {
        e = e.with_group(g.clone());
    }
    if let Some(id) = entity {
        e = e.with_entity(id.clone());
    }
    e
}

/// A runtime's open audit log.
#[derive(Debug)]
pub struct NodeAudit {
    config: AuditConfig,
    log: AuditLog,
    failures: WarnLimiter,
    failed: u64,
    /// Refusals not written yet, by (group, reason): a flood of forgeries
    /// becomes one record per reason per interval, not one write (and one
    /// fsync) per forgery.
    refused: std::collections::BTreeMap<(Option<GroupId>, String), u64>,
    refused_since: Option<std::time::Instant>,
    /// After a failed write, no new attempt before this (reopening scans
    /// the file; a full disk must not cost a scan per message).
    retry_at: Option<std::time::Instant>,
}

/// How long records are skipped (and counted) after a failed write.
pub const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(5);

/// Refusals are written at most this often (as counts per reason).
pub const REFUSED_RECORD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// At most this many distinct refusal reasons are held between two writes.
const MAX_REFUSED_KEYS: usize = 256;

impl NodeAudit {
    /// Opens (creating, 0600) the log of `config`; a torn last line (a
    /// crash mid-append) is cut off and said so.
    pub fn open(config: &AuditConfig) -> Result<Self> {
        let (log, torn) = AuditLog::open_rotating(&config.path, config.rotation)?;
        if torn {
            info!(log = %config.path.display(), "audit log: an incomplete last record (a crash mid-write) was cut off");
        }
        Ok(Self {
            config: config.clone(),
            log,
            failures: WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
            failed: 0,
            refused: std::collections::BTreeMap::new(),
            refused_since: None,
            retry_at: None,
        })
    }

    /// Appends one record (durably).
    pub fn record(
        &mut self,
        record: Record,
        group: Option<&GroupId>,
        entity: Option<&EntityId>,
        detail: String,
    ) {
        self.record_all(&[entry(record, group, entity, detail)]);
    }

    /// Counts a refused message; the counts are written as `refused`
    /// records (`N× <reason>`) at most every [`REFUSED_RECORD_EVERY`], and
    /// when the runtime stops.
    pub fn refused(&mut self, group: Option<&GroupId>, reason: String) {
        if self.refused.len() < MAX_REFUSED_KEYS
            || self.refused.contains_key(&(group.cloned(), reason.clone()))
        {
            *self.refused.entry((group.cloned(), reason)).or_default() += 1;
        } else {
            *self
                .refused
                .entry((None, "other reasons".into()))
                .or_default() += 1;
        }
        match self.refused_since {
            // The first refusal after a quiet spell is written at once …
            None => {
                self.flush_refused();
                self.refused_since = Some(std::time::Instant::now());
            }
            // … the rest of a burst as counts, once per interval.
            Some(since) if since.elapsed() >= REFUSED_RECORD_EVERY => self.flush_refused(),
            Some(_) => {}
        }
    }

    /// Writes held refusal counts whose interval is over (call it from a
    /// timer, so that the tail of a burst is not held indefinitely).
    pub fn tick(&mut self) {
        if let Some(since) = self.refused_since
            && since.elapsed() >= REFUSED_RECORD_EVERY
        {
            self.flush_refused();
        }
    }

    /// Writes the refusal counts held (see [`NodeAudit::refused`]).
    pub fn flush_refused(&mut self) {
        let held = std::mem::take(&mut self.refused);
        self.refused_since = None;
        let entries: Vec<AuditEntry> = held
            .into_iter()
            .map(|((group, reason), n)| {
                entry(
                    Record::Refused,
                    group.as_ref(),
                    None,
                    if n == 1 {
                        reason
                    } else {
                        format!("{n}× {reason}")
                    },
                )
            })
            .collect();
        self.record_all(&entries);
    }

    /// Appends several records with one write and one fsync (a DAP's batch).
    pub fn record_all(&mut self, entries: &[AuditEntry]) {
        if entries.is_empty() {
            return;
        }
        if let Some(at) = self.retry_at {
            if std::time::Instant::now() < at {
                self.failed += entries.len() as u64;
                return;
            }
            // A failed write poisoned the log: reopen it (cutting a torn
            // line) before the next record goes in.
            match AuditLog::open_rotating(&self.config.path, self.config.rotation) {
                Ok((log, _)) => {
                    self.log = log;
                    self.retry_at = None;
                    info!(log = %self.config.path.display(), lost = self.failed, "audit log writable again");
                }
                Err(_) => {
                    self.failed += entries.len() as u64;
                    self.retry_at = Some(std::time::Instant::now() + RETRY_AFTER_FAILURE);
                    return;
                }
            }
        }
        if let Err(e) = self.log.append_all(entries) {
            self.failed += entries.len() as u64;
            self.retry_at = Some(std::time::Instant::now() + RETRY_AFTER_FAILURE);
            if let Some(held_back) = self.failures.allow() {
                warn!(log = %self.config.path.display(), error = %e, lost = self.failed, held_back, "audit records not written (skipped for 5 s, then tried again); the service goes on — free space or restore write access");
            }
        }
    }
}

/// Up to 100 items of `ids`, then how many more: an audit detail stays far
/// below the record size limit however large the batch.
pub fn list(ids: &[String]) -> String {
    const SHOWN: usize = 100;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(", and {} more", ids.len() - SHOWN));
    }
    text
}

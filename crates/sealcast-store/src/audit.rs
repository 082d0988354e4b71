//! The append-only, hash-chained audit log of manager actions.
//!
//! # Record and chain
//! Each record has a sequence number (1, 2, 3 … with no gap), a time, a kind,
//! an optional group and entity, a detail text, the previous record's hash
//! (32 zero bytes for record 1) and its own hash:
//!
//! ```text
//! hash = SHA-256(prev_hash ‖ canonical(record))
//! canonical = "sealcast-audit v1" 0x00 ‖ seq (u64 BE) ‖ time_ms (u64 BE)
//!           ‖ len(kind) (u8) ‖ kind ‖ opt(group) ‖ opt(entity)
//!           ‖ len(detail) (u32 BE) ‖ detail (UTF-8)
//! opt(x)    = 0x00 (absent) | 0x01 ‖ len(x) (u8) ‖ x
//! ```
//!
//! Editing, removing, inserting or reordering a record breaks the chain at
//! that record, and the verifier names it. Cutting records off the *end*
//! leaves a valid, shorter chain; an unkeyed chain cannot reveal that on its
//! own, so the verifier reports the head (last sequence number and hash) for
//! the operator to compare with a copy kept elsewhere, and
//! [`verify_audit_file_anchored`] checks a log against such an anchor. For
//! the same reason anyone who can write the file can rewrite the whole chain;
//! the anchor is what catches that too.
//!
//! # File format
//! JSON lines, one record per line — chosen over a CBOR sequence so that an
//! operator can read, grep and tail the log with ordinary tools, and so a
//! torn last line after a crash is easy to see and cut. The hash covers the
//! canonical binary encoding above, not the JSON text, so JSON formatting is
//! not part of what is signed; unknown keys are refused so nothing can ride
//! along unhashed:
//!
//! ```text
//! {"detail":"…","entity":"meter-1"|null,"group":"<hex>"|null,"hash":"<hex>",
//!  "kind":"rekey","prev_hash":"<hex>","seq":1,"time_ms":1700000000000}
//! ```
//!
//! The SQL stores keep the same records in table `audit_log`.
//!
//! **The detail text is written in the clear: never put key bytes, the KEK or
//! other secrets in it.** Control characters are refused so that a log
//! shown in a terminal cannot carry escape sequences.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use sealcast_core::ids::{EntityId, GroupId, UnixMillis};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Length of a record hash.
pub const HASH_LEN: usize = 32;
/// Longest detail text, in bytes.
pub const MAX_DETAIL_LEN: usize = 4096;
/// Longest line a log file may hold.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Longest name of a free-form record kind.
pub const MAX_KIND_LEN: usize = 32;

const DOMAIN: &[u8] = b"sealcast-audit v1\0";
const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// What a record reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// An entity was enrolled (its credential stored).
    Enrol,
    /// An entity joined a group.
    Join,
    /// An entity was evicted from (or left) a group.
    Evict,
    /// A group moved to a new epoch.
    Rekey,
    /// Key material was sent to a member.
    Delivery,
    /// A member acknowledged an epoch.
    Ack,
    /// Anything else: 1 to 32 characters from `a-z 0-9 _ . -`.
    Other(String),
}

impl AuditKind {
    /// The name written in the log.
    pub fn as_str(&self) -> &str {
        match self {
            AuditKind::Enrol => "enrol",
            AuditKind::Join => "join",
            AuditKind::Evict => "evict",
            AuditKind::Rekey => "rekey",
            AuditKind::Delivery => "delivery",
            AuditKind::Ack => "ack",
            AuditKind::Other(s) => s,
        }
    }

    /// Parses a name (the fixed kinds first, anything else valid as `Other`).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "enrol" => AuditKind::Enrol,
            "join" => AuditKind::Join,
            "evict" => AuditKind::Evict,
            "rekey" => AuditKind::Rekey,
            "delivery" => AuditKind::Delivery,
            "ack" => AuditKind::Ack,
            other => {
                check_kind_name(other)?;
                AuditKind::Other(other.to_owned())
            }
        })
    }
}

impl core::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn check_kind_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_KIND_LEN
        || !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
    {
        return Err(Error::InvalidArgument(format!(
            "audit record kind must be 1 to {MAX_KIND_LEN} characters from a-z 0-9 _ . -"
        )));
    }
    Ok(())
}

fn check_detail(detail: &str) -> Result<()> {
    if detail.len() > MAX_DETAIL_LEN {
        return Err(Error::InvalidArgument(format!(
            "audit detail is longer than {MAX_DETAIL_LEN} bytes"
        )));
    }
    if detail.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(
            "audit detail must not contain control characters (newlines, escapes)".to_owned(),
        ));
    }
    Ok(())
}

/// A record to append: what the caller says. The log adds the sequence
/// number and the hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When it happened.
    pub time: UnixMillis,
    /// What happened.
    pub kind: AuditKind,
    /// The group concerned, if any.
    pub group: Option<GroupId>,
    /// The entity concerned, if any.
    pub entity: Option<EntityId>,
    /// Free text for operators. **No secrets.**
    pub detail: String,
}

impl AuditEntry {
    /// An entry with no group and no entity.
    pub fn new(time: UnixMillis, kind: AuditKind, detail: impl Into<String>) -> Self {
        Self {
            time,
            kind,
            group: None,
            entity: None,
            detail: detail.into(),
        }
    }

    /// Sets the group.
    #[must_use]
    pub fn with_group(mut self, group: GroupId) -> Self {
        self.group = Some(group);
        self
    }

    /// Sets the entity.
    #[must_use]
    pub fn with_entity(mut self, entity: EntityId) -> Self {
        self.entity = Some(entity);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let AuditKind::Other(name) = &self.kind {
            check_kind_name(name)?;
        }
        check_detail(&self.detail)
    }

    /// Builds the record that follows `prev` (`None`: the first record).
    pub(crate) fn seal_after(&self, prev: Option<(u64, [u8; HASH_LEN])>) -> Result<AuditRecord> {
        self.validate()?;
        let (seq, prev_hash) = match prev {
            None => (1, GENESIS),
            Some((s, h)) => (
                s.checked_add(1)
                    .ok_or_else(|| Error::InvalidArgument("audit log is full".to_owned()))?,
                h,
            ),
        };
        if i64::try_from(seq).is_err() || i64::try_from(self.time.get()).is_err() {
            return Err(Error::InvalidArgument(
                "audit sequence number or time out of range".to_owned(),
            ));
        }
        let mut rec = AuditRecord {
            seq,
            time: self.time,
            kind: self.kind.clone(),
            group: self.group.clone(),
            entity: self.entity.clone(),
            detail: self.detail.clone(),
            prev_hash,
            hash: [0; HASH_LEN],
        };
        rec.hash = rec.compute_hash();
        Ok(rec)
    }
}

/// A record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number, from 1.
    pub seq: u64,
    /// When it happened.
    pub time: UnixMillis,
    /// What happened.
    pub kind: AuditKind,
    /// The group concerned, if any.
    pub group: Option<GroupId>,
    /// The entity concerned, if any.
    pub entity: Option<EntityId>,
    /// Free text.
    pub detail: String,
    /// The previous record's hash (zeros for record 1).
    pub prev_hash: [u8; HASH_LEN],
    /// This record's hash.
    pub hash: [u8; HASH_LEN],
}

impl AuditRecord {
    /// The canonical encoding the hash covers (without `prev_hash`).
    pub fn canonical(&self) -> Vec<u8> {
        let kind = self.kind.as_str().as_bytes();
        let mut out = Vec::with_capacity(DOMAIN.len() + 32 + kind.len() + self.detail.len() + 100);
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time.get().to_be_bytes());
        push_short(&mut out, kind);
        match &self.group {
            None => out.push(0),
            Some(g) => {
                out.push(1);
                push_short(&mut out, g.as_bytes());
            }
        }
        match &self.entity {
            None => out.push(0),
            Some(e) => {
                out.push(1);
                push_short(&mut out, e.as_bytes());
            }
        }
        let detail = self.detail.as_bytes();
        out.extend_from_slice(
            &u32::try_from(detail.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(detail);
        out
    }

    /// `SHA-256(prev_hash ‖ canonical)`.
    pub fn compute_hash(&self) -> [u8; HASH_LEN] {
        let mut h = Sha256::new();
        h.update(self.prev_hash);
        h.update(self.canonical());
        h.finalize().into()
    }

    /// The record as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        let mut m = Map::new();
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("time_ms".into(), Value::from(self.time.get()));
        m.insert("kind".into(), Value::from(self.kind.as_str()));
        m.insert(
            "group".into(),
            self.group
                .as_ref()
                .map_or(Value::Null, |g| Value::from(to_hex(g.as_bytes()))),
        );
        m.insert(
            "entity".into(),
            self.entity
                .as_ref()
                .map_or(Value::Null, |e| Value::from(e.as_str())),
        );
        m.insert("detail".into(), Value::from(self.detail.as_str()));
        m.insert("prev_hash".into(), Value::from(to_hex(&self.prev_hash)));
        m.insert("hash".into(), Value::from(to_hex(&self.hash)));
        Value::Object(m).to_string()
    }

    /// Parses one JSON line (strict: exactly the keys above). Checks field
    /// formats only; the chain is checked by the verifier.
    pub fn from_json_line(line: &[u8]) -> core::result::Result<Self, String> {
        let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
        let Value::Object(m) = v else {
            return Err("not a JSON object".to_owned());
        };
        const KEYS: [&str; 8] = [
            "seq",
            "time_ms",
            "kind",
            "group",
            "entity",
            "detail",
            "prev_hash",
            "hash",
        ];
        if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("unknown field {k:?}"));
        }
        let field = |k: &str| m.get(k).ok_or_else(|| format!("field {k:?} missing"));
        let num = |k: &str| {
            field(k)?
                .as_u64()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| format!("field {k:?} is not a valid number"))
        };
        let text = |k: &str| {
            field(k)?
                .as_str()
                .ok_or_else(|| format!("field {k:?} is not text"))
        };
        let hash = |k: &str| -> core::result::Result<[u8; HASH_LEN], String> {
            from_hex(text(k)?)
                .and_then(|b| <[u8; HASH_LEN]>::try_from(b).ok())
                .ok_or_else(|| format!("field {k:?} is not a 32-byte hex hash"))
        };
        let group = match field("group")? {
            Value::Null => None,
            Value::String(s) => Some(
                from_hex(s)
                    .and_then(|b| GroupId::new(b).ok())
                    .ok_or_else(|| "field \"group\" is not a hex group id".to_owned())?,
            ),
            _ => return Err("field \"group\" is not text or null".to_owned()),
        };
        let entity = match field("entity")? {
            Value::Null => None,
            Value::String(s) => Some(
                EntityId::new(s).map_err(|_| "field \"entity\" is not an entity id".to_owned())?,
            ),
            _ => return Err("field \"entity\" is not text or null".to_owned()),
        };
        let kind = AuditKind::parse(text("kind")?).map_err(|_| "invalid kind".to_owned())?;
        let detail = text("detail")?.to_owned();
        check_detail(&detail).map_err(|_| "invalid detail text".to_owned())?;
        Ok(Self {
            seq: num("seq")?,
            time: UnixMillis::new(num("time_ms")?),
            kind,
            group,
            entity,
            detail,
            prev_hash: hash("prev_hash")?,
            hash: hash("hash")?,
        })
    }
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every short field (kind, group id, entity id) is at most 64 bytes.
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A point of a log an operator keeps elsewhere (printed, in a ticket, in
/// another system): the sequence number and hash of one record. Text form
/// `SEQ:HEX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditAnchor {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash.
    pub hash: [u8; HASH_LEN],
}

impl core::fmt::Display for AuditAnchor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.seq, to_hex(&self.hash))
    }
}

impl core::str::FromStr for AuditAnchor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || Error::InvalidArgument("an audit anchor is written SEQ:HEX (64 hex digits)".into());
        let (seq, hash) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        let hash = from_hex(hash)
            .and_then(|b| <[u8; HASH_LEN]>::try_from(b).ok())
            .ok_or_else(bad)?;
        Ok(Self { seq, hash })
    }
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSummary {
    /// Number of records.
    pub records: u64,
    /// Records before the oldest one on disk, removed by rotation (0: the
    /// log starts at record 1).
    pub rotated_away: u64,
    /// The last record (sequence number and hash), `None` for an empty log.
    /// Compare it with a copy kept elsewhere: records cut off the end are
    /// invisible otherwise.
    pub head: Option<AuditAnchor>,
    /// Time of the first record.
    pub first_time: Option<UnixMillis>,
    /// Time of the last record.
    pub last_time: Option<UnixMillis>,
}

impl AuditSummary {
    /// The head hash as hex (64 zeros for an empty log).
    pub fn head_hash_hex(&self) -> String {
        to_hex(&self.head.map_or(GENESIS, |h| h.hash))
    }
}

/// Checks records one after another.
#[derive(Debug)]
pub(crate) struct ChainVerifier {
    origin: String,
    /// The sequence number before the first record checked (0: the log
    /// starts at record 1).
    base: u64,
    /// Whether the first record may continue a chain whose earlier records
    /// were rotated away (see [`AuditLog::open_rotating`]).
    rotated_start: bool,
    count: u64,
    prev: [u8; HASH_LEN],
    first_time: Option<UnixMillis>,
    last_time: Option<UnixMillis>,
    anchor: Option<AuditAnchor>,
    anchor_seen: bool,
}

impl ChainVerifier {
    pub(crate) fn new(origin: String, anchor: Option<AuditAnchor>) -> Self {
        Self {
            origin,
            base: 0,
            rotated_start: false,
            count: 0,
            prev: GENESIS,
            first_time: None,
            last_time: None,
            anchor,
            anchor_seen: false,
        }
    }

    pub(crate) fn broken(&self, record: u64, reason: String) -> Error {
        Error::AuditBroken {
            origin: self.origin.clone(),
            record,
            reason,
        }
    }

    /// A verifier whose first record may continue an earlier chain: the
    /// oldest segment kept after rotation starts at some record `n > 1`,
    /// linked to a record no longer on disk.
    pub(crate) fn allowing_rotated_start(mut self) -> Self {
        self.rotated_start = true;
        self
    }

    /// Checks the next record; `position` is its sequence number in the log.
    pub(crate) fn push(&mut self, rec: &AuditRecord) -> Result<()> {
        if self.count == 0 && self.rotated_start && rec.seq > 1 {
            // Only a segment that rotation started may begin after record
            // 1: its first record says so, and is covered by the chain.
            if rec.kind.as_str() != "rotate" {
                return Err(self.broken(
                    rec.seq,
                    format!(
                        "the log starts at record {} with no rotation record: records before it were removed",
                        rec.seq
                    ),
                ));
            }
            self.base = rec.seq - 1;
            self.prev = rec.prev_hash;
        }
        let position = self.base + self.count + 1;
        if rec.seq != position {
            let why = if rec.seq > position {
                format!(
                    "sequence number {} where {position} belongs: records were removed or reordered",
                    rec.seq
                )
            } else {
                format!(
                    "sequence number {} where {position} belongs: records were inserted, duplicated or reordered",
                    rec.seq
                )
            };
            return Err(self.broken(position, why));
        }
        if rec.prev_hash != self.prev {
            return Err(self.broken(
                position,
                "its prev_hash is not the previous record's hash: a record before it was changed, or it was inserted".to_owned(),
            ));
        }
        if rec.compute_hash() != rec.hash {
            return Err(self.broken(
                position,
                "its content does not match its hash: the record was edited".to_owned(),
            ));
        }
        if let Some(a) = self.anchor.filter(|a| a.seq == rec.seq) {
            if a.hash != rec.hash {
                return Err(Error::AuditAnchorMismatch {
                    origin: self.origin.clone(),
                    reason: format!(
                        "record {} has hash {} but the anchor says {}",
                        rec.seq,
                        to_hex(&rec.hash),
                        to_hex(&a.hash)
                    ),
                });
            }
            self.anchor_seen = true;
        }
        self.count += 1;
        self.prev = rec.hash;
        self.first_time.get_or_insert(rec.time);
        self.last_time = Some(rec.time);
        Ok(())
    }

    pub(crate) fn last(&self) -> Option<(u64, [u8; HASH_LEN])> {
        (self.count > 0).then_some((self.base + self.count, self.prev))
    }

    /// The sequence number the next record must carry.
    fn next_position(&self) -> u64 {
        self.base + self.count + 1
    }

    pub(crate) fn finish(self) -> Result<AuditSummary> {
        if let Some(a) = self.anchor.filter(|_| !self.anchor_seen) {
            return Err(Error::AuditAnchorMismatch {
                origin: self.origin.clone(),
                reason: format!(
                    "the log ends at record {} but the anchor names record {}: records were cut off the end, or the anchor's record was rotated away",
                    self.base + self.count,
                    a.seq
                ),
            });
        }
        Ok(AuditSummary {
            records: self.count,
            rotated_away: self.base,
            head: self.last().map(|(seq, hash)| AuditAnchor { seq, hash }),
            first_time: self.first_time,
            last_time: self.last_time,
        })
    }
}

/// Verifies a sequence of records (e.g. read from a database table).
pub fn verify_records<'a>(
    origin: &str,
    records: impl IntoIterator<Item = &'a AuditRecord>,
    anchor: Option<AuditAnchor>,
) -> Result<AuditSummary> {
    let mut v = ChainVerifier::new(origin.to_owned(), anchor);
    for r in records {
        v.push(r)?;
    }
    v.finish()
}

/// Reads a log file and feeds every record to `v`. Returns the byte offset
/// of the end of the last complete line, and whether a torn (unterminated)
/// last line follows it.
fn scan_file(file: &mut File, v: &mut ChainVerifier) -> Result<(u64, bool)> {
    let mut reader = BufReader::new(file);
    let mut line = Vec::with_capacity(512);
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_LEN as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::Io {
                action: "read audit log",
                path: PathBuf::from(&v.origin),
                source: e,
            })?;
        if n == 0 {
            return Ok((offset, false));
        }
        let position = v.next_position();
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE_LEN {
                return Err(v.broken(position, format!("line longer than {MAX_LINE_LEN} bytes")));
            }
            return Ok((offset, true));
        }
        line.pop();
        let rec = AuditRecord::from_json_line(&line)
            .map_err(|why| v.broken(position, format!("not a valid record: {why}")))?;
        v.push(&rec)?;
        offset += n as u64;
    }
}

fn verify_file(path: &Path, anchor: Option<AuditAnchor>) -> Result<AuditSummary> {
    let mut file = File::open(path).map_err(|e| Error::io("open audit log", path, e))?;
    let mut v = ChainVerifier::new(path.display().to_string(), anchor);
    let (_, torn) = scan_file(&mut file, &mut v)?;
    if torn {
        return Err(v.broken(
            v.next_position(),
            "the last line is incomplete (a crash during a write, or the file was cut)".to_owned(),
        ));
    }
    v.finish()
}

/// Verifies a log file: every record parses, sequence numbers run 1, 2, 3 …,
/// every `prev_hash` is the previous record's hash and every hash matches its
/// record. The error names the first bad record (its line number). On
/// success the summary carries the head to compare with a kept copy.
pub fn verify_audit_file(path: impl AsRef<Path>) -> Result<AuditSummary> {
    verify_file(path.as_ref(), None)
}

/// The segments of a rotated log, oldest first: `<path>.N` … `<path>.1`,
/// then `<path>` (only those that exist; `<path>` itself always).
pub fn audit_segments(path: impl AsRef<Path>) -> Vec<PathBuf> {
    let path = path.as_ref();
    let mut older: Vec<PathBuf> = (1..=MAX_SEGMENTS)
        .map(|n| segment(path, n))
        .take_while(|p| p.exists())
        .collect();
    older.reverse();
    older.push(path.to_path_buf());
    older
}

/// Verifies a log and the segments rotation left beside it
/// ([`audit_segments`]) as ONE chain: each segment must continue the one
/// before exactly; only the oldest may start after record 1 (older
/// segments were deleted by rotation: [`AuditSummary::rotated_away`] says
/// how many records). With `anchor`, the chain must still hold that record.
pub fn verify_audit_segments(
    path: impl AsRef<Path>,
    anchor: Option<AuditAnchor>,
) -> Result<(AuditSummary, usize)> {
    let segments = audit_segments(path.as_ref());
    let mut v =
        ChainVerifier::new(path.as_ref().display().to_string(), anchor).allowing_rotated_start();
    for seg in &segments {
        let mut file = File::open(seg).map_err(|e| Error::io("open audit log", seg, e))?;
        v.origin = seg.display().to_string();
        let (_, torn) = scan_file(&mut file, &mut v)?;
        if torn {
            return Err(v.broken(
                v.next_position(),
                "the last line is incomplete (a crash during a write, or the file was cut)"
                    .to_owned(),
            ));
        }
    }
    Ok((v.finish()?, segments.len()))
}

/// Most rotated segments looked for beside a log.
pub const MAX_SEGMENTS: usize = 1000;

fn segment(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// When a log rotates: once the current file exceeds `max_bytes`, it
/// becomes `<path>.1` (older segments move up one number, and the one past
/// `keep` is deleted) and a new `<path>` continues the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Size of the current file that triggers a rotation.
    pub max_bytes: u64,
    /// Rotated segments kept beside the current file (at least 1).
    pub keep: usize,
}

/// Like [`verify_audit_file`], and also checks that the log still holds the
/// record `anchor` names, with that hash: this detects records cut off the
/// end and a rewritten chain.
pub fn verify_audit_file_anchored(
    path: impl AsRef<Path>,
    anchor: AuditAnchor,
) -> Result<AuditSummary> {
    verify_file(path.as_ref(), Some(anchor))
}

/// An audit log file open for appending.
///
/// One process appends to one file: two writers would fork the chain (and
/// the next verification would name the fork). Each append is one `write`
/// of a whole line to a file opened with `O_APPEND`, followed by `fdatasync`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    last: Option<(u64, [u8; HASH_LEN])>,
    poisoned: bool,
    rotation: Option<Rotation>,
    size: u64,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) a log and verifies all of it; refuses
    /// to append to a log that does not verify or whose last line is torn.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_inner(path.as_ref(), false, None).map(|(log, _)| log)
    }

    /// Opens a log that rotates ([`Rotation`]): the current file is
    /// verified (it may continue a rotated segment), a torn last line is
    /// cut off (a crash mid-append), and appends continue its chain. The
    /// whole set verifies as one chain with [`verify_audit_segments`].
    pub fn open_rotating(path: impl AsRef<Path>, rotation: Rotation) -> Result<(Self, bool)> {
        if rotation.keep == 0 || rotation.keep > MAX_SEGMENTS || rotation.max_bytes == 0 {
            return Err(Error::InvalidArgument(format!(
                "audit log rotation: keep 1..={MAX_SEGMENTS} segments of at least 1 byte"
            )));
        }
        Self::open_inner(path.as_ref(), true, Some(rotation))
    }

    /// Like [`open`](Self::open), but when the only defect is an incomplete
    /// last line (a crash in the middle of an append) cuts that line off.
    /// Returns whether it did.
    pub fn open_cutting_torn_tail(path: impl AsRef<Path>) -> Result<(Self, bool)> {
        Self::open_inner(path.as_ref(), true, None)
    }

    fn open_inner(path: &Path, cut_torn: bool, rotation: Option<Rotation>) -> Result<(Self, bool)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("open audit log", path, e))?;
        let mut v = ChainVerifier::new(path.display().to_string(), None);
        if rotation.is_some() {
            v = v.allowing_rotated_start();
        }
        let (end, torn) = scan_file(&mut file, &mut v)?;
        if torn {
            if !cut_torn {
                return Err(v.broken(
                    v.next_position(),
                    "the last line is incomplete (a crash during a write?); reopen with open_cutting_torn_tail to drop it".to_owned(),
                ));
            }
            file.set_len(end)
                .map_err(|e| Error::io("cut torn line of audit log", path, e))?;
            file.sync_all()
                .map_err(|e| Error::io("fsync audit log", path, e))?;
        }
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("seek audit log", path, e))?;
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            last: v.last(),
            poisoned: false,
            rotation,
            size,
        };
        // A crash between moving the full file aside and writing the new
        // one's first record leaves an empty current file: continue the
        // chain of the segment moved aside, not a new one from genesis.
        let previous = segment(path, 1);
        if rotation.is_some() && log.last.is_none() && previous.exists() {
            let mut old =
                File::open(&previous).map_err(|e| Error::io("open audit log", &previous, e))?;
            let mut pv =
                ChainVerifier::new(previous.display().to_string(), None).allowing_rotated_start();
            let (_, old_torn) = scan_file(&mut old, &mut pv)?;
            if !old_torn && let Some(last) = pv.last() {
                log.last = Some(last);
                log.rotation = None;
                let continued = log.append(&AuditEntry::new(
                    pv.last_time.unwrap_or(UnixMillis::new(0)),
                    AuditKind::Other("rotate".into()),
                    format!(
                        "continues {} (which ends at record {})",
                        previous.display(),
                        last.0
                    ),
                ));
                log.rotation = rotation;
                continued?;
            }
        }
        Ok((log, torn))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last record written (`None` while the log is empty).
    pub fn head(&self) -> Option<AuditAnchor> {
        self.last.map(|(seq, hash)| AuditAnchor { seq, hash })
    }

    /// Appends several entries with one write and one fsync (a batch of
    /// enrolments); the chain is the same as appending them one by one.
    pub fn append_all(&mut self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>> {
        if self.poisoned {
            return Err(Error::InvalidArgument(format!(
                "an earlier write to audit log {} failed; reopen it (open_cutting_torn_tail) before appending",
                self.path.display()
            )));
        }
        let mut last = self.last;
        let mut records = Vec::with_capacity(entries.len());
        let mut lines = Vec::new();
        for entry in entries {
            let rec = entry.seal_after(last)?;
            lines.extend_from_slice(rec.to_json_line().as_bytes());
            lines.push(b'\n');
            last = Some((rec.seq, rec.hash));
            records.push(rec);
        }
        let written = self
            .file
            .write_all(&lines)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.poisoned = true;
            return Err(Error::io("append to audit log", &self.path, e));
        }
        self.last = last;
        self.size += lines.len() as u64;
        self.rotate_if_due(records.last().map_or(UnixMillis::new(0), |r| r.time))?;
        Ok(records)
    }

    /// Moves the current file aside once it exceeds the rotation size and
    /// starts a new one whose first record continues the chain (and says
    /// so). The records written so far are durable either way; a failure
    /// here poisons the log like a failed append.
    fn rotate_if_due(&mut self, at: UnixMillis) -> Result<()> {
        let Some(rotation) = self.rotation else {
            return Ok(());
        };
        if self.size < rotation.max_bytes {
            return Ok(());
        }
        let fail = |this: &mut Self, action: &'static str, p: &Path, e: std::io::Error| {
            this.poisoned = true;
            Error::io(action, p, e)
        };
        let oldest = segment(&self.path, rotation.keep);
        if oldest.exists()
            && let Err(e) = std::fs::remove_file(&oldest)
        {
            return Err(fail(self, "remove the oldest audit segment", &oldest, e));
        }
        for n in (1..rotation.keep).rev() {
            let from = segment(&self.path, n);
            if from.exists()
                && let Err(e) = std::fs::rename(&from, segment(&self.path, n + 1))
            {
                return Err(fail(self, "rename an audit segment", &from, e));
            }
        }
        let first = segment(&self.path, 1);
        if let Err(e) = std::fs::rename(&self.path, &first) {
            let path = self.path.clone();
            return Err(fail(self, "rotate the audit log", &path, e));
        }
        let opened = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path);
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                let path = self.path.clone();
                return Err(fail(self, "open the new audit log", &path, e));
            }
        };
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        self.file = file;
        self.size = 0;
        let ended = self.last.map_or(0, |(seq, _)| seq);
        self.rotation = None;
        let continued = self.append(&AuditEntry::new(
            at,
            AuditKind::Other("rotate".into()),
            format!(
                "continues {} (which ends at record {ended})",
                first.display()
            ),
        ));
        self.rotation = Some(rotation);
        continued.map(|_| ())
    }

    /// Appends a record, durably (fdatasync) before returning it.
    pub fn append(&mut self, entry: &AuditEntry) -> Result<AuditRecord> {
        if self.poisoned {
            return Err(Error::InvalidArgument(format!(
                "an earlier write to audit log {} failed; reopen it (open_cutting_torn_tail) before appending",
                self.path.display()
            )));
        }
        let rec = entry.seal_after(self.last)?;
        let mut line = rec.to_json_line().into_bytes();
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.poisoned = true;
            return Err(Error::io("append to audit log", &self.path, e));
        }
        self.last = Some((rec.seq, rec.hash));
        self.size += line.len() as u64;
        self.rotate_if_due(rec.time)?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn json_roundtrip() {
        let e = AuditEntry::new(UnixMillis::new(5), AuditKind::Rekey, "epoch 3 -> 4")
            .with_group(GroupId::new(b"g").unwrap())
            .with_entity(EntityId::new("m-1").unwrap());
        let r = e.seal_after(None).unwrap();
        let back = AuditRecord::from_json_line(r.to_json_line().as_bytes()).unwrap();
        assert_eq!(r, back);
        assert_eq!(back.compute_hash(), back.hash);
    }

    #[test]
    fn refuses_control_characters_and_bad_kinds() {
        let e = AuditEntry::new(UnixMillis::new(5), AuditKind::Ack, "a\nb");
        assert!(e.seal_after(None).is_err());
        let e = AuditEntry::new(UnixMillis::new(5), AuditKind::Other("Bad Kind".into()), "x");
        assert!(e.seal_after(None).is_err());
    }

    #[test]
    fn a_rotating_log_is_one_chain_across_its_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 600,
            keep: 3,
        };
        let entry = |i: u64| {
            AuditEntry::new(
                UnixMillis::new(i),
                AuditKind::Other("received".into()),
                format!("message {i}"),
            )
        };
        {
            let (mut log, _) = AuditLog::open_rotating(&path, rotation).unwrap();
            for i in 0..10 {
                log.append(&entry(i)).unwrap();
            }
        }
        // Reopened: the current file continues a rotated segment.
        let (mut log, torn) = AuditLog::open_rotating(&path, rotation).unwrap();
        assert!(!torn);
        log.append_all(&[entry(10), entry(11)]).unwrap();
        let head = log.head().unwrap();
        drop(log);
        let segments = audit_segments(&path);
        assert_eq!(segments.len(), 4, "{segments:?}");
        assert!(!segment(&path, 4).exists());
        let (summary, n) = verify_audit_segments(&path, Some(head)).unwrap();
        assert_eq!(n, 4);
        assert_eq!(summary.head, Some(head));
        assert!(summary.rotated_away > 0, "the oldest segment was deleted");
        assert_eq!(summary.rotated_away + summary.records, head.seq);
        // The current file alone does not verify from genesis …
        assert!(verify_audit_file(&path).is_err());
        // … records cut from the start of the oldest segment are found (it
        // no longer starts with its rotation record) …
        let oldest = segment(&path, 3);
        let text = std::fs::read_to_string(&oldest).unwrap();
        let cut: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(&oldest, cut).unwrap();
        let err = verify_audit_segments(&path, None).unwrap_err().to_string();
        assert!(err.contains("no rotation record"), "{err}");
        std::fs::write(&oldest, text).unwrap();
        // … a segment removed from the middle breaks the chain …
        let middle = segment(&path, 2);
        let kept = std::fs::read(&middle).unwrap();
        std::fs::remove_file(&middle).unwrap();
        std::fs::rename(segment(&path, 3), &middle).unwrap();
        assert!(verify_audit_segments(&path, None).is_err());
        std::fs::rename(&middle, segment(&path, 3)).unwrap();
        std::fs::write(&middle, &kept).unwrap();
        assert!(verify_audit_segments(&path, None).is_ok());
        // A crash right after the current file was moved aside (no new
        // file yet): reopening continues the chain.
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(segment(&path, 1), &path).unwrap();
        let moved = segment(&path, 1);
        std::fs::rename(&path, &moved).unwrap();
        let (mut log, _) = AuditLog::open_rotating(&path, rotation).unwrap();
        log.append(&entry(99)).unwrap();
        drop(log);
        let (summary, _) = verify_audit_segments(&path, None).unwrap();
        assert!(summary.records > 0);
        // … and so does an edited record in any segment.
        let text = std::fs::read_to_string(segment(&path, 1)).unwrap();
        std::fs::write(segment(&path, 1), text.replacen("message", "massage", 1)).unwrap();
        let err = verify_audit_segments(&path, None).unwrap_err().to_string();
        assert!(err.contains("edited"), "{err}");
    }

    #[test]
    fn anchor_text_roundtrip() {
        let a = AuditAnchor {
            seq: 9,
            hash: [0xab; 32],
        };
        let b: AuditAnchor = a.to_string().parse().unwrap();
        assert_eq!(a, b);
        assert!("9".parse::<AuditAnchor>().is_err());
    }
}

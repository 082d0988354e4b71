//! The broadcast envelope: signed, then encrypted, with the context bound
//! into both layers.
//!
//! ```text
//! context = [ "sealcast broadcast v1", group_id: bstr, epoch: uint,
//!             sender_id: bstr, seq: uint, timestamp_ms: uint, target: tstr ]
//! inner   = COSE_Sign1 (tag 18)  { 1: -8 } / { 4: sender_id }
//!           payload, signature over Sig_structure with external_aad = context
//! outer   = COSE_Encrypt0 (tag 16) { 1: alg } /
//!           { 4: sender_id, 6: partial_iv(seq), 10: group_id,
//!             -70001: epoch, -70002: timestamp_ms }
//!           AES-GCM of `inner` under the sender key, nonce per RFC 8613 §5.2,
//!           AAD = Enc_structure("Encrypt0", protected, context)
//! ```
//!
//! Because the signature covers group, epoch, sequence number, timestamp and
//! target, a member of group A cannot re-encrypt a command signed for A into
//! group B, and nobody can replay a signed inner object under a fresh outer
//! sequence number: both fail at the signature check.
//!
//! The receiver order is fixed: bounded parse → header checks → replay
//! pre-check → AEAD (non-members and garbage stop here, before any signature
//! work) → inner parse → inner signer equals outer sender → strict Ed25519
//! with the cached, decompressed key → timestamp policy → window commit.

use std::borrow::Cow;
use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::cbor::{write_array, write_bstr, write_tstr, write_uint};
use crate::cose::{
    self, ALG_EDDSA, HDR_ALG, HDR_EPOCH, HDR_KID, HDR_KID_CONTEXT, HDR_PARTIAL_IV, HDR_TIMESTAMP,
    HVal,
};
use crate::crypto::{NONCE_LEN, ed25519_signature, ed25519_verify_batch};
use crate::error::{Error, Result};
use crate::groupkey::{GroupContext, GroupKeyMaterial};
use crate::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use crate::kdf;
use crate::replay::{SeqCheck, SeqWindow, TimestampWindow, TsCheck};

/// Largest broadcast object accepted (outer bytes).
pub const MAX_BROADCAST_LEN: usize = 64 * 1024;
/// Largest target (topic or URI) accepted.
pub const MAX_TARGET_LEN: usize = 512;

const CONTEXT_LABEL: &str = "sealcast broadcast v1";

/// Builds the context bound into both layers.
pub fn broadcast_context(
    group: &GroupId,
    epoch: Epoch,
    sender: &SenderId,
    seq: SeqNum,
    timestamp: UnixMillis,
    target: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + group.as_bytes().len() + target.len());
    write_array(&mut out, 7);
    write_tstr(&mut out, CONTEXT_LABEL);
    write_bstr(&mut out, group.as_bytes());
    write_uint(&mut out, u64::from(epoch.get()));
    write_bstr(&mut out, sender.as_bytes());
    write_uint(&mut out, seq.get());
    write_uint(&mut out, timestamp.get());
    write_tstr(&mut out, target);
    out
}

fn check_target(target: &str) -> Result<()> {
    if target.len() > MAX_TARGET_LEN {
        return Err(Error::TooLarge {
            what: "target",
            limit: MAX_TARGET_LEN,
        });
    }
    Ok(())
}

/// Seals `payload` as a broadcast of `signer` (who must be an authorized
/// signer of the group, holding `signing_key`) to the group of `ctx`.
///
/// The caller supplies a sequence number it never used before in this
/// group epoch (see [`crate::replay::SeqAllocator`]) and the current time.
pub fn seal_broadcast(
    ctx: &GroupContext,
    signer: &EntityId,
    signing_key: &SigningKey,
    seq: SeqNum,
    timestamp: UnixMillis,
    target: &str,
    payload: &[u8],
) -> Result<Vec<u8>> {
    seal_broadcast_with_token(
        ctx,
        signer,
        signing_key,
        seq,
        timestamp,
        target,
        payload,
        None,
    )
}

/// Most bytes of an access-control token carried in a broadcast.
pub const MAX_ACCESS_TOKEN_LEN: usize = 4096;

/// [`seal_broadcast`], with the signer's access-control token (opaque
/// here; at most [`MAX_ACCESS_TOKEN_LEN`] bytes) in the inner protected
/// header under [`cose::HDR_ACCESS_TOKEN`], so the signer's signature
/// covers it and only members read it. `None` writes exactly what
/// [`seal_broadcast`] writes.
#[allow(clippy::too_many_arguments)]
pub fn seal_broadcast_with_token(
    ctx: &GroupContext,
    signer: &EntityId,
    signing_key: &SigningKey,
    seq: SeqNum,
    timestamp: UnixMillis,
    target: &str,
    payload: &[u8],
    token: Option<&[u8]>,
) -> Result<Vec<u8>> {
    check_target(target)?;
    if token.is_some_and(|t| t.is_empty() || t.len() > MAX_ACCESS_TOKEN_LEN) {
        return Err(Error::Malformed("access token empty or too long"));
    }
    let sender_id = ctx
        .sender_id_of(signer)
        .ok_or(Error::SignerNotAuthorized)?
        .clone();
    let entry = ctx.sender(&sender_id).ok_or(Error::SignerNotAuthorized)?;
    if entry.verifying_key != signing_key.verifying_key() {
        return Err(Error::InvalidKey(
            "signing key does not match the group's signer list",
        ));
    }
    let context = broadcast_context(ctx.group(), ctx.epoch(), &sender_id, seq, timestamp, target);

    // Inner COSE_Sign1.
    let inner_protected = match token {
        None => cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_EDDSA))]),
        Some(t) => cose::protected_bytes(&[
            (HDR_ALG, HVal::Int(ALG_EDDSA)),
            (cose::HDR_ACCESS_TOKEN, HVal::Bytes(t)),
        ]),
    };
    let tbs = cose::sig1_structure(&inner_protected, &context, payload);
    let signature = signing_key.sign(&tbs).to_bytes();
    let mut inner = Vec::with_capacity(payload.len() + 96);
    cose::write_four(
        &mut inner,
        cose::TAG_SIGN1,
        &inner_protected,
        &[(HDR_KID, HVal::Bytes(sender_id.as_bytes()))],
        payload,
        &signature,
    );

    // Outer COSE_Encrypt0.
    let outer_protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ctx.alg().cose_id()))]);
    let aad = cose::enc_structure("Encrypt0", &outer_protected, &context);
    let piv = seq.partial_iv();
    let nonce = kdf::nonce(ctx.common_iv(), sender_id.as_bytes(), &piv)?;
    let ciphertext = entry.key.seal(&nonce, &aad, &inner)?;
    let mut out = Vec::with_capacity(ciphertext.len() + 64);
    cose::write_encrypt0(
        &mut out,
        &outer_protected,
        &[
            (HDR_KID, HVal::Bytes(sender_id.as_bytes())),
            (HDR_PARTIAL_IV, HVal::Bytes(&piv)),
            (HDR_KID_CONTEXT, HVal::Bytes(ctx.group().as_bytes())),
            (HDR_EPOCH, HVal::Uint(u64::from(ctx.epoch().get()))),
            (HDR_TIMESTAMP, HVal::Uint(timestamp.get())),
        ],
        &ciphertext,
    );
    Ok(out)
}

/// How a receiver decides that a broadcast is fresh.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayPolicy {
    /// A sliding window of `window` sequence numbers per sender (the
    /// default, 64); optionally also refuse timestamps further than
    /// `max_skew_ms` from `now`.
    Sequence {
        /// Window size (a multiple of 64).
        window: usize,
        /// Largest accepted |timestamp − now|, if checked.
        max_skew_ms: Option<u64>,
    },
    /// Timestamps within ±`skew_ms`, with a digest of every accepted message
    /// kept until it ages out (at most `max_entries`).
    Timestamp {
        /// Largest accepted |timestamp − now|.
        skew_ms: u64,
        /// Bound on remembered digests.
        max_entries: usize,
    },
}

impl Default for ReplayPolicy {
    fn default() -> Self {
        ReplayPolicy::Sequence {
            window: SeqWindow::DEFAULT_SIZE,
            max_skew_ms: None,
        }
    }
}

/// A broadcast that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedBroadcast {
    /// The group it was sealed for.
    pub group: GroupId,
    /// The epoch.
    pub epoch: Epoch,
    /// The sender's id in the group.
    pub sender_id: SenderId,
    /// The signer's entity id (from the group's signed signer list).
    pub signer: EntityId,
    /// Its sequence number.
    pub seq: SeqNum,
    /// The sender's timestamp.
    pub timestamp: UnixMillis,
    /// The payload.
    pub payload: Vec<u8>,
    /// The signer's access-control token, as the signer sent it (covered by
    /// its signature; not checked here: `sealcast_group::token` does).
    pub token: Option<Vec<u8>>,
}

/// The outer header fields of a broadcast, read without any key. Useful for
/// routing (which group, which epoch) and for `sealcast inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastHeader {
    /// The group id (`kid context`).
    pub group: GroupId,
    /// The epoch.
    pub epoch: Epoch,
    /// The sender id (`kid`).
    pub sender_id: SenderId,
    /// The sequence number (`Partial IV`).
    pub seq: SeqNum,
    /// The timestamp.
    pub timestamp: UnixMillis,
}

struct ParsedOuter<'a> {
    header: BroadcastHeader,
    protected: Cow<'a, [u8]>,
    ciphertext: Cow<'a, [u8]>,
    alg: i64,
}

fn parse_outer(bytes: &[u8]) -> Result<ParsedOuter<'_>> {
    cose::check_len(bytes, MAX_BROADCAST_LEN, "COSE_Encrypt0")?;
    // The fast reader takes only the exact shape sealcast writes; anything
    // else (and every malformed input) goes through coset, so both accept
    // and refuse exactly the same objects with the same errors.
    if let Some(fast) = cose::fast::broadcast_outer(bytes) {
        // The same conversions, in the same order, as after coset below.
        let sender_id = SenderId::new(fast.kid)?;
        let group = GroupId::new(fast.kid_context)?;
        let epoch = u32::try_from(fast.epoch).map_err(|_| Error::Malformed("epoch"))?;
        let timestamp = UnixMillis::new(fast.timestamp);
        let seq = SeqNum::from_partial_iv(fast.partial_iv)?;
        return Ok(ParsedOuter {
            header: BroadcastHeader {
                group,
                epoch: Epoch::new(epoch),
                sender_id,
                seq,
                timestamp,
            },
            protected: Cow::Borrowed(fast.protected),
            ciphertext: Cow::Borrowed(fast.ciphertext),
            alg: fast.alg,
        });
    }
    parse_outer_coset(bytes)
}

fn parse_outer_coset(bytes: &[u8]) -> Result<ParsedOuter<'static>> {
    let obj = cose::parse_encrypt0(bytes, MAX_BROADCAST_LEN)?;
    cose::only(
        &obj.protected.header,
        cose::Allowed {
            alg: true,
            ..Default::default()
        },
    )?;
    cose::only(
        &obj.unprotected,
        cose::Allowed {
            kid: true,
            partial_iv: true,
            rest: &[HDR_KID_CONTEXT, HDR_EPOCH, HDR_TIMESTAMP],
            ..Default::default()
        },
    )?;
    let alg = cose::alg_of(&obj.protected.header).ok_or(Error::Malformed("missing alg"))?;
    let sender_id = SenderId::new(&obj.unprotected.key_id)?;
    let group = GroupId::new(cose::rest_bytes(
        &obj.unprotected,
        HDR_KID_CONTEXT,
        "kid context",
    )?)?;
    let epoch = u32::try_from(cose::rest_uint(&obj.unprotected, HDR_EPOCH, "epoch")?)
        .map_err(|_| Error::Malformed("epoch"))?;
    let timestamp = UnixMillis::new(cose::rest_uint(
        &obj.unprotected,
        HDR_TIMESTAMP,
        "timestamp",
    )?);
    let seq = SeqNum::from_partial_iv(&obj.unprotected.partial_iv)?;
    let header = BroadcastHeader {
        group,
        epoch: Epoch::new(epoch),
        sender_id,
        seq,
        timestamp,
    };
    let ciphertext = obj
        .ciphertext
        .ok_or(Error::Malformed("detached ciphertext"))?;
    Ok(ParsedOuter {
        header,
        protected: Cow::Owned(cose::protected_original(&obj.protected).to_vec()),
        ciphertext: Cow::Owned(ciphertext),
        alg,
    })
}

/// The inner COSE_Sign1 fields the receiver needs.
struct InnerFields<'a> {
    protected: Cow<'a, [u8]>,
    token: Option<Vec<u8>>,
    payload: Cow<'a, [u8]>,
    signature: Cow<'a, [u8]>,
}

/// Parses the decrypted inner object and checks that its signer is the
/// outer sender.
fn parse_inner<'a>(bytes: &'a [u8], sender: &SenderId) -> Result<InnerFields<'a>> {
    if let Some(fast) = cose::fast::broadcast_inner(bytes) {
        if fast.kid != sender.as_bytes() {
            return Err(Error::SignerMismatch);
        }
        return Ok(InnerFields {
            protected: Cow::Borrowed(fast.protected),
            token: None,
            payload: Cow::Borrowed(fast.payload),
            signature: Cow::Borrowed(fast.signature),
        });
    }
    let inner = cose::parse_sign1(bytes, MAX_BROADCAST_LEN)?;
    cose::require_alg(&inner.protected.header, &inner.unprotected, ALG_EDDSA)?;
    cose::only(
        &inner.protected.header,
        cose::Allowed {
            alg: true,
            kid: true,
            rest: &[cose::HDR_ACCESS_TOKEN],
            ..Default::default()
        },
    )?;
    let token = match cose::rest_value(&inner.protected.header, cose::HDR_ACCESS_TOKEN) {
        None => None,
        Some(ciborium::Value::Bytes(t)) if !t.is_empty() && t.len() <= MAX_ACCESS_TOKEN_LEN => {
            Some(t.clone())
        }
        Some(_) => return Err(Error::Malformed("access token")),
    };
    cose::only(
        &inner.unprotected,
        cose::Allowed {
            kid: true,
            ..Default::default()
        },
    )?;
    let inner_kid = if inner.protected.header.key_id.is_empty() {
        &inner.unprotected.key_id
    } else {
        &inner.protected.header.key_id
    };
    if inner_kid.as_slice() != sender.as_bytes() {
        return Err(Error::SignerMismatch);
    }
    let payload = inner.payload.ok_or(Error::Malformed("detached payload"))?;
    Ok(InnerFields {
        protected: Cow::Owned(cose::protected_original(&inner.protected).to_vec()),
        token,
        payload: Cow::Owned(payload),
        signature: Cow::Owned(inner.signature),
    })
}

/// Reads the outer header of a broadcast without opening it.
pub fn peek_broadcast(bytes: &[u8]) -> Result<BroadcastHeader> {
    parse_outer(bytes).map(|p| p.header)
}

/// The RFC 8613 §5.2 nonce, on the stack: `(len(id) ‖ pad(id) ‖ pad(piv))
/// XOR common_iv`, the same bytes as [`kdf::nonce`].
fn nonce(common_iv: &[u8], sender: &SenderId, piv: &[u8]) -> Result<[u8; NONCE_LEN]> {
    let id = sender.as_bytes();
    // SenderId is at most 6 bytes and the Partial IV at most 5, so both fit
    // a 12-byte nonce; a context with another IV length is refused.
    if common_iv.len() != NONCE_LEN || id.len() > NONCE_LEN - 6 || piv.len() > 5 {
        return Err(Error::InvalidKey("nonce layout"));
    }
    let mut out = [0u8; NONCE_LEN];
    out[0] = id.len() as u8;
    out[NONCE_LEN - 5 - id.len()..NONCE_LEN - 5].copy_from_slice(id);
    out[NONCE_LEN - piv.len()..].copy_from_slice(piv);
    for (o, iv) in out.iter_mut().zip(common_iv) {
        *o ^= iv;
    }
    Ok(out)
}

enum PreCheck {
    Seq(SeqCheck),
    Ts(TsCheck),
}

/// A broadcast that passed every check before the signature: parsed,
/// fresh at the pre-check, decrypted, inner signer equal to the sender.
struct Pending {
    header: BroadcastHeader,
    signer: EntityId,
    verifying_key: VerifyingKey,
    tbs: Vec<u8>,
    signature: Signature,
    payload: Vec<u8>,
    token: Option<Vec<u8>>,
    pre: PreCheck,
}

/// Replay state captured by [`BroadcastReceiver::undo_point`].
#[derive(Debug)]
pub struct ReplayUndo {
    sender: Option<SenderId>,
    seq: Option<SeqWindow>,
    ts: Option<TimestampWindow>,
}

/// One member's sending side of a group at one epoch: the group context
/// derived once (common IV and every authorised sender's key), the
/// member's sender id, entity id and signing key. Each
/// [`BroadcastSender::seal`] then costs the signature and the AEAD only —
/// not the HKDF runs of [`GroupContext::new`] on every send. The sequence
/// numbers stay with the caller, whose reservations must reach its state
/// file before they are used.
pub struct BroadcastSender {
    ctx: GroupContext,
    signer: EntityId,
    key: SigningKey,
}

impl core::fmt::Debug for BroadcastSender {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BroadcastSender")
            .field("group", self.ctx.group())
            .field("epoch", &self.ctx.epoch())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl BroadcastSender {
    /// The sender `signer` (signing with `key`) of the group and epoch of
    /// `material`.
    ///
    /// # Errors
    ///
    /// [`Error::SignerNotAuthorized`] when `signer` is not one of the
    /// group's authorised signers; [`Error::InvalidKey`] when `key` is not
    /// the key the group lists for it.
    pub fn new(material: &GroupKeyMaterial, signer: &EntityId, key: &SigningKey) -> Result<Self> {
        let ctx = GroupContext::new(material)?;
        let sender_id = ctx.sender_id_of(signer).ok_or(Error::SignerNotAuthorized)?;
        let entry = ctx.sender(sender_id).ok_or(Error::SignerNotAuthorized)?;
        if entry.verifying_key != key.verifying_key() {
            return Err(Error::InvalidKey(
                "signing key does not match the group's signer list",
            ));
        }
        Ok(Self {
            ctx,
            signer: signer.clone(),
            key: key.clone(),
        })
    }

    /// The group.
    pub fn group(&self) -> &GroupId {
        self.ctx.group()
    }

    /// The epoch it seals for.
    pub fn epoch(&self) -> Epoch {
        self.ctx.epoch()
    }

    /// Seals `payload` with sequence number `seq` (never used before with
    /// this epoch: the caller's allocator) for `target`, as
    /// [`seal_broadcast`] does.
    pub fn seal(
        &self,
        seq: SeqNum,
        timestamp: UnixMillis,
        target: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        self.seal_with_token(seq, timestamp, target, payload, None)
    }

    /// [`Self::seal`] with the signer's access-control token (see
    /// [`seal_broadcast_with_token`]).
    pub fn seal_with_token(
        &self,
        seq: SeqNum,
        timestamp: UnixMillis,
        target: &str,
        payload: &[u8],
        token: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        seal_broadcast_with_token(
            &self.ctx,
            &self.signer,
            &self.key,
            seq,
            timestamp,
            target,
            payload,
            token,
        )
    }
}

/// Opens broadcasts of one group: holds the group context of the current
/// epoch and the replay state.
#[derive(Debug)]
pub struct BroadcastReceiver {
    ctx: GroupContext,
    policy: ReplayPolicy,
    seq_windows: HashMap<SenderId, SeqWindow>,
    ts_window: Option<TimestampWindow>,
}

impl BroadcastReceiver {
    /// A receiver for the epoch of `ctx` with fresh replay state.
    pub fn new(ctx: GroupContext, policy: ReplayPolicy) -> Result<Self> {
        if let ReplayPolicy::Sequence { window, .. } = policy {
            SeqWindow::with_size(window)?;
        }
        let ts_window = match policy {
            ReplayPolicy::Timestamp {
                skew_ms,
                max_entries,
            } => Some(TimestampWindow::new(skew_ms, max_entries)),
            _ => None,
        };
        Ok(Self {
            ctx,
            policy,
            seq_windows: HashMap::new(),
            ts_window,
        })
    }

    /// The current group context.
    pub fn context(&self) -> &GroupContext {
        &self.ctx
    }

    /// Moves to a newer epoch. New keys mean fresh nonces, so the sequence
    /// windows start over; an older or equal epoch is refused.
    pub fn install(&mut self, ctx: GroupContext) -> Result<()> {
        if ctx.group() != self.ctx.group() {
            return Err(Error::ContextMismatch("group"));
        }
        if ctx.epoch() <= self.ctx.epoch() {
            return Err(Error::StaleEpoch);
        }
        self.ctx = ctx;
        self.seq_windows.clear();
        Ok(())
    }

    /// The replay window of one sender, for persistence.
    pub fn window(&self, sender: &SenderId) -> Option<&SeqWindow> {
        self.seq_windows.get(sender)
    }

    /// All sequence windows, for persistence.
    pub fn windows(&self) -> impl Iterator<Item = (&SenderId, &SeqWindow)> {
        self.seq_windows.iter()
    }

    /// Restores a persisted window (after a restart).
    pub fn restore_window(&mut self, sender: SenderId, window: SeqWindow) {
        self.seq_windows.insert(sender, window);
    }

    /// The replay state that opening `bytes` may change, to put back with
    /// [`Self::roll_back`] when the caller cannot make the opened result
    /// durable (its state file could not be written): the window of the
    /// sender the header names, and the timestamp window of a timestamp
    /// policy. Take it just before [`Self::open`] and roll back before any
    /// other change to this receiver.
    pub fn undo_point(&self, bytes: &[u8]) -> ReplayUndo {
        let sender = peek_broadcast(bytes).ok().map(|h| h.sender_id);
        let seq = sender
            .as_ref()
            .and_then(|s| self.seq_windows.get(s).cloned());
        ReplayUndo {
            sender,
            seq,
            ts: self.ts_window.clone(),
        }
    }

    /// Puts back the replay state [`Self::undo_point`] captured: the message
    /// opened since then becomes acceptable again.
    pub fn roll_back(&mut self, undo: ReplayUndo) {
        if let Some(sender) = undo.sender {
            match undo.seq {
                Some(window) => {
                    self.seq_windows.insert(sender, window);
                }
                None => {
                    self.seq_windows.remove(&sender);
                }
            }
        }
        if undo.ts.is_some() {
            self.ts_window = undo.ts;
        }
    }

    /// Opens one broadcast received on `target` at time `now`.
    ///
    /// On success the replay state has recorded the message; on any error
    /// nothing changed.
    pub fn open(&mut self, bytes: &[u8], target: &str, now: UnixMillis) -> Result<OpenedBroadcast> {
        let pending = self.prepare(bytes, target, now)?;
        // 5. Strict signature check with the cached key.
        pending
            .verifying_key
            .verify_strict(&pending.tbs, &pending.signature)
            .map_err(|_| Error::BadSignature)?;
        self.finish(pending, now)
    }

    /// Opens many broadcasts at once — a gateway or a test rig with a queue
    /// of them. `items` pairs each broadcast with the target it arrived on.
    ///
    /// Each one is parsed, pre-checked against the replay state, decrypted
    /// and its inner object checked one by one, exactly as [`Self::open`]
    /// does; then all their signatures are verified in **one** batch
    /// ([`crate::crypto::ed25519_verify_batch`], which rechecks one by one
    /// when the batch fails, so a forgery rejects only itself); then the
    /// survivors are committed in order. A sequence number that appears
    /// twice in the burst opens once: the later copy fails as
    /// [`crate::ReplayKind::Duplicate`] at its commit, as it would have if
    /// the two had been opened one after the other.
    ///
    /// Returns one result per item, in order. Every item that fails leaves
    /// the replay state as it was. The results equal those of calling
    /// [`Self::open`] on each item in turn, except that an item failing
    /// several checks may report another of its failures, and for the one
    /// difference between batch and strict verification that
    /// [`crate::crypto::ed25519_verify_batch`] documents (a signature the
    /// signer itself made with a small-order component in `R`).
    pub fn open_burst(
        &mut self,
        items: &[(&[u8], &str)],
        now: UnixMillis,
    ) -> Vec<Result<OpenedBroadcast>> {
        let prepared: Vec<Result<Pending>> = items
            .iter()
            .map(|(bytes, target)| self.prepare(bytes, target, now))
            .collect();
        let batch: Vec<(&VerifyingKey, &[u8], &Signature)> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| (&p.verifying_key, p.tbs.as_slice(), &p.signature))
            .collect();
        let mut verdicts = ed25519_verify_batch(&batch).into_iter();
        prepared
            .into_iter()
            .map(|p| {
                let pending = p?;
                verdicts.next().unwrap_or(Err(Error::BadSignature))?;
                self.finish(pending, now)
            })
            .collect()
    }

    /// Steps 1–4 of the receiver order: everything before the signature.
    /// Changes nothing.
    fn prepare(&self, bytes: &[u8], target: &str, now: UnixMillis) -> Result<Pending> {
        check_target(target)?;
        // 1. Bounded parse of the outer object, header checks.
        let outer = parse_outer(bytes)?;
        let h = &outer.header;
        if h.group != *self.ctx.group() {
            return Err(Error::ContextMismatch("group"));
        }
        if h.epoch < self.ctx.epoch() {
            return Err(Error::StaleEpoch);
        }
        if h.epoch > self.ctx.epoch() {
            return Err(Error::FutureEpoch);
        }
        if outer.alg != self.ctx.alg().cose_id() {
            return Err(Error::UnsupportedAlgorithm(outer.alg));
        }
        if self.ctx.not_after().is_some_and(|end| now > end) {
            return Err(Error::KeyExpired);
        }
        let entry = self
            .ctx
            .sender(&h.sender_id)
            .ok_or(Error::SignerNotAuthorized)?;
        let context =
            broadcast_context(&h.group, h.epoch, &h.sender_id, h.seq, h.timestamp, target);

        // 2. Cheap replay pre-check, before any cryptography.
        let pre = match (&self.policy, &self.ts_window) {
            (ReplayPolicy::Timestamp { .. }, Some(w)) => {
                PreCheck::Ts(w.check(h.timestamp, Sha256::digest(&context).into(), now)?)
            }
            _ => match self.seq_windows.get(&h.sender_id) {
                Some(w) => PreCheck::Seq(w.check(h.seq)?),
                None => PreCheck::Seq(self.fresh_window()?.check(h.seq)?),
            },
        };

        // 3. AEAD: non-members and garbage stop here.
        let aad = cose::enc_structure("Encrypt0", &outer.protected, &context);
        let piv = h.seq.partial_iv();
        let nonce = nonce(self.ctx.common_iv(), &h.sender_id, &piv)?;
        let inner_bytes = entry.key.open_data(&nonce, &aad, &outer.ciphertext)?;

        // 4. Inner object: signer must be the outer sender.
        let inner = parse_inner(&inner_bytes, &h.sender_id)?;
        let tbs = cose::sig1_structure(&inner.protected, &context, &inner.payload);
        let signature = ed25519_signature(&inner.signature)?;
        let payload = inner.payload.into_owned();
        let token = inner.token;
        Ok(Pending {
            header: outer.header,
            signer: entry.entity.clone(),
            verifying_key: entry.verifying_key,
            tbs,
            signature,
            payload,
            token,
            pre,
        })
    }

    /// Step 6 after the signature verified: timestamp policy, then commit.
    fn finish(&mut self, pending: Pending, now: UnixMillis) -> Result<OpenedBroadcast> {
        let h = pending.header;
        if let ReplayPolicy::Sequence {
            max_skew_ms: Some(skew),
            ..
        } = self.policy
            && h.timestamp.get().abs_diff(now.get()) > skew
        {
            return Err(Error::StaleTimestamp);
        }
        match pending.pre {
            PreCheck::Seq(token) => {
                let size = self.window_size();
                match self.seq_windows.get_mut(&h.sender_id) {
                    Some(window) => window.commit(token)?,
                    None => {
                        let mut window = SeqWindow::with_size(size)?;
                        window.commit(token)?;
                        self.seq_windows.insert(h.sender_id.clone(), window);
                    }
                }
            }
            PreCheck::Ts(token) => {
                if let Some(w) = self.ts_window.as_mut() {
                    w.commit(token)?;
                }
            }
        }
        Ok(OpenedBroadcast {
            group: h.group,
            epoch: h.epoch,
            sender_id: h.sender_id,
            signer: pending.signer,
            seq: h.seq,
            timestamp: h.timestamp,
            payload: pending.payload,
            token: pending.token,
        })
    }

    fn window_size(&self) -> usize {
        match self.policy {
            ReplayPolicy::Sequence { window, .. } => window,
            _ => SeqWindow::DEFAULT_SIZE,
        }
    }

    fn fresh_window(&self) -> Result<SeqWindow> {
        SeqWindow::with_size(self.window_size())
    }
}

//! Fixtures shared by the criterion benches: one group with one authorized
//! signer, pools of broadcasts with consecutive sequence numbers, and the
//! exact `ToBeSigned` bytes and signatures inside them (for the raw
//! `verify_strict` baseline). Deterministic (seeded), so every run measures
//! the same bytes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use sealcast_core::broadcast::{
    BroadcastReceiver, ReplayPolicy, broadcast_context, seal_broadcast,
};
use sealcast_core::cose::sig1_structure;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::testrng::TestRng;

/// The topic every bench broadcast is sealed for.
pub const TARGET: &str = "site-4/fire/alarm";
/// The time every bench broadcast carries and is opened at.
pub const NOW: UnixMillis = UnixMillis::new(1_790_000_000_000);
/// The inner protected header sealcast writes: `{1: -8}`.
pub const INNER_PROTECTED: &[u8] = &[0xa1, 0x01, 0x27];

/// A group of one epoch with one authorized signer.
pub struct Group {
    pub ctx: GroupContext,
    pub signer: EntityCredential,
    pub sender_id: SenderId,
}

impl Group {
    pub fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let signer = EntityCredential::generate(EntityId::new("alarm-panel-1").unwrap(), &mut rng);
        let sender_id = SenderId::new([0x01]).unwrap();
        let material = GroupKeyMaterial::generate(
            GroupId::new(b"fire-site-4").unwrap(),
            Epoch::new(1),
            AeadAlg::A128Gcm,
            vec![AuthorizedSigner {
                sender_id: sender_id.clone(),
                entity: signer.id().clone(),
                verifying_key: *signer.public().verifying_key(),
            }],
            None,
            &mut rng,
        )
        .unwrap();
        Self {
            ctx: GroupContext::new(&material).unwrap(),
            signer,
            sender_id,
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        *self.signer.public().verifying_key()
    }

    pub fn receiver(&self) -> BroadcastReceiver {
        BroadcastReceiver::new(self.ctx.clone(), ReplayPolicy::default()).unwrap()
    }

    pub fn seal(&self, seq: u64, payload: &[u8]) -> Vec<u8> {
        seal_broadcast(
            &self.ctx,
            self.signer.id(),
            self.signer.signing_key(),
            SeqNum::new(seq).unwrap(),
            NOW,
            TARGET,
            payload,
        )
        .unwrap()
    }

    /// Broadcasts with sequence numbers `0..n`.
    pub fn pool(&self, n: usize, payload_len: usize) -> Vec<Vec<u8>> {
        (0..n as u64)
            .map(|s| self.seal(s, &payload(s, payload_len)))
            .collect()
    }

    /// The inner `ToBeSigned` of broadcast `seq` and its signature: exactly
    /// what `open` hands to `verify_strict` (Ed25519 is deterministic).
    pub fn signed(&self, seq: u64, payload_len: usize) -> (Vec<u8>, Signature) {
        let context = broadcast_context(
            self.ctx.group(),
            self.ctx.epoch(),
            &self.sender_id,
            SeqNum::new(seq).unwrap(),
            NOW,
            TARGET,
        );
        let tbs = sig1_structure(INNER_PROTECTED, &context, &payload(seq, payload_len));
        let sig = self.signer.signing_key().sign(&tbs);
        (tbs, sig)
    }

    pub fn signed_pool(&self, n: usize, payload_len: usize) -> Vec<(Vec<u8>, Signature)> {
        (0..n as u64).map(|s| self.signed(s, payload_len)).collect()
    }
}

/// A payload of `len` bytes that differs per sequence number.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_add(i as u8))
        .collect()
}

/// Opens `pool` in order, `iters` times in total, with a fresh receiver
/// whenever the pool starts over (its sequence numbers repeat then).
pub fn open_loop(group: &Group, pool: &[Vec<u8>], iters: u64) {
    let mut rx = group.receiver();
    for i in 0..iters as usize {
        let k = i % pool.len();
        if k == 0 && i > 0 {
            rx = group.receiver();
        }
        at_stack_offset(i / 16, &mut || {
            let opened = rx.open(&pool[k], TARGET, NOW).unwrap();
            std::hint::black_box(opened);
        });
    }
}

/// Calls `f` with the stack pushed down by one of eight offsets spread over
/// 4 KiB. Ed25519 builds its lookup tables on the stack, and where they fall
/// modulo 4 KiB moves the verify rate by 10–15 % on this kind of CPU, so a
/// comparison of two call sites (open vs raw verify) must not measure each
/// at one offset only; both sides rotate through the same eight.
pub fn at_stack_offset(offset: usize, f: &mut dyn FnMut()) {
    match offset % 8 {
        0 => padded::<16>(f),
        1 => padded::<528>(f),
        2 => padded::<1040>(f),
        3 => padded::<1552>(f),
        4 => padded::<2064>(f),
        5 => padded::<2576>(f),
        6 => padded::<3088>(f),
        _ => padded::<3600>(f),
    }
}

#[inline(never)]
fn padded<const N: usize>(f: &mut dyn FnMut()) {
    let pad = [0u8; N];
    std::hint::black_box(&pad);
    f()
}

//! What the benchmarks measure, written once: `sealcast bench` and the
//! criterion benches under `benches/` use this fixture, so their figures are
//! of the same bytes. One group of one epoch with one authorised signer,
//! pools of broadcasts with consecutive sequence numbers, and the exact
//! `ToBeSigned` bytes and signatures inside them (for the raw
//! `verify_strict` baseline). Deterministic: the keys come from a seeded
//! generator, so every run measures the same bytes; never used for anything
//! but measuring.

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use sealcast_core::broadcast::{
    BroadcastReceiver, ReplayPolicy, broadcast_context, seal_broadcast,
};
use sealcast_core::cose::sig1_structure;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};

/// The topic every bench broadcast is sealed for.
pub const TARGET: &str = "site-4/fire/alarm";
/// The time every bench broadcast carries and is opened at.
pub const NOW: UnixMillis = UnixMillis::new(1_790_000_000_000);
/// The inner protected header sealcast writes: `{1: -8}`.
pub const INNER_PROTECTED: &[u8] = &[0xa1, 0x01, 0x27];

/// What building a fixture can fail with (nothing, with these constants).
pub type FixtureResult<T> = Result<T, sealcast_core::Error>;

/// The benchmarks' key material: deterministic (the same keys in every run,
/// so runs compare), from a seeded generator.
pub fn bench_rng(seed: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng as _;
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A group of one epoch with one authorised signer.
#[derive(Debug)]
pub struct Group {
    /// The group's derived context.
    pub ctx: GroupContext,
    /// The signer.
    pub signer: EntityCredential,
    /// The signer's sender id.
    pub sender_id: SenderId,
}

impl Group {
    /// The group of `seed`.
    pub fn new(seed: u64) -> FixtureResult<Self> {
        let mut rng = bench_rng(seed);
        let signer = EntityCredential::generate(EntityId::new("alarm-panel-1")?, &mut rng);
        let sender_id = SenderId::new([0x01])?;
        let material = GroupKeyMaterial::generate(
            GroupId::new(b"fire-site-4")?,
            Epoch::new(1),
            AeadAlg::A128Gcm,
            vec![AuthorizedSigner {
                sender_id: sender_id.clone(),
                entity: signer.id().clone(),
                verifying_key: *signer.public().verifying_key(),
            }],
            None,
            &mut rng,
        )?;
        Ok(Self {
            ctx: GroupContext::new(&material)?,
            signer,
            sender_id,
        })
    }

    /// The signer's public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.signer.public().verifying_key()
    }

    /// A fresh receiver (empty replay windows).
    pub fn receiver(&self) -> FixtureResult<BroadcastReceiver> {
        BroadcastReceiver::new(self.ctx.clone(), ReplayPolicy::default())
    }

    /// Broadcast `seq` of `payload`.
    pub fn seal(&self, seq: u64, payload: &[u8]) -> FixtureResult<Vec<u8>> {
        seal_broadcast(
            &self.ctx,
            self.signer.id(),
            self.signer.signing_key(),
            SeqNum::new(seq)?,
            NOW,
            TARGET,
            payload,
        )
    }

    /// Broadcasts with sequence numbers `0..n`.
    pub fn pool(&self, n: usize, len: usize) -> FixtureResult<Vec<Vec<u8>>> {
        (0..n as u64)
            .map(|s| self.seal(s, &payload(s, len)))
            .collect()
    }

    /// The inner `ToBeSigned` of broadcast `seq` and its signature: exactly
    /// what `open` hands to `verify_strict` (Ed25519 is deterministic).
    pub fn signed(&self, seq: u64, len: usize) -> FixtureResult<(Vec<u8>, Signature)> {
        let context = broadcast_context(
            self.ctx.group(),
            self.ctx.epoch(),
            &self.sender_id,
            SeqNum::new(seq)?,
            NOW,
            TARGET,
        );
        let tbs = sig1_structure(INNER_PROTECTED, &context, &payload(seq, len));
        let sig = self.signer.signing_key().sign(&tbs);
        Ok((tbs, sig))
    }

    /// [`Group::signed`] for every broadcast of [`Group::pool`].
    pub fn signed_pool(&self, n: usize, len: usize) -> FixtureResult<Vec<(Vec<u8>, Signature)>> {
        (0..n as u64).map(|s| self.signed(s, len)).collect()
    }
}

/// A payload of `len` bytes that differs per sequence number.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_add(i as u8))
        .collect()
}

/// Opens a pool in order, one broadcast per call, starting over with a
/// fresh receiver when the pool is done (its sequence numbers repeat then).
#[derive(Debug)]
pub struct Opener<'g> {
    group: &'g Group,
    pool: &'g [Vec<u8>],
    rx: BroadcastReceiver,
    next: usize,
    /// Opens that failed (none, unless something is broken).
    pub failures: u64,
}

impl<'g> Opener<'g> {
    /// An opener of `pool`.
    pub fn new(group: &'g Group, pool: &'g [Vec<u8>]) -> FixtureResult<Self> {
        Ok(Self {
            group,
            pool,
            rx: group.receiver()?,
            next: 0,
            failures: 0,
        })
    }

    /// Opens the next broadcast; returns 1 (one unit of work).
    pub fn open_one(&mut self) -> u64 {
        if self.next == self.pool.len() {
            self.next = 0;
            match self.group.receiver() {
                Ok(rx) => self.rx = rx,
                Err(_) => self.failures += 1,
            }
        }
        let Some(msg) = self.pool.get(self.next) else {
            self.failures += 1;
            return 1;
        };
        self.next += 1;
        match self.rx.open(msg, TARGET, NOW) {
            Ok(opened) => {
                std::hint::black_box(opened);
            }
            Err(_) => self.failures += 1,
        }
        1
    }
}

/// Calls `unit` with the stack pushed down by one of eight offsets spread
/// over 4 KiB, and returns what it returns.
///
/// Ed25519 builds its lookup tables on the stack, and where they fall
/// modulo 4 KiB (against the static base-point tables) moves the verify
/// rate by 10–15 % on this kind of CPU: the same code measured at two call
/// depths, or in two runs with different stack randomisation, differs that
/// much. Both sides of every comparison rotate through the same offsets, so
/// neither is measured at a lucky or unlucky one alone.
pub fn at_stack_offset(offset: usize, unit: &mut dyn FnMut() -> u64) -> u64 {
    match offset % 8 {
        0 => padded::<16>(unit),
        1 => padded::<528>(unit),
        2 => padded::<1040>(unit),
        3 => padded::<1552>(unit),
        4 => padded::<2064>(unit),
        5 => padded::<2576>(unit),
        6 => padded::<3088>(unit),
        _ => padded::<3600>(unit),
    }
}

#[inline(never)]
fn padded<const N: usize>(unit: &mut dyn FnMut() -> u64) -> u64 {
    let pad = [0u8; N];
    std::hint::black_box(&pad);
    unit()
}

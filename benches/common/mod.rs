//! The criterion benches' view of the benchmark fixture: the same one
//! `sealcast bench` measures (`sealcast_demo::fixture`: one group, pools of
//! broadcasts, the signatures inside them, seeded), with failures turned
//! into panics, which is what a bench setup should do.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signature, VerifyingKey};
use sealcast_core::broadcast::BroadcastReceiver;
use sealcast_demo::fixture;
pub use sealcast_demo::fixture::{NOW, TARGET, payload};

/// A group of one epoch with one authorized signer (its fields, such as
/// `signer`, through `Deref`).
pub struct Group {
    inner: fixture::Group,
}

impl core::ops::Deref for Group {
    type Target = fixture::Group;
    fn deref(&self) -> &fixture::Group {
        &self.inner
    }
}

impl Group {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: fixture::Group::new(seed).unwrap(),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.verifying_key()
    }

    pub fn receiver(&self) -> BroadcastReceiver {
        self.inner.receiver().unwrap()
    }

    pub fn seal(&self, seq: u64, payload: &[u8]) -> Vec<u8> {
        self.inner.seal(seq, payload).unwrap()
    }

    /// Broadcasts with sequence numbers `0..n`.
    pub fn pool(&self, n: usize, payload_len: usize) -> Vec<Vec<u8>> {
        self.inner.pool(n, payload_len).unwrap()
    }

    /// The inner `ToBeSigned` of broadcast `seq` and its signature.
    pub fn signed(&self, seq: u64, payload_len: usize) -> (Vec<u8>, Signature) {
        self.inner.signed(seq, payload_len).unwrap()
    }

    pub fn signed_pool(&self, n: usize, payload_len: usize) -> Vec<(Vec<u8>, Signature)> {
        self.inner.signed_pool(n, payload_len).unwrap()
    }
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

/// `sealcast_demo::fixture::at_stack_offset` for a closure with no count.
pub fn at_stack_offset(offset: usize, f: &mut dyn FnMut()) {
    fixture::at_stack_offset(offset, &mut || {
        f();
        1
    });
}

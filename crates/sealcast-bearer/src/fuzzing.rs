//! Fuzz entry points, shared by the `cargo fuzz` target
//! `fuzz/fuzz_targets/bearer_frame.rs` and the in-crate smoke test
//! `tests/fuzz_smoke.rs`.
//!
//! **Not an API.** Hidden from the docs, no stability promise.
//!
//! The fixed keys and a receiver that holds one MSK and one MTK are built
//! once from fixed seeds. If that setup ever fails, every call returns at
//! once instead of panicking, and [`self_check`] says why.

use std::sync::OnceLock;

use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::testrng::TestRng;

use crate::frame;
use crate::ids::{FrameCounter, MskId, MtkId, Topic};
use crate::keys::Muk;
use crate::receiver::{BearerReceiver, ReceiverConfig};
use crate::sender::{BearerSender, SenderConfig};

/// The `now` every fuzz call runs at.
pub const FIXTURE_NOW: UnixMillis = UnixMillis::new(1_700_000_000_000);

struct Fixture {
    sender: BearerSender,
    service_muk: Muk,
    receiver: BearerReceiver,
    seeds: Vec<Vec<u8>>,
}

fn build() -> Result<Fixture, crate::Error> {
    let mut rng = TestRng::new(0xbea7e7);
    let service_id = EntityId::new("bearer-service")?;
    let device_id = EntityId::new("fuzz-device")?;
    let service = EntityCredential::generate(service_id.clone(), &mut rng);
    let device = EntityCredential::generate(device_id, &mut rng);
    let service_muk = Muk::for_service(&service, &device.public())?;
    let mut sender = BearerSender::new(
        service_id,
        MskId::new(7),
        SenderConfig::default(),
        FIXTURE_NOW,
        &mut rng,
    )?;
    let deliveries = sender.entitle(Muk::for_service(&service, &device.public())?, &mut rng)?;
    let mut receiver = BearerReceiver::new(
        Muk::for_device(&device, &service.public())?,
        ReceiverConfig::default(),
    )?;
    let mut seeds = Vec::new();
    for d in &deliveries {
        receiver.handle_msk_delivery(&d.bytes, FIXTURE_NOW)?;
        seeds.push(d.bytes.clone());
    }
    let topic = Topic::new("sealcast/g/0a0b/cmd")?;
    for frame in sender.protect(&topic, b"\xd0\x83cose", FIXTURE_NOW, &mut rng)? {
        receiver.handle(&frame, FIXTURE_NOW)?;
        seeds.push(frame);
    }
    // A second data frame the receiver has not seen yet.
    seeds.extend(sender.protect(&topic, &[0x42; 300], FIXTURE_NOW, &mut rng)?);
    Ok(Fixture {
        sender,
        service_muk,
        receiver,
        seeds,
    })
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Result<Fixture, crate::Error>> = OnceLock::new();
    FIXTURE.get_or_init(build).as_ref().ok()
}

/// `Ok` when the fixture builds; otherwise why it does not.
pub fn self_check() -> Result<(), crate::Error> {
    static CHECK: OnceLock<Result<(), crate::Error>> = OnceLock::new();
    CHECK.get_or_init(|| build().map(|_| ())).clone()
}

/// Valid inputs: the MSK delivery, the key frame and two data frames of the
/// fixture (the receiver has seen all but the last).
pub fn seeds() -> Vec<Vec<u8>> {
    fixture().map(|f| f.seeds.clone()).unwrap_or_default()
}

/// The bearer frame decoder and everything behind it, on arbitrary bytes:
///
/// 1. [`frame::peek`];
/// 2. [`BearerReceiver::handle`] and [`BearerReceiver::handle_msk_delivery`]
///    on the raw input;
/// 3. the input as a data frame's plaintext (zero-extended to its padding
///    bucket), sealed correctly under the fixture's MTK, so the strict
///    plaintext decoder sees it;
/// 4. the input as the plaintext of a key frame (sealed under the MSK) and
///    of an MSK delivery (sealed under the MUK), so the key plaintext
///    decoders and the install paths see it.
pub fn fuzz_frame(data: &[u8]) {
    let _ = frame::peek(data);
    let Some(fx) = fixture() else {
        return;
    };
    let now = FIXTURE_NOW;
    let mut rx = fx.receiver.duplicate();
    let _ = rx.handle(data, now);
    let _ = rx.handle_msk_delivery(data, now);

    let Some((msk_id, msk, mtk_id, mtk)) = fx.sender.fuzz_keys() else {
        return;
    };
    let service = fx.sender.service();
    if let Some(bucket) = frame::bucket_for(data.len()) {
        let mut padded = data.to_vec();
        padded.resize(bucket, 0);
        let counter = FrameCounter::new(1000);
        if let Ok(f) = frame::seal_data_frame(service, msk_id, mtk_id, counter, mtk, &padded) {
            let _ = rx.handle(&f, now);
        }
    }
    let mut rng = TestRng::new(data.len() as u64);
    let next_mtk = MtkId::new(mtk_id.get().wrapping_add(1));
    if let Ok(f) = frame::seal_key_frame(service, msk_id, next_mtk, msk, data, &mut rng) {
        let _ = rx.handle(&f, now);
    }
    let next_msk = MskId::new(msk_id.get().wrapping_add(1));
    let muk = &fx.service_muk;
    if let Ok(d) = frame::seal_delivery(service, muk.device(), next_msk, muk.aead(), data, &mut rng)
    {
        let _ = rx.handle_msk_delivery(&d, now);
    }
}

#![no_main]
// The smart-metering wire formats past their signatures: the input's first
// byte picks a batch, an announcement or an announce request, the rest is
// its payload, signed by the right key (as a compromised DAP or headend
// could), then opened by the receiver's decoder and fed to the receiver's
// state machine (or, for the fourth choice, unsigned bytes fed to both;
// the fifth: a security association update signed by the headend, opened
// and applied at the meter).
// Any payload gives a value or an error, never a panic.
use std::sync::{Mutex, OnceLock};

use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::statement::sign_statement;
use sealcast_core::testrng::TestRng;
use sealcast_metering::dap::DapCore;
use sealcast_metering::headend::HeadendCore;
use sealcast_metering::wire::{
    Announcement, LABEL_ANNOUNCE, LABEL_BATCH, LABEL_SOLICIT, open_batch, open_solicit,
};

struct World {
    headend: EntityCredential,
    dap: EntityCredential,
    /// The receivers, built once (their key derivations are the slow part)
    /// and fed every input in turn.
    headend_core: Mutex<HeadendCore>,
    dap_core: Mutex<DapCore>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = TestRng::new(1);
        let id = |s: &str| EntityId::new(s).unwrap_or_else(|_| unreachable!());
        let headend = EntityCredential::generate(id("headend"), &mut rng);
        let dap = EntityCredential::generate(id("dap-1"), &mut rng);
        let meter = EntityCredential::generate(id("meter-1"), &mut rng);
        let copy = |c: &EntityCredential| {
            EntityCredential::from_cose_key_set(&c.to_cose_key_set().map(|k| k.to_vec()).unwrap_or_default())
                .unwrap_or_else(|_| unreachable!())
        };
        let headend_core =
            HeadendCore::new(copy(&headend), vec![dap.public()], vec![meter.public()], true)
                .unwrap_or_else(|_| unreachable!());
        let dap_core = DapCore::new(copy(&dap), headend.public(), "meters".into(), vec![meter.public()])
            .unwrap_or_else(|_| unreachable!());
        World {
            headend,
            dap,
            headend_core: Mutex::new(headend_core),
            dap_core: Mutex::new(dap_core),
        }
    })
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    // The first byte picks the statement (one signature per input keeps
    // the rate up); the rest is its payload.
    let Some((&which, data)) = input.split_first() else {
        return;
    };
    let w = world();
    let (headend_id, dap_id) = (w.headend.id(), w.dap.id());
    let dap_key = *w.dap.public().verifying_key();
    let lookup = |id: &EntityId| (id == dap_id).then_some(&dap_key);
    match which % 5 {
        0 => {
            let batch = sign_statement(dap_id, w.dap.signing_key(), LABEL_BATCH, data);
            let _ = open_batch(&batch, headend_id, lookup);
            if let Ok(mut headend) = w.headend_core.lock() {
                let _ = headend.handle_batch(&batch);
            }
        }
        1 => {
            let announcement = sign_statement(dap_id, w.dap.signing_key(), LABEL_ANNOUNCE, data);
            let _ = Announcement::open(&announcement, headend_id, lookup);
            if let Ok(mut headend) = w.headend_core.lock() {
                let _ = headend.handle_announcement(&announcement);
            }
        }
        2 => {
            let solicit = sign_statement(headend_id, w.headend.signing_key(), LABEL_SOLICIT, data);
            let headend_key = *w.headend.public().verifying_key();
            let _ = open_solicit(&solicit, dap_id, headend_id, &headend_key);
            if let Ok(mut dap) = w.dap_core.lock() {
                let _ = dap.handle_solicit(&solicit, UnixMillis::new(1));
            }
        }
        4 => {
            let update = sign_statement(
                headend_id,
                w.headend.signing_key(),
                sealcast_metering::sa::LABEL_SA,
                data,
            );
            let _ = sealcast_metering::sa::SaUpdate::looks_like(&update);
            let meter = EntityId::new("meter-1").unwrap_or_else(|_| unreachable!());
            let headend_key = *w.headend.public().verifying_key();
            if let Ok(u) =
                sealcast_metering::sa::SaUpdate::open(&update, &meter, headend_id, &headend_key)
            {
                let held = sealcast_metering::sa::MeterSa::default();
                if let Ok(next) = held.apply(&u) {
                    assert!(next.epoch > held.epoch, "an update moved the epoch back");
                }
            }
        }
        _ => {
            // Unsigned bytes: as a batch at the headend, as reports at the DAP.
            if let Ok(mut headend) = w.headend_core.lock() {
                let _ = headend.handle_batch(data);
            }
            if let Ok(mut dap) = w.dap_core.lock() {
                let _ = dap.verify(&[data], sealcast_core::ids::UnixMillis::new(1_000));
            }
        }
    }
});

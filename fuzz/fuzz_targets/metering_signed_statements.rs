#![no_main]
// The smart-metering wire formats past their signatures: the input is the
// payload of a batch, an announcement and an announce request, each signed
// by the right key (as a compromised DAP or headend could), then opened by
// the receiver's decoder and fed to the receiver's state machine. Any
// payload gives a value or an error, never a panic.
use std::sync::OnceLock;

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
    meter: EntityCredential,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = TestRng::new(1);
        let id = |s: &str| EntityId::new(s).unwrap_or_else(|_| unreachable!());
        World {
            headend: EntityCredential::generate(id("headend"), &mut rng),
            dap: EntityCredential::generate(id("dap-1"), &mut rng),
            meter: EntityCredential::generate(id("meter-1"), &mut rng),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let w = world();
    let (headend_id, dap_id) = (w.headend.id(), w.dap.id());
    let dap_key = *w.dap.public().verifying_key();
    let lookup = |id: &EntityId| (id == dap_id).then_some(&dap_key);

    let batch = sign_statement(dap_id, w.dap.signing_key(), LABEL_BATCH, data);
    let _ = open_batch(&batch, headend_id, lookup);
    let announcement = sign_statement(dap_id, w.dap.signing_key(), LABEL_ANNOUNCE, data);
    let _ = Announcement::open(&announcement, headend_id, lookup);
    let solicit = sign_statement(headend_id, w.headend.signing_key(), LABEL_SOLICIT, data);
    let headend_key = *w.headend.public().verifying_key();
    let _ = open_solicit(&solicit, dap_id, headend_id, &headend_key);

    // The state machines on the same bytes: an announcement, then a batch
    // at the headend; the request at the DAP.
    if let Ok(mut headend) = HeadendCore::new(
        EntityCredential::from_cose_key_set(&w.headend.to_cose_key_set().map(|k| k.to_vec()).unwrap_or_default())
            .unwrap_or_else(|_| unreachable!()),
        vec![w.dap.public()],
        vec![w.meter.public()],
        true,
    ) {
        let _ = headend.handle_announcement(&announcement);
        let _ = headend.handle_batch(&batch);
        let _ = headend.handle_batch(data);
    }
    if let Ok(mut dap) = DapCore::new(
        EntityCredential::from_cose_key_set(&w.dap.to_cose_key_set().map(|k| k.to_vec()).unwrap_or_default())
            .unwrap_or_else(|_| unreachable!()),
        w.headend.public(),
        "meters".into(),
        vec![w.meter.public()],
    ) {
        let _ = dap.handle_solicit(&solicit, UnixMillis::new(1));
        let _ = dap.verify(&[data]);
    }
});

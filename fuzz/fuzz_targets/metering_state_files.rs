#![no_main]
// The smart-metering state files a restarted service reads back (the DAP's
// windows and reservations, the headend's windows and announcements, the
// meter's reservation): any bytes are refused or restored, never a panic,
// and a refused restore leaves the state machine as it was.
use std::sync::OnceLock;

use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::EntityId;
use sealcast_core::testrng::TestRng;
use sealcast_metering::dap::DapCore;
use sealcast_metering::headend::HeadendCore;

struct World {
    headend: Vec<u8>,
    dap: Vec<u8>,
    meter: EntityCredential,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = TestRng::new(2);
        let id = |s: &str| EntityId::new(s).unwrap_or_else(|_| unreachable!());
        let key = |c: EntityCredential| c.to_cose_key_set().map(|k| k.to_vec()).unwrap_or_default();
        World {
            headend: key(EntityCredential::generate(id("headend"), &mut rng)),
            dap: key(EntityCredential::generate(id("dap-1"), &mut rng)),
            meter: EntityCredential::generate(id("meter-1"), &mut rng),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let w = world();
    let _ = sealcast_metering::meter::decode_state(data);
    let cred = |bytes: &[u8]| {
        EntityCredential::from_cose_key_set(bytes).unwrap_or_else(|_| unreachable!())
    };
    let headend_public = cred(&w.headend).public();
    if let Ok(mut dap) = DapCore::new(
        cred(&w.dap),
        headend_public,
        "meters".into(),
        vec![w.meter.public()],
    ) {
        let before = dap.export_state().ok();
        if dap.restore_state(data).is_err() {
            assert_eq!(dap.export_state().ok(), before, "a refused DAP state changed the DAP");
        }
    }
    if let Ok(mut headend) = HeadendCore::new(
        cred(&w.headend),
        vec![cred(&w.dap).public()],
        vec![w.meter.public()],
        false,
    ) {
        let before = headend.export_state().ok();
        if headend.restore_state(data).is_err() {
            assert_eq!(
                headend.export_state().ok(),
                before,
                "a refused headend state changed the headend"
            );
        }
    }
});

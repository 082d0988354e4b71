#![no_main]
// The smart-metering state files a restarted service reads back (the DAP's
// windows and reservations, the headend's windows and announcements, the
// meter's reservation): any bytes are refused or restored, never a panic,
// and a refused restore leaves the state machine as it was.
use std::sync::{Mutex, OnceLock};

use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::EntityId;
use sealcast_core::testrng::TestRng;
use sealcast_metering::dap::DapCore;
use sealcast_metering::headend::HeadendCore;

struct World {
    /// Built once (their key derivations are the slow part); every input is
    /// restored into them in turn.
    dap: Mutex<DapCore>,
    headend: Mutex<HeadendCore>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = TestRng::new(2);
        let id = |s: &str| EntityId::new(s).unwrap_or_else(|_| unreachable!());
        let headend = EntityCredential::generate(id("headend"), &mut rng);
        let dap = EntityCredential::generate(id("dap-1"), &mut rng);
        let meter = EntityCredential::generate(id("meter-1"), &mut rng);
        let (headend_pub, dap_pub) = (headend.public(), dap.public());
        World {
            dap: Mutex::new(
                DapCore::new(dap, headend_pub, "meters".into(), vec![meter.public()])
                    .unwrap_or_else(|_| unreachable!()),
            ),
            headend: Mutex::new(
                HeadendCore::new(headend, vec![dap_pub], vec![meter.public()], false)
                    .unwrap_or_else(|_| unreachable!()),
            ),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let w = world();
    let _ = sealcast_metering::meter::decode_state(data);
    // A meter's association file and the headend's saved associations.
    if let Ok(sa) = sealcast_metering::sa::MeterSa::decode(data) {
        let again = sa
            .encode()
            .unwrap_or_else(|e| panic!("re-encoding a meter's association: {e}"));
        assert_eq!(
            sealcast_metering::sa::MeterSa::decode(&again).ok(),
            Some(sa),
            "a meter's association did not survive its encoding"
        );
    }
    let _ = sealcast_metering::headend::saved_associations(data);
    if let Ok(mut dap) = w.dap.lock() {
        let before = dap.export_state().ok();
        if dap.restore_state(data).is_err() {
            assert_eq!(dap.export_state().ok(), before, "a refused DAP state changed the DAP");
        }
    }
    if let Ok(mut headend) = w.headend.lock() {
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

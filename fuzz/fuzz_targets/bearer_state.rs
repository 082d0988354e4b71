#![no_main]
// The bearer service's state file (`sealcast_bearer::state`): any bytes are
// refused or give an MSK id, never a panic; what decodes re-encodes to a
// file that decodes to the same id.
use sealcast_bearer::state::{decode_next_msk, encode_next_msk};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(next) = decode_next_msk(data) {
        let again = decode_next_msk(&encode_next_msk(next))
            .unwrap_or_else(|e| panic!("re-decoding a bearer state: {e}"));
        assert_eq!(again.get(), next.get());
    }
});

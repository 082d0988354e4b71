#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealcast_core::fuzzing::seq_num_from_partial_iv(data);
});

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealcast_core::fuzzing::broadcast_open_inner_mutated(data);
});

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealcast_bearer::fuzz_frame(data);
});

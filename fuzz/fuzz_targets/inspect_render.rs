#![no_main]
// `sealcast inspect` on any bytes (sealcast_inspect::render): an error or
// text, never a panic, unbounded recursion or unbounded output; the same
// input always gives the same text.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let first = sealcast_inspect::render(data);
    if let Ok(text) = &first {
        // Every byte of input is shown at most as two hex digits plus a
        // bounded amount of naming per item: the text stays proportional.
        assert!(text.len() <= 64 * 1024 + 200 * data.len(), "{} bytes of text for {} of input", text.len(), data.len());
    }
    assert_eq!(first, sealcast_inspect::render(data));
});

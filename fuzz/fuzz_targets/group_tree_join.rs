#![no_main]
// A decoder of the group protocol, reachable from the network or from the
// manager's store: any bytes give a value or an error, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sealcast_group::lkh::TreeJoin::from_cbor(data);
});

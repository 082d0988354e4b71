#![no_main]
// The state files of `sealcast_group::state_file`: a device service's
// state, `sealcast seal --seq-state` / `open --replay-state` files, and the
// manager's stored group state blob (with the key tree it holds). Any bytes are refused or decoded whole, never a panic; whatever
// decodes re-encodes to a file that decodes to the same state.
use sealcast_group::lkh::KeyTree;
use sealcast_group::state_file::{GroupStateBlob, MemberState, ReplayState, SeqState};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(state) = MemberState::decode(data) {
        let windows = state.windows.iter().map(|(g, s, w)| (g, s, w));
        let reservations = state.reservations.iter().map(|(g, e, l)| (g, *e, *l));
        let again = MemberState::encode(&state.groups, windows, reservations, state.transmission.as_ref())
            .unwrap_or_else(|e| panic!("re-encoding a decoded device state: {e}"));
        let back = MemberState::decode(&again)
            .unwrap_or_else(|e| panic!("re-decoding a device state: {e}"));
        assert_eq!(back.groups.len(), state.groups.len());
        assert_eq!(back.windows.len(), state.windows.len());
        assert_eq!(back.reservations, state.reservations);
        assert_eq!(back.transmission, state.transmission);
    }
    if let Ok(state) = ReplayState::decode(data) {
        let again = ReplayState::encode(&state.group, state.epoch, state.windows.iter().map(|(s, w)| (s, w)))
            .unwrap_or_else(|e| panic!("re-encoding a decoded replay state: {e}"));
        let back = ReplayState::decode(&again)
            .unwrap_or_else(|e| panic!("re-decoding a replay state: {e}"));
        assert_eq!((back.group, back.epoch, back.windows.len()), (state.group, state.epoch, state.windows.len()));
    }
    if let Ok(state) = SeqState::decode(data) {
        let back = SeqState::decode(state.encode().as_bytes())
            .unwrap_or_else(|e| panic!("re-decoding a sequence state: {e}"));
        assert_eq!(back, state);
    }
    if let Ok(blob) = GroupStateBlob::decode(data) {
        let again = GroupStateBlob::encode(blob.validity_ms, blob.tree.as_deref().map(Vec::as_slice))
            .unwrap_or_else(|e| panic!("re-encoding a manager state blob: {e}"));
        let back = GroupStateBlob::decode(&again)
            .unwrap_or_else(|e| panic!("re-decoding a manager state blob: {e}"));
        assert_eq!(back.validity_ms, blob.validity_ms);
        assert_eq!(back.tree, blob.tree);
        if let Some(tree) = &blob.tree {
            let _ = KeyTree::from_bytes(tree);
        }
    }
});

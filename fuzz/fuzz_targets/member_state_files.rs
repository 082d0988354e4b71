#![no_main]
// The member-side state files (`sealcast_group::state_file`): a device
// service's state, and `sealcast seal --seq-state` / `open --replay-state`
// files. Any bytes are refused or decoded whole, never a panic; whatever
// decodes re-encodes to a file that decodes to the same state.
use sealcast_group::state_file::{MemberState, ReplayState, SeqState};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(state) = MemberState::decode(data) {
        let windows = state.windows.iter().map(|(g, s, w)| (g, s, w));
        let reservations = state.reservations.iter().map(|(g, e, l)| (g, *e, *l));
        let again = MemberState::encode(&state.groups, windows, reservations)
            .unwrap_or_else(|e| panic!("re-encoding a decoded device state: {e}"));
        let back = MemberState::decode(&again)
            .unwrap_or_else(|e| panic!("re-decoding a device state: {e}"));
        assert_eq!(back.groups.len(), state.groups.len());
        assert_eq!(back.windows.len(), state.windows.len());
        assert_eq!(back.reservations, state.reservations);
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
});

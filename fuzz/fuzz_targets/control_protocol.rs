#![no_main]
// The group administration (control) protocol, both directions: any line is
// a request or an error for the manager's server
// (`sealcast_group::admin::parse_request`), and a request that parses
// survives a round trip unchanged; any line is an answer or an error for
// the CLI client, which decodes each answer type.
use sealcast_group::admin::{
    Added, Created, Enrolled, Evicted, GroupShow, Groups, Rekeyed, parse_request,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        let again = serde_json::to_vec(&request).unwrap_or_else(|e| panic!("re-encoding a parsed request: {e}"));
        let back = parse_request(&again).unwrap_or_else(|e| panic!("re-parsing a request: {e}"));
        assert_eq!(back, request);
    }
    let _ = serde_json::from_slice::<Enrolled>(data);
    let _ = serde_json::from_slice::<Created>(data);
    let _ = serde_json::from_slice::<Added>(data);
    let _ = serde_json::from_slice::<Evicted>(data);
    let _ = serde_json::from_slice::<Rekeyed>(data);
    let _ = serde_json::from_slice::<GroupShow>(data);
    let _ = serde_json::from_slice::<Groups>(data);
});

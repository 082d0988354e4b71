//! A notification (or a CSE's answer) as it arrives at an AE's point of
//! access: any bytes, in either serialization. Decoding and parsing must
//! never panic; an accepted instance must round-trip through the builder
//! that made it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealcast_onem2m::primitive::{self, aggregated_status, parse_notification, resource_id};
use sealcast_onem2m::{Notification, Serialization};

fuzz_target!(|data: &[u8]| {
    for ser in [Serialization::Json, Serialization::Cbor] {
        let Ok(value) = ser.decode(data) else {
            continue;
        };
        let _ = aggregated_status(&value);
        let _ = resource_id(&value);
        let _ = primitive::check_response(4103, value.clone());
        if let Ok(Notification::Created { instance, .. }) = parse_notification(&value) {
            let cin = sealcast_onem2m::resource::content_instance(&instance.content, &instance.target);
            let sgn = serde_json::json!({"m2m:sgn": {"nev": {"rep": cin}, "sur": "s"}});
            let again = parse_notification(&ser.decode(&ser.encode(&sgn)).expect("own encoding decodes"))
                .expect("own instance parses");
            let Notification::Created { instance: back, .. } = again else {
                panic!("not a creation");
            };
            assert_eq!(back.content, instance.content);
            assert_eq!(back.target, instance.target);
        }
    }
});

use serde_json::json;

use super::*;
use sealcast_core::ids::{EntityId, GroupId};

fn mn() -> CseBase {
    CseBase::from_cse_base(
        "http://127.0.0.1:8081/",
        &json!({"m2m:cb": {"csi": "/id-mn", "rn": "cse-mn", "spi": "//sealcast.example"}}),
    )
    .unwrap()
}

#[test]
fn entities_and_ae_ids_map_both_ways() {
    let dev = EntityId::new("door-7").unwrap();
    assert_eq!(ae_id(&dev).unwrap(), "Cdoor-7");
    assert_eq!(group_host_ae_id(&dev).unwrap(), "Sdoor-7");
    for originator in [
        "Cdoor-7",
        "/id-mn/Cdoor-7",
        "//sealcast.example/id-mn/Cdoor-7",
    ] {
        assert_eq!(
            entity_of_originator(originator),
            Some(dev.clone()),
            "{originator}"
        );
    }
    for other in ["Sdoor-7", "/id-mn", "CAdmin/", "", "C", "C.x"] {
        assert_eq!(entity_of_originator(other), None, "{other}");
    }
    let colon = EntityId::new("a:b").unwrap();
    assert!(matches!(ae_id(&colon), Err(Error::UnfitId { .. })));
}

#[test]
fn paths_in_both_forms() {
    let mn = mn();
    assert_eq!(mn.url, "http://127.0.0.1:8081");
    assert_eq!(
        mn.path(Addressing::SpRelative, "Cx/inbox"),
        "/~/id-mn/cse-mn/Cx/inbox"
    );
    assert_eq!(
        mn.path(Addressing::Absolute, "Cx/inbox"),
        "/_/sealcast.example/id-mn/cse-mn/Cx/inbox"
    );
    assert_eq!(mn.id(Addressing::SpRelative, "Cx"), "/id-mn/cse-mn/Cx");
    assert_eq!(
        mn.id(Addressing::Absolute, "Cx"),
        "//sealcast.example/id-mn/cse-mn/Cx"
    );
    assert!(
        CseBase::from_cse_base(
            "http://x",
            &json!({"m2m:cb": {"csi": "/a/b", "rn": "r", "spi": "s"}})
        )
        .is_err()
    );
}

#[test]
fn content_info_names_the_cose_type() {
    assert_eq!(
        content_info(&[0xd0, 0x83]),
        "application/cose; cose-type=\"cose-encrypt0\":1"
    );
    assert_eq!(
        content_info(&[0xd2, 0x84]),
        "application/cose; cose-type=\"cose-sign1\":1"
    );
    assert_eq!(
        content_info(&[0xd8, 0x60, 0x84]),
        "application/cose; cose-type=\"cose-encrypt\":1"
    );
    assert_eq!(content_info(&[0x84]), "application/cose:1");
    assert_eq!(content_info(&[]), "application/cose:1");
}

#[test]
fn a_content_instance_round_trips_through_a_notification_in_both_serializations() {
    let cin = resource::content_instance(&[0xd0, 1, 2, 3], "sealcast/v1/g/00/cmd");
    for ser in [Serialization::Json, Serialization::Cbor] {
        let mut rep = cin.clone();
        rep["m2m:cin"]["cr"] = json!("/id-mn/Cgw");
        rep["m2m:cin"]["pi"] = json!("cnt123");
        let sgn = json!({"m2m:sgn": {"nev": {"net": 3, "rep": rep}, "sur": "/id-mn/sub1"}});
        let bytes = ser.encode(&sgn);
        let parsed = primitive::parse_notification(&ser.decode(&bytes).unwrap()).unwrap();
        let Notification::Created {
            subscription,
            instance,
        } = parsed
        else {
            panic!("not a creation: {parsed:?}");
        };
        assert_eq!(subscription, "/id-mn/sub1");
        assert_eq!(instance.content, vec![0xd0, 1, 2, 3]);
        assert_eq!(instance.target, "sealcast/v1/g/00/cmd");
        assert_eq!(instance.creator.as_deref(), Some("/id-mn/Cgw"));
        assert_eq!(instance.parent, "cnt123");
    }
}

#[test]
fn notifications_that_are_not_sealcast_objects_are_refused() {
    let ok = |cin: serde_json::Value| {
        primitive::parse_notification(
            &json!({"m2m:sgn": {"nev": {"rep": {"m2m:cin": cin}}, "sur": "s"}}),
        )
    };
    assert!(ok(json!({"con": "AQI=", "cnf": "application/cose:1", "lbl": ["t"]})).is_ok());
    for bad in [
        json!({"con": "AQI=", "cnf": "text/plain:0", "lbl": ["t"]}),
        json!({"con": "not base64!", "cnf": "application/cose:1", "lbl": ["t"]}),
        json!({"con": "AQI=", "cnf": "application/cose:1"}),
        json!({"con": "AQI=", "cnf": "application/cose:1", "lbl": ["t", "u"]}),
        json!({"con": 5, "cnf": "application/cose:1", "lbl": ["t"]}),
    ] {
        assert!(ok(bad.clone()).is_err(), "{bad}");
    }
    assert_eq!(
        primitive::parse_notification(&json!({"m2m:sgn": {"vrq": true, "sur": "s"}})).unwrap(),
        Notification::Verification {
            subscription: "s".into()
        }
    );
    assert!(primitive::parse_notification(&json!({"x": 1})).is_err());
    assert!(
        Serialization::Json
            .decode(&vec![b' '; primitive::MAX_PRIMITIVE + 1])
            .is_err()
    );
}

#[test]
fn responses_become_errors_that_say_what_to_do() {
    assert!(primitive::check_response(2001, json!({})).is_ok());
    let e = primitive::check_response(4103, json!({"m2m:dbg": "no privileges"})).unwrap_err();
    assert_eq!(
        e,
        Error::Refused {
            rsc: 4103,
            detail: "no privileges".into()
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("access-control policy") && text.contains("no privileges"),
        "{text}"
    );
    assert_eq!(
        primitive::aggregated_status(
            &json!({"m2m:agr": {"m2m:rsp": [{"rsc": 2001}, {"rsc": 4103}]}})
        )
        .unwrap(),
        vec![2001, 4103]
    );
    assert_eq!(
        group_resource_name(&GroupId::new([0xab, 0x01]).unwrap()),
        "g-ab01"
    );
}

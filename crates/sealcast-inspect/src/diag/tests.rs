#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

#[test]
fn private_key_parameters_are_redacted() {
    let d = vec![0xd5; 32];
    let key = Value::Map(vec![
        (Value::from(1), Value::from(1)),
        (Value::from(2), Value::Bytes(b"door-1".to_vec())),
        (Value::from(-1), Value::from(6)),
        (Value::from(-2), Value::Bytes(vec![0x11; 32])),
        (Value::from(-4), Value::Bytes(d.clone())),
        (Value::from(-99), Value::Bytes(vec![0x77; 5])),
    ]);
    let sym = Value::Map(vec![
        (Value::from(1), Value::from(4)),
        (Value::from(-1), Value::Bytes(vec![0x66; 16])),
    ]);
    let set = Value::Array(vec![key, sym]);
    let text = render(&cbor(&set)).unwrap();
    assert!(text.contains("COSE_KeySet, 2 keys"), "{text}");
    assert!(text.contains("/ kty / 1: 1 / OKP /"), "{text}");
    assert!(text.contains("/ crv / -1: 6 / Ed25519 /"), "{text}");
    assert!(text.contains("/ d / -4: <redacted, 32 bytes>"), "{text}");
    assert!(text.contains("/ k / -1: <redacted, 16 bytes>"), "{text}");
    assert!(text.contains(&hex(&[0x11; 32])), "{text}");
    for secret in [hex(&d), hex(&[0x66; 16]), hex(&[0x77; 5])] {
        assert!(!text.contains(&secret), "{text}");
    }
    // The same key inside a byte string inside a tag is still redacted.
    let wrapped = Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(vec![0xa1, 0x01, 0x27]),
            Value::Map(vec![]),
            Value::Bytes(cbor(&set)),
            Value::Bytes(vec![0; 64]),
        ])),
    );
    let text = render(&cbor(&wrapped)).unwrap();
    assert!(text.contains("/ alg / 1: -8 / EdDSA /"), "{text}");
    assert!(!text.contains(&hex(&d)), "{text}");
}

#[test]
fn hostile_input_never_panics() {
    let deep: Vec<u8> = core::iter::repeat_n(0x81, 10_000).chain([0]).collect();
    assert!(render(&deep).is_err());
    let deep_tags: Vec<u8> = core::iter::repeat_n(0xd2, 10_000).chain([0]).collect();
    assert!(render(&deep_tags).is_err());
    assert!(render(&[]).is_err());
    assert!(render(&[0x5a, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(render(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    // Nested byte strings that each hold the next level.
    let mut v = Value::Map(vec![
        (Value::from(1), Value::from(4)),
        (Value::from(-1), Value::Bytes(vec![9; 16])),
    ]);
    for _ in 0..40 {
        v = Value::Tag(
            18,
            Box::new(Value::Array(vec![
                Value::Bytes(vec![]),
                Value::Map(vec![]),
                Value::Bytes(cbor(&v)),
                Value::Bytes(vec![]),
            ])),
        );
    }
    let text = render(&cbor(&v)).unwrap();
    assert!(!text.contains(&hex(&[9; 16])), "{text}");
    for n in 0..300u32 {
        let bytes: Vec<u8> = (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let _ = render(&bytes);
    }
}

#[test]
fn key_delivery_names_recipient_headers() {
    use sealcast_core::credential::EntityCredential;
    use sealcast_core::crypto::AeadAlg;
    use sealcast_core::groupkey::GroupKeyMaterial;
    use sealcast_core::ids::{EntityId, Epoch, GroupId};
    let mut rng = sealcast_core::testrng::TestRng::new(7);
    let manager = EntityCredential::generate(EntityId::new("manager").unwrap(), &mut rng);
    let device = EntityCredential::generate(EntityId::new("door-17").unwrap(), &mut rng);
    let material = GroupKeyMaterial::generate(
        GroupId::new(b"fire-doors").unwrap(),
        Epoch::new(3),
        AeadAlg::A128Gcm,
        Vec::new(),
        None,
        &mut rng,
    )
    .unwrap();
    let bytes = sealcast_core::delivery::seal_key_delivery(
        manager.id(),
        manager.signing_key(),
        device.id(),
        device.public().agreement_key(),
        &material,
        &mut rng,
    )
    .unwrap();
    let text = render(&bytes).unwrap();
    for want in [
        "sealcast key delivery: manager manager, group \"fire-doors\", epoch 3, recipient door-17",
        "/ recipients / [",
        "/ alg / 1: -25 / ECDH-ES + HKDF-256 /",
        "/ ephemeral key / -1: {",
        "/ crv / -1: 4 / X25519 /",
        "/ kid / 4: h'646f6f722d3137' / \"door-17\" /",
        "/ payload / << 96(/ COSE_Encrypt / [",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains(&hex(material.master_secret())));
}

#[test]
fn group_material_is_recognised() {
    let m = Value::Map(vec![
        (Value::from(1), Value::Bytes(b"fire-doors".to_vec())),
        (Value::from(2), Value::from(1)),
        (Value::from(3), Value::from(1)),
        (Value::from(4), Value::Bytes(vec![0xab; 32])),
        (Value::from(5), Value::Bytes(vec![0xcd; 8])),
        (
            Value::from(6),
            Value::Array(vec![Value::Array(vec![
                Value::Bytes(vec![1]),
                Value::Text("gw".into()),
                Value::Bytes(vec![0x22; 32]),
            ])]),
        ),
        (Value::from(7), Value::Null),
    ]);
    let text = render(&cbor(&m)).unwrap();
    assert!(text.contains("group key material"), "{text}");
    assert!(
        text.contains("/ master secret / 4: <redacted, 32 bytes>"),
        "{text}"
    );
    assert!(text.contains("/ alg / 3: 1 / A128GCM /"), "{text}");
    assert!(text.contains("\"fire-doors\""), "{text}");
    assert!(!text.contains(&hex(&[0xab; 32])), "{text}");
    assert!(!text.contains(&hex(&[0xcd; 8])), "{text}");
}

//! Credentials: round trips, hostile COSE_Keys and PEM, low-order keys.

use super::*;
use crate::testrng::TestRng;
use coset::CborSerializable;

fn eid(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

fn cred(name: &str, seed: u64) -> EntityCredential {
    EntityCredential::generate(eid(name), &mut TestRng::new(seed))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value in a hand-built COSE_Key.
enum V<'a> {
    I(i64),
    B(&'a [u8]),
    T(&'a str),
    /// Already-encoded CBOR.
    Raw(&'a [u8]),
}

fn map(params: &[(i64, V<'_>)]) -> Vec<u8> {
    let mut out = Vec::new();
    cbor::write_head(&mut out, 5, params.len() as u64);
    for (label, value) in params {
        cbor::write_int(&mut out, *label);
        match value {
            V::I(n) => cbor::write_int(&mut out, *n),
            V::B(b) => cbor::write_bstr(&mut out, b),
            V::T(t) => cbor::write_tstr(&mut out, t),
            V::Raw(r) => out.extend_from_slice(r),
        }
    }
    out
}

fn set(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    cbor::write_array(&mut out, keys.len() as u64);
    for k in keys {
        out.extend_from_slice(k);
    }
    out
}

fn okp(crv: i64, kid: &[u8], x: Option<&[u8]>, d: Option<&[u8]>) -> Vec<u8> {
    let mut params = vec![(1, V::I(1)), (2, V::B(kid)), (-1, V::I(crv))];
    if let Some(x) = x {
        params.push((-2, V::B(x)));
    }
    if let Some(d) = d {
        params.push((-4, V::B(d)));
    }
    map(&params)
}

struct Parts {
    kid: Vec<u8>,
    ed_x: [u8; 32],
    ed_d: [u8; 32],
    x_x: [u8; 32],
    x_d: [u8; 32],
}

fn parts(c: &EntityCredential) -> Parts {
    Parts {
        kid: c.id().as_bytes().to_vec(),
        ed_x: c.public().verifying_key().to_bytes(),
        ed_d: c.signing_key().to_bytes(),
        x_x: c.public().agreement_key().to_bytes(),
        x_d: c.agreement_secret().to_bytes(),
    }
}

#[test]
fn generation_is_deterministic_per_seed() {
    let (a, b, c) = (cred("dev-1", 1), cred("dev-1", 1), cred("dev-1", 2));
    assert_eq!(a.public(), b.public());
    assert_eq!(a.signing_key().to_bytes(), b.signing_key().to_bytes());
    assert_ne!(a.public(), c.public());
    assert_ne!(
        a.public().verifying_key().as_bytes(),
        a.public().agreement_key().as_bytes()
    );
}

#[test]
fn private_key_set_round_trip() {
    let c = cred("manager", 3);
    let bytes = c.to_cose_key_set().unwrap();
    let back = EntityCredential::from_cose_key_set(&bytes).unwrap();
    assert_eq!(back.id(), c.id());
    assert_eq!(back.public(), c.public());
    assert_eq!(back.signing_key().to_bytes(), c.signing_key().to_bytes());
    assert_eq!(
        back.agreement_secret().to_bytes(),
        c.agreement_secret().to_bytes()
    );
    // Deterministic encoding: same keys, same bytes.
    assert_eq!(*back.to_cose_key_set().unwrap(), *bytes);
    assert!(bytes.len() < 300);
}

#[test]
fn public_key_set_round_trip() {
    let p = cred("door-17", 4).public();
    let bytes = p.to_cose_key_set().unwrap();
    assert_eq!(PublicCredential::from_cose_key_set(&bytes).unwrap(), p);
}

#[test]
fn from_secret_bytes_matches_generated() {
    let c = cred("a", 5);
    let p = parts(&c);
    let d = EntityCredential::from_secret_bytes(eid("a"), &p.ed_d, &p.x_d);
    assert_eq!(d.public(), c.public());
}

#[test]
fn coset_reads_what_we_write() {
    let c = cred("meter.9", 6);
    let private = c.to_cose_key_set().unwrap();
    let public = c.public().to_cose_key_set().unwrap();
    for (bytes, has_d) in [(&private[..], true), (&public[..], false)] {
        let set = coset::CoseKeySet::from_slice(bytes).unwrap();
        assert_eq!(set.0.len(), 2);
        let expect = [
            (iana::Algorithm::EdDSA, CRV_ED25519),
            (iana::Algorithm::ECDH_ES_HKDF_256, CRV_X25519),
        ];
        for (key, (alg, crv)) in set.0.iter().zip(expect) {
            assert_eq!(key.kty, coset::KeyType::Assigned(iana::KeyType::OKP));
            assert_eq!(key.key_id, b"meter.9");
            assert_eq!(key.alg, Some(coset::Algorithm::Assigned(alg)));
            let find = |l: i64| {
                key.params
                    .iter()
                    .find(|(label, _)| *label == coset::Label::Int(l))
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(find(LABEL_CRV), Some(ciborium::Value::from(crv)));
            assert!(find(LABEL_X).is_some());
            assert_eq!(find(LABEL_D).is_some(), has_d);
        }
    }
}

#[test]
fn we_read_what_coset_writes() {
    let c = cred("agent-2", 7);
    let p = parts(&c);
    let key = |crv: i64, alg, x: &[u8]| {
        coset::CoseKeyBuilder::new_okp_key()
            .key_id(p.kid.clone())
            .algorithm(alg)
            .add_key_op(iana::KeyOperation::Verify)
            .param(LABEL_CRV, ciborium::Value::from(crv))
            .param(LABEL_X, ciborium::Value::Bytes(x.to_vec()))
            .build()
    };
    let set = coset::CoseKeySet(vec![
        key(CRV_X25519, iana::Algorithm::ECDH_ES_HKDF_256, &p.x_x),
        key(CRV_ED25519, iana::Algorithm::Ed25519, &p.ed_x),
    ]);
    let bytes = set.to_vec().unwrap();
    assert_eq!(
        PublicCredential::from_cose_key_set(&bytes).unwrap(),
        c.public()
    );
}

#[test]
fn private_key_without_x_is_accepted() {
    let c = cred("a", 8);
    let p = parts(&c);
    let bytes = set(&[
        okp(CRV_ED25519, &p.kid, None, Some(&p.ed_d)),
        okp(CRV_X25519, &p.kid, None, Some(&p.x_d)),
    ]);
    let back = EntityCredential::from_cose_key_set(&bytes).unwrap();
    assert_eq!(back.public(), c.public());
}

#[test]
fn mismatched_x_and_d_are_refused() {
    let (a, b) = (parts(&cred("a", 9)), parts(&cred("a", 10)));
    let ed_wrong = set(&[
        okp(CRV_ED25519, &a.kid, Some(&b.ed_x), Some(&a.ed_d)),
        okp(CRV_X25519, &a.kid, Some(&a.x_x), Some(&a.x_d)),
    ]);
    assert_eq!(
        EntityCredential::from_cose_key_set(&ed_wrong).err(),
        Some(Error::InvalidKey("Ed25519 key: x does not match d"))
    );
    let x_wrong = set(&[
        okp(CRV_ED25519, &a.kid, Some(&a.ed_x), Some(&a.ed_d)),
        okp(CRV_X25519, &a.kid, Some(&b.x_x), Some(&a.x_d)),
    ]);
    assert_eq!(
        EntityCredential::from_cose_key_set(&x_wrong).err(),
        Some(Error::InvalidKey("X25519 key: x does not match d"))
    );
    let short_x = set(&[
        okp(CRV_ED25519, &a.kid, Some(&a.ed_x[..31]), Some(&a.ed_d)),
        okp(CRV_X25519, &a.kid, Some(&a.x_x), Some(&a.x_d)),
    ]);
    assert!(EntityCredential::from_cose_key_set(&short_x).is_err());
}

#[test]
fn private_file_is_refused_as_public_and_vice_versa() {
    let c = cred("a", 11);
    let private = c.to_cose_key_set().unwrap();
    for err in [
        PublicCredential::from_cose_key_set(&private).err(),
        TrustStore::from_cose_key_set(&private).err(),
    ] {
        assert!(
            matches!(err, Some(Error::InvalidKey(m)) if m.contains("private key file")),
            "{err:?}"
        );
    }
    // One d is enough to refuse the file.
    let p = parts(&c);
    let one_d = set(&[
        okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None),
        okp(CRV_X25519, &p.kid, Some(&p.x_x), Some(&p.x_d)),
    ]);
    assert!(PublicCredential::from_cose_key_set(&one_d).is_err());
    let public = c.public().to_cose_key_set().unwrap();
    assert!(matches!(
        EntityCredential::from_cose_key_set(&public),
        Err(Error::InvalidKey(_))
    ));
}

#[test]
fn kids_must_be_present_and_equal() {
    let p = parts(&cred("a", 12));
    let differ = set(&[
        okp(CRV_ED25519, &p.kid, None, Some(&p.ed_d)),
        okp(CRV_X25519, b"b", None, Some(&p.x_d)),
    ]);
    assert!(matches!(
        EntityCredential::from_cose_key_set(&differ),
        Err(Error::Malformed(_))
    ));
    let no_kid = set(&[
        map(&[(1, V::I(1)), (-1, V::I(CRV_ED25519)), (-4, V::B(&p.ed_d))]),
        okp(CRV_X25519, &p.kid, None, Some(&p.x_d)),
    ]);
    assert!(EntityCredential::from_cose_key_set(&no_kid).is_err());
    // Public keys of two entities, each incomplete.
    let split = set(&[
        okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None),
        okp(CRV_X25519, b"b", Some(&p.x_x), None),
    ]);
    assert!(PublicCredential::from_cose_key_set(&split).is_err());
    // A kid that is no valid entity id.
    let bad_id = set(&[
        okp(CRV_ED25519, b"a/b", Some(&p.ed_x), None),
        okp(CRV_X25519, b"a/b", Some(&p.x_x), None),
    ]);
    assert!(matches!(
        PublicCredential::from_cose_key_set(&bad_id),
        Err(Error::InvalidId { .. })
    ));
}

#[test]
fn key_counts_per_kind_are_enforced() {
    let p = parts(&cred("a", 13));
    let ed = okp(CRV_ED25519, &p.kid, None, Some(&p.ed_d));
    let x = okp(CRV_X25519, &p.kid, None, Some(&p.x_d));
    for keys in [
        vec![ed.clone()],
        vec![ed.clone(), ed.clone()],
        vec![ed.clone(), x.clone(), x.clone()],
        vec![],
    ] {
        assert!(EntityCredential::from_cose_key_set(&set(&keys)).is_err());
    }
    let ed_pub = okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None);
    let x_pub = okp(CRV_X25519, &p.kid, Some(&p.x_x), None);
    let twice = set(&[ed_pub.clone(), x_pub, ed_pub]);
    assert!(PublicCredential::from_cose_key_set(&twice).is_err());
    assert!(TrustStore::from_cose_key_set(&twice).is_err());
    let no_x = set(&[
        okp(CRV_ED25519, &p.kid, None, None),
        okp(CRV_X25519, &p.kid, Some(&p.x_x), None),
    ]);
    assert!(PublicCredential::from_cose_key_set(&no_x).is_err());
}

#[test]
fn unsupported_kty_crv_alg() {
    let p = parts(&cred("a", 14));
    let with = |ed_key: Vec<u8>| {
        PublicCredential::from_cose_key_set(&set(&[
            ed_key,
            okp(CRV_X25519, &p.kid, Some(&p.x_x), None),
        ]))
    };
    let ec2 = map(&[(1, V::I(2)), (2, V::B(&p.kid)), (-1, V::I(1))]);
    assert_eq!(with(ec2).err(), Some(Error::UnsupportedAlgorithm(2)));
    let ed448 = okp(7, &p.kid, Some(&p.ed_x), None);
    assert_eq!(with(ed448).err(), Some(Error::UnsupportedAlgorithm(7)));
    let es256 = map(&[
        (1, V::I(1)),
        (2, V::B(&p.kid)),
        (3, V::I(-7)),
        (-1, V::I(CRV_ED25519)),
        (-2, V::B(&p.ed_x)),
    ]);
    assert_eq!(with(es256).err(), Some(Error::UnsupportedAlgorithm(-7)));
    let text_kty = map(&[(1, V::T("OKP")), (2, V::B(&p.kid))]);
    assert!(matches!(with(text_kty), Err(Error::Malformed(_))));
    let no_kty = map(&[(2, V::B(&p.kid)), (-1, V::I(CRV_ED25519))]);
    assert!(matches!(with(no_kty), Err(Error::Malformed(_))));
    // An X25519 key that claims EdDSA.
    let x_eddsa = map(&[
        (1, V::I(1)),
        (2, V::B(&p.kid)),
        (3, V::I(ALG_EDDSA)),
        (-1, V::I(CRV_X25519)),
        (-2, V::B(&p.x_x)),
    ]);
    let bytes = set(&[okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None), x_eddsa]);
    assert_eq!(
        PublicCredential::from_cose_key_set(&bytes).err(),
        Some(Error::UnsupportedAlgorithm(ALG_EDDSA))
    );
}

#[test]
fn unknown_parameters_are_skipped() {
    let c = cred("a", 15);
    let p = parts(&c);
    // key_ops [2], Base IV, a private label holding nested structures,
    // a tag, a float and a text label.
    let nested = [
        0x82, 0xa1, 0x61, 0x6b, 0xc1, 0x00, 0xfb, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut ed = map(&[
        (1, V::I(1)),
        (2, V::B(&p.kid)),
        (4, V::Raw(&[0x81, 0x02])),
        (5, V::B(&[1, 2, 3])),
        (-1, V::I(CRV_ED25519)),
        (-2, V::B(&p.ed_x)),
        (-65537, V::Raw(&nested)),
    ]);
    // Append a text-labelled parameter: bump the map count, then add it.
    ed[0] += 1;
    ed.extend_from_slice(&[0x61, b'z', 0xf5]);
    let bytes = set(&[ed, okp(CRV_X25519, &p.kid, Some(&p.x_x), None)]);
    assert_eq!(
        PublicCredential::from_cose_key_set(&bytes).unwrap(),
        c.public()
    );
}

#[test]
fn structural_errors_are_refused() {
    let c = cred("a", 16);
    let p = parts(&c);
    let x = okp(CRV_X25519, &p.kid, Some(&p.x_x), None);
    let good = c.public().to_cose_key_set().unwrap();
    // Duplicate label.
    let dup = map(&[
        (1, V::I(1)),
        (2, V::B(&p.kid)),
        (-1, V::I(CRV_ED25519)),
        (-2, V::B(&p.ed_x)),
        (-2, V::B(&p.ed_x)),
    ]);
    assert_eq!(
        PublicCredential::from_cose_key_set(&set(&[dup, x.clone()])).err(),
        Some(Error::Malformed("duplicate COSE_Key parameter"))
    );
    // Trailing bytes.
    let mut trailing = good.clone();
    trailing.push(0x00);
    assert!(matches!(
        PublicCredential::from_cose_key_set(&trailing),
        Err(Error::Malformed(_))
    ));
    // Indefinite-length array around valid keys.
    let mut indef = vec![0x9f];
    indef.extend_from_slice(&good[1..]);
    indef.push(0xff);
    assert!(matches!(
        PublicCredential::from_cose_key_set(&indef),
        Err(Error::Malformed(_))
    ));
    // Not an array; a map where a key should be.
    assert!(PublicCredential::from_cose_key_set(&[0xa0]).is_err());
    assert!(PublicCredential::from_cose_key_set(&[0x81, 0x80]).is_err());
    assert!(PublicCredential::from_cose_key_set(&[]).is_err());
    // Deep nesting in an unknown parameter is refused, not recursed into.
    let deep: Vec<u8> = core::iter::repeat_n(0x81, 10_000).chain([0x00]).collect();
    let ed = map(&[
        (1, V::I(1)),
        (2, V::B(&p.kid)),
        (-1, V::I(CRV_ED25519)),
        (-2, V::B(&p.ed_x)),
        (99, V::Raw(&deep[..MAX_CREDENTIAL_FILE_LEN - 400])),
    ]);
    assert_eq!(
        PublicCredential::from_cose_key_set(&set(&[ed, x])).err(),
        Some(Error::Malformed("CBOR nested too deeply"))
    );
    // Lengths that run past the end, huge and 64-bit.
    for bytes in [
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0x82, 0xa1, 0x02, 0x5a, 0xff, 0xff, 0xff, 0xff][..],
        &[
            0x81, 0xa1, 0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
        ][..],
        &[0x81, 0xa1, 0x1c][..],
    ] {
        assert!(PublicCredential::from_cose_key_set(bytes).is_err());
    }
}

#[test]
fn size_limits() {
    let c = cred("a", 17);
    let p = parts(&c);
    let big = vec![0u8; MAX_CREDENTIAL_FILE_LEN + 1];
    assert_eq!(
        EntityCredential::from_cose_key_set(&big).err(),
        Some(Error::TooLarge {
            what: "COSE_KeySet",
            limit: MAX_CREDENTIAL_FILE_LEN
        })
    );
    let k = okp(CRV_ED25519, &p.kid, Some(&p.ed_x), None);
    let nine = set(&vec![k; 9]);
    assert!(matches!(
        PublicCredential::from_cose_key_set(&nine),
        Err(Error::TooLarge { limit: 8, .. })
    ));
    let many: Vec<(i64, V<'_>)> = (0..17).map(|i| (100 + i, V::I(0))).collect();
    assert!(matches!(
        PublicCredential::from_cose_key_set(&set(&[map(&many)])),
        Err(Error::TooLarge {
            limit: MAX_KEY_PARAMS,
            ..
        })
    ));
    assert!(matches!(
        TrustStore::from_cose_key_set(&vec![0u8; TrustStore::MAX_FILE_LEN + 1]),
        Err(Error::TooLarge { .. })
    ));
    let mut huge_count = Vec::new();
    cbor::write_array(&mut huge_count, TrustStore::MAX_KEYS as u64 + 1);
    huge_count.resize(TrustStore::MAX_KEYS + 10, 0xa0);
    assert!(matches!(
        TrustStore::from_cose_key_set(&huge_count),
        Err(Error::TooLarge {
            limit: TrustStore::MAX_KEYS,
            ..
        })
    ));
}

#[test]
fn truncated_flipped_and_random_bytes_never_panic() {
    let c = cred("sensor-0042", 18);
    let inputs = [
        c.to_cose_key_set().unwrap().to_vec(),
        c.public().to_cose_key_set().unwrap(),
    ];
    for input in &inputs {
        for len in 0..input.len() {
            assert!(EntityCredential::from_cose_key_set(&input[..len]).is_err());
            assert!(PublicCredential::from_cose_key_set(&input[..len]).is_err());
            assert!(TrustStore::from_cose_key_set(&input[..len]).is_err() || len == 0);
        }
        for i in 0..input.len() {
            for bit in 0..8 {
                let mut m = input.clone();
                m[i] ^= 1 << bit;
                let _ = EntityCredential::from_cose_key_set(&m);
                let _ = PublicCredential::from_cose_key_set(&m);
                let _ = TrustStore::from_cose_key_set(&m);
            }
        }
    }
    let mut rng = TestRng::new(99);
    for n in 0..2000usize {
        let mut junk = vec![0u8; n % 300];
        rand_core::Rng::fill_bytes(&mut rng, &mut junk);
        if let Some(first) = junk.first_mut() {
            // Make most inputs start like a key set so parsing goes deep.
            if n % 4 != 0 {
                *first = 0x82;
            }
        }
        let _ = EntityCredential::from_cose_key_set(&junk);
        let _ = PublicCredential::from_cose_key_set(&junk);
        let _ = TrustStore::from_cose_key_set(&junk);
    }
}

#[test]
fn small_order_x25519_keys_are_refused() {
    let ed = cred("a", 19).public().verifying_key().to_bytes();
    let secret = [0x42u8; 32];
    for u in LOW_ORDER_U {
        // The list is right: every entry kills the agreement.
        assert_eq!(x25519_dalek::x25519(secret, u), [0u8; 32], "{}", hex(&u));
        assert_eq!(
            PublicCredential::new(eid("a"), &ed, &u).err(),
            Some(Error::InvalidKey("X25519 public key has small order"))
        );
        // The same point with the top bit set.
        let mut high = u;
        high[31] |= 0x80;
        assert!(PublicCredential::new(eid("a"), &ed, &high).is_err());
    }
    // p and p + 1 (aliases of 0 and 1) and 2^255 - 1.
    let mut p = [0xffu8; 32];
    p[31] = 0x7f;
    for low in [0xed, 0xee, 0xff] {
        p[0] = low;
        assert_eq!(
            PublicCredential::new(eid("a"), &ed, &p).err(),
            Some(Error::InvalidKey(
                "X25519 public key is not canonically encoded"
            ))
        );
    }
    assert!(PublicCredential::new(eid("a"), &ed, &[9u8; 31]).is_err());
    // The base point (u = 9) is fine.
    let mut nine = [0u8; 32];
    nine[0] = 9;
    assert!(PublicCredential::new(eid("a"), &ed, &nine).is_ok());
}

#[test]
fn weak_ed25519_keys_are_refused() {
    let x = cred("a", 20).public().agreement_key().to_bytes();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(matches!(
        PublicCredential::new(eid("a"), &identity, &x),
        Err(Error::InvalidKey(_))
    ));
    let p = parts(&cred("a", 20));
    let bytes = set(&[
        okp(CRV_ED25519, &p.kid, Some(&identity), None),
        okp(CRV_X25519, &p.kid, Some(&p.x_x), None),
    ]);
    assert!(PublicCredential::from_cose_key_set(&bytes).is_err());
}

#[test]
fn debug_shows_no_secret_bytes() {
    let c = cred("door-17", 21);
    let p = parts(&c);
    for text in [format!("{c:?}"), format!("{c:#?}")] {
        assert!(text.contains("door-17"), "{text}");
        assert!(text.contains(&hex(&p.ed_x)), "{text}");
        assert!(text.contains(&hex(&p.x_x)), "{text}");
        assert!(!text.contains(&hex(&p.ed_d)), "{text}");
        assert!(!text.contains(&hex(&p.x_d)), "{text}");
        // Not even a prefix long enough to narrow a search.
        assert!(!text.contains(&hex(&p.ed_d[..8])), "{text}");
        assert!(!text.contains(&hex(&p.x_d[..8])), "{text}");
    }
    let public = format!("{:?}", c.public());
    assert!(public.contains(&hex(&p.ed_x)) && public.contains(&hex(&p.x_x)));
}

#[test]
fn pem_round_trips() {
    let c = cred("a", 22);
    let pem = c.ed25519_to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{}", *pem);
    let x_d = c.agreement_secret().to_bytes();
    let back = EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &pem, &x_d).unwrap();
    assert_eq!(back.public(), c.public());
    assert_eq!(back.signing_key().to_bytes(), c.signing_key().to_bytes());

    let spki = c.public().ed25519_public_pem().unwrap();
    assert!(spki.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{spki}");
    assert_eq!(
        &PublicCredential::ed25519_from_public_pem(&spki).unwrap(),
        c.public().verifying_key()
    );
    // A public PEM is no private key and vice versa.
    assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &spki, &x_d).is_err());
    assert!(PublicCredential::ed25519_from_public_pem(&pem).is_err());
}

#[test]
fn bad_pem_is_refused() {
    let x_d = [7u8; 32];
    let pem = cred("a", 23).ed25519_to_pkcs8_pem().unwrap();
    let truncated = &pem[..pem.len() / 2];
    assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), truncated, &x_d).is_err());
    assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), "garbage", &x_d).is_err());
    let huge = "A".repeat(MAX_PEM_LEN + 1);
    assert!(matches!(
        EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &huge, &x_d),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        PublicCredential::ed25519_from_public_pem(&huge),
        Err(Error::TooLarge { .. })
    ));
    // An SPKI holding a small-order point.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = ed25519_dalek::pkcs8::PublicKeyBytes(identity)
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    assert!(PublicCredential::ed25519_from_public_pem(&weak).is_err());
    // A PKCS#8 v2 document whose public key does not match its secret.
    let v2 = KeypairBytes {
        secret_key: [1u8; 32],
        public_key: Some(ed25519_dalek::pkcs8::PublicKeyBytes(
            cred("a", 24).public().verifying_key().to_bytes(),
        )),
    }
    .to_pkcs8_pem(LineEnding::LF)
    .unwrap();
    assert!(EntityCredential::from_ed25519_pkcs8_pem(eid("a"), &v2, &x_d).is_err());
}

/// Imports a key OpenSSL generated and hands ours to OpenSSL.
#[test]
fn openssl_interop() {
    use std::process::Command;
    let have_openssl = Command::new("which")
        .arg("openssl")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_openssl {
        eprintln!(
            "\n!!!!! NOT RUN: credential::tests::openssl_interop — `openssl` is not on the PATH !!!!!\n"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "sealcast-credential-openssl-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| -> String {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let theirs = dir.join("theirs.pem");
    let theirs_s = theirs.to_str().unwrap();
    run(&["genpkey", "-algorithm", "ed25519", "-out", theirs_s]);
    let pem = std::fs::read_to_string(&theirs).unwrap();
    let c = EntityCredential::from_ed25519_pkcs8_pem(eid("ossl"), &pem, &[3u8; 32]).unwrap();
    let their_pub = run(&["pkey", "-in", theirs_s, "-pubout"]);
    assert_eq!(
        &PublicCredential::ed25519_from_public_pem(&their_pub).unwrap(),
        c.public().verifying_key()
    );

    let ours = cred("a", 25);
    let ours_path = dir.join("ours.pem");
    std::fs::write(&ours_path, ours.ed25519_to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    let ours_pub = run(&["pkey", "-in", ours_path.to_str().unwrap(), "-pubout"]);
    assert_eq!(
        &PublicCredential::ed25519_from_public_pem(&ours_pub).unwrap(),
        ours.public().verifying_key()
    );
    assert_eq!(ours_pub, ours.public().ed25519_public_pem().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trust_store_round_trip_and_lookup() {
    let creds: Vec<PublicCredential> = ["manager", "agent-1", "door-17"]
        .iter()
        .zip(30..)
        .map(|(n, s)| cred(n, s).public())
        .collect();
    let store: TrustStore = creds.iter().cloned().collect();
    assert_eq!(store.len(), 3);
    let bytes = store.to_cose_key_set().unwrap();
    let back = TrustStore::from_cose_key_set(&bytes).unwrap();
    assert_eq!(back, store);
    assert_eq!(back.get_by_kid(b"agent-1"), Some(&creds[1]));
    assert_eq!(back.get(&eid("door-17")), Some(&creds[2]));
    assert!(back.get_by_kid(b"nobody").is_none());
    assert!(back.get_by_kid(b"\xff").is_none());
    assert!(back.contains(&eid("manager")));

    // Each entity's own public file is a one-entity trust store.
    let one = creds[0].to_cose_key_set().unwrap();
    assert_eq!(TrustStore::from_cose_key_set(&one).unwrap().len(), 1);
    // A multi-entity file is not one public credential.
    assert!(PublicCredential::from_cose_key_set(&bytes).is_err());

    let empty = TrustStore::new();
    let bytes = empty.to_cose_key_set().unwrap();
    assert!(TrustStore::from_cose_key_set(&bytes).unwrap().is_empty());
}

#[test]
fn trust_store_groups_by_kid_in_any_order() {
    let (a, b) = (parts(&cred("a", 40)), parts(&cred("b", 41)));
    let bytes = set(&[
        okp(CRV_X25519, &b.kid, Some(&b.x_x), None),
        okp(CRV_ED25519, &a.kid, Some(&a.ed_x), None),
        okp(CRV_ED25519, &b.kid, Some(&b.ed_x), None),
        okp(CRV_X25519, &a.kid, Some(&a.x_x), None),
    ]);
    let store = TrustStore::from_cose_key_set(&bytes).unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(
        store.get(&eid("a")).unwrap().agreement_key().to_bytes(),
        a.x_x
    );
    // An entity with only half its keys spoils the file.
    let half = set(&[
        okp(CRV_ED25519, &a.kid, Some(&a.ed_x), None),
        okp(CRV_X25519, &a.kid, Some(&a.x_x), None),
        okp(CRV_ED25519, &b.kid, Some(&b.ed_x), None),
    ]);
    assert!(matches!(
        TrustStore::from_cose_key_set(&half),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn trust_store_insert_replaces() {
    let mut store = TrustStore::new();
    assert!(store.insert(cred("a", 50).public()).is_none());
    let old = store.insert(cred("a", 51).public());
    assert_eq!(old, Some(cred("a", 50).public()));
    assert_eq!(store.len(), 1);
    assert!(store.remove(&eid("a")).is_some());
    assert!(store.is_empty());
}

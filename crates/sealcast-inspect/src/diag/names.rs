//! What the printer knows: COSE and sealcast names of algorithms, header
//! labels and key parameters, the layouts of COSE messages, and how an
//! object is recognised.

use ciborium::Value;

use crate::text::{hex, printable};

// ---------------------------------------------------------------------------
// Names

pub(super) fn alg_name(id: i128) -> Option<&'static str> {
    Some(match id {
        1 => "A128GCM",
        2 => "A192GCM",
        3 => "A256GCM",
        4 => "HMAC 256/64",
        5 => "HMAC 256/256",
        6 => "HMAC 384/384",
        7 => "HMAC 512/512",
        10 => "AES-CCM-16-64-128",
        11 => "AES-CCM-16-64-256",
        12 => "AES-CCM-64-64-128",
        13 => "AES-CCM-64-64-256",
        24 => "ChaCha20/Poly1305",
        -3 => "A128KW",
        -4 => "A192KW",
        -5 => "A256KW",
        -6 => "direct",
        -7 => "ES256",
        -8 => "EdDSA",
        -10 => "direct+HKDF-SHA-256",
        -19 => "Ed25519",
        -25 => "ECDH-ES + HKDF-256",
        -26 => "ECDH-ES + HKDF-512",
        -27 => "ECDH-SS + HKDF-256",
        -28 => "ECDH-SS + HKDF-512",
        -29 => "ECDH-ES + A128KW",
        -35 => "ES384",
        -36 => "ES512",
        -37 => "PS256",
        _ => return None,
    })
}

pub(super) fn header_label(label: i128) -> Option<&'static str> {
    Some(match label {
        1 => "alg",
        2 => "crit",
        3 => "content type",
        4 => "kid",
        5 => "IV",
        6 => "Partial IV",
        7 => "counter signature",
        10 => "kid context",
        -1 => "ephemeral key",
        -2 => "static key",
        -3 => "static key id",
        -70_001 => "epoch",
        -70_002 => "timestamp",
        _ => return None,
    })
}

pub(super) fn kty_name(kty: i128) -> Option<&'static str> {
    Some(match kty {
        1 => "OKP",
        2 => "EC2",
        3 => "RSA",
        4 => "Symmetric",
        _ => return None,
    })
}

pub(super) fn crv_name(crv: i128) -> Option<&'static str> {
    Some(match crv {
        1 => "P-256",
        2 => "P-384",
        3 => "P-521",
        4 => "X25519",
        5 => "X448",
        6 => "Ed25519",
        7 => "Ed448",
        _ => return None,
    })
}

pub(super) fn key_op_name(op: i128) -> Option<&'static str> {
    Some(match op {
        1 => "sign",
        2 => "verify",
        3 => "encrypt",
        4 => "decrypt",
        5 => "wrap key",
        6 => "unwrap key",
        7 => "derive key",
        8 => "derive bits",
        9 => "MAC create",
        10 => "MAC verify",
        _ => return None,
    })
}

/// Label of a COSE_Key parameter, and whether its value is public.
pub(super) fn key_label(kty: Option<i128>, label: i128) -> (Option<&'static str>, bool) {
    match (kty, label) {
        (_, 1) => (Some("kty"), true),
        (_, 2) => (Some("kid"), true),
        (_, 3) => (Some("alg"), true),
        (_, 4) => (Some("key_ops"), true),
        (_, 5) => (Some("Base IV"), true),
        (Some(1 | 2), -1) => (Some("crv"), true),
        (Some(1 | 2), -2) => (Some("x"), true),
        (Some(2), -3) => (Some("y"), true),
        (Some(1 | 2), -4) => (Some("d"), false),
        (Some(4), -1) => (Some("k"), false),
        (Some(3), -1) => (Some("n"), true),
        (Some(3), -2) => (Some("e"), true),
        (Some(3), -3) => (Some("d"), false),
        _ => (None, false),
    }
}

/// The role of one element of a COSE message array.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Protected,
    Unprotected,
    Content(&'static str),
    Bytes(&'static str),
    Recipients,
    Signatures,
}

pub(super) const SIGN1: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Content("payload"),
    Slot::Bytes("signature"),
];
pub(super) const ENCRYPT0: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Bytes("ciphertext"),
];
pub(super) const ENCRYPT: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Bytes("ciphertext"),
    Slot::Recipients,
];
pub(super) const MAC0: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Content("payload"),
    Slot::Bytes("tag"),
];
pub(super) const SIGN: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Content("payload"),
    Slot::Signatures,
];
pub(super) const MAC: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Content("payload"),
    Slot::Bytes("tag"),
    Slot::Recipients,
];
pub(super) const RECIPIENT: &[Slot] = &[
    Slot::Protected,
    Slot::Unprotected,
    Slot::Bytes("ciphertext"),
    Slot::Recipients,
];
pub(super) const SIGNATURE: &[Slot] =
    &[Slot::Protected, Slot::Unprotected, Slot::Bytes("signature")];

/// A COSE message tag: its name and layout.
pub(super) fn cose_tag(tag: u64) -> Option<(&'static str, &'static [Slot])> {
    Some(match tag {
        18 => ("COSE_Sign1", SIGN1),
        16 => ("COSE_Encrypt0", ENCRYPT0),
        96 => ("COSE_Encrypt", ENCRYPT),
        17 => ("COSE_Mac0", MAC0),
        98 => ("COSE_Sign", SIGN),
        97 => ("COSE_Mac", MAC),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Recognising objects

pub(super) fn int(v: &Value) -> Option<i128> {
    match v {
        Value::Integer(i) => Some(i128::from(*i)),
        _ => None,
    }
}

pub(super) fn map_get(entries: &[(Value, Value)], label: i128) -> Option<&Value> {
    entries
        .iter()
        .find_map(|(k, v)| (int(k) == Some(label)).then_some(v))
}

/// `[bstr, map, …]` of the right length for `slots` (the last slot of a
/// recipient is optional).
pub(super) fn fits(items: &[Value], slots: &[Slot]) -> bool {
    let n = items.len();
    let len_ok = n == slots.len() || (slots == RECIPIENT && n == 3);
    len_ok && matches!(items[0], Value::Bytes(_)) && matches!(items[1], Value::Map(_))
}

/// A COSE_Key: an integer kty (1 to 4) and a key parameter with a negative
/// label that is not a map (a header map's -1 is a whole key).
pub(super) fn is_cose_key(entries: &[(Value, Value)]) -> bool {
    matches!(map_get(entries, 1).and_then(int), Some(1..=4))
        && entries
            .iter()
            .any(|(k, v)| int(k).is_some_and(|l| l < 0) && !matches!(v, Value::Map(_)))
}

/// sealcast group key material: integer keys 1 to 7, once each, with the
/// master secret a byte string.
pub(super) fn is_group_material(entries: &[(Value, Value)]) -> bool {
    entries.len() == 7
        && (1..=7).all(|l| entries.iter().filter(|(k, _)| int(k) == Some(l)).count() == 1)
        && matches!(map_get(entries, 4), Some(Value::Bytes(_)))
}

/// What a value is, if it is something this module knows.
pub(super) fn kind_of(v: &Value) -> Option<String> {
    match v {
        Value::Tag(tag, inner) => match (cose_tag(*tag), inner.as_ref()) {
            (Some((name, slots)), Value::Array(items)) if fits(items, slots) => {
                Some(format!("{name} (tag {tag})"))
            }
            _ => None,
        },
        Value::Map(entries) if is_group_material(entries) => {
            Some("sealcast group key material (master secret and salt redacted)".into())
        }
        Value::Map(entries) if is_cose_key(entries) => Some(format!(
            "COSE_Key{}",
            if has_private(entries) {
                " (private: secret parameters redacted)"
            } else {
                ""
            }
        )),
        Value::Array(items)
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| matches!(i, Value::Map(e) if is_cose_key(e))) =>
        {
            let private = items
                .iter()
                .any(|i| matches!(i, Value::Map(e) if has_private(e)));
            Some(format!(
                "COSE_KeySet, {} keys{}",
                items.len(),
                if private {
                    " (private: secret parameters redacted)"
                } else {
                    ""
                }
            ))
        }
        _ => None,
    }
}

pub(super) fn has_private(entries: &[(Value, Value)]) -> bool {
    let kty = map_get(entries, 1).and_then(int);
    entries
        .iter()
        .any(|(k, _)| int(k).is_none_or(|l| !key_label(kty, l).1))
}

/// Text that can stand inside an EDN comment (no `/`).
pub(super) fn comment_text(bytes: &[u8]) -> Option<&str> {
    printable(bytes).filter(|t| !t.contains('/'))
}

pub(super) fn id_for_comment(bytes: &[u8]) -> String {
    match comment_text(bytes) {
        Some(t) => format!("\"{t}\""),
        None => format!("h'{}'", hex(bytes)),
    }
}

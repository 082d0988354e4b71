#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Access-control tokens against an implementation we did not write:
//! pycose opens a broadcast that carries its signer's token, finds the token
//! in the inner protected header (label −70010), verifies it with the
//! manager's key under the token label and decodes the CWT claims with
//! cbor2 — all from docs/ARCHITECTURE.md, "Access-control tokens". Needs
//! `SEALCAST_PYCOSE` (a python3 with pycose and cbor2<6); NOT RUN otherwise.

use std::path::Path;
use std::process::Command;

use sealcast_core::broadcast::{broadcast_context, seal_broadcast_with_token};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::{AeadAlg, NONCE_LEN};
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::kdf::{self, KdfType};
use sealcast_core::testrng::TestRng;
use sealcast_group::token::{AccessToken, Grant, LABEL_TOKEN};
use serde_json::{Value, json};

fn hx(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pycose_reads_and_verifies_a_token_carried_in_a_broadcast() {
    let test = "pycose_reads_and_verifies_a_token_carried_in_a_broadcast";
    let Some(py) = sealcast_testkit::require(
        "SEALCAST_PYCOSE",
        test,
        "a python3 with pycose and cbor2<6 installed",
    ) else {
        return;
    };
    let mut rng = TestRng::new(0x70);
    let manager = EntityCredential::generate(EntityId::new("manager").unwrap(), &mut rng);
    let gateway = EntityCredential::generate(EntityId::new("gateway").unwrap(), &mut rng);
    let group = GroupId::new(b"fire-doors").unwrap();
    let sender = SenderId::new([0x01]).unwrap();
    let material = GroupKeyMaterial::new(
        group.clone(),
        Epoch::new(3),
        AeadAlg::A128Gcm,
        &[0x11; 16],
        &[0x22; 8],
        vec![AuthorizedSigner {
            entity: gateway.id().clone(),
            sender_id: sender.clone(),
            verifying_key: gateway.signing_key().verifying_key(),
        }],
        None,
    )
    .unwrap();
    let ctx = GroupContext::new(&material).unwrap();
    let token = AccessToken {
        issuer: manager.id().clone(),
        subject: gateway.id().clone(),
        issued_at: 1_800_000_000,
        not_before: 1_799_999_940,
        expires: 1_800_003_600,
        id: [0xab; 8],
        scope: vec![
            Grant {
                group: Some(group.clone()),
                operations: vec!["unlock".into(), "extinguish".into()],
            },
            Grant {
                group: None,
                operations: vec!["*".into()],
            },
        ],
    };
    let token_bytes = token.sign(&manager).unwrap();
    let (seq, ts, target) = (
        SeqNum::new(9).unwrap(),
        UnixMillis::new(1_800_000_000_123),
        "t/cmd",
    );
    let object = seal_broadcast_with_token(
        &ctx,
        gateway.id(),
        gateway.signing_key(),
        seq,
        ts,
        target,
        b"unlock",
        Some(&token_bytes),
    )
    .unwrap();
    let aad = broadcast_context(&group, Epoch::new(3), &sender, seq, ts, target);
    // The sender key and common IV by RFC 8613 §3.2 (docs/ARCHITECTURE.md).
    let (secret, salt, ctx_id) = ([0x11; 16], [0x22; 8], Some(group.as_bytes()));
    let key = kdf::derive(
        &secret,
        &salt,
        sender.as_bytes(),
        ctx_id,
        1,
        KdfType::Key,
        16,
    )
    .unwrap();
    let civ = kdf::derive(&secret, &salt, &[], ctx_id, 1, KdfType::Iv, NONCE_LEN).unwrap();
    let nonce = kdf::nonce(&civ, sender.as_bytes(), &seq.partial_iv()).unwrap();
    let input = json!({
        "kind": "token",
        "object": hx(&object),
        "key": hx(&key),
        "nonce": hx(&nonce),
        "external_aad": hx(&aad),
        "signer_public": hx(gateway.signing_key().verifying_key().as_bytes()),
        "manager_public": hx(manager.signing_key().verifying_key().as_bytes()),
        "label": LABEL_TOKEN,
    });
    let dir = tempfile_dir(test);
    let input_path = dir.join("input.json");
    std::fs::write(&input_path, serde_json::to_vec(&input).unwrap()).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sealcast-core/tests/pycose/verify.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&input_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payload"], hx(b"unlock"));
    assert!(
        v["inner"]["protected"]
            .as_str()
            .unwrap()
            .starts_with("a201273a00011179"),
        "{v}"
    );
    assert_eq!(v["kid"], hx(b"manager"));
    let claims = &v["claims"];
    assert_eq!(claims["1"], "manager");
    assert_eq!(claims["2"], "gateway");
    assert_eq!(claims["4"], 1_800_003_600u64);
    assert_eq!(claims["5"], 1_799_999_940u64);
    assert_eq!(claims["6"], 1_800_000_000u64);
    assert_eq!(claims["7"], json!({"bstr": hx(&[0xab; 8])}));
    assert_eq!(
        claims["9"],
        json!([
            [{"bstr": hx(b"fire-doors")}, ["unlock", "extinguish"]],
            ["*", ["*"]]
        ])
    );
}

fn tempfile_dir(test: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("sealcast-{test}-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

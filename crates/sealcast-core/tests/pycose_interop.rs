#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Interoperability with pycose, an implementation we did not write, in both
//! directions.
//!
//! * **A** (`tests/pycose/verify.py`): pycose verifies and decrypts what
//!   sealcast makes: a broadcast, a report, a key delivery, a single-message
//!   `encrypt_to` object and a `mac0_create` object.
//! * **B** (`tests/pycose/make.py`): sealcast opens what pycose makes: a
//!   Sign1, a COSE_Encrypt (ECDH-ES + HKDF-256, X25519), a Mac0, and a whole
//!   broadcast built in Python from sealcast's documented wire format (key
//!   derivation, context array, nonce, both layers), which
//!   `BroadcastReceiver::open` must accept.
//!
//! Known pycose limitation (1.1.0): ECDH only works with EC2 keys
//! (`DirectKeyAgreement.compute_cek` insists on `EC2Key`), so for X25519 the
//! scripts do the scalar multiplication and the HKDF call with `cryptography`
//! and let pycose do the rest (parsing, COSE_KDF_Context, Enc_structure,
//! AES-GCM, encoding). The scripts try pycose's own path first and report
//! which one was used; a pycose that learns X25519 is used automatically.
//!
//! pycose builds AEAD nonces only as RFC 9052 Base IV xor Partial IV, not as
//! OSCORE does, so the full nonce is handed to it as an `IV` attribute in
//! the unprotected bucket (which is not part of the AAD).
//!
//! Data travels through a temporary folder as JSON with hex fields; the
//! scripts print JSON. The tests need `SEALCAST_PYCOSE` (the Python to run,
//! with `pycose` and `cbor2<6` installed); see `sealcast-testkit`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use rand_core::Rng;
use sealcast_core::broadcast::{
    BroadcastReceiver, ReplayPolicy, broadcast_context, peek_broadcast, seal_broadcast,
};
use sealcast_core::cose;
use sealcast_core::crypto::{self, AeadAlg, NONCE_LEN};
use sealcast_core::delivery::{delivery_context, seal_key_delivery};
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, KeyId, SenderId, SeqNum, UnixMillis};
use sealcast_core::kdf::{self, KdfType};
use sealcast_core::report::{PairwiseKey, report_context, seal_report};
use sealcast_core::single::{self, MacKey};
use sealcast_core::testrng::TestRng;
use sealcast_core::{Error, ReplayKind};
use sealcast_testkit::unhex;
use serde_json::{Value, json};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

// ---------------------------------------------------------------------------
// Running the Python side

const WHY: &str = "a python3 with pycose and cbor2<6 installed";

/// The Python interpreter, or `None` after the testkit's loud skip.
fn python(test: &str) -> Option<String> {
    sealcast_testkit::require("SEALCAST_PYCOSE", test, WHY)
}

/// A private temporary folder, removed on drop (also when a test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "sealcast-pycose-{test}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `tests/pycose/<script>` on `input`; returns its JSON output. A failed
/// Python process fails the test and shows its stderr.
fn run_script(py: &str, script: &str, test: &str, input: &Value) -> Value {
    let dir = TempDir::new(test);
    let input_path = dir.0.join("input.json");
    std::fs::write(&input_path, serde_json::to_vec_pretty(input).unwrap()).unwrap();
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("pycose")
        .join(script);
    let out = Command::new(py)
        .arg(&script_path)
        .arg(&input_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{test}: cannot run `{py}` (SEALCAST_PYCOSE): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "{test}: `{py} {}` failed ({})\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            script_path.display(),
            out.status
        );
    }
    if !stderr.trim().is_empty() {
        eprintln!("{test}: {script} wrote to stderr:\n{stderr}");
    }
    let value: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{test}: {script} printed no JSON ({e}):\n{stdout}"));
    eprintln!(
        "{test}: pycose {}, cbor2 {}",
        value["pycose_version"], value["cbor2_version"]
    );
    value
}

// ---------------------------------------------------------------------------
// Small helpers

fn hx(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn bytes_at(v: &Value, pointer: &str) -> Vec<u8> {
    unhex(str_at(v, pointer))
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no uint at {pointer} in {v}"))
}

/// Asserts a header bucket as reported by verify.py: exactly these labels.
fn assert_bucket(v: &Value, pointer: &str, want: &Value, what: &str) {
    let got = v
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{what}: no {pointer} in {v}"));
    assert_eq!(
        got, want,
        "{what}: header bucket {pointer} as pycose reads it"
    );
}

fn random<const N: usize>(rng: &mut TestRng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

/// The `{1: alg}` protected header sealcast writes, as hex.
fn alg_protected(alg: i64) -> String {
    let mut v = vec![0xa1, 0x01];
    if alg >= 0 {
        v.push(alg as u8);
    } else {
        v.push(0x20 | (-1 - alg) as u8);
    }
    hx(&v)
}

// ---------------------------------------------------------------------------
// Fixtures

struct Signer {
    sender_id: SenderId,
    entity: EntityId,
    seed: [u8; 32],
    key: SigningKey,
}

/// Three signers whose sender ids cover the nonce layout's corners: one
/// byte (twice, one of them the zero byte) and the 6-byte maximum. (An empty
/// sender id is refused by `SenderId`: coset cannot parse an empty `kid`.)
fn signers(rng: &mut TestRng) -> Vec<Signer> {
    [
        (&[0x01][..], "door-17"),
        (&[0x00][..], "hvac-2"),
        (&[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5][..], "manager-a"),
    ]
    .into_iter()
    .map(|(sid, entity)| {
        let seed = random::<32>(rng);
        Signer {
            sender_id: SenderId::new(sid).unwrap(),
            entity: EntityId::new(entity).unwrap(),
            seed,
            key: SigningKey::from_bytes(&seed),
        }
    })
    .collect()
}

fn group_material(
    alg: AeadAlg,
    signers: &[Signer],
    not_after: Option<UnixMillis>,
    rng: &mut TestRng,
) -> GroupKeyMaterial {
    GroupKeyMaterial::new(
        GroupId::new(b"lights-floor-3").unwrap(),
        Epoch::new(300),
        alg,
        &random::<32>(rng),
        &random::<8>(rng),
        signers
            .iter()
            .map(|s| AuthorizedSigner {
                sender_id: s.sender_id.clone(),
                entity: s.entity.clone(),
                verifying_key: s.key.verifying_key(),
            })
            .collect(),
        not_after,
    )
    .unwrap()
}

/// A sender key exactly as `GroupContext::new` derives it (groupkey.rs).
fn sender_key(m: &GroupKeyMaterial, sid: &SenderId) -> Vec<u8> {
    kdf::derive(
        m.master_secret(),
        m.master_salt(),
        sid.as_bytes(),
        Some(m.group().as_bytes()),
        m.alg().cose_id(),
        KdfType::Key,
        m.alg().key_len(),
    )
    .unwrap()
    .to_vec()
}

/// The common IV exactly as `GroupContext::new` derives it.
fn common_iv(m: &GroupKeyMaterial) -> Vec<u8> {
    kdf::derive(
        m.master_secret(),
        m.master_salt(),
        &[],
        Some(m.group().as_bytes()),
        m.alg().cose_id(),
        KdfType::Iv,
        NONCE_LEN,
    )
    .unwrap()
    .to_vec()
}

const ALGS: [AeadAlg; 2] = [AeadAlg::A128Gcm, AeadAlg::A256Gcm];
const T0: u64 = 1_717_171_717_171;

// ---------------------------------------------------------------------------
// Direction A: pycose opens what sealcast makes

#[test]
fn a1_pycose_opens_broadcast() {
    let test = "a1_pycose_opens_broadcast";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xa1);
    let signers = signers(&mut rng);
    for alg in ALGS {
        let material = group_material(alg, &signers, None, &mut rng);
        let ctx = GroupContext::new(&material).unwrap();
        let civ = common_iv(&material);
        let target = "lights/floor-3/cmd";
        let mut cases = Vec::new();
        let mut expected = Vec::new();
        for (i, s) in signers.iter().enumerate() {
            for (j, seq) in [0, 255, 256, SeqNum::MAX].into_iter().enumerate() {
                let seq = SeqNum::new(seq).unwrap();
                let ts = UnixMillis::new(T0 + (i * 10 + j) as u64);
                let payload = format!("{{\"cmd\":\"on\",\"n\":{i}{j}}}").into_bytes();
                let object =
                    seal_broadcast(&ctx, &s.entity, &s.key, seq, ts, target, &payload).unwrap();
                let aad = broadcast_context(
                    material.group(),
                    material.epoch(),
                    &s.sender_id,
                    seq,
                    ts,
                    target,
                );
                let nonce = kdf::nonce(&civ, s.sender_id.as_bytes(), &seq.partial_iv()).unwrap();
                cases.push(json!({
                    "object": hx(&object),
                    "key": hx(&sender_key(&material, &s.sender_id)),
                    "nonce": hx(&nonce),
                    "external_aad": hx(&aad),
                    "signer_public": hx(s.key.verifying_key().as_bytes()),
                }));
                expected.push((s, seq, ts, payload));
            }
        }
        let out = run_script(
            &py,
            "verify.py",
            test,
            &json!({"kind": "broadcast", "cases": cases}),
        );
        let results = out["cases"].as_array().unwrap();
        assert_eq!(results.len(), expected.len());
        for (r, (s, seq, ts, payload)) in results.iter().zip(&expected) {
            assert_eq!(bytes_at(r, "/payload"), *payload, "{alg:?} payload");
            assert_eq!(str_at(r, "/outer/protected"), alg_protected(alg.cose_id()));
            assert_bucket(
                r,
                "/outer/uhdr",
                &json!({
                    "4": hx(s.sender_id.as_bytes()),
                    "6": hx(&seq.partial_iv()),
                    "10": hx(material.group().as_bytes()),
                    "-70001": 300,
                    "-70002": ts.get(),
                }),
                "broadcast outer",
            );
            assert_eq!(str_at(r, "/inner/protected"), "a10127");
            assert_bucket(
                r,
                "/inner/uhdr",
                &json!({"4": hx(s.sender_id.as_bytes())}),
                "broadcast inner",
            );
        }
    }
}

#[test]
fn a2_pycose_opens_report() {
    let test = "a2_pycose_opens_report";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xa2);
    let reporter = EntityId::new("meter-0042").unwrap();
    let headend = EntityId::new("headend-eu-1").unwrap();
    let reporter_key = SigningKey::from_bytes(&random::<32>(&mut rng));
    let reporter_x = StaticSecret::from(random::<32>(&mut rng));
    let headend_x = StaticSecret::from(random::<32>(&mut rng));
    let headend_pub = X25519Public::from(&headend_x);
    // Epoch 0 (static-static) and a refreshed association (epoch 3, the
    // headend's ephemeral key), as documented in report.rs.
    let ephemeral_x = StaticSecret::from(random::<32>(&mut rng));
    let ephemeral_pub = X25519Public::from(&ephemeral_x);
    for (alg, seq, epoch) in [
        (AeadAlg::A128Gcm, 70_000, 0u32),
        (AeadAlg::A256Gcm, 0, 0),
        (AeadAlg::A128Gcm, 9, 3),
    ] {
        let seq = SeqNum::new(seq).unwrap();
        let ts = UnixMillis::new(T0);
        let reading = b"{\"kWh\":1234.5,\"v\":230}";
        let pairwise = if epoch == 0 {
            PairwiseKey::derive(alg, &reporter_x, &headend_pub, &reporter, &headend).unwrap()
        } else {
            PairwiseKey::derive_refreshed(
                alg,
                &reporter_x,
                &headend_pub,
                &reporter_x,
                &ephemeral_pub,
                epoch,
                &reporter,
                &headend,
            )
            .unwrap()
        };
        let object = seal_report(
            &reporter,
            &reporter_key,
            &headend,
            &pairwise,
            seq,
            ts,
            reading,
        )
        .unwrap();
        // The pairwise key and nonce the way report.rs derives them.
        let mut shared = crypto::x25519(&reporter_x.to_bytes(), headend_pub.as_bytes())
            .unwrap()
            .to_vec();
        let mut salt = Vec::new();
        if epoch > 0 {
            shared.extend_from_slice(
                crypto::x25519(&reporter_x.to_bytes(), ephemeral_pub.as_bytes())
                    .unwrap()
                    .as_ref(),
            );
            salt = epoch.to_be_bytes().to_vec();
        }
        let derive = |kind, len| {
            kdf::derive(
                &shared,
                &salt,
                reporter.as_bytes(),
                Some(headend.as_bytes()),
                alg.cose_id(),
                kind,
                len,
            )
            .unwrap()
        };
        let key = derive(KdfType::Key, alg.key_len());
        let iv = derive(KdfType::Iv, NONCE_LEN);
        let nonce = kdf::nonce(&iv, &[], &seq.partial_iv()).unwrap();
        let aad = report_context(&reporter, &headend, seq, ts);
        let out = run_script(
            &py,
            "verify.py",
            test,
            &json!({
                "kind": "report",
                "object": hx(&object),
                "reporter_public": hx(reporter_key.verifying_key().as_bytes()),
                "external_aad": hx(&aad),
                "key": hx(&key),
                "nonce": hx(&nonce),
                "alg": alg.cose_id(),
                "reporter": reporter.as_str(),
                "headend": headend.as_str(),
                "reporter_x25519_secret": hx(&reporter_x.to_bytes()),
                "headend_x25519_public": hx(headend_pub.as_bytes()),
                "epoch": epoch,
                "headend_ephemeral_public": hx(ephemeral_pub.as_bytes()),
            }),
        );
        assert_eq!(bytes_at(&out, "/reading"), reading);
        assert_eq!(
            bytes_at(&out, "/derived_key"),
            *key,
            "pairwise key from the docs"
        );
        assert_eq!(
            bytes_at(&out, "/derived_nonce"),
            nonce,
            "pairwise nonce from the docs"
        );
        assert_eq!(str_at(&out, "/outer/protected"), "a10127");
        assert_bucket(
            &out,
            "/outer/uhdr",
            &json!({
                "4": hx(reporter.as_bytes()),
                "6": hx(&seq.partial_iv()),
                "-70002": ts.get(),
            }),
            "report outer",
        );
        if epoch == 0 {
            assert_eq!(
                str_at(&out, "/inner/protected"),
                alg_protected(alg.cose_id())
            );
        } else {
            // {1: alg, -70011: epoch}: a2 01 <alg> 3a 00011179 <epoch>.
            assert_eq!(
                str_at(&out, "/inner/protected"),
                format!(
                    "a201{}3a0001117a{:02x}",
                    &alg_protected(alg.cose_id())[4..],
                    epoch
                )
            );
        }
        assert_bucket(
            &out,
            "/inner/uhdr",
            &json!({"6": hx(&seq.partial_iv())}),
            "report inner",
        );
    }
}

#[test]
fn a3_pycose_opens_key_delivery() {
    let test = "a3_pycose_opens_key_delivery";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xa3);
    let signers = signers(&mut rng);
    let manager = EntityId::new("manager-a").unwrap();
    let manager_key = SigningKey::from_bytes(&random::<32>(&mut rng));
    let recipient = EntityId::new("door-17").unwrap();
    let recipient_x = StaticSecret::from(random::<32>(&mut rng));
    for (alg, not_after) in [
        (AeadAlg::A128Gcm, Some(UnixMillis::new(1_800_000_000_000))),
        (AeadAlg::A256Gcm, None),
    ] {
        let material = group_material(alg, &signers, not_after, &mut rng);
        let object = seal_key_delivery(
            &manager,
            &manager_key,
            &recipient,
            &X25519Public::from(&recipient_x),
            &material,
            &mut rng,
        )
        .unwrap();
        let aad = delivery_context(&recipient, material.group(), material.epoch());
        let out = run_script(
            &py,
            "verify.py",
            test,
            &json!({
                "kind": "delivery",
                "object": hx(&object),
                "manager_public": hx(manager_key.verifying_key().as_bytes()),
                "external_aad": hx(&aad),
                "recipient_kid": hx(recipient.as_bytes()),
                "recipient_secret": hx(&recipient_x.to_bytes()),
            }),
        );
        eprintln!(
            "{test}: ECDH path: {} (pycose's own ECDH: {})",
            out["inner"]["ecdh"], out["inner"]["pycose_ecdh_error"]
        );
        assert_eq!(
            bytes_at(&out, "/plaintext"),
            *material.to_cbor().unwrap(),
            "{alg:?}"
        );
        let m = &out["material"];
        assert_eq!(bytes_at(m, "/group"), material.group().as_bytes());
        assert_eq!(u64_at(m, "/epoch"), 300);
        assert_eq!(
            m["alg"].as_i64(),
            Some(alg.cose_id()),
            "alg in the material"
        );
        assert_eq!(bytes_at(m, "/master_secret"), material.master_secret());
        assert_eq!(bytes_at(m, "/master_salt"), material.master_salt());
        assert_eq!(m["not_after"].as_u64(), not_after.map(UnixMillis::get));
        let want_signers: Vec<Value> = signers
            .iter()
            .map(|s| {
                json!([
                    hx(s.sender_id.as_bytes()),
                    s.entity.as_str(),
                    hx(s.key.verifying_key().as_bytes())
                ])
            })
            .collect();
        assert_eq!(m["signers"], Value::Array(want_signers));
        assert_eq!(str_at(&out, "/outer/protected"), "a10127");
        assert_bucket(
            &out,
            "/outer/uhdr",
            &json!({
                "4": hx(manager.as_bytes()),
                "10": hx(material.group().as_bytes()),
                "-70001": 300,
            }),
            "delivery outer",
        );
        assert_eq!(
            str_at(&out, "/inner/protected"),
            alg_protected(alg.cose_id())
        );
        assert_eq!(str_at(&out, "/inner/recipient_protected"), "a1013818");
    }
}

#[test]
fn a4_pycose_opens_encrypt_to() {
    let test = "a4_pycose_opens_encrypt_to";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xa4);
    let secret = StaticSecret::from(random::<32>(&mut rng));
    let kid = b"svc-7";
    let aad = b"oneM2M TS-0003 single message";
    for (alg, len) in [(AeadAlg::A128Gcm, 0), (AeadAlg::A256Gcm, 1000)] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let object = single::encrypt_to(
            alg,
            kid,
            &X25519Public::from(&secret),
            &plaintext,
            aad,
            &mut rng,
        )
        .unwrap();
        let out = run_script(
            &py,
            "verify.py",
            test,
            &json!({
                "kind": "encrypt_to",
                "object": hx(&object),
                "kid": hx(kid),
                "secret": hx(&secret.to_bytes()),
                "external_aad": hx(aad),
            }),
        );
        eprintln!(
            "{test}: ECDH path: {} (pycose's own ECDH: {})",
            out["inner"]["ecdh"], out["inner"]["pycose_ecdh_error"]
        );
        assert_eq!(bytes_at(&out, "/plaintext"), plaintext, "{alg:?}");
        if let Some(ctx) = out["inner"]["kdf_context"].as_str() {
            assert_eq!(
                unhex(ctx),
                single::kdf_context(alg, &unhex("a1013818")),
                "pycose's COSE_KDF_Context equals sealcast's"
            );
        }
    }
}

#[test]
fn a4_pycose_verifies_mac0() {
    let test = "a4_pycose_verifies_mac0";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xa5);
    // sealcast accepts 32- to 64-byte HMAC keys; pycose 1.1's SymmetricKey
    // only 16, 24 or 32 bytes, so only 32 is common ground.
    for _ in 0..2 {
        let key_bytes = random::<32>(&mut rng);
        let key = MacKey::new(KeyId::new(b"icv-key-1").unwrap(), &key_bytes).unwrap();
        let payload = b"reading 42";
        let aad = b"icv context";
        let object = single::mac0_create(&key, payload, aad).unwrap();
        let out = run_script(
            &py,
            "verify.py",
            test,
            &json!({
                "kind": "mac0",
                "object": hx(&object),
                "key": hx(&key_bytes),
                "external_aad": hx(aad),
            }),
        );
        assert_eq!(bytes_at(&out, "/payload"), payload);
        assert_eq!(str_at(&out, "/mac0/protected"), "a10105");
        assert_bucket(&out, "/mac0/uhdr", &json!({"4": hx(b"icv-key-1")}), "mac0");
    }
}

// ---------------------------------------------------------------------------
// Direction B: sealcast opens what pycose makes

#[test]
fn b1_sealcast_verifies_pycose_sign1() {
    let test = "b1_sealcast_verifies_pycose_sign1";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xb1);
    let seed = random::<32>(&mut rng);
    let vk = SigningKey::from_bytes(&seed).verifying_key();
    let kid = b"manager-a";
    let aad = b"some external aad";
    for payload in [&b""[..], b"hello sealcast", &[0x5a; 300][..]] {
        let out = run_script(
            &py,
            "make.py",
            test,
            &json!({
                "kind": "sign1",
                "seed": hx(&seed),
                "kid": hx(kid),
                "payload": hx(payload),
                "external_aad": hx(aad),
            }),
        );
        let object = bytes_at(&out, "/object");
        let sign1 = cose::parse_sign1(&object, 1 << 16).unwrap();
        let protected = sign1.protected.original_data.clone().unwrap_or_default();
        assert_eq!(hx(&protected), "a10127", "pycose's protected header");
        assert_eq!(
            sign1.protected.header.alg,
            Some(coset::RegisteredLabelWithPrivate::Assigned(
                coset::iana::Algorithm::EdDSA
            ))
        );
        assert_eq!(sign1.unprotected.key_id, kid);
        let body = sign1.payload.clone().unwrap();
        assert_eq!(body, payload);
        let tbs = cose::sig1_structure(&protected, aad, &body);
        crypto::ed25519_verify_strict(&vk, &tbs, &sign1.signature).unwrap();
        let wrong = cose::sig1_structure(&protected, b"other aad", &body);
        assert_eq!(
            crypto::ed25519_verify_strict(&vk, &wrong, &sign1.signature),
            Err(Error::BadSignature)
        );
    }
}

#[test]
fn b2_sealcast_decrypts_pycose_encrypt() {
    let test = "b2_sealcast_decrypts_pycose_encrypt";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xb2);
    let secret = StaticSecret::from(random::<32>(&mut rng));
    let public = X25519Public::from(&secret);
    let kid = b"door-17";
    let aad = b"[\"sealcast key delivery v1\"]";
    for alg in ALGS {
        let eph = random::<32>(&mut rng);
        let iv = random::<NONCE_LEN>(&mut rng);
        let payload = format!("secret for {alg:?}").into_bytes();
        let out = run_script(
            &py,
            "make.py",
            test,
            &json!({
                "kind": "encrypt_to",
                "alg": alg.cose_id(),
                "kid": hx(kid),
                "recipient_public": hx(public.as_bytes()),
                "ephemeral_secret": hx(&eph),
                "iv": hx(&iv),
                "payload": hx(&payload),
                "external_aad": hx(aad),
            }),
        );
        eprintln!(
            "{test}: ECDH path: {} (pycose's own ECDH: {})",
            out["ecdh"], out["pycose_ecdh_error"]
        );
        let object = bytes_at(&out, "/object");
        let opened = single::decrypt_from(kid, &secret, &object, aad).unwrap();
        assert_eq!(*opened, payload, "{alg:?}");
        assert_eq!(
            single::decrypt_from(kid, &secret, &object, b"other aad"),
            Err(Error::DecryptFailed)
        );
        // With the same randomness sealcast writes the very same bytes.
        let ours =
            single::hazmat::encrypt_to_with_randomness(alg, kid, &public, &payload, aad, &eph, &iv)
                .unwrap();
        assert_eq!(
            hx(&object),
            hx(&ours),
            "pycose's and sealcast's COSE_Encrypt differ"
        );
    }
}

#[test]
fn b3_sealcast_verifies_pycose_mac0() {
    let test = "b3_sealcast_verifies_pycose_mac0";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xb3);
    let key_bytes = random::<32>(&mut rng);
    let kid = KeyId::new(b"icv-key-1").unwrap();
    let key = MacKey::new(kid.clone(), &key_bytes).unwrap();
    let payload = b"integrity check value payload";
    let aad = b"icv context";
    let out = run_script(
        &py,
        "make.py",
        test,
        &json!({
            "kind": "mac0",
            "key": hx(&key_bytes),
            "kid": hx(kid.as_bytes()),
            "payload": hx(payload),
            "external_aad": hx(aad),
        }),
    );
    let object = bytes_at(&out, "/object");
    assert_eq!(single::mac0_verify(&key, &object, aad).unwrap(), payload);
    assert_eq!(
        single::mac0_verify(&key, &object, b"other"),
        Err(Error::BadSignature)
    );
    assert_eq!(
        hx(&object),
        hx(&single::mac0_create(&key, payload, aad).unwrap()),
        "pycose's and sealcast's COSE_Mac0 differ"
    );
}

/// One broadcast for make.py to build.
struct BroadcastSpec<'s> {
    signer: &'s Signer,
    seq: SeqNum,
    timestamp: UnixMillis,
    target: String,
    payload: Vec<u8>,
}

/// Has make.py build `specs` as broadcasts of `material`'s group, checks
/// each intermediate value it derived against sealcast's, and returns the
/// objects.
fn pycose_broadcasts(
    py: &str,
    test: &str,
    material: &GroupKeyMaterial,
    specs: &[BroadcastSpec<'_>],
) -> Vec<Vec<u8>> {
    let messages: Vec<Value> = specs
        .iter()
        .map(|b| {
            json!({
                "sender_id": hx(b.signer.sender_id.as_bytes()),
                "signer_seed": hx(&b.signer.seed),
                "seq": b.seq.get(),
                "timestamp": b.timestamp.get(),
                "target": b.target,
                "payload": hx(&b.payload),
            })
        })
        .collect();
    let alg = material.alg();
    let out = run_script(
        py,
        "make.py",
        test,
        &json!({
            "kind": "broadcast",
            "alg": alg.cose_id(),
            "master_secret": hx(material.master_secret()),
            "master_salt": hx(material.master_salt()),
            "group_id": hx(material.group().as_bytes()),
            "epoch": material.epoch().get(),
            "messages": messages,
        }),
    );
    let civ = common_iv(material);
    assert_eq!(
        bytes_at(&out, "/common_iv"),
        civ,
        "{alg:?}: common IV derived from the docs"
    );
    let made = out["messages"].as_array().unwrap();
    assert_eq!(made.len(), specs.len());
    made.iter()
        .zip(specs)
        .map(|(m, b)| {
            let sid = &b.signer.sender_id;
            let what = format!("{alg:?} sender {sid:?} seq {}", b.seq.get());
            // Each layer separately, so a mismatch names the one that differs.
            assert_eq!(
                bytes_at(m, "/sender_key"),
                sender_key(material, sid),
                "{what}: sender key"
            );
            assert_eq!(
                bytes_at(m, "/nonce"),
                kdf::nonce(&civ, sid.as_bytes(), &b.seq.partial_iv()).unwrap(),
                "{what}: nonce"
            );
            assert_eq!(
                bytes_at(m, "/context"),
                broadcast_context(
                    material.group(),
                    material.epoch(),
                    sid,
                    b.seq,
                    b.timestamp,
                    &b.target
                ),
                "{what}: context"
            );
            bytes_at(m, "/object")
        })
        .collect()
}

/// The strongest test: pycose, cbor2 and `cryptography` implement the whole
/// broadcast from sealcast's docs, and sealcast's receiver accepts it.
#[test]
fn b4_sealcast_opens_pycose_broadcast() {
    let test = "b4_sealcast_opens_pycose_broadcast";
    let Some(py) = python(test) else { return };
    let mut rng = TestRng::new(0xb4);
    let signers = signers(&mut rng);
    let targets = [
        "lights/floor-3/cmd".to_owned(),
        "lumières/étage-3/commande".to_owned(),
        format!("lights/{}", "x".repeat(300)),
    ];
    for alg in ALGS {
        let material = group_material(alg, &signers, None, &mut rng);
        let mut specs = Vec::new();
        for (i, signer) in signers.iter().enumerate() {
            // Ascending per sender, so the replay window accepts them all.
            for (j, seq) in [0, 1, 300, 65_536, SeqNum::MAX].into_iter().enumerate() {
                let k = i * 5 + j;
                specs.push(BroadcastSpec {
                    signer,
                    seq: SeqNum::new(seq).unwrap(),
                    timestamp: UnixMillis::new(T0 + k as u64),
                    target: targets[k % targets.len()].clone(),
                    payload: match j {
                        0 => Vec::new(),
                        1 => vec![0xc3; 1000],
                        _ => format!("command {k}").into_bytes(),
                    },
                });
            }
        }
        let objects = pycose_broadcasts(&py, test, &material, &specs);

        let ctx = GroupContext::new(&material).unwrap();
        let mut receiver = BroadcastReceiver::new(ctx.clone(), ReplayPolicy::default()).unwrap();
        for (object, b) in objects.iter().zip(&specs) {
            let s = b.signer;
            let what = format!("{alg:?} sender {:?} seq {}", s.sender_id, b.seq.get());
            let header = peek_broadcast(object)
                .unwrap_or_else(|e| panic!("{what}: sealcast cannot parse pycose's header: {e}"));
            assert_eq!(header.sender_id, s.sender_id, "{what}");
            assert_eq!(header.seq, b.seq, "{what}");
            let opened = receiver
                .open(object, &b.target, b.timestamp)
                .unwrap_or_else(|e| panic!("{what}: sealcast refused pycose's broadcast: {e}"));
            assert_eq!(opened.group, *material.group(), "{what}");
            assert_eq!(opened.epoch, material.epoch(), "{what}");
            assert_eq!(opened.sender_id, s.sender_id, "{what}");
            assert_eq!(opened.signer, s.entity, "{what}");
            assert_eq!(opened.seq, b.seq, "{what}");
            assert_eq!(opened.timestamp, b.timestamp, "{what}");
            assert_eq!(opened.payload, b.payload, "{what}");

            // sealcast, given the same inputs, writes the very same bytes.
            let ours = seal_broadcast(
                &ctx,
                &s.entity,
                &s.key,
                b.seq,
                b.timestamp,
                &b.target,
                &b.payload,
            )
            .unwrap();
            assert_eq!(hx(object), hx(&ours), "{what}: bytes differ");
        }

        // The checks still bite on pycose's objects: a replay, and a target
        // other than the one signed.
        let (last_object, last) = objects.iter().zip(&specs).next_back().unwrap();
        assert_eq!(
            receiver.open(last_object, &last.target, last.timestamp),
            Err(Error::Replay(ReplayKind::Duplicate))
        );
        let mut fresh = BroadcastReceiver::new(ctx, ReplayPolicy::default()).unwrap();
        assert_eq!(
            fresh.open(last_object, "lights/floor-4/cmd", last.timestamp),
            Err(Error::DecryptFailed)
        );
    }
}

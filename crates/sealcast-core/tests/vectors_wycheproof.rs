#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! C2SP Wycheproof vectors against sealcast's own crypto wrappers
//! (`sealcast_core::crypto`), never against the underlying crates directly.
//!
//! The vectors live outside the repository; `SEALCAST_VECTORS` names the
//! folder (see `sealcast-testkit`). Without it each test prints a NOT RUN
//! banner and returns, unless `SEALCAST_REQUIRE_EXTERNAL=1` (CI) makes that a
//! failure.
//!
//! Every test collects all failing cases (file + tcId) and asserts once at the
//! end, prints a count summary line, and checks the number of cases read, so
//! a truncated or empty vector file cannot pass.

use std::path::Path;

use sealcast_core::Error;
use sealcast_core::crypto::{self, AeadAlg};
use sealcast_testkit::{read_vector, unhex, vectors_dir};
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// Loads `wycheproof/<file>` and checks its declared test count.
fn load(dir: &Path, file: &str, expected_cases: usize) -> Value {
    let text = read_vector(dir, &format!("wycheproof/{file}"));
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("wycheproof/{file}: not JSON: {e}"));
    let declared = json["numberOfTests"]
        .as_u64()
        .unwrap_or_else(|| panic!("wycheproof/{file}: no numberOfTests"));
    assert_eq!(
        declared as usize, expected_cases,
        "wycheproof/{file}: numberOfTests changed; update the expected count after reviewing the new file"
    );
    json
}

fn groups<'a>(json: &'a Value, file: &str) -> &'a [Value] {
    json["testGroups"]
        .as_array()
        .unwrap_or_else(|| panic!("wycheproof/{file}: no testGroups"))
}

fn tests<'a>(group: &'a Value, file: &str) -> &'a [Value] {
    group["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("wycheproof/{file}: group without tests"))
}

fn field<'a>(v: &'a Value, key: &str, file: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("wycheproof/{file}: missing string field {key:?} in {v}"))
}

fn hexfield(v: &Value, key: &str, file: &str) -> Vec<u8> {
    unhex(field(v, key, file))
}

fn tc_id(t: &Value) -> u64 {
    t["tcId"].as_u64().unwrap_or(0)
}

fn flags(t: &Value) -> Vec<String> {
    t["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prints the summary line and fails with every collected failure.
fn finish(label: &str, cases: usize, expected_cases: usize, failures: &[String]) {
    println!("{label}: {cases} cases, {} failures", failures.len());
    assert_eq!(
        cases, expected_cases,
        "{label}: read {cases} cases, expected {expected_cases} (truncated or changed file?)"
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {cases} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------- AES-GCM

const AES_GCM_FILE: &str = "aes_gcm_test.json";
const AES_GCM_CASES: usize = 316;

/// Our wrapper supports exactly AES-128/256-GCM with a 96-bit nonce and a
/// 128-bit tag (what COSE alg 1 and 3 fix). Every Wycheproof case outside that
/// (192-bit keys, other IV sizes including the zero-length IV, other tag
/// sizes) must be refused by the wrapper: seal and open both return `Err`.
/// Inside it, valid cases must reproduce `ct || tag` and `msg` exactly and
/// invalid ones must fail to open.
#[test]
fn wycheproof_aes_gcm() {
    let Some(dir) = vectors_dir("wycheproof_aes_gcm") else {
        return;
    };
    let file = AES_GCM_FILE;
    let json = load(&dir, file, AES_GCM_CASES);
    let mut failures = Vec::new();
    let mut cases = 0usize;
    let (mut supported_valid, mut supported_invalid, mut refused) = (0usize, 0usize, 0usize);

    for g in groups(&json, file) {
        let key_size = g["keySize"].as_u64().unwrap_or(0);
        let iv_size = g["ivSize"].as_u64().unwrap_or(0);
        let tag_size = g["tagSize"].as_u64().unwrap_or(0);
        let alg = match key_size {
            128 => Some(AeadAlg::A128Gcm),
            256 => Some(AeadAlg::A256Gcm),
            _ => None,
        };
        for t in tests(g, file) {
            cases += 1;
            let id = tc_id(t);
            let result = field(t, "result", file);
            let key = hexfield(t, "key", file);
            let iv = hexfield(t, "iv", file);
            let aad = hexfield(t, "aad", file);
            let msg = hexfield(t, "msg", file);
            let ct = hexfield(t, "ct", file);
            let tag = hexfield(t, "tag", file);
            let mut ct_tag = ct.clone();
            ct_tag.extend_from_slice(&tag);
            let fail = |what: String| {
                format!(
                    "{file} tcId {id} [{result}; key {key_size} iv {iv_size} tag {tag_size}; {:?}]: {what}",
                    flags(t)
                )
            };
            assert_eq!(iv.len() * 8, iv_size as usize, "{file} tcId {id}: ivSize");
            assert_eq!(
                tag.len() * 8,
                tag_size as usize,
                "{file} tcId {id}: tagSize"
            );

            let supported = alg.is_some() && iv.len() == 12 && tag.len() == 16;
            if !supported {
                refused += 1;
                // Try every algorithm we have: a 192-bit key must fit none,
                // a 128/256-bit key with a wrong IV must still be refused.
                let algs: Vec<AeadAlg> = match alg {
                    Some(a) => vec![a],
                    None => vec![AeadAlg::A128Gcm, AeadAlg::A256Gcm],
                };
                for a in algs {
                    if let Ok(out) = crypto::aead_seal(a, &key, &iv, &aad, &msg) {
                        failures.push(fail(format!(
                            "unsupported parameters but aead_seal({a:?}) returned Ok({})",
                            hex(&out)
                        )));
                    }
                    if let Ok(pt) = crypto::aead_open(a, &key, &iv, &aad, &ct_tag) {
                        failures.push(fail(format!(
                            "unsupported parameters but aead_open({a:?}) returned Ok({})",
                            hex(&pt)
                        )));
                    }
                }
                continue;
            }
            let Some(alg) = alg else { continue };
            match result {
                "valid" => {
                    supported_valid += 1;
                    match crypto::aead_seal(alg, &key, &iv, &aad, &msg) {
                        Ok(out) if out == ct_tag => {}
                        Ok(out) => failures.push(fail(format!(
                            "aead_seal gave {} expected {}",
                            hex(&out),
                            hex(&ct_tag)
                        ))),
                        Err(e) => failures.push(fail(format!("aead_seal failed: {e:?}"))),
                    }
                    match crypto::aead_open(alg, &key, &iv, &aad, &ct_tag) {
                        Ok(pt) if pt.as_slice() == msg.as_slice() => {}
                        Ok(pt) => failures.push(fail(format!(
                            "aead_open gave {} expected {}",
                            hex(&pt),
                            hex(&msg)
                        ))),
                        Err(e) => failures.push(fail(format!("aead_open failed: {e:?}"))),
                    }
                }
                "invalid" => {
                    supported_invalid += 1;
                    match crypto::aead_open(alg, &key, &iv, &aad, &ct_tag) {
                        Err(Error::DecryptFailed) => {}
                        Err(e) => failures.push(fail(format!(
                            "aead_open failed, but with {e:?} instead of DecryptFailed"
                        ))),
                        Ok(pt) => {
                            failures.push(fail(format!("invalid case opened to {}", hex(&pt))))
                        }
                    }
                }
                other => failures.push(fail(format!("unhandled result {other:?}"))),
            }
        }
    }
    println!(
        "wycheproof aes_gcm: {supported_valid} valid + {supported_invalid} invalid with 12-byte IV and 128/256-bit key, {refused} refused as unsupported"
    );
    finish("wycheproof aes_gcm", cases, AES_GCM_CASES, &failures);
}

// ---------------------------------------------------------------- HKDF

const HKDF_FILE: &str = "hkdf_sha256_test.json";
const HKDF_CASES: usize = 86;

/// `crypto::hkdf_sha256` must reproduce every valid `okm` and refuse every
/// `size > 255 * 32`. The wrapper takes the salt as a slice and treats the
/// empty salt as RFC 5869's default (HashLen zero bytes), which is what
/// Wycheproof's `EmptySalt` cases expect; for those cases the test also checks
/// that an explicit 32-byte zero salt gives the same output.
#[test]
fn wycheproof_hkdf_sha256() {
    let Some(dir) = vectors_dir("wycheproof_hkdf_sha256") else {
        return;
    };
    let file = HKDF_FILE;
    let json = load(&dir, file, HKDF_CASES);
    let mut failures = Vec::new();
    let mut cases = 0usize;
    for g in groups(&json, file) {
        for t in tests(g, file) {
            cases += 1;
            let id = tc_id(t);
            let result = field(t, "result", file);
            let ikm = hexfield(t, "ikm", file);
            let salt = hexfield(t, "salt", file);
            let info = hexfield(t, "info", file);
            let okm = hexfield(t, "okm", file);
            let size = t["size"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file} tcId {id}: no size"))
                as usize;
            let fail =
                |what: String| format!("{file} tcId {id} [{result}; {:?}]: {what}", flags(t));
            let got = crypto::hkdf_sha256(&salt, &ikm, &info, size);
            if size > 255 * 32 {
                if result != "invalid" {
                    failures.push(fail(format!("size {size} > 8160 but vector says {result}")));
                }
                if let Ok(out) = got {
                    failures.push(fail(format!(
                        "size {size} > 255*32 accepted ({} bytes)",
                        out.len()
                    )));
                }
                continue;
            }
            match result {
                "valid" => match got {
                    Ok(out) if out.as_slice() == okm.as_slice() => {}
                    Ok(out) => {
                        failures.push(fail(format!("okm {} expected {}", hex(&out), hex(&okm))))
                    }
                    Err(e) => failures.push(fail(format!("hkdf_sha256 failed: {e:?}"))),
                },
                "invalid" => {
                    if got.is_ok() {
                        failures.push(fail("invalid case accepted".to_owned()));
                    }
                }
                other => failures.push(fail(format!("unhandled result {other:?}"))),
            }
            if salt.is_empty() {
                let zero = crypto::hkdf_sha256(&[0u8; 32], &ikm, &info, size);
                let empty = crypto::hkdf_sha256(&[], &ikm, &info, size);
                match (empty, zero) {
                    (Ok(a), Ok(b)) if a == b => {}
                    _ => failures.push(fail(
                        "empty salt is not equivalent to 32 zero bytes (RFC 5869 default)"
                            .to_owned(),
                    )),
                }
            }
        }
    }
    finish("wycheproof hkdf_sha256", cases, HKDF_CASES, &failures);
}

// ---------------------------------------------------------------- X25519

const X25519_FILE: &str = "x25519_test.json";
const X25519_CASES: usize = 518;

/// Policy pinned here (see the vectors README):
///
/// * A case whose expected `shared` is all zero (Wycheproof flags
///   `ZeroSharedSecret`, always with `LowOrderPublic`) must be refused with
///   `Error::NonContributoryKeyAgreement`, whatever its `result` says
///   ("acceptable"): RFC 7748 §6.1 allows the check and COSE ECDH-ES/SS must
///   not derive keys from a secret an attacker fixes.
/// * Every other case must give exactly `shared`, including the
///   "acceptable" ones: `Twist` (public key on the twist: RFC 7748 says to
///   accept any u-coordinate, the result is just another 32-byte value),
///   `NonCanonicalPublic` (u >= p, reduced mod p as RFC 7748 §5 requires) and
///   `SmallPublicKey`/`SpecialPublicKey`/`EdgeCase*` with non-zero results.
///   Refusing them would gain nothing (the peer controls its public key
///   anyway) and would break interoperability with RFC 7748 implementations.
/// * An "invalid" case (none exist in the current file) must be refused.
#[test]
fn wycheproof_x25519() {
    let Some(dir) = vectors_dir("wycheproof_x25519") else {
        return;
    };
    let file = X25519_FILE;
    let json = load(&dir, file, X25519_CASES);
    let mut failures = Vec::new();
    let mut cases = 0usize;
    let (mut refused_zero, mut computed) = (0usize, 0usize);
    for g in groups(&json, file) {
        assert_eq!(g["curve"].as_str(), Some("curve25519"), "{file}: curve");
        for t in tests(g, file) {
            cases += 1;
            let id = tc_id(t);
            let result = field(t, "result", file);
            let fl = flags(t);
            let fail = |what: String| format!("{file} tcId {id} [{result}; {fl:?}]: {what}");
            let public: [u8; 32] = hexfield(t, "public", file)
                .try_into()
                .unwrap_or_else(|_| panic!("{file} tcId {id}: public is not 32 bytes"));
            let private: [u8; 32] = hexfield(t, "private", file)
                .try_into()
                .unwrap_or_else(|_| panic!("{file} tcId {id}: private is not 32 bytes"));
            let shared = hexfield(t, "shared", file);
            let all_zero = shared.iter().all(|b| *b == 0);
            if fl.iter().any(|f| f == "ZeroSharedSecret") != all_zero {
                failures.push(fail(
                    "ZeroSharedSecret flag and all-zero `shared` disagree (vector file?)"
                        .to_owned(),
                ));
            }
            let got = crypto::x25519(&private, &public);
            if all_zero || result == "invalid" {
                refused_zero += 1;
                match got {
                    Err(Error::NonContributoryKeyAgreement) if all_zero => {}
                    Err(_) if !all_zero => {}
                    Err(e) => failures.push(fail(format!(
                        "refused, but with {e:?} instead of NonContributoryKeyAgreement"
                    ))),
                    Ok(s) => failures.push(fail(format!(
                        "must be refused, x25519 returned {}",
                        hex(s.as_slice())
                    ))),
                }
                continue;
            }
            computed += 1;
            match got {
                Ok(s) if s.as_slice() == shared.as_slice() => {}
                Ok(s) => failures.push(fail(format!(
                    "shared {} expected {}",
                    hex(s.as_slice()),
                    hex(&shared)
                ))),
                Err(e) => failures.push(fail(format!("x25519 failed: {e:?}"))),
            }
        }
    }
    println!(
        "wycheproof x25519: {computed} computed, {refused_zero} refused (all-zero shared secret)"
    );
    finish("wycheproof x25519", cases, X25519_CASES, &failures);
}

// ---------------------------------------------------------------- Ed25519

const ED25519_FILE: &str = "ed25519_test.json";
const ED25519_CASES: usize = 151;
const ED25519_LEGACY_FILE: &str = "eddsa_test_legacy_v0.json";
const ED25519_LEGACY_CASES: usize = 145;

/// Outcome of one verification path.
fn verdict(r: &Result<(), String>) -> &'static str {
    if r.is_ok() { "accept" } else { "reject" }
}

/// Runs one Wycheproof EdDSA file. A case is accepted only if
/// `ed25519_public` parses the key and `ed25519_verify_strict` accepts; a
/// failure in either counts as rejection. `ed25519_verify_batch` (batch of 1,
/// signature parsed by `ed25519_signature`) must agree with that verdict.
/// Valid cases must be accepted, invalid ones rejected.
fn run_eddsa_file(dir: &Path, file: &str, expected: usize, key_of: fn(&Value) -> &Value) {
    let json = load(dir, file, expected);
    let mut failures = Vec::new();
    let mut cases = 0usize;
    let (mut valid, mut invalid) = (0usize, 0usize);
    for g in groups(&json, file) {
        let pk = hexfield(key_of(g), "pk", file);
        let key = crypto::ed25519_public(&pk);
        for t in tests(g, file) {
            cases += 1;
            let id = tc_id(t);
            let result = field(t, "result", file);
            let comment = t["comment"].as_str().unwrap_or("");
            let fail = |what: String| {
                format!(
                    "{file} tcId {id} [{result}; {:?}; {comment}]: {what}",
                    flags(t)
                )
            };
            let msg = hexfield(t, "msg", file);
            let sig = hexfield(t, "sig", file);
            let strict: Result<(), String> = match &key {
                Err(e) => Err(format!("public key refused: {e:?}")),
                Ok(k) => crypto::ed25519_verify_strict(k, &msg, &sig).map_err(|e| format!("{e:?}")),
            };
            let batch: Result<(), String> = match (&key, crypto::ed25519_signature(&sig)) {
                (Err(e), _) => Err(format!("public key refused: {e:?}")),
                (_, Err(e)) => Err(format!("signature refused: {e:?}")),
                (Ok(k), Ok(s)) => {
                    let out = crypto::ed25519_verify_batch(&[(k, msg.as_slice(), &s)]);
                    assert_eq!(out.len(), 1, "{file} tcId {id}: batch result count");
                    out.into_iter()
                        .next()
                        .unwrap_or(Err(Error::BadSignature))
                        .map_err(|e| format!("{e:?}"))
                }
            };
            match result {
                "valid" => {
                    valid += 1;
                    if let Err(e) = &strict {
                        failures.push(fail(format!("valid signature rejected: {e}")));
                    }
                }
                "invalid" => {
                    invalid += 1;
                    if strict.is_ok() {
                        failures.push(fail("invalid signature accepted".to_owned()));
                    }
                }
                other => failures.push(fail(format!("unhandled result {other:?}"))),
            }
            if strict.is_ok() != batch.is_ok() {
                failures.push(fail(format!(
                    "verify_strict would {} but verify_batch would {} ({:?} / {:?})",
                    verdict(&strict),
                    verdict(&batch),
                    strict,
                    batch
                )));
            }
        }
    }
    let label = format!("wycheproof {}", file.trim_end_matches(".json"));
    println!("{label}: {valid} valid, {invalid} invalid");
    finish(&label, cases, expected, &failures);
}

#[test]
fn wycheproof_ed25519() {
    let Some(dir) = vectors_dir("wycheproof_ed25519") else {
        return;
    };
    run_eddsa_file(&dir, ED25519_FILE, ED25519_CASES, |g| &g["publicKey"]);
}

#[test]
fn wycheproof_eddsa_legacy_v0() {
    let Some(dir) = vectors_dir("wycheproof_eddsa_legacy_v0") else {
        return;
    };
    run_eddsa_file(
        &dir,
        ED25519_LEGACY_FILE,
        ED25519_LEGACY_CASES,
        |g| &g["key"],
    );
}

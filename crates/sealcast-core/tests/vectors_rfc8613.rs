#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! RFC 8613 (OSCORE) Appendix C against `sealcast_core::kdf`.
//!
//! `rfc8613.txt` in the vectors folder (`SEALCAST_VECTORS`) starts with
//! structured `[C.x ...]` blocks of `key = value` lines, followed by the
//! verbatim appendix. The test reads the blocks and checks:
//!
//! * C.1–C.3 (six client/server contexts): `kdf::info` reproduces the printed
//!   info bytes, `kdf::derive` (alg_aead 10 = AES-CCM-16-64-128, key 16 bytes,
//!   IV 13 bytes) reproduces sender key, recipient key and common IV, and
//!   `kdf::nonce` the sender/recipient nonces for Partial IV 0.
//! * C.4–C.8 (protected messages): `kdf::nonce` reproduces the AEAD nonce
//!   (C.7 has no Partial IV and reuses the request's nonce, so the request's
//!   kid and Partial IV are used), and the keys/IV used there are ones the
//!   derivation above produced.
//! * Every expected value used appears in the verbatim appendix as well, so a
//!   transcription error in the structured blocks cannot go unnoticed.

use std::collections::BTreeMap;
use std::path::Path;

use sealcast_core::kdf::{self, KdfType};
use sealcast_testkit::{read_vector, unhex, vectors_dir};

const FILE: &str = "rfc8613.txt";
/// AES-CCM-16-64-128, the OSCORE default used by every Appendix C vector.
const ALG_AEAD: i64 = 10;
const KEY_LEN: usize = 16;
const IV_LEN: usize = 13;
const DERIVATION_SECTIONS: usize = 6;
const MESSAGE_SECTIONS: usize = 5;

/// One `[C.x ...]` block: title and `key -> value`, where `None` is a value
/// written as `(absent ...)` / `(empty ...)` comment only.
struct Section {
    title: String,
    fields: BTreeMap<String, Option<String>>,
}

impl Section {
    /// The C.x number, e.g. `C.1.1` or `C.7`.
    fn id(&self) -> &str {
        self.title.split_whitespace().next().unwrap_or("")
    }

    /// Hex bytes of `key`; a missing or `(absent ...)` field is `None`.
    fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.fields.get(key).cloned().flatten().map(|v| unhex(&v))
    }

    /// Hex bytes of a field that must be present.
    fn need(&self, key: &str) -> Vec<u8> {
        self.bytes(key)
            .unwrap_or_else(|| panic!("{FILE} [{}]: missing field {key}", self.title))
    }
}

fn parse(text: &str) -> (Vec<Section>, String) {
    let mut sections: Vec<Section> = Vec::new();
    let mut lines = text.lines();
    let mut verbatim = String::new();
    for line in lines.by_ref() {
        if line.starts_with("# VERBATIM") {
            break;
        }
        let line = line.trim_end();
        if let Some(title) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push(Section {
                title: title.to_owned(),
                fields: BTreeMap::new(),
            });
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let Some(section) = sections.last_mut() else {
            panic!("{FILE}: key = value line before any [section]: {line:?}");
        };
        let v = v.trim();
        // `10 (AES-CCM-16-64-128)` -> `10`; `4622...  (request nonce re-used...)` -> hex;
        // `(absent)` -> None; empty -> the empty byte string.
        let value = if v.starts_with('(') {
            None
        } else {
            Some(v.split_whitespace().next().unwrap_or("").to_owned())
        };
        section.fields.insert(k.trim().to_owned(), value);
    }
    for line in lines {
        verbatim.push_str(line);
        verbatim.push('\n');
    }
    (sections, verbatim)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Collects every mismatch instead of stopping at the first.
struct Checker {
    verbatim: String,
    failures: Vec<String>,
    checks: usize,
}

impl Checker {
    fn check(&mut self, section: &Section, what: &str, got: &[u8], want: &[u8]) {
        self.checks += 1;
        if got != want {
            self.failures.push(format!(
                "{FILE} [{}] {what}: got {} expected {}",
                section.title,
                hex(got),
                hex(want)
            ));
        }
        // The expected value must also be printed in the RFC text itself.
        if !want.is_empty() && !self.verbatim.contains(&format!("0x{}(", hex(want))) {
            self.failures.push(format!(
                "{FILE} [{}] {what}: expected value {} not found in the verbatim appendix",
                section.title,
                hex(want)
            ));
        }
    }

    fn fail(&mut self, section: &Section, what: String) {
        self.failures
            .push(format!("{FILE} [{}] {what}", section.title));
    }
}

/// Values derived in C.1–C.3, for cross-checking C.4–C.8.
struct Derived {
    id: String,
    sender_id: Vec<u8>,
    sender_key: Vec<u8>,
    common_iv: Vec<u8>,
}

#[test]
fn rfc8613_appendix_c() {
    let Some(dir) = vectors_dir("rfc8613_appendix_c") else {
        return;
    };
    let text = read_vector(&dir, FILE);
    let (sections, verbatim) = parse(&text);
    // The verbatim appendix wraps long hex values; compare without whitespace.
    let verbatim: String = verbatim.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        verbatim.contains("AppendixC.TestVectors"),
        "{FILE}: verbatim appendix not found"
    );

    let mut c = Checker {
        verbatim,
        failures: Vec::new(),
        checks: 0,
    };

    let mut derived: Vec<Derived> = Vec::new();
    let derivations: Vec<&Section> = sections
        .iter()
        .filter(|s| s.title.contains("key derivation"))
        .collect();
    for s in &derivations {
        let master_secret = s.need("master_secret");
        // C.2: "(absent -> default empty)" or no line at all: the empty salt.
        let master_salt = s.bytes("master_salt").unwrap_or_default();
        let id_context = s.bytes("id_context");
        let ctx = id_context.as_deref();
        let sender_id = s.need("sender_id");
        let recipient_id = s.need("recipient_id");

        let info_s = kdf::info(&sender_id, ctx, ALG_AEAD, KdfType::Key, KEY_LEN);
        let info_r = kdf::info(&recipient_id, ctx, ALG_AEAD, KdfType::Key, KEY_LEN);
        let info_iv = kdf::info(&[], ctx, ALG_AEAD, KdfType::Iv, IV_LEN);
        c.check(s, "info (sender key)", &info_s, &s.need("info_sender_key"));
        c.check(
            s,
            "info (recipient key)",
            &info_r,
            &s.need("info_recipient_key"),
        );
        c.check(s, "info (common IV)", &info_iv, &s.need("info_common_iv"));

        let derive = |id: &[u8], kind: KdfType, len: usize| -> Vec<u8> {
            match kdf::derive(&master_secret, &master_salt, id, ctx, ALG_AEAD, kind, len) {
                Ok(v) => v.to_vec(),
                Err(e) => panic!("{FILE} [{}]: kdf::derive failed: {e:?}", s.title),
            }
        };
        let sender_key = derive(&sender_id, KdfType::Key, KEY_LEN);
        let recipient_key = derive(&recipient_id, KdfType::Key, KEY_LEN);
        let common_iv = derive(&[], KdfType::Iv, IV_LEN);
        c.check(s, "sender key", &sender_key, &s.need("sender_key"));
        c.check(s, "recipient key", &recipient_key, &s.need("recipient_key"));
        c.check(s, "common IV", &common_iv, &s.need("common_iv"));

        // "a Partial IV equal to 0": OSCORE encodes 0 as the single byte 0x00.
        for (what, id, field) in [
            ("sender nonce (PIV 0)", &sender_id, "sender_nonce_piv0"),
            (
                "recipient nonce (PIV 0)",
                &recipient_id,
                "recipient_nonce_piv0",
            ),
        ] {
            match kdf::nonce(&common_iv, id, &[0]) {
                Ok(n) => c.check(s, what, &n, &s.need(field)),
                Err(e) => c.fail(s, format!("{what}: {e:?}")),
            }
        }
        derived.push(Derived {
            id: s.id().to_owned(),
            sender_id,
            sender_key,
            common_iv,
        });
    }

    let messages: Vec<&Section> = sections
        .iter()
        .filter(|s| s.title.contains("OSCORE request") || s.title.contains("OSCORE response"))
        .collect();
    for s in &messages {
        let common_iv = s.need("common_iv");
        let sender_id = s.need("sender_id");
        let sender_key = s.need("sender_key");
        // The key and IV of this message must be ones C.1–C.3 derived for
        // this sender.
        let from = derived
            .iter()
            .find(|d| d.sender_id == sender_id && d.sender_key == sender_key);
        match from {
            Some(d) => {
                c.check(
                    s,
                    &format!("common IV (from {})", d.id),
                    &d.common_iv,
                    &common_iv,
                );
                c.check(
                    s,
                    &format!("sender key (from {})", d.id),
                    &d.sender_key,
                    &sender_key,
                );
            }
            None => c.fail(
                s,
                format!(
                    "sender key {} of sender id {:?} was not derived in C.1-C.3",
                    hex(&sender_key),
                    hex(&sender_id)
                ),
            ),
        }
        c.check(s, "encryption key", &sender_key, &s.need("encryption_key"));

        // The nonce: own sender id and Partial IV; a response without a
        // Partial IV reuses the request's nonce (request kid and Partial IV).
        let (id, piv) = match s.bytes("partial_iv") {
            Some(piv) => (sender_id.clone(), piv),
            None => {
                let req_id = s
                    .title
                    .split("reply to ")
                    .nth(1)
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| {
                        panic!("{FILE} [{}]: no Partial IV and no request", s.title)
                    });
                let req = messages
                    .iter()
                    .find(|r| r.id() == req_id)
                    .unwrap_or_else(|| panic!("{FILE} [{}]: request {req_id} not found", s.title));
                c.check(s, "request common IV", &req.need("common_iv"), &common_iv);
                (req.need("sender_id"), req.need("partial_iv"))
            }
        };
        match kdf::nonce(&common_iv, &id, &piv) {
            Ok(n) => c.check(s, "nonce", &n, &s.need("nonce")),
            Err(e) => c.fail(s, format!("nonce: {e:?}")),
        }
    }

    println!(
        "rfc8613 appendix C: {} derivation + {} message sections, {} checks, {} failures",
        derivations.len(),
        messages.len(),
        c.checks,
        c.failures.len()
    );
    assert_eq!(
        derivations.len(),
        DERIVATION_SECTIONS,
        "{FILE}: expected C.1.1-C.3.2 (truncated or changed file?)"
    );
    assert_eq!(
        messages.len(),
        MESSAGE_SECTIONS,
        "{FILE}: expected C.4-C.8 (truncated or changed file?)"
    );
    assert!(
        c.failures.is_empty(),
        "rfc8613 appendix C: {} failures:\n  {}",
        c.failures.len(),
        c.failures.join("\n  ")
    );
}

/// Pins how the structured blocks are read: `(absent ...)` is no value (not
/// a hex string), an empty value is the empty byte string.
#[test]
fn rfc8613_parse_absent_values() {
    let Some(dir) = vectors_dir("rfc8613_parse_absent_values") else {
        return;
    };
    let text = read_vector(Path::new(&dir), FILE);
    let (sections, _) = parse(&text);
    let c11 = sections
        .iter()
        .find(|s| s.id() == "C.1.1")
        .unwrap_or_else(|| panic!("{FILE}: no C.1.1"));
    assert_eq!(c11.bytes("id_context"), None, "C.1.1 has no ID Context");
    assert_eq!(
        c11.bytes("sender_id"),
        Some(Vec::new()),
        "C.1.1 sender id is empty"
    );
    let c21 = sections
        .iter()
        .find(|s| s.id() == "C.2.1")
        .unwrap_or_else(|| panic!("{FILE}: no C.2.1"));
    assert_eq!(c21.bytes("master_salt"), None, "C.2.1 has no Master Salt");
    let c31 = sections
        .iter()
        .find(|s| s.id() == "C.3.1")
        .unwrap_or_else(|| panic!("{FILE}: no C.3.1"));
    assert_eq!(c31.bytes("id_context"), Some(unhex("37cbf3210017a2d3")));
}

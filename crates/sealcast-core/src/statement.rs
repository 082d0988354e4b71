//! Signed statements: a COSE_Sign1 by one entity over a CBOR payload, with a
//! domain-separation label as external AAD.
//!
//! ```text
//! 18([ h'A10127' / {1: -8} /, { 4: signer }, payload,
//!      Ed25519(["Signature1", h'A10127', label_bstr, payload]) ])
//! ```
//!
//! The group protocol uses them for acks, pull requests, join notices and
//! tree rekeys; the label (e.g. `"sealcast ack v1"`) keeps one kind of
//! statement from being accepted as another. Everything a statement binds
//! (group, epoch …) lives in its signed payload.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::cose::{self, ALG_EDDSA, HDR_ALG, HDR_KID, HVal};
use crate::crypto::ed25519_verify_strict;
use crate::error::{Error, Result};
use crate::ids::EntityId;

/// Signs `payload` as `signer` under the domain-separation `label`.
pub fn sign_statement(signer: &EntityId, key: &SigningKey, label: &str, payload: &[u8]) -> Vec<u8> {
    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_EDDSA))]);
    let signature = key
        .sign(&cose::sig1_structure(&protected, label.as_bytes(), payload))
        .to_bytes();
    let mut out = Vec::with_capacity(payload.len() + 96 + signer.as_bytes().len());
    cose::write_four(
        &mut out,
        cose::TAG_SIGN1,
        &protected,
        &[(HDR_KID, HVal::Bytes(signer.as_bytes()))],
        payload,
        &signature,
    );
    out
}

/// A statement whose signature has not been checked yet: who claims to have
/// signed it, and the bytes needed to check.
#[derive(Debug)]
pub struct UnverifiedStatement {
    signer: EntityId,
    sign1: coset::CoseSign1,
}

impl UnverifiedStatement {
    /// Parses a statement (at most `limit` bytes).
    pub fn parse(bytes: &[u8], limit: usize) -> Result<Self> {
        let sign1 = cose::parse_sign1(bytes, limit)?;
        cose::require_alg(&sign1.protected.header, &sign1.unprotected, ALG_EDDSA)?;
        let signer = EntityId::from_bytes(&sign1.unprotected.key_id)?;
        if sign1.payload.is_none() {
            return Err(Error::Malformed("detached payload"));
        }
        Ok(Self { signer, sign1 })
    }

    /// The claimed signer (unverified).
    pub fn signer(&self) -> &EntityId {
        &self.signer
    }

    /// The payload as received (unverified: use it only to decide which
    /// label to verify under, never as input to act on).
    pub fn payload(&self) -> &[u8] {
        self.sign1.payload.as_deref().unwrap_or_default()
    }

    /// Checks the signature with the signer's key and returns the payload.
    pub fn verify(self, key: &VerifyingKey, label: &str) -> Result<Vec<u8>> {
        let payload = self
            .sign1
            .payload
            .ok_or(Error::Malformed("detached payload"))?;
        let tbs = cose::sig1_structure(
            cose::protected_original(&self.sign1.protected),
            label.as_bytes(),
            &payload,
        );
        ed25519_verify_strict(key, &tbs, &self.sign1.signature)?;
        Ok(payload)
    }
}

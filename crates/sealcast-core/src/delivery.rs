//! Key delivery: group key material from the manager to one member, end to
//! end through agents that cannot open it.
//!
//! ```text
//! context = [ "sealcast key delivery v1", recipient: tstr, group_id: bstr, epoch: uint ]
//! inner   = COSE_Encrypt (tag 96), one ECDH-ES + HKDF-256 (X25519) recipient
//!           with kid = recipient entity id, external_aad = context,
//!           plaintext = GroupKeyMaterial CBOR   (see crate::single)
//! outer   = COSE_Sign1 (tag 18) { 1: -8 } / { 4: manager id, 10: group_id, -70001: epoch }
//!           payload = inner, external_aad = context
//! ```
//!
//! The member checks the manager's signature (with the manager credential it
//! was provisioned with) before it decrypts, then checks that the material
//! inside names the same group and epoch as the signed context.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::cbor::{write_array, write_bstr, write_tstr, write_uint};
use crate::cose::{self, ALG_EDDSA, HDR_ALG, HDR_EPOCH, HDR_KID, HDR_KID_CONTEXT, HVal};
use crate::crypto::{AeadAlg, ed25519_verify_strict};
use crate::error::{Error, Result};
use crate::groupkey::{GroupKeyMaterial, MAX_MATERIAL_LEN};
use crate::ids::{EntityId, Epoch, GroupId};
use crate::single;

/// Largest key delivery accepted.
pub const MAX_DELIVERY_LEN: usize = MAX_MATERIAL_LEN + 4096;

/// What a delivery carries; each kind has its own context label, so one
/// kind can never be passed off as another.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Group key material (`"sealcast key delivery v1"`).
    GroupKey,
    /// A member's key-tree path keys (`"sealcast tree path v1"`); the
    /// plaintext format belongs to the group crate.
    TreePath,
}

impl DeliveryKind {
    fn label(self) -> &'static str {
        match self {
            DeliveryKind::GroupKey => "sealcast key delivery v1",
            DeliveryKind::TreePath => "sealcast tree path v1",
        }
    }
}

/// The context bound into both layers of a key delivery.
pub fn delivery_context(recipient: &EntityId, group: &GroupId, epoch: Epoch) -> Vec<u8> {
    kind_context(DeliveryKind::GroupKey, recipient, group, epoch)
}

/// The context bound into both layers of a delivery of `kind`.
pub fn kind_context(
    kind: DeliveryKind,
    recipient: &EntityId,
    group: &GroupId,
    epoch: Epoch,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + group.as_bytes().len());
    write_array(&mut out, 4);
    write_tstr(&mut out, kind.label());
    write_tstr(&mut out, recipient.as_str());
    write_bstr(&mut out, group.as_bytes());
    write_uint(&mut out, u64::from(epoch.get()));
    out
}

/// Seals `material` for `recipient` (its X25519 key-agreement key), signed by
/// the manager.
pub fn seal_key_delivery<R: CryptoRng + ?Sized>(
    manager: &EntityId,
    manager_key: &SigningKey,
    recipient: &EntityId,
    recipient_key: &X25519Public,
    material: &GroupKeyMaterial,
    rng: &mut R,
) -> Result<Vec<u8>> {
    let plaintext = material.to_cbor()?;
    seal_delivery(
        DeliveryKind::GroupKey,
        manager,
        manager_key,
        recipient,
        recipient_key,
        material.group(),
        material.epoch(),
        material.alg(),
        &plaintext,
        rng,
    )
}

/// Seals any secret `plaintext` of `kind` for `recipient`, signed by the
/// manager, with group and epoch bound in. [`seal_key_delivery`] is this
/// with the group key material as plaintext.
#[allow(clippy::too_many_arguments)]
pub fn seal_delivery<R: CryptoRng + ?Sized>(
    kind: DeliveryKind,
    manager: &EntityId,
    manager_key: &SigningKey,
    recipient: &EntityId,
    recipient_key: &X25519Public,
    group: &GroupId,
    epoch: Epoch,
    alg: AeadAlg,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let context = kind_context(kind, recipient, group, epoch);
    let inner = single::encrypt_to(
        alg,
        recipient.as_bytes(),
        recipient_key,
        plaintext,
        &context,
        rng,
    )?;
    let protected = cose::protected_bytes(&[(HDR_ALG, HVal::Int(ALG_EDDSA))]);
    let signature = manager_key
        .sign(&cose::sig1_structure(&protected, &context, &inner))
        .to_bytes();
    let mut out = Vec::with_capacity(inner.len() + 128);
    cose::write_four(
        &mut out,
        cose::TAG_SIGN1,
        &protected,
        &[
            (HDR_KID, HVal::Bytes(manager.as_bytes())),
            (HDR_KID_CONTEXT, HVal::Bytes(group.as_bytes())),
            (HDR_EPOCH, HVal::Uint(u64::from(epoch.get()))),
        ],
        &inner,
        &signature,
    );
    Ok(out)
}

/// What anyone (an agent, for routing) can read of a key delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryHeader {
    /// The signing manager.
    pub manager: EntityId,
    /// The group.
    pub group: GroupId,
    /// The epoch delivered.
    pub epoch: Epoch,
    /// The recipient named in the COSE_Encrypt recipient.
    pub recipient: EntityId,
}

struct Parsed {
    header: DeliveryHeader,
    sign1: coset::CoseSign1,
    inner: coset::CoseEncrypt,
}

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let sign1 = cose::parse_sign1(bytes, MAX_DELIVERY_LEN)?;
    cose::require_alg(&sign1.protected.header, &sign1.unprotected, ALG_EDDSA)?;
    let manager = EntityId::from_bytes(&sign1.unprotected.key_id)?;
    let group = GroupId::new(cose::rest_bytes(
        &sign1.unprotected,
        HDR_KID_CONTEXT,
        "kid context",
    )?)?;
    let epoch = Epoch::new(
        u32::try_from(cose::rest_uint(&sign1.unprotected, HDR_EPOCH, "epoch")?)
            .map_err(|_| Error::Malformed("epoch"))?,
    );
    let payload = sign1
        .payload
        .as_deref()
        .ok_or(Error::Malformed("detached payload"))?;
    let inner = cose::parse_encrypt(payload, MAX_DELIVERY_LEN)?;
    let [recipient] = inner.recipients.as_slice() else {
        return Err(Error::Malformed(
            "key delivery must have exactly one recipient",
        ));
    };
    let recipient = EntityId::from_bytes(&recipient.unprotected.key_id)?;
    Ok(Parsed {
        header: DeliveryHeader {
            manager,
            group,
            epoch,
            recipient,
        },
        sign1,
        inner,
    })
}

/// Reads the routing header of a key delivery without any key.
pub fn peek_key_delivery(bytes: &[u8]) -> Result<DeliveryHeader> {
    parse(bytes).map(|p| p.header)
}

/// Checks the manager's signature and decrypts a key delivery addressed to
/// `own_id`. Returns the material; the caller decides whether its epoch is
/// newer than what it holds.
pub fn open_key_delivery(
    own_id: &EntityId,
    own_secret: &StaticSecret,
    manager: &EntityId,
    manager_key: &VerifyingKey,
    bytes: &[u8],
) -> Result<GroupKeyMaterial> {
    let (header, plaintext) = open_delivery(
        DeliveryKind::GroupKey,
        own_id,
        own_secret,
        manager,
        manager_key,
        bytes,
    )?;
    let material = GroupKeyMaterial::from_cbor(&plaintext)?;
    if *material.group() != header.group || material.epoch() != header.epoch {
        return Err(Error::ContextMismatch("group or epoch inside the delivery"));
    }
    Ok(material)
}

/// Checks the manager's signature and decrypts a delivery of `kind`
/// addressed to `own_id`, returning its routing header and plaintext.
pub fn open_delivery(
    kind: DeliveryKind,
    own_id: &EntityId,
    own_secret: &StaticSecret,
    manager: &EntityId,
    manager_key: &VerifyingKey,
    bytes: &[u8],
) -> Result<(DeliveryHeader, Zeroizing<Vec<u8>>)> {
    let p = parse(bytes)?;
    if p.header.manager != *manager {
        return Err(Error::UnknownSender);
    }
    if p.header.recipient != *own_id {
        return Err(Error::ContextMismatch("recipient"));
    }
    let context = kind_context(kind, own_id, &p.header.group, p.header.epoch);
    let payload = p
        .sign1
        .payload
        .as_deref()
        .ok_or(Error::Malformed("detached payload"))?;
    let tbs = cose::sig1_structure(
        cose::protected_original(&p.sign1.protected),
        &context,
        payload,
    );
    ed25519_verify_strict(manager_key, &tbs, &p.sign1.signature)?;
    let plaintext = single::decrypt_parsed(own_id.as_bytes(), own_secret, &p.inner, &context)?;
    Ok((p.header, plaintext))
}

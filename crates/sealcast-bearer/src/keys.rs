//! The key hierarchy: MUK → MSK → MTK.
//!
//! - **MUK** (MBMS User Key), one per (bearer service, device), derived from
//!   the two parties' enrolment credentials by static-static X25519 and
//!   HKDF-SHA256 with a label of its own (see [`Muk`]). Neither side sends
//!   anything to establish it, and only the two of them can compute it, so
//!   an MSK delivery under the MUK is both confidential and authenticated.
//! - **MSK** (MBMS Service Key): random, 32 bytes, with an id and a lifetime;
//!   delivered point to point under each entitled device's MUK.
//! - **MTK** (MBMS Traffic Key): random, 32 bytes, short-lived; carried in
//!   band in key frames protected under the MSK.
//!
//! All three are AES-256-GCM keys.

use core::fmt;

use rand_core::CryptoRng;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::crypto::{AeadAlg, AeadKey, hkdf_sha256, x25519};
use sealcast_core::ids::EntityId;
use zeroize::Zeroizing;

use crate::error::Result;

/// The AEAD of every bearer key.
pub(crate) const ALG: AeadAlg = AeadAlg::A256Gcm;
/// Length of every bearer key.
pub(crate) const KEY_LEN: usize = 32;

/// The HKDF `info` label of the MUK. Distinct from every other derivation
/// from the same static-static X25519 secret (the report pairwise key uses
/// the RFC 8613 CBOR `info`), so the MUK is independent of them.
const MUK_LABEL: &[u8] = b"sealcast bearer MUK v1";

/// A device's MBMS User Key for one bearer service.
///
/// ```text
/// MUK = HKDF-SHA256(salt = h'', IKM = X25519(device, service),
///                   info = "sealcast bearer MUK v1" ‖ 0x00 ‖
///                          len(service_id) ‖ service_id ‖ len(device_id) ‖ device_id, L = 32)
/// ```
///
/// The service computes it with [`Muk::for_service`], the device with
/// [`Muk::for_device`]; both get the same key. It has no `Debug` that shows
/// the key, and the expanded cipher zeroizes on drop. Deliberately not
/// `Clone`.
pub struct Muk {
    service: EntityId,
    device: EntityId,
    key: AeadKey,
}

impl fmt::Debug for Muk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Muk")
            .field("service", &self.service)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Muk {
    /// The bearer service's side: its own credential and the device's
    /// enrolled public credential.
    ///
    /// # Errors
    ///
    /// [`sealcast_core::Error::NonContributoryKeyAgreement`] (as
    /// [`crate::Error::Core`]) for a low-order device key.
    pub fn for_service(service: &EntityCredential, device: &PublicCredential) -> Result<Self> {
        let secret = Zeroizing::new(service.agreement_secret().to_bytes());
        let shared = x25519(&secret, device.agreement_key().as_bytes())?;
        Self::derive(service.id().clone(), device.id().clone(), &shared)
    }

    /// The device's side: its own credential and the bearer service's public
    /// credential it was provisioned with.
    ///
    /// # Errors
    ///
    /// As [`Muk::for_service`].
    pub fn for_device(device: &EntityCredential, service: &PublicCredential) -> Result<Self> {
        let secret = Zeroizing::new(device.agreement_secret().to_bytes());
        let shared = x25519(&secret, service.agreement_key().as_bytes())?;
        Self::derive(service.id().clone(), device.id().clone(), &shared)
    }

    fn derive(service: EntityId, device: EntityId, shared: &[u8; 32]) -> Result<Self> {
        let mut info = Vec::with_capacity(MUK_LABEL.len() + 3 + 2 * EntityId::MAX_LEN);
        info.extend_from_slice(MUK_LABEL);
        info.push(0);
        push_short(&mut info, service.as_bytes());
        push_short(&mut info, device.as_bytes());
        let okm = hkdf_sha256(&[], shared, &info, KEY_LEN)?;
        let key = AeadKey::new(ALG, &okm)?;
        Ok(Self {
            service,
            device,
            key,
        })
    }

    /// The bearer service this MUK belongs to.
    pub fn service(&self) -> &EntityId {
        &self.service
    }

    /// The device this MUK belongs to.
    pub fn device(&self) -> &EntityId {
        &self.device
    }

    pub(crate) fn aead(&self) -> &AeadKey {
        &self.key
    }

    /// A second handle on the same key, for the fuzz fixture only.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            service: self.service.clone(),
            device: self.device.clone(),
            key: self.key.clone(),
        }
    }
}

/// Appends `bytes` with a one-byte length (ids are at most 64 bytes).
pub(crate) fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // EntityId and Topic limit their lengths to 64 and 255 bytes.
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

/// A fresh random MSK or MTK: the raw bytes (for delivery / key frames,
/// wiped on drop) and the expanded cipher.
pub(crate) struct FreshKey {
    pub(crate) raw: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) aead: AeadKey,
}

impl FreshKey {
    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<Self> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(raw.as_mut());
        let aead = AeadKey::new(ALG, raw.as_ref())?;
        Ok(Self { raw, aead })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use sealcast_core::testrng::TestRng;

    #[test]
    fn both_sides_derive_the_same_muk() {
        let mut rng = TestRng::new(1);
        let service = EntityCredential::generate(EntityId::new("bmsc").unwrap(), &mut rng);
        let device = EntityCredential::generate(EntityId::new("dev-1").unwrap(), &mut rng);
        let other = EntityCredential::generate(EntityId::new("dev-2").unwrap(), &mut rng);
        let a = Muk::for_service(&service, &device.public()).unwrap();
        let b = Muk::for_device(&device, &service.public()).unwrap();
        let c = Muk::for_service(&service, &other.public()).unwrap();
        let nonce = [0u8; 12];
        let sealed = a.aead().seal(&nonce, b"aad", b"msk").unwrap();
        assert_eq!(
            b.aead().open(&nonce, b"aad", &sealed).unwrap().as_slice(),
            b"msk"
        );
        assert!(c.aead().open(&nonce, b"aad", &sealed).is_err());
        assert!(!format!("{a:?}").contains("key"));
    }
}

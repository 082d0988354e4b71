//! The key-encryption key (KEK) and the sealing of key material at rest.
//!
//! Sealed blob: `0x01 ‖ nonce (12, from the OS) ‖ AES-256-GCM(ciphertext ‖ tag)`.
//! AAD: `"sealcast-store v1" ‖ purpose (1 byte) ‖ len(group) (1 byte) ‖ group ‖
//! epoch (4 bytes, big-endian)`. The AAD binds a blob to its row, so a blob
//! moved to another group or epoch, or a tree-state blob moved into a
//! key-material row, fails to open instead of yielding another key.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use sealcast_core::crypto::{AeadAlg, AeadKey, NONCE_LEN, TAG_LEN};
use sealcast_core::ids::{Epoch, GroupId};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of a KEK in bytes (AES-256).
pub const KEK_LEN: usize = 32;

/// The environment variable sealcast reads the KEK from by convention.
pub const KEK_ENV: &str = "SEALCAST_KEK";

const SEAL_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"sealcast-store v1";

/// What a sealed blob holds; part of the AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `GroupKeyMaterial::to_cbor()` of one epoch.
    Material = 1,
    /// The opaque LKH tree state of a group.
    TreeState = 2,
    /// The KEK check value of a store.
    KekCheck = 3,
}

impl Purpose {
    fn what(self) -> &'static str {
        match self {
            Purpose::Material => "key material",
            Purpose::TreeState => "tree state",
            Purpose::KekCheck => "KEK check value",
        }
    }
}

/// A 32-byte key-encryption key. Zeroized on drop; `Debug` shows no byte;
/// nothing in this crate logs or prints it.
pub struct Kek {
    bytes: Zeroizing<[u8; KEK_LEN]>,
    aead: AeadKey,
}

impl core::fmt::Debug for Kek {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; KEK_LEN]) -> Result<Self> {
        let bytes = Zeroizing::new(bytes);
        let aead = AeadKey::new(AeadAlg::A256Gcm, bytes.as_ref())?;
        Ok(Self { bytes, aead })
    }

    /// A fresh random KEK from the operating system.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        os_random(bytes.as_mut())?;
        Self::from_bytes(*bytes)
    }

    /// Reads a KEK file: 64 hex digits (surrounding white space allowed) or
    /// exactly 32 raw bytes. The file must be a regular file of mode 0600 or
    /// 0400; anything readable by group or others is refused.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file =
            std::fs::File::open(path).map_err(|e| Error::io("open KEK file", path, e))?;
        // The checks use the opened file, not the path, so a swap between
        // check and read changes nothing.
        let meta = file
            .metadata()
            .map_err(|e| Error::io("inspect KEK file", path, e))?;
        if !meta.is_file() {
            return Err(Error::KekFormat {
                origin: path.display().to_string(),
                reason: "not a regular file",
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode != 0o600 && mode != 0o400 {
            return Err(Error::KekFilePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Sized for the whole bounded read, so no reallocation leaves a copy behind.
        let mut content = Zeroizing::new(Vec::with_capacity(1025));
        (&mut file)
            .take(1024)
            .read_to_end(&mut content)
            .map_err(|e| Error::io("read KEK file", path, e))?;
        let origin = || path.display().to_string();
        // 32 bytes that are all hex digits are a 128-bit key written as hex,
        // not 32 raw bytes: refuse rather than guess.
        if content.len() == KEK_LEN && content.iter().all(u8::is_ascii_hexdigit) {
            return Err(Error::KekFormat {
                origin: origin(),
                reason: "32 hex digits (16 bytes); a KEK has 32 bytes",
            });
        }
        if content.len() == KEK_LEN {
            let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
            bytes.copy_from_slice(&content);
            return Self::from_bytes(*bytes);
        }
        let text = core::str::from_utf8(&content).map_err(|_| Error::KekFormat {
            origin: origin(),
            reason: "neither 32 raw bytes nor hex text",
        })?;
        Self::from_hex_text(text.trim(), origin)
    }

    /// Reads a KEK given as 64 hex digits in the environment variable `var`
    /// (normally [`KEK_ENV`]).
    pub fn from_env(var: &str) -> Result<Self> {
        let value = Zeroizing::new(match std::env::var(var) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(Error::KekMissing {
                    var: var.to_owned(),
                });
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::KekFormat {
                    origin: format!("environment variable {var}"),
                    reason: "not hex text",
                });
            }
        });
        if value.trim().is_empty() {
            return Err(Error::KekMissing {
                var: var.to_owned(),
            });
        }
        Self::from_hex_text(value.trim(), || format!("environment variable {var}"))
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        Self::from_hex_text(text.trim(), || "hex text".to_owned())
    }

    fn from_hex_text(text: &str, origin: impl Fn() -> String) -> Result<Self> {
        if text.len() != 2 * KEK_LEN {
            return Err(Error::KekFormat {
                origin: origin(),
                reason: "not 64 hex digits",
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => bytes[i] = (h << 4) | l,
                _ => {
                    return Err(Error::KekFormat {
                        origin: origin(),
                        reason: "contains a character that is not a hex digit",
                    });
                }
            }
        }
        Self::from_bytes(*bytes)
    }

    /// The KEK as 64 lower-case hex digits, to write into a new KEK file or a
    /// secret manager. Handle the result as the secret it is.
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(2 * KEK_LEN));
        for b in self.bytes.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }

    /// The KEK in `path`, or — when the file does not exist — a fresh one
    /// written there (0600, fsynced) with create-new semantics: of two
    /// processes starting at once on a missing file, one creates it and the
    /// other loads what the first wrote, so a store is never sealed under a
    /// KEK that a rename later replaced. The flag tells whether this call
    /// created the file.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<(Self, bool)> {
        let path = path.as_ref();
        match Self::from_file(path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.map(|k| (k, false)),
        }
        let kek = Self::generate()?;
        let mut text = Zeroizing::new(kek.to_hex().as_bytes().to_vec());
        text.push(b'\n');
        if crate::statefile::write_new(path, &text, 0o600)? {
            Ok((kek, true))
        } else {
            Self::from_file(path).map(|k| (k, false))
        }
    }

    /// Writes this KEK as hex into a new file of mode 0600 (atomically; an
    /// existing file is replaced).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut text = Zeroizing::new(self.to_hex().as_bytes().to_vec());
        text.push(b'\n');
        crate::statefile::write_atomic(path.as_ref(), &text, 0o600)
    }

    pub(crate) fn seal(
        &self,
        purpose: Purpose,
        group: &GroupId,
        epoch: Epoch,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        os_random(&mut nonce)?;
        let aad = aad(purpose, group.as_bytes(), epoch);
        let ct = self.aead.seal(&nonce, &aad, plaintext)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub(crate) fn open(
        &self,
        purpose: Purpose,
        group: &GroupId,
        epoch: Epoch,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let fail = || Error::Unseal {
            what: purpose.what(),
            group: group.clone(),
            epoch,
        };
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEAL_VERSION {
            return Err(fail());
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let aad = aad(purpose, group.as_bytes(), epoch);
        self.aead.open(nonce, &aad, ct).map_err(|_| fail())
    }

    /// A value sealed under this KEK that proves, when a store is opened,
    /// that the same KEK is used again.
    pub(crate) fn check_value(&self) -> Result<Vec<u8>> {
        self.seal(Purpose::KekCheck, &kek_check_group()?, Epoch::new(0), b"")
    }

    pub(crate) fn verify_check_value(&self, sealed: &[u8]) -> Result<()> {
        self.open(
            Purpose::KekCheck,
            &kek_check_group()?,
            Epoch::new(0),
            sealed,
        )
        .map(|_| ())
        .map_err(|_| Error::WrongKek)
    }
}

fn kek_check_group() -> Result<GroupId> {
    Ok(GroupId::new(b"kek-check")?)
}

fn aad(purpose: Purpose, group: &[u8], epoch: Epoch) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 2 + group.len() + 4);
    aad.extend_from_slice(AAD_LABEL);
    aad.push(purpose as u8);
    // A GroupId is at most 32 bytes, so its length fits one byte.
    aad.push(u8::try_from(group.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(group);
    aad.extend_from_slice(&epoch.get().to_be_bytes());
    aad
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn os_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Io {
        action: "read randomness from",
        path: "the operating system".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// What a store writes for one epoch of a group: the sealed material (if
/// any) and the sealed tree state (if any), after checking that the
/// material really is this group's and epoch's. Shared by both backends so
/// they check and seal identically.
pub(crate) struct SealedEpoch {
    /// The material's algorithm (when material was given).
    pub(crate) alg: Option<AeadAlg>,
    /// Sealed key material.
    pub(crate) material: Option<Vec<u8>>,
    /// Sealed tree state.
    pub(crate) tree: Option<Vec<u8>>,
}

impl Kek {
    /// Checks and seals the blobs of `group` at `epoch`.
    pub(crate) fn seal_epoch(
        &self,
        group: &GroupId,
        epoch: Epoch,
        material_cbor: Option<&[u8]>,
        tree_state: Option<&[u8]>,
    ) -> Result<SealedEpoch> {
        let alg = material_cbor
            .map(|m| crate::model::check_material(m, group, epoch))
            .transpose()?;
        let material = material_cbor
            .map(|m| self.seal(Purpose::Material, group, epoch, m))
            .transpose()?;
        let tree = tree_state
            .map(|t| self.seal(Purpose::TreeState, group, epoch, t))
            .transpose()?;
        Ok(SealedEpoch {
            alg,
            material,
            tree,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn group(b: &[u8]) -> GroupId {
        GroupId::new(b).unwrap()
    }

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let kek = Kek::from_bytes([7; 32]).unwrap();
        let g = group(b"g1");
        let sealed = kek
            .seal(Purpose::Material, &g, Epoch::new(3), b"secret")
            .unwrap();
        let opened = kek
            .open(Purpose::Material, &g, Epoch::new(3), &sealed)
            .unwrap();
        assert_eq!(opened.as_slice(), b"secret");
        // Another epoch, group or purpose: refused.
        assert!(matches!(
            kek.open(Purpose::Material, &g, Epoch::new(4), &sealed),
            Err(Error::Unseal { .. })
        ));
        assert!(
            kek.open(Purpose::Material, &group(b"g2"), Epoch::new(3), &sealed)
                .is_err()
        );
        assert!(
            kek.open(Purpose::TreeState, &g, Epoch::new(3), &sealed)
                .is_err()
        );
        // Another KEK: an error, not garbage.
        let other = Kek::from_bytes([8; 32]).unwrap();
        assert!(matches!(
            other.open(Purpose::Material, &g, Epoch::new(3), &sealed),
            Err(Error::Unseal { .. })
        ));
        // Two seals of the same plaintext differ (fresh nonce).
        let again = kek
            .seal(Purpose::Material, &g, Epoch::new(3), b"secret")
            .unwrap();
        assert_ne!(sealed, again);
    }

    #[test]
    fn check_value_detects_wrong_kek() {
        let kek = Kek::from_bytes([1; 32]).unwrap();
        let check = kek.check_value().unwrap();
        kek.verify_check_value(&check).unwrap();
        let other = Kek::from_bytes([2; 32]).unwrap();
        assert!(matches!(
            other.verify_check_value(&check),
            Err(Error::WrongKek)
        ));
    }

    #[test]
    fn hex_roundtrip_and_debug_hides_bytes() {
        let kek = Kek::generate().unwrap();
        let hex = kek.to_hex();
        let again = Kek::from_hex(&hex).unwrap();
        assert_eq!(kek.bytes.as_ref(), again.bytes.as_ref());
        assert_eq!(format!("{kek:?}"), "Kek(..)");
        assert!(Kek::from_hex("zz").is_err());
        let bad = "g".repeat(64);
        let err = Kek::from_hex(&bad).unwrap_err().to_string();
        assert!(!err.contains(&bad));
    }
}

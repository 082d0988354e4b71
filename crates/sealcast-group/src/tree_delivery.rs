//! The plaintext of a tree-group key delivery (`DeliveryKind::TreePath`):
//! the epoch's key material and the member's key-tree path, in one object so
//! they are installed together or not at all.
//!
//! `[ material: bstr (GroupKeyMaterial CBOR), path: bstr (lkh::MemberPath bytes) ]`

use ciborium::Value;
use sealcast_core::groupkey::GroupKeyMaterial;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::lkh::MemberPath;

const BAD: Error = Error::Malformed("tree delivery");

/// Encodes material and path.
pub fn encode(material: &GroupKeyMaterial, path: &MemberPath) -> Result<Zeroizing<Vec<u8>>> {
    let mut value = Value::Array(vec![
        Value::Bytes(material.to_cbor()?.to_vec()),
        Value::Bytes(path.to_bytes().to_vec()),
    ]);
    let mut out = Zeroizing::new(Vec::new());
    let written = ciborium::into_writer(&value, &mut *out).map_err(|_| BAD);
    if let Value::Array(items) = &mut value {
        for item in items.iter_mut() {
            if let Value::Bytes(b) = item {
                b.zeroize();
            }
        }
    }
    written?;
    Ok(out)
}

/// Decodes material and path; checks they name the same epoch.
pub fn decode(bytes: &[u8]) -> Result<(GroupKeyMaterial, MemberPath)> {
    if bytes.len() > sealcast_core::groupkey::MAX_MATERIAL_LEN + 4096 {
        return Err(BAD);
    }
    let mut value: Value = ciborium::from_reader(bytes).map_err(|_| BAD)?;
    let result = match &value {
        Value::Array(items) => match items.as_slice() {
            [Value::Bytes(m), Value::Bytes(p)] => GroupKeyMaterial::from_cbor(m)
                .map_err(Error::from)
                .and_then(|m| Ok((m, MemberPath::from_bytes(p)?))),
            _ => Err(BAD),
        },
        _ => Err(BAD),
    };
    if let Value::Array(items) = &mut value {
        for item in items.iter_mut() {
            if let Value::Bytes(b) = item {
                b.zeroize();
            }
        }
    }
    let (material, path) = result?;
    if path.epoch() != material.epoch() {
        return Err(Error::OutOfSync("path and material name different epochs"));
    }
    Ok((material, path))
}

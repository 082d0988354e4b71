//! Small readers of decoded CBOR values, shared by the wire formats and the
//! state files (each maps `None` to its own error).

use ciborium::Value;

/// The value as an unsigned 64-bit integer.
pub(crate) fn u64_of(v: &Value) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

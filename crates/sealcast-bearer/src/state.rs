//! The bearer service's state file: the next MSK id it may hand out, written
//! before an MSK of that id is used, so a restarted service never issues an
//! MSK id twice (a reused id under the same MUK would let an old key frame
//! stand for a new key). CBOR: `[1, next_msk_id]`.

use sealcast_core::cbor::{self, Reader};

use crate::{Error, MskId, Result};

/// The layout's version.
const VERSION: u64 = 1;
/// Largest file accepted.
pub const MAX_LEN: usize = 32;

/// The file's bytes for `next`.
pub fn encode_next_msk(next: MskId) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    cbor::write_array(&mut out, 2);
    cbor::write_uint(&mut out, VERSION);
    cbor::write_uint(&mut out, u64::from(next.get()));
    out
}

/// The next MSK id a state file holds; refused whole if it is anything but
/// what [`encode_next_msk`] writes (any encoding of its integers accepted).
pub fn decode_next_msk(bytes: &[u8]) -> Result<MskId> {
    const BAD: Error = Error::Malformed("bearer state file: not a state this version wrote");
    if bytes.len() > MAX_LEN {
        return Err(BAD);
    }
    let mut r = Reader::new(bytes);
    if r.expect_major(4, "bearer state file: not an array")
        .map_err(|_| BAD)?
        != 2
        || r.uint().map_err(|_| BAD)? != VERSION
    {
        return Err(BAD);
    }
    let next = u32::try_from(r.uint().map_err(|_| BAD)?).map_err(|_| BAD)?;
    if !r.at_end() {
        return Err(BAD);
    }
    Ok(MskId::new(next))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        for n in [0u32, 1, 23, 24, 65_536, u32::MAX] {
            assert_eq!(
                decode_next_msk(&encode_next_msk(MskId::new(n)))
                    .unwrap()
                    .get(),
                n
            );
        }
        // What the earlier ciborium encoder wrote decodes the same.
        assert_eq!(
            decode_next_msk(&[0x82, 0x01, 0x18, 0x2a]).unwrap().get(),
            42
        );
        for bad in [
            &[][..],
            &[0x82, 0x02, 0x01][..],
            &[0x82, 0x01][..],
            &[0x83, 0x01, 0x01, 0x01][..],
            &[0x82, 0x01, 0x1b, 0, 0, 0, 1, 0, 0, 0, 0][..],
            &[0x82, 0x01, 0x01, 0x00][..],
            &[0x82, 0x01, 0x20][..],
        ] {
            assert!(decode_next_msk(bad).is_err(), "{bad:02x?}");
        }
    }
}

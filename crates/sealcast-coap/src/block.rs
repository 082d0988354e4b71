//! RFC 7959 block-wise transfer: the Block1/Block2 option value and block
//! sizes. The transfer logic lives in the client and the server core.

use crate::error::{Error, Result};

/// A block size: 2^(SZX+4) bytes, 16 to 1024 (RFC 7959 §2.2; SZX 7 is
/// reserved for BERT over reliable transports and refused here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockSize {
    /// 16 bytes (SZX 0).
    B16,
    /// 32 bytes (SZX 1).
    B32,
    /// 64 bytes (SZX 2).
    B64,
    /// 128 bytes (SZX 3).
    B128,
    /// 256 bytes (SZX 4).
    B256,
    /// 512 bytes (SZX 5).
    B512,
    /// 1024 bytes (SZX 6), the default: a 1024-byte block plus header and
    /// options stays below the 1152-byte message size RFC 7252 §4.6 keeps
    /// within an IPv6 minimum MTU of 1280.
    #[default]
    B1024,
}

impl BlockSize {
    /// The SZX field.
    pub const fn szx(self) -> u8 {
        match self {
            Self::B16 => 0,
            Self::B32 => 1,
            Self::B64 => 2,
            Self::B128 => 3,
            Self::B256 => 4,
            Self::B512 => 5,
            Self::B1024 => 6,
        }
    }

    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        1 << (self.szx() + 4)
    }

    /// The size for an SZX field; 7 (BERT) is refused.
    pub fn from_szx(szx: u8) -> Result<Self> {
        Ok(match szx {
            0 => Self::B16,
            1 => Self::B32,
            2 => Self::B64,
            3 => Self::B128,
            4 => Self::B256,
            5 => Self::B512,
            6 => Self::B1024,
            _ => return Err(Error::Malformed("block SZX 7 (BERT) is not used over UDP")),
        })
    }
}

/// Largest block number: the NUM field has at most 20 bits.
const MAX_NUM: u32 = (1 << 20) - 1;

/// A Block1 or Block2 option value: NUM, M and SZX (RFC 7959 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockOpt {
    pub num: u32,
    pub more: bool,
    pub size: BlockSize,
}

impl BlockOpt {
    pub fn new(num: u32, more: bool, size: BlockSize) -> Result<Self> {
        if num > MAX_NUM {
            return Err(Error::TooLarge {
                what: "block number",
                limit: MAX_NUM as usize,
            });
        }
        Ok(Self { num, more, size })
    }

    /// Decodes 0–3 bytes.
    pub fn decode(v: &[u8]) -> Result<Self> {
        if v.len() > 3 {
            return Err(Error::Malformed("block option longer than 3 bytes"));
        }
        let raw = v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        Ok(Self {
            num: raw >> 4,
            more: raw & 0x8 != 0,
            size: BlockSize::from_szx((raw & 0x7) as u8)?,
        })
    }

    /// Encodes in the fewest bytes.
    pub fn encode(&self) -> Vec<u8> {
        let raw = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.size.szx());
        crate::message::encode_uint(raw)
    }

    /// The byte offset of this block: NUM × size.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size.bytes()
    }

    /// Block `num` of `body` at `size`: its bytes and whether more follow.
    /// `None` when the block starts past the end (a block 0 of an empty
    /// body is `Some(([], false))`).
    pub fn slice(body: &[u8], num: u32, size: BlockSize) -> Option<(&[u8], bool)> {
        let start = (num as usize).checked_mul(size.bytes())?;
        if start > body.len() || (start == body.len() && num != 0) {
            return None;
        }
        let end = start.saturating_add(size.bytes()).min(body.len());
        Some((&body[start..end], end < body.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_round_trip() {
        for (num, more, size, bytes) in [
            (0, false, BlockSize::B16, vec![]),
            (0, true, BlockSize::B1024, vec![0x0e]),
            (1, false, BlockSize::B1024, vec![0x16]),
            (15, true, BlockSize::B64, vec![0xfa]),
            (16, false, BlockSize::B64, vec![0x01, 0x02]),
            (MAX_NUM, true, BlockSize::B1024, vec![0xff, 0xff, 0xfe]),
        ] {
            let b = BlockOpt::new(num, more, size).unwrap();
            assert_eq!(b.encode(), bytes, "{b:?}");
            assert_eq!(BlockOpt::decode(&bytes).unwrap(), b);
        }
        assert!(BlockOpt::decode(&[0x07]).is_err());
        assert!(BlockOpt::decode(&[0, 0, 0, 0]).is_err());
        assert!(BlockOpt::new(MAX_NUM + 1, false, BlockSize::B16).is_err());
    }

    #[test]
    fn slicing() {
        let body: Vec<u8> = (0..40u8).collect();
        assert_eq!(
            BlockOpt::slice(&body, 0, BlockSize::B16),
            Some((&body[..16], true))
        );
        assert_eq!(
            BlockOpt::slice(&body, 2, BlockSize::B16),
            Some((&body[32..], false))
        );
        assert_eq!(BlockOpt::slice(&body, 3, BlockSize::B16), None);
        assert_eq!(
            BlockOpt::slice(&[], 0, BlockSize::B16),
            Some((&[][..], false))
        );
        assert_eq!(BlockOpt::slice(&body[..32], 2, BlockSize::B16), None);
        assert_eq!(BlockOpt::slice(&body, u32::MAX, BlockSize::B1024), None);
    }
}

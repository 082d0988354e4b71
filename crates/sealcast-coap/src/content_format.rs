//! CoAP Content-Format numbers for COSE objects.
//!
//! The numbers are the IANA "CoAP Content-Formats" registrations of
//! `application/cose` (first made by RFC 8152 §16.10, now referenced to
//! RFC 9052, whose IANA section keeps them):
//!
//! | number | media type |
//! |---:|---|
//! | 16 | `application/cose; cose-type="cose-encrypt0"` |
//! | 17 | `application/cose; cose-type="cose-mac0"` |
//! | 18 | `application/cose; cose-type="cose-sign1"` |
//! | 96 | `application/cose; cose-type="cose-encrypt"` |
//! | 97 | `application/cose; cose-type="cose-mac"` |
//! | 98 | `application/cose; cose-type="cose-sign"` |
//!
//! sealcast's outer objects map onto them as follows: a broadcast command or
//! alert is a COSE_Encrypt0 (16); a key delivery, a signed ack and a member
//! report are COSE_Sign1 (18); an integrity check value is a COSE_Mac0 (17);
//! a single message to one recipient is a COSE_Encrypt (96).

use std::fmt;

/// A CoAP Content-Format number (RFC 7252 §12.3), 0..=65535.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentFormat(u16);

impl ContentFormat {
    /// `application/cose; cose-type="cose-encrypt0"` (16).
    pub const COSE_ENCRYPT0: Self = Self(16);
    /// `application/cose; cose-type="cose-mac0"` (17).
    pub const COSE_MAC0: Self = Self(17);
    /// `application/cose; cose-type="cose-sign1"` (18).
    pub const COSE_SIGN1: Self = Self(18);
    /// `application/cose; cose-type="cose-encrypt"` (96).
    pub const COSE_ENCRYPT: Self = Self(96);
    /// `application/cose; cose-type="cose-mac"` (97).
    pub const COSE_MAC: Self = Self(97);
    /// `application/cose; cose-type="cose-sign"` (98).
    pub const COSE_SIGN: Self = Self(98);
    /// `application/octet-stream` (42), for bytes that are not a COSE object.
    pub const OCTET_STREAM: Self = Self(42);
    /// `text/plain; charset=utf-8` (0).
    pub const TEXT_PLAIN: Self = Self(0);

    /// Any registered or private number.
    pub const fn new(number: u16) -> Self {
        Self(number)
    }

    /// The number carried in the Content-Format option.
    pub const fn number(self) -> u16 {
        self.0
    }

    /// The Content-Format of a tagged COSE object, read from its CBOR tag
    /// (RFC 9052 §2: 16 Encrypt0, 17 Mac0, 18 Sign1, 96 Encrypt, 97 Mac,
    /// 98 Sign; the tag numbers equal the Content-Format numbers). `None` for
    /// anything else, including untagged objects.
    pub fn of_tagged_cose(bytes: &[u8]) -> Option<Self> {
        let tag = match bytes {
            // Major type 6 with the tag in the initial byte (tags 0..=23).
            [b, ..] if *b >= 0xc0 && *b <= 0xd7 => u16::from(*b - 0xc0),
            // One-byte tag argument.
            [0xd8, t, ..] => u16::from(*t),
            _ => return None,
        };
        match tag {
            16 | 17 | 18 | 96 | 97 | 98 => Some(Self(tag)),
            _ => None,
        }
    }

    /// True for the six `application/cose` numbers.
    pub fn is_cose(self) -> bool {
        matches!(self.0, 16 | 17 | 18 | 96 | 97 | 98)
    }

    /// The registered media type, for the numbers this crate names.
    pub fn media_type(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "text/plain; charset=utf-8",
            16 => "application/cose; cose-type=\"cose-encrypt0\"",
            17 => "application/cose; cose-type=\"cose-mac0\"",
            18 => "application/cose; cose-type=\"cose-sign1\"",
            42 => "application/octet-stream",
            96 => "application/cose; cose-type=\"cose-encrypt\"",
            97 => "application/cose; cose-type=\"cose-mac\"",
            98 => "application/cose; cose-type=\"cose-sign\"",
            _ => return None,
        })
    }
}

impl fmt::Debug for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.media_type() {
            Some(m) => write!(f, "ContentFormat({} {m})", self.0),
            None => write!(f, "ContentFormat({})", self.0),
        }
    }
}

impl fmt::Display for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_map_to_registered_numbers() {
        assert_eq!(
            ContentFormat::of_tagged_cose(&[0xd0, 0x83]),
            Some(ContentFormat::COSE_ENCRYPT0)
        );
        assert_eq!(
            ContentFormat::of_tagged_cose(&[0xd1, 0x84]),
            Some(ContentFormat::COSE_MAC0)
        );
        assert_eq!(
            ContentFormat::of_tagged_cose(&[0xd2, 0x84]),
            Some(ContentFormat::COSE_SIGN1)
        );
        assert_eq!(
            ContentFormat::of_tagged_cose(&[0xd8, 0x60, 0x84]),
            Some(ContentFormat::COSE_ENCRYPT)
        );
        assert_eq!(ContentFormat::of_tagged_cose(&[0x84]), None);
        assert_eq!(ContentFormat::of_tagged_cose(&[0xd8]), None);
        assert_eq!(ContentFormat::of_tagged_cose(&[0xd8, 0x18]), None);
        assert_eq!(ContentFormat::of_tagged_cose(&[]), None);
        assert_eq!(ContentFormat::COSE_ENCRYPT0.number(), 16);
        assert_eq!(ContentFormat::COSE_MAC0.number(), 17);
        assert_eq!(ContentFormat::COSE_SIGN1.number(), 18);
        assert_eq!(ContentFormat::COSE_ENCRYPT.number(), 96);
    }
}

//! Typed identifiers. Each checks its limits on construction, so a value that
//! exists is valid; none of them is a bare `Vec<u8>` or integer at an API.

use core::fmt;

use crate::error::{Error, Result};

fn hex(f: &mut fmt::Formatter<'_>, name: &str, bytes: &[u8]) -> fmt::Result {
    write!(f, "{name}(")?;
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    write!(f, ")")
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Vec<u8>);

        impl $name {
            /// Smallest accepted length in bytes.
            pub const MIN_LEN: usize = $min;
            /// Largest accepted length in bytes.
            pub const MAX_LEN: usize = $max;

            /// Checks the length and wraps the bytes.
            pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self> {
                let bytes = bytes.as_ref();
                if bytes.len() < Self::MIN_LEN {
                    return Err(Error::InvalidId { kind: $kind, reason: "too short" });
                }
                if bytes.len() > Self::MAX_LEN {
                    return Err(Error::InvalidId { kind: $kind, reason: "too long" });
                }
                Ok(Self(bytes.to_vec()))
            }

            /// The identifier's bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex(f, stringify!($name), &self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    };
}

byte_id!(
    /// A group's identifier; the COSE `kid context` of group traffic and the
    /// ID Context of the RFC 8613 key derivation. 1 to 32 bytes.
    GroupId, "group id", 1, 32
);
impl GroupId {
    /// The id for people to read (logs): its text when it is printable
    /// ASCII (`fire-doors`), else lowercase hex. [`Display`](fmt::Display)
    /// stays hex, the one spelling used in topics.
    pub fn name(&self) -> GroupName<'_> {
        GroupName(&self.0)
    }
}

/// A [`GroupId`] shown for people: see [`GroupId::name`].
#[derive(Clone, Copy, Debug)]
pub struct GroupName<'a>(&'a [u8]);

impl fmt::Display for GroupName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printable = self.0.iter().all(|b| b.is_ascii_graphic());
        match core::str::from_utf8(self.0) {
            Ok(text) if printable => f.write_str(text),
            _ => {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

byte_id!(
    /// A sender's identifier inside one group (the COSE `kid` of the outer
    /// object). At most 6 bytes: RFC 8613 §5.2 pads it into a 12-byte AES-GCM
    /// nonce beside a 5-byte Partial IV and one length byte. At least 1 byte:
    /// RFC 8613 allows an empty id, but COSE parsers (coset among them) refuse
    /// an empty `kid`, so sealcast never assigns one.
    SenderId, "sender id", 1, 6
);
byte_id!(
    /// A key identifier for keys that are not tied to an entity (MAC keys,
    /// service keys). 1 to 32 bytes.
    KeyId, "key id", 1, 32
);

/// The name of an entity (manager, agent, device, headend): 1 to 64 ASCII
/// characters from `A-Z a-z 0-9 . _ : -`, so it is safe in file names, MQTT
/// topics and URIs alike.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(String);

impl EntityId {
    /// Largest accepted length in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks length and characters.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::InvalidId {
                kind: "entity id",
                reason: "empty",
            });
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::InvalidId {
                kind: "entity id",
                reason: "longer than 64 bytes",
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(Error::InvalidId {
                kind: "entity id",
                reason: "only A-Z a-z 0-9 . _ : - are allowed",
            });
        }
        if name.starts_with('.') {
            return Err(Error::InvalidId {
                kind: "entity id",
                reason: "must not start with '.'",
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// Parses an id that arrived as bytes (a COSE `kid`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let name = core::str::from_utf8(bytes).map_err(|_| Error::InvalidId {
            kind: "entity id",
            reason: "not UTF-8",
        })?;
        Self::new(name)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as bytes (its COSE `kid`).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({:?})", self.0)
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::str::FromStr for EntityId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// A key epoch of a group. Every rekey moves the group to a larger epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u32);

impl Epoch {
    /// Wraps an epoch number.
    pub const fn new(n: u32) -> Self {
        Self(n)
    }
    /// The epoch number.
    pub const fn get(self) -> u32 {
        self.0
    }
    /// The epoch after this one, if any.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A sender sequence number: the COSE Partial IV. Limited to 40 bits
/// (RFC 8613 §5.2 pads it into 5 nonce bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNum(u64);

impl SeqNum {
    /// The largest sequence number (2^40 − 1).
    pub const MAX: u64 = (1 << 40) - 1;

    /// Checks the 40-bit limit.
    pub fn new(n: u64) -> Result<Self> {
        if n > Self::MAX {
            return Err(Error::SequenceExhausted);
        }
        Ok(Self(n))
    }
    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The Partial IV encoding: big-endian, leading zero bytes removed, at
    /// least one byte (RFC 8613 §6.1).
    pub fn partial_iv(self) -> Vec<u8> {
        let be = self.0.to_be_bytes();
        let first = be.iter().position(|&b| b != 0).unwrap_or(be.len() - 1);
        be[first..].to_vec()
    }

    /// Parses a Partial IV (1 to 5 bytes, big-endian).
    pub fn from_partial_iv(piv: &[u8]) -> Result<Self> {
        if piv.is_empty() || piv.len() > 5 {
            return Err(Error::Malformed("partial IV must be 1 to 5 bytes"));
        }
        // RFC 8613 §6.1: no leading zero bytes, so one number has one encoding.
        if piv.len() > 1 && piv[0] == 0 {
            return Err(Error::Malformed("partial IV has a leading zero byte"));
        }
        let mut n = 0u64;
        for &b in piv {
            n = (n << 8) | u64::from(b);
        }
        Self::new(n)
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Wall-clock time as milliseconds since the Unix epoch. The core never reads
/// a clock: callers pass `now` in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixMillis(u64);

impl UnixMillis {
    /// Wraps a millisecond count.
    pub const fn new(ms: u64) -> Self {
        Self(ms)
    }
    /// The millisecond count.
    pub const fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        assert!(GroupId::new([]).is_err());
        assert!(GroupId::new([0u8; 33]).is_err());
        assert!(SenderId::new([0u8; 7]).is_err());
        assert!(SenderId::new([]).is_err());
        assert!(SenderId::new([0]).is_ok());
        assert!(EntityId::new("door-17").is_ok());
        assert!(EntityId::new("a/b").is_err());
        assert!(EntityId::new("..").is_err());
        assert!(EntityId::new(&"x".repeat(65)).is_err());
        assert!(SeqNum::new(SeqNum::MAX + 1).is_err());
    }

    #[test]
    fn partial_iv_round_trip() {
        for n in [0u64, 1, 255, 256, 65_535, SeqNum::MAX] {
            let s = SeqNum::new(n).unwrap();
            assert_eq!(SeqNum::from_partial_iv(&s.partial_iv()), Ok(s));
        }
        assert_eq!(SeqNum(0).partial_iv(), vec![0]);
        assert!(SeqNum::from_partial_iv(&[]).is_err());
        assert!(SeqNum::from_partial_iv(&[1, 2, 3, 4, 5, 6]).is_err());
    }

    #[test]
    fn debug_is_hex() {
        let g = GroupId::new([0xab, 0x01]).unwrap();
        assert_eq!(format!("{g:?}"), "GroupId(ab01)");
    }
}

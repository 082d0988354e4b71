//! Typed identifiers of the bearer: key ids, frame counters and topics.

use core::fmt;

use crate::error::{Error, Result};

macro_rules! u32_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            /// Wraps a number.
            pub const fn new(n: u32) -> Self {
                Self(n)
            }
            /// The number.
            pub const fn get(self) -> u32 {
                self.0
            }
            /// The id after this one, if any.
            pub fn next(self) -> Option<Self> {
                self.0.checked_add(1).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

u32_id!(
    /// Identifies an MSK (MBMS Service Key) of one bearer service. The
    /// service allocates them in increasing order; a receiver never goes
    /// back to an id at or below one it retired.
    MskId
);
u32_id!(
    /// Identifies an MTK (MBMS Traffic Key). A sender allocates them in
    /// increasing order and never reuses one.
    MtkId
);
u32_id!(
    /// The number of a data frame under one MTK, starting at 0. Part of the
    /// AES-GCM nonce and the key of the receiver's replay window.
    FrameCounter
);

/// The routing target of a COSE object on the bearer (an MQTT topic, a CoAP
/// URI path): 1 to 255 bytes of UTF-8 without U+0000.
///
/// It travels only inside the encrypted part of a data frame, so a
/// non-subscriber never sees it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Largest accepted length in bytes (it is sent with a one-byte length).
    pub const MAX_LEN: usize = 255;

    /// Checks length and characters.
    pub fn new(topic: &str) -> Result<Self> {
        if topic.is_empty() {
            return Err(Error::InvalidTopic("empty"));
        }
        if topic.len() > Self::MAX_LEN {
            return Err(Error::InvalidTopic("longer than 255 bytes"));
        }
        if topic.contains('\0') {
            return Err(Error::InvalidTopic("contains U+0000"));
        }
        Ok(Self(topic.to_owned()))
    }

    /// Parses a topic that arrived as bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let topic = core::str::from_utf8(bytes).map_err(|_| Error::InvalidTopic("not UTF-8"))?;
        Self::new(topic)
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.0)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::str::FromStr for Topic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn topic_limits() {
        assert!(Topic::new("").is_err());
        assert!(Topic::new(&"t".repeat(255)).is_ok());
        assert!(Topic::new(&"t".repeat(256)).is_err());
        assert!(Topic::new("a\0b").is_err());
        assert!(Topic::from_bytes(&[0xff]).is_err());
        assert_eq!(Topic::from_bytes(b"g/1/cmd").unwrap().as_str(), "g/1/cmd");
    }

    #[test]
    fn ids_step() {
        assert_eq!(MskId::new(1).next(), Some(MskId::new(2)));
        assert_eq!(MtkId::new(u32::MAX).next(), None);
    }
}

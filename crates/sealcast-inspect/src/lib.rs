//! `sealcast inspect` as a library: any sealcast or COSE object — bytes
//! from anywhere, so untrusted — printed as CBOR diagnostic notation
//! (RFC 8949 §8) with header labels, algorithms and key parameters named and
//! every secret redacted ([`diag::render`]); and the small conversions that
//! show bytes to people ([`text`]).
//!
//! No I/O: the caller reads the bytes and prints the text. The renderer is
//! fuzzed (`fuzz/fuzz_targets/inspect_render.rs`): no input makes it panic,
//! recurse without bound or print a secret.

#![forbid(unsafe_code)]

pub mod diag;
pub mod text;

pub use diag::render;

/// Why an input could not be shown.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Nothing to show.
    Empty,
    /// PEM text (a key file in the other format), not CBOR.
    Pem,
    /// Hex text: the caller should decode it first (`--hex`).
    HexText,
    /// Text, not CBOR.
    Text,
    /// A CBOR sequence longer than the printer shows.
    TooManyItems {
        /// The most items printed.
        max: usize,
    },
    /// An item that is not well-formed CBOR.
    NotCbor {
        /// What is wrong.
        why: CborFault,
        /// The byte offset where the item starts.
        offset: usize,
        /// Every byte is a hex digit or white space: the input is probably
        /// hex text.
        looks_like_hex: bool,
    },
}

/// What is wrong with an item that is not CBOR.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CborFault {
    /// The input ends inside the item.
    Truncated,
    /// A syntax error this many bytes into the item.
    Syntax {
        /// Offset of the error from the start of the item.
        at: usize,
    },
    /// A structure the decoder does not support.
    Unsupported,
    /// Nesting deeper than [`diag::MAX_DEPTH`].
    TooDeep,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const READS: &str = "inspect reads COSE/CBOR objects (binary, or hex with --hex)";
        match self {
            Self::Empty => f.write_str("the input is empty"),
            Self::Pem => write!(f, "the input is PEM text, not CBOR; {READS}"),
            Self::HexText => f.write_str("the input is hex text; pass --hex"),
            Self::Text => write!(f, "the input is text, not CBOR; {READS}"),
            Self::TooManyItems { max } => write!(f, "more than {max} CBOR items in the input"),
            Self::NotCbor {
                why,
                offset,
                looks_like_hex,
            } => {
                let why = match why {
                    CborFault::Truncated => "the input ends inside".to_owned(),
                    CborFault::Syntax { at } => format!("a syntax error {at} bytes into"),
                    CborFault::Unsupported => "an unsupported structure in".to_owned(),
                    CborFault::TooDeep => "nesting too deep in".to_owned(),
                };
                let hint = if *looks_like_hex {
                    "; it looks like hex text: pass --hex"
                } else {
                    ""
                };
                write!(
                    f,
                    "the input is not valid CBOR: {why} the item that starts at byte {offset}{hint}"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

//! The one CBOR writer of sealcast's own fixed structures (KDF info, AAD
//! contexts, the group protocol's messages): preferred serialisation,
//! definite lengths; and the one borrowed [`Reader`] of the hand-written
//! decoders. Other decoding of untrusted input goes through `coset` /
//! `ciborium` with the bounds in the `MAX_*_LEN` constants of each envelope
//! module; [`u64_of`] is the one reader of an unsigned integer from a
//! decoded value.

/// The length of the shortest CBOR head for `arg` (1, 2, 3, 5 or 9).
pub fn head_len(arg: u64) -> usize {
    match arg {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A decoded value as an unsigned 64-bit integer (None: not one).
pub fn u64_of(v: &ciborium::Value) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

/// Writes a CBOR head (major type + argument) in its shortest form.
pub fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.push(m | 24);
        out.push(arg as u8);
    } else if arg <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Unsigned integer.
pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    write_head(out, 0, v);
}

/// Signed integer.
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_head(out, 0, v as u64);
    } else {
        write_head(out, 1, (-1 - v) as u64);
    }
}

/// Byte string.
pub fn write_bstr(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// Text string.
pub fn write_tstr(out: &mut Vec<u8>, s: &str) {
    write_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Array head.
pub fn write_array(out: &mut Vec<u8>, len: u64) {
    write_head(out, 4, len);
}

/// A label of a COSE map: an integer that fits an `i64` (as coset's
/// `Label::Int`) or a text string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label<'a> {
    /// An integer label.
    Int(i64),
    /// A text label.
    Text(&'a str),
}

/// The one borrowed CBOR reader of sealcast's hand-written decoders (the
/// broadcast fast path in `cose`, the COSE_Key codec in `credential`): reads
/// heads, byte and text strings and labels from the front of a slice without
/// copying, and never reads past its end. Definite lengths only.
///
/// [`Reader::new`] accepts any encoding of an argument; [`Reader::preferred`]
/// only the shortest (RFC 8949 preferred serialisation), for a fast path
/// that must refuse — and leave to the general decoder — anything else.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
    preferred_only: bool,
}

const TRUNCATED: crate::Error = crate::Error::Malformed("CBOR item runs past the end");

impl<'a> Reader<'a> {
    /// A reader that accepts any definite-length head.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            preferred_only: false,
        }
    }

    /// A reader that refuses a head not in its shortest form.
    pub fn preferred(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            preferred_only: true,
        }
    }

    /// What is left to read.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Everything was read.
    pub fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next byte.
    pub fn byte(&mut self) -> crate::Result<u8> {
        let (&b, tail) = self.rest.split_first().ok_or(TRUNCATED)?;
        self.rest = tail;
        Ok(b)
    }

    /// The next byte, which must be `b` (a fixed head).
    pub fn expect(&mut self, b: u8) -> crate::Result<()> {
        if self.byte()? == b {
            Ok(())
        } else {
            Err(crate::Error::Malformed("unexpected CBOR item"))
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> crate::Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(TRUNCATED);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> crate::Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Major type and argument of the next item (floats and simple values
    /// are consumed whole).
    pub fn head(&mut self) -> crate::Result<(u8, u64)> {
        let first = self.byte()?;
        let arg = match first & 0x1f {
            info @ 0..=23 => u64::from(info),
            24 => u64::from(u8::from_be_bytes(self.fixed()?)),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            31 => {
                return Err(crate::Error::Malformed(
                    "indefinite-length CBOR is not accepted",
                ));
            }
            _ => {
                return Err(crate::Error::Malformed(
                    "reserved CBOR additional information",
                ));
            }
        };
        if self.preferred_only
            && first & 0x1f >= 24
            && head_len(arg) != 1 + (1 << ((first & 0x1f) - 24))
        {
            return Err(crate::Error::Malformed(
                "a CBOR head not in its shortest form",
            ));
        }
        Ok((first >> 5, arg))
    }

    /// A length or count; never more than the bytes left (every item takes
    /// at least one byte), which bounds all loops by the input size.
    pub fn length(&self, arg: u64) -> crate::Result<usize> {
        usize::try_from(arg)
            .ok()
            .filter(|&n| n <= self.rest.len())
            .ok_or(crate::Error::Malformed("CBOR length runs past the end"))
    }

    /// The next head, which must be of `major`; its argument as a length.
    pub fn expect_major(&mut self, major: u8, what: &'static str) -> crate::Result<usize> {
        let (m, arg) = self.head()?;
        if m != major {
            return Err(crate::Error::Malformed(what));
        }
        self.length(arg)
    }

    /// A byte string.
    pub fn bstr(&mut self) -> crate::Result<&'a [u8]> {
        let n = self.expect_major(2, "expected a CBOR byte string")?;
        self.take(n)
    }

    /// An unsigned integer.
    pub fn uint(&mut self) -> crate::Result<u64> {
        match self.head()? {
            (0, v) => Ok(v),
            _ => Err(crate::Error::Malformed("expected a CBOR unsigned integer")),
        }
    }

    /// A map label: an integer that fits an `i64`, or a text string.
    pub fn label(&mut self) -> crate::Result<Label<'a>> {
        let (m, arg) = self.head()?;
        match m {
            0 => i64::try_from(arg)
                .map(Label::Int)
                .map_err(|_| crate::Error::Malformed("CBOR integer out of range")),
            1 => i64::try_from(arg)
                .map(|n| Label::Int(-1 - n))
                .map_err(|_| crate::Error::Malformed("CBOR integer out of range")),
            3 => {
                let n = self.length(arg)?;
                core::str::from_utf8(self.take(n)?)
                    .map(Label::Text)
                    .map_err(|_| crate::Error::Malformed("CBOR text is not UTF-8"))
            }
            _ => Err(crate::Error::Malformed(
                "expected a CBOR integer or text string",
            )),
        }
    }

    /// An integer that fits an `i64`.
    pub fn int(&mut self) -> crate::Result<i64> {
        match self.label()? {
            Label::Int(n) => Ok(n),
            Label::Text(_) => Err(crate::Error::Malformed("expected a CBOR integer")),
        }
    }

    /// Skips one well-formed item, at most `max_depth` levels deep.
    pub fn skip(&mut self, max_depth: usize) -> crate::Result<()> {
        self.skip_at(0, max_depth)
    }

    fn skip_at(&mut self, depth: usize, max_depth: usize) -> crate::Result<()> {
        if depth > max_depth {
            return Err(crate::Error::Malformed("CBOR nested too deeply"));
        }
        let (major, arg) = self.head()?;
        match major {
            2 => {
                let n = self.length(arg)?;
                self.take(n)?;
            }
            3 => {
                let n = self.length(arg)?;
                core::str::from_utf8(self.take(n)?)
                    .map_err(|_| crate::Error::Malformed("CBOR text is not UTF-8"))?;
            }
            4 => {
                for _ in 0..self.length(arg)? {
                    self.skip_at(depth + 1, max_depth)?;
                }
            }
            5 => {
                for _ in 0..self.length(arg)? {
                    self.skip_at(depth + 1, max_depth)?;
                    self.skip_at(depth + 1, max_depth)?;
                }
            }
            6 => self.skip_at(depth + 1, max_depth)?,
            // 0, 1: integers; 7: simple values and floats, consumed by head().
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod reader_tests {
    use super::*;

    #[test]
    fn preferred_refuses_what_new_accepts() {
        for (bytes, arg) in [
            (&[0x18, 0x05][..], 5u64),
            (&[0x19, 0x00, 0xff][..], 0xff),
            (&[0x1a, 0x00, 0x00, 0xff, 0xff][..], 0xffff),
            (&[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..], 0xffff_ffff),
        ] {
            assert_eq!(Reader::new(bytes).head().unwrap(), (0, arg));
            assert!(Reader::preferred(bytes).head().is_err(), "{bytes:02x?}");
        }
        for (bytes, arg) in [
            (&[0x17][..], 23u64),
            (&[0x18, 0x18][..], 24),
            (&[0x19, 0x01, 0x00][..], 0x100),
            (&[0x1a, 0x00, 0x01, 0x00, 0x00][..], 0x1_0000),
            (&[0x1b, 0, 0, 0, 1, 0, 0, 0, 0][..], 0x1_0000_0000),
        ] {
            assert_eq!(Reader::preferred(bytes).head().unwrap(), (0, arg));
        }
    }

    #[test]
    fn reads_never_run_past_the_end() {
        assert!(Reader::new(&[0x5a, 0xff, 0xff, 0xff, 0xff]).bstr().is_err());
        assert!(Reader::new(&[0x9f]).skip(8).is_err());
        assert!(Reader::new(&[0x19, 0x01]).head().is_err());
        let deep: Vec<u8> = core::iter::repeat_n(0x81, 20).chain([0]).collect();
        assert!(Reader::new(&deep).skip(8).is_err());
        assert!(Reader::new(&deep).skip(30).is_ok());
        let mut r = Reader::new(&[0x63, b'k', b'i', b'd', 0x26]);
        assert_eq!(r.label().unwrap(), Label::Text("kid"));
        assert_eq!(r.int().unwrap(), -7);
        assert!(r.at_end());
    }
}

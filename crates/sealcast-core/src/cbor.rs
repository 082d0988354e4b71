//! The one CBOR writer of sealcast's own fixed structures (KDF info, AAD
//! contexts, the group protocol's messages): preferred serialisation,
//! definite lengths. Decoding of untrusted input goes through `coset` /
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

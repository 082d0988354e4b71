//! Minimal CBOR writing helpers for the fixed structures sealcast builds
//! itself (KDF info, AAD contexts). Decoding of untrusted input goes through
//! `coset` / `ciborium` with the bounds in [the `MAX_*_LEN` constants of each envelope module].

/// Writes a CBOR head (major type + argument) in its shortest form.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
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
pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    write_head(out, 0, v);
}

/// Signed integer.
pub(crate) fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_head(out, 0, v as u64);
    } else {
        write_head(out, 1, (-1 - v) as u64);
    }
}

/// Byte string.
pub(crate) fn write_bstr(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// Text string.
pub(crate) fn write_tstr(out: &mut Vec<u8>, s: &str) {
    write_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Array head.
pub(crate) fn write_array(out: &mut Vec<u8>, len: u64) {
    write_head(out, 4, len);
}

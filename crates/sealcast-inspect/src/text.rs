//! How bytes are shown to people: hex, identifiers that may be text,
//! key fingerprints and timestamps.

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The text of `bytes` if it is printable ASCII (so showing it cannot
/// garble a terminal), else `None`.
pub fn printable(bytes: &[u8]) -> Option<&str> {
    if !bytes.is_empty() && bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        core::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// An identifier for people: `"fire-doors" (hex 666972…)` or just hex.
pub fn show_id(bytes: &[u8]) -> String {
    match printable(bytes) {
        Some(t) => format!("\"{t}\" (hex {})", hex(bytes)),
        None if bytes.is_empty() => "'' (empty)".into(),
        None => format!("hex {}", hex(bytes)),
    }
}

/// The fingerprint of a public key: `sha256:` and the first 16 bytes of
/// SHA-256 over the raw key, in hex.
pub fn fingerprint(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    format!("sha256:{}", hex(&digest[..16]))
}

/// RFC 3339 UTC text of a Unix time in milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn hex_and_ids() {
        assert_eq!(hex(&[1, 0xab]), "01ab");
        assert_eq!(
            show_id(b"fire-doors"),
            "\"fire-doors\" (hex 666972652d646f6f7273)"
        );
        assert_eq!(show_id(&[0, 1]), "hex 0001");
        assert_eq!(show_id(b""), "'' (empty)");
        assert!(fingerprint(&[0; 32]).starts_with("sha256:"));
        assert_eq!(fingerprint(&[0; 32]).len(), 7 + 32);
    }
}

//! Small text conversions: hex, durations, timestamps, fingerprints and how
//! identifiers are shown.

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

/// Parses hex (upper or lower case, even length, no prefix); `""` is the
/// empty byte string.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return Err("hex needs an even number of digits".into());
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(format!(
                "'{}' is not hex",
                String::from_utf8_lossy(pair).escape_default()
            )),
        })
        .collect()
}

/// Parses hex text that may be spread over lines and spaces.
pub fn parse_hex_text(text: &[u8]) -> Result<Vec<u8>, String> {
    let compact: String = String::from_utf8_lossy(text)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    parse_hex(&compact)
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
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

/// Parses a duration such as `30d`, `12h`, `90m`, `45s` or `2w` into
/// milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; write e.g. 30d, 12h, 90m or 3600s"))?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "" => return Err(format!("'{s}' needs a unit: s, m, h, d or w (e.g. 30d)")),
        _ => return Err(format!("unknown unit in '{s}'; use s, m, h, d or w")),
    };
    if n == 0 {
        return Err("a validity of zero makes the key expire at once".into());
    }
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("'{s}' is too long"))
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(parse_hex("0aFF").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("é0").is_err());
        assert_eq!(hex(&[1, 0xab]), "01ab");
        assert_eq!(
            parse_hex_text(b"d0 83\n43").unwrap(),
            vec![0xd0, 0x83, 0x43]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30d").unwrap(), 30 * 86_400_000);
        assert_eq!(parse_duration_ms("90m").unwrap(), 5_400_000);
        assert!(parse_duration_ms("30").is_err());
        assert!(parse_duration_ms("d").is_err());
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("3y").is_err());
        assert!(parse_duration_ms("99999999999999999999w").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}

//! Small text conversions: hex, durations, timestamps, fingerprints and how
//! identifiers are shown.

pub use sealcast_inspect::text::{fingerprint, hex, rfc3339, show_id};

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
}

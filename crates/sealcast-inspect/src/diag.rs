//! CBOR diagnostic notation (RFC 8949 §8, with EDN `/ comments /`) for
//! sealcast and COSE objects, with header labels, algorithms and key
//! parameters named.
//!
//! Secrets are never printed: in a COSE_Key only parameters known to be
//! public (kty, kid, alg, key_ops, Base IV, crv, x, y, and n/e of RSA keys)
//! are shown; every other byte string is printed as `<redacted, N bytes>`.
//! In group key material the master secret and salt are redacted. Byte
//! strings that hold an embedded COSE object, key or key material are
//! decoded and shown as `<< … >>`, so the same rules apply inside them.
//!
//! Recursion is bounded: parsing refuses nesting beyond [`MAX_DEPTH`], and
//! the printer stops descending there too.

use std::fmt::Write;

use ciborium::Value;
use sealcast_core::broadcast::peek_broadcast;
use sealcast_core::delivery::peek_key_delivery;

use crate::text::{fingerprint, hex, rfc3339};
use crate::{CborFault, Error};

/// Deepest nesting parsed or printed.
pub const MAX_DEPTH: usize = 48;
/// Most top-level items of a CBOR sequence printed.
const MAX_ITEMS: usize = 10_000;

/// Renders every CBOR item in `bytes` (a CBOR sequence) as diagnostic
/// notation, each preceded by a comment that names what it is.
pub fn render(bytes: &[u8]) -> Result<String, Error> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if bytes.starts_with(b"-----BEGIN") {
        return Err(Error::Pem);
    }
    if let Ok(text) = core::str::from_utf8(bytes)
        && text.ends_with('\n')
        && text.chars().all(|c| !c.is_control() || c.is_whitespace())
    {
        let trimmed = text.trim();
        return Err(
            if !trimmed.is_empty()
                && trimmed
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace())
            {
                Error::HexText
            } else {
                Error::Text
            },
        );
    }
    let mut p = Printer::default();
    let mut rest = bytes;
    let mut count = 0;
    while !rest.is_empty() {
        if count == MAX_ITEMS {
            return Err(Error::TooManyItems { max: MAX_ITEMS });
        }
        let offset = bytes.len() - rest.len();
        let value = decode(&mut rest, MAX_DEPTH).map_err(|why| Error::NotCbor {
            why,
            offset,
            looks_like_hex: bytes
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace()),
        })?;
        let item = &bytes[offset..bytes.len() - rest.len()];
        if count > 0 {
            p.out.push('\n');
        }
        p.describe_top(&value, item);
        p.top(&value);
        p.out.push('\n');
        count += 1;
    }
    Ok(p.out)
}

/// Decodes one CBOR item from the front of `input`, advancing it.
fn decode(input: &mut &[u8], depth_limit: usize) -> Result<Value, CborFault> {
    ciborium::de::from_reader_with_recursion_limit(&mut *input, depth_limit).map_err(|e| match e {
        ciborium::de::Error::Io(_) => CborFault::Truncated,
        ciborium::de::Error::Syntax(at) => CborFault::Syntax { at },
        ciborium::de::Error::Semantic(_, _) => CborFault::Unsupported,
        ciborium::de::Error::RecursionLimitExceeded => CborFault::TooDeep,
    })
}

mod names;
use names::*;

// ---------------------------------------------------------------------------
// Printing

#[derive(Default)]
struct Printer {
    out: String,
}

impl Printer {
    fn newline(&mut self, indent: usize) {
        self.out.push('\n');
        for _ in 0..indent {
            self.out.push_str("  ");
        }
    }

    fn comment(&mut self, text: &str) {
        let _ = write!(self.out, " / {text} /");
    }

    /// The comment line(s) above a top-level item.
    fn describe_top(&mut self, v: &Value, item: &[u8]) {
        let kind = kind_of(v).or_else(|| untagged_message(v).map(|(name, _)| name.to_owned()));
        let _ = writeln!(
            self.out,
            "/ {} /",
            kind.as_deref()
                .unwrap_or("CBOR (not a COSE or sealcast object this tool knows)")
        );
        if let Ok(h) = peek_broadcast(item) {
            let _ = writeln!(
                self.out,
                "/ sealcast broadcast: group {}, epoch {}, sender id h'{}', seq {}, timestamp {} /",
                id_for_comment(h.group.as_bytes()),
                h.epoch,
                hex(h.sender_id.as_bytes()),
                h.seq,
                rfc3339(h.timestamp.get())
            );
        } else if let Ok(h) = peek_key_delivery(item) {
            let _ = writeln!(
                self.out,
                "/ sealcast key delivery: manager {}, group {}, epoch {}, recipient {} /",
                h.manager,
                id_for_comment(h.group.as_bytes()),
                h.epoch,
                h.recipient
            );
        }
    }

    fn top(&mut self, v: &Value) {
        match untagged_message(v) {
            Some((_, slots)) if kind_of(v).is_none() => {
                if let Value::Array(items) = v {
                    self.message(items, slots, 0, 0);
                }
            }
            _ => self.any(v, 0, 0),
        }
    }

    /// Any value: recognises COSE messages, keys and key material anywhere.
    fn any(&mut self, v: &Value, indent: usize, depth: usize) {
        if depth > MAX_DEPTH {
            self.out.push_str("/ … nested too deeply, not shown /");
            return;
        }
        match v {
            Value::Integer(i) => {
                let _ = write!(self.out, "{}", i128::from(*i));
            }
            Value::Bytes(b) => self.bytes(b, indent, depth),
            Value::Float(f) => self.float(*f),
            Value::Text(t) => self.text(t),
            Value::Bool(b) => {
                let _ = write!(self.out, "{b}");
            }
            Value::Null => self.out.push_str("null"),
            Value::Tag(tag, inner) => {
                let _ = write!(self.out, "{tag}(");
                match (cose_tag(*tag), inner.as_ref()) {
                    (Some((name, slots)), Value::Array(items)) if fits(items, slots) => {
                        let _ = write!(self.out, "/ {name} / ");
                        self.message(items, slots, indent, depth + 1);
                    }
                    _ => self.any(inner, indent, depth + 1),
                }
                self.out.push(')');
            }
            Value::Array(items) => {
                self.seq('[', ']', items.len(), indent, |p, i, ind| {
                    p.any(&items[i], ind, depth + 1);
                });
            }
            Value::Map(entries) => {
                if is_group_material(entries) {
                    self.material_map(entries, indent, depth + 1);
                } else if is_cose_key(entries) {
                    self.key_map(entries, indent, depth + 1);
                } else {
                    self.seq('{', '}', entries.len(), indent, |p, i, ind| {
                        let (k, val) = &entries[i];
                        p.any(k, ind, depth + 1);
                        p.out.push_str(": ");
                        p.any(val, ind, depth + 1);
                    });
                }
            }
            _ => self.out.push_str("undefined"),
        }
    }

    /// Prints `n` elements between `open` and `close`, one per line.
    fn seq(
        &mut self,
        open: char,
        close: char,
        n: usize,
        indent: usize,
        mut each: impl FnMut(&mut Self, usize, usize),
    ) {
        self.out.push(open);
        if n == 0 {
            self.out.push(close);
            return;
        }
        for i in 0..n {
            self.newline(indent + 1);
            each(self, i, indent + 1);
            if i + 1 < n {
                // A trailing comment may follow the value; the comma goes
                // after it, which EDN allows.
                self.out.push(',');
            }
        }
        self.newline(indent);
        self.out.push(close);
    }

    fn bytes(&mut self, b: &[u8], indent: usize, depth: usize) {
        match view_bytes(b, depth) {
            BytesView::Embed(inner) => {
                self.out.push_str("<<");
                // A tagged message names itself; keys and key material get
                // a comment.
                if let (Some(kind), false) = (kind_of(&inner), matches!(inner, Value::Tag(..))) {
                    self.comment(&kind);
                }
                self.out.push(' ');
                self.any(&inner, indent, depth + 1);
                self.out.push_str(" >>");
            }
            BytesView::Hex => {
                let _ = write!(self.out, "h'{}'", hex(b));
            }
            BytesView::Withheld => {
                let _ = write!(
                    self.out,
                    "<{} bytes not shown: nested too deeply to check for secrets>",
                    b.len()
                );
            }
        }
    }

    fn float(&mut self, f: f64) {
        if f.is_nan() {
            self.out.push_str("NaN");
        } else if f.is_infinite() {
            self.out
                .push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            let _ = write!(self.out, "{f:?}");
        }
    }

    fn text(&mut self, t: &str) {
        self.out.push('"');
        for c in t.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(self.out, "\\u{:04x}", u32::from(c));
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn redacted(&mut self, v: &Value) {
        match v {
            Value::Bytes(b) => {
                let _ = write!(self.out, "<redacted, {} bytes>", b.len());
            }
            _ => self.out.push_str("<redacted>"),
        }
    }

    fn label(&mut self, k: &Value, name: Option<&str>, indent: usize, depth: usize) {
        if let Some(name) = name {
            let _ = write!(self.out, "/ {name} / ");
        }
        self.any(k, indent, depth);
        self.out.push_str(": ");
    }

    /// Bytes that name something (kid, group id): hex, and the text when
    /// printable.
    fn id_bytes(&mut self, v: &Value, indent: usize, depth: usize) {
        self.any(v, indent, depth);
        if let Value::Bytes(b) = v
            && let Some(t) = comment_text(b)
        {
            self.comment(&format!("\"{t}\""));
        }
    }

    fn alg_value(&mut self, v: &Value, indent: usize, depth: usize) {
        self.any(v, indent, depth);
        if let Some(name) = int(v).and_then(alg_name) {
            self.comment(name);
        }
    }

    fn timestamp_value(&mut self, v: &Value, indent: usize, depth: usize) {
        self.any(v, indent, depth);
        if let Some(ms) = int(v).and_then(|i| u64::try_from(i).ok()) {
            self.comment(&rfc3339(ms));
        }
    }

    // -- COSE messages ------------------------------------------------------

    fn message(&mut self, items: &[Value], slots: &[Slot], indent: usize, depth: usize) {
        self.seq('[', ']', items.len(), indent, |p, i, ind| {
            let item = &items[i];
            match slots.get(i).copied() {
                Some(Slot::Protected) => {
                    p.out.push_str("/ protected / ");
                    p.protected(item, ind, depth + 1);
                }
                Some(Slot::Unprotected) => {
                    p.out.push_str("/ unprotected / ");
                    match item {
                        Value::Map(e) => p.header_map(e, ind, depth + 1),
                        other => p.any(other, ind, depth + 1),
                    }
                }
                Some(Slot::Content(name)) => {
                    let _ = write!(p.out, "/ {name} / ");
                    p.any(item, ind, depth + 1);
                    if matches!(item, Value::Null) {
                        p.comment("detached");
                    }
                }
                Some(Slot::Bytes(name)) => {
                    let _ = write!(p.out, "/ {name} / ");
                    p.any(item, ind, depth + 1);
                }
                Some(s @ (Slot::Recipients | Slot::Signatures)) => {
                    let (name, layout) = if s == Slot::Recipients {
                        ("recipients", RECIPIENT)
                    } else {
                        ("signatures", SIGNATURE)
                    };
                    let _ = write!(p.out, "/ {name} / ");
                    match item {
                        Value::Array(list) if depth < MAX_DEPTH => {
                            p.seq('[', ']', list.len(), ind, |p, j, ind| match &list[j] {
                                Value::Array(inner) if fits(inner, layout) => {
                                    p.message(inner, layout, ind, depth + 2);
                                }
                                other => p.any(other, ind, depth + 2),
                            });
                        }
                        other => p.any(other, ind, depth + 1),
                    }
                }
                None => p.any(item, ind, depth + 1),
            }
        });
    }

    /// A protected header: a byte string holding an encoded header map.
    fn protected(&mut self, v: &Value, indent: usize, depth: usize) {
        let Value::Bytes(b) = v else {
            return self.any(v, indent, depth);
        };
        if b.is_empty() {
            self.out.push_str("h''");
            return;
        }
        let mut rest = b.as_slice();
        match decode(&mut rest, MAX_DEPTH.saturating_sub(depth).max(1)) {
            Ok(Value::Map(entries)) if rest.is_empty() => {
                self.out.push_str("<< ");
                self.header_map(&entries, indent, depth + 1);
                self.out.push_str(" >>");
            }
            _ => {
                self.bytes(b, indent, depth);
                self.comment("not a header map");
            }
        }
    }

    fn header_map(&mut self, entries: &[(Value, Value)], indent: usize, depth: usize) {
        if depth > MAX_DEPTH {
            self.out.push_str("/ … nested too deeply, not shown /");
            return;
        }
        self.seq('{', '}', entries.len(), indent, |p, i, ind| {
            let (k, v) = &entries[i];
            let label = int(k);
            p.label(k, label.and_then(header_label), ind, depth + 1);
            match (label, v) {
                (Some(1), _) => p.alg_value(v, ind, depth + 1),
                (Some(4 | 10 | -3), _) => p.id_bytes(v, ind, depth + 1),
                (Some(6), Value::Bytes(b)) => {
                    p.any(v, ind, depth + 1);
                    if (1..=8).contains(&b.len()) {
                        let n = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
                        p.comment(&format!("seq {n}"));
                    }
                }
                (Some(-1 | -2), Value::Map(e)) => p.key_map(e, ind, depth + 1),
                (Some(-70_002), _) => p.timestamp_value(v, ind, depth + 1),
                _ => p.any(v, ind, depth + 1),
            }
        });
    }

    // -- keys and key material ---------------------------------------------

    fn key_map(&mut self, entries: &[(Value, Value)], indent: usize, depth: usize) {
        if depth > MAX_DEPTH {
            self.out.push_str("/ … nested too deeply, not shown /");
            return;
        }
        let kty = map_get(entries, 1).and_then(int);
        self.seq('{', '}', entries.len(), indent, |p, i, ind| {
            let (k, v) = &entries[i];
            let (name, public) = int(k).map_or((None, false), |l| key_label(kty, l));
            p.label(k, name, ind, depth + 1);
            if !public {
                return p.redacted(v);
            }
            match (name, v) {
                (Some("kty"), _) => {
                    p.any(v, ind, depth + 1);
                    if let Some(n) = int(v).and_then(kty_name) {
                        p.comment(n);
                    }
                }
                (Some("crv"), _) => {
                    p.any(v, ind, depth + 1);
                    if let Some(n) = int(v).and_then(crv_name) {
                        p.comment(n);
                    }
                }
                (Some("alg"), _) => p.alg_value(v, ind, depth + 1),
                (Some("kid"), _) => p.id_bytes(v, ind, depth + 1),
                (Some("key_ops"), Value::Array(ops)) => {
                    p.seq('[', ']', ops.len(), ind, |p, j, ind| {
                        p.any(&ops[j], ind, depth + 2);
                        if let Some(n) = int(&ops[j]).and_then(key_op_name) {
                            p.comment(n);
                        }
                    });
                }
                (Some("x"), Value::Bytes(b)) => {
                    let _ = write!(p.out, "h'{}'", hex(b));
                    p.comment(&fingerprint(b));
                }
                (_, Value::Bytes(b)) => {
                    let _ = write!(p.out, "h'{}'", hex(b));
                }
                _ => p.any(v, ind, depth + 1),
            }
        });
    }

    fn material_map(&mut self, entries: &[(Value, Value)], indent: usize, depth: usize) {
        self.seq('{', '}', entries.len(), indent, |p, i, ind| {
            let (k, v) = &entries[i];
            let label = int(k);
            let name = match label {
                Some(1) => "group",
                Some(2) => "epoch",
                Some(3) => "alg",
                Some(4) => "master secret",
                Some(5) => "master salt",
                Some(6) => "signers",
                _ => "not after",
            };
            p.label(k, Some(name), ind, depth + 1);
            match (label, v) {
                (Some(1), _) => p.id_bytes(v, ind, depth + 1),
                (Some(3), _) => p.alg_value(v, ind, depth + 1),
                (Some(4 | 5), _) => p.redacted(v),
                (Some(6), Value::Array(list)) => p.signers(list, ind, depth + 1),
                (Some(7), _) => p.timestamp_value(v, ind, depth + 1),
                _ => p.any(v, ind, depth + 1),
            }
        });
    }

    fn signers(&mut self, list: &[Value], indent: usize, depth: usize) {
        self.seq('[', ']', list.len(), indent, |p, i, ind| match &list[i] {
            Value::Array(parts) if parts.len() == 3 => {
                p.seq('[', ']', 3, ind, |p, j, ind| {
                    let part = &parts[j];
                    match (j, part) {
                        (0, _) => {
                            p.out.push_str("/ sender id / ");
                            p.any(part, ind, depth + 1);
                        }
                        (1, _) => {
                            p.out.push_str("/ entity / ");
                            p.any(part, ind, depth + 1);
                        }
                        (_, Value::Bytes(b)) => {
                            let _ = write!(p.out, "/ ed25519 / h'{}'", hex(b));
                            p.comment(&fingerprint(b));
                        }
                        _ => p.any(part, ind, depth + 1),
                    }
                });
            }
            other => p.any(other, ind, depth + 1),
        });
    }
}

/// An untagged top-level COSE message shape: `[bstr, map, …]`.
fn untagged_message(v: &Value) -> Option<(&'static str, &'static [Slot])> {
    let Value::Array(items) = v else {
        return None;
    };
    let shape = match items.len() {
        3 => ("COSE_Encrypt0 (untagged)", ENCRYPT0),
        4 if matches!(items[3], Value::Array(_)) => {
            ("COSE_Encrypt or COSE_Sign (untagged)", ENCRYPT)
        }
        4 => ("COSE_Sign1 or COSE_Mac0 (untagged)", SIGN1),
        5 => ("COSE_Mac (untagged)", MAC),
        _ => return None,
    };
    fits(items, shape.1).then_some(shape)
}

/// How a byte string is shown.
enum BytesView {
    /// Decoded, as `<< … >>`: a COSE object, key or key material, or CBOR
    /// that holds secrets somewhere (so they are redacted where they sit).
    Embed(Value),
    /// As hex: not CBOR, or CBOR with nothing secret in it.
    Hex,
    /// Not shown: CBOR nested deeper than can be checked for secrets.
    Withheld,
}

/// Whether `b` could be a CBOR array, map or tag (the only containers a
/// key or key material can hide in).
fn may_be_container(b: &[u8]) -> bool {
    b.first().is_some_and(|first| matches!(first >> 5, 4..=6))
}

fn view_bytes(b: &[u8], depth: usize) -> BytesView {
    if !may_be_container(b) {
        return BytesView::Hex;
    }
    let Some(limit) = MAX_DEPTH.checked_sub(depth + 2).filter(|l| *l > 0) else {
        return BytesView::Withheld;
    };
    let mut rest = b;
    match ciborium::de::from_reader_with_recursion_limit::<Value, _>(&mut rest, limit) {
        Ok(v) if rest.is_empty() => {
            if kind_of(&v).is_some() || needs_redaction(&v, depth + 1) {
                BytesView::Embed(v)
            } else {
                BytesView::Hex
            }
        }
        Err(ciborium::de::Error::RecursionLimitExceeded) => BytesView::Withheld,
        _ => BytesView::Hex,
    }
}

/// True if printing `v`'s bytes as hex could show a secret: it holds a
/// private key or key material, or a byte string that is itself CBOR (which
/// is examined when it is printed), or it is too deep to check.
fn needs_redaction(v: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    match v {
        Value::Map(entries) => {
            is_group_material(entries)
                || (is_cose_key(entries) && has_private(entries))
                || entries
                    .iter()
                    .any(|(k, v)| needs_redaction(k, depth + 1) || needs_redaction(v, depth + 1))
        }
        Value::Array(items) => items.iter().any(|i| needs_redaction(i, depth + 1)),
        Value::Tag(_, inner) => needs_redaction(inner, depth + 1),
        // Decoded one level only (it is examined in full when printed), so
        // the work stays linear in the nesting depth.
        Value::Bytes(b) if may_be_container(b) => {
            let mut rest = b.as_slice();
            let limit = MAX_DEPTH.saturating_sub(depth + 2).max(1);
            match ciborium::de::from_reader_with_recursion_limit::<Value, _>(&mut rest, limit) {
                Ok(_) => rest.is_empty(),
                Err(ciborium::de::Error::RecursionLimitExceeded) => true,
                Err(_) => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;

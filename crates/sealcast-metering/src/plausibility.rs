//! Plausibility of decrypted readings at the headend (no I/O): rules over
//! the value (the first decimal number in the reading's text), its rise
//! since the meter's last accepted reading, monotonic counters and the
//! time of day (UTC, from the meter's signed timestamp). An implausible
//! reading is dropped or delivered flagged, as its rule says.
//!
//! A rule applies to every meter, or to the meters whose id starts with a
//! prefix; every rule that applies is checked, and the first one a reading
//! breaks decides. What the checker remembers per meter (the last accepted
//! value and time) is part of the headend's state file, so a counter that
//! went backwards across a restart is still found.

use std::collections::BTreeMap;

use sealcast_core::ids::{EntityId, UnixMillis};

/// What happens to a reading a rule finds implausible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not handed on; counted.
    Drop,
    /// Handed on, marked implausible; counted.
    Flag,
}

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Meters whose id starts with this (empty: every meter).
    pub meter_prefix: String,
    /// Smallest plausible value.
    pub min: Option<f64>,
    /// Largest plausible value.
    pub max: Option<f64>,
    /// Largest rise per hour since the meter's last accepted reading.
    pub max_rise_per_hour: Option<f64>,
    /// The value never decreases (an energy counter).
    pub monotonic: bool,
    /// Readings are taken only from hour `.0` (inclusive) to hour `.1`
    /// (exclusive), UTC; `(22, 6)` wraps past midnight.
    pub hours: Option<(u8, u8)>,
    /// What to do with a reading this rule finds implausible.
    pub action: Action,
}

impl Rule {
    fn applies_to(&self, meter: &EntityId) -> bool {
        meter.as_str().starts_with(&self.meter_prefix)
    }

    fn numeric(&self) -> bool {
        self.min.is_some()
            || self.max.is_some()
            || self.max_rise_per_hour.is_some()
            || self.monotonic
    }
}

/// Why a reading is implausible (never its value: these go to logs and
/// audit records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implausible {
    /// A numeric rule applies, but the reading holds no number.
    NoNumber,
    /// Below the rule's minimum.
    BelowMin,
    /// Above the rule's maximum.
    AboveMax,
    /// Lower than the meter's last accepted reading of a monotonic counter.
    Decreased,
    /// Rose faster than the rule allows.
    RoseTooFast,
    /// Not newer than the meter's last accepted reading (with a rate rule).
    NotNewer,
    /// Taken outside the rule's hours.
    OutsideHours,
}

impl Implausible {
    /// A short name (metrics label, log field, readings-file flag).
    pub const fn as_str(self) -> &'static str {
        match self {
            Implausible::NoNumber => "no-number",
            Implausible::BelowMin => "below-min",
            Implausible::AboveMax => "above-max",
            Implausible::Decreased => "decreased",
            Implausible::RoseTooFast => "rose-too-fast",
            Implausible::NotNewer => "not-newer",
            Implausible::OutsideHours => "outside-hours",
        }
    }
}

/// The verdict on one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No rule objects.
    Plausible,
    /// A rule objects.
    Implausible(Implausible, Action),
}

/// The rules and what they remember per meter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plausibility {
    rules: Vec<Rule>,
    last: BTreeMap<EntityId, (f64, UnixMillis)>,
}

/// Most meters whose last value is remembered (the headend's limit).
const MAX_REMEMBERED: usize = 1 << 20;

/// The first decimal number in `text` (`"1042.5 kWh"` → 1042.5; a leading
/// `-` counts). None when there is none or it is not finite.
pub fn first_number(text: &[u8]) -> Option<f64> {
    let s = core::str::from_utf8(text).ok()?;
    let bytes = s.as_bytes();
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let begin = if start > 0 && bytes[start - 1] == b'-' {
        start - 1
    } else {
        start
    };
    let mut end = start;
    let mut dot = false;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || (bytes[end] == b'.' && !dot)) {
        dot |= bytes[end] == b'.';
        end += 1;
    }
    let v: f64 = s[begin..end].trim_end_matches('.').parse().ok()?;
    v.is_finite().then_some(v)
}

impl Plausibility {
    /// A checker with `rules` (none: every reading is plausible).
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            last: BTreeMap::new(),
        }
    }

    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Checks a reading without remembering it.
    pub fn check(&self, meter: &EntityId, value: &[u8], at: UnixMillis) -> Verdict {
        let number = first_number(value);
        let last = self.last.get(meter);
        for rule in self.rules.iter().filter(|r| r.applies_to(meter)) {
            let objection = Self::objection(rule, number, last, at);
            if let Some(why) = objection {
                return Verdict::Implausible(why, rule.action);
            }
        }
        Verdict::Plausible
    }

    fn objection(
        rule: &Rule,
        number: Option<f64>,
        last: Option<&(f64, UnixMillis)>,
        at: UnixMillis,
    ) -> Option<Implausible> {
        if let Some((from, to)) = rule.hours {
            let hour = ((at.get() / 3_600_000) % 24) as u8;
            let inside = if from <= to {
                (from..to).contains(&hour)
            } else {
                hour >= from || hour < to
            };
            if !inside {
                return Some(Implausible::OutsideHours);
            }
        }
        if !rule.numeric() {
            return None;
        }
        let Some(v) = number else {
            return Some(Implausible::NoNumber);
        };
        if rule.min.is_some_and(|m| v < m) {
            return Some(Implausible::BelowMin);
        }
        if rule.max.is_some_and(|m| v > m) {
            return Some(Implausible::AboveMax);
        }
        if let Some(&(prev, prev_at)) = last {
            if rule.monotonic && v < prev {
                return Some(Implausible::Decreased);
            }
            if let Some(max_rise) = rule.max_rise_per_hour {
                if at <= prev_at {
                    return Some(Implausible::NotNewer);
                }
                let hours = (at.get() - prev_at.get()) as f64 / 3_600_000.0;
                if v - prev > max_rise * hours {
                    return Some(Implausible::RoseTooFast);
                }
            }
        }
        None
    }

    /// Remembers a reading that was handed on (plausible or flagged), as
    /// the base of the meter's next rate and monotonic checks.
    pub fn commit(&mut self, meter: &EntityId, value: &[u8], at: UnixMillis) {
        if !self.is_active() {
            return;
        }
        if let Some(v) = first_number(value)
            && (self.last.len() < MAX_REMEMBERED || self.last.contains_key(meter))
        {
            self.last.insert(meter.clone(), (v, at));
        }
    }

    /// What it remembers, for the state file: `[[meter, value, time_ms]…]`.
    pub fn export(&self) -> ciborium::Value {
        use ciborium::Value;
        Value::Array(
            self.last
                .iter()
                .map(|(m, (v, at))| {
                    Value::Array(vec![
                        Value::Text(m.as_str().to_owned()),
                        Value::Float(*v),
                        Value::Integer(at.get().into()),
                    ])
                })
                .collect(),
        )
    }

    /// Reads [`Plausibility::export`]'s form (checked whole before use).
    pub fn import(value: &ciborium::Value) -> Option<BTreeMap<EntityId, (f64, UnixMillis)>> {
        use ciborium::Value;
        let mut out = BTreeMap::new();
        for e in value.as_array()? {
            let [Value::Text(m), Value::Float(v), at] = e.as_array()?.as_slice() else {
                return None;
            };
            if !v.is_finite() || out.len() >= MAX_REMEMBERED {
                return None;
            }
            out.insert(
                EntityId::new(m).ok()?,
                (*v, UnixMillis::new(sealcast_core::cbor::u64_of(at)?)),
            );
        }
        Some(out)
    }

    /// Replaces what it remembers (after [`Plausibility::import`]).
    pub fn restore(&mut self, last: BTreeMap<EntityId, (f64, UnixMillis)>) {
        self.last = last;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn m(id: &str) -> EntityId {
        EntityId::new(id).unwrap()
    }

    fn counter(action: Action) -> Rule {
        Rule {
            meter_prefix: String::new(),
            min: Some(0.0),
            max: Some(100_000.0),
            max_rise_per_hour: Some(50.0),
            monotonic: true,
            hours: None,
            action,
        }
    }

    #[test]
    fn numbers_are_found_in_text() {
        assert_eq!(first_number(b"1042.5 kWh"), Some(1042.5));
        assert_eq!(first_number(b"reading: -3 C"), Some(-3.0));
        assert_eq!(first_number(b"m1 7 kWh"), Some(1.0));
        assert_eq!(first_number(b"12."), Some(12.0));
        assert_eq!(first_number(b"no digits"), None);
        assert_eq!(first_number(&[0xff, b'1']), None);
    }

    #[test]
    fn a_table_of_readings_and_verdicts() {
        let mut p = Plausibility::new(vec![counter(Action::Drop)]);
        let t0 = UnixMillis::new(1_000 * H);
        let at = |h: u64| UnixMillis::new(t0.get() + h * H / 2);
        // (meter, value, time, expected) — applied in order; plausible and
        // flagged readings are committed.
        let cases: &[(&str, &[u8], UnixMillis, Verdict)] = &[
            ("a", b"1000 kWh", at(0), Verdict::Plausible),
            ("a", b"1020 kWh", at(1), Verdict::Plausible), // +20 in 0.5 h: ≤ 25
            (
                "a",
                b"1100 kWh",
                at(2),
                Verdict::Implausible(Implausible::RoseTooFast, Action::Drop),
            ),
            (
                "a",
                b"1010 kWh",
                at(2),
                Verdict::Implausible(Implausible::Decreased, Action::Drop),
            ),
            (
                "a",
                b"1030 kWh",
                at(1),
                Verdict::Implausible(Implausible::NotNewer, Action::Drop),
            ),
            (
                "a",
                b"-5 kWh",
                at(3),
                Verdict::Implausible(Implausible::BelowMin, Action::Drop),
            ),
            (
                "a",
                b"200000 kWh",
                at(3),
                Verdict::Implausible(Implausible::AboveMax, Action::Drop),
            ),
            (
                "a",
                b"broken",
                at(3),
                Verdict::Implausible(Implausible::NoNumber, Action::Drop),
            ),
            ("a", b"1040 kWh", at(3), Verdict::Plausible), // +20 in 1 h since 1020
            ("b", b"5 kWh", at(3), Verdict::Plausible),    // another meter: no history
        ];
        for (meter, value, t, expected) in cases {
            let got = p.check(&m(meter), value, *t);
            assert_eq!(got, *expected, "{meter} {}", String::from_utf8_lossy(value));
            if got == Verdict::Plausible {
                p.commit(&m(meter), value, *t);
            }
        }
        // State round trip keeps the history.
        let mut q = Plausibility::new(vec![counter(Action::Drop)]);
        q.restore(Plausibility::import(&p.export()).unwrap());
        assert_eq!(q, p);
        assert_eq!(
            q.check(&m("a"), b"1039 kWh", at(4)),
            Verdict::Implausible(Implausible::Decreased, Action::Drop)
        );
    }

    #[test]
    fn rules_apply_by_prefix_and_hours_wrap() {
        let night = Rule {
            meter_prefix: "street-".into(),
            min: None,
            max: None,
            max_rise_per_hour: None,
            monotonic: false,
            hours: Some((22, 6)),
            action: Action::Flag,
        };
        let p = Plausibility::new(vec![night]);
        let at_hour = |h: u64| UnixMillis::new(2_000 * 24 * H + h * H + 5);
        for (h, ok) in [
            (22, true),
            (23, true),
            (0, true),
            (5, true),
            (6, false),
            (12, false),
        ] {
            let v = p.check(&m("street-1"), b"x", at_hour(h));
            assert_eq!(v == Verdict::Plausible, ok, "hour {h}");
        }
        // Not a street meter: the rule does not apply; no rules: all plausible.
        assert_eq!(
            p.check(&m("house-1"), b"x", at_hour(12)),
            Verdict::Plausible
        );
        assert_eq!(
            Plausibility::default().check(&m("a"), b"", at_hour(1)),
            Verdict::Plausible
        );
    }
}

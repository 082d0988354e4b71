//! Access-control policies (oneM2M TS-0003 §7.1 shape), evaluated without
//! I/O: rules over originators, operations and contexts, combined
//! **permit-overrides** with **deny by default** — a request is permitted
//! if at least one applicable rule permits it, whatever deny rules also
//! apply; with no applicable permit it is denied (by the first applicable
//! deny rule, or by default).
//!
//! A node applies its policy to what it verified: the originator is the
//! verified signer of a broadcast, the operation the first word of a
//! command's payload (`unlock`, `extinguish`, `configure` …) or `alert`
//! for an alert, the context the group and the message's signed time.

use sealcast_core::ids::{EntityId, GroupId, UnixMillis};

use crate::error::{Error, Result};

/// What a rule does when it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Grants.
    Permit,
    /// Denies (overridden by any applicable permit).
    Deny,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRule {
    /// Permit or deny.
    pub effect: Effect,
    /// Originator ids; `*` alone is everyone, `prefix*` every id starting
    /// with the prefix.
    pub originators: Vec<String>,
    /// Operations (lower case); `*` is every operation.
    pub operations: Vec<String>,
    /// Groups the request may concern (empty: any).
    pub groups: Vec<GroupId>,
    /// From hour `.0` (inclusive) to `.1` (exclusive), UTC; `(22, 6)`
    /// wraps past midnight. None: any time.
    pub hours: Option<(u8, u8)>,
}

/// One request to decide.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// Who asks (a verified signer).
    pub originator: &'a EntityId,
    /// What it asks for.
    pub operation: &'a str,
    /// The group it concerns.
    pub group: &'a GroupId,
    /// When (the message's signed time).
    pub at: UnixMillis,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Rule number `.0` (1-based) permits it.
    Permit(usize),
    /// Rule number `.0` denies it and no rule permits it.
    DenyByRule(usize),
    /// No rule applies.
    DenyByDefault,
}

impl Decision {
    /// Whether the request is permitted.
    pub fn permitted(self) -> bool {
        matches!(self, Decision::Permit(_))
    }
}

/// Most rules in one policy.
pub const MAX_RULES: usize = 1024;

/// A node's policy: its rules, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    rules: Vec<AccessRule>,
}

/// The operation of a command: the first word of its payload, lower case
/// ASCII letters, digits, `-` and `_` only (anything else: none, which only
/// `*` matches).
pub fn operation_of(payload: &[u8]) -> String {
    let word: Vec<u8> = payload
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .take_while(|b| !b.is_ascii_whitespace())
        .collect();
    if word.is_empty()
        || word.len() > 64
        || !word
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return String::new();
    }
    String::from_utf8_lossy(&word).to_ascii_lowercase()
}

/// One request to the manager's administration (its control socket),
/// decided by the same rules: the originator is the connecting operating
/// system user, known by its names (`alice`, `uid:1001`); the operation is
/// the control protocol's (`enrol`, `create`, `add`, `evict`, `rekey`,
/// `show`, `list`, `deactivate`, `activate`, `node`, `remove`, `suspend`,
/// `revoke`, `reinstate`, `statuses`, `rotate-key`); the group is the one
/// the request names, if any (a rule naming groups applies only to requests
/// naming one of them).
#[derive(Clone, Copy, Debug)]
pub struct AdminRequest<'a> {
    /// Every name of who asks; a rule applies if it names any of them.
    pub originators: &'a [&'a str],
    /// What it asks for.
    pub operation: &'a str,
    /// The group it concerns, if any.
    pub group: Option<&'a GroupId>,
    /// When (the manager's clock).
    pub at: UnixMillis,
}

impl AccessRule {
    fn applies(&self, r: &AccessRequest<'_>) -> bool {
        self.applies_to(&[r.originator.as_str()], r.operation, Some(r.group), r.at)
    }

    fn applies_to(
        &self,
        names: &[&str],
        operation: &str,
        group: Option<&GroupId>,
        at: UnixMillis,
    ) -> bool {
        let originator = self.originators.iter().any(|o| {
            names.iter().any(|who| match o.strip_suffix('*') {
                Some(prefix) => who.starts_with(prefix),
                None => o == who,
            })
        });
        let operation = self
            .operations
            .iter()
            .any(|op| op == "*" || (!operation.is_empty() && op == operation));
        let group = self.groups.is_empty() || group.is_some_and(|g| self.groups.contains(g));
        let time = self.hours.is_none_or(|(from, to)| {
            let hour = ((at.get() / 3_600_000) % 24) as u8;
            if from <= to {
                (from..to).contains(&hour)
            } else {
                hour >= from || hour < to
            }
        });
        originator && operation && group && time
    }
}

impl AccessPolicy {
    /// A policy of `rules` (checked: each names at least one originator and
    /// one operation, hours are 0..=24, at most [`MAX_RULES`]).
    pub fn new(rules: Vec<AccessRule>) -> Result<Self> {
        if rules.len() > MAX_RULES {
            return Err(Error::TooLarge {
                what: "access-control rules",
                limit: MAX_RULES,
            });
        }
        for r in &rules {
            if r.originators.is_empty() || r.operations.is_empty() {
                return Err(Error::Malformed(
                    "an access-control rule names at least one originator and one operation",
                ));
            }
            if r.hours.is_some_and(|(a, b)| a > 24 || b > 24) {
                return Err(Error::Malformed("access-control hours are 0 to 24"));
            }
        }
        Ok(Self { rules })
    }

    /// Whether it has rules (a node without any permits everything, as
    /// before policies existed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides `request`: permit-overrides, deny by default.
    pub fn evaluate(&self, request: &AccessRequest<'_>) -> Decision {
        self.decide(|rule| rule.applies(request))
    }

    /// Decides an administration request the same way.
    pub fn evaluate_admin(&self, request: &AdminRequest<'_>) -> Decision {
        self.decide(|rule| {
            rule.applies_to(
                request.originators,
                request.operation,
                request.group,
                request.at,
            )
        })
    }

    fn decide(&self, applies: impl Fn(&AccessRule) -> bool) -> Decision {
        let mut deny = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !applies(rule) {
                continue;
            }
            match rule.effect {
                Effect::Permit => return Decision::Permit(i + 1),
                Effect::Deny => {
                    deny.get_or_insert(i + 1);
                }
            }
        }
        deny.map_or(Decision::DenyByDefault, Decision::DenyByRule)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn rule(
        effect: Effect,
        who: &[&str],
        ops: &[&str],
        groups: &[&str],
        hours: Option<(u8, u8)>,
    ) -> AccessRule {
        AccessRule {
            effect,
            originators: who.iter().map(|s| (*s).to_owned()).collect(),
            operations: ops.iter().map(|s| (*s).to_owned()).collect(),
            groups: groups
                .iter()
                .map(|g| GroupId::new(g.as_bytes()).unwrap())
                .collect(),
            hours,
        }
    }

    #[test]
    fn operations_are_the_first_word() {
        assert_eq!(operation_of(b"unlock"), "unlock");
        assert_eq!(operation_of(b"  Configure interval=60"), "configure");
        assert_eq!(operation_of(b""), "");
        assert_eq!(operation_of(b"un$lock"), "");
        assert_eq!(operation_of(&[0xff, 0xfe]), "");
    }

    #[test]
    fn a_table_of_requests_and_decisions() {
        use Effect::{Deny, Permit};
        let policy = AccessPolicy::new(vec![
            // 1: the gateway may unlock and extinguish, any group.
            rule(Permit, &["gateway"], &["unlock", "extinguish"], &[], None),
            // 2: consoles may configure the doors, 02:00-04:00 only.
            rule(
                Permit,
                &["console-*"],
                &["configure"],
                &["fire-doors"],
                Some((2, 4)),
            ),
            // 3: nobody may configure (overridden by 2 inside its window).
            rule(Deny, &["*"], &["configure"], &[], None),
            // 4: the maintenance id may do anything at night (wraps).
            rule(Permit, &["maint"], &["*"], &[], Some((22, 6))),
            // 5: deny the gateway everything (overridden by 1 for its ops).
            rule(Deny, &["gateway"], &["*"], &[], None),
        ])
        .unwrap();
        let day = 20_000 * 24 * H;
        let cases: &[(&str, &str, &str, u64, Decision)] = &[
            ("gateway", "unlock", "fire-doors", 12, Decision::Permit(1)),
            (
                "gateway",
                "extinguish",
                "extinguishers",
                12,
                Decision::Permit(1),
            ),
            (
                "gateway",
                "configure",
                "fire-doors",
                3,
                Decision::DenyByRule(3),
            ),
            (
                "gateway",
                "reboot",
                "fire-doors",
                12,
                Decision::DenyByRule(5),
            ),
            (
                "console-7",
                "configure",
                "fire-doors",
                3,
                Decision::Permit(2),
            ),
            (
                "console-7",
                "configure",
                "fire-doors",
                4,
                Decision::DenyByRule(3),
            ),
            (
                "console-7",
                "configure",
                "extinguishers",
                3,
                Decision::DenyByRule(3),
            ),
            (
                "console-7",
                "unlock",
                "fire-doors",
                3,
                Decision::DenyByDefault,
            ),
            (
                "consolex",
                "configure",
                "fire-doors",
                3,
                Decision::DenyByRule(3),
            ),
            ("maint", "reboot", "fire-doors", 23, Decision::Permit(4)),
            ("maint", "reboot", "fire-doors", 5, Decision::Permit(4)),
            ("maint", "reboot", "fire-doors", 6, Decision::DenyByDefault),
            ("maint", "configure", "fire-doors", 1, Decision::Permit(4)),
            (
                "stranger",
                "unlock",
                "fire-doors",
                12,
                Decision::DenyByDefault,
            ),
            ("gateway", "", "fire-doors", 12, Decision::DenyByRule(5)),
        ];
        for (who, op, group, hour, expected) in cases {
            let originator = EntityId::new(who).unwrap();
            let group = GroupId::new(group.as_bytes()).unwrap();
            let got = policy.evaluate(&AccessRequest {
                originator: &originator,
                operation: op,
                group: &group,
                at: UnixMillis::new(day + hour * H + 17),
            });
            assert_eq!(got, *expected, "{who} {op} {} at {hour}h", group.name());
        }
        // Empty: deny by default for any request (the node treats an empty
        // policy as "no policy").
        let empty = AccessPolicy::default();
        assert!(empty.is_empty());
        assert!(AccessPolicy::new(vec![rule(Permit, &[], &["x"], &[], None)]).is_err());
        assert!(AccessPolicy::new(vec![rule(Permit, &["a"], &["x"], &[], Some((3, 25)))]).is_err());
    }

    #[test]
    fn administration_requests_by_user_names_operations_and_groups() {
        use Effect::{Deny, Permit};
        let policy = AccessPolicy::new(vec![
            // 1: operators may look at everything.
            rule(
                Permit,
                &["alice", "uid:1002"],
                &["show", "list", "node", "statuses"],
                &[],
                None,
            ),
            // 2: alice may evict and rekey in fire-doors only.
            rule(
                Permit,
                &["alice"],
                &["evict", "rekey"],
                &["fire-doors"],
                None,
            ),
            // 3: nobody removes entities (overridden by 4 for root).
            rule(Deny, &["*"], &["remove"], &[], None),
            // 4: root may do anything.
            rule(Permit, &["root"], &["*"], &[], None),
        ])
        .unwrap();
        let doors = GroupId::new(b"fire-doors").unwrap();
        let sprinklers = GroupId::new(b"sprinklers").unwrap();
        let at = UnixMillis::new(20_000 * 24 * H);
        let cases: &[(&[&str], &str, Option<&GroupId>, Decision)] = &[
            (
                &["alice", "uid:1001"],
                "show",
                Some(&doors),
                Decision::Permit(1),
            ),
            (&["alice", "uid:1001"], "list", None, Decision::Permit(1)),
            (
                &["alice", "uid:1001"],
                "evict",
                Some(&doors),
                Decision::Permit(2),
            ),
            (
                &["alice", "uid:1001"],
                "evict",
                Some(&sprinklers),
                Decision::DenyByDefault,
            ),
            // A rule naming groups does not apply to a request naming none.
            (
                &["alice", "uid:1001"],
                "rekey",
                None,
                Decision::DenyByDefault,
            ),
            (
                &["alice", "uid:1001"],
                "remove",
                None,
                Decision::DenyByRule(3),
            ),
            (&["bob", "uid:1002"], "statuses", None, Decision::Permit(1)),
            (&["bob", "uid:1002"], "enrol", None, Decision::DenyByDefault),
            (&["root", "uid:0"], "remove", None, Decision::Permit(4)),
            (
                &["mallory", "uid:1003"],
                "show",
                Some(&doors),
                Decision::DenyByDefault,
            ),
        ];
        for (names, op, group, expected) in cases {
            let got = policy.evaluate_admin(&AdminRequest {
                originators: names,
                operation: op,
                group: *group,
                at,
            });
            assert_eq!(got, *expected, "{names:?} {op} {group:?}");
        }
    }
}
